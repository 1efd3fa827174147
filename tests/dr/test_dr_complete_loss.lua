-- dr-test --scenario complete-loss on the sandbox (real PostgreSQL with wal_level=logical, s3rver),
-- with Neon "gone" for the whole run (NEON_API_HOST a closed port, a wrong key): no part of it may
-- need Neon. The source is a database of the test's own; archive-changes runs as a service.
--   - usage and configuration errors (an unknown scenario, options of the other scenario, a
--     password in argv, no server to restore into) change nothing;
--   - without an archiver (no slot, then an inactive one) the rehearsal fails before the loss,
--     and no scratch database is made;
--   - under a write load (tests/dr/writer.lua) with --marker: passes; the marker table is created
--     once (and the archiver's new base waited for); the RPO agrees with the restore (0 when it
--     holds the marker, else the marker's commit minus the restore's last commit); the scratch
--     database is dropped; not one of the writer's transactions failed;
--   - quiet source, --marker --wait --keep: the restore holds the marker, the comparison with the
--     source is strict and passes, and the kept database equals the source (checked here too);
--   - an existing empty database (DR_TEST_RESTORE_URL) is restored into and kept; a non-empty one
--     is refused;
--   - a failing application check fails the rehearsal, and the scratch database is still dropped;
--   - the restore's digests (parallel connections) equal table_digest's, a missing table is missing.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, proc, time, cjson, pgdump, s3 = require "env", require "proc", require "time", require "cjson", require "pgdump", require "s3"

local ADMIN = env.get("SANDBOX_PG_ADMIN_URL")
local BUCKET = env.get("BACKUP_S3_BUCKET")
local TAG = U.TAG
local SRC_DB = "drl_src_" .. TAG
local base_url = ADMIN:gsub("/postgres$", "/")
local SRC = base_url .. SRC_DB
local dir = T.tmpdir()
local REPORTS = dir .. "/reports"
local ENV = {
  CHANGES_DATABASE_URL = SRC, DATABASE_URL = SRC, CHANGES_SLOT = "drl_" .. TAG, CHANGES_PUBLICATION = "drl_pub_" .. TAG,
  CHANGES_PREFIX = "test-drl-" .. TAG .. "/", EXPORT_PREFIX = "test-drl-" .. TAG .. "/database/", ARCHIVE_INTERVAL = "1",
  DR_TEST_REPORT_DIR = REPORTS, CLUBIO_DR_JOURNAL = dir .. "/journal.jsonl",
  DR_TEST_RESTORE_SERVER_URL = ADMIN, RESTORE_TEST_SERVER_URL = false, DR_TEST_RESTORE_URL = false,
  CLUBIO_DR_BIN = false, -- as an operator runs it: dr-test finds its own binary for the restore
  -- Neon is gone
  NEON_API_HOST = "http://127.0.0.1:" .. U.closed_port(), NEON_API_KEY = "neon-is-gone", NEON_PROJECT_ID = "gone",
}
local password = ADMIN:match("^postgres[a-z]*://[^:/@]*:([^@/]*)@")

local function run(args, extra)
  local e = {}
  for k, v in pairs(ENV) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local r = U.run(args, e)
  r.all = r.stdout .. r.stderr
  return r
end
local function sh(cmd, ...)
  local e = {}
  for k, v in pairs(ENV) do if v then e[k] = v end end
  local r = proc.run{argv = {"sh", "-c", cmd, "sh", ...}, env = e}
  if r.status ~= 0 then error("command failed: " .. cmd .. ": " .. r.stderr, 2) end
  return r.stdout
end
local function read(path)
  local f = path and io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local admin <close> = pgdump.connect(ADMIN)
admin:query("CREATE DATABASE " .. SRC_DB)
local src = pgdump.connect(SRC)
src:query([[
  CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int);
  CREATE TABLE events (id bigserial PRIMARY KEY, writer int, seq int, at timestamptz NOT NULL DEFAULT clock_timestamp());
  INSERT INTO items (name, qty) SELECT 'item ' || g, g FROM generate_series(1, 500) g;
  INSERT INTO events (writer, seq) SELECT 0, g FROM generate_series(1, 100) g;]])

local function scratch_databases()
  local out = {}
  for _, r in ipairs(admin:query("SELECT datname FROM pg_database WHERE datname LIKE 'clubio\\_drt\\_loss\\_%' ORDER BY 1")) do
    out[#out + 1] = r.datname
  end
  return table.concat(out, ",")
end
local function state(db)
  local s = {}
  for _, t in ipairs{"public.items", "public.events"} do
    local d = db:table_digest(t)
    s[#s + 1] = string.format("%s %d rows %s", t, d.rows, d.set_sha256)
  end
  return table.concat(s, "\n")
end

-- the archiver and the writer, stopped however this script ends
local ALOG, WLOG, WSTOP, WERR = dir .. "/archiver.log", dir .. "/w.ids", dir .. "/w.stop", dir .. "/w.err"
local archiver, writer
local guard <close> = setmetatable({}, {__close = function()
  if archiver then proc.run{argv = {"kill", "-9", archiver}} end
  if writer then proc.run{argv = {"kill", "-9", writer}} end
end})
local function alive(pid) return proc.run{argv = {"kill", "-0", pid}}.status == 0 end
local function wait_for(what, fn, seconds)
  local deadline = time.monotonic() + (seconds or 120)
  while time.monotonic() < deadline do
    if fn() then return end
    time.sleep(0.2)
  end
  error("timed out waiting for " .. what .. "\n" .. (read(ALOG) or ""))
end

local before_any = scratch_databases()

T.case("usage and configuration errors change nothing", function()
  local r = run{"dr-test", "--scenario", "nope"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "unknown scenario 'nope'")
  r = run{"dr-test", "--marker"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "%-%-marker does not go with %-%-scenario region%-failure")
  r = run{"dr-test", "--scenario", "complete-loss", "--production"}
  T.eq(r.status, 2, r.all)
  r = run{"dr-test", "--scenario", "complete-loss", "--wait"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "%-%-wait goes with %-%-marker")
  r = run{"dr-test", "--scenario", "complete-loss", "--server-url", "postgresql://u:s3cr3t-pw@127.0.0.1:1/postgres"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "contains a password")
  T.no_match(r.all, "s3cr3t%-pw")
  r = run({"dr-test", "--scenario", "complete-loss"}, {DR_TEST_RESTORE_SERVER_URL = false})
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "needs a PostgreSQL server to restore into")
  T.match(r.stderr, "DR_TEST_RESTORE_SERVER_URL")
  r = run{"dr-test", "--scenario", "complete-loss", "--marker", "--dry-run"}
  T.eq(r.status, 0, r.all)
  T.match(r.all, "would restore from S3 alone")
  T.eq(scratch_databases(), before_any)
  local m <close> = pgdump.connect(SRC)
  T.eq(m:query("SELECT to_regclass('public.clubio_dr_marker') IS NULL AS n", nil, {typed = true})[1].n, true, "no marker table")
end)

T.case("the restore's digests: read over parallel connections, as table_digest reads them; a missing table is missing", function()
  local db_name = "drl_dig_" .. TAG
  admin:query("CREATE DATABASE " .. db_name)
  local url = base_url .. db_name
  local db <close> = pgdump.connect(url)
  db:query([[CREATE TABLE big (id int PRIMARY KEY, v text);
             CREATE TABLE "Odd ""name""" (id int, "a b" text);
             CREATE SCHEMA s; CREATE TABLE s.small (x int);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
             INSERT INTO "Odd ""name""" VALUES (1, 'one'), (2, NULL);]])
  local names = {"public.big", 'public."Odd ""name"""', "s.small", "public.gone", '"no such".t'}
  local got = require("clubio.dr_complete_loss")._restored_digests(db, url, names)
  for _, t in ipairs{"public.big", 'public."Odd ""name"""', "s.small"} do
    local want = db:table_digest(t)
    T.eq(got[t].rows, want.rows, t)
    T.eq(got[t].set_sha256, want.set_sha256, t)
    T.eq(got[t].missing, nil, t)
  end
  T.eq(got["public.big"].rows, 5000)
  T.eq(got["public.gone"].missing, true)
  T.eq(got['"no such".t'].missing, true)
  -- one connection or more than there are tables: the same answer
  T.eq(require("clubio.dr_complete_loss")._restored_digests(db, url, names, 1)["public.big"].set_sha256, got["public.big"].set_sha256)
  T.eq(require("clubio.dr_complete_loss")._restored_digests(db, url, names, 8)['public."Odd ""name"""'].rows, 2)
  T.eq(require("clubio.dr_complete_loss")._restored_digests(db, url, {"public.gone"}, 2)["public.gone"].missing, true)
  db:close()
  admin:query("DROP DATABASE " .. db_name)
end)

T.case("no archiver (no slot): fails before the loss, no scratch database", function()
  local r = run{"dr-test", "--scenario", "complete-loss"}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "DR test %(complete loss%) failed at 'check the change archive': the change archive's slot drl_%d+ does not exist")
  local md = read(r.stderr:match("the report is (%S+%.md)"))
  T.match(md, "Result: %*%*FAILED%*%*")
  T.eq(scratch_databases(), before_any)
end)

-- the archiver, then a write load on the source
archiver = sh([[nohup "$1" run archive-changes >>"$2" 2>&1 </dev/null & echo $!]], U.BIN, ALOG):match("%d+")
wait_for("the archiver's first base", function() return (read(ALOG) or ""):find("archiving changes", 1, true) end)
writer = sh([[WRITER_URL="$2" WRITER_LOG="$3" WRITER_STOP="$4" nohup "$1" run "$5" >/dev/null 2>"$6" </dev/null & echo $!]],
            U.BIN, SRC, WLOG, WSTOP, os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/writer.lua", WERR):match("%d+")
wait_for("the writer's first rows", function() return (read(WLOG) or ""):find("\n") ~= nil end)

T.case("under a write load, --marker: passes from S3 alone; the RPO agrees with the restore; the scratch database is dropped", function()
  local n0 = select(2, read(WLOG):gsub("\n", ""))
  local r = run{"dr-test", "--scenario", "complete-loss", "--marker", "--json"}
  local n1 = select(2, read(WLOG):gsub("\n", ""))
  T.eq(r.status, 0, r.all)
  if password and #password >= 4 then T.no_match(r.all, password, "no password in the output") end
  T.ok(n1 > n0, "the writer kept committing during the test")
  local rep = r.doc.result
  T.eq(rep.scenario, "complete-loss")
  T.eq(rep.ok, true)
  local names = {}
  for _, c in ipairs(rep.checklist) do names[#names + 1] = c.item end
  T.eq(table.concat(names, "|"), "check the change archive|record the source|write the marker|create the scratch database|" ..
       "restore from S3 alone|check the restore|compare with the source|measure RTO and RPO|remove the scratch database|write the report")
  T.match(rep.notes[1], "created the table public%.clubio_dr_marker")
  local m = rep.measured
  -- the newest base: the one the archiver took for the marker table (its transactions are in it)
  T.match(m.base, "^test%-drl%-" .. TAG .. "/database/clubio%-db%-")
  T.ok(m.transactions >= 0 and m.segments >= 0, "transactions and segments replayed are reported")
  T.ok(m.rto_seconds >= m.restore_seconds + m.check_seconds - 0.001, "RTO covers the restore and the check")
  local marker_t, restored_t = time.parse(m.source_last_commit), time.parse(m.restored_last_commit)
  if rep.marker.restored then
    T.eq(m.rpo_seconds, 0)
  else
    T.ok(restored_t < marker_t, "the restore stops before the marker")
    T.ok(math.abs(m.rpo_seconds - (marker_t - restored_t)) < 1e-6, "RPO = the marker's commit - the restore's last commit")
  end
  T.eq(rep.passed.rpo, true)
  T.eq(rep.passed.rto, true)
  T.eq(rep.passed.cleaned, true)
  T.eq(m.source_changed_during_test, true, "the writer wrote during the test")
  -- the archiver took a new base for the marker table: two bases now
  local bases = 0
  for obj in s3.client{}:list{bucket = BUCKET, prefix = ENV.EXPORT_PREFIX} do
    if obj.key:match("%.sql%.gz%.enc$") then bases = bases + 1 end
  end
  T.eq(bases, 2, "the first base and the marker table's")
  local md = read(rep.report.markdown)
  if os.getenv("SHOW_REPORT") then
    io.stderr:write(md, "\n", r.stderr, "\n", string.format("check the restore: %.3f s\n", m.check_seconds))
  end
  T.match(md, "Result: %*%*PASSED%*%*")
  T.match(md, "| RTO %(loss to a checked database: create, restore, check%) | 8 hours | [%d.]+ s | met |")
  T.match(md, "| RPO %(source's last commit to the restore's last commit; the marker's commit%) | 24 hours | [%d.]+ s | met |")
  T.eq(scratch_databases(), before_any)
  T.eq(read(WERR) or "", "", "not one of the writer's transactions failed")
end)

T.case("quiet source, --marker --wait --keep: the restore holds the marker and equals the source", function()
  U.write(WSTOP, "")
  wait_for("the writer to stop", function() return not alive(writer) end, 30)
  writer = nil
  local r = run{"dr-test", "--scenario", "complete-loss", "--marker", "--wait", "--keep", "--json"}
  T.eq(r.status, 0, r.all)
  local rep = r.doc.result
  T.eq(rep.marker.restored, true)
  T.eq(rep.measured.rpo_seconds, 0)
  T.ok(rep.measured.archive_delay_seconds > 0, "the marker's time at risk")
  T.eq(rep.measured.source_changed_during_test, false)
  T.eq(rep.measured.tables_differing, 0)
  local cmp
  for _, c in ipairs(rep.checklist) do if c.item == "compare with the source" then cmp = c end end
  T.match(cmp.detail, "strict")
  T.match(rep.notes[#rep.notes], "kept the scratch database (clubio_drt_loss_[%d_]+)")
  local kept = rep.notes[#rep.notes]:match("(clubio_drt_loss_[%d_]+)")
  local k <close> = pgdump.connect(base_url .. kept)
  local s <close> = pgdump.connect(SRC)
  T.eq(state(k), state(s), "the kept restore equals the source")
  T.eq(k:query("SELECT note FROM clubio_dr_marker WHERE id = 2")[1].note, rep.marker.note)
  k:close()
  admin:query("DROP DATABASE " .. kept)
end)

T.case("an existing empty database is restored into and kept; a non-empty one is refused", function()
  local r = run({"dr-test", "--scenario", "complete-loss"}, {DR_TEST_RESTORE_URL = SRC})
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "is not empty")
  admin:query("CREATE DATABASE drl_empty_" .. TAG)
  r = run({"dr-test", "--scenario", "complete-loss", "--json"}, {DR_TEST_RESTORE_URL = base_url .. "drl_empty_" .. TAG})
  T.eq(r.status, 0, r.all)
  local rep = r.doc.result
  T.match(rep.measured.rpo_basis, "upper bound")
  T.ok(rep.measured.rpo_seconds > 0, "without a marker the RPO is an upper bound: the loss minus the restore's last commit")
  local names = {}
  for _, c in ipairs(rep.checklist) do names[#names + 1] = c.item end
  T.eq(table.concat(names, "|"), "check the change archive|record the source|check the target is empty|restore from S3 alone|" ..
       "check the restore|compare with the source|measure RTO and RPO|write the report")
  local e <close> = pgdump.connect(base_url .. "drl_empty_" .. TAG)
  local s <close> = pgdump.connect(SRC)
  T.eq(state(e), state(s), "the restore equals the (quiet) source")
  e:close()
  admin:query("DROP DATABASE drl_empty_" .. TAG)
end)

T.case("a failing application check fails the rehearsal; the scratch database is dropped all the same", function()
  local checks = dir .. "/checks.lua"
  U.write(checks, [[return {{name = "items readable", sql = "SELECT id FROM items LIMIT 5", min_rows = 5},
                            {name = "a table the app needs", sql = "SELECT * FROM invoices"}}]])
  local r = run{"dr-test", "--scenario", "complete-loss", "--checks", checks}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "failed at 'check the restore': 1 of 2 application checks failed on the restore")
  local md = read(r.stderr:match("the report is (%S+%.md)"))
  T.match(md, "%- %[x%] items readable")
  T.match(md, "%- %[ %] a table the app needs: .*invoices")
  T.match(md, "%- %[x%] post%-test: remove the scratch database")
  T.eq(scratch_databases(), before_any)
end)

T.case("a segment altered in S3 (same size): the restore fails, so does the test; the scratch database is dropped", function()
  local c = s3.client{}
  local last
  for obj in c:list{bucket = BUCKET, prefix = ENV.CHANGES_PREFIX} do
    if obj.key:match("%.sql%.gz%.enc$") and (not last or obj.key > last) then last = obj.key end
  end
  local body = c:get(BUCKET, last)
  local pos = #body // 2
  c:put(BUCKET, last, {body = body:sub(1, pos - 1) .. string.char((body:byte(pos) + 1) % 256) .. body:sub(pos + 1)})
  -- and a scratch database a killed run left two days ago: removed on the way
  admin:query("CREATE DATABASE clubio_drt_loss_20200101_000000")
  local r = run{"dr-test", "--scenario", "complete-loss"}
  c:put(BUCKET, last, {body = body})
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "failed at 'restore from S3 alone': restore%-from%-s3 %-%-to latest failed %(status %d%)")
  T.match(r.stderr, "stale scratch database")
  local md = read(r.stderr:match("the report is (%S+%.md)"))
  T.match(md, "%- %[x%] post%-test: remove the scratch database")
  T.eq(scratch_databases(), before_any)
end)

T.case("the archiver stopped (slot inactive): fails before the loss", function()
  proc.run{argv = {"kill", "-TERM", archiver}}
  wait_for("the archiver to stop", function() return not alive(archiver) end, 30)
  archiver = nil
  wait_for("the slot to be released", function()
    return not admin:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {ENV.CHANGES_SLOT}, {typed = true})[1].active
  end, 30)
  local r = run{"dr-test", "--scenario", "complete-loss"}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "no archiver is running: slot drl_%d+ is inactive")
  T.eq(scratch_databases(), before_any)
end)

T.case("an archiver too far behind: fails before the loss", function()
  -- the slot is inactive now: the lag check comes first only when the slot is held, so hold it
  -- with a (silent) archiver and a lag limit of one byte after a write it has not confirmed yet
  archiver = sh([[ARCHIVE_INTERVAL=3600 nohup "$1" run archive-changes >>"$2" 2>&1 </dev/null & echo $!]], U.BIN, ALOG):match("%d+")
  wait_for("the archiver to hold the slot", function()
    return admin:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {ENV.CHANGES_SLOT}, {typed = true})[1].active
  end, 60)
  src:query("INSERT INTO items (name, qty) SELECT 'late ' || g, g FROM generate_series(1, 100) g")
  local r = run({"dr-test", "--scenario", "complete-loss"}, {CHANGES_MAX_LAG_BYTES = "1"})
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "the archiver is [%d.]+ %a+ behind the source %(limit 1 B, CHANGES_MAX_LAG_BYTES%)")
  T.eq(scratch_databases(), before_any)
end)
proc.run{argv = {"kill", "-TERM", archiver}}
wait_for("the archiver to stop", function() return not alive(archiver) end, 30)
archiver = nil

-- cleanup: the slot, the databases, the objects
src:close()
pcall(admin.query, admin, "SELECT pg_drop_replication_slot('" .. ENV.CHANGES_SLOT .. "')")
pcall(admin.query, admin, "DROP DATABASE " .. SRC_DB .. " WITH (FORCE)")
pcall(admin.query, admin, "DROP DATABASE IF EXISTS drl_empty_" .. TAG)
local c = s3.client{}
local doomed = {}
for obj in c:list{bucket = BUCKET, prefix = "test-drl-" .. TAG .. "/"} do doomed[#doomed + 1] = obj.key end
for _, k in ipairs(doomed) do c:delete(BUCKET, k) end
proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
