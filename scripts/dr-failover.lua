-- Fail over from the primary Neon project to the DR project (steps customisable in Lua)
--
-- clubio-dr run dr-failover [--dry-run] [--yes] [--json] [--from STEP] [--steps]
--
-- Steps (scripts/lib/clubio/dr.lua; a site file found through CLUBIO_DR_PATH may extend,
-- reorder or replace them — see docs/dr.md): check-dr-health, measure-lag (the RPO at
-- failover), fence-primary (when it still answers), stop-replication, sync-sequences,
-- verify-writes, update-app-target (DR_APP_TARGET), update-routing (Route53), notify.
--
-- --dry-run prints the plan and changes nothing; --steps lists the steps after the site file's
-- changes. Asks once before it starts (or --yes). Every step goes to the journal with its
-- timings; a failing step stops the run and says what to do next (re-run with --from STEP).
--
-- Environment: NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, NEON_API_KEY; DR_DATABASE, DR_ROLE,
-- DR_BRANCH, DR_PRIMARY_BRANCH, DR_APP_TARGET, DR_ROUTE53_*, DR_WEBHOOK_URL, CLUBIO_DR_PATH.
local clubio, log, cjson, time = require "clubio", require "log", require "cjson", require "time"
local job, dr = require "clubio.job", require "clubio.dr"

local args = require("clubio.args").parse(arg, {options = {["--from"] = "STEP", ["--steps"] = true}})
local from, list_only = args["--from"], args["--steps"]

local steps, sites = dr.load_site(dr.steps())
if list_only then
  -- plans may depend on the configuration (functions of ctx): shown without connecting anywhere
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
    for n, s in ipairs(steps) do print(string.format("%2d. %-20s %s", n, s.name, s.plan or "")) end
    if #sites > 0 then print("site files: " .. table.concat(sites, ", ")) end
  end
  return 0
end

local ctx = dr.context()
local J = job.new("dr-failover")
ctx.job = J
if not J.dry_run then
  local q = string.format("Fail over to the DR project %s (database %s)? The application will be pointed at it and " ..
                          "replication from the primary %s stopped", tostring(ctx.cfg.dr_project), dr.display(ctx.dr_url),
                          ctx.primary_url and dr.display(ctx.primary_url) or "(not answering)")
  J:confirm("failover", q)
end
log.info("failover", {primary = ctx.primary_url and dr.display(ctx.primary_url) or "unreachable",
                      dr = dr.display(ctx.dr_url), steps = #steps, site_files = table.concat(sites, ",")})
local t0 = time.monotonic()
-- resuming after measure-lag: the lag it measured is in the failover record on the DR side
-- (written when replication stopped); before that point, the lag is measured now, at the resume
local resumed_lag
if from and not J.dry_run and (dr.index(steps, from) or 0) > (dr.index(steps, "measure-lag") or math.huge) then
  local okr, rec = pcall(function()
    local d <close> = dr.connect_dr(ctx)
    return dr.failover_record(ctx, d)
  end)
  if okr and rec and type(rec.lag) == "table" then
    resumed_lag = rec.lag
  else
    local oks, s = pcall(dr.status, ctx, {heartbeat = false})
    if oks then resumed_lag = s end
  end
  if resumed_lag then ctx.results["measure-lag"] = resumed_lag end
end
dr.run_steps(J, ctx, steps, {from = from})
local secs = time.monotonic() - t0
if J.dry_run then return J:finish({steps = #steps}, "dry run: nothing was changed; every check passed") end
local lag = ctx.results["measure-lag"] or {}
return J:finish({seconds = secs, dr = dr.display(ctx.dr_url), lag_bytes = lag.lag_bytes,
                 seconds_since_contact = lag.seconds_since_contact, primary_reachable = lag.primary_reachable,
                 results = ctx.results},
                string.format("failed over to %s in %.1f s (lag at failover: %s; primary %s)", dr.display(ctx.dr_url), secs,
                              lag.lag_bytes and job.bytes(lag.lag_bytes) or
                                (lag.seconds_since_contact and string.format("%.1f s since the last contact", lag.seconds_since_contact)) or
                                (lag.primary_reachable == false and "unknown (the primary did not answer)") or "unknown",
                              lag.primary_reachable and "fenced" or "not answering"))
