-- The runbook's verification queries on a known dataset (demo-data: users, orders,
-- transactions), the digests' order semantics (checked against a dump's and a scan's), and the
-- verification history: local JSON lines (default location, concurrent writers), S3 objects
-- (one per record), reading back the latest N.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/verify/?.lua;" .. package.path
local T = require "testing"
local F = require "fixture"
local env, proc, cjson, s3, pipe = require "env", require "proc", require "cjson", require "s3", require "pipe"
local verify, pgdump = require "verify", require "pgdump"

local DB = "verify_queries_src"
local url = F.fresh_database(DB)
local r0 = F.run({"demo-data", "1000"}, {DATABASE_URL = url})
assert(r0.status == 0, r0.stderr)
local dir = T.tmpdir()
local HIST = dir .. "/history.jsonl"
local PREFIX = "test-verify-history-" .. os.time() .. "-" .. math.random(1 << 20) .. "/"
do
  local db <close> = pgdump.connect(url)
  db:query([[
    UPDATE users SET created_at = '2024-01-01T00:00:00Z', updated_at = '2025-01-01T00:00:00Z';
    UPDATE users SET updated_at = '2025-06-01T12:00:00Z' WHERE id = 7;
    UPDATE users SET created_at = '2024-03-01T08:30:00Z' WHERE id = 9;
    UPDATE orders SET created_at = '2023-01-01T00:00:00Z', updated_at = '2023-02-01T00:00:00Z';
    CREATE TABLE no_times (id int); INSERT INTO no_times VALUES (1), (2);
    CREATE TABLE local_times (id int, created_at timestamp); INSERT INTO local_times VALUES (1, '2022-05-05 05:05:05');
    CREATE TABLE empty_times (id int, updated_at timestamptz);
    CREATE TABLE "Mixed Case" (id int); INSERT INTO "Mixed Case" VALUES (1);
    ANALYZE;]])
end

T.case("row_counts: estimates from pg_stat_user_tables, exact counts on request", function()
  local r = verify.row_counts(url, {exact = true})
  T.eq(r.ok, true)
  T.eq(r.tables["public.users"].rows, 101)
  T.eq(r.tables["public.orders"].rows, 1000)
  T.eq(r.tables["public.transactions"].rows, 500)
  T.eq(r.tables['public."Mixed Case"'].rows, 1)
  T.eq(r.table_count, 7)
  T.eq(r.rows, 101 + 1000 + 500 + 2 + 1 + 0 + 1)
  T.eq(r.tables["public.orders"].estimate, 1000) -- after ANALYZE
  T.no_match(r.url, env.get("SANDBOX_PG_ADMIN_PW"))
  local e = verify.row_counts(url, {tables = {"public.orders"}})
  T.eq(e.exact, false)
  T.eq(e.tables["public.orders"].rows, nil)
  T.eq(e.table_count, 1)
  local err = T.raises(verify.row_counts, url, {tables = {"public.nope"}})
  T.eq(err.code, "verify.no_table")
  err = T.raises(verify.row_counts, url, {exactly = true})
  T.match(err.message, "unknown option 'exactly'")
end)

T.case("latest_activity: latest updated_at / created_at per table that has them", function()
  local r = verify.latest_activity(url)
  T.eq(r.tables["public.users"].updated_at, "2025-06-01T12:00:00Z")
  T.eq(r.tables["public.users"].created_at, "2024-03-01T08:30:00Z")
  T.eq(r.tables["public.users"].latest, "2025-06-01T12:00:00Z")
  T.eq(r.tables["public.orders"].latest, "2023-02-01T00:00:00Z")
  T.eq(r.tables["public.local_times"].created_at, "2022-05-05T05:05:05Z")
  T.eq(r.tables["public.no_times"], nil)
  T.eq(r.tables["public.empty_times"].latest, nil)
  -- transactions were not touched: created_at = order's original time + 1 minute, recent
  T.ok(r.tables["public.transactions"].age_hours < 24 * 365, "recent transactions")
  T.eq(r.table, "public.transactions")
  T.eq(r.latest, r.tables["public.transactions"].latest)
end)

T.case("table_digests: equal to the dump's and the archive scan's; sha256 ordered, set_sha256 not", function()
  local d = verify.table_digests(url)
  T.eq(d.tables["public.orders"].rows, 1000)
  local r = pipe.run{pgdump.dump{url = url, row_digests = true, label = "dump"},
                     verify.sql_scan{row_digests = true, label = "scan"}}
  for name, t in pairs(r.dump.tables) do
    T.eq(d.tables[name].sha256, t.sha256, name .. " ordered digest = dump's")
    T.eq(d.tables[name].set_sha256, t.set_sha256, name .. " set digest = dump's")
    T.eq(r.scan.tables[name].set_sha256, t.set_sha256, name .. " scan's set digest = dump's")
    T.eq(r.scan.tables[name].sha256, t.sha256, name .. " scan's ordered digest = dump's")
  end
  -- move one row to the end of the heap without changing it: the ordered digest changes, the
  -- set digest does not. A table of its own, made here, so that no earlier update or pruning
  -- left a free slot that the moved row could take (it must land after the others)
  local db <close> = pgdump.connect(url)
  db:query("CREATE TABLE moved (id int PRIMARY KEY, v text)")
  db:query("INSERT INTO moved SELECT g, 'v' || g FROM generate_series(1, 3) g")
  local before = verify.table_digests(url, {tables = {"public.moved"}})
  db:query("UPDATE moved SET v = v WHERE id = 1")
  local order = db:query("SELECT string_agg(id::text, ',' ORDER BY ctid) AS ids FROM moved")
  T.eq(order[1].ids, "2,3,1", "the updated row is physically last")
  local d2 = verify.table_digests(url, {tables = {"public.moved"}})
  db:query("DROP TABLE moved")
  T.eq(d2.table_count, 1)
  T.ok(d2.tables["public.moved"].sha256 ~= before.tables["public.moved"].sha256, "ordered digest follows physical order")
  T.eq(d2.tables["public.moved"].set_sha256, before.tables["public.moved"].set_sha256)
end)

T.case("queries go to the history when asked, and only then", function()
  verify.row_counts(url, {history_file = HIST})
  verify.table_digests(url, {tables = {"public.orders"}, history_file = HIST})
  verify.latest_activity(url, {history = false})
  local h = verify.history{file = HIST}
  T.eq(#h, 2)
  T.eq(h[1].what, "table_digests")
  T.eq(h[2].what, "row_counts")
  T.eq(h[1].details.tables["public.orders"].rows, 1000)
  T.match(h[2].target.database, "127%.0%.0%.1")
  T.no_match(F.read(HIST), env.get("SANDBOX_PG_ADMIN_PW"))
end)

T.case("freshness and archive verifications are recorded", function()
  verify.freshness{times = {os.time() - 3600}, max_age_hours = 24, what = "export", history_file = HIST}
  verify.archive{file = dir .. "/none.sql.gz.enc", history_file = HIST}
  local h = verify.history{file = HIST, limit = 2}
  T.eq(#h, 2)
  T.eq(h[1].what, "archive")
  T.eq(h[1].reason, "missing")
  T.eq(h[2].what, "freshness")
  T.eq(h[2].ok, true)
  T.eq(verify.history{file = HIST, what = "freshness"}[1].what, "freshness")
  T.eq(#verify.history{file = dir .. "/no-such-file"}, 0)
end)

T.case("the default local history sits beside the job journal; off disables it", function()
  local code = [[require("verify").freshness{times = {os.time()}, max_age_hours = 1}]]
  local function run(e) return proc.run{argv = {F.BIN, "-e", code}, env = e} end
  T.eq(run({CLUBIO_DR_JOURNAL = dir .. "/j/journal.jsonl", CLUBIO_DR_VERIFY_HISTORY = ""}).status, 0)
  T.eq(#verify.history{file = dir .. "/j/verify-history.jsonl"}, 1)
  T.eq(run({CLUBIO_DR_JOURNAL = "", CLUBIO_DR_VERIFY_HISTORY = "", XDG_STATE_HOME = dir .. "/state"}).status, 0)
  T.eq(#verify.history{file = dir .. "/state/clubio-dr/verify-history.jsonl"}, 1)
  T.eq(run({CLUBIO_DR_VERIFY_HISTORY = dir .. "/explicit.jsonl"}).status, 0)
  T.eq(#verify.history{file = dir .. "/explicit.jsonl"}, 1)
  T.eq(run({CLUBIO_DR_VERIFY_HISTORY = "off", XDG_STATE_HOME = dir .. "/state"}).status, 0)
  T.eq(#verify.history{file = dir .. "/state/clubio-dr/verify-history.jsonl"}, 1)
end)

T.case("concurrent writers append whole lines", function()
  local file = dir .. "/concurrent.jsonl"
  local code = [[local v = require "verify"
for i = 1, 50 do v.record({what = "x", ok = true, details = {i = i, pad = string.rep("p", 6000)}}, {history_file = os.getenv("H")}) end]]
  local r = proc.run{argv = {"sh", "-c", 'for w in 1 2 3 4; do "$BIN" -e "$CODE" & done; wait'},
                     env = {BIN = F.BIN, CODE = code, H = file}}
  T.eq(r.status, 0, r.stderr)
  local n = 0
  for line in io.lines(file) do
    local ok, rec = pcall(cjson.decode, line)
    T.ok(ok and rec.what == "x", "a whole record")
    n = n + 1
  end
  T.eq(n, 200)
end)

T.case("the S3 history: one object per record, read back newest first", function()
  local c = s3.client{}
  local hs3 = {bucket = F.BUCKET, prefix = PREFIX .. "verification-history/"}
  for i = 1, 3 do
    local rec = verify.record({what = "restore_test", ok = i ~= 2, reason = i == 2 and "table-mismatch" or nil,
                               details = {i = i}}, {history = true, history_file = false, history_s3 = hs3})
    T.match(rec.history_key, "^s3://" .. F.BUCKET:gsub("%-", "%%-") .. "/" .. PREFIX:gsub("%-", "%%-") ..
                             "verification%-history/%d%d%d%d/%d%d/%d%d/%d+T%d+Z%-restore_test%-%x+%.json$")
  end
  verify.record({what = "freshness", ok = true}, {history_file = false, history_s3 = hs3})
  local keys = 0
  for _ in c:list{bucket = F.BUCKET, prefix = hs3.prefix} do keys = keys + 1 end
  T.eq(keys, 4)
  local h = verify.history{s3 = hs3, what = "restore_test"}
  T.eq(#h, 3)
  T.eq(h[1].details.i, 3)
  T.eq(h[2].reason, "table-mismatch")
  T.eq(#verify.history{s3 = hs3, limit = 2}, 2)
  -- from the environment, as scripts use it
  local r = proc.run{argv = {F.BIN, "-e", [[require("verify").freshness{times = {}, max_age_hours = 1, what = "export"}]]},
                     env = {CLUBIO_DR_VERIFY_HISTORY = "off", CLUBIO_DR_VERIFY_HISTORY_S3 = "s3://" .. F.BUCKET .. "/" .. PREFIX .. "env/"}}
  T.eq(r.status, 0, r.stderr)
  local e = verify.history{s3 = {bucket = F.BUCKET, prefix = PREFIX .. "env/"}}
  T.eq(#e, 1)
  T.eq(e[1].reason, "missing")
  -- an unwritable S3 history does not fail the verification; it says so
  local rec = verify.record({what = "x", ok = true}, {history_file = false, history_s3 = {bucket = "no-such-bucket-here", prefix = "p/"}})
  T.match(rec.history_error, "no%-such%-bucket%-here")
end)

F.drop_database(DB)
proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
