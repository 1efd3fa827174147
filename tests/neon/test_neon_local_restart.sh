#!/bin/sh
# neon-local survives its own restart: a private instance (its own state folder and port, not the
# shared sandbox's) gets a table with a row on main and a second branch; a clean stop takes every
# branch's cluster down with it; after a start on the same state, the branches, their data and
# the connection URI of main are all back.
#   sh tests/neon/test_neon_local_restart.sh path/to/clubio-dr
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")/../sandbox" && pwd)
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok $1" >&2; }
bad() { fail=$((fail + 1)); echo "not ok $1" >&2; }
STATE=$(mktemp -d /tmp/clubio-neon-restart-XXXXXX)
chmod 755 "$STATE"
ENVF=$STATE/env.sh
: >"$ENVF"
# shellcheck disable=SC1091
. "$HERE/neon-local.sh"
cleanup() { neon_local_stop "$STATE" >/dev/null 2>&1; rm -rf "$STATE"; }
trap cleanup EXIT INT TERM

neon_local_start "$STATE" "$ENVF" || { echo "0 passed, 1 failed"; exit 1; }
# shellcheck disable=SC1090
. "$ENVF"
lua() { NEON_PROJECT_ID=clubio-primary "$BIN" -e "local n = require('neon').client{} local pgdump = require('pgdump') $1"; }
uri1=$(lua "print(n:connection_uri{branch = 'main'})")
lua "local c = pgdump.connect(n:connection_uri{branch = 'main'})
     c:query('CREATE TABLE kept (i int)') c:query('INSERT INTO kept VALUES (42)')
     n:create_branch{name = 'survivor'}" && ok "a table on main and a branch" || bad "setup"

port=$(printf '%s' "$uri1" | sed 's|.*@[^:]*:\([0-9]*\)/.*|\1|')
neon_local_stop "$STATE"
if pg_isready -q -h 127.0.0.1 -p "$port"; then bad "main's cluster still runs after the stop"; else ok "the stop takes the clusters down"; fi

neon_local_start "$STATE" "$ENVF" || bad "restart"
# shellcheck disable=SC1090
. "$ENVF"
uri2=$(lua "print(n:connection_uri{branch = 'main'})")
[ "$uri1" = "$uri2" ] && ok "main keeps its connection URI" || bad "main's URI changed"
got=$(lua "local c = pgdump.connect(n:connection_uri{branch = 'main'}) print(c:query('SELECT i FROM kept')[1].i)
           print(n:branch('survivor') ~= nil)
           local s = pgdump.connect(n:connection_uri{branch = 'survivor'}) print(s:query('SELECT i FROM kept')[1].i)")
[ "$(echo $got)" = "42 true 42" ] && ok "branches and their data are back" || bad "after the restart: $got"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
