-- clubio.dr, the failover steps: the provided list (dr.steps()), each with its plan, dry-run check
-- and hint, which site files may extend, reorder or replace.
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local log, time, clubio = require "log", require "time", require "clubio"
  local scalar = require("clubio.dr_util").scalar

  -- ---- the failover steps ------------------------------------------------------------------

  -- Replication must be set up for a failover to mean anything (else the DR database holds no
  -- copy of the primary); no subscription is fine after a failover (its record is on the DR side).
  function M.check_replicating(ctx, s)
    if s.subscribed then return end
    local d <close> = M.connect_dr(ctx)
    if M.failover_record(ctx, d) then return end
    clubio.fail{message = "replication is not set up: no subscription " .. ctx.cfg.subscription .. " on the DR database " ..
                          M.display(ctx.dr_url) .. ", and no failover recorded there",
                code = "dr.not_replicating", class = "config",
                hint = "run `clubio-dr run dr-setup` first (check DR_DATABASE and DR_SUBSCRIPTION if it is set up)"}
  end

  -- The DR database for plans: its URL when known, else what the configuration names.
  function M.describe_dr(ctx)
    if ctx.dr_url then return M.display(ctx.dr_url) end
    local c = ctx.cfg or {}
    if c.target_url then return M.display(c.target_url) end
    return string.format("%s (project %s, branch %s)", c.database or "the sole database", tostring(c.dr_project or "?"),
                         c.dr_branch or "default")
  end

  -- The provided steps, in order. Each is a fresh table: a site file may change them freely.
  function M.steps()
    return {
      {name = "check-dr-health", rehearse = true,
       plan = "the DR project, branch and endpoint are ready through the Neon API, and its database answers",
       hint = "the DR project is not usable: check the Neon console/status for the DR project; nothing was changed",
       dry = function(ctx) return M.steps()[1].run(ctx) end,  -- read-only: a dry run checks it too
       run = function(ctx)
         local out = {}
         if ctx.dr then
           local p = ctx.dr:project()
           local b = ctx.cfg.dr_branch and ctx.dr:branch(ctx.cfg.dr_branch)
           if not b then for _, x in ipairs(ctx.dr:branches()) do if x.default then b = x end end end
           if not b then clubio.fail{message = "DR branch " .. tostring(ctx.cfg.dr_branch) .. " not found in project " .. p.id,
                                     code = "dr.health", class = "config"} end
           if b.current_state ~= "ready" then
             clubio.fail{message = "DR branch " .. b.name .. " is " .. tostring(b.current_state) .. ", not ready",
                         code = "dr.health", retryable = true}
           end
           for _, e in ipairs(ctx.dr:endpoints(b.id)) do
             if e.disabled then clubio.fail{message = "DR endpoint " .. e.id .. " is disabled", code = "dr.health"} end
             out.endpoint, out.endpoint_state = e.id, e.current_state
           end
           out.project, out.branch, out.region = p.id, b.name, p.region_id
         end
         local c <close> = M.connect_dr(ctx)
         local r = c:query("SELECT pg_is_in_recovery() AS standby, current_setting('server_version') AS version")[1]
         if r.standby == "t" then
           clubio.fail{message = "the DR database is a read-only standby", code = "dr.health",
                       hint = "point DR_BRANCH at a read-write branch of the DR project"}
         end
         out.server_version = r.version
         return out
       end},
      {name = "measure-lag",
       plan = "replication lag now: bytes behind on the primary's slot, seconds since the DR side last heard from it (the RPO at failover)",
       rehearse = true,
       hint = "set up replication first (`clubio-dr run dr-setup`); without it the DR database holds no copy of the primary",
       dry = function(ctx)
         local s = M.status(ctx, {heartbeat = false})
         log.info("replication lag now", {bytes = s.lag_bytes, seconds_since_contact = s.seconds_since_contact,
                                          primary_reachable = s.primary_reachable, subscribed = s.subscribed})
         M.check_replicating(ctx, s)
         return s
       end,
       run = function(ctx)
         local s = M.status(ctx, {heartbeat = false})
         ctx.primary_reachable = s.primary_reachable
         M.check_replicating(ctx, s)
         if not s.subscribed then log.warn("no subscription " .. ctx.cfg.subscription .. " on the DR side: failed over already") end
         log.info("replication lag", {bytes = s.lag_bytes, seconds_since_contact = s.seconds_since_contact,
                                      primary_reachable = s.primary_reachable})
         return s
       end},
      {name = "fence-primary", rehearse = true,
       plan = "when the primary answers: make its database read-only and end its client sessions, so no write is lost",
       hint = "if the primary cannot be fenced, stop the application's writers by hand, then re-run with --from stop-replication",
       run = function(ctx)
         local pconn = M.try_primary(ctx)
         if not pconn then
           log.warn("the primary does not answer: not fenced (writes it accepted after the last replicated one are lost)")
           return {fenced = false, reason = "unreachable"}
         end
         local db = scalar(pconn, "SELECT current_database() AS d")
         -- READ WRITE: fencing again an already fenced database
         pconn:query("BEGIN READ WRITE; ALTER DATABASE " .. M.ident(db) .. " SET default_transaction_read_only = on; COMMIT")
         local n = pconn:query([[SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                               WHERE datname = current_database() AND pid <> pg_backend_pid()
                                 AND backend_type = 'client backend']], nil, {typed = true})[1].n
         pconn:close()
         ctx.fenced = db
         return {fenced = true, database = db, sessions_ended = n,
                 undo = M.unfence_sql(db)}
       end},
      {name = "stop-replication", rehearse = true,
       plan = "wait for the DR side to apply everything the primary committed (when it answers), then disable and drop the subscription and the primary's slot",
       hint = "the subscription may still exist: `clubio-dr run dr-setup --status` shows it; re-run with --from stop-replication",
       run = function(ctx)
         local dconn <close> = M.connect_dr(ctx)
         local pconn = M.try_primary(ctx)
         local out = {}
         local sub = dconn:query("SELECT subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = " .. M.THIS_DB, {ctx.cfg.subscription})[1]
         if pconn and sub and sub.subenabled == "t" then
           local ok, secs = pcall(M.heartbeat_lag, pconn, dconn, ctx.cfg.drain_timeout)
           if ok then out.drained, out.drain_seconds = true, secs
           elseif ctx.cfg.drain_timeout > 0 then error(secs, 0) end
         end
         -- exact: the primary is fenced (read-only by default, whoever fenced it) and everything it
         -- committed was applied here; then the DR side's changes from now on are all the failback needs
         local fenced = pconn and scalar(pconn, "SELECT current_setting('default_transaction_read_only') AS ro") == "on"
         local d = M.drop_subscription(ctx, dconn, pconn)
         for k, v in pairs(d) do out[k] = v end
         if pconn then pconn:close() end
         out.stopped_at = time.iso(time.now())
         -- a replica is fenced (dr-setup and the failback leave it read-only by default, so a stray
         -- write cannot break replication): from here on it is the database the application uses
         out.dr_unfenced = M.set_fence(dconn, false)
         if sub or not M.failover_record(ctx, dconn) then
           local rec = M.capture_dr_writes(ctx, dconn, {
             run = ctx.job and ctx.job.run_id, primary = M.display(ctx.primary_url), lag = ctx.results["measure-lag"],
             exact = out.drained == true and fenced == true,
             why = not pconn and "the primary did not answer at the failover"
                   or (not fenced and "the primary was not fenced") or (not out.drained and "the DR side was not drained") or nil})
           out.failback = {slot = rec.slot, exact = rec.exact, why = rec.why}
         end
         return out
       end},
      {name = "sync-sequences", rehearse = true,
       plan = "advance every sequence on the DR side past the primary's last value (when it answers) and the table's max",
       hint = "fix the error above and re-run with --from sync-sequences (it is idempotent)",
       run = function(ctx)
         local dconn <close> = M.connect_dr(ctx)
         local pconn = M.try_primary(ctx)
         local gap = pconn and 0 or ctx.cfg.sequence_gap
         local seqs = M.sync_sequences(dconn, pconn, gap)
         if pconn then pconn:close() end
         return {gap = gap, sequences = seqs}
       end},
      {name = "verify-writes", rehearse = true,
       plan = "connect to the DR database and write a heartbeat (a transaction rolled back)",
       hint = "the DR database does not take writes: check default_transaction_read_only and the role's rights",
       run = function(ctx)
         local out = {}
         do
           -- the replica's fence goes with replication (stop-replication lifts it); a site that checks
           -- writes before replication stops sees it still on, and the check writes through it
           local tool <close> = M.connect_dr(ctx)
           local sub = tool:query("SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = " .. M.THIS_DB, {ctx.cfg.subscription})[1]
           if not sub then out.unfenced = M.set_fence(tool, false) or nil else out.fenced_until_replication_stops = true end
         end
         local dconn <close> = M.connect_dr(ctx, {as_app = true})
         local t0 = time.monotonic()
         dconn:query(string.format([[BEGIN%s; CREATE TABLE IF NOT EXISTS %s (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), note text);
         INSERT INTO %s (id, at, note) VALUES (2, now(), 'failover write check')
         ON CONFLICT (id) DO UPDATE SET at = excluded.at, note = excluded.note; ROLLBACK]],
           out.fenced_until_replication_stops and " READ WRITE" or "", M.HEARTBEAT, M.HEARTBEAT))
         local ro = scalar(dconn, "SELECT current_setting('transaction_read_only') AS ro")
         if ro == "on" and not out.fenced_until_replication_stops then
           clubio.fail{message = "the DR database is read-only", code = "dr.verify"}
         end
         out.writes, out.seconds = true, time.monotonic() - t0
         return out
       end},
      {name = "update-app-target", rehearse = true,
       plan = function(ctx)
         return "point the application at the DR database " .. M.describe_dr(ctx) .. " through " ..
                (ctx.cfg.app_target or "nothing (DR_APP_TARGET is not set: env-file:PATH or ssm:NAME)")
       end,
       hint = "update the application's DATABASE_URL by hand (the DR connection string is in the Neon console), then re-run with --from update-routing",
       run = function(ctx) return M.update_app_target(ctx, ctx.dr_url) end},
      {name = "update-routing",
       plan = function(ctx)
         local c = ctx.cfg
         if not (c.route53_zone and c.route53_record and c.route53_value) then
           return "point traffic at the DR region: not configured (DR_ROUTE53_ZONE_ID, DR_ROUTE53_RECORD, DR_ROUTE53_VALUE)"
         end
         return string.format("Route53 UPSERT %s %s -> %s in zone %s", c.route53_record, c.route53_type, c.route53_value, c.route53_zone)
       end,
       hint = "update DNS or the load balancer by hand, then re-run with --from notify",
       run = function(ctx) return M.update_routing(ctx) end},
      {name = "notify", rehearse = true,
       plan = "log the outcome and post it to DR_WEBHOOK_URL when set",
       run = function(ctx)
         local lag = ctx.results["measure-lag"] or {}
         return M.notify(ctx, (ctx.rehearsal and "clubio-dr: DR test rehearsal failed over to a temporary copy in the DR project "
                               or "clubio-dr: failed over to the DR project ") .. tostring(ctx.cfg.dr_project),
                         {dr = M.display(ctx.dr_url), lag_bytes = lag.lag_bytes,
                          seconds_since_contact = lag.seconds_since_contact,
                          seconds = time.now() - ctx.started})
       end},
    }
  end
end
