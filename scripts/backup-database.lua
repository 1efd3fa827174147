-- Daily Neon backup: branch backup-YYYYMMDD from the default branch; delete backups older than RETENTION_DAYS
-- schedule: 0 2 * * *
--
-- clubio-dr run backup-database [--dry-run] [--json]
--
-- Running it twice a day is harmless: today's branch is kept, not duplicated. Old backups are
-- pruned with the same GFS policy as the retention script: daily backups kept RETENTION_DAYS
-- (30) days, the week's first (Sunday's) RETENTION_WEEKLY_DAYS (90), the month's first
-- RETENTION_MONTHLY_DAYS (365); the newest ready backup and the default branch are never deleted.
-- Environment: NEON_API_KEY, NEON_PROJECT_ID (required); the RETENTION_* above.
local env, time, neon, clubio = require "env", require "time", require "neon", require "clubio"
local job, branches, retention = require "clubio.job", require "clubio.branches", require "clubio.retention"

require("clubio.args").parse(arg, {}) -- no arguments: an unknown option is a usage error

local project = env.get("NEON_PROJECT_ID")
local function days(name, default)
  local v = tonumber(env.get(name, tostring(default)))
  if not v or v < 1 or v ~= math.floor(v) then
    clubio.fail{message = name .. " must be a whole number of days >= 1", class = "config"}
  end
  return math.tointeger(v)
end
local policy = retention.policy{daily = days("RETENTION_DAYS", 30), weekly = days("RETENTION_WEEKLY_DAYS", 90),
                                monthly = days("RETENTION_MONTHLY_DAYS", 365)}
local n = neon.client{project_id = project}
local J = job.new("backup-database")
local now = time.now()
local name = "backup-" .. time.ymd(now)

local main = branches.require_default(n, project)
local existing = n:branch(name)
local created
if existing then
  J:step("keep today's backup", {plan = name .. " exists already (created " .. tostring(existing.created_at) .. ")"}, function() end)
else
  created = J:step("create " .. name, {plan = "branch " .. name .. " from " .. main.name .. " at its head"}, function()
    return n:create_branch{name = name, parent = main.id, endpoint = false}
  end)
end

local deleted = {}
for _, d in ipairs(retention.decide(branches.retention_items(branches.backups(n)), now, policy)) do
  local b = d.backup
  if not d.keep and b.name ~= name and not b.default then
    J:step("delete " .. b.name, {plan = d.reason}, function() n:delete_branch(b.id) end)
    deleted[#deleted + 1] = b.name
  end
end
return J:finish({branch = name, created = created ~= nil, deleted = deleted},
                string.format("%s %s; %d old backup(s) deleted", name, created and "created" or "already existed", #deleted))
