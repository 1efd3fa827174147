-- Restore the default branch from a backup branch, keeping a pre-restore safety branch first
--
-- clubio-dr run restore-from-backup                 list the backup branches
-- clubio-dr run restore-from-backup BRANCH [--yes]  restore the default branch's data from BRANCH
--
-- Destructive: asks for confirmation (or --yes). The restore keeps the default branch's current
-- data as the branch pre-restore-YYYYMMDD-HHMMSS (Neon's preserve_under_name, which the API
-- requires for a branch with children, and the backups are its children): that branch is how
-- to undo the restore, and the backup branches move under it, as Neon does.
local env, time, neon, clubio = require "env", require "time", require "neon", require "clubio"
local job, branches = require "clubio.job", require "clubio.branches"

local args = require("clubio.args").parse(arg, {min = 0, max = 1, usage = "BRANCH"})
local source = args[1]
local project = env.get("NEON_PROJECT_ID")
local n = neon.client{project_id = project}
if not source then
  local list = branches.backups(n)
  if clubio.flags.json then
    io.stdout:write(require("cjson").encode({ok = true, backups = list}), "\n")
    return 0
  end
  if #list == 0 then print("no backup branches yet (run `clubio-dr run backup-database`)"); return 0 end
  print(string.format("%-20s  %-24s  %s", "BRANCH", "CREATED", "ID"))
  for _, b in ipairs(list) do print(string.format("%-20s  %-24s  %s", b.name, b.created_at or "?", b.id)) end
  print("\nrestore with: clubio-dr run restore-from-backup BRANCH")
  return 0
end
local src = n:branch(source)
if not src then
  clubio.fail{message = "no branch named '" .. source .. "' in project " .. project, class = "usage",
              hint = "list the backups with `clubio-dr run restore-from-backup`"}
end
local main = branches.require_default(n, project)
if src.id == main.id then clubio.fail{message = "cannot restore the default branch from itself", class = "usage"} end
local J = job.new("restore-from-backup")
local safety = "pre-restore-" .. time.format(time.now(), "%Y%m%d-%H%M%S")

local question = string.format("Replace the data of %s (project %s) with %s? The safety branch %s will keep the current data",
                               main.name, project, source, safety)
-- Ask before anything is created: a declined restore leaves no stray safety branch behind.
if not J.dry_run then J:confirm("restore " .. main.name .. " from " .. source, question) end
if n:branch(safety) then
  clubio.fail{message = "a branch named " .. safety .. " already exists", class = "failure",
              hint = "wait a second and run the restore again (the safety branch's name has the time to the second)"}
end
J:step("restore " .. main.name .. " from " .. source .. ", keeping its data as " .. safety, {
  plan = "replace the data of " .. main.name .. " with " .. source .. "'s (its endpoint and connection string stay); " ..
         "the current data stays as the branch " .. safety,
  hint = "the safety branch " .. safety .. " holds the data from before the restore; undo with " ..
         "`clubio-dr run restore-from-backup " .. safety .. " --yes`",
}, function()
  n:restore_branch{branch = main.id, source = src.id, preserve_under_name = safety}
end)
if J.dry_run then return J:finish(nil, "dry run: nothing was changed") end
-- the restore removed the branch's replication slots: the DR replica's state, and the command
local dr_note = require("clubio.dr").after_branch_restore{branch = main.name}
if dr_note.affected ~= false then require("log").warn(dr_note.message) end
return J:finish({branch = main.name, source = source, safety_branch = safety, dr_replication = dr_note},
                string.format("%s restored from %s; the previous data is in the safety branch %s\n" ..
                              "undo with: clubio-dr run restore-from-backup %s --yes", main.name, source, safety, safety) ..
                (dr_note.affected ~= false and ("\nreplication: " .. dr_note.message) or ""))
