-- Runbook: the daily backup failed — diagnose (Neon, API, latest backup), resolve (re-run or wait), escalate
--
-- clubio-dr run daily-backup-failure [--yes] [--dry-run] [--json]
--
-- Diagnose: is the Neon API reachable (and the key/project right), the default branch's state
-- and failed operations, the latest backup-YYYYMMDD branch and its age, and the job journal's
-- backup-database runs (which also covers days when Neon could not be asked).
-- Escalate: P1 when backups failed 2 or more consecutive days (or there is none at all), P2 for
-- one day; printed before anything is changed, so a declined run still says it.
-- Resolve: re-run backup-database (asks, or --yes; refused without --yes when nobody can
-- answer), then check the new branch; when Neon is down, record that in the journal with the
-- time to retry. Exit status 0 when backups are fine (already or after the re-run) and for a dry
-- run, 1 when not resolved, 5 when the re-run was declined.
--
-- Environment: NEON_API_KEY, NEON_PROJECT_ID (required); NEON_CHECK_TIMEOUT (30 s for the
-- diagnosis calls), RETRY_MINUTES (30), CLUBIO_DR_JOURNAL (see scripts/lib/clubio/job.lua).
local env, time, neon, clubio, proc, log = require "env", require "time", require "neon", require "clubio", require "proc", require "log"
local cjson = require "cjson"
local job, branches = require "clubio.job", require "clubio.branches"

require("clubio.args").parse(arg, {})
local project = env.get("NEON_PROJECT_ID")
env.get("NEON_API_KEY")
local check_timeout = tonumber(env.get("NEON_CHECK_TIMEOUT", "30"))
local retry_minutes = tonumber(env.get("RETRY_MINUTES", "30"))
if not check_timeout or check_timeout <= 0 or not retry_minutes or retry_minutes <= 0 then
  clubio.fail{message = "NEON_CHECK_TIMEOUT and RETRY_MINUTES must be positive numbers", class = "config"}
end

local J = job.new("daily-backup-failure")
local now = time.now()
local today = time.start_of_day(now)
local n = neon.client{project_id = project, timeout = check_timeout}
local D = {project = project} -- the diagnosis

-- read-only steps run under --dry-run too: the diagnosis is the useful part of a dry run
local function check(title, opts, fn)
  opts.dry = fn
  return J:step(title, opts, fn)
end

-- 1. the API and the project
check("check the Neon API", {plan = "GET the project " .. project}, function()
  local t0 = time.monotonic()
  local ok, p = pcall(n.project, n)
  local secs = time.monotonic() - t0
  if ok then
    D.api = {reachable = true, seconds = secs}
    D.neon = {name = p.name, region = p.region_id, pg_version = p.pg_version,
              history_retention_seconds = p.history_retention_seconds}
  elseif clubio.is_error(p) and p.class == "config" then
    -- the API answered, but the key or the project id is wrong: no retry will fix it
    D.api = {reachable = true, seconds = secs, error = p.message, code = p.code, config = true}
  else
    D.api = {reachable = false, seconds = secs, error = clubio.is_error(p) and p.message or tostring(p),
             code = clubio.is_error(p) and p.code or nil}
  end
end)

if D.api.reachable and not D.api.config then
  check("check the default branch and recent operations", {plan = "list branches and operations"}, function()
    local main = branches.default(n)
    D.default_branch = main and {name = main.name, state = main.current_state} or nil
    local failed = {}
    local ok, ops = pcall(n.operations, n)
    if ok then
      for _, o in ipairs(ops) do
        local t = o.created_at and select(2, pcall(time.parse, o.created_at))
        if o.status == "failed" and type(t) == "number" and t > now - 2 * 86400 then
          failed[#failed + 1] = {action = o.action, created_at = o.created_at, error = o.error}
        end
      end
    end
    D.failed_operations = failed
  end)
  check("find the latest backup branch", {plan = "list backup-YYYYMMDD branches"}, function()
    local list = branches.backups(n)
    table.sort(list, function(a, b) if a.day ~= b.day then return a.day > b.day end return a.created > b.created end)
    D.backups = #list
    local b = list[1]
    if b then
      D.latest = {name = b.name, created_at = b.created_at, age_hours = (now - b.created) / 3600,
                  missed_days = math.max(0, math.floor(time.days_between(b.day, today) + 0.5))}
    end
  end)
end

-- 2. the journal: backup-database runs of the last week, by day
check("read the backup-database journal", {plan = tostring(job.journal_path() or "journal disabled")}, function()
  local runs = job.runs{job = "backup-database", since = time.add_days(today, -7), project = project}
  local days = {}
  for _, r in ipairs(runs) do
    local d = time.start_of_day(r.start)
    days[d] = days[d] or {ok = 0, failed = 0}
    if r.status == "ok" then days[d].ok = days[d].ok + 1 elseif r.status == "failed" then days[d].failed = days[d].failed + 1 end
  end
  -- consecutive days, back from today, with failed runs and no successful one (today may not
  -- have run yet; an earlier day without any run ends the streak: the journal cannot tell)
  local streak = 0
  for i = 0, 7 do
    local d = days[time.add_days(today, -i)]
    if d and d.ok > 0 then break end
    if d and d.failed > 0 then streak = streak + 1 elseif i > 0 then break end
  end
  D.journal = {path = job.journal_path(), runs = #runs, failed_days = streak,
               last_error = runs[1] and runs[1].status == "failed" and runs[1].error or nil}
end)

-- 3. escalation, decided before anything changes
local failed_days = D.journal.failed_days
if D.latest then failed_days = math.max(failed_days, D.latest.missed_days)
elseif D.backups == 0 then failed_days = math.huge end
local level, message
if failed_days >= 2 then
  level = "P1"
  message = failed_days == math.huge and "there is no backup branch at all: page the on-call lead now"
    or string.format("backups have failed %d consecutive days%s: page the on-call lead now; the data at risk is everything since %s",
                     failed_days, D.latest and string.format(" (last good: %s, %.0f hours ago)", D.latest.name, D.latest.age_hours) or "",
                     D.latest and D.latest.created_at or "the last good backup")
elseif failed_days == 1 or not D.api.reachable or D.api.config then
  level = "P2"
  message = failed_days == 1 and "today's backup is missing: fix it today; it becomes P1 if tomorrow's fails too"
    or "the backup state cannot be checked (Neon API); handle today; P1 if it lasts into a second day"
else
  level = "none"
  message = string.format("today's backup %s exists; nothing to escalate", D.latest and D.latest.name or "?")
end
D.escalation = {level = level, message = message, failed_days = failed_days ~= math.huge and failed_days or cjson.null}

if not J.json then
  local out = {string.format("daily-backup-failure: project %s", project)}
  local function line(k, v) out[#out + 1] = string.format("  %-16s %s", k, v) end
  if D.api.reachable and not D.api.config then
    line("Neon API", string.format("reachable (%.2f s); region %s, PostgreSQL %s", D.api.seconds, tostring(D.neon.region), tostring(math.tointeger(D.neon.pg_version) or D.neon.pg_version)))
  elseif D.api.config then
    line("Neon API", "answers, but refuses us: " .. D.api.error)
  else
    line("Neon API", string.format("UNREACHABLE after %.0f s: %s", D.api.seconds, D.api.error))
  end
  if D.default_branch then line("default branch", D.default_branch.name .. ": " .. tostring(D.default_branch.state)) end
  if D.failed_operations and #D.failed_operations > 0 then
    line("failed ops", string.format("%d in the last 48 h (latest: %s at %s)", #D.failed_operations,
                                     D.failed_operations[1].action, D.failed_operations[1].created_at))
  end
  if D.latest then
    line("latest backup", string.format("%s, %.1f hours old%s", D.latest.name, D.latest.age_hours,
                                        D.latest.missed_days > 0 and string.format(" (%d day(s) without a backup)", D.latest.missed_days) or ""))
  elseif D.backups == 0 then
    line("latest backup", "none: the project has no backup-YYYYMMDD branch")
  end
  line("journal", string.format("%d backup-database run(s) this week; %d failed day(s) in a row%s", D.journal.runs,
                                D.journal.failed_days, D.journal.last_error and (" (last error: " .. D.journal.last_error .. ")") or ""))
  out[#out + 1] = string.format("escalation: %s — %s", level, message)
  io.stdout:write(log.redact(table.concat(out, "\n")), "\n")
  io.stdout:flush()
end
if level == "P1" then log.error("escalation P1: " .. message) elseif level == "P2" then log.warn("escalation P2: " .. message) end

-- 4. resolve
local R = {}
if level == "none" then
  R = {action = "none", resolved = true, message = "nothing to resolve"}
elseif D.api.config then
  R = {action = "fix-config", resolved = false,
       message = "the Neon API refuses the key or project (" .. D.api.error .. "): fix NEON_API_KEY / NEON_PROJECT_ID where the scheduled backup runs, then re-run this runbook"}
elseif not D.api.reachable then
  local retry_at = now + retry_minutes * 60
  R = {action = "wait-for-neon", resolved = false, retry_at = time.iso(retry_at),
       message = string.format("Neon is unreachable (%s); check https://neonstatus.com and retry at %s: clubio-dr run daily-backup-failure --yes",
                               D.api.error, time.iso(retry_at))}
  if not J.dry_run then
    J:record({step = "record that Neon is down", status = "deferred", start = time.iso(now), ["end"] = time.iso(time.now()),
              error = D.api.error, retry_at = time.iso(retry_at), escalation = level})
  end
else
  local argv = {"/proc/self/exe", "run", "backup-database", "--json"}
  local child = J:step("re-run backup-database", {
    plan = "clubio-dr run backup-database (branch backup-" .. time.ymd(now) .. " from the default branch)",
    destructive = true,
    confirm = string.format("Re-run backup-database for project %s now?", project),
    hint = "run `clubio-dr run backup-database` by hand to see its log",
  }, function()
    local r = proc.run{argv = argv}
    -- the child's log lines (JSON, from --json) become ours, tagged, in our format: a human
    -- run reads human lines, a --json run JSON lines; what is not JSON passes as it is
    for l in r.stderr:gmatch("[^\n]+") do
      local ok, e = pcall(cjson.decode, l)
      if ok and type(e) == "table" and type(e.msg) == "string" then
        local fields = {child = "backup-database"}
        for k, v in pairs(e) do if k ~= "msg" and k ~= "level" and k ~= "ts" then fields[k] = v end end
        local lv = ({debug = log.debug, info = log.info, warn = log.warn, error = log.error})[e.level] or log.info
        lv(e.msg, fields)
      else
        io.stderr:write(log.redact(l), "\n")
      end
    end
    local ok, doc = pcall(cjson.decode, r.stdout)
    return {status = r.status, doc = ok and type(doc) == "table" and doc or nil, stderr = r.stderr}
  end)
  if J.dry_run then
    R = {action = "re-run", resolved = false, message = "dry run: backup-database was not re-run"}
  elseif child.status == 0 and child.doc and child.doc.ok then
    -- believe the branch list, not the child's word
    local b = n:branch(child.doc.result.branch)
    R = {action = "re-run", resolved = b ~= nil, branch = child.doc.result.branch,
         message = b and ("backup-database re-ran: " .. b.name .. " exists now")
                     or ("backup-database said it made " .. tostring(child.doc.result.branch) .. " but the branch is missing")}
  else
    -- with --json the child's error is the JSON document on its stdout
    local e = child.doc and type(child.doc.error) == "table" and child.doc.error
    local last = e and e.message and (e.message .. (e.hint and e.hint ~= "" and (" (" .. e.hint .. ")") or ""))
      or child.stderr:match("clubio%-dr: ([^\n]*)\n?[^\n]*$") or ("exit status " .. child.status)
    R = {action = "re-run", resolved = false, message = "backup-database failed again: " .. last}
  end
end

D.resolution = R
-- the escalation was printed before anything changed; repeat it only while it still stands
local tail = (R.resolved and level ~= "none") and string.format("escalation: %s withdrawn — backups are fine again", level)
  or string.format("escalation: %s — %s", level, message)
J:finish(D, string.format("resolution: %s\n%s", R.message, tail))
return (R.resolved or J.dry_run) and 0 or 1
