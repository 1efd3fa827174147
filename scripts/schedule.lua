-- Run scheduled jobs: a foreground scheduler (systemd), --list, --once (cron/CI), --run JOB
--
-- usage: clubio-dr schedule [--list [--json] | --once | --run JOB | --service JOB] [--dry-run]
--
-- clubio-dr schedule                 run due jobs as they fall due (UTC), logging to stderr,
--                                    until SIGTERM/SIGINT
-- clubio-dr schedule --list [--json] each job: schedule, next run (UTC), last run
-- clubio-dr schedule --once          run what is due now, then exit (1 if a job failed)
-- clubio-dr schedule --run JOB       run one job now, with its lock, timeout, retries, record
--                                    (--dry-run with --once/--run: say what would run)
-- clubio-dr schedule --service JOB   supervise one service job in the foreground (the scheduler
--                                    starts one of these per service job; also for a unit of its own)
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
-- Service jobs (`service = true` in the jobs file: archive-changes) have no schedule: the
-- scheduler starts them when it starts, keeps exactly one instance however many schedulers run
-- (the others stand by), restarts one that exits (with backoff; each exit recorded with its
-- status; an alert after alert_exits exits within alert_window seconds) and stops them with
-- SIGTERM when it stops. --list shows their state (running, restarting, stopped).
local clubio, time, cjson, log, proc = require "clubio", require "time", require "cjson", require "log", require "proc"
local S = require "clubio.schedule"

local args = require("clubio.args").parse(arg, {
  options = {["--list"] = true, ["--once"] = true, ["--run"] = "JOB", ["--service"] = "JOB"},
})
local mode, target = "daemon", args["--run"] or args["--service"]
local n_modes = (args["--list"] and 1 or 0) + (args["--once"] and 1 or 0) + (args["--run"] and 1 or 0)
                + (args["--service"] and 1 or 0)
if n_modes > 1 then
  clubio.fail{message = "schedule: --list, --once, --run and --service are one at a time", class = "usage",
              hint = "clubio-dr schedule [--list [--json] | --once | --run JOB | --service JOB]"}
end
if args["--list"] then mode = "list" elseif args["--once"] then mode = "once"
elseif args["--run"] then mode = "run" elseif args["--service"] then mode = "service" end
local json = clubio.flags.json

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
    if j.service then
      local st = S.service_state(j, runs, now)
      rows[#rows + 1] = {name = j.name, script = j.script, args = j.args, service = true, schedule = "service",
                         state = st.state, pid = st.pid or cjson.null, since = st.since or cjson.null,
                         host = st.host or cjson.null, exits_in_window = st.exits, alert_window = j.alert_window,
                         last_exit = st.last_exit or cjson.null, next = cjson.null, next_at = cjson.null, due = false,
                         last_status = last and last.status or cjson.null,
                         last_run = last and (last.finished or last.started) or cjson.null,
                         lock = j.lock, source = j.source or cjson.null, missing_script = j.missing or false}
    else
      local nxt = j.cron:next(now)
      rows[#rows + 1] = {name = j.name, script = j.script, args = j.args, schedule = j.schedule,
                         next = nxt and time.iso(nxt) or cjson.null, next_at = nxt or cjson.null,
                         due = S.due(j, now, runs) ~= nil,
                         last_status = last and last.status or cjson.null, last_run = last and (last.finished or last.started) or cjson.null,
                         timeout = j.timeout, retries = j.retries, lock = j.lock, source = j.source or cjson.null,
                         missing_script = j.missing or false}
    end
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
    local nxt = r.next ~= cjson.null and r.next or "never"
    if r.service then
      -- NEXT: its state; LAST RUN: since when it runs, or its last exit
      nxt = r.state .. (r.pid ~= cjson.null and (" pid " .. tostring(math.tointeger(r.pid) or r.pid)) or "")
      if r.state == "running" then last = tostring(r.since) .. " up"
      elseif r.last_exit ~= cjson.null then last = tostring(r.last_exit.at) .. " " .. tostring(r.last_exit.status) end
      if r.exits_in_window > 0 then cmd = cmd .. string.format("  (%d exit%s in %d s)", r.exits_in_window,
                                                              r.exits_in_window == 1 and "" or "s", math.floor(r.alert_window)) end
    end
    io.stdout:write(string.format("%-" .. w .. "s  %-16s  %-20s  %-26s  %s%s\n", r.name, r.schedule,
                                  nxt, last, cmd, r.due and "  [due]" or ""))
  end
  return 0
end

-- ---- --run JOB / --once --------------------------------------------------------------------

local function run_list(list, trigger)
  local failed = 0
  for _, d in ipairs(list) do
    if clubio.flags.dry_run then
      log.info("would run " .. d.job.name, {job = d.job.name, scheduled = time.iso(d.at), script = d.job.script})
    else
      local rec = S.run_job(d.job, {scheduled = d.at, trigger = trigger, due = trigger ~= "manual"})
      if rec.status ~= "ok" and rec.status ~= "skipped" then failed = failed + 1 end
    end
  end
  return failed
end

if mode == "run" then
  local j = find(S.load_jobs(), target)
  if j.service then
    clubio.fail{message = "job '" .. j.name .. "' is a service: it is not run once", class = "usage",
                hint = "the scheduler runs it; `clubio-dr schedule --service " .. j.name .. "` supervises it in the foreground"}
  end
  if not clubio.flags.dry_run then S.sweep() end
  return run_list({{job = j, at = time.now()}}, "manual") > 0 and 1 or 0
end

if mode == "once" then
  local list = due_jobs(S.load_jobs(), time.now())
  if #list == 0 then log.info("nothing is due") end
  local failed = run_list(list, "once")
  return failed > 0 and 1 or 0
end

-- ---- --service JOB: one service's supervisor ---------------------------------------------------

if mode == "service" then
  local j = find(S.load_jobs(), target)
  if not j.service then
    clubio.fail{message = "job '" .. j.name .. "' is not a service", class = "usage",
                hint = "give it service = true in the jobs file, or run it with --run " .. j.name}
  end
  if clubio.flags.dry_run then
    log.info("would supervise service " .. j.name, {job = j.name, script = j.script})
    return 0
  end
  local parent = tonumber(os.getenv("CLUBIO_DR_SCHEDULER_PID") or "")
  S.supervise(j, {parent = parent})
  return 0
end

-- ---- the service -----------------------------------------------------------------------------

local jobs = S.load_jobs()
local me = S.self()
log.info(string.format("scheduler started: %d job%s", #jobs, #jobs == 1 and "" or "s"),
    {pid = me.pid, host = me.host, state = S.state_dir()})
local function announce()
  local now = time.now()
  for _, j in ipairs(jobs) do
    if j.service then
      log.info("job " .. j.name, {schedule = "service", script = j.script})
    else
      local n = j.cron:next(now)
      log.info("job " .. j.name, {schedule = j.schedule, next = n and time.iso(n) or "never", script = j.script})
    end
  end
end
announce()

-- Service jobs: a supervisor process each (`schedule --service NAME`), started now and again
-- should it end, stopped when a reload removes the job or when we stop. Its log goes where ours
-- goes; it stops its service by itself should we be killed (it watches its parent).
local supervisors = {} -- name -> {child, job, started (monotonic)}
local function supervisor_argv(j)
  local argv = {me.bin}
  if json then argv[#argv + 1] = "--json" end
  argv[#argv + 1] = "--log-level"
  argv[#argv + 1] = log.level()
  for _, a in ipairs{"schedule", "--service", j.name} do argv[#argv + 1] = a end
  return argv
end
local function check_services()
  local wanted = {}
  for _, j in ipairs(jobs) do
    if j.service then
      wanted[j.name] = true
      local s = supervisors[j.name]
      local st = s and s.child:poll()
      if st then
        log.error(string.format("the supervisor of service %s ended (status %d); starting it again", j.name, st), {job = j.name})
      end
      -- a supervisor that keeps ending (a broken jobs file, say) is started at most once a minute
      if (not s or st) and (not s or time.monotonic() - s.started >= 60) then
        local ok, child = pcall(proc.spawn, {argv = supervisor_argv(j), env = {CLUBIO_DR_SCHEDULER_PID = tostring(me.pid)}})
        if ok then
          supervisors[j.name] = {child = child, job = j, started = time.monotonic()}
          log.debug("supervisor started", {job = j.name, pid = child:pid()})
        else
          log.error("cannot start the supervisor of service " .. j.name .. ": " .. tostring(child), {job = j.name})
        end
      end
    end
  end
  for name, s in pairs(supervisors) do
    if not wanted[name] then
      log.info("service " .. name .. " is no longer in the jobs: stopping it", {job = name})
      s.child:terminate(s.job.stop_timeout + 10)
      supervisors[name] = nil
    end
  end
end
local function stop_services()
  for name, s in pairs(supervisors) do
    -- the supervisor stops its service (SIGTERM, then SIGKILL after stop_timeout) and records it
    local st = s.child:terminate(s.job.stop_timeout + 10)
    log.info(string.format("service %s: supervisor ended (status %s)", name, tostring(st)), {job = name})
    supervisors[name] = nil
  end
end

local skipped = {}
local ok_loop, err_loop = pcall(function()
  while true do
    local ok, fresh = pcall(S.load_jobs)
    if ok then
      jobs = fresh
    else
      log.error("jobs not reloaded (keeping the previous list): " .. tostring(fresh))
    end
    check_services()
    local due = due_jobs(jobs, time.now())
    if #due == 0 then log.debug("nothing is due") end
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
      if j.service then
        if now + 10 < wake then wake = now + 10 end -- look after the supervisors at least that often
      else
        local n = j.cron:next(now)
        if n and n < wake then wake = n end
      end
    end
    time.sleep(math.max(1, wake - now))
  end
end)
-- stopped (SIGTERM/SIGINT: the sleep or the running job raised the cancel) or failed: the
-- services stop with us
stop_services()
if not ok_loop then error(err_loop, 0) end
