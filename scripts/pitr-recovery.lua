-- Point-in-time recovery: create branch recovery-YYYYMMDD-HHMMSS from the default branch as it was at TIMESTAMP
--
-- clubio-dr run pitr-recovery 2024-01-15T10:30:00Z [--dry-run] [--json]
--
-- The branch gets its own read-write endpoint; nothing else changes. Inspect it, then make it
-- the default branch if it is the one you want (the command is printed at the end).
-- Environment: NEON_API_KEY, NEON_PROJECT_ID.
local env, time, neon, clubio, log = require "env", require "time", require "neon", require "clubio", require "log"
local job, branches = require "clubio.job", require "clubio.branches"

local args = require("clubio.args").parse(arg, {min = 1, max = 1, usage = "TIMESTAMP (ISO 8601, e.g. 2024-01-15T10:30:00Z)"})
-- epoch seconds with the fraction the user gave: the branch is created at exactly that point
local at = job.past_time(args[1])
local project = env.get("NEON_PROJECT_ID")
local n = neon.client{project_id = project}
local J = job.new("pitr-recovery")
local main = branches.require_default(n, project)
local name = "recovery-" .. time.format(time.now(), "%Y%m%d-%H%M%S")

local b = J:step("create " .. name, {plan = string.format("branch %s from %s as of %s, with a read-write endpoint",
                                                          name, main.name, time.iso(at, true))}, function()
  return n:create_branch{name = name, parent = main.id, at = at, endpoint = "read_write"}
end)
if J.dry_run then return J:finish(nil, "dry run: no branch created") end
local uri = n:connection_uri{branch = b.id}
local shown = job.describe_url(uri).display
local out = string.format([[
recovery branch %s created from %s as of %s
connection: %s
  (the full URI: neonctl connection-string %s --project-id %s)

next steps:
  1. check the data:      psql "<connection uri>"  (e.g. the verification queries)
  2. make it the default:  neonctl branches set-default %s --project-id %s
     or in a runbook:      require("neon").client{}:set_default("%s")
  3. point the application at it if it uses a branch-specific host]], name, main.name, time.iso(at, true), shown, name, project, name, project, name)
return J:finish({branch = name, id = b.id, parent = main.name, at = time.iso(at, true), connection = shown}, out)
