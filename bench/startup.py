#!/usr/bin/env python3
"""Host start-up: `clubio-dr -e 'return 1'` against the cost of starting any process
(`/bin/true`), both measured in this run. Prints the median of N runs of each, their ratio,
and checks the target (median under 10 ms).

    bench/startup.py path/to/clubio-dr [RUNS]
"""
import statistics
import subprocess
import sys
import time


def median_ms(argv, runs):
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: bench/startup.py path/to/clubio-dr [RUNS]")
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    base = median_ms(["/bin/true"], runs)
    ours = median_ms([binary, "-e", "return 1"], runs)
    ok = ours < 10.0
    print(f"startup: clubio-dr -e 'return 1' median {ours:.2f} ms; /bin/true {base:.2f} ms; "
          f"ratio {ours / base:.2f}x; target < 10 ms: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
