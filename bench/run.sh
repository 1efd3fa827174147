#!/bin/sh
# Runs every benchmark: bench/run.sh path/to/clubio-dr [SIZE_MB]
# Each prints ratios against a baseline it measures in the same run (never absolute timings
# compared with numbers from elsewhere). Exit status: non-zero if a benchmark missed its target.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:?usage: bench/run.sh path/to/clubio-dr [SIZE_MB]}
MB=${2:-}
rc=0
python3 "$HERE/startup.py" "$BIN" || rc=1
echo "== compress_levels"
python3 "$HERE/compress_levels.py" "$BIN" || rc=1
for b in "$HERE"/*.sh; do
    [ "$(basename "$b")" = run.sh ] && continue
    echo "== $(basename "$b" .sh)"
    # shellcheck disable=SC2086
    sh "$b" "$BIN" $MB || rc=1
done
exit $rc
