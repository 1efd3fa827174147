-- The scheduler's run records (part of clubio.schedule; see its banner): STATE/runs.jsonl, one
-- JSON object per line, a "running" line when a run starts and its outcome when it ends; the
-- results/RUN_ID.json files where a run's child writes its final document; and what is due.
--
--   local R = require "clubio.schedule.records"
--   local runs = R.read_runs()                  -- oldest first, the later line of a run id wins
--   R.append_run(rec)                           -- one line, one write: writers do not interleave
--   local T = R.due(job, time.now(), runs)      -- the fire time to run now, or nil
local log, cjson = require "log", require "cjson"
local P = require "clubio.schedule.places"
local fail = P.fail

local M = {}

function M.runs_path() return P.state_dir() .. "/runs.jsonl" end

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
    P.mkdir_p(P.state_dir())
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

-- ---- due ---------------------------------------------------------------------------------

-- Runs that count as having run for their fire time: an interrupted run does not (the job is
-- run again for that fire time when the scheduler is back).
local function covers(r) return r.status ~= "interrupted" and r.status ~= "cancelled" end

-- The fire time to run `job` for at `now`, or nil: its latest fire time T <= now when no run is
-- recorded for T or later (each missed fire time is caught up once); for a job never run, only
-- within job.grace seconds of T.
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

-- ---- results -----------------------------------------------------------------------------

-- The last line of `text` that is a JSON object (a child's final document), or nil.
function M.last_json_object(text)
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
function M.result_path(run_id) return P.state_dir() .. "/results/" .. tostring(run_id):gsub("[^%w._-]", "_") .. ".json" end

-- Bytes a run moved, from its result (export: stored_bytes; others: bytes/size).
function M.result_bytes(res)
  if type(res) ~= "table" then return nil end
  for _, k in ipairs{"stored_bytes", "bytes", "size"} do
    if type(res[k]) == "number" then return res[k] end
  end
  return nil
end

-- A run's status from its exit status: ok, timeout, cancelled, verify_failed or failed.
local STATUS = {[0] = "ok", [124] = "timeout", [130] = "cancelled", [143] = "cancelled", [137] = "killed"}
function M.status_of(exit)
  local st = STATUS[exit] or (exit == 4 and "verify_failed" or "failed")
  return st == "killed" and "failed" or st
end

return M
