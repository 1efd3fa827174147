-- The scheduler's engine: jobs (scripts' `-- schedule:` headers plus an optional jobs file),
-- what is due, per-job locks, running a job as a child `clubio-dr run` with a timeout and
-- retries, and the run records (JSON lines). `scripts/schedule.lua` is its command line.
--
--   local S = require "clubio.schedule"
--   local jobs = S.load_jobs()                     -- {{name, script, args, schedule, cron, timeout, ...}}
--   local T = S.due(job, time.now(), S.read_runs()) -- the fire time to run now, or nil
--   local rec = S.run_job(job, {scheduled = T})     -- lock, run (retries), record, alert, metrics
--
-- Its parts, one module each under clubio/schedule/: places (the state folder, our process,
-- atomic writes), jobs (the jobs file and the scripts' headers), records (runs.jsonl, result
-- files, what is due), locks, runner (attempts, retries, a run's record, alerts, metrics) and
-- service (a service job's supervisor). This module gathers what callers use. The parts log
-- through the host's `log` (stderr; JSON lines with --json).
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
local P = require "clubio.schedule.places"
local J = require "clubio.schedule.jobs"
local R = require "clubio.schedule.records"
local L = require "clubio.schedule.locks"
local Run = require "clubio.schedule.runner"
local Svc = require "clubio.schedule.service"

return {
  -- places
  state_dir = P.state_dir, write_atomic = P.write_atomic, self = P.self,
  -- jobs
  DEFAULTS = J.DEFAULTS, SERVICE_DEFAULTS = J.SERVICE_DEFAULTS, jobs_file = J.jobs_file, scripts = J.scripts,
  load_jobs = J.load_jobs,
  -- run records
  runs_path = R.runs_path, read_runs = R.read_runs, append_run = R.append_run, history = R.history, due = R.due,
  result_path = R.result_path,
  -- locks
  lock_path = L.lock_path, acquire = L.acquire, sweep = L.sweep,
  -- running a job
  attempt = Run.attempt, run_job = Run.run_job, after_run = Run.after_run,
  -- services
  supervise = Svc.supervise, service_state = Svc.service_state,
}
