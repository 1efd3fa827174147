-- Prometheus metrics of the scheduled jobs, from the run records: the text exposition format
-- (# HELP / # TYPE, one sample per line), printed by `clubio-dr metrics` and written as a
-- node-exporter textfile (CLUBIO_DR_TEXTFILE_DIR/clubio_dr.prom, atomically: a temporary file
-- then rename, so the collector never reads half a file).
--
--   local metrics = require "clubio.metrics"
--   io.write(metrics.render(require("clubio.schedule").read_runs(), time.now()))
--   metrics.write_textfile(runs)          --> the path written
local M = {}

local function esc(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function num(v)
  if v == math.huge then return "+Inf" end
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
  local t = string.format("%.3f", v):gsub("0+$", ""):gsub("%.$", "")
  return t
end

local DEFS = {
  {"clubio_dr_job_last_success_timestamp_seconds", "gauge", "Unix time the job last finished successfully."},
  {"clubio_dr_job_last_run_timestamp_seconds", "gauge", "Unix time the job's last run finished."},
  {"clubio_dr_job_last_run_success", "gauge", "1 if the job's last run succeeded, else 0."},
  {"clubio_dr_job_last_duration_seconds", "gauge", "Duration of the job's last run, retries included."},
  {"clubio_dr_job_last_bytes", "gauge", "Bytes the job's last successful run reported (archive size, for exports)."},
  {"clubio_dr_job_consecutive_failures", "gauge", "Failed runs of the job since its last success."},
  {"clubio_dr_job_runs_total", "counter", "Recorded runs of the job, by outcome."},
  {"clubio_dr_verification_ok", "gauge", "1 if the verification job's last run passed, else 0."},
  {"clubio_dr_verification_last_timestamp_seconds", "gauge", "Unix time the verification job last ran."},
}

-- The exposition text for a list of run records (oldest first).
function M.render(runs, now)
  local jobs, order = {}, {}
  for _, r in ipairs(runs) do
    -- a service stopped with its scheduler neither succeeded nor failed
    if r.job and r.status ~= "skipped" and r.status ~= "running" and r.status ~= "stopped" then
      local j = jobs[r.job]
      if not j then
        j = {name = r.job, counts = {}, failures = 0}
        jobs[r.job] = j
        order[#order + 1] = r.job
      end
      j.counts[r.status] = (j.counts[r.status] or 0) + 1
      j.last = r
      if r.status == "ok" then
        j.last_ok = r
        j.failures = 0
        if type(r.bytes) == "number" then j.bytes = r.bytes end
      else
        j.failures = j.failures + 1
      end
      if r.verification then j.verification = true end
    end
  end
  table.sort(order)
  local samples = {}
  for _, d in ipairs(DEFS) do samples[d[1]] = {} end
  local function add(metric, labels, v) local s = samples[metric]; s[#s + 1] = {labels, v} end
  for _, name in ipairs(order) do
    local j = jobs[name]
    local l = string.format('job="%s"', esc(name))
    if j.last_ok then add("clubio_dr_job_last_success_timestamp_seconds", l, j.last_ok.finished_at or 0) end
    add("clubio_dr_job_last_run_timestamp_seconds", l, j.last.finished_at or j.last.started_at or 0)
    add("clubio_dr_job_last_run_success", l, j.last.status == "ok" and 1 or 0)
    if type(j.last.seconds) == "number" then add("clubio_dr_job_last_duration_seconds", l, j.last.seconds) end
    if j.bytes then add("clubio_dr_job_last_bytes", l, j.bytes) end
    add("clubio_dr_job_consecutive_failures", l, j.failures)
    local statuses = {}
    for s in pairs(j.counts) do statuses[#statuses + 1] = s end
    table.sort(statuses)
    for _, s in ipairs(statuses) do
      add("clubio_dr_job_runs_total", string.format('%s,status="%s"', l, esc(s)), j.counts[s])
    end
    if j.verification then
      add("clubio_dr_verification_ok", l, j.last.status == "ok" and 1 or 0)
      add("clubio_dr_verification_last_timestamp_seconds", l, j.last.finished_at or 0)
    end
  end
  local out = {}
  for _, d in ipairs(DEFS) do
    if #samples[d[1]] > 0 then
      out[#out + 1] = "# HELP " .. d[1] .. " " .. d[3]
      out[#out + 1] = "# TYPE " .. d[1] .. " " .. d[2]
      for _, s in ipairs(samples[d[1]]) do out[#out + 1] = string.format("%s{%s} %s", d[1], s[1], num(s[2])) end
    end
  end
  out[#out + 1] = "# HELP clubio_dr_metrics_generated_timestamp_seconds Unix time these metrics were computed."
  out[#out + 1] = "# TYPE clubio_dr_metrics_generated_timestamp_seconds gauge"
  out[#out + 1] = "clubio_dr_metrics_generated_timestamp_seconds " .. num(math.floor(now or os.time()))
  return table.concat(out, "\n") .. "\n"
end

-- Writes DIR/clubio_dr.prom (DIR: the argument, else CLUBIO_DR_TEXTFILE_DIR) atomically.
function M.write_textfile(runs, dir)
  dir = dir or os.getenv("CLUBIO_DR_TEXTFILE_DIR")
  if not dir or dir == "" then
    require("clubio").fail{message = "no textfile folder", class = "config", code = "config.missing_env",
                           hint = "export CLUBIO_DR_TEXTFILE_DIR=/var/lib/node_exporter/textfile_collector"}
  end
  local path = dir .. "/clubio_dr.prom"
  require("clubio.schedule").write_atomic(path, M.render(runs, require("time").now()))
  return path
end

-- A list of gauge lines with one label set, and g(name, help, value) adding one gauge (a
-- boolean as 1 or 0; nil: left out rather than given a made-up value).
local function gauges(labels)
  local out = {}
  return out, function(name, help, v)
    if v == nil then return end
    if type(v) == "boolean" then v = v and 1 or 0 end
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " gauge"
    out[#out + 1] = string.format("%s{%s} %s", name, labels, num(v))
  end
end

-- The DR replication's gauges (scripts/dr-health.lua writes them to clubio_dr_replication.prom
-- on every run): `report` is its result ({status = clubio.dr.status(...), slot_present,
-- slot_inactive_seconds, failed_over, healthy}). A gauge with no value (primary down, not set up)
-- is left out rather than given a made-up one.
function M.render_replication(subscription, report, now)
  local s = report.status or {}
  local l = string.format('subscription="%s"', esc(subscription))
  local out, g = gauges(l)
  g("clubio_dr_replication_healthy", "1 if the last dr-health check found no problem, else 0.", report.healthy == true)
  g("clubio_dr_replication_failed_over", "1 if the DR side has been failed over to (no replication until the failback).",
    report.failed_over ~= nil)
  g("clubio_dr_replication_subscription_enabled", "1 if the subscription exists and is enabled on the DR side.",
    s.subscribed == true and s.enabled == true)
  g("clubio_dr_replication_slot_present", "1 if the replication slot exists on the primary.", report.slot_present)
  if report.slot_present then
    g("clubio_dr_replication_slot_active", "1 if a walsender reads the replication slot.", s.slot_active == true)
  end
  g("clubio_dr_replication_slot_inactive_seconds", "Seconds the slot has been inactive (Neon removes it after about 40 h).",
    report.slot_inactive_seconds or report.failback_slot_inactive_seconds)
  g("clubio_dr_replication_lag_bytes", "Bytes of WAL the DR side has not confirmed (primary's WAL position minus the slot's).", s.lag_bytes)
  g("clubio_dr_replication_lag_seconds", "Seconds for a heartbeat written on the primary to be applied on the DR side.", s.lag_seconds)
  if s.seconds_since_contact then
    g("clubio_dr_replication_last_contact_timestamp_seconds", "Unix time the DR side last heard from the primary.",
      math.floor((now or os.time()) - s.seconds_since_contact))
  end
  g("clubio_dr_replication_checked_timestamp_seconds", "Unix time of the last dr-health check.", math.floor(now or os.time()))
  return table.concat(out, "\n") .. "\n"
end

-- The change archive's gauges (archive-changes writes them to clubio_dr_changes.prom after each
-- segment, at least once a minute while idle, and on every --status): `st` is
-- clubio.changes.status(), `healthy` whether --status's limits hold. A gauge with no value (no
-- segment yet, slot missing) is left out rather than given a made-up one.
function M.render_changes(st, healthy, now)
  local l = string.format('slot="%s"', esc(st.slot))
  local out, g = gauges(l)
  g("clubio_dr_changes_healthy", "1 if the change archive is within its limits (archive-changes --status passes), else 0.", healthy)
  g("clubio_dr_changes_slot_present", "1 if the change archive's replication slot exists.", st.exists)
  if st.exists then
    g("clubio_dr_changes_slot_active", "1 if an archiver reads the slot.", st.active == true)
  end
  g("clubio_dr_changes_slot_inactive_seconds", "Seconds the slot has been inactive (Neon removes it after about 40 h).", st.inactive_seconds)
  g("clubio_dr_changes_lag_bytes", "Bytes of WAL the archive has not confirmed (server's WAL position minus the slot's).", st.lag_bytes)
  g("clubio_dr_changes_lag_seconds", "Seconds the archive is behind (0 when nothing waits).", st.lag_seconds)
  g("clubio_dr_changes_retained_wal_bytes", "Bytes of WAL the server keeps for the slot.", st.retained_bytes)
  g("clubio_dr_changes_rpo_seconds", "Seconds of commits that would be lost now (since the last archived commit while commits wait).",
    st.rpo_seconds)
  g("clubio_dr_changes_last_segment_age_seconds", "Seconds since the last segment was written.", st.last_segment_age_seconds)
  if st.last_segment then
    g("clubio_dr_changes_last_segment_seq", "Sequence number of the last archived segment.", st.last_segment.seq)
  end
  g("clubio_dr_changes_checked_timestamp_seconds", "Unix time of this check.", math.floor(now or os.time()))
  return table.concat(out, "\n") .. "\n"
end

return M
