-- Daily Neon backup: branch backup-YYYYMMDD from the default branch; delete backups older than RETENTION_DAYS
-- schedule: 0 2 * * *
--
-- clubio-dr run backup-database [--dry-run] [--json]
--
-- Running it twice a day is harmless: today's branch is kept, not duplicated.
-- Environment: NEON_API_KEY, NEON_PROJECT_ID (required); RETENTION_DAYS (30).
local env, time, neon, clubio = require "env", require "time", require "neon", require "clubio"
local job, branches = require "clubio.job", require "clubio.branches"

local project = env.get("NEON_PROJECT_ID")
local retention = tonumber(env.get("RETENTION_DAYS", "30"))
if not retention or retention < 1 then
  clubio.fail{message = "RETENTION_DAYS must be a whole number of days >= 1", class = "config"}
end
local n = neon.client{project_id = project}
local J = job.new("backup-database")
local now = time.now()
local name = "backup-" .. time.ymd(now)

local main = branches.default(n)
if not main then clubio.fail{message = "project " .. project .. " has no default branch", class = "failure"} end
local existing = n:branch(name)
local created
if existing then
  J:step("keep today's backup", {plan = name .. " exists already (created " .. tostring(existing.created_at) .. ")"}, function() end)
else
  created = J:step("create " .. name, {plan = "branch " .. name .. " from " .. main.name .. " at its head"}, function()
    return n:create_branch{name = name, parent = main.id, endpoint = false}
  end)
end

local cutoff = time.add_days(time.start_of_day(now), -retention)
local deleted = {}
for _, b in ipairs(branches.backups(n)) do
  if b.day < cutoff and b.name ~= name then
    J:step("delete " .. b.name, {plan = string.format("older than %d days", retention)}, function()
      n:delete_branch(b.id)
    end)
    deleted[#deleted + 1] = b.name
  end
end
return J:finish({branch = name, created = created ~= nil, deleted = deleted},
                string.format("%s %s; %d old backup(s) deleted", name, created and "created" or "already existed", #deleted))
