-- The scheduler's engine: jobs (scripts' `-- schedule:` headers plus an optional jobs file),
-- what is due, per-job locks, running a job as a child `clubio-dr run` with a timeout and
-- retries, and the run records (JSON lines). `scripts/schedule.lua` is its command line.
--
--   local S = require "clubio.schedule"
--   local jobs = S.load_jobs()                     -- {{name, script, args, schedule, cron, timeout, ...}}
--   local T = S.due(job, time.now(), S.read_runs()) -- the fire time to run now, or nil
--   local rec = S.run_job(job, {scheduled = T})     -- lock, run (retries), record, alert, metrics
--
-- State lives in CLUBIO_DR_STATE_DIR, else $XDG_STATE_HOME/clubio-dr, else
-- ~/.local/state/clubio-dr: runs.jsonl (one JSON object per finished run), locks/NAME.lock and
-- results/RUN_ID.json (a running child's final document).
--
-- Due: a job is due when its latest fire time T <= now has no run recorded for T or later
-- (each missed fire time is caught up once, not once per missed fire). A job with no recorded
-- run at all is due only within `grace` seconds of T (default 3600), so that installing the
-- scheduler does not start every monthly and quarterly job at once.
--
-- Locks: a kernel lock (flock(2), proc.lock) on locks/NAME.lock, taken by the scheduler for a
-- run and inherited by the run's child process, so the lock is held for as long as any process
-- of the run lives, even when the scheduler itself is killed with SIGKILL, and the kernel drops
-- it when the last one ends: nothing goes stale, nothing is looked up in /proc. A job whose lock
-- is held is skipped ("locked"), not queued: the holder's run covers the same fire time. Under
-- the lock the run records are read again: a fire time that another scheduler has run in the
-- meantime is not run a second time, and a run still "running" in the records (its lock is free,
-- so its processes are gone) gets its outcome recorded: the child's final JSON document, which
-- it writes to results/RUN_ID.json rather than to our pipe, so that it survives a scheduler
-- killed with SIGKILL (the fire time is then covered); without one (the child was stopped too)
-- the run is "interrupted" and its fire time runs again, never while a process of it lives.
--
-- Services: a job with `service = true` has no schedule; it is a long-running script (the
-- change archive) that should always run, once. The scheduler starts a supervisor for it
-- (`clubio-dr schedule --service NAME`, M.supervise) when it starts and stops it when it
-- stops. The supervisor takes the job's lock (waiting, as a standby, while another scheduler's
-- supervisor holds it: one instance however many schedulers run), starts the script with the
-- lock, records each start ("running") and each exit (its status) in runs.jsonl, restarts it
-- after restart_delay seconds, doubled after each exit up to restart_max_delay (back to
-- restart_delay once an instance ran that long), alerts when it exited alert_exits times
-- within alert_window seconds (and on recovery: an instance up for alert_window), and on
-- SIGTERM (or when its scheduler is gone) stops the script with SIGTERM, SIGKILL after
-- stop_timeout seconds.
local clubio, log, time, proc, cjson = require "clubio", require "log", require "time", require "proc", require "cjson"
local cron = require "clubio.cron"

local M = {}

M.DEFAULTS = {timeout = 3600, retries = 1, retry_delay = 60, grace = 3600}
M.SERVICE_DEFAULTS = {restart_delay = 5, restart_max_delay = 300, alert_exits = 3, alert_window = 900, stop_timeout = 30}
local JOB_KEYS = {script = true, args = true, schedule = true, timeout = true, retries = true, retry_delay = true,
                  grace = true, env = true, lock = true, verification = true, enabled = true, description = true,
                  service = true, restart_delay = true, restart_max_delay = true, alert_exits = true,
                  alert_window = true, stop_timeout = true}
-- keys that only mean something for one kind of job
local CRON_ONLY = {schedule = true, timeout = true, retries = true, retry_delay = true, grace = true}
-- exit statuses worth another attempt: failure, timeout, killed; not usage/config/verify/declined
local RETRYABLE = {[1] = true, [124] = true, [137] = true}

local function fail(msg, hint, klass)
  clubio.fail{message = msg, hint = hint, class = klass or "config", code = "config.schedule"}
end

-- ---- places ------------------------------------------------------------------------------

function M.state_dir()
  local d = os.getenv("CLUBIO_DR_STATE_DIR")
  if d and d ~= "" then return d end
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then
      fail("no state folder for the scheduler's run records", "set CLUBIO_DR_STATE_DIR (or HOME)")
    end
    base = home .. "/.local/state"
  end
  return base .. "/clubio-dr"
end

local function mkdir_p(dir)
  local r = proc.run{argv = {"mkdir", "-p", dir}}
  if r.status ~= 0 then fail("cannot create folder " .. dir .. ": " .. r.stderr:gsub("%s+$", ""), "check its permissions") end
end

local function read_file(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes a file atomically: a temporary file in the same folder, then rename.
function M.write_atomic(path, text)
  local tmp = string.format("%s.tmp.%d.%d", path, M.self().pid, math.random(1, 1 << 30))
  local f, err = io.open(tmp, "wb")
  if not f then fail("cannot write " .. path .. ": " .. tostring(err), "check the folder exists and is writable") end
  local ok, werr = f:write(text)
  f:close()
  if not ok then os.remove(tmp); fail("cannot write " .. path .. ": " .. tostring(werr)) end
  local rok, rerr = os.rename(tmp, path)
  if not rok then os.remove(tmp); fail("cannot rename into " .. path .. ": " .. tostring(rerr)) end
end

-- Our own process: pid (from /proc/self/stat), host, and the binary's path.
local SELF
function M.self()
  if SELF then return SELF end
  local stat = read_file("/proc/self/stat") or ""
  local pid = tonumber(stat:match("^(%d+)"))
  SELF = {pid = pid or 0, host = clubio.hostname()}
  local bin = os.getenv("CLUBIO_DR_BIN")
  if not bin or bin == "" then
    local r = proc.run{argv = {"readlink", "/proc/" .. tostring(pid) .. "/exe"}}
    bin = r.status == 0 and r.stdout:gsub("%s+$", "") or "clubio-dr"
  end
  SELF.bin = bin
  return SELF
end

-- ---- jobs --------------------------------------------------------------------------------

local function check_job(name, j, where)
  if type(j) ~= "table" then fail(string.format("%s: job '%s' must be a table or false", where, name)) end
  for k in pairs(j) do
    if not JOB_KEYS[k] then
      fail(string.format("%s: job '%s' has an unknown key '%s'", where, name, tostring(k)),
           "job keys: script, args, schedule, timeout, retries, retry_delay, grace, env, lock, verification, enabled; " ..
           "service jobs: service, restart_delay, restart_max_delay, alert_exits, alert_window, stop_timeout")
    end
  end
  if j.service ~= nil and type(j.service) ~= "boolean" then
    fail(string.format("%s: job '%s': service must be true or false", where, name))
  end
  if j.service and name ~= "defaults" then
    for k in pairs(j) do
      if CRON_ONLY[k] then
        fail(string.format("%s: job '%s' is a service (always running): it takes no %s", where, name, k),
             "a service is restarted when it exits; tune restart_delay, restart_max_delay, alert_exits, alert_window, stop_timeout")
      end
    end
  end
  for _, k in ipairs{"timeout", "retries", "retry_delay", "grace", "restart_delay", "restart_max_delay", "alert_exits",
                     "alert_window", "stop_timeout"} do
    local v = j[k]
    if v ~= nil and (type(v) ~= "number" or v < 0 or ((k == "timeout" or k == "alert_exits") and v <= 0)) then
      fail(string.format("%s: job '%s': %s must be a number of %s %s 0, got %s", where, name, k,
                         (k == "retries" or k == "alert_exits") and "attempts" or "seconds",
                         (k == "timeout" or k == "alert_exits") and ">" or ">=", tostring(v)))
    end
  end
  if j.args ~= nil then
    if type(j.args) ~= "table" then fail(string.format("%s: job '%s': args must be a list of strings", where, name)) end
    for i, a in ipairs(j.args) do
      if type(a) ~= "string" and type(a) ~= "number" then
        fail(string.format("%s: job '%s': args[%d] is a %s, not a string", where, name, i, type(a)))
      end
      j.args[i] = tostring(a)
    end
  end
  if j.env ~= nil and type(j.env) ~= "table" then fail(string.format("%s: job '%s': env must be a table", where, name)) end
end

-- The jobs file: CLUBIO_DR_SCHEDULE, else the first jobs.conf in a CLUBIO_DR_PATH folder.
-- It is Lua returning {defaults = {...}, jobs = {NAME = {...} | false}}; it runs with no
-- globals but `env` (os.getenv), so it can only describe jobs.
function M.jobs_file()
  local p = os.getenv("CLUBIO_DR_SCHEDULE")
  if p and p ~= "" then
    if p == "off" then return nil end
    if not read_file(p) then fail("jobs file " .. p .. " (CLUBIO_DR_SCHEDULE) cannot be read", "check the path, or unset CLUBIO_DR_SCHEDULE") end
    return p
  end
  for dir in (os.getenv("CLUBIO_DR_PATH") or ""):gmatch("[^:]+") do
    if read_file(dir .. "/jobs.conf") then return dir .. "/jobs.conf" end
  end
  return nil
end

local function load_jobs_file(path)
  local text = read_file(path)
  local chunk, err = load(text, "@" .. path, "t", {env = os.getenv, tostring = tostring, tonumber = tonumber})
  if not chunk then fail("jobs file " .. path .. ": " .. err, "it is Lua: return {defaults = {...}, jobs = {...}}") end
  local ok, spec = pcall(chunk)
  if not ok then fail("jobs file " .. path .. ": " .. tostring(spec)) end
  if type(spec) ~= "table" then fail("jobs file " .. path .. " must return a table", "return {defaults = {...}, jobs = {...}}") end
  for k in pairs(spec) do
    if k ~= "defaults" and k ~= "jobs" and k ~= "scripts" then
      fail(string.format("jobs file %s: unknown key '%s' (use defaults, jobs, scripts)", path, tostring(k)))
    end
  end
  if spec.scripts ~= nil and spec.scripts ~= "all" and spec.scripts ~= "site" and spec.scripts ~= false then
    fail(string.format("jobs file %s: scripts must be \"all\", \"site\" or false", path),
         "\"site\": only scripts in CLUBIO_DR_PATH folders; false: only the jobs file's jobs")
  end
  return spec
end

-- The scripts with a `-- schedule:` header, from `clubio-dr list --json` (same search path
-- and shadowing as `run`).
function M.scripts()
  local r = proc.run{argv = {M.self().bin, "list", "--json"}}
  if r.status ~= 0 then fail("cannot list scripts: " .. r.stderr:gsub("%s+$", ""), nil, "failure") end
  local ok, list = pcall(cjson.decode, r.stdout)
  if not ok or type(list) ~= "table" then fail("cannot parse `clubio-dr list --json` output", nil, "failure") end
  return list
end

-- All jobs, sorted by name. opts: scripts (a list like M.scripts() returns), file (a jobs file
-- path, or false for none).
function M.load_jobs(opts)
  opts = opts or {}
  local scripts = opts.scripts or M.scripts()
  local file = opts.file
  if file == nil then file = M.jobs_file() end
  local spec = file and load_jobs_file(file) or {}
  local defaults = {}
  for k, v in pairs(M.DEFAULTS) do defaults[k] = v end
  if spec.defaults then
    check_job("defaults", spec.defaults, file)
    for k, v in pairs(spec.defaults) do defaults[k] = v end
  end
  local known = {}
  for _, s in ipairs(scripts) do known[s.name] = s end
  local jobs = {}
  local function from_site(path)
    for dir in (os.getenv("CLUBIO_DR_PATH") or ""):gmatch("[^:]+") do
      if path:sub(1, #dir + 1) == dir .. "/" then return true end
    end
    return false
  end
  for _, s in ipairs(scripts) do
    local wanted = spec.scripts ~= false and (spec.scripts ~= "site" or from_site(s.path or ""))
    if wanted and s.schedule and s.schedule ~= cjson.null and s.schedule ~= "" then
      jobs[s.name] = {name = s.name, script = s.name, schedule = s.schedule, source = s.path,
                      description = s.description}
    end
  end
  for name, j in pairs(spec.jobs or {}) do
    if type(name) ~= "string" or not name:match("^[%w][%w._-]*$") then
      fail(string.format("jobs file %s: job name '%s' must be letters, digits, '.', '_' or '-'", file, tostring(name)))
    end
    if j == false then
      jobs[name] = nil
    else
      check_job(name, j, file)
      local base = jobs[name] or {name = name, script = name, source = file}
      for k, v in pairs(j) do base[k] = v end
      if base.enabled == false then jobs[name] = nil else jobs[name] = base end
      -- a service has no schedule (one from the script's header is not used)
      if jobs[name] and base.service then base.schedule = nil end
      if jobs[name] and not base.service and not jobs[name].schedule then
        if not j.script and not known[name] then
          -- settings for a script that is not installed (yet): say so, keep the rest working
          log.warn(string.format("jobs file %s: job '%s' tunes a script that does not exist; ignored", file, name))
          jobs[name] = nil
        else
          fail(string.format("jobs file %s: job '%s' has no schedule", file, name),
               "add schedule = \"CRON\", or give the script a `-- schedule:` line")
        end
      end
    end
  end
  local out = {}
  for name, j in pairs(jobs) do
    for k, v in pairs(defaults) do if j[k] == nil then j[k] = v end end
    j.args = j.args or {}
    j.lock = j.lock or name
    if j.verification == nil then j.verification = j.script:match("^verify") ~= nil end
    if j.service then
      for k, v in pairs(M.SERVICE_DEFAULTS) do if j[k] == nil then j[k] = v end end
      j.restart_max_delay = math.max(j.restart_max_delay, j.restart_delay)
    else
      local ok, c = pcall(cron.parse, j.schedule)
      if not ok then
        fail(string.format("job '%s' (%s): %s", name, j.source or "?", tostring(c)),
             "fix the `-- schedule:` line or the jobs file entry")
      end
      j.cron = c
    end
    j.missing = known[j.script] == nil and not j.script:find("/") and true or nil
    out[#out + 1] = j
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

-- ---- run records -------------------------------------------------------------------------

function M.runs_path() return M.state_dir() .. "/runs.jsonl" end

-- All run records, oldest first (unparsable lines are skipped). A run writes a "running" line
-- when it starts and its outcome when it ends; the later line of a run id replaces the earlier.
function M.read_runs(path)
  local f = io.open(path or M.runs_path(), "r")
  if not f then return {} end
  local out, at = {}, {}
  for line in f:lines() do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" and r.job then
      local i = r.run_id and at[r.run_id]
      if i then out[i] = r else
        out[#out + 1] = r
        if r.run_id then at[r.run_id] = #out end
      end
    end
  end
  f:close()
  return out
end

function M.append_run(rec)
  local line = log.redact(cjson.encode(rec)) .. "\n"
  -- the folder is made only when missing: a process being stopped (a service's last record)
  -- cannot start `mkdir` (proc.run raises once a cancel has arrived)
  local f, err = io.open(M.runs_path(), "a")
  if not f then
    mkdir_p(M.state_dir())
    f, err = io.open(M.runs_path(), "a")
  end
  if not f then fail("cannot append to " .. M.runs_path() .. ": " .. tostring(err)) end
  f:write(line) -- one write of one line, in append mode: concurrent writers do not interleave
  f:close()
end

-- The finished runs of one job, oldest first: not the "skipped" ones (lock held elsewhere),
-- nor those still "running". opts.all: every record of the job.
function M.history(job_name, runs, opts)
  local out = {}
  for _, r in ipairs(runs) do
    if r.job == job_name and (opts and opts.all or (r.status ~= "skipped" and r.status ~= "running")) then
      out[#out + 1] = r
    end
  end
  return out
end

-- Runs that count as having run for their fire time: an interrupted run does not (the job is
-- run again for that fire time when the scheduler is back).
local function covers(r) return r.status ~= "interrupted" and r.status ~= "cancelled" end

-- ---- due ---------------------------------------------------------------------------------

-- The fire time to run `job` for at `now`, or nil (see the banner).
function M.due(job, now, runs)
  if job.service then return nil end -- started with the scheduler, never "due"
  local T = job.cron:prev(now)
  if not T then return nil end
  local h = M.history(job.name, runs)
  local last
  for i = #h, 1, -1 do
    if covers(h[i]) then last = h[i]; break end
  end
  if last then
    if (last.scheduled_at or 0) >= T then return nil end
    return T
  end
  if now - T <= job.grace then return T end
  return nil
end

-- ---- locks -------------------------------------------------------------------------------

local function last_json_object(text)
  local found
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) == "{" then
      local ok, v = pcall(cjson.decode, line)
      if ok and type(v) == "table" then found = v end
    end
  end
  return found
end

-- Where a run's child writes its final JSON document (its stdout): a file, not our pipe, so
-- that the outcome of a run whose scheduler was killed is still there for the next one.
function M.result_path(run_id) return M.state_dir() .. "/results/" .. tostring(run_id):gsub("[^%w._-]", "_") .. ".json" end

-- Bytes a run moved, from its result (export: stored_bytes; others: bytes/size).
local function result_bytes(res)
  if type(res) ~= "table" then return nil end
  for _, k in ipairs{"stored_bytes", "bytes", "size"} do
    if type(res[k]) == "number" then return res[k] end
  end
  return nil
end

local STATUS = {[0] = "ok", [124] = "timeout", [130] = "cancelled", [143] = "cancelled", [137] = "killed"}
local function status_of(exit)
  local st = STATUS[exit] or (exit == 4 and "verify_failed" or "failed")
  return st == "killed" and "failed" or st
end

function M.lock_path(job_or_lock)
  local name = type(job_or_lock) == "table" and job_or_lock.lock or job_or_lock
  return M.state_dir() .. "/locks/" .. tostring(name):gsub("[^%w._-]", "_") .. ".lock"
end

-- The latest "running" record of a lock (the run that holds it, when it is held).
local function running_record(lock, runs)
  for i = #runs, 1, -1 do
    local r = runs[i]
    if r.status == "running" and (r.lock or r.job) == lock then return r end
  end
  return nil
end

-- Takes the job's lock (one try). Returns the lock, or nil and a description of its holder.
function M.acquire(job)
  local path = M.lock_path(job)
  mkdir_p(path:match("^(.*)/"))
  local l = proc.lock(path)
  if l then return l end
  local r = running_record(job.lock, M.read_runs())
  if r then
    return nil, string.format("locked by run %s (pid %s on %s, started %s)", tostring(r.run_id),
                              tostring(math.tointeger(r.pid) or r.pid), tostring(r.host), tostring(r.started))
  end
  return nil, "locked: another scheduler is starting a run of " .. job.lock
end

-- Records the outcome of the "running" runs of `lock`, whose lock the caller holds: a run's
-- processes hold its lock until the last of them ends, so a run still "running" in the records
-- while we hold its lock has ended without its outcome written by its scheduler (stopped or
-- killed). A child that finished its work (its scheduler was killed, not the child) left its
-- final document in its result file: that outcome is recorded, and covers the fire time. A
-- child that was stopped left none (or a cancel): the run is "interrupted", and its fire time
-- runs again. Reads the records afresh: the holder before us may have finished a moment ago.
local function close_dead_runs(lock)
  local seen = {}
  for _, r in ipairs(M.read_runs()) do
    if r.status == "running" and (r.lock or r.job) == lock and r.run_id and not seen[r.run_id] then
      seen[r.run_id] = true
      local rec = {}
      for k, v in pairs(r) do rec[k] = v end
      rec.finished_at = time.now()
      rec.finished = time.iso(rec.finished_at)
      local rpath = M.result_path(r.run_id)
      local doc = last_json_object(read_file(rpath) or "")
      local exit = doc and (doc.ok == true and 0 or (type(doc.error) == "table" and math.tointeger(doc.error.exit)))
      local pid = tostring(math.tointeger(r.pid) or r.pid)
      if exit and exit ~= 130 and exit ~= 143 then
        rec.status, rec.exit = status_of(exit), exit
        if doc.ok == true then rec.result, rec.bytes = doc.result, result_bytes(doc.result) else
          rec.error, rec.hint, rec.error_class = doc.error.message, doc.error.hint, doc.error.class
        end
        rec.note = "its scheduler (pid " .. pid .. ") stopped during the run; the outcome is the child's own"
        M.append_run(rec)
        log.warn("recorded the outcome of a run whose scheduler stopped", {job = r.job, run = r.run_id, status = rec.status})
      else
        rec.status = "interrupted"
        rec.error = "the run ended without a record: its scheduler (pid " .. pid .. ") stopped during the run"
        M.append_run(rec)
        log.warn("recorded an interrupted run", {job = r.job, run = r.run_id})
      end
      os.remove(rpath)
    end
  end
end

-- Records as interrupted the runs left "running" whose lock is free (no process of theirs is
-- left). A lock that is held is left alone: its run is alive.
function M.sweep(runs)
  runs = runs or M.read_runs()
  local locks = {}
  for _, r in ipairs(runs) do
    if r.status == "running" then locks[r.lock or r.job] = true end
  end
  for lock in pairs(locks) do
    local path = M.lock_path(lock)
    mkdir_p(path:match("^(.*)/"))
    local l = proc.lock(path)
    if l then
      close_dead_runs(lock)
      l:release()
    end
  end
end

-- ---- running a job -----------------------------------------------------------------------

local function say(level, msg, fields)
  local out = M.output or function(lv, m, f) log[lv](m, f) end
  out(level, msg, fields)
end

-- One attempt: the child `clubio-dr --json --timeout T run SCRIPT ARGS` under coreutils
-- `timeout` (a second guard should the child not stop by itself), its stdout to the run's
-- result file, its stderr (log lines) to us. ARGS are read as typed after
-- `run SCRIPT` (no `--`): a jobs file's `--yes` is the host's flag, an unknown option the
-- script's usage error. Returns {exit, seconds, result, error}.
function M.attempt(job, run_id, attempt, lock)
  local me = M.self()
  -- the child's stdout (its final JSON document) goes to the run's result file: `sh` opens it
  -- and execs the command (our arguments are "$@": no shell parsing of them)
  local rpath = M.result_path(run_id)
  mkdir_p(rpath:match("^(.*)/"))
  local argv = {"sh", "-c", 'out=$1; shift; exec "$@" > "$out"', "sh", rpath,
                "timeout", "--kill-after=30", tostring(math.ceil(job.timeout + 30)), me.bin, "--json", "--no-progress",
                "--timeout", tostring(job.timeout), "run", job.script}
  for _, a in ipairs(job.args) do argv[#argv + 1] = a end
  local env = {CLUBIO_DR_JOB = job.name, CLUBIO_DR_RUN_ID = run_id, CLUBIO_DR_ATTEMPT = tostring(attempt)}
  for k, v in pairs(job.env or {}) do env[k] = tostring(v) end
  local t0 = time.monotonic()
  -- the child inherits the job's lock: it stays held while the child lives, even if we are killed
  local r = proc.run{argv = argv, env = env, stdin = "", lock = lock}
  local secs = time.monotonic() - t0
  r.stdout = read_file(rpath) or ""
  os.remove(rpath)
  -- the child's log lines (JSON with --json) become ours, tagged with the job
  for line in r.stderr:gmatch("[^\n]+") do
    local ok, l = pcall(cjson.decode, line)
    if ok and type(l) == "table" and l.msg then
      local lv = ({debug = "debug", info = "info", warn = "warn", error = "error"})[l.level] or "info"
      local fields = {}
      for k, v in pairs(l) do if k ~= "msg" and k ~= "level" and k ~= "ts" then fields[k] = v end end
      fields.job = job.name
      say(lv, l.msg, fields)
    else
      say("info", line, {job = job.name})
    end
  end
  local doc = last_json_object(r.stdout)
  local out = {exit = r.status, seconds = secs}
  if doc and doc.ok == true then out.result = doc.result end
  if doc and doc.ok == false and type(doc.error) == "table" then
    out.error = doc.error.message
    out.hint = doc.error.hint
    out.error_class = doc.error.class
  end
  if r.status ~= 0 and not out.error then
    out.error = r.status == 124 and string.format("timed out after %ds", job.timeout)
             or (r.stderr:match("([^\n]+)\n*$") or ("exited with status " .. r.status))
  end
  return out
end

-- Runs a job now: lock, attempts with retries, record, alerts, metrics. opts: scheduled (the
-- fire time this run is for; default now), trigger ("schedule", "once", "manual"), due (true:
-- the run is for a due fire time, checked again under the lock, and skipped when another
-- scheduler has run it meanwhile). Returns the record ({status = "skipped"} when the lock is
-- held or the fire time has been run).
function M.run_job(job, opts)
  opts = opts or {}
  local me = M.self()
  local lock, holder = M.acquire(job)
  if not lock then
    say("warn", "skipped: " .. holder, {job = job.name})
    return {job = job.name, status = "skipped", reason = holder, scheduled_at = opts.scheduled}
  end
  local rec, attempts, a = nil, {}, nil
  local pok, perr = pcall(function()
    close_dead_runs(job.lock)
    local started = time.now()
    local scheduled = opts.scheduled or started
    if opts.due then
      local T = M.due(job, started, M.read_runs())
      if not T then
        rec = {job = job.name, status = "skipped", reason = "already run for " .. time.iso(scheduled), scheduled_at = scheduled}
        return
      end
      scheduled = T
    end
    -- the pid makes it unique across processes started in the same second (whose math.random
    -- may share a seed: Lua seeds it from the time and an address)
    local run_id = string.format("%s-%s-%d-%d", job.name, time.stamp(started), me.pid, math.random(1, 1 << 20))
    M.append_run({job = job.name, script = job.script, args = job.args, run_id = run_id, host = me.host, pid = me.pid,
                  lock = job.lock, trigger = opts.trigger or "schedule", scheduled_at = scheduled,
                  scheduled = time.iso(scheduled), started_at = started, started = time.iso(started), status = "running"})
    say("info", string.format("starting %s (%s%s)", job.name, job.script,
                              #job.args > 0 and (" " .. table.concat(job.args, " ")) or ""),
        {job = job.name, run = run_id, scheduled = time.iso(scheduled)})
    for n = 1, job.retries + 1 do
      a = M.attempt(job, run_id, n, lock)
      attempts[#attempts + 1] = {exit = a.exit, seconds = a.seconds, error = a.error}
      if a.exit == 0 or not RETRYABLE[a.exit] or n > job.retries then break end
      say("warn", string.format("attempt %d of %d failed (%s); retrying in %ds", n, job.retries + 1, a.error,
                                job.retry_delay), {job = job.name})
      if job.retry_delay > 0 then time.sleep(job.retry_delay) end
    end
    local finished = time.now()
    rec = {job = job.name, script = job.script, args = job.args, run_id = run_id, host = me.host, pid = me.pid,
           lock = job.lock, trigger = opts.trigger or "schedule", scheduled_at = scheduled, scheduled = time.iso(scheduled),
           started_at = started, started = time.iso(started), finished_at = finished, finished = time.iso(finished),
           seconds = finished - started, status = status_of(a.exit),
           exit = a.exit, attempts = attempts, error = a.error, hint = a.hint, bytes = result_bytes(a.result),
           verification = job.verification or nil, result = a.result}
    M.append_run(rec)
  end)
  -- the outcome is recorded before the lock is let go: whoever takes it next sees it
  lock:release()
  if not pok then error(perr, 0) end
  if rec.status == "skipped" then
    say("info", "skipped: " .. rec.reason .. " (another scheduler ran it)", {job = job.name})
    return rec
  end
  local run_id = rec.run_id
  if rec.status == "ok" then
    say("info", string.format("%s ok in %.1f s", job.name, rec.seconds), {job = job.name, run = run_id})
  else
    say("error", string.format("%s %s (exit %d): %s", job.name, rec.status, rec.exit, tostring(rec.error)),
        {job = job.name, run = run_id, attempts = #attempts})
  end
  M.after_run(job, rec)
  return rec
end

-- Alerts and metrics after a run; their failures are logged, never fatal to the scheduler.
function M.after_run(job, rec)
  local runs = M.read_runs()
  local ok, err = pcall(function() require("clubio.alerts").on_run(job, rec, M.history(job.name, runs)) end)
  if not ok then say("warn", "alert not sent: " .. tostring(err), {job = job.name}) end
  if os.getenv("CLUBIO_DR_TEXTFILE_DIR") and os.getenv("CLUBIO_DR_TEXTFILE_DIR") ~= "" then
    ok, err = pcall(function() require("clubio.metrics").write_textfile(runs) end)
    if not ok then say("warn", "metrics textfile not written: " .. tostring(err), {job = job.name}) end
  end
end

-- ---- services ----------------------------------------------------------------------------

-- The pid of our parent process (from /proc/self/stat), to notice a scheduler that is gone.
local function parent_pid()
  return tonumber((read_file("/proc/self/stat") or ""):match("^%d+ %b() %S+ (%d+)"))
end

-- Sleeps up to `secs` in naps of at most a second, until stop() is true; false when stopped.
local function nap_until(secs, stop)
  local t_end = time.monotonic() + secs
  while true do
    if stop() then return false end
    local left = t_end - time.monotonic()
    if left <= 0 then return true end
    if not pcall(time.sleep, math.min(1, left)) then return false end -- a cancel (SIGTERM)
  end
end

local function service_event(job, rec, recent, kind)
  local alerts = require "clubio.alerts"
  local ev = alerts.event(job, rec, recent)
  if not ev then return nil end
  ev.service = true
  if kind == "failure" then
    ev.exits_in_window = #recent
    ev.summary = string.format("[%s] service %s exited %d times within %d s on %s (last exit %s): %s", ev.severity,
                               job.name, #recent, math.floor(job.alert_window), tostring(rec.host), tostring(rec.exit),
                               tostring(rec.error))
  else
    ev.summary = string.format("service %s is running again on %s (up for %d s)", job.name, tostring(rec.host),
                               math.floor(rec.seconds or 0))
  end
  return ev
end

local function send_event(job, ev)
  if not ev then return end
  local ok, err = pcall(require("clubio.alerts").send, ev)
  if not ok then say("warn", "alert not sent: " .. tostring(err), {job = job.name}) end
end

local function write_metrics(job)
  if os.getenv("CLUBIO_DR_TEXTFILE_DIR") and os.getenv("CLUBIO_DR_TEXTFILE_DIR") ~= "" then
    local ok, err = pcall(function() require("clubio.metrics").write_textfile(M.read_runs()) end)
    if not ok then say("warn", "metrics textfile not written: " .. tostring(err), {job = job.name}) end
  end
end

-- Supervises a service job (see the banner) until SIGTERM, or until the process `opts.parent`
-- (the scheduler that started us) is no longer our parent. Returns the number of exits seen.
function M.supervise(job, opts)
  opts = opts or {}
  if not job.service then fail("job '" .. job.name .. "' is not a service", "add service = true to its jobs file entry", "usage") end
  local me = M.self()
  local function stopping()
    return clubio.cancelled() or (opts.parent ~= nil and parent_pid() ~= opts.parent)
  end
  local path = M.lock_path(job)
  mkdir_p(path:match("^(.*)/"))
  mkdir_p(M.state_dir() .. "/results")
  -- one instance however many schedulers run: the others wait as standbys
  local lock, told
  while true do
    if stopping() then return 0 end
    lock = proc.lock(path)
    if lock then break end
    if not told then
      local r = running_record(job.lock, M.read_runs())
      say("info", string.format("standby: %s runs elsewhere%s; taking over when it stops", job.name,
                                r and string.format(" (run %s, pid %s on %s)", tostring(r.run_id),
                                                    tostring(math.tointeger(r.service_pid or r.pid)), tostring(r.host)) or ""),
          {job = job.name})
      told = true
    end
    if not nap_until(1, stopping) then return 0 end
  end
  local exits, recent, delay, alerted = 0, {}, job.restart_delay, false
  local pok, perr = pcall(function()
    close_dead_runs(job.lock)
    while true do
      local started = time.now()
      local run_id = string.format("%s-%s-%d-%d", job.name, time.stamp(started), me.pid, math.random(1, 1 << 20))
      local rpath = M.result_path(run_id)
      -- its final JSON document (the error of a failed start) to the result file; its log to ours
      local argv = {"sh", "-c", 'out=$1; shift; exec "$@" > "$out"', "sh", rpath, me.bin, "--json", "--no-progress",
                    "run", job.script}
      for _, a in ipairs(job.args) do argv[#argv + 1] = a end
      local env = {CLUBIO_DR_JOB = job.name, CLUBIO_DR_RUN_ID = run_id, CLUBIO_DR_SERVICE = "1"}
      for k, v in pairs(job.env or {}) do env[k] = tostring(v) end
      local child <close> = proc.spawn{argv = argv, env = env, lock = lock}
      local base = {job = job.name, script = job.script, args = job.args, run_id = run_id, host = me.host, pid = me.pid,
                    service_pid = child:pid(), lock = job.lock, trigger = "service", service = true,
                    scheduled_at = started, scheduled = time.iso(started), started_at = started, started = time.iso(started)}
      local rec = {}
      for k, v in pairs(base) do rec[k] = v end
      rec.status = "running"
      M.append_run(rec)
      say("info", string.format("service %s started (%s%s)", job.name, job.script,
                                #job.args > 0 and (" " .. table.concat(job.args, " ")) or ""),
          {job = job.name, run = run_id, pid = base.service_pid})
      local st
      while true do
        st = child:wait(1)
        if st or stopping() then break end
        if alerted and time.now() - started >= job.alert_window then
          local ok_rec = {}
          for k, v in pairs(base) do ok_rec[k] = v end
          ok_rec.status, ok_rec.seconds = "ok", time.now() - started
          local h = {table.unpack(recent)}
          h[#h + 1] = ok_rec
          send_event(job, service_event(job, ok_rec, h, "recovery"))
          alerted, recent = false, {}
        end
      end
      local stop = stopping()
      if stop and not st then
        say("info", string.format("stopping service %s (SIGTERM; SIGKILL after %d s)", job.name, math.floor(job.stop_timeout)),
            {job = job.name, run = run_id})
        st = child:terminate(job.stop_timeout)
      end
      local finished = time.now()
      rec = {}
      for k, v in pairs(base) do rec[k] = v end
      rec.finished_at, rec.finished, rec.seconds, rec.exit = finished, time.iso(finished), finished - started, st
      local doc = last_json_object(read_file(rpath) or "")
      os.remove(rpath)
      if doc and doc.ok == false and type(doc.error) == "table" then
        rec.error, rec.hint, rec.error_class = doc.error.message, doc.error.hint, doc.error.class
      end
      if stop then
        rec.status = "stopped"
        M.append_run(rec)
        say("info", string.format("service %s stopped (status %d)", job.name, st), {job = job.name, run = run_id})
        return
      end
      exits = exits + 1
      rec.status = st == 0 and "exited" or status_of(st)
      rec.error = rec.error or (st > 128 and string.format("killed by signal %d", st - 128)
                                or string.format("exited with status %d", st))
      M.append_run(rec)
      if rec.seconds >= job.restart_max_delay then delay = job.restart_delay end -- it had been running well
      -- the exits within the alert window, oldest first
      local keep = {}
      for _, r in ipairs(recent) do if finished - r.finished_at <= job.alert_window then keep[#keep + 1] = r end end
      keep[#keep + 1] = rec
      recent = keep
      say("error", string.format("service %s exited (status %d) after %.1f s: %s; restarting in %g s", job.name, st,
                                 rec.seconds, rec.error, delay),
          {job = job.name, run = run_id, exits_in_window = #recent})
      if #recent >= job.alert_exits and not alerted then
        send_event(job, service_event(job, rec, recent, "failure"))
        alerted = true
      end
      write_metrics(job)
      if not nap_until(delay, stopping) then return end
      delay = math.min(delay * 2, job.restart_max_delay)
    end
  end)
  lock:release()
  if not pok then error(perr, 0) end
  return exits
end

-- A service's state for --list: {state = "running"|"restarting"|"stopped", pid, since, exits (in
-- its alert window), last_exit}. "restarting": its lock is held but no instance is recorded as
-- running (its supervisor waits to start it again). Tries the lock once (released at once).
function M.service_state(job, runs, now)
  local h = M.history(job.name, runs, {all = true})
  local last = h[#h]
  local out = {exits = 0}
  for i = #h, 1, -1 do
    local r = h[i]
    if r.status ~= "running" and r.status ~= "stopped" and r.finished_at then
      if not out.last_exit then out.last_exit = {status = r.status, exit = r.exit, at = r.finished, error = r.error} end
      if now - r.finished_at <= job.alert_window then out.exits = out.exits + 1 end
    end
  end
  local path = M.lock_path(job)
  local l = read_file(path) and proc.lock(path)
  if l then
    l:release()
    out.state = "stopped"
  elseif read_file(path) == nil then
    out.state = "stopped"
  elseif last and last.status == "running" then
    out.state, out.pid, out.since, out.host = "running", last.service_pid, last.started, last.host
  else
    out.state = "restarting"
  end
  return out
end

return M
