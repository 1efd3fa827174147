-- Alerts for scheduled jobs: on failure and on recovery, to a Slack-compatible incoming webhook
-- (SLACK_WEBHOOK_URL) and a generic JSON webhook (ALERT_WEBHOOK_URL). Both URLs are secrets
-- (a Slack webhook URL is a credential): they never reach logs or errors.
--
--   local alerts = require "clubio.alerts"
--   local ev = alerts.event(job, rec, history)   -- nil when nothing is worth saying
--   alerts.send(ev)                              --> {{target = "slack", status = 200}, ...}
--   alerts.on_run(job, rec, history)             -- both, as the scheduler does after each run
--
-- The runbook's escalation: a failing job is P2; once its failures span 2 or more UTC days in a
-- row (no success in between — "the backup failed 2+ consecutive days") it is P1. The state is
-- the run records themselves: `history` is the job's runs, oldest first, ending with `rec`.
-- A success after a failure sends a recovery ("resolved") alert; a success after a success
-- sends nothing.
local clubio, log, cjson = require "clubio", require "log", require "cjson"
local M = {}

local RUNBOOKS = {["backup-database"] = "daily-backup-failure"}

local function day_of(r)
  local t = r.scheduled_at or r.started_at or r.finished_at or 0
  return math.floor(t) // 86400
end

local function ok_status(s) return s == "ok" end

-- The failure streak ending at history's last element: {runs = n, days = distinct UTC days,
-- since = first failed run}.
function M.streak(history)
  local n, days, since = 0, {}, nil
  for i = #history, 1, -1 do
    local r = history[i]
    if ok_status(r.status) then break end
    n = n + 1
    days[day_of(r)] = true
    since = r
  end
  local d = 0
  for _ in pairs(days) do d = d + 1 end
  return {runs = n, days = d, since = since}
end

-- The alert for a finished run, or nil.
function M.event(job, rec, history)
  if rec.status == "skipped" or rec.status == "cancelled" then return nil end
  -- history ends with rec (as read back from the records), or not yet
  local last = history[#history]
  local prev = history[#history - 1]
  if not last or last.run_id ~= rec.run_id then
    prev = last
    history = {table.unpack(history)}
    history[#history + 1] = rec
  end
  local base = {source = "clubio-dr", version = clubio.version, job = job.name, script = job.script,
                args = job.args, host = rec.host, run_id = rec.run_id, status = rec.status, exit = rec.exit,
                scheduled = rec.scheduled, started = rec.started, finished = rec.finished, seconds = rec.seconds,
                attempts = rec.attempts and #rec.attempts or nil, runbook = RUNBOOKS[job.script]}
  if ok_status(rec.status) then
    if not prev or ok_status(prev.status) then return nil end
    local h = {}
    for i = 1, #history - 1 do h[i] = history[i] end
    local s = M.streak(h)
    base.event, base.severity = "recovery", "resolved"
    base.previous_status = prev.status
    base.failed_runs = s.runs
    base.failing_since = s.since and (s.since.scheduled or s.since.started) or nil
    base.summary = string.format("%s recovered after %d failed run%s", job.name, s.runs, s.runs == 1 and "" or "s")
    return base
  end
  local s = M.streak(history)
  base.event = "failure"
  base.severity = s.days >= 2 and "P1" or "P2"
  base.error, base.hint = rec.error, rec.hint
  base.consecutive_failures = s.runs
  base.failing_days = s.days
  base.failing_since = s.since and (s.since.scheduled or s.since.started) or nil
  base.escalation = s.days >= 2 and string.format("escalated to P1: failing for %d consecutive days", s.days)
                    or "P2; escalates to P1 after 2+ consecutive days of failures"
  base.summary = string.format("[%s] %s %s on %s (exit %s): %s", base.severity, job.name,
                               rec.status == "timeout" and "timed out" or "failed", tostring(rec.host),
                               tostring(rec.exit), tostring(rec.error or "no error message"))
  return base
end

-- Slack incoming-webhook payload: a text line plus an attachment with the fields.
function M.slack_payload(ev)
  local icon = ev.event == "recovery" and ":large_green_circle:" or (ev.severity == "P1" and ":rotating_light:" or ":red_circle:")
  local fields = {
    {title = "Job", value = ev.job .. (ev.script ~= ev.job and (" (" .. ev.script .. ")") or ""), short = true},
    {title = "Severity", value = ev.severity, short = true},
    {title = "Host", value = tostring(ev.host), short = true},
    {title = "Run", value = tostring(ev.run_id), short = true},
  }
  if ev.event == "failure" then
    fields[#fields + 1] = {title = "Error", value = tostring(ev.error), short = false}
    if ev.hint then fields[#fields + 1] = {title = "Hint", value = ev.hint, short = false} end
    fields[#fields + 1] = {title = "Escalation", value = ev.escalation, short = false}
    fields[#fields + 1] = {title = "Failing since", value = tostring(ev.failing_since), short = true}
    fields[#fields + 1] = {title = "Consecutive failures", value = tostring(ev.consecutive_failures), short = true}
    if ev.runbook then fields[#fields + 1] = {title = "Runbook", value = "clubio-dr run " .. ev.runbook, short = false} end
  end
  return {text = icon .. " " .. ev.summary,
          attachments = {{color = ev.event == "recovery" and "good" or "danger", fields = fields,
                          footer = "clubio-dr " .. tostring(ev.version), fallback = ev.summary}}}
end

local function post(target, url, body)
  local http = require "http"
  local last
  for attempt = 1, 2 do
    local ok, r = pcall(http.request, {method = "POST", url = url, body = body, timeout = 10,
                                       headers = {["Content-Type"] = "application/json"}})
    if ok and r.status >= 200 and r.status < 300 then return {target = target, status = r.status} end
    if ok then
      last = {target = target, status = r.status, error = "HTTP " .. r.status}
      if r.status < 500 and r.status ~= 429 then break end
    else
      last = {target = target, error = tostring(r)}
      if not (clubio.is_error(r) and r.retryable) then break end
    end
    if attempt == 1 then require("time").sleep(1) end
  end
  return last
end

-- Sends an event to every configured webhook; returns one result per target. Failures are
-- logged (without the URL) and returned, never raised: an alert problem must not hide the job's.
function M.send(ev)
  local secret = require "secret"
  local out = {}
  local targets = {
    {"slack", "SLACK_WEBHOOK_URL", M.slack_payload},
    {"webhook", "ALERT_WEBHOOK_URL", function(e) return e end},
  }
  for _, t in ipairs(targets) do
    local v = os.getenv(t[2])
    if v and v ~= "" then
      local res = post(t[1], secret.env(t[2]), cjson.encode(t[3](ev)))
      if res.error then
        log.warn("alert not delivered", {target = t[1], via = t[2], error = res.error, job = ev.job})
      else
        log.info("alert sent", {target = t[1], event = ev.event, severity = ev.severity, job = ev.job})
      end
      out[#out + 1] = res
    end
  end
  return out
end

function M.on_run(job, rec, history)
  local ev = M.event(job, rec, history)
  if not ev then return nil end
  return M.send(ev), ev
end

return M
