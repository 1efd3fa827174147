#!/bin/sh
# Export-side benchmark of the crypto module: `clubio-dr encrypt --gzip` against the runbook's
# `gzip -6 | openssl enc -aes-256-cbc -salt -pbkdf2` on the same generated SQL, in the same run.
# Prints the speed ratio, the size ratio and our peak RSS, plus the restore direction and the
# one-core zlib/libdeflate comparison when bench/deflate_compare is built next to the binary.
#
#   bench/crypto.sh path/to/clubio-dr [MB]        (default 500 MB)
# Targets on 2 cores: >= 3x faster, output no larger than gzip -6's, peak RSS < 64 MiB.
# The data (~MB of SQL-like COPY rows compressing ~2.5:1) is made by bench/gen_sql.py in
# $BENCH_DIR (default /tmp) and removed at the end.
set -eu
BIN=${1:?usage: bench/crypto.sh path/to/clubio-dr [MB]}
MB=${2:-500}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d "${BENCH_DIR:-/tmp}/clubio-bench-crypto-XXXXXX")
trap 'rm -rf "$W"' EXIT
export CLUBIO_BENCH_KEY="bench passphrase $(date +%s)"

# measure CMD... : runs CMD, prints "seconds peak_rss_kib". The peak is the process's own VmHWM,
# sampled from /proc every 20 ms (getrusage would report at least the python launcher's RSS,
# which a forked child inherits as its high-water mark); for `sh -c` pipelines it is sh's.
measure() {
    python3 - "$@" <<'PY'
import subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:])
hwm = 0
while p.poll() is None:
    try:
        with open("/proc/%d/status" % p.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.02)
dt = time.monotonic() - t0
if p.returncode != 0:
    sys.exit("command failed with status %d: %s" % (p.returncode, " ".join(sys.argv[1:])))
print("%.3f %d" % (dt, hwm))
PY
}

echo "generating ${MB} MB of SQL-like data..." >&2
python3 "$HERE/gen_sql.py" "$MB" >"$W/dump.sql"
cat "$W/dump.sql" >/dev/null # into the page cache for both runs
IN=$(wc -c <"$W/dump.sql" | tr -d ' ')
cpus=$(getconf _NPROCESSORS_ONLN)

set -- $(measure sh -c "gzip -6 <'$W/dump.sql' | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:CLUBIO_BENCH_KEY >'$W/base.enc'")
T_BASE=$1
set -- $(measure "$BIN" encrypt --gzip --no-progress --pass-env CLUBIO_BENCH_KEY -i "$W/dump.sql" -o "$W/ours.enc")
T_OURS=$1
RSS_OURS=$2
S_BASE=$(wc -c <"$W/base.enc" | tr -d ' ')
S_OURS=$(wc -c <"$W/ours.enc" | tr -d ' ')

# our archive must open with the stock tools
openssl enc -d -aes-256-cbc -pbkdf2 -pass env:CLUBIO_BENCH_KEY -in "$W/ours.enc" | gunzip | cmp -s - "$W/dump.sql" ||
    { echo "FAIL: our archive does not round-trip through openssl | gunzip" >&2; exit 1; }

set -- $(measure sh -c "openssl enc -d -aes-256-cbc -pbkdf2 -pass env:CLUBIO_BENCH_KEY -in '$W/base.enc' | gunzip >/dev/null")
T_RBASE=$1
set -- $(measure sh -c "'$BIN' decrypt --gunzip --no-progress --pass-env CLUBIO_BENCH_KEY -i '$W/base.enc' >/dev/null")
T_ROURS=$1
RSS_ROURS=$(measure "$BIN" decrypt --gunzip --no-progress --pass-env CLUBIO_BENCH_KEY -i "$W/base.enc" -o "$W/restored.sql" | cut -d' ' -f2)

awk -v in_="$IN" -v tb="$T_BASE" -v to="$T_OURS" -v sb="$S_BASE" -v so="$S_OURS" \
    -v ro="$RSS_OURS" -v trb="$T_RBASE" -v tro="$T_ROURS" -v rro="$RSS_ROURS" \
    -v cpus="$cpus" 'BEGIN {
    mb = in_ / 1e6
    printf "crypto bench: %.0f MB of SQL-like data, %d CPUs\n", mb, cpus
    printf "  baseline  gzip -6 | openssl enc : %7.2f s  %6.1f MB/s  %11d bytes (%.2f:1)\n", tb, mb / tb, sb, in_ / sb
    printf "  clubio-dr encrypt --gzip        : %7.2f s  %6.1f MB/s  %11d bytes (%.2f:1)  peak RSS %d KiB\n", to, mb / to, so, in_ / so, ro
    printf "  restore   openssl -d | gunzip   : %7.2f s\n", trb
    printf "  clubio-dr decrypt --gunzip      : %7.2f s  peak RSS %d KiB\n", tro, rro
    sp = tb / to; sz = so / sb
    printf "speed ratio %.2fx (target >= 3x on 2 cores): %s\n", sp, (sp >= 3 ? "ok" : "MISSED")
    printf "size ratio %.3f (ours / gzip -6, target <= 1): %s\n", sz, (sz <= 1 ? "ok" : "MISSED")
    printf "peak RSS %.1f MiB (target < 64 MiB): %s\n", ro / 1024, (ro < 65536 ? "ok" : "MISSED")
    printf "restore speed ratio %.2fx\n", trb / tro
}'

DC=$(dirname "$BIN")/bench/deflate_compare
if [ -x "$DC" ]; then
    echo "one core, 1 MiB blocks (bench/deflate_compare.c):"
    "$DC" "$W/dump.sql" 6
fi
