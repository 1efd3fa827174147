-- Fail back from the DR project to the recovered primary after a failover, losing no DR write
--
-- clubio-dr run dr-failback [--dry-run] [--yes] [--json] [--full] [--from STEP] [--steps]
-- clubio-dr run dr-failback --status [--json]
--
-- Steps (scripts/lib/clubio/dr_failback.lua; a `dr-failback-site.lua` in a CLUBIO_DR_PATH folder
-- may extend, reorder or replace them as dr-site.lua does the failover's — see docs/dr.md):
-- check-primary, safety-copy (a branch of the primary), replicate-back (DR -> primary by logical
-- replication: only the changes since the failover when the failover was exact, else a full copy),
-- wait-catch-up, fence-dr, drain (a heartbeat after the fence reaches the primary; every table is
-- compared), sync-sequences, re-establish-replication (primary -> DR, no copy), unfence-primary,
-- verify-writes, update-app-target, update-routing (DR_ROUTE53_PRIMARY_VALUE), unfence-dr,
-- clear-failover-record, notify.
--
-- --full copies every table from the DR side (the primary's copies are truncated, after the
-- safety branch) even when the changes alone would do. --status shows the failover record and
-- the failback's replication. Asks once before it starts (or --yes); a failing step stops the
-- run and says what to do next (re-run with --from STEP).
--
-- Environment: as dr-failover (NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, NEON_API_KEY,
-- DR_DATABASE, DR_APP_TARGET, ...), plus DR_ROUTE53_PRIMARY_VALUE.
local clubio, log, cjson, time = require "clubio", require "log", require "cjson", require "time"
local job, dr, fb = require "clubio.job", require "clubio.dr", require "clubio.dr_failback"

local args = require("clubio.args").parse(arg, {options = {["--from"] = "STEP", ["--steps"] = true, ["--full"] = true,
                                                           ["--status"] = true}})
local from, list_only, full, status_only = args["--from"], args["--steps"], args["--full"], args["--status"]

local steps, sites = dr.load_site(fb.steps(), nil, "dr-failback-site.lua")
if list_only then
  local okc, cfg = pcall(dr.config)
  local lctx = {cfg = okc and cfg or {}, results = {}}
  for _, s in ipairs(steps) do
    if type(s.plan) == "function" then
      local okp, p = pcall(s.plan, lctx)
      s.plan = okp and p or "(depends on the configuration)"
    end
  end
  if clubio.flags.json then
    local out = {}
    for _, s in ipairs(steps) do out[#out + 1] = {name = s.name, plan = s.plan} end
    io.stdout:write(cjson.encode({ok = true, steps = out, site_files = sites}), "\n")
  else
    for n, s in ipairs(steps) do print(string.format("%2d. %-25s %s", n, s.name, s.plan or "")) end
    if #sites > 0 then print("site files: " .. table.concat(sites, ", ")) end
  end
  return 0
end

local ctx = dr.context()
if status_only then
  local s = fb.status(ctx)
  if clubio.flags.json then
    io.stdout:write(log.redact(cjson.encode({ok = true, status = s})), "\n")
  else
    local r = s.record
    print(r and string.format("failover recorded at %s (%s; failback slot %s%s)", tostring(r.at),
                              r.exact and "exact: only the changes since will be sent" or ("not exact: a full copy — " .. tostring(r.why)),
                              r.slot_present and "present" or "MISSING", r.slot_lost and ", WAL lost" or "")
            or "no failover recorded on the DR database")
    if s.subscription then
      print(string.format("failback replication: %s, %s, %d tables still copying", s.subscription.enabled and "enabled" or "DISABLED",
                          s.subscription.running and "running" or "NOT running", s.subscription.syncing or 0))
    end
    if s.slot and s.slot.lag_bytes then print("primary behind the DR side by " .. job.bytes(s.slot.lag_bytes)) end
  end
  return 0
end

ctx.failback_full = full
local J = job.new("dr-failback")
ctx.job = J
if not J.dry_run then
  J:confirm("failback", string.format("Fail back from the DR database %s to the primary %s? The DR side is fenced once the " ..
                                      "primary has caught up, then the application is pointed back at the primary%s",
                                      dr.display(ctx.dr_url), ctx.primary_url and dr.display(ctx.primary_url) or "(not answering)",
                                      full and " (--full: the primary's copies are truncated and copied from the DR side)" or ""))
end
log.info("failback", {primary = ctx.primary_url and dr.display(ctx.primary_url) or "unreachable",
                      dr = dr.display(ctx.dr_url), steps = #steps, site_files = table.concat(sites, ",")})
local t0 = time.monotonic()
dr.run_steps(J, ctx, steps, {from = from, what = "failback"})
local secs = time.monotonic() - t0
if J.dry_run then return J:finish({steps = #steps}, "dry run: nothing was changed; every check passed") end
local c = ctx.results["check-primary"] or {}
return J:finish({seconds = secs, primary = dr.display(ctx.primary_url), dr = dr.display(ctx.dr_url), mode = c.mode,
                 results = ctx.results},
                string.format("failed back to %s in %.1f s (%s); replication to %s runs again", dr.display(ctx.primary_url), secs,
                              c.mode == "full" and "full copy" or (c.mode and "only the changes since the failover" or "resumed"),
                              dr.display(ctx.dr_url)))
