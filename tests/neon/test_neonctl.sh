#!/bin/sh
# The real Neon CLI (npm neonctl) against neon-local: projects list, branches list, create (also at a past timestamp,
# a real point-in-time branch), connection strings, reset, set-default, delete. The API key
# reaches neonctl through NEON_API_KEY (never argv); NEON_API_HOST points at neon-local.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
NC=$HERE/../sandbox/node_modules/.bin/neonctl
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok $1" >&2; }
bad() { fail=$((fail + 1)); echo "not ok $1" >&2; }
nc() { "$NC" --no-analytics --project-id "$NEON_PROJECT_ID" "$@" </dev/null; }
# psql with the password of a connection string in PGPASSWORD, not in argv
q() {
    pw=$(python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlparse(sys.argv[1]).password))' "$1")
    PGPASSWORD=$pw psql -X -At "$(printf '%s' "$1" | sed 's|://\([^:]*\):[^@]*@|://\1@|')" -c "$2"
}
[ -x "$NC" ] || { echo "neonctl missing; run tools/setup.sh" >&2; echo "0 passed, 1 failed"; exit 1; }
u=$$
tbl=nc_$u

nc branches list -o json >/tmp/nc.$u.json 2>&1 && grep -q '"name": "main"' /tmp/nc.$u.json &&
    ok "branches list" || bad "branches list: $(cat /tmp/nc.$u.json)"

# projects list asks /projects and /projects/shared (the API's shared projects)
"$NC" --no-analytics projects list -o json </dev/null >/tmp/nc.$u.json 2>&1 &&
    grep -q "\"$NEON_PROJECT_ID\"" /tmp/nc.$u.json && ok "projects list" || bad "projects list: $(cat /tmp/nc.$u.json)"

main=$(nc connection-string main --ssl omit 2>/dev/null)
[ "$main" = "$DATABASE_URL" ] && ok "connection-string of main is DATABASE_URL" || bad "connection-string main"
q "$main" "CREATE TABLE $tbl(i int); INSERT INTO $tbl VALUES (1)" >/dev/null
sleep 1.1
at=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
sleep 1.1
q "$main" "INSERT INTO $tbl VALUES (2)" >/dev/null

nc branches create --name "nc-pitr-$u" --parent "$at" >/tmp/nc.$u.out 2>&1 &&
    ok "branches create --parent <timestamp>" || bad "create --parent: $(cat /tmp/nc.$u.out)"
nc branches create --name "nc-head-$u" >/tmp/nc.$u.out 2>&1 && ok "branches create" || bad "create: $(cat /tmp/nc.$u.out)"
# neonctl retries 423 while operations run but does not wait for them; we wait for "ready"
settle() {
    i=0
    while [ $i -lt 300 ] && nc branches list -o json 2>/dev/null | grep -q '"current_state": "init"'; do
        i=$((i + 1)); sleep 0.2
    done
}
settle
pitr=$(nc connection-string "nc-pitr-$u" 2>/dev/null)
case $pitr in postgresql://app:*@127.0.0.1:*/clubio\?sslmode=require*) ok "connection-string of a new branch" ;;
*) bad "connection-string: $(echo "$pitr" | sed 's/:[^:@]*@/:***@/')" ;; esac
[ "$(q "$pitr" "SELECT string_agg(i::text, ',' ORDER BY i) FROM $tbl")" = "1" ] &&
    ok "the --parent <timestamp> branch holds the rows as of that time" || bad "pitr rows"
head=$(nc connection-string "nc-head-$u" 2>/dev/null)
q "$head" "INSERT INTO $tbl VALUES (42)" >/dev/null
nc branches reset "nc-head-$u" --parent >/tmp/nc.$u.out 2>&1 && ok "branches reset --parent" || bad "reset: $(cat /tmp/nc.$u.out)"
settle
[ "$(q "$head" "SELECT string_agg(i::text, ',' ORDER BY i) FROM $tbl")" = "1,2" ] &&
    ok "reset replaced the data, same endpoint" || bad "reset data"
nc branches set-default "nc-head-$u" >/tmp/nc.$u.out 2>&1 && nc branches list 2>/dev/null | grep -q "\[default\] nc-head-$u" &&
    ok "branches set-default" || bad "set-default: $(cat /tmp/nc.$u.out)"
nc branches set-default main >/dev/null 2>&1
for b in "nc-pitr-$u" "nc-head-$u"; do
    nc branches delete "$b" >/tmp/nc.$u.out 2>&1 && ok "branches delete $b" || bad "delete $b: $(cat /tmp/nc.$u.out)"
done
sleep 1
nc branches list 2>/dev/null | grep -q "nc-pitr-$u" && bad "deleted branch still listed" || ok "deleted branches gone"
q "$main" "DROP TABLE $tbl" >/dev/null
rm -f /tmp/nc.$u.out /tmp/nc.$u.json
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
