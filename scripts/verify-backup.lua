-- Check that the latest Neon backup branch is at most MAX_BACKUP_AGE_HOURS old (24)
-- schedule: 0 6 * * *
--
-- clubio-dr run verify-backup [--json]      exit status 4 when stale or missing
local env, time, neon, verify, clubio = require "env", require "time", require "neon", require "verify", require "clubio"
local job, branches = require "clubio.job", require "clubio.branches"

require("clubio.args").parse(arg, {}) -- no arguments: an unknown option is a usage error
local n = neon.client{project_id = env.get("NEON_PROJECT_ID")}
local max_age = tonumber(env.get("MAX_BACKUP_AGE_HOURS", "24"))
local J = job.new("verify-backup")
local list = J:step("list backup branches", {dry = function() return branches.backups(n) end},
                    function() return branches.backups(n) end)
local times = {}
for _, b in ipairs(list) do times[#times + 1] = b.created end
local f = verify.freshness{times = times, max_age_hours = max_age, what = "backup branch"}
f.branch = list[1] and list[1].name or nil
if not f.ok then
  clubio.fail{message = f.message .. (f.branch and (" (" .. f.branch .. ")") or ""), class = "verify",
              code = "verify." .. f.reason, hint = "run `clubio-dr run backup-database`, then the daily-backup-failure runbook if it fails"}
end
return J:finish(f, string.format("ok: %s is %.1f hours old (limit %g)", f.branch, f.age_hours, max_age))
