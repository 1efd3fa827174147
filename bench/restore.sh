#!/bin/sh
# Benchmark of the base restore from S3 (restore-from-s3 TARGET KEY: the first half of the RTO
# of a complete loss) against what a user would otherwise pick, measured in the same run.
#
#   bench/restore.sh BIN [MB]     BIN = path of clubio-dr; MB = database size (default 480,
#                                 about 444 MB on disk)
#
# Starts a private sandbox (tests/sandbox/sandbox.sh, state in a temp folder; BENCH_SANDBOX=STATE
# uses a running one), generates the database of bench/pgdump.sh (customers, orders with notes,
# events with jsonb; primary keys, a foreign key, secondary indexes), exports it with
# `clubio-dr run export-database` to the sandbox's S3, dumps it with `pg_dump -Fd` (compressed,
# the default) to a local folder (not timed), then times, each into a new empty database:
#   ours       clubio-dr run restore-from-s3 - KEY: download, decrypt, gunzip, load, then the
#              after-restore check (every table read back and compared with the manifest);
#              "restore" is the restore step alone, "with check" the whole command
#   baseline   pg_restore -j 2 -d DB DIR (local files, nothing to download or decrypt)
# and prints the ratios (baseline time / our time: > 1 means we are faster; target >= 1.0 for
# the restore step): the median of RUNS (5) runs' own ratios, each run timing both back to back
# in alternating order after a CHECKPOINT; RUNS=1 for a quick look. On a 2-core machine shared
# with other work one restore varies by 50% from run to run: read the per-run figures too.
set -eu
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
MB=${2:-480}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/clubio-bench-restore-XXXXXX)
chmod 755 "$WORK" # the sandbox server runs as user postgres when we are root
STATE=${BENCH_SANDBOX:-$WORK/sandbox}
cleanup() {
    [ -n "${PGHOST:-}" ] && for d in bench_src r_ours r_pgr; do
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
    done
    [ -z "${BENCH_SANDBOX:-}" ] && "$ROOT/tests/sandbox/sandbox.sh" stop "$STATE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ -n "${BENCH_SANDBOX:-}" ] || "$ROOT/tests/sandbox/sandbox.sh" start "$STATE" >/dev/null
. "$STATE/env.sh"
export PGHOST=127.0.0.1 PGPORT=$SANDBOX_PG_PORT PGUSER=postgres PGPASSWORD=$SANDBOX_PG_ADMIN_PW
BASE=${SANDBOX_PG_ADMIN_URL%/postgres}
export BACKUP_ENCRYPTION_KEY=${BACKUP_ENCRYPTION_KEY:-bench-passphrase-not-secret}
export EXPORT_PREFIX=bench-restore-$(date +%s)/ DATABASE_URL=$BASE/bench_src
RUNS=${RUNS:-5}

now() { date +%s.%N; }
ratio() { echo "scale=2; $1 / $2" | bc; }
median() { sort -n "$1" | sed -n "$((($(wc -l <"$1") + 1) / 2))p"; }
newdb() { psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
dropdb() { psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"; }

# ---- data ------------------------------------------------------------------------------------
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "generating a database of about $MB MB..."
newdb bench_src
ROWS=$((MB * 1000000 / 270)) # about 270 bytes per order with its event and index entries
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -d bench_src -f "$HERE/gen_db.sql" >/dev/null
SIZE=$(psql -X -At -d bench_src -c "SELECT pg_size_pretty(pg_database_size('bench_src'))")
echo "database: $SIZE ($ROWS orders); $(getconf _NPROCESSORS_ONLN) cores shared with other work"

"$BIN" run export-database --json >"$WORK/export.json" 2>"$WORK/export.log" || {
    cat "$WORK/export.log"
    exit 1
}
KEY=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["result"]; print(r["key"])' "$WORK/export.json")
ASIZE=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["result"]; print(r.get("stored_bytes") or r.get("bytes") or "?")' "$WORK/export.json")
pg_dump -Fd -f "$WORK/dir" -d bench_src
echo "archive: $KEY ($ASIZE bytes in S3); pg_dump -Fd folder: $(du -sb "$WORK/dir" | cut -f1) bytes"

# ---- restore ---------------------------------------------------------------------------------
# Each run times both, back to back, in alternating order, each after a CHECKPOINT (untimed):
# a restore writes about 1 GB of WAL, and the checkpoint it triggers would otherwise land on
# whichever restore comes next. The ratio is the median of the runs' own ratios (the two
# restores of a run see about the same load from the rest of the machine).
pgr() {
    newdb r_pgr
    psql -X -q -d postgres -c CHECKPOINT
    t0=$(now)
    /usr/bin/time -f "%U %S" -o "$WORK/cpu" pg_restore -j 2 -d r_pgr "$WORK/dir"
    t1=$(now)
    echo "$t1 - $t0" | bc >>"$WORK/t_pgr"
    awk '{print $1 + $2}' "$WORK/cpu" >>"$WORK/c_pgr"
    dropdb r_pgr
}
ours() {
    newdb r_ours
    psql -X -q -d postgres -c CHECKPOINT
    t0=$(now)
    RESTORE_TARGET_URL=$BASE/r_ours /usr/bin/time -f "%U %S" -o "$WORK/cpu" "$BIN" run restore-from-s3 - "$KEY" --json >"$WORK/ours.json" 2>"$WORK/ours.log" || {
        cat "$WORK/ours.log" "$WORK/ours.json"
        exit 1
    }
    t1=$(now)
    echo "$t1 - $t0" | bc >>"$WORK/t_ours"
    awk '{print $1 + $2}' "$WORK/cpu" >>"$WORK/c_ours"
    python3 - "$WORK/ours.json" "$WORK/t_step" "$WORK/t_check" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
steps = {s["step"]: s["seconds"] for s in r["steps"]}
rest = [v for k, v in steps.items() if k.startswith("restore ")]
open(sys.argv[2], "a").write("%.3f\n" % rest[0])
open(sys.argv[3], "a").write("%.3f\n" % steps["compare with the manifest"])
PY
    dropdb r_ours
}
for f in t_ours t_step t_check t_pgr c_pgr c_ours; do : >"$WORK/$f"; done
i=0
while [ "$i" -lt "$RUNS" ]; do
    if [ $((i % 2)) = 0 ]; then pgr; ours; else ours; pgr; fi
    i=$((i + 1))
done
# per-run ratios: pg_restore / our restore step, pg_restore / our whole command
paste "$WORK/t_pgr" "$WORK/t_step" | awk '{printf "%.3f\n", $1 / $2}' >"$WORK/r_step"
paste "$WORK/t_pgr" "$WORK/t_ours" | awk '{printf "%.3f\n", $1 / $2}' >"$WORK/r_ours"
runs_of() { tr '\n' ' ' <"$WORK/$1"; }
T_PGR=$(median "$WORK/t_pgr")
T_STEP=$(median "$WORK/t_step")
R_STEP=$(median "$WORK/r_step")
echo "restore of $SIZE, $RUNS runs (medians; each run's figures in brackets):"
echo "  pg_restore -j 2 (local -Fd folder)         ${T_PGR} s   [$(runs_of t_pgr)]  client CPU $(median "$WORK/c_pgr") s"
echo "  restore-from-s3, restore step              ${T_STEP} s   [$(runs_of t_step)]"
echo "  restore-from-s3, after-restore check       $(median "$WORK/t_check") s   [$(runs_of t_check)]"
echo "  restore-from-s3, whole command with check  $(median "$WORK/t_ours") s   [$(runs_of t_ours)]  client CPU $(median "$WORK/c_ours") s"
echo "  ratio, restore step                        ${R_STEP}x   [$(runs_of r_step)] (target >= 1.0)"
echo "  ratio, whole command with check            $(median "$WORK/r_ours")x   [$(runs_of r_ours)]"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$(echo "$R_STEP >= 1" | bc)" = 1 ]
