-- Keep the DR project in sync with the primary by logical replication; --status shows the lag
--
-- clubio-dr run dr-setup [--resync [--discard-dr-writes]] [--yes] [--json]   set up (or check) replication; idempotent
-- clubio-dr run dr-setup --status [--json]             replication lag (bytes and seconds)
--
-- Setup: the schema is copied first (pg_dump --schema-only | psql, passwords in PGPASSWORD, never
-- argv), a heartbeat table public.clubio_dr_heartbeat is created on the primary, then a
-- publication on the primary (FOR ALL TABLES, or DR_TABLES) and a subscription on the DR side,
-- and it waits for the initial copy. Re-running it checks everything, refreshes the
-- publication (new tables get copied) and re-enables a disabled subscription. --resync truncates
-- the DR copies and copies them again (destructive on the DR side: asks, or --yes); after a
-- failover (recorded on the DR side) it refuses, since the DR side may hold writes the primary
-- lacks: fail back with dr-failback, or add --discard-dr-writes to throw them away. Unlogged and
-- temporary tables are named and left out (logical replication cannot carry them). The DR
-- database is left fenced (read-only by default) while it is a replica; dr-failover lifts it.
--
-- The subscription's connection string holds the primary's password: PostgreSQL keeps it in
-- pg_subscription.subconninfo on the DR side (readable by superusers / the project owner only).
-- It is never logged or printed.
--
-- Environment: NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, NEON_API_KEY (required);
-- DR_DATABASE, DR_ROLE, DR_PRIMARY_BRANCH, DR_BRANCH (default: the sole database/role, the
-- default branch), DR_TABLES (comma list; default all tables), DR_PUBLICATION (clubio_dr),
-- DR_SUBSCRIPTION (clubio_dr_<database>), DR_SYNC_TIMEOUT (3600 s). See docs/dr.md.
local clubio, log, cjson = require "clubio", require "log", require "cjson"
local job, dr = require "clubio.job", require "clubio.dr"

local args = require("clubio.args").parse(arg, {options = {["--status"] = true, ["--resync"] = true,
                                                           ["--discard-dr-writes"] = true}})
local status_only, resync, discard = args["--status"] == true, args["--resync"] == true, args["--discard-dr-writes"] == true
if discard and not resync then
  clubio.fail{message = "--discard-dr-writes goes with --resync", class = "usage",
              hint = "clubio-dr run dr-setup --resync --discard-dr-writes (after a failover, `dr-failback` keeps those writes)"}
end

local ctx = dr.context()

local function fmt_status(s)
  local lines = {
    string.format("replication %s -> %s (publication %s, subscription %s)", s.primary, s.dr, s.publication, s.subscription),
  }
  if not s.subscribed then
    lines[#lines + 1] = "  not set up: no subscription on the DR side (run `clubio-dr run dr-setup`)"
  else
    lines[#lines + 1] = string.format("  subscription: %s, %s; %d tables, %d still copying",
      s.enabled and "enabled" or "DISABLED", s.running and "apply worker running" or "apply worker NOT running",
      s.tables or 0, s.syncing or 0)
  end
  if not s.primary_reachable then
    lines[#lines + 1] = "  primary: does not answer (" .. tostring(s.primary_error) .. ")"
  else
    lines[#lines + 1] = string.format("  lag: %s behind (slot %s)%s", s.lag_bytes and job.bytes(s.lag_bytes) or "?",
      s.slot_active == nil and "missing" or (s.slot_active and "active" or "inactive"),
      s.lag_seconds and string.format(", heartbeat applied in %.2f s", s.lag_seconds) or "")
  end
  if s.last_contact then
    lines[#lines + 1] = string.format("  last message from the primary: %s (%.1f s ago)", s.last_contact, s.seconds_since_contact or 0)
  end
  return table.concat(lines, "\n")
end

if status_only then
  local s = dr.status(ctx)
  if clubio.flags.json then
    io.stdout:write(log.redact(cjson.encode({ok = true, status = s})), "\n")
  else
    io.stdout:write(log.redact(fmt_status(s)), "\n")
  end
  if not s.subscribed then return 1 end
  return 0
end

local J = job.new("dr-setup")
if resync and not J.dry_run then
  if not clubio.confirm(string.format("Truncate the replicated tables in the DR database %s and copy them again from %s?%s",
                                      dr.display(ctx.dr_url), dr.display(ctx.primary_url),
                                      discard and " The writes the DR side took since its failover are LOST (--discard-dr-writes)" or "")) then
    clubio.fail{message = "dr-setup --resync: declined", class = "declined", code = "declined.step",
                hint = "nothing was changed; re-run with --yes to confirm"}
  end
end
local r = J:step("replicate", {
  plan = string.format("schema, publication %s on %s, subscription %s on %s, initial copy%s", ctx.cfg.publication,
                       dr.display(ctx.primary_url), ctx.cfg.subscription, dr.display(ctx.dr_url),
                       resync and " (after truncating the DR copies)" or ""),
  hint = "dr-setup is idempotent: fix the cause and run it again",
}, function() return dr.setup(ctx, {resync = resync, discard_dr_writes = discard}) end)
if J.dry_run then return J:finish(nil, "dry run: nothing was changed") end
local s = J:step("measure lag", {plan = "bytes behind on the primary's slot, heartbeat round trip"},
                 function() return dr.status(ctx) end)
r.status = s
return J:finish(r, string.format("replicating %d tables from %s to %s%s\n%s%s", #r.tables, r.primary, r.dr,
                                 #r.schema_copied > 0 and (" (schema copied for " .. #r.schema_copied .. ")") or "",
                                 fmt_status(s), r.note and ("\nnote: " .. r.note) or ""))
