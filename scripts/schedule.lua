-- Run scheduled jobs: a foreground scheduler (systemd), --list, --once (cron/CI), --run JOB
--
-- usage: clubio-dr schedule [--list [--json] | --once | --run JOB] [--dry-run]
--
-- clubio-dr schedule                 run due jobs as they fall due (UTC), logging to stdout,
--                                    until SIGTERM/SIGINT
-- clubio-dr schedule --list [--json] each job: schedule, next run (UTC), last run
-- clubio-dr schedule --once          run what is due now, then exit (1 if a job failed)
-- clubio-dr schedule --run JOB       run one job now, with its lock, timeout, retries, record
--                                    (--dry-run with --once/--run: say what would run)
--
-- A job is due when its latest fire time has passed with no run recorded for it since; a job
-- never run before is due only within its grace period (1 hour) after a fire time.
-- Jobs: every script with a `-- schedule: CRON` line (UTC), plus the jobs file
-- (CLUBIO_DR_SCHEDULE, else jobs.conf in a CLUBIO_DR_PATH folder; "off": none) which adds jobs
-- with arguments, tunes timeout/retries, or disables a script's job (see examples/jobs.conf).
-- Each job runs as `clubio-dr --timeout T run SCRIPT ARGS`. A job runs at most once per fire
-- time and never twice at once, however many schedulers run (services, timers, cron): a kernel
-- lock in the state folder, held by the job's own process for as long as it lives. Every run is
-- a line in STATE/runs.jsonl (CLUBIO_DR_STATE_DIR, default ~/.local/state/clubio-dr); failures
-- and recoveries go to SLACK_WEBHOOK_URL / ALERT_WEBHOOK_URL (P2, P1 after 2+ days);
-- CLUBIO_DR_TEXTFILE_DIR gets Prometheus metrics after each run. Stopping (SIGTERM) stops the
-- running job's child first; the next start records that run as interrupted.
local clubio, time, cjson, log = require "clubio", require "time", require "cjson", require "log"
local S = require "clubio.schedule"

local args = require("clubio.args").parse(arg, {
  options = {["--list"] = true, ["--once"] = true, ["--run"] = "JOB"},
})
local mode, target = "daemon", args["--run"]
local n_modes = (args["--list"] and 1 or 0) + (args["--once"] and 1 or 0) + (target and 1 or 0)
if n_modes > 1 then
  clubio.fail{message = "schedule: --list, --once and --run are one at a time", class = "usage",
              hint = "clubio-dr schedule [--list [--json] | --once | --run JOB]"}
end
if args["--list"] then mode = "list" elseif args["--once"] then mode = "once" elseif target then mode = "run" end
local json = clubio.flags.json

-- The scheduler logs to stdout (one line per event; JSON lines with --json), like a service.
S.output = function(level, msg, fields)
  if level == "debug" and log.level() ~= "debug" then return end
  local ts = time.iso(time.now())
  local line
  if json then
    local o = {ts = ts, level = level, msg = msg}
    for k, v in pairs(fields or {}) do if o[k] == nil then o[k] = v end end
    line = cjson.encode(o)
  else
    local parts = {}
    for k, v in pairs(fields or {}) do
      if type(v) ~= "table" then parts[#parts + 1] = k .. "=" .. tostring(v) end
    end
    table.sort(parts)
    line = string.format("%s %-5s %s%s", ts, level, msg, #parts > 0 and (" " .. table.concat(parts, " ")) or "")
  end
  io.stdout:write(log.redact(line), "\n")
  io.stdout:flush()
end
local say = S.output

local function due_jobs(jobs, now)
  if not clubio.flags.dry_run then S.sweep() end
  local runs = S.read_runs()
  local out = {}
  for _, j in ipairs(jobs) do
    local T = S.due(j, now, runs)
    if T then out[#out + 1] = {job = j, at = T} end
  end
  table.sort(out, function(a, b) if a.at ~= b.at then return a.at < b.at end return a.job.name < b.job.name end)
  return out
end

local function find(jobs, name)
  for _, j in ipairs(jobs) do if j.name == name then return j end end
  local names = {}
  for _, j in ipairs(jobs) do names[#names + 1] = j.name end
  clubio.fail{message = "no scheduled job named '" .. name .. "'", class = "usage",
              hint = #names > 0 and ("jobs: " .. table.concat(names, ", ")) or "no job has a schedule; see clubio-dr schedule --help"}
end

-- ---- --list --------------------------------------------------------------------------------

if mode == "list" then
  local jobs = S.load_jobs()
  local runs = S.read_runs()
  local now = time.now()
  local rows = {}
  for _, j in ipairs(jobs) do
    local h = S.history(j.name, runs)
    local last = h[#h]
    local nxt = j.cron:next(now)
    rows[#rows + 1] = {name = j.name, script = j.script, args = j.args, schedule = j.schedule,
                       next = nxt and time.iso(nxt) or cjson.null, next_at = nxt or cjson.null,
                       due = S.due(j, now, runs) ~= nil,
                       last_status = last and last.status or cjson.null, last_run = last and (last.finished or last.started) or cjson.null,
                       timeout = j.timeout, retries = j.retries, lock = j.lock, source = j.source or cjson.null,
                       missing_script = j.missing or false}
  end
  if json then
    if #rows == 0 then io.stdout:write("[]\n") else io.stdout:write(cjson.encode(rows), "\n") end
    return 0
  end
  if #rows == 0 then
    io.stderr:write("no scheduled jobs (no script has a `-- schedule:` line and there is no jobs file)\n")
    return 0
  end
  local w = 3
  for _, r in ipairs(rows) do w = math.max(w, #r.name) end
  io.stdout:write(string.format("%-" .. w .. "s  %-16s  %-20s  %-26s  %s\n", "JOB", "SCHEDULE", "NEXT (UTC)", "LAST RUN", "RUNS"))
  for _, r in ipairs(rows) do
    local cmd = r.script .. (#r.args > 0 and (" " .. table.concat(r.args, " ")) or "")
    if r.missing_script then cmd = cmd .. "  (script not found)" end
    local last = r.last_status ~= cjson.null and (tostring(r.last_run) .. " " .. r.last_status) or "never"
    io.stdout:write(string.format("%-" .. w .. "s  %-16s  %-20s  %-26s  %s%s\n", r.name, r.schedule,
                                  r.next ~= cjson.null and r.next or "never", last, cmd, r.due and "  [due]" or ""))
  end
  return 0
end

-- ---- --run JOB / --once --------------------------------------------------------------------

local function run_list(list, trigger)
  local failed = 0
  for _, d in ipairs(list) do
    if clubio.flags.dry_run then
      say("info", "would run " .. d.job.name, {job = d.job.name, scheduled = time.iso(d.at), script = d.job.script})
    else
      local rec = S.run_job(d.job, {scheduled = d.at, trigger = trigger, due = trigger ~= "manual"})
      if rec.status ~= "ok" and rec.status ~= "skipped" then failed = failed + 1 end
    end
  end
  return failed
end

if mode == "run" then
  local j = find(S.load_jobs(), target)
  if not clubio.flags.dry_run then S.sweep() end
  return run_list({{job = j, at = time.now()}}, "manual") > 0 and 1 or 0
end

if mode == "once" then
  local list = due_jobs(S.load_jobs(), time.now())
  if #list == 0 then say("info", "nothing is due") end
  local failed = run_list(list, "once")
  return failed > 0 and 1 or 0
end

-- ---- the service -----------------------------------------------------------------------------

local jobs = S.load_jobs()
local me = S.self()
say("info", string.format("scheduler started: %d job%s", #jobs, #jobs == 1 and "" or "s"),
    {pid = me.pid, host = me.host, state = S.state_dir()})
local function announce()
  local now = time.now()
  for _, j in ipairs(jobs) do
    local n = j.cron:next(now)
    say("info", "job " .. j.name, {schedule = j.schedule, next = n and time.iso(n) or "never", script = j.script})
  end
end
announce()
local skipped = {}
while true do
  local ok, fresh = pcall(S.load_jobs)
  if ok then
    jobs = fresh
  else
    say("error", "jobs not reloaded (keeping the previous list): " .. tostring(fresh))
  end
  local due = due_jobs(jobs, time.now())
  if #due == 0 then say("debug", "nothing is due") end
  for _, d in ipairs(due) do
    local key = d.job.name .. "@" .. d.at
    if not skipped[key] then
      local rec = S.run_job(d.job, {scheduled = d.at, trigger = "schedule", due = true})
      if rec.status == "skipped" then skipped[key] = true end
    end
  end
  local now = time.now()
  local wake = now + 60
  for _, j in ipairs(jobs) do
    local n = j.cron:next(now)
    if n and n < wake then wake = n end
  end
  time.sleep(math.max(1, wake - now))
end
