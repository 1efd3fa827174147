-- dr-health on the sandbox: healthy replication with its metrics textfile; then the slot removed
-- on the primary (as Neon does after ~40 h of inactivity, or a branch restore does) is detected
-- by the scheduled job and alerted through the scheduler (tests/schedule/webhook_receiver.py as
-- the alert webhook); an inactive slot is reported with the time left before Neon would remove it.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local cjson, pgdump = require "cjson", require "pgdump"

local f = F.new("health")
local slot = "clubio_dr_" .. f.db
local state, prom = f.dir .. "/state", f.dir .. "/prom"
require("proc").run{argv = {"mkdir", "-p", prom}, check = true}

local hook_port, hook_log = f.dir .. "/hook.port", f.dir .. "/hook.jsonl"
local hook_pid = F.spawn({"python3", os.getenv("CLUBIO_DR_TEST_DIR") .. "/schedule/webhook_receiver.py",
                          "--port-file", hook_port, "--log", hook_log}, {}, f.dir .. "/hook.log")
local port = F.wait_until("the webhook receiver", function()
  local fh = io.open(hook_port, "r")
  if not fh then return nil end
  local p = fh:read("l")
  fh:close()
  return p
end)
local SCHED = {CLUBIO_DR_STATE_DIR = state, CLUBIO_DR_TEXTFILE_DIR = prom, CLUBIO_DR_SCHEDULE = f.dir .. "/none.conf",
               ALERT_WEBHOOK_URL = "http://127.0.0.1:" .. port .. "/alerts/secret-token"}
local fh = assert(io.open(SCHED.CLUBIO_DR_SCHEDULE, "w"))
fh:write('return {scripts = "all", jobs = {["dr-health"] = {retries = 0}}}\n')
fh:close()

local function read(path) return T.read(path) or "" end
local function alerts()
  local out = {}
  for line in read(hook_log):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(cjson.decode(line).body) end
  return out
end

T.case("the job is scheduled hourly (its header)", function()
  local r = f:run({"schedule", "--list", "--json"}, SCHED)
  T.eq(r.status, 0, r.all)
  local found
  for _, j in ipairs(r.doc) do if j.name == "dr-health" then found = j end end
  T.ok(found ~= nil, "dr-health is a job")
  T.eq(found.schedule, "17 * * * *")
end)

T.case("healthy replication: exit 0, metrics written", function()
  T.eq(f:run{"dr-setup"}.status, 0)
  local r = f:run({"dr-health", "--json"}, SCHED)
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.result.healthy, true)
  local text = read(prom .. "/clubio_dr_replication.prom")
  T.match(text, 'clubio_dr_replication_healthy{subscription="' .. slot .. '"} 1')
  T.match(text, 'clubio_dr_replication_slot_present{subscription="' .. slot .. '"} 1')
  T.match(text, 'clubio_dr_replication_slot_active{subscription="' .. slot .. '"} 1')
  T.match(text, 'clubio_dr_replication_subscription_enabled{subscription="' .. slot .. '"} 1')
  T.match(text, "clubio_dr_replication_lag_bytes{[^}]*} %d+")
  T.match(text, "clubio_dr_replication_lag_seconds{[^}]*} [%d.]+")
  T.match(text, "clubio_dr_replication_last_contact_timestamp_seconds{[^}]*} %d+")
end)

T.case("an inactive slot: reported with the time left before Neon removes it", function()
  local d <close> = f:dr()
  d:query("SET default_transaction_read_only = off")
  d:query("ALTER SUBSCRIPTION " .. slot .. " DISABLE")
  local p <close> = f:primary()
  F.wait_until("the slot to go inactive", function()
    return p:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {slot})[1].active == "f"
  end)
  local r = f:run({"dr-health"}, SCHED)
  T.eq(r.status, 1, r.all)
  T.match(r.stderr, "the subscription " .. slot .. " is disabled")
  T.match(r.stderr, "is inactive for [%d.]+ h: Neon removes a slot inactive for about 40 h, so at the latest in [%d.]+ h")
  T.match(read(prom .. "/clubio_dr_replication.prom"), "clubio_dr_replication_slot_active{[^}]*} 0")
  T.match(read(state .. "/dr-health.json"), slot, "when it was first seen inactive is kept")
end)

T.case("a removed slot: detected by the scheduled job and alerted", function()
  -- what Neon does to an inactive slot: gone from the primary; the subscription still enabled
  local p <close> = f:primary()
  p:query("SELECT pg_drop_replication_slot($1)", {slot})
  local d <close> = f:dr()
  d:query("SET default_transaction_read_only = off")
  d:query("ALTER SUBSCRIPTION " .. slot .. " ENABLE")
  local r = f:run({"schedule", "--run", "dr-health"}, SCHED)
  T.eq(r.status, 1, r.all)
  local got = alerts()
  T.eq(#got, 1, "one alert")
  local a = got[1]
  T.eq(a.event, "failure")
  T.eq(a.job, "dr-health")
  T.eq(a.severity, "P2")
  T.match(a.error, "replication slot " .. slot .. " is missing on the primary")
  T.match(a.escalation, "escalates to P1")
  T.no_match(r.all, "secret%-token", "the webhook URL is a secret")
  T.match(read(prom .. "/clubio_dr_replication.prom"), 'clubio_dr_replication_slot_present{subscription="' .. slot .. '"} 0')
  T.match(read(prom .. "/clubio_dr_replication.prom"), 'clubio_dr_replication_healthy{subscription="' .. slot .. '"} 0')
end)

T.case("re-established with dr-setup --resync: healthy again, and the scheduler sends the recovery", function()
  local r = f:run{"dr-setup", "--resync", "--yes"}
  T.eq(r.status, 0, r.all)
  r = f:run({"schedule", "--run", "dr-health"}, SCHED)
  T.eq(r.status, 0, r.all)
  local got = alerts()
  T.eq(got[#got].event, "recovery")
end)

require("proc").run{argv = {"kill", tostring(hook_pid)}}
f:cleanup()
return T.finish()
