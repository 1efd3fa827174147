-- The Neon scripts end to end on neon-local (real PostgreSQL clusters per branch, real PITR):
-- backup-database (daily branch, idempotent, retention), verify-backup (fresh, stale, none),
-- pitr-recovery (exactly the rows as of T, to the millisecond; bad, future and out-of-window
-- timestamps), pitr-test and
-- restore-from-backup (listing, declined confirmation, safety branch, data restored), plus a
-- missing API key and an unreachable API. The test owns a neon-local project of its own, so
-- resetting its main branch cannot disturb other tests that use clubio-primary.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local proc, env, cjson, pgdump, neon, time = require "proc", require "env", require "cjson", require "pgdump",
  require "neon", require "time"
local BIN = env.get("CLUBIO_DR_BIN")

local PROJECT = require("neonlocal").project(string.format("scripts-neon-%d-%d", os.time(), math.random(1000, 9999)))
local n = neon.client{project_id = PROJECT}
local MAIN_URL = n:connection_uri{branch = "main", database = "clubio", role = "app"}
local base_env = {NEON_PROJECT_ID = PROJECT, DATABASE_URL = MAIN_URL, CLUBIO_DR_JOURNAL = "off"}

local function run(args, extra, stdin)
  local e = {}
  for k, v in pairs(base_env) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e, stdin = stdin or ""}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end
local function count(url, sql)
  local c <close> = pgdump.connect(url)
  return tonumber(c:query(sql)[1].n)
end
local function has_branch(name)
  return n:branch(name) ~= nil
end

T.case("verify-backup: no backups yet is a verification failure (exit 4)", function()
  local r = run{"verify-backup"}
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "backup")
end)

local today = "backup-" .. time.ymd(time.now())
T.case("backup-database: today's branch, then a second run is harmless", function()
  T.eq(run{"demo-data", "1000"}.status, 0)
  local r = run{"backup-database", "--json"}
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.branch, today)
  T.eq(r.doc.result.created, true)
  r = run{"backup-database", "--json"}
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.created, false)
  local backups = 0
  for _, b in ipairs(n:branches()) do if b.name:match("^backup%-") then backups = backups + 1 end end
  T.eq(backups, 1)
end)

T.case("backup-database: deletes backups older than RETENTION_DAYS, keeps the rest", function()
  n:create_branch{name = "backup-20200101", parent = "main", endpoint = false}
  n:create_branch{name = "backup-" .. time.ymd(time.add_days(time.now(), -3)), parent = "main", endpoint = false}
  local r = run({"backup-database", "--dry-run"}, {RETENTION_DAYS = "30"})
  T.eq(r.status, 0, r.stderr)
  T.ok(has_branch("backup-20200101"), "--dry-run deletes nothing")
  r = run({"backup-database", "--json"}, {RETENTION_DAYS = "30"})
  T.eq(r.status, 0, r.stderr)
  T.eq(#r.doc.result.deleted, 1)
  T.eq(r.doc.result.deleted[1], "backup-20200101")
  T.ok(not has_branch("backup-20200101"), "the old backup is gone")
  T.ok(has_branch("backup-" .. time.ymd(time.add_days(time.now(), -3))), "a 3-day-old backup stays")
  r = run({"backup-database"}, {RETENTION_DAYS = "zero"})
  T.eq(r.status, 3)
  T.match(r.stderr, "RETENTION_DAYS")
end)

T.case("verify-backup: fresh passes; stale fails with exit 4", function()
  local r = run{"verify-backup", "--json"}
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.ok, true)
  r = run({"verify-backup"}, {MAX_BACKUP_AGE_HOURS = "0.0001"})
  T.eq(r.status, 4)
  T.match(r.stderr, "old")
end)

T.case("pitr-recovery: a branch holding exactly the rows as of T", function()
  local c <close> = pgdump.connect(MAIN_URL)
  c:query("CREATE TABLE pitr_marks (id int primary key, at timestamptz default now())")
  c:query("INSERT INTO pitr_marks SELECT g FROM generate_series(1, 100) g")
  time.sleep(1.2)
  local at = time.iso(time.now())
  time.sleep(1.2)
  c:query("INSERT INTO pitr_marks SELECT g FROM generate_series(101, 150) g")
  c:query("DELETE FROM pitr_marks WHERE id <= 10")
  local r = run{"pitr-recovery", at, "--json"}
  T.eq(r.status, 0, r.stderr)
  local name = r.doc.result.branch
  T.match(name, "^recovery%-%d+%-%d+$")
  T.no_match(r.stdout, env.get("SANDBOX_PG_APP_PW"))
  local url = n:connection_uri{branch = name, database = "clubio", role = "app"}
  T.eq(count(url, "SELECT count(*) AS n FROM pitr_marks"), 100)
  T.eq(count(url, "SELECT count(*) AS n FROM pitr_marks WHERE id <= 10"), 10)
  T.eq(count(MAIN_URL, "SELECT count(*) AS n FROM pitr_marks"), 140)
end)

T.case("pitr-recovery keeps the time's milliseconds: a row committed within the same second before T is there", function()
  local c <close> = pgdump.connect(MAIN_URL)
  c:query("CREATE TABLE pitr_ms (id int)")
  -- commit in the second half of a second, and take T 0.1 s later in the same second: a point
  -- cut to the whole second would be before the commit
  while true do
    local frac = time.now() % 1
    if frac >= 0.5 and frac < 0.75 then break end
    time.sleep(0.02)
  end
  c:query("INSERT INTO pitr_ms VALUES (1)")
  time.sleep(0.1)
  local at = time.iso(time.now(), true)
  time.sleep(1.1)
  c:query("INSERT INTO pitr_ms VALUES (2)")
  local r = run{"pitr-recovery", at, "--json"}
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.at, at)
  local url = n:connection_uri{branch = r.doc.result.branch, database = "clubio", role = "app"}
  T.eq(count(url, "SELECT count(*) AS n FROM pitr_ms WHERE id = 1"), 1)
  T.eq(count(url, "SELECT count(*) AS n FROM pitr_ms"), 1)
  n:delete_branch(r.doc.result.branch)
end)

T.case("pitr-test: a temporary branch as of T passes its checks, is removed, and is recorded", function()
  local hist = T.tmpdir() .. "/history.jsonl"
  local c <close> = pgdump.connect(MAIN_URL)
  time.sleep(1.2)
  local at = time.now()
  time.sleep(1.2)
  c:query("UPDATE orders SET updated_at = now() WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 3)")
  local r = run({"pitr-test", time.iso(at), "--json"}, {CLUBIO_DR_VERIFY_HISTORY = hist})
  T.eq(r.status, 0, r.stdout)
  T.eq(r.doc.result.removed, true)
  T.ok(r.doc.result.tables >= 3, "tables checked")
  T.ok(time.parse(r.doc.result.latest_activity) <= at + 1, "nothing on the branch is newer than the point")
  for _, b in ipairs(n:branches()) do T.no_match(b.name, "^pitr%-test%-") end
  local f = assert(io.open(hist))
  local rec = cjson.decode(f:read("l"))
  f:close()
  T.eq(rec.what, "pitr_test")
  T.eq(rec.ok, true)
  r = run{"pitr-test", "not-a-time"}
  T.eq(r.status, 2)
  r = run{"pitr-test", "2020-01-01T00:00:00Z"}
  T.eq(r.status, 1)
  T.match(r.stderr, "history")
end)

T.case("pitr-recovery: bad, future and out-of-window timestamps are refused", function()
  local r = run{"pitr-recovery", "yesterday"}
  T.eq(r.status, 2)
  T.match(r.stderr, "ISO 8601")
  r = run{"pitr-recovery", time.iso(time.now() + 3600)}
  T.eq(r.status, 2)
  T.match(r.stderr, "future")
  r = run{"pitr-recovery", "2020-01-01T00:00:00Z"}
  T.ok(r.status ~= 0)
  T.match(r.stderr, "history")
  r = run{"pitr-recovery"}
  T.eq(r.status, 2)
end)

T.case("restore-from-backup: lists backups; refuses without confirmation, creating nothing", function()
  local r = run{"restore-from-backup", "--json"}
  T.eq(r.status, 0, r.stderr)
  T.ok(#r.doc.backups >= 2)
  local before = #n:branches()
  r = run{"restore-from-backup", today}
  T.eq(r.status, 5, r.stderr)
  T.eq(#n:branches(), before, "a declined restore leaves no safety branch")
  r = run{"restore-from-backup", "backup-19990101", "--yes"}
  T.eq(r.status, 2)
  T.match(r.stderr, "no branch named")
end)

T.case("restore-from-backup --yes: main holds the backup's data; the safety branch undoes it", function()
  local rows_in_backup = count(n:connection_uri{branch = "main", database = "clubio", role = "app"},
                               "SELECT count(*) AS n FROM orders")
  local c <close> = pgdump.connect(MAIN_URL)
  -- pitr_marks was created after today's backup; the orders count is what the backup holds
  c:query("INSERT INTO orders (user_id, status, total, items) SELECT user_id, status, 1, '[]' FROM orders LIMIT 5")
  local r = run{"restore-from-backup", today, "--yes", "--json"}
  T.eq(r.status, 0, r.stderr)
  local safety = r.doc.result.safety_branch
  T.match(safety, "^pre%-restore%-")
  -- the restore kept main's data under the safety name (preserve_under_name, which the API
  -- requires since main has children); as on Neon, that branch is now main's parent
  T.eq(n:branch("main").parent_id, n:branch(safety).id)
  T.eq(count(MAIN_URL, "SELECT count(*) AS n FROM orders"), rows_in_backup)
  T.eq(count(MAIN_URL, "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'pitr_marks'"), 0)
  -- the undo the script prints: restore main from the safety branch
  r = run{"restore-from-backup", safety, "--yes"}
  T.eq(r.status, 0, r.stderr)
  T.eq(count(MAIN_URL, "SELECT count(*) AS n FROM orders"), rows_in_backup + 5)
  T.eq(count(MAIN_URL, "SELECT count(*) AS n FROM pitr_marks"), 140)
end)

T.case("a missing NEON_API_KEY and an unreachable API are one-line errors", function()
  local r = proc.run{argv = {BIN, "run", "backup-database"},
                     env = {NEON_API_KEY = "", NEON_PROJECT_ID = PROJECT, CLUBIO_DR_JOURNAL = "off"}}
  T.eq(r.status, 3)
  T.match(r.stderr, "NEON_API_KEY")
  r = run({"verify-backup"}, {NEON_API_HOST = "http://127.0.0.1:1/api/v2", NEON_API_TIMEOUT = "3"})
  T.eq(r.status, 1)
  T.match(r.stderr, "cannot reach")
end)

os.exit(T.finish())
