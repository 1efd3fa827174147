-- Running a scheduled job (part of clubio.schedule; see its banner): its lock, attempts as a
-- child `clubio-dr run` under a timeout, retries, the run's record, then alerts and metrics.
-- The child's log lines become ours (through `log`), tagged with the job.
--
--   local Run = require "clubio.schedule.runner"
--   local rec = Run.run_job(job, {scheduled = T, trigger = "schedule", due = true})
local log, time, proc, cjson = require "log", require "time", require "proc", require "cjson"
local P = require "clubio.schedule.places"
local R = require "clubio.schedule.records"
local L = require "clubio.schedule.locks"
local read_file, mkdir_p = P.read_file, P.mkdir_p
local last_json_object, status_of, result_bytes = R.last_json_object, R.status_of, R.result_bytes

local M = {}

-- exit statuses worth another attempt: failure, timeout, killed; not usage/config/verify/declined
local RETRYABLE = {[1] = true, [124] = true, [137] = true}

-- One attempt: the child `clubio-dr --json --timeout T run SCRIPT ARGS` under coreutils
-- `timeout` (a second guard should the child not stop by itself), its stdout to the run's
-- result file, its stderr (log lines) to us. ARGS are read as typed after
-- `run SCRIPT` (no `--`): a jobs file's `--yes` is the host's flag, an unknown option the
-- script's usage error. Returns {exit, seconds, result, error}.
function M.attempt(job, run_id, attempt, lock)
  local me = P.self()
  -- the child's stdout (its final JSON document) goes to the run's result file: `sh` opens it
  -- and execs the command (our arguments are "$@": no shell parsing of them)
  local rpath = R.result_path(run_id)
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
      log[lv](l.msg, fields)
    else
      log.info(line, {job = job.name})
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
  local me = P.self()
  local lock, holder = L.acquire(job)
  if not lock then
    log.warn("skipped: " .. holder, {job = job.name})
    return {job = job.name, status = "skipped", reason = holder, scheduled_at = opts.scheduled}
  end
  local rec, attempts, a = nil, {}, nil
  local pok, perr = pcall(function()
    L.close_dead_runs(job.lock)
    local started = time.now()
    local scheduled = opts.scheduled or started
    if opts.due then
      local T = R.due(job, started, R.read_runs())
      if not T then
        rec = {job = job.name, status = "skipped", reason = "already run for " .. time.iso(scheduled), scheduled_at = scheduled}
        return
      end
      scheduled = T
    end
    -- the pid makes it unique across processes started in the same second (whose math.random
    -- may share a seed: Lua seeds it from the time and an address)
    local run_id = string.format("%s-%s-%d-%d", job.name, time.stamp(started), me.pid, math.random(1, 1 << 20))
    R.append_run({job = job.name, script = job.script, args = job.args, run_id = run_id, host = me.host, pid = me.pid,
                  lock = job.lock, trigger = opts.trigger or "schedule", scheduled_at = scheduled,
                  scheduled = time.iso(scheduled), started_at = started, started = time.iso(started), status = "running"})
    log.info(string.format("starting %s (%s%s)", job.name, job.script,
                           #job.args > 0 and (" " .. table.concat(job.args, " ")) or ""),
        {job = job.name, run = run_id, scheduled = time.iso(scheduled)})
    for n = 1, job.retries + 1 do
      a = M.attempt(job, run_id, n, lock)
      attempts[#attempts + 1] = {exit = a.exit, seconds = a.seconds, error = a.error}
      if a.exit == 0 or not RETRYABLE[a.exit] or n > job.retries then break end
      log.warn(string.format("attempt %d of %d failed (%s); retrying in %ds", n, job.retries + 1, a.error,
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
    R.append_run(rec)
  end)
  -- the outcome is recorded before the lock is let go: whoever takes it next sees it
  lock:release()
  if not pok then error(perr, 0) end
  if rec.status == "skipped" then
    log.info("skipped: " .. rec.reason .. " (another scheduler ran it)", {job = job.name})
    return rec
  end
  local run_id = rec.run_id
  if rec.status == "ok" then
    log.info(string.format("%s ok in %.1f s", job.name, rec.seconds), {job = job.name, run = run_id})
  else
    log.error(string.format("%s %s (exit %d): %s", job.name, rec.status, rec.exit, tostring(rec.error)),
        {job = job.name, run = run_id, attempts = #attempts})
  end
  M.after_run(job, rec)
  return rec
end

-- Alerts and metrics after a run; their failures are logged, never fatal to the scheduler.
function M.after_run(job, rec)
  local runs = R.read_runs()
  local ok, err = pcall(function() require("clubio.alerts").on_run(job, rec, R.history(job.name, runs)) end)
  if not ok then log.warn("alert not sent: " .. tostring(err), {job = job.name}) end
  M.write_metrics(job, runs)
end

-- The metrics textfile (CLUBIO_DR_TEXTFILE_DIR, when set) from the run records; a failure is
-- logged, never fatal.
function M.write_metrics(job, runs)
  if os.getenv("CLUBIO_DR_TEXTFILE_DIR") and os.getenv("CLUBIO_DR_TEXTFILE_DIR") ~= "" then
    local ok, err = pcall(function() require("clubio.metrics").write_textfile(runs or R.read_runs()) end)
    if not ok then log.warn("metrics textfile not written: " .. tostring(err), {job = job.name}) end
  end
end

return M
