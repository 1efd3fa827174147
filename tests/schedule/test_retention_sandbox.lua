-- scripts/retention.lua on the sandbox: S3 exports (70 days of daily exports with manifests in
-- the sandbox's S3 server) and Neon backup branches (in a neon-local project of the test's
-- own): --dry-run changes nothing, no --yes is refused, --yes deletes exactly what the
-- decision function says (manifest and archive), moves monthly exports to their storage class
-- and keeps the newest verified backup.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local proc, env, cjson, time, s3, neon =
  require "proc", require "env", require "cjson", require "time", require "s3", require "neon"
local retention = require "clubio.retention"
local BIN = env.get("CLUBIO_DR_BIN")
local BUCKET = env.get("BACKUP_S3_BUCKET")
local PREFIX = "test-retention-" .. os.time() .. "-" .. math.random(1, 1 << 20) .. "/"
local c = s3.client{}

local function run(args, extra)
  local e = {CLUBIO_DR_JOURNAL = "off", EXPORT_PREFIX = PREFIX}
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {BIN, "run", "retention"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e, unset_env = {"NEON_PROJECT_ID"}}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end

-- 70 days of exports at 02:00 (14:00 if the test runs near 02:00, so no backup sits on a cutoff)
local now = time.now()
local tod = (now % 86400 > 1.5 * 3600 and now % 86400 < 2.5 * 3600) and 14 * 3600 or 2 * 3600
local today = time.start_of_day(now)
local items = {}
for i = 0, 69 do
  local t = today - i * 86400 + tod
  if t <= now then
    local key = PREFIX .. "clubio-db-" .. time.stamp(t) .. ".sql.gz.enc"
    c:put(BUCKET, key, "archive " .. i)
    local verified = i ~= 0 -- today's has no manifest yet (an export in progress)
    if verified then c:put(BUCKET, key .. ".manifest.json", "{}") end
    items[#items + 1] = {key = key, time = t, verified = verified}
  end
end
local POLICY = {RETENTION_DAILY_DAYS = "3", RETENTION_WEEKLY_DAYS = "14", RETENTION_MONTHLY_DAYS = "60",
                RETENTION_STORAGE_CLASS_MONTHLY = "GLACIER"}
local expected = retention.decide(items, now, {daily = 3, weekly = 14, monthly = 60})
local keep = {}
for _, d in ipairs(expected) do if d.keep then keep[d.backup.key] = d.tier end end

local function objects()
  local out = {}
  for o in c:list{bucket = BUCKET, prefix = PREFIX} do out[o.key] = o end
  return out
end
local function count(t) local n = 0; for _ in pairs(t) do n = n + 1 end; return n end

T.case("exports --dry-run: every export with keep or delete and the reason; nothing changes", function()
  local before = count(objects())
  local r = run({"exports", "--dry-run"}, POLICY)
  T.eq(r.status, 0, r.stderr)
  local n = 0
  for line in r.stdout:gmatch("[^\n]+") do
    if line:match("^keep ") or line:match("^DELETE ") then n = n + 1 end
  end
  T.eq(n, #items)
  T.match(r.stdout, "\nkeep%s+export%s+%S+%.sql%.gz%.enc%s+monthly: monthly backup of ")
  T.match(r.stdout, "\nDELETE%s+export%s+%S+ expired: %d+d old; daily backup older than 3 days")
  T.match(r.stdout, "dry run: exports: %d+ kept, %d+ would be deleted")
  T.eq(count(objects()), before)
end)

T.case("exports without --yes in a non-interactive run: refused, nothing deleted", function()
  local before = count(objects())
  local r = run({"exports"}, POLICY)
  T.eq(r.status, 5, r.stderr)
  T.match(r.stderr, "refusing without confirmation")
  T.eq(count(objects()), before)
end)

T.case("exports --yes: exactly the decision's survivors remain, monthly ones in GLACIER", function()
  local r = run({"exports", "--yes", "--json"}, POLICY)
  T.eq(r.status, 0, r.stdout .. r.stderr:sub(-600))
  local t = r.doc.result.targets.exports
  T.eq(t.keep, count(keep))
  T.eq(t.deleted, #items - count(keep))
  local objs = objects()
  for _, it in ipairs(items) do
    local k = keep[it.key]
    T.eq(objs[it.key] ~= nil, k ~= nil, it.key)
    if it.verified then T.eq(objs[it.key .. ".manifest.json"] ~= nil, k ~= nil, it.key .. " manifest") end
    if k == "monthly" then T.eq(c:head(BUCKET, it.key).storage_class, "GLACIER", it.key) end
    if k == "daily" or k == "weekly" then T.eq(c:head(BUCKET, it.key).storage_class, "STANDARD", it.key) end
  end
  T.ok(objs[items[1].key], "today's (unverified) export is kept")
  T.ok(objs[items[2].key], "the newest verified export is kept")
  T.eq(count(objs), count(keep) * 2 - 1, "archives and their manifests (today's has none)")
  -- applying it again changes nothing
  r = run({"exports", "--yes", "--json"}, POLICY)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.targets.exports.deleted, 0)
  T.eq(r.doc.result.targets.exports.storage_class_changed, 0)
end)

T.case("configuration mistakes", function()
  local r = run({"exports"}, {RETENTION_DAILY_DAYS = "thirty"})
  T.eq(r.status, 3)
  T.match(r.stderr, "RETENTION_DAILY_DAYS must be a whole number of days >= 0, got 'thirty'")
  r = run({"everything"})
  T.eq(r.status, 2)
  T.match(r.stderr, "unexpected argument 'everything'")
  r = proc.run{argv = {BIN, "run", "retention"}, unset_env = {"NEON_PROJECT_ID", "BACKUP_S3_BUCKET"}}
  T.eq(r.status, 3)
  T.match(r.stderr, "neither NEON_PROJECT_ID nor BACKUP_S3_BUCKET is set")
end)

T.case("branches: a year-old backup is deleted, a monthly and today's are kept", function()
  local pid = "retention-" .. os.time() % 100000 .. "-" .. math.random(1, 999)
  require("neonlocal").project(pid)
  local n = neon.client{project_id = pid}
  local names = {}
  for _, back in ipairs{0, 100, 400} do
    local name = "backup-" .. time.ymd(now - back * 86400)
    n:create_branch{name = name, endpoint = false}
    names[back] = name
  end
  local e = {NEON_PROJECT_ID = pid}
  local r = proc.run{argv = {BIN, "run", "retention", "branches", "--dry-run"}, env = e}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "keep%s+branch%s+" .. names[0]:gsub("%-", "%%-") .. "%s+monthly: monthly backup of ")
  T.match(r.stdout, "keep%s+branch%s+" .. names[100]:gsub("%-", "%%-") .. "%s+monthly")
  T.match(r.stdout, "DELETE%s+branch%s+" .. names[400]:gsub("%-", "%%-") .. "%s+expired")
  T.ok(n:branch(names[400]), "dry run deletes nothing")
  r = proc.run{argv = {BIN, "run", "retention", "branches", "--yes"}, env = e}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "branches: 2 kept, 1 deleted")
  T.eq(n:branch(names[400]), nil)
  T.ok(n:branch(names[100]) and n:branch(names[0]))
  T.ok(n:branch("main"), "the default branch is untouched")
end)

for k in pairs(objects()) do c:delete(BUCKET, k) end
return T.finish()
