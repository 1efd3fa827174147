-- Replication health, hourly: slot present and active, lag in bytes and seconds, subscription enabled, last contact
-- schedule: 17 * * * *
--
-- clubio-dr run dr-health [--json] [--textfile DIR]
--
-- Checks the primary -> DR replication (clubio.dr) and fails (exit 1, so the scheduler alerts,
-- P2 escalating to P1 as for every job) when:
--   - the replication slot is missing on the primary (Neon removes a slot that has been inactive
--     for about 40 hours, and a branch restore removes the branch's slots: replication is then
--     broken for good and `dr-setup --resync` must copy everything again);
--   - the slot is inactive (nothing reads it: Neon will remove it — the message says when, at
--     the latest), the subscription is disabled or its apply worker not running;
--   - the lag is over DR_HEALTH_MAX_LAG_BYTES (1 GiB) or DR_HEALTH_MAX_LAG_SECONDS (300: a
--     heartbeat written on the primary and waited for on the DR side), or the DR side last heard
--     from the primary more than DR_HEALTH_MAX_SILENCE (900) seconds ago.
-- Hourly, so the first alert comes within the hour, long before Neon's inactivity limit
-- (DR_HEALTH_SLOT_REMOVAL_HOURS, 40). After a failover (recorded on the DR side) there is no
-- replication to watch: it reports the failover and the age of the DR side's failback slot,
-- which Neon removes the same way (the failback then copies everything).
--
-- Metrics: with --textfile DIR or CLUBIO_DR_TEXTFILE_DIR, DIR/clubio_dr_replication.prom
-- (node-exporter textfile: slot present/active, lag bytes/seconds, subscription enabled, last
-- contact, seconds inactive), written atomically on every run, healthy or not.
--
-- Environment: as dr-setup (NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, NEON_API_KEY,
-- DR_DATABASE, ...; without NEON_PROJECT_ID_DR or DR_TARGET_URL there is nothing to check: exit 0); the state folder (CLUBIO_DR_STATE_DIR) keeps when a slot was first seen
-- inactive (PostgreSQL before 17 does not say).
local clubio, log, cjson, time = require "clubio", require "log", require "cjson", require "time"
local args = require("clubio.args").parse(arg, {options = {["--textfile"] = "DIR"}})
local job, dr, metrics = require "clubio.job", require "clubio.dr", require "clubio.metrics"

local function num_env(name, default)
  local v = os.getenv(name)
  if not v or v == "" then return default end
  local n = tonumber(v)
  if not n or n < 0 then
    clubio.fail{message = name .. " is not a number of seconds/bytes: " .. v, class = "config", code = "config.env",
                hint = "e.g. " .. name .. "=" .. tostring(default)}
  end
  return n
end
local LIMITS = {
  lag_bytes = num_env("DR_HEALTH_MAX_LAG_BYTES", 1 << 30),
  lag_seconds = num_env("DR_HEALTH_MAX_LAG_SECONDS", 300),
  silence = num_env("DR_HEALTH_MAX_SILENCE", 900),
  removal_hours = num_env("DR_HEALTH_SLOT_REMOVAL_HOURS", 40),
}

-- a scheduler installed without a DR pair runs this job too (scripts = "all"): nothing to check
-- is not a failure to alert on every hour
if (os.getenv("NEON_PROJECT_ID_DR") or "") == "" and (os.getenv("DR_TARGET_URL") or "") == "" then
  log.info("no DR pair configured (NEON_PROJECT_ID_DR or DR_TARGET_URL): nothing to check")
  return job.new("dr-health"):finish({configured = false}, "no DR pair configured: nothing to check")
end
local ctx = dr.context()
local J = job.new("dr-health")
local now = time.now()

-- when each slot was first seen inactive, kept across runs (pg_replication_slots.inactive_since
-- exists from PostgreSQL 17 on; before, this job's own observations are all there is)
local S = require "clubio.schedule"
local state_path = S.state_dir() .. "/dr-health.json"
local function load_state()
  local f = io.open(state_path, "r")
  if not f then return {} end
  local ok, t = pcall(cjson.decode, f:read("a"))
  f:close()
  return ok and type(t) == "table" and t or {}
end
local state = load_state()
state.inactive_since = state.inactive_since or {}

local function inactive_for(slot, row)
  if not row or row.active then
    state.inactive_since[slot] = nil
    return nil
  end
  local since = row.inactive_since_epoch or state.inactive_since[slot] or now
  state.inactive_since[slot] = since
  return now - since
end

local function slot_row(conn, slot)
  local cols = {}
  for _, r in ipairs(conn:query([[SELECT attname FROM pg_attribute WHERE attrelid = 'pg_catalog.pg_replication_slots'::regclass
                                  AND attnum > 0]])) do cols[r.attname] = true end
  return conn:query(string.format([[SELECT active, wal_status, %s AS inactive_since_epoch FROM pg_replication_slots WHERE slot_name = $1]],
                                  cols.inactive_since and "extract(epoch FROM inactive_since)::float8" or "NULL::float8"),
                    {slot}, {typed = true})[1]
end

local problems, report = {}, {limits = LIMITS}
local function problem(text) problems[#problems + 1] = text end
local function removal_text(secs)
  local left = LIMITS.removal_hours * 3600 - secs
  return string.format("inactive for %.1f h: Neon removes a slot inactive for about %d h, so at the latest in %.1f h",
                       secs / 3600, LIMITS.removal_hours, math.max(0, left) / 3600)
end

if J.dry_run then
  J:step("check replication", {plan = "slot, subscription, lag and last contact of " .. ctx.cfg.subscription}, function() end)
  return J:finish(nil, "dry run: nothing was checked")
end
local s = J:step("check replication", {plan = "slot, subscription, lag and last contact of " .. ctx.cfg.subscription}, function()
  local st = dr.status(ctx, {heartbeat = false})
  -- the heartbeat only when something can carry it: a missing or inactive slot would make it
  -- wait the whole limit for nothing
  if st.subscribed and st.enabled and st.slot_active then
    local p <close> = assert(dr.try_primary(ctx))
    local d <close> = dr.connect_dr(ctx)
    local okh, secs = pcall(dr.heartbeat_lag, p, d, LIMITS.lag_seconds)
    if okh then st.lag_seconds = secs else st.heartbeat_error = tostring(clubio.is_error(secs) and secs.message or secs) end
  end
  return st
end)
report.status = s
local failed_over
do
  local d <close> = dr.connect_dr(ctx)
  failed_over = dr.failover_record(ctx, d)
  if failed_over then
    report.failed_over = failed_over
    local row = slot_row(d, ctx.cfg.failback_slot)
    report.failback_slot_inactive_seconds = inactive_for(ctx.cfg.failback_slot, row)
  end
end

if failed_over then
  local secs = report.failback_slot_inactive_seconds
  log.warn("failed over to the DR side at " .. tostring(failed_over.at) .. ": no replication to watch until `dr-failback`",
           {failback_slot = failed_over.slot_present and (secs and removal_text(secs) or "present") or "MISSING (the failback copies everything)"})
elseif not s.subscribed then
  problem("replication is not set up: no subscription " .. ctx.cfg.subscription .. " on the DR database " .. s.dr ..
          " (run `clubio-dr run dr-setup`)")
else
  if not s.enabled then problem("the subscription " .. ctx.cfg.subscription .. " is disabled on the DR side") end
  if s.enabled and not s.running then problem("the subscription's apply worker is not running on the DR side (its server log says why)") end
  if not s.primary_reachable then
    problem("the primary does not answer: " .. tostring(s.primary_error))
  else
    local p <close> = assert(dr.try_primary(ctx))
    local row = slot_row(p, ctx.cfg.subscription)
    report.slot_present = row ~= nil
    if not row then
      problem("the replication slot " .. ctx.cfg.subscription .. " is missing on the primary (removed by Neon after inactivity, " ..
              "or by a branch restore): replication is broken; copy again with `clubio-dr run dr-setup --resync --yes`")
    else
      report.slot_inactive_seconds = inactive_for(ctx.cfg.subscription, row)
      if row.wal_status == "lost" then problem("the replication slot " .. ctx.cfg.subscription .. " lost WAL it needed (wal_status lost)") end
      if report.slot_inactive_seconds then
        problem("the replication slot " .. ctx.cfg.subscription .. " is " .. removal_text(report.slot_inactive_seconds))
      end
    end
    if s.lag_bytes and s.lag_bytes > LIMITS.lag_bytes then
      problem(string.format("the DR side is %s behind (limit %s)", job.bytes(s.lag_bytes), job.bytes(LIMITS.lag_bytes)))
    end
    if s.heartbeat_error then problem("a heartbeat did not reach the DR side within " .. LIMITS.lag_seconds .. " s") end
  end
  if s.seconds_since_contact and s.seconds_since_contact > LIMITS.silence then
    problem(string.format("the DR side last heard from the primary %.0f s ago (limit %d s)", s.seconds_since_contact, LIMITS.silence))
  end
end
report.problems = problems
report.healthy = #problems == 0

-- state and metrics whatever the outcome: they are what shows a slot drifting toward removal
require("proc").run{argv = {"mkdir", "-p", S.state_dir()}}
local okw, werr = pcall(S.write_atomic, state_path, cjson.encode(state))
if not okw then log.warn("the health state was not kept: " .. tostring(werr)) end
local dir = args["--textfile"] or os.getenv("CLUBIO_DR_TEXTFILE_DIR")
if dir and dir ~= "" then
  local path = dir .. "/clubio_dr_replication.prom"
  S.write_atomic(path, metrics.render_replication(ctx.cfg.subscription, report, now))
  report.textfile = path
end

if #problems > 0 then
  clubio.fail{message = "replication unhealthy: " .. table.concat(problems, "; "), code = "dr.unhealthy",
              hint = "`clubio-dr run dr-setup --status` shows the details; docs/dr.md, \"Replication health\""}
end
return J:finish(report, failed_over and ("failed over at " .. tostring(failed_over.at) .. "; no replication to watch")
                or string.format("replication healthy: %s behind, heartbeat applied in %s, last contact %.1f s ago",
                                 s.lag_bytes and job.bytes(s.lag_bytes) or "?",
                                 s.lag_seconds and string.format("%.2f s", s.lag_seconds) or "?", s.seconds_since_contact or -1))
