#!/usr/bin/env python3
"""Our gzip at each candidate level against the runbook's `gzip -6`, on dump data of several
shapes (bench/gen_shapes.py: text-heavy, numeric, JSON, bytea, mixed), in the same run.

For each shape and level it prints the archive size relative to `gzip -6 | openssl enc` (lower
is smaller; both archives carry the same 16-byte header and padding) and the CPU seconds of
`clubio-dr encrypt --gzip --level N --threads 1` relative to the pipeline's (lower is cheaper):
one thread, so the CPU an export spends per byte, whatever the cores. Then, per level, the
largest size ratio over the shapes: the default level must keep it <= 1.000.

  bench/compress_levels.py path/to/clubio-dr [MB per shape (40)] [levels (1,2,3,4,5,6,7,8,9)] [shapes]
Exit status 1 if the default level (crypto.gzip's, read from `encrypt --help`) is larger than
gzip -6 on any shape. The data is generated in $BENCH_DIR (default /tmp) and removed.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(argv, **kw):
    """Runs argv; returns (wall seconds, CPU seconds of it and the children it waited for)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit("command failed with status %d: %s" % (p.returncode, " ".join(argv)))
    return wall, ru.ru_utime + ru.ru_stime


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    mb = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    levels = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "1,2,3,4,5,6,7,8,9").split(",")]
    shapes = (sys.argv[4] if len(sys.argv) > 4 else "text,numeric,json,bytea,mixed").split(",")
    helptext = subprocess.run([binary, "encrypt", "--help"], capture_output=True, text=True).stdout
    m = re.search(r"--level N.*default (\d+)", helptext)
    default = int(m.group(1)) if m else None
    env = dict(os.environ, CLUBIO_BENCH_KEY="bench passphrase %d" % time.time())
    w = tempfile.mkdtemp(prefix="clubio-bench-levels-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    worst = {lv: 0.0 for lv in levels}
    rows = []
    try:
        for shape in shapes:
            src = os.path.join(w, shape + ".sql")
            with open(src, "wb") as f:
                subprocess.check_call([sys.executable, os.path.join(HERE, "gen_shapes.py"), shape, str(mb)], stdout=f)
            with open(src, "rb") as f:  # into the page cache for every run
                while f.read(1 << 20):
                    pass
            size_in = os.path.getsize(src)
            base = os.path.join(w, "base.enc")
            _, cpu_base = run(["sh", "-c", "gzip -6 <\"$1\" | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:CLUBIO_BENCH_KEY >\"$2\"",
                               "sh", src, base], env=env)
            s_base = os.path.getsize(base)
            line = {"shape": shape, "ratio": size_in / s_base, "cpu_base": cpu_base}
            for lv in levels:
                out = os.path.join(w, "ours.enc")
                if os.path.exists(out):
                    os.unlink(out)
                _, cpu = run([binary, "encrypt", "--gzip", "--level", str(lv), "--threads", "1", "--no-progress",
                              "--pass-env", "CLUBIO_BENCH_KEY", "-i", src, "-o", out], env=env)
                r = os.path.getsize(out) / s_base
                line[lv] = (r, cpu / cpu_base)
                worst[lv] = max(worst[lv], r)
            rows.append(line)
            os.unlink(src)
            print("%-8s %5.1f MB, gzip -6 ratio %.2f:1, gzip -6 | openssl: %.2f CPU s  " % (
                shape, size_in / 1e6, line["ratio"], cpu_base) +
                "  ".join("L%d %.3f/%.2f" % (lv, line[lv][0], line[lv][1]) for lv in levels), flush=True)
    finally:
        shutil.rmtree(w, ignore_errors=True)
    print()
    print("size relative to gzip -6 (lower is smaller) / CPU relative to gzip -6 | openssl enc, one thread")
    print("| shape | " + " | ".join(str(lv) for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for line in rows:
        print("| %s | " % line["shape"] + " | ".join("%.3f / %.2f" % line[lv] for lv in levels) + " |")
    print("| worst size | " + " | ".join("%.3f" % worst[lv] for lv in levels) + " |")
    if default in worst:
        ok = worst[default] <= 1.0
        print("default level %d: largest size ratio %.3f (%s)" % (default, worst[default], "ok" if ok else "LARGER than gzip -6"))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
