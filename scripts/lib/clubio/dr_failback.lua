-- The failback: back from the DR project to the recovered primary after a failover, as steps in
-- the same engine as the failover (clubio.dr.run_steps; a site file `dr-failback-site.lua` in a
-- CLUBIO_DR_PATH folder may change them the same way). scripts/dr-failback.lua runs them.
--
--   local fb = require "clubio.dr_failback"
--   local steps = dr.load_site(fb.steps(), nil, "dr-failback-site.lua")
--   dr.run_steps(J, ctx, steps, {what = "failback"})
--
-- No write taken on the DR side is lost: the DR side's changes reach the primary by logical
-- replication (DR -> primary), the DR database is fenced, and only once everything it committed
-- has been applied on the primary (a heartbeat written on the DR side after the fence, seen on
-- the primary) does the application move back.
--
-- What is copied: when the failover recorded itself as exact (the primary was fenced and
-- drained, so the DR side held exactly its rows when the DR side's slot was made), the DR
-- side's slot still exists, and the primary is still fenced (nothing written there since), only
-- the changes since the failover are sent (a subscription on the slot, copy_data = false).
-- Otherwise (the primary did not answer at the failover and may hold writes the DR side never
-- got, the slot is gone — Neon removes inactive slots —, or --full) the primary's copies are
-- truncated and copied again from the DR side, after a safety branch of the primary.
local log, time, clubio = require "log", require "time", require "clubio"
local dr = require "clubio.dr"

local M = {}

local function need_primary(ctx)
  local p, err = dr.try_primary(ctx)
  if not p then
    clubio.fail{message = "the primary database does not answer: " .. tostring(err), code = "dr.primary_unreachable",
                hint = "a failback needs the recovered primary; check NEON_PROJECT_ID_PRIMARY, DR_DATABASE and the Neon status"}
  end
  -- the primary is fenced (read-only by default) until the failback un-fences it: this session writes
  p:query("SET default_transaction_read_only = off")
  return p
end

local function read_write(conn) conn:query("SET default_transaction_read_only = off") return conn end

local function sub_exists(conn, name)
  return conn:query("SELECT subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = " .. dr.THIS_DB, {name})[1]
end

-- The tables the failback carries: those of the DR side's failback publication.
local function published(dconn, pub)
  local out = {}
  for _, r in ipairs(dconn:query([[SELECT schemaname || '.' || tablename AS name FROM pg_publication_tables
                                   WHERE pubname = $1 ORDER BY 1]], {pub})) do
    out[#out + 1] = r.name
  end
  return out
end

-- Drops the failback subscription on the primary (keeping the DR side's slot: it is dropped
-- with the record at the end) and waits for the DR side's walsender to let go of the slot.
local function drop_back_subscription(ctx, pconn, dconn)
  local name = ctx.cfg.failback_slot
  if not sub_exists(pconn, name) then return false end
  local s = dr.ident(name)
  pconn:query("ALTER SUBSCRIPTION " .. s .. " DISABLE")
  pconn:query("ALTER SUBSCRIPTION " .. s .. " SET (slot_name = NONE)")
  pconn:query("DROP SUBSCRIPTION " .. s)
  for _ = 1, 100 do
    local r = dconn:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {name})[1]
    if not r or r.active ~= "t" then break end
    time.sleep(0.1)
  end
  return true
end

function M.steps()
  return {
    {name = "check-primary", rehearse = true,
     plan = "the recovered primary answers and takes the failback's writes; the failover record on the DR side says " ..
            "whether only the changes since the failover can be sent",
     hint = "nothing was changed; bring the primary back (or point DR_PRIMARY_URL / NEON_PROJECT_ID_PRIMARY at the recovered one)",
     dry = function(ctx) return M.steps()[1].run(ctx) end,
     run = function(ctx)
       local p <close> = need_primary(ctx)
       if dr.scalar(p, "SELECT pg_is_in_recovery()::text AS s") == "true" then
         clubio.fail{message = "the primary database is a read-only standby", code = "dr.failback",
                     hint = "point DR_PRIMARY_BRANCH at a read-write branch of the primary project"}
       end
       local d <close> = dr.connect_dr(ctx)
       local rec = dr.failover_record(ctx, d)
       local back = sub_exists(p, ctx.cfg.failback_slot)
       if not rec and not back then
         clubio.fail{message = "no failover recorded on the DR database " .. dr.display(ctx.dr_url) .. ": nothing to fail back",
                     code = "dr.no_failover", class = "usage",
                     hint = "`clubio-dr run dr-setup --status` shows the replication state; a failover made by an older " ..
                            "clubio-dr has no record: copy the DR side to the primary with `dr-failback --full`"}
       end
       rec = rec or {}
       local fenced = dr.scalar(p, [[SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                                     WHERE d.datname = current_database() AND s.setrole = 0
                                       AND 'default_transaction_read_only=on' = ANY(s.setconfig))::text AS f]]) == "true"
       local mode, why = "changes", nil
       if back then mode, why = "resume", "a failback subscription exists already (an earlier run stopped): it is kept"
       elseif ctx.failback_full then mode, why = "full", "--full"
       elseif not rec.exact then mode, why = "full", "the failover was not exact: " .. tostring(rec.why or "unknown")
       elseif not rec.slot_present then mode, why = "full", "the DR side's failback slot is gone (Neon removes inactive slots after a while)"
       elseif rec.slot_lost then mode, why = "full", "the DR side's failback slot lost its WAL"
       elseif not fenced then mode, why = "full", "the primary was un-fenced since the failover: it may hold writes of its own"
       end
       log.info("failback mode", {mode = mode, why = why, failover_at = rec.at})
       ctx.failback = {mode = mode, why = why, record = rec}
       return {mode = mode, why = why, failover_at = rec.at, primary_fenced = fenced}
     end},
    {name = "safety-copy", rehearse = true,
     plan = "a branch of the primary (pre-failback-YYYYMMDD-HHMMSS): the primary as it was before the failback wrote to it",
     hint = "create a backup branch of the primary by hand, then re-run with --from replicate-back",
     run = function(ctx)
       if not ctx.primary or ctx.cfg.primary_url then
         log.warn("no Neon project for the primary (DR_PRIMARY_URL): take a copy of it by hand before a full copy")
         return {skipped = true}
       end
       local name = "pre-failback-" .. time.format(time.now(), "%Y%m%d-%H%M%S")
       local b = ctx.primary:create_branch{name = name, parent = ctx.cfg.primary_branch, endpoint = false}
       return {branch = name, id = b.id, project = ctx.cfg.primary_project}
     end},
    {name = "replicate-back", rehearse = true,
     plan = "the DR side's changes since the failover to the primary by logical replication (a subscription on the primary " ..
            "reading the DR side's failback slot); a full copy (the primary's copies truncated) when that cannot be exact",
     hint = "the failback subscription on the primary is clubio_drfb_<db>; re-run with --from replicate-back (it is idempotent)",
     run = function(ctx)
       local cfg = ctx.cfg
       local p <close> = need_primary(ctx)
       local d <close> = read_write(dr.connect_dr(ctx))
       local mode = (ctx.failback or {}).mode or (ctx.failback_full and "full" or "changes")
       if sub_exists(p, cfg.failback_slot) then return {mode = "resume", subscription = cfg.failback_slot} end
       if not dr.failover_record(ctx, d) then
         dr.capture_dr_writes(ctx, d, {exact = false, why = "dr-failback --full without a failover record"})
       end
       local tables = published(d, cfg.failback_publication)
       -- tables made on the DR side since the failover: their schema first (DDL is not replicated)
       local have = {}
       for _, t in ipairs(dr.user_tables(p)) do have[t] = true end
       local missing = {}
       for _, t in ipairs(tables) do if not have[t] then missing[#missing + 1] = t end end
       if #missing > 0 then
         log.info("copying the schema of tables made on the DR side to the primary", {tables = table.concat(missing, ", ")})
         dr.copy_schema(ctx, missing, false, true)
       end
       local out = {mode = mode, tables = #tables, schema_copied = missing}
       if mode == "full" then
         -- the slot's changes are not enough: a new slot, and the whole of every table
         local slot = d:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {cfg.failback_slot})[1]
         if slot and slot.active ~= "t" then d:query("SELECT pg_drop_replication_slot($1)", {cfg.failback_slot}) end
         local list = {}
         for _, t in ipairs(tables) do list[#list + 1] = (dr.qualify(t)) end
         if #list > 0 then p:query("TRUNCATE " .. table.concat(list, ", ")) end
         out.truncated = #list
       end
       local quiet = pcall(p.query, p, "SET log_min_error_statement = panic")
       p:query(string.format("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (slot_name = %s, create_slot = %s, copy_data = %s)",
                             dr.ident(cfg.failback_slot), dr.literal(dr.conninfo(ctx.dr_url)), dr.ident(cfg.failback_publication),
                             dr.literal(cfg.failback_slot), mode == "full" and "true" or "false", mode == "full" and "true" or "false"))
       if quiet then p:query("RESET log_min_error_statement") end
       out.subscription = cfg.failback_slot
       return out
     end},
    {name = "wait-catch-up", rehearse = true,
     plan = "wait until the primary has every table copied and applies a heartbeat written on the DR side",
     hint = "replication DR -> primary is slow or stopped: the primary's server log says why; re-run with --from wait-catch-up",
     run = function(ctx)
       local p <close> = need_primary(ctx)
       local d <close> = read_write(dr.connect_dr(ctx))
       local pctx = {cfg = setmetatable({subscription = ctx.cfg.failback_slot}, {__index = ctx.cfg})}
       local synced, n = dr.wait_sync(pctx, p, ctx.cfg.sync_timeout)
       local secs = dr.heartbeat_lag(d, p, ctx.cfg.sync_timeout)
       return {sync_seconds = synced, tables = n, heartbeat_seconds = secs}
     end},
    {name = "fence-dr", rehearse = true,
     plan = "make the DR database read-only and end its client sessions: from here on nothing is committed there",
     hint = "stop the application's writers on the DR side by hand, then re-run with --from drain",
     run = function(ctx)
       local d <close> = dr.connect_dr(ctx)
       local db = dr.scalar(d, "SELECT current_database() AS d")
       d:query("BEGIN READ WRITE; ALTER DATABASE " .. dr.ident(db) .. " SET default_transaction_read_only = on; COMMIT")
       local n = d:query([[SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                           WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend']],
                         nil, {typed = true})[1].n
       return {fenced = true, database = db, sessions_ended = n, undo = dr.unfence_sql(db)}
     end},
    {name = "drain", rehearse = true,
     plan = "a heartbeat written on the fenced DR side after its last write is applied on the primary (so is everything " ..
            "before it); then the failback subscription is dropped",
     hint = "re-run with --from drain once replication DR -> primary runs (`dr-failback --status` shows it)",
     run = function(ctx)
       local p <close> = need_primary(ctx)
       local d <close> = read_write(dr.connect_dr(ctx))
       local out = {}
       if sub_exists(p, ctx.cfg.failback_slot) then
         out.drain_seconds = dr.heartbeat_lag(d, p, ctx.cfg.drain_timeout)
         out.dropped = drop_back_subscription(ctx, p, d)
       end
       -- every replicated table holds the same rows on both sides now: checked, not assumed
       local tables = published(d, ctx.cfg.failback_publication)
       local differ = {}
       for _, t in ipairs(tables) do
         local q = (dr.qualify(t))
         if p:table_digest(q).set_sha256 ~= d:table_digest(q).set_sha256 then differ[#differ + 1] = t end
       end
       if #differ > 0 then
         clubio.fail{message = "after the drain, these tables differ between the DR side and the primary: " .. table.concat(differ, ", "),
                     code = "dr.failback_differs", class = "verify",
                     hint = "nothing was switched; the DR side is fenced and holds the writes: re-run `dr-failback --full --from replicate-back`"}
       end
       out.tables_compared = #tables
       return out
     end},
    {name = "sync-sequences", rehearse = true,
     plan = "advance every sequence on the primary past the DR side's last value and the table's max",
     hint = "fix the error above and re-run with --from sync-sequences (it is idempotent)",
     run = function(ctx)
       local p <close> = need_primary(ctx)
       local d <close> = dr.connect_dr(ctx)
       return {sequences = dr.sync_sequences(p, d, 0)}
     end},
    {name = "re-establish-replication", rehearse = true,
     plan = "primary -> DR replication again, from this point (both sides hold the same rows: no copy); a new slot on the primary",
     hint = "`clubio-dr run dr-setup --status` shows the state; re-run with --from re-establish-replication",
     run = function(ctx)
       local r = dr.setup(ctx, {fenced_ok = true})
       return {subscription = r.subscription, tables = #r.tables}
     end},
    {name = "unfence-primary", rehearse = true,
     plan = "the primary takes writes again (default_transaction_read_only reset)",
     hint = "in psql on the primary database: BEGIN READ WRITE; ALTER DATABASE <db> RESET default_transaction_read_only; COMMIT;",
     run = function(ctx)
       local p <close> = need_primary(ctx)
       local db = dr.scalar(p, "SELECT current_database() AS d")
       p:query("ALTER DATABASE " .. dr.ident(db) .. " RESET default_transaction_read_only")
       return {database = db}
     end},
    {name = "verify-writes", rehearse = true,
     plan = "connect to the primary and write a heartbeat (a transaction rolled back)",
     hint = "the primary does not take writes: check default_transaction_read_only and the role's rights",
     run = function(ctx)
       local p <close> = assert(dr.try_primary(ctx))
       p:query(string.format([[BEGIN; INSERT INTO %s (id, at, note) VALUES (2, now(), 'failback write check')
         ON CONFLICT (id) DO UPDATE SET at = excluded.at, note = excluded.note; ROLLBACK]], dr.HEARTBEAT))
       return {writes = true}
     end},
    {name = "update-app-target", rehearse = true,
     plan = function(ctx)
       return "point the application back at the primary " .. (ctx.primary_url and dr.display(ctx.primary_url) or "database") ..
              " through " .. ((ctx.cfg or {}).app_target or "nothing (DR_APP_TARGET is not set)")
     end,
     hint = "point the application's DATABASE_URL at the primary by hand, then re-run with --from update-routing",
     run = function(ctx) return dr.update_app_target(ctx, ctx.primary_url) end},
    {name = "update-routing",
     plan = function(ctx)
       local c = ctx.cfg or {}
       if not (c.route53_zone and c.route53_record and c.route53_primary_value) then
         return "point traffic back at the primary region: not configured (DR_ROUTE53_ZONE_ID, DR_ROUTE53_RECORD, DR_ROUTE53_PRIMARY_VALUE)"
       end
       return string.format("Route53 UPSERT %s %s -> %s in zone %s", c.route53_record, c.route53_type, c.route53_primary_value, c.route53_zone)
     end,
     hint = "update DNS or the load balancer by hand, then re-run with --from check-replication",
     run = function(ctx)
       if not ctx.cfg.route53_primary_value then
         log.warn("no DR_ROUTE53_PRIMARY_VALUE: point traffic back at the primary by hand")
         return {skipped = true}
       end
       return dr.update_routing(ctx, ctx.cfg.route53_primary_value)
     end},
    {name = "check-replication", rehearse = true,
     plan = "a heartbeat written on the primary reaches the DR side; the DR database stays fenced (a replica takes no " ..
            "writes: a stray one would collide with the primary's rows; the next failover lifts the fence)",
     hint = "`clubio-dr run dr-setup --status` shows the replication state; the DR server log says why it stopped",
     run = function(ctx)
       local d <close> = dr.connect_dr(ctx)
       local p <close> = assert(dr.try_primary(ctx))
       return {heartbeat_seconds = dr.heartbeat_lag(p, d, ctx.cfg.drain_timeout), dr_fenced = true}
     end},
    {name = "clear-failover-record", rehearse = true,
     plan = "drop the DR side's failback slot and publication (the failover record): the failback is done",
     hint = "on the DR database: SELECT pg_drop_replication_slot('clubio_drfb_<db>'); DROP PUBLICATION clubio_dr_failback;",
     run = function(ctx)
       local d <close> = dr.connect_dr(ctx)
       dr.drop_failover_record(ctx, d)
       return {cleared = true}
     end},
    {name = "notify", rehearse = true,
     plan = "log the outcome and post it to DR_WEBHOOK_URL when set",
     run = function(ctx)
       local fb = ctx.results["check-primary"] or {}
       return dr.notify(ctx, "clubio-dr: failed back to the primary " .. (ctx.primary_url and dr.display(ctx.primary_url) or ""),
                        {mode = fb.mode, failover_at = fb.failover_at, seconds = time.now() - ctx.started})
     end},
  }
end

-- The failback's progress for --status: the record, the subscription on the primary and its lag.
function M.status(ctx)
  local out = {}
  local d <close> = dr.connect_dr(ctx)
  out.record = dr.failover_record(ctx, d)
  local p = dr.try_primary(ctx)
  if p then
    local s = p:query([[SELECT s.subenabled AS enabled, st.pid IS NOT NULL AS running,
                               (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid AND r.srsubstate <> 'r') AS syncing
                        FROM pg_subscription s LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
                        WHERE s.subname = $1 AND s.subdbid = ]] .. dr.THIS_DB, {ctx.cfg.failback_slot}, {typed = true})[1]
    out.subscription = s
    p:close()
  end
  local slot = d:query([[SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes
                         FROM pg_replication_slots WHERE slot_name = $1]], {ctx.cfg.failback_slot}, {typed = true})[1]
  out.slot = slot
  return out
end

return M
