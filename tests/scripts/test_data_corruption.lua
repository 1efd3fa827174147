-- The data-corruption runbook end to end on neon-local (real PostgreSQL branches, real PITR):
-- good rows, a pause, a noted time, an UPDATE that corrupts some rows; the runbook finds the
-- window, keeps a safety branch, recovers before it and verifies; the recovery branch holds the
-- pre-corruption values. Failure paths: bad arguments, a failing predicate, a predicate that
-- tries to write, a declined promotion, Neon down.
--
-- Runs in a neon-local project of its own (the promotion case moves its default branch).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, time, neon, pgdump = require "env", require "time", require "neon", require "pgdump"

local PROJECT = U.project("dc")
local n = neon.client{project_id = PROJECT}
local TABLE = "dc_items_" .. U.TAG
local E = {NEON_PROJECT_ID = PROJECT, CLUBIO_DR_JOURNAL = "off"}
local made = {}

local function branch_url(b) return n:connection_uri{branch = b} end

-- good rows on the default branch (the promotion case) and on a work branch made from it
local main = n:branch("main")
do
  local db <close> = pgdump.connect(branch_url(main.id))
  db:query(string.format([[CREATE TABLE %s (id int PRIMARY KEY, price numeric NOT NULL, note text,
                           updated_at timestamptz NOT NULL DEFAULT now());
                           INSERT INTO %s (id, price, note, updated_at)
                             SELECT g, g * 1.5, 'good', now() FROM generate_series(1, 200) g]], TABLE, TABLE))
end
time.sleep(1.2)

-- corrupts rows 1..20 of the table on branch b after a pause; returns the time noted before
local function corrupt(b)
  -- pauses of 2.5 s: under load, a new branch's history window can start a second or two after
  -- the branch was asked for, and the default point must fit between it and the corruption
  time.sleep(2.5)
  local noted = time.now()
  time.sleep(2.5)
  local db <close> = pgdump.connect(branch_url(b))
  local _, changed = db:query(string.format("UPDATE %s SET price = -1, note = 'bad', updated_at = now() WHERE id <= 20", TABLE))
  T.eq(tonumber(changed), 20)
  return noted
end

local function prices(b)
  local db <close> = pgdump.connect(branch_url(b))
  local r = db:query(string.format("SELECT count(*) FILTER (WHERE price < 0) AS bad, count(*) AS n, sum(price) AS total FROM %s", TABLE))[1]
  return tonumber(r.bad), tonumber(r.n), r.total
end

T.case("bad arguments are one clear line with exit 2", function()
  local r = U.run({"data-corruption"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "data%-corruption: missing arguments %(2 needed: TABLE and PREDICATE")
  r = U.run({"data-corruption", TABLE, "price < 0", "--since", "1h"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "unknown option '%-%-since' %(options: %-%-at, %-%-branch%)")
  r = U.run({"data-corruption", TABLE, "price < 0", "--at", "not-a-time"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "not an ISO 8601 timestamp")
  r = U.run({"data-corruption", TABLE, "price < 0", "--at", "2999-01-01T00:00:00Z"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "in the future")
  r = U.run({"data-corruption", TABLE, "price < 0", "--bogus", "1"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "unknown option '%-%-bogus'")
  r = U.run({"data-corruption", "no_such_table_" .. U.TAG, "true"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "no table")
  r = U.run({"data-corruption", TABLE, "price <", "--dry-run"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "the predicate failed")
  r = U.run({"data-corruption", TABLE, "price < 0"}, E)
  T.eq(r.status, 2, r.stderr)
  T.match(r.stderr, "no rows of .* match the predicate")
  r = U.run({"data-corruption", TABLE, "price > 0"}, {NEON_PROJECT_ID = false})
  T.eq(r.status, 3)
  T.match(r.stderr, "NEON_PROJECT_ID")
end)

T.case("the predicate runs read-only, as one statement", function()
  -- a write inside the predicate fails in the READ ONLY transaction; a second statement is refused
  local db <close> = pgdump.connect(branch_url(main.id))
  db:query(string.format("CREATE FUNCTION %s_wipe() RETURNS boolean LANGUAGE sql AS 'DELETE FROM %s; SELECT true'", TABLE, TABLE))
  local r = U.run({"data-corruption", TABLE, TABLE .. "_wipe()", "--dry-run"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "read%-only transaction")
  r = U.run({"data-corruption", TABLE, string.format("true); DELETE FROM %s; SELECT (1", TABLE), "--dry-run"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "the predicate failed")
  T.eq(db:query("SELECT count(*) AS n FROM " .. TABLE)[1].n, "200", "nothing deleted")
end)

T.case("default point on a work branch: recovered before the corruption, verified, not promoted", function()
  local work = "dc-work-" .. U.TAG
  n:create_branch{name = work, parent = main.id}
  made[#made + 1] = work
  corrupt(work)
  T.eq((prices(work)), 20)
  -- dry run: the window and the plan, no branch
  local before = #n:branches()
  local r = U.run({"data-corruption", TABLE, "price < 0", "--branch", work, "--dry-run", "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.bad_rows, 20)
  T.eq(#n:branches(), before, "a dry run makes no branch")
  -- 15 minutes before the corruption is before this project existed: the dry run says so and
  -- proposes a point inside the window, still before the first bad change
  T.match(r.stderr, "is before the history window")
  local proposed = time.parse(r.doc.result.recovery_point)
  T.ok(proposed < time.parse(r.doc.result.first_bad), "proposed point before the first bad change")
  T.ok(proposed >= time.parse(n:project().created_at), "proposed point inside the project's history")
  -- the real run: 15 minutes before is outside this branch's history, so the window's start
  r = U.run({"data-corruption", TABLE, "price < 0", "--branch", work, "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  local res = r.doc.result
  made[#made + 1] = res.recovery_branch
  made[#made + 1] = res.safety_branch
  T.eq(res.bad_rows, 20)
  T.eq(res.recovered_bad, 0)
  T.eq(res.recovered_rows, 200)
  T.eq(res.promoted, false, "a non-default branch is not promoted")
  T.ok(time.parse(res.recovery_point) < time.parse(res.first_bad), "recovery point before the first bad change")
  -- what promoting gives up: the bad rows, and no other change here; none is called legitimate
  T.eq(res.changed_since, 20)
  T.eq(res.other_changes, 0)
  local bad, rows, total = prices(res.recovery_branch)
  T.eq(bad, 0)
  T.eq(rows, 200)
  local db <close> = pgdump.connect(branch_url(res.recovery_branch))
  T.eq(db:query("SELECT price::text AS p, note FROM " .. TABLE .. " WHERE id = 7")[1].p, "10.5", "pre-corruption value")
  T.eq(db:query("SELECT count(*) AS n FROM " .. TABLE .. " WHERE note = 'good'")[1].n, "200")
  -- the safety branch keeps the corrupted data
  T.eq((prices(res.safety_branch)), 20)
  T.no_match(r.stdout .. r.stderr, env.get("NEON_API_KEY"), "no API key in the output")
  T.match(res.connection, "^[%w_]+@127%.0%.0%.1:%d+/[%w_]+$", "connection details without the password")
  T.eq(total ~= nil, true)
end)

T.case("--at on the default branch: a declined promotion, then promotion with --yes", function()
  local noted = corrupt(main.id)
  -- non-interactive without --yes: recovered and verified, promotion refused (exit 5)
  local r = U.run({"data-corruption", TABLE, "note = 'bad'", "--at", time.iso(noted)}, E)
  T.eq(r.status, 5, r.stderr)
  T.match(r.stderr, "refusing without confirmation")
  T.match(r.stdout, "recovered branch%s+recovery%-")
  T.match(r.stdout, "@127%.0%.0%.1:%d+/")
  T.no_match(r.stdout, "%*%*%*")
  T.match(r.stdout, "the 20 bad row%(s%), and 0 other change%(s%) that may be legitimate")
  T.no_match(r.stdout, "re%-apply the %d+ legitimate")
  local declined_branch = r.stdout:match("recovered branch%s+(recovery%-[%d%-]+)")
  made[#made + 1] = declined_branch
  made[#made + 1] = r.stdout:match("safety branch%s+(pre%-recovery%-[%d%-]+)")
  T.eq(n:branch("main").default, true, "still the default after a declined promotion")
  -- an --at after the first bad change is refused
  r = U.run({"data-corruption", TABLE, "note = 'bad'", "--at", time.iso(time.now())}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "not before the first bad change")
  -- with --yes: promoted
  time.sleep(1.1) -- branch names carry the second
  r = U.run({"data-corruption", TABLE, "note = 'bad'", "--at", time.iso(noted), "--yes", "--json"}, E)
  local ok, err = pcall(function()
    T.eq(r.status, 0, r.stderr)
    local res = r.doc.result
    made[#made + 1] = res.recovery_branch
    made[#made + 1] = res.safety_branch
    T.eq(res.promoted, true)
    T.eq(res.recovery_point, time.iso(noted))
    T.eq(n:branch(res.recovery_branch).default, true)
    local bad, rows = prices(res.recovery_branch)
    T.eq(bad, 0)
    T.eq(rows, 200)
  end)
  n:set_default("main") -- put the sandbox back whatever happened
  if not ok then error(err, 0) end
end)

T.case("rows still bad at the recovery point: verification fails (exit 4), branches kept", function()
  -- a writer with a clock one hour ahead corrupts rows 1..5 first; the window (from updated_at)
  -- only sees the later wave, so a point between the two waves still holds bad rows
  local work = "dc-skew-" .. U.TAG
  n:create_branch{name = work, parent = main.id}
  made[#made + 1] = work
  time.sleep(1.2)
  local db <close> = pgdump.connect(branch_url(work))
  db:query(string.format("UPDATE %s SET price = -2, updated_at = now() + interval '1 hour' WHERE id <= 5", TABLE))
  time.sleep(1.2)
  local between = time.now()
  time.sleep(1.2)
  db:query(string.format("UPDATE %s SET price = -2, updated_at = now() WHERE id BETWEEN 6 AND 10", TABLE))
  local r = U.run({"data-corruption", TABLE, "price = -2", "--branch", work, "--at", time.iso(between)}, E)
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "5 row%(s%) of .* still match the predicate on recovery%-")
  T.match(r.stderr, "HINT: the corruption started earlier")
  local rec = r.stderr:match("on (recovery%-[%d%-]+)")
  made[#made + 1] = rec
  made[#made + 1] = r.stderr:match("(pre%-recovery%-[%d%-]+)")
  T.ok(n:branch(rec), "the recovery branch is kept for inspection")
end)

T.case("Neon API down: a clear failure, nothing hangs", function()
  local r = U.run({"data-corruption", TABLE, "price < 0"},
                  {NEON_PROJECT_ID = PROJECT, CLUBIO_DR_JOURNAL = "off", NEON_TIMEOUT = "3",
                   NEON_API_HOST = "http://127.0.0.1:" .. U.closed_port() .. "/api/v2"}, {})
  T.ok(r.status ~= 0, "fails")
  T.match(r.stderr, "cannot reach")
end)

for i = #made, 1, -1 do
  if made[i] and n:branch(made[i]) then pcall(n.delete_branch, n, made[i]) end
end
do
  local db <close> = pgdump.connect(branch_url(main.id))
  db:query("DROP TABLE IF EXISTS " .. TABLE .. "; DROP FUNCTION IF EXISTS " .. TABLE .. "_wipe()")
end
return T.finish()
