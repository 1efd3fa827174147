#!/bin/sh
# Benchmark of the change archive (archive-changes, restore-from-s3 --to), measured in one run.
#
#   bench/changes.sh BIN [SECONDS]    BIN = path of clubio-dr; SECONDS of write load (default 30;
#                                     bench/run.sh passes its MB argument here: a number either way)
#
# Starts a private sandbox (tests/sandbox/sandbox.sh, state in a temp folder), runs the archiver
# with ARCHIVE_INTERVAL=2 while pgbench (2 clients) writes small transactions (two inserts, an
# update, a delete, a sequence) and now and then a bulk insert, then reports:
#   RPO under load   the highest and the median, over samples every 0.5 s, of (now - the last
#                    archived commit) while commits were waiting; target: under 5 s
#   archiver CPU     user+system CPU of the archiver process per 1,000 row changes archived
#   replay           restore-from-s3 --to latest's replay (download, decrypt, gunzip, apply) of
#                    every segment, against `psql -f` of the same SQL (the segments decrypted and
#                    concatenated beforehand, so psql gets the easier job) onto the same base;
#                    ratio = psql time / our time, target: at least 5x; measured twice: on the
#                    sandbox's server (fsync and synchronous_commit off for test speed) and on a
#                    stock server started for the purpose (initdb's defaults), the kind a restore
#                    after a complete loss writes to; each RUNS (3) times in alternating order,
#                    the median of the runs' ratios; "ours" is restore-from-s3's replay_seconds
# Both replays end in the same database (checked with table digests).
set -eu
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SECS=${2:-30}
[ "$SECS" -gt 120 ] 2>/dev/null && SECS=30 # bench/run.sh's MB argument, not seconds
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/clubio-bench-changes-XXXXXX)
chmod 755 "$WORK"
# BENCH_SANDBOX=STATE uses a running sandbox instead of starting one (its own objects and slot)
STATE=${BENCH_SANDBOX:-$WORK/sandbox}
ARCH_PID=
STOCK_UP=
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    [ -n "$ARCH_PID" ] && kill "$ARCH_PID" 2>/dev/null || true
    [ -n "$STOCK_UP" ] && as_pg "$PGBIN/pg_ctl" -D "$STOCK_UP/data" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${CHANGES_SLOT:-}" ] && [ -n "${BENCH_SANDBOX:-}" ] &&
        psql -X -q -d postgres -c "SELECT pg_drop_replication_slot('$CHANGES_SLOT')" >/dev/null 2>&1 || true
    [ -z "${BENCH_SANDBOX:-}" ] && "$ROOT/tests/sandbox/sandbox.sh" stop "$STATE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ -n "${BENCH_SANDBOX:-}" ] || "$ROOT/tests/sandbox/sandbox.sh" start "$STATE" >/dev/null
. "$STATE/env.sh"
export PGHOST=127.0.0.1 PGPORT=$SANDBOX_PG_PORT PGUSER=postgres PGPASSWORD=$SANDBOX_PG_ADMIN_PW
BASE=${SANDBOX_PG_ADMIN_URL%/postgres}
export CHANGES_DATABASE_URL=$BASE/bench_src DATABASE_URL=$BASE/bench_src ARCHIVE_INTERVAL=2
RUN=$(date +%s)
export CHANGES_PREFIX=bench-changes-$RUN/ EXPORT_PREFIX=bench-changes-$RUN/database/ CHANGES_SLOT=bench_changes_$RUN
PGBIN=${SANDBOX_PG_BIN:-/usr/lib/postgresql/15/bin}
PGBENCH=$PGBIN/pgbench
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

newdb() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
newdb bench_src
psql -X -q -d bench_src -v ON_ERROR_STOP=1 <<'EOF'
CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, qty int, note text);
CREATE TABLE events (id bigserial PRIMARY KEY, item bigint, kind text, payload jsonb, at timestamptz DEFAULT now());
CREATE SEQUENCE ticket_seq;
INSERT INTO items (name, qty) SELECT 'seed ' || g, g % 100 FROM generate_series(1, 20000) g;
EOF
cat >"$WORK/small.sql" <<'EOF'
\set q random(1, 100)
BEGIN;
INSERT INTO items (name, qty, note) VALUES ('item ' || :q, :q, 'a note of some length, ' || md5(:q::text));
INSERT INTO events (item, kind, payload) VALUES (currval('items_id_seq'), 'created', '{"q": 1, "src": "bench"}');
UPDATE items SET qty = qty + 1, note = 'updated' WHERE id = currval('items_id_seq') - 7;
DELETE FROM events WHERE id = currval('events_id_seq') - 50;
SELECT nextval('ticket_seq');
COMMIT;
EOF
cat >"$WORK/bulk.sql" <<'EOF'
INSERT INTO events (item, kind, payload) SELECT g, 'bulk', jsonb_build_object('g', g) FROM generate_series(1, 200) g;
EOF

"$BIN" run archive-changes >"$WORK/archiver.log" 2>&1 &
ARCH_PID=$!
i=0
until grep -q "archiving changes" "$WORK/archiver.log"; do
    i=$((i + 1))
    [ $i -gt 600 ] && { cat "$WORK/archiver.log"; exit 1; }
    sleep 0.2
done
cpu() { awk '{print $14 + $15}' "/proc/$ARCH_PID/stat"; }
CPU0=$(cpu)

"$PGBENCH" -n -c 2 -j 1 -T "$SECS" -f "$WORK/small.sql@19" -f "$WORK/bulk.sql@1" bench_src >"$WORK/pgbench.log" 2>&1 &
LOAD=$!
: >"$WORK/rpo"
while kill -0 "$LOAD" 2>/dev/null; do
    "$BIN" run archive-changes --status --json 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print(s.get("rpo_seconds", ""))' >>"$WORK/rpo" || true
    sleep 0.5
done
wait "$LOAD" || { cat "$WORK/pgbench.log"; exit 1; }
TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/pgbench.log")

# wait until the archive holds the last commit
MARK=$(psql -X -At -d bench_src -c "INSERT INTO items (name) VALUES ('mark') RETURNING to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')" | head -1)
i=0
until "$BIN" run archive-changes --status --json 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; sys.exit(0 if s["last_segment"]["last_commit"] >= sys.argv[1] else 1)' "$MARK"; do
    i=$((i + 1))
    [ $i -gt 300 ] && { echo "the archive did not catch up"; tail "$WORK/archiver.log"; exit 1; }
    sleep 0.5
done
CPU1=$(cpu)
kill -TERM "$ARCH_PID"
wait "$ARCH_PID" 2>/dev/null || true
ARCH_PID=

# the segments, their changes and their SQL for psql
"$BIN" -e '
local lib, pipe, crypto = require "clubio.changes", require "pipe", require "crypto"
local cfg = lib.config()
local c = require("clubio.objects").client()
local chain = lib.verify_chain(c, cfg)
local n, ch = 0, 0
for i, m in ipairs(chain) do
  n, ch = n + 1, ch + m.changes
  pipe.run{c:download{bucket = cfg.bucket, key = m.archive.key}, crypto.decrypt{}, crypto.gunzip{},
           pipe.file_sink("'"$WORK"'/seg" .. i .. ".sql")}
end
local f = assert(io.open("'"$WORK"'/counts", "w")); f:write(n, " ", ch, "\n"); f:close()
local b = lib.list_bases(c, cfg)[1]
f = assert(io.open("'"$WORK"'/base", "w")); f:write(b.key, "\n"); f:close()
' >/dev/null
read -r NSEG NCHANGES <"$WORK/counts"
ls "$WORK"/seg*.sql | sort -V | xargs cat >"$WORK/all.sql"
BASEKEY=$(cat "$WORK/base")

now() { date +%s.%N; }

# compare BASE_URL LABEL: psql -f and restore-from-s3 --to latest, each onto a new database
# holding the base, on the server of BASE_URL (PGPORT set for it), RUNS times in alternating
# order; prints each run's figures and the median ratio; sets RATIO and SAME
RUNS=${RUNS:-3}
psql_once() {
    newdb bench_psql
    RESTORE_TARGET_URL=$1/bench_psql "$BIN" run restore-from-s3 - "$BASEKEY" >/dev/null 2>&1
    t0=$(now)
    psql -X -q -v ON_ERROR_STOP=1 -d bench_psql -f "$WORK/all.sql" >/dev/null
    t1=$(now)
    PSQL_S=$(echo "$t1 - $t0" | bc)
}
ours_once() {
    newdb bench_ours
    RESTORE_TARGET_URL=$1/bench_ours "$BIN" run restore-from-s3 --to latest - --json >"$WORK/ours.json" 2>"$WORK/ours.log"
    OURS_S=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["result"]; print("%.3f" % r["replay_seconds"])' "$WORK/ours.json")
}
compare() {
    : >"$WORK/ratios"
    runs=""
    i=0
    while [ $i -lt "$RUNS" ]; do
        if [ $((i % 2)) = 0 ]; then psql_once "$1"; ours_once "$1"; else ours_once "$1"; psql_once "$1"; fi
        echo "scale=2; $PSQL_S / $OURS_S" | bc >>"$WORK/ratios"
        runs="$runs ${PSQL_S}/${OURS_S}"
        i=$((i + 1))
    done
    SAME=yes
    for t in items events; do
        a=$("$BIN" -e "local db = require('pgdump').connect('$1/bench_psql'); return db:table_digest('$t').set_sha256")
        b=$("$BIN" -e "local db = require('pgdump').connect('$1/bench_ours'); return db:table_digest('$t').set_sha256")
        [ "$a" = "$b" ] || SAME=no
    done
    RATIO=$(sort -n "$WORK/ratios" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "replay ($2): median ${RATIO}x (target >= 5x) over $RUNS runs [psql -f s / ours s:$runs]; same result: $SAME"
}

CPU_MS=$(echo "scale=1; ($CPU1 - $CPU0) * 1000 / $(getconf CLK_TCK)" | bc)
PER1K=$(echo "scale=2; $CPU_MS * 1000 / $NCHANGES" | bc)
RPO_MAX=$(sort -n "$WORK/rpo" | grep -v '^$' | tail -1)
RPO_MED=$(sort -n "$WORK/rpo" | grep -v '^$' | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "load: $TX transactions in ${SECS} s (pgbench, 2 clients), $NCHANGES row changes in $NSEG segments"
echo "RPO under load (ARCHIVE_INTERVAL=2): max ${RPO_MAX} s, median ${RPO_MED} s over $(grep -c . "$WORK/rpo") samples (target < 5 s)"
echo "archiver CPU: ${CPU_MS} ms for $NCHANGES row changes = ${PER1K} ms per 1,000"
rc=0
compare "$BASE" "the sandbox's server: fsync and synchronous_commit off"
[ "$SAME" = yes ] || rc=1
[ "$(echo "$RATIO >= 5" | bc)" = 1 ] || rc=1
# The same on a stock server (initdb's defaults: fsync and synchronous_commit on), which is what
# a restore after a complete loss writes to; the sandbox turns durability off for test speed.
STOCK=$WORK/stock
mkdir -p "$STOCK"
[ "$(id -u)" -eq 0 ] && chown postgres: "$STOCK"
SPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$STOCK/data" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$STOCK/data" -l "$STOCK/log" -w -o "-p $SPORT -k $STOCK -c listen_addresses=127.0.0.1" start >/dev/null
STOCK_UP=$STOCK
(
    export PGPORT=$SPORT
    compare "postgresql://postgres@127.0.0.1:$SPORT" "a stock server: fsync and synchronous_commit on"
    [ "$SAME" = yes ]
) || rc=1
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$(echo "$RPO_MAX < 5" | bc)" = 1 ] || rc=1
exit $rc
