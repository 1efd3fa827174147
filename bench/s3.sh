#!/bin/sh
# Benchmark of the s3 upload sink: a stream of MB megabytes (default 500) uploaded to a local
# s3rver, by clubio-dr (c:upload with its default part size and concurrency, fed by `cat`) and
# by the baseline `/usr/bin/aws s3 cp - s3://...` (also fed by `cat`), in the same run.
# Prints wall times, the ratio (aws / ours: above 1 means we are faster) and both peak RSS.
# s3rver (node, one process, writes every part to disk and concatenates them on completion) is
# slow itself: it bounds both clients, so the ratio says more than the absolute MB/s.
#
#   bench/s3.sh build/clubio-dr [MB]
set -eu
BIN=$(readlink -f "$1")
MB=${2:-500}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/clubio-bench-s3-XXXXXX)
chmod 755 "$WORK" # the sandbox runs PostgreSQL as user postgres, which must reach its folder
STATE=$WORK/sandbox
cleanup() { "$HERE/tests/sandbox/sandbox.sh" stop "$STATE" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

"$HERE/tests/sandbox/sandbox.sh" start "$STATE" >/dev/null
. "$STATE/env.sh"
echo "s3 bench: ${MB} MB stream to s3rver at $AWS_ENDPOINT_URL"
# Incompressible input, made once and read through `cat` by both sides.
openssl enc -aes-128-ctr -pass pass:bench -nosalt -pbkdf2 </dev/zero 2>/dev/null | head -c $((MB * 1048576)) >"$WORK/in.bin"

cat >"$WORK/up.lua" <<LUA
local s3, pipe = require "s3", require "pipe"
local c = s3.client{}
local r = pipe.run{pipe.command{argv = {"cat", "$WORK/in.bin"}}, c:upload{bucket = "$BACKUP_S3_BUCKET", key = "bench/ours.bin", label = "up"}}
io.stderr:write(string.format("ours: parts=%d bytes=%d\n", r.up.parts, r.up.bytes))
LUA

measure() { # label, command...: prints "seconds rss_kib"
    label=$1; shift
    /usr/bin/time -f "%e %M" -o "$WORK/$label.time" "$@"
    cat "$WORK/$label.time"
}

set -- $(measure aws sh -c "cat '$WORK/in.bin' | /usr/bin/aws --endpoint-url '$AWS_ENDPOINT_URL' s3 cp --quiet - 's3://$BACKUP_S3_BUCKET/bench/aws.bin'")
AWS_S=$1; AWS_RSS=$2
set -- $(measure ours sh -c "'$BIN' run '$WORK/up.lua' 2>'$WORK/ours.log'")
OUR_S=$1; OUR_RSS=$2

SIZE_OURS=$(/usr/bin/aws --endpoint-url "$AWS_ENDPOINT_URL" s3api head-object --bucket "$BACKUP_S3_BUCKET" --key bench/ours.bin --query ContentLength --output text)
[ "$SIZE_OURS" = $((MB * 1048576)) ] || { echo "s3 bench: uploaded object has $SIZE_OURS bytes" >&2; exit 1; }

awk -v mb="$MB" -v a="$AWS_S" -v o="$OUR_S" -v ar="$AWS_RSS" -v orss="$OUR_RSS" 'BEGIN {
  printf "aws s3 cp -   : %7.2f s  %7.1f MB/s  peak RSS %6.1f MiB (python process only)\n", a, mb / a, ar / 1024
  printf "clubio-dr     : %7.2f s  %7.1f MB/s  peak RSS %6.1f MiB\n", o, mb / o, orss / 1024
  printf "ratio (aws time / our time): %.2f   our peak RSS %s the 64 MiB target\n", a / o, (orss / 1024 < 64) ? "is under" : "EXCEEDS"
}'
grep "^ours:" "$WORK/ours.log" || true
