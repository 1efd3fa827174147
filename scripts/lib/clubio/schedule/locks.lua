-- The scheduler's per-job locks (part of clubio.schedule; see its banner): a kernel lock
-- (flock(2), proc.lock) on STATE/locks/NAME.lock, taken for a run and inherited by the run's
-- child, so it is held while any process of the run lives and dropped by the kernel when the
-- last one ends. Under the lock, runs left "running" in the records get their outcome.
--
--   local L = require "clubio.schedule.locks"
--   local lock, holder = L.acquire(job)   -- the lock, or nil and who holds it
--   L.close_dead_runs(job.lock)           -- with the lock held: record the runs that ended unrecorded
--   L.sweep()                             -- the same for every free lock with a "running" run
local log, time, proc = require "log", require "time", require "proc"
local P = require "clubio.schedule.places"
local R = require "clubio.schedule.records"
local read_file, mkdir_p = P.read_file, P.mkdir_p
local last_json_object, status_of, result_bytes = R.last_json_object, R.status_of, R.result_bytes

local M = {}

function M.lock_path(job_or_lock)
  local name = type(job_or_lock) == "table" and job_or_lock.lock or job_or_lock
  return P.state_dir() .. "/locks/" .. tostring(name):gsub("[^%w._-]", "_") .. ".lock"
end

-- The latest "running" record of a lock (the run that holds it, when it is held).
function M.running_record(lock, runs)
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
  local r = M.running_record(job.lock, R.read_runs())
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
function M.close_dead_runs(lock)
  local seen = {}
  for _, r in ipairs(R.read_runs()) do
    if r.status == "running" and (r.lock or r.job) == lock and r.run_id and not seen[r.run_id] then
      seen[r.run_id] = true
      local rec = {}
      for k, v in pairs(r) do rec[k] = v end
      rec.finished_at = time.now()
      rec.finished = time.iso(rec.finished_at)
      local rpath = R.result_path(r.run_id)
      local doc = last_json_object(read_file(rpath) or "")
      local exit = doc and (doc.ok == true and 0 or (type(doc.error) == "table" and math.tointeger(doc.error.exit)))
      local pid = tostring(math.tointeger(r.pid) or r.pid)
      if exit and exit ~= 130 and exit ~= 143 then
        rec.status, rec.exit = status_of(exit), exit
        if doc.ok == true then rec.result, rec.bytes = doc.result, result_bytes(doc.result) else
          rec.error, rec.hint, rec.error_class = doc.error.message, doc.error.hint, doc.error.class
        end
        rec.note = "its scheduler (pid " .. pid .. ") stopped during the run; the outcome is the child's own"
        R.append_run(rec)
        log.warn("recorded the outcome of a run whose scheduler stopped", {job = r.job, run = r.run_id, status = rec.status})
      else
        rec.status = "interrupted"
        rec.error = "the run ended without a record: its scheduler (pid " .. pid .. ") stopped during the run"
        R.append_run(rec)
        log.warn("recorded an interrupted run", {job = r.job, run = r.run_id})
      end
      os.remove(rpath)
    end
  end
end

-- Records as interrupted the runs left "running" whose lock is free (no process of theirs is
-- left). A lock that is held is left alone: its run is alive.
function M.sweep(runs)
  runs = runs or R.read_runs()
  local locks = {}
  for _, r in ipairs(runs) do
    if r.status == "running" then locks[r.lock or r.job] = true end
  end
  for lock in pairs(locks) do
    local path = M.lock_path(lock)
    mkdir_p(path:match("^(.*)/"))
    local l = proc.lock(path)
    if l then
      M.close_dead_runs(lock)
      l:release()
    end
  end
end

return M
