-- The supervisor of a service job (part of clubio.schedule; see its banner): a job with
-- `service = true` has no schedule; it is a long-running script that should always run, once.
-- The supervisor takes the job's lock (a standby while another holds it), starts the script
-- with the lock, records each start and exit, restarts it with backoff, alerts on repeated
-- exits and on recovery, and stops it on SIGTERM or when its scheduler is gone.
--
--   local Svc = require "clubio.schedule.service"
--   Svc.supervise(job, {parent = scheduler_pid})   -- until stopped; returns the exits seen
--   Svc.service_state(job, runs, time.now())        -- {state = "running"|"restarting"|"stopped", ...}
local clubio, log, time, proc = require "clubio", require "log", require "time", require "proc"
local P = require "clubio.schedule.places"
local R = require "clubio.schedule.records"
local L = require "clubio.schedule.locks"
local Run = require "clubio.schedule.runner"
local fail, read_file, mkdir_p = P.fail, P.read_file, P.mkdir_p
local last_json_object, status_of = R.last_json_object, R.status_of

local M = {}

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
  if not ok then log.warn("alert not sent: " .. tostring(err), {job = job.name}) end
end

-- Supervises a service job (see the banner) until SIGTERM, or until the process `opts.parent`
-- (the scheduler that started us) is no longer our parent. Returns the number of exits seen.
function M.supervise(job, opts)
  opts = opts or {}
  if not job.service then fail("job '" .. job.name .. "' is not a service", "add service = true to its jobs file entry", "usage") end
  local me = P.self()
  local function stopping()
    return clubio.cancelled() or (opts.parent ~= nil and parent_pid() ~= opts.parent)
  end
  local path = L.lock_path(job)
  mkdir_p(path:match("^(.*)/"))
  mkdir_p(P.state_dir() .. "/results")
  -- one instance however many schedulers run: the others wait as standbys
  local lock, told
  while true do
    if stopping() then return 0 end
    lock = proc.lock(path)
    if lock then break end
    if not told then
      local r = L.running_record(job.lock, R.read_runs())
      log.info(string.format("standby: %s runs elsewhere%s; taking over when it stops", job.name,
                             r and string.format(" (run %s, pid %s on %s)", tostring(r.run_id),
                                                 tostring(math.tointeger(r.service_pid or r.pid)), tostring(r.host)) or ""),
          {job = job.name})
      told = true
    end
    if not nap_until(1, stopping) then return 0 end
  end
  local exits, recent, delay, alerted = 0, {}, job.restart_delay, false
  -- The host's cancel hook raises within a count of Lua instructions after a signal, wherever
  -- the code has got to. Here every wait is cancellable in C (child:wait, time.sleep), and the
  -- stop path (stop the script, record "stopped", let the lock go) must run to its end: it runs
  -- shielded from the hook while we hold the lock (a cancel is raised once it is done).
  local function loop()
    L.close_dead_runs(job.lock)
    while true do
      local started = time.now()
      local run_id = string.format("%s-%s-%d-%d", job.name, time.stamp(started), me.pid, math.random(1, 1 << 20))
      local rpath = R.result_path(run_id)
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
      R.append_run(rec)
      log.info(string.format("service %s started (%s%s)", job.name, job.script,
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
        log.info(string.format("stopping service %s (SIGTERM; SIGKILL after %d s)", job.name, math.floor(job.stop_timeout)),
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
        R.append_run(rec)
        log.info(string.format("service %s stopped (status %d)", job.name, st), {job = job.name, run = run_id})
        return
      end
      exits = exits + 1
      rec.status = st == 0 and "exited" or status_of(st)
      rec.error = rec.error or (st > 128 and string.format("killed by signal %d", st - 128)
                                or string.format("exited with status %d", st))
      R.append_run(rec)
      if rec.seconds >= job.restart_max_delay then delay = job.restart_delay end -- it had been running well
      -- the exits within the alert window, oldest first
      local keep = {}
      for _, r in ipairs(recent) do if finished - r.finished_at <= job.alert_window then keep[#keep + 1] = r end end
      keep[#keep + 1] = rec
      recent = keep
      log.error(string.format("service %s exited (status %d) after %.1f s: %s; restarting in %g s", job.name, st,
                              rec.seconds, rec.error, delay),
          {job = job.name, run = run_id, exits_in_window = #recent})
      if #recent >= job.alert_exits and not alerted then
        send_event(job, service_event(job, rec, recent, "failure"))
        alerted = true
      end
      Run.write_metrics(job)
      if not nap_until(delay, stopping) then return end
      delay = math.min(delay * 2, job.restart_max_delay)
    end
  end
  clubio.shielded(function()
    local ok, err = pcall(loop)
    lock:release()
    if not ok then error(err, 0) end
  end)
  return exits
end

-- A service's state for --list: {state = "running"|"restarting"|"stopped", pid, since, exits (in
-- its alert window), last_exit}. "restarting": its lock is held but no instance is recorded as
-- running (its supervisor waits to start it again). Tries the lock once (released at once).
function M.service_state(job, runs, now)
  local h = R.history(job.name, runs, {all = true})
  local last = h[#h]
  local out = {exits = 0}
  for i = #h, 1, -1 do
    local r = h[i]
    if r.status ~= "running" and r.status ~= "stopped" and r.finished_at then
      if not out.last_exit then out.last_exit = {status = r.status, exit = r.exit, at = r.finished, error = r.error} end
      if now - r.finished_at <= job.alert_window then out.exits = out.exits + 1 end
    end
  end
  local path = L.lock_path(job)
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
