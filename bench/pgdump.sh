#!/bin/sh
# Benchmark of the pgdump module against the stock tools, measured in the same run.
#
#   bench/pgdump.sh BIN [MB]     BIN = path of clubio-dr; MB = database size (default 800)
#
# Starts a private sandbox PostgreSQL (tests/sandbox/sandbox.sh, state in a temp folder),
# generates a database of realistic, moderately compressible data (customers, orders with
# notes, events with jsonb; primary keys, a foreign key and secondary indexes), then times:
#   export   pg_dump > file                          vs  pgdump.dump -> file
#            pg_dump | gzip -6 | openssl enc ...      vs  pgdump.dump -> crypto.gzip -> crypto.encrypt
#                                                        (when this binary has crypto.gzip/encrypt;
#                                                        default level, and level 6 for reference)
#   restore  psql -v ON_ERROR_STOP=1 < plain.sql     vs  pgdump.restore{jobs = 2}
#            pg_restore -j 2 (custom format)         vs  pgdump.restore{jobs = 2}
# and prints the ratios (baseline time / our time: > 1 means we are faster) and our peak RSS.
# Every time is the median of three runs (ours and the baselines alike): on a shared 2-core
# machine one run of a 5 s restore varies by 10% or more, and now and then a baseline or ours
# waits a second for the server to cancel an autovacuum. RUNS=1 for a quick look.
# The load average is printed at the start and the end.
set -eu
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
MB=${2:-800}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/clubio-bench-pgdump-XXXXXX)
chmod 755 "$WORK" # the sandbox server runs as user postgres when we are root
STATE=$WORK/sandbox
cleanup() {
    "$ROOT/tests/sandbox/sandbox.sh" stop "$STATE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$ROOT/tests/sandbox/sandbox.sh" start "$STATE" >/dev/null
. "$STATE/env.sh"
export PGHOST=127.0.0.1 PGPORT=$SANDBOX_PG_PORT PGUSER=postgres PGPASSWORD=$SANDBOX_PG_ADMIN_PW
BASE=${SANDBOX_PG_ADMIN_URL%/postgres}
export BACKUP_ENCRYPTION_KEY=${BACKUP_ENCRYPTION_KEY:-bench-passphrase-not-secret}

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
ratio() { echo "scale=2; $1 / $2" | bc; }
newdb() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
# Runs a command under /usr/bin/time, prints its seconds; peak RSS (KiB) goes to $WORK/rss.
timed() {
    t0=$(now)
    /usr/bin/time -f %M -o "$WORK/rss" "$@" >&2
    t1=$(now)
    elapsed "$t0" "$t1"
}
RUNS=${RUNS:-3}
# runs PRE CMD... POST: RUNS times PRE (untimed), CMD (timed), POST (untimed); prints the median
# seconds; the highest peak RSS of the runs goes to $WORK/rss.
runs() {
    pre=$1 post=$2
    shift 2
    : >"$WORK/times"
    max=0
    i=0
    while [ "$i" -lt "$RUNS" ]; do
        eval "$pre"
        timed "$@" >>"$WORK/times"
        r=$(cat "$WORK/rss")
        [ "$r" -gt "$max" ] && max=$r
        eval "$post"
        i=$((i + 1))
    done
    echo "$max" >"$WORK/rss"
    sort -n "$WORK/times" | sed -n "$(((RUNS + 1) / 2))p"
}

# ---- data ------------------------------------------------------------------------------------
echo "generating a database of about $MB MB..."
newdb bench
ROWS=$((MB * 1000000 / 270)) # about 270 bytes per order with its event and index entries
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -d bench -f "$HERE/gen_db.sql"
SIZE=$(psql -X -At -d bench -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "database: $SIZE ($ROWS orders); $(getconf _NPROCESSORS_ONLN) cores shared with other work, load $(cut -d' ' -f1-3 /proc/loadavg)"

HAS_CRYPTO=$("$BIN" -e 'local ok, c = pcall(require, "crypto"); return ok and c.gzip ~= nil and c.encrypt ~= nil' 2>/dev/null || echo false)

cat > "$WORK/dump.lua" <<'LUA'
local pipe, pgdump = require "pipe", require "pgdump"
local r = pipe.run{pgdump.dump{url = arg[1], jobs = 2}, pipe.file_sink(arg[2])}
io.stderr:write(string.format("dumped %d tables\n", r.pgdump.table_count))
LUA
cat > "$WORK/export.lua" <<'LUA'
local pipe, pgdump, crypto, secret = require "pipe", require "pgdump", require "crypto", require "secret"
local level = tonumber(arg[3]) ~= 0 and tonumber(arg[3]) or nil -- 0: crypto.gzip's default
local r = pipe.run{pgdump.dump{url = arg[1], jobs = 2}, crypto.gzip{level = level},
                   crypto.encrypt{passphrase = secret.env("BACKUP_ENCRYPTION_KEY")}, pipe.file_sink(arg[2])}
local f = assert(io.open(arg[4], "w"))
f:write(string.format("level %d, the dump held at most %.1f MiB ahead of gzip", r.gzip.level,
                      r.pgdump.peak_buffered / 1048576))
f:close()
LUA
cat > "$WORK/restore.lua" <<'LUA'
local pipe, pgdump = require "pipe", require "pgdump"
pipe.run{pipe.file(arg[1]), pgdump.restore{url = arg[2], jobs = 2}}
LUA
cat > "$WORK/import.lua" <<'LUA'
local pipe, pgdump, crypto, secret = require "pipe", require "pgdump", require "crypto", require "secret"
pipe.run{pipe.file(arg[1]), crypto.decrypt{passphrase = secret.env("BACKUP_ENCRYPTION_KEY")}, crypto.gunzip{},
         pgdump.restore{url = arg[2], jobs = 2}}
LUA

# ---- export ----------------------------------------------------------------------------------
echo "export:"
T_PGDUMP=$(runs "rm -f '$WORK/stock.sql'" "" sh -c "pg_dump -d bench > '$WORK/stock.sql'")
T_OURS=$(runs "rm -f '$WORK/ours.sql'" "" "$BIN" run "$WORK/dump.lua" "$BASE/bench" "$WORK/ours.sql")
RSS_DUMP=$(cat "$WORK/rss")
echo "  pg_dump > file                 ${T_PGDUMP}s  $(stat -c %s "$WORK/stock.sql") bytes"
echo "  pgdump.dump > file             ${T_OURS}s  $(stat -c %s "$WORK/ours.sql") bytes  peak RSS $((RSS_DUMP / 1024)) MiB"
echo "  ratio (plain dump)             $(ratio "$T_PGDUMP" "$T_OURS")x"
T_CHAIN_BASE=$(runs "" "" sh -c "pg_dump -d bench | gzip -6 | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY > '$WORK/stock.sql.gz.enc'")
echo "  pg_dump | gzip | openssl enc   ${T_CHAIN_BASE}s  $(stat -c %s "$WORK/stock.sql.gz.enc") bytes"
if [ "$HAS_CRYPTO" = true ]; then
    T_CHAIN=$(runs "rm -f '$WORK/ours.sql.gz.enc'" "" "$BIN" run "$WORK/export.lua" "$BASE/bench" "$WORK/ours.sql.gz.enc" 0 "$WORK/info")
    RSS_CHAIN=$(cat "$WORK/rss")
    echo "  dump -> gzip -> encrypt        ${T_CHAIN}s  $(stat -c %s "$WORK/ours.sql.gz.enc") bytes  peak RSS $((RSS_CHAIN / 1024)) MiB  ($(cat "$WORK/info"))"
    echo "  ratio (export chain)           $(ratio "$T_CHAIN_BASE" "$T_CHAIN")x (target >= 3)"
    T_CHAIN6=$(runs "rm -f '$WORK/ours6.sql.gz.enc'" "" "$BIN" run "$WORK/export.lua" "$BASE/bench" "$WORK/ours6.sql.gz.enc" 6 "$WORK/info")
    echo "  same with crypto.gzip{level=6} ${T_CHAIN6}s  $(stat -c %s "$WORK/ours6.sql.gz.enc") bytes  peak RSS $(($(cat "$WORK/rss") / 1024)) MiB"
    echo "  ratio (export chain, level 6)  $(ratio "$T_CHAIN_BASE" "$T_CHAIN6")x"
    rm -f "$WORK/ours6.sql.gz.enc"
    # the stock tools open our archive, and it holds the plain dump (the same bytes but for the
    # random keys of pg_dump's \restrict/\unrestrict lines, new in every dump)
    unkeyed() { grep -a -v -E '^\\(un)?restrict '; }
    A=$(openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in "$WORK/ours.sql.gz.enc" | gunzip |
        unkeyed | sha256sum)
    B=$(unkeyed <"$WORK/ours.sql" | sha256sum)
    if [ "$A" = "$B" ]; then
        printf '%s\n' "  openssl enc -d | gunzip of our archive = pgdump.dump > file (but for \\restrict keys)"
    else
        echo "MISMATCH: openssl enc -d | gunzip of our archive differs from the plain dump" >&2
        exit 1
    fi
else
    echo "  (this binary has no crypto.gzip/crypto.encrypt: the full export chain is not measured)"
fi

# ---- restore ---------------------------------------------------------------------------------
# Each restored database is checked and dropped before the next restore: the disk is shared
# and five copies of the bench database do not fit on it.
rm -f "$WORK/stock.sql"
dropdb() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"; }
# the restored copy holds the same rows
same_rows() {
    for t in customers orders events; do
        a=$(psql -X -At -d bench -c "SELECT count(*) FROM $t")
        b=$(psql -X -At -d "$1" -c "SELECT count(*) FROM $t")
        [ "$a" = "$b" ] || { echo "MISMATCH in $1.$t: $b rows, the source has $a" >&2; exit 1; }
    done
}
echo "restore:"
pg_dump -Fc -d bench -f "$WORK/stock.dump"
T_PSQL=$(runs "newdb r_psql" "dropdb r_psql" psql -X -q -v ON_ERROR_STOP=1 -d r_psql -f "$WORK/ours.sql" -o /dev/null)
T_PGR=$(runs "newdb r_pgr" "dropdb r_pgr" pg_restore -j 2 -d r_pgr "$WORK/stock.dump")
rm -f "$WORK/stock.dump"
T_REST=$(runs "newdb r_ours" "same_rows r_ours; dropdb r_ours" "$BIN" run "$WORK/restore.lua" "$WORK/ours.sql" "$BASE/r_ours")
RSS_REST=$(cat "$WORK/rss")
echo "  psql < plain.sql               ${T_PSQL}s"
echo "  pg_restore -j 2                ${T_PGR}s"
echo "  pgdump.restore{jobs = 2}       ${T_REST}s  peak RSS $((RSS_REST / 1024)) MiB"
echo "  ratio vs psql                  $(ratio "$T_PSQL" "$T_REST")x (target >= 1.3)"
echo "  ratio vs pg_restore -j 2       $(ratio "$T_PGR" "$T_REST")x (target >= 1.0)"
if [ "$HAS_CRYPTO" = true ]; then
    T_CHAIN_BASE=$(runs "newdb r_psql2" "dropdb r_psql2" sh -c "openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in '$WORK/stock.sql.gz.enc' | gunzip | psql -X -q -v ON_ERROR_STOP=1 -d r_psql2 -o /dev/null")
    T_CHAIN=$(runs "newdb r_ours2" "same_rows r_ours2; dropdb r_ours2" "$BIN" run "$WORK/import.lua" "$WORK/ours.sql.gz.enc" "$BASE/r_ours2")
    RSS_IMPORT=$(cat "$WORK/rss")
    echo "  openssl enc -d | gunzip | psql ${T_CHAIN_BASE}s"
    echo "  decrypt -> gunzip -> restore   ${T_CHAIN}s  peak RSS $((RSS_IMPORT / 1024)) MiB"
    echo "  ratio (restore chain)          $(ratio "$T_CHAIN_BASE" "$T_CHAIN")x (target >= 1.3)"
fi
echo "restored row counts match the source"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
