-- clubio.dr, the state of replication: what a branch restore leaves behind, the failover record
-- on the DR side, lag and the heartbeat, and the sequences copied at failover.
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local log, time, clubio, cjson = require "log", require "time", require "clubio", require "cjson"
  local scalar = require("clubio.dr_util").scalar

  -- ---- after a branch restore ------------------------------------------------------------------

  -- Neon's branch restore removes the restored branch's logical replication slots (the new data
  -- has none), so a DR replica of that branch stops for good; making another branch the default
  -- leaves the replica following the old one. restore-from-backup and data-corruption call this
  -- after such a change: opts.branch (the branch restored or made default), opts.promoted (made
  -- the default), opts.planned (a restore the caller tells the operator to make next). Returns {affected, message, command}; never raises — the restore's own outcome
  -- must not depend on it.
  M.RESYNC_COMMAND = "clubio-dr run dr-setup --resync --yes"
  -- The change archive (archive-changes) after a branch restore: its slot lives on the restored
  -- branch too. nil when no change archive is kept here (no segments under its prefix); else
  -- {affected, command, message}. A restart of archive-changes makes a new slot and takes a new
  -- base export from the slot's snapshot, so the archive is exact again from that base on.
  local function changes_after_restore(opts)
    local ok, res = pcall(function()
      local lib = require "clubio.changes"
      local cfg = lib.config()
      if #lib.list_segments(require("clubio.objects").client(), cfg) == 0 then return nil end
      local cmd = "clubio-dr run archive-changes   (or restart its service: it makes a new slot and takes a new base)"
      if opts.planned then
        return {affected = true, command = cmd,
                message = string.format("the restore also removes the change archive's slot %s: afterwards restart the archiver: %s",
                                        cfg.slot, cmd)}
      end
      if lib.slot_for_export(cfg.url) then
        return {affected = false, message = "the change archive's slot " .. cfg.slot .. " is still there: not affected"}
      end
      return {affected = true, command = cmd,
              message = string.format("the change archive's slot %s is gone (a branch restore removes slots): restart the archiver; " ..
                                      "until its new base is in S3, restore-from-s3 --to cannot reach past the restore: %s", cfg.slot, cmd)}
    end)
    if ok then return res end
    return nil -- no change archive configured here (no bucket, no database): nothing to say
  end

  function M.after_branch_restore(opts)
    opts = opts or {}
    local res = M.dr_after_branch_restore(opts)
    local ch = changes_after_restore(opts)
    if ch then
      res.changes = ch
      if ch.affected then
        if res.affected == false then
          res = {affected = true, command = ch.command, message = ch.message, changes = ch, dr = res}
        else
          res.message = res.message .. "; " .. ch.message
        end
      end
    end
    return res
  end

  function M.dr_after_branch_restore(opts)
    opts = opts or {}
    local generic = {affected = nil, command = M.RESYNC_COMMAND,
                     message = "a Neon branch restore removes the branch's logical replication slots: whatever replicated from " ..
                               "it (clubio-dr's DR replica, a change archive) must be set up again; for the DR replica: " .. M.RESYNC_COMMAND}
    local ok, res = pcall(function()
      local okc, cfg = pcall(M.config)
      if not okc then return generic end  -- no DR pair configured here
      if cfg.primary_branch and opts.branch and cfg.primary_branch ~= opts.branch and not opts.promoted then
        return {affected = false, message = "the DR replica follows branch " .. cfg.primary_branch .. ", not " .. opts.branch .. ": not affected"}
      end
      local ctx = M.context(cfg)
      local s = M.status(ctx, {heartbeat = false})
      if not s.subscribed then return {affected = false, message = "no DR replication is set up: nothing to re-establish"} end
      local cmd = M.RESYNC_COMMAND
      if opts.promoted then
        if cfg.primary_branch and cfg.primary_branch ~= opts.branch then cmd = "DR_PRIMARY_BRANCH=" .. opts.branch .. " " .. cmd end
        return {affected = true, command = cmd,
                message = string.format("the default branch is now %s: the DR replica (subscription %s) still follows the old one; " ..
                                        "re-establish it from %s (the DR copies are copied again): %s", opts.branch, cfg.subscription,
                                        opts.branch, cmd)}
      end
      if opts.planned then
        return {affected = true, command = cmd,
                message = string.format("restoring %s removes its replication slots (Neon): afterwards re-establish the DR replica " ..
                                        "(subscription %s; the DR copies are copied again): %s", opts.branch, cfg.subscription, cmd)}
      end
      if s.primary_reachable and s.slot_active ~= nil then
        return {affected = false, message = "the DR replication slot " .. cfg.subscription .. " is still on the primary: not affected"}
      end
      return {affected = true, command = cmd,
              message = string.format("Neon's branch restore removed the replication slot %s: the DR replica of %s is broken " ..
                                      "(and behind the restored data); re-establish it (the DR copies are copied again): %s",
                                      cfg.subscription, M.display(ctx.primary_url), cmd)}
    end)
    if not ok then
      generic.message = generic.message .. " (the DR state could not be checked: " .. log.redact(tostring(clubio.is_error(res) and res.message or res)) .. ")"
      return generic
    end
    return res
  end

  -- ---- the failover record (on the DR side) ------------------------------------------------
  --
  -- When replication stops at a failover, the DR database gets a publication (DR_FAILBACK_PUBLICATION,
  -- clubio_dr_failback) and a logical replication slot (clubio_drfb_<db>) that keeps every change
  -- taken on the DR side from then on, and the publication's comment records the failover as JSON:
  -- {at, run, primary, exact, lsn, lag, tables}. `exact` is true when the primary was fenced and
  -- drained (the DR side then held exactly the primary's rows when the slot was made): the
  -- failback can send the primary only what changed since. The record lives in the DR database so
  -- it survives the loss of the machine that ran the failover; dr-setup --resync refuses to
  -- truncate a DR side that has one, and the failback removes it at its end.

  function M.failover_record(ctx, dconn)
    local r = dconn:query([[SELECT obj_description(oid, 'pg_publication') AS note FROM pg_publication WHERE pubname = $1]],
                          {ctx.cfg.failback_publication})[1]
    if not r then return nil end
    local ok, rec = pcall(cjson.decode, r.note or "")
    if not ok or type(rec) ~= "table" then rec = {at = "unknown", exact = false} end
    local slot = dconn:query([[SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()]],
                             {ctx.cfg.failback_slot})[1]
    rec.slot_present = slot ~= nil
    rec.slot_lost = slot ~= nil and slot.wal_status == "lost"
    return rec
  end

  function M.write_failover_record(ctx, dconn, rec)
    local keep = {}
    for k, v in pairs(rec) do if k ~= "slot_present" and k ~= "slot_lost" then keep[k] = v end end
    dconn:query(string.format("COMMENT ON PUBLICATION %s IS %s", M.ident(ctx.cfg.failback_publication),
                              M.literal(cjson.encode(keep))))
  end

  -- At the failover, once the DR side no longer applies the primary's changes and before it takes
  -- any write: the publication and slot that keep the DR side's changes for the failback. When the
  -- slot cannot be made (wal_level is not logical on the DR project: enable logical replication
  -- there too), the record says so and the failback copies everything.
  function M.capture_dr_writes(ctx, dconn, info)
    local cfg = ctx.cfg
    local rec = M.failover_record(ctx, dconn)
    if rec then return rec end
    local list = {}
    if cfg.tables then
      for _, t in ipairs(M.user_tables(dconn)) do
        for _, w in ipairs(cfg.tables) do if select(2, M.qualify(w)) == t then list[#list + 1] = (M.qualify(t)) end end
      end
      list[#list + 1] = (M.qualify(M.HEARTBEAT))
    end
    dconn:query("BEGIN READ WRITE")
    dconn:query(string.format("CREATE PUBLICATION %s %s", M.ident(cfg.failback_publication),
                              cfg.tables and ("FOR TABLE " .. table.concat(list, ", ")) or "FOR ALL TABLES"))
    dconn:query("COMMIT")
    rec = {at = time.iso(time.now()), run = info.run, primary = info.primary, database = M.parse_url(ctx.dr_url).database,
           exact = info.exact == true, why = info.why, lag = info.lag}
    local ok, r = pcall(dconn.query, dconn, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text AS s", {cfg.failback_slot})
    if ok then
      rec.slot = cfg.failback_slot
      rec.lsn = (r[1].s or ""):match(",([^)]+)%)")
    else
      rec.exact = false
      rec.why = "no slot on the DR side: " .. (clubio.is_error(r) and r.message or tostring(r))
      log.warn("the DR side cannot keep its changes for the failback (a full copy will be needed)", {error = rec.why,
               hint = "enable logical replication on the DR project as on the primary"})
    end
    M.write_failover_record(ctx, dconn, rec)
    return rec
  end

  -- Removes the record: the DR side's failback slot (when no one uses it) and the publication.
  function M.drop_failover_record(ctx, dconn)
    local slot = dconn:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {ctx.cfg.failback_slot})[1]
    if slot then
      if slot.active == "t" then
        clubio.fail{message = "the failback slot " .. ctx.cfg.failback_slot .. " is in use on the DR side", code = "dr.slot_in_use",
                    hint = "a failback subscription on the primary still reads it: drop it there first (dr-failback does)"}
      end
      dconn:query("SELECT pg_drop_replication_slot($1)", {ctx.cfg.failback_slot})
    end
    dconn:query("BEGIN READ WRITE")
    dconn:query("DROP PUBLICATION IF EXISTS " .. M.ident(ctx.cfg.failback_publication))
    dconn:query("COMMIT")
  end

  -- ---- lag ---------------------------------------------------------------------------------

  -- Replication lag. Bytes: the primary's current WAL position minus the slot's confirmed flush.
  -- Seconds: a heartbeat row written on the primary and waited for on the DR side (end to end),
  -- when opts.heartbeat ~= false and the primary answers; plus the subscription's last contact.
  function M.status(ctx, opts)
    opts = opts or {}
    local cfg = ctx.cfg
    local out = {subscription = cfg.subscription, publication = cfg.publication,
                 primary = M.display(ctx.primary_url), dr = M.display(ctx.dr_url)}
    local dconn <close> = M.connect_dr(ctx)
    local sub = dconn:query([[SELECT s.subenabled AS enabled,
        (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid) AS tables,
        (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid AND r.srsubstate <> 'r') AS syncing,
        st.pid IS NOT NULL AS running,
        to_char(st.last_msg_send_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS last_contact,
        extract(epoch FROM now() - st.last_msg_send_time)::float8 AS seconds_since_contact,
        st.latest_end_lsn::text AS latest_end_lsn
      FROM pg_subscription s LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
      WHERE s.subname = $1 AND s.subdbid = ]] .. M.THIS_DB, {cfg.subscription}, {typed = true})[1]
    out.subscribed = sub ~= nil
    if sub then
      out.enabled, out.running, out.tables, out.syncing = sub.enabled, sub.running, sub.tables, sub.syncing
      out.last_contact, out.seconds_since_contact, out.latest_end_lsn = sub.last_contact, sub.seconds_since_contact, sub.latest_end_lsn
    end
    local pconn, perr = M.try_primary(ctx)
    out.primary_reachable = pconn ~= nil
    if not pconn then
      out.primary_error = perr
      return out
    end
    local slot = pconn:query([[SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
                                    confirmed_flush_lsn::text AS confirmed_flush_lsn
                             FROM pg_replication_slots WHERE slot_name = $1]], {cfg.subscription}, {typed = true})[1]
    if slot then
      out.slot_active, out.lag_bytes, out.confirmed_flush_lsn = slot.active, slot.lag_bytes, slot.confirmed_flush_lsn
    end
    local rep = pconn:query([[SELECT state, extract(epoch FROM replay_lag)::float8 AS replay_lag
                            FROM pg_stat_replication WHERE application_name = $1]], {cfg.subscription}, {typed = true})[1]
    if rep then out.walsender_state, out.replay_lag = rep.state, rep.replay_lag end
    if opts.heartbeat ~= false and sub and sub.enabled then
      local ok, secs = pcall(M.heartbeat_lag, pconn, dconn, opts.wait or 30)
      if ok then out.lag_seconds = secs else out.heartbeat_error = tostring(secs) end
    end
    pconn:close()
    return out
  end

  -- Writes a heartbeat on the primary and waits until it is applied on the DR side: the seconds
  -- it took (everything committed on the primary before it is then on the DR side too).
  function M.heartbeat_lag(pconn, dconn, wait)
    local note = tostring(math.random(1, 1 << 30))
    local t0 = time.monotonic()
    -- READ WRITE: a fenced primary's database defaults to read-only transactions
    pconn:query("BEGIN READ WRITE")
    pconn:query(string.format([[INSERT INTO %s (id, at, note) VALUES (1, now(), $1)
                              ON CONFLICT (id) DO UPDATE SET at = excluded.at, note = excluded.note]], M.HEARTBEAT), {note})
    pconn:query("COMMIT")
    local deadline = time.monotonic() + (wait or 30)
    while time.monotonic() < deadline do
      if scalar(dconn, "SELECT note FROM " .. M.HEARTBEAT .. " WHERE id = 1") == note then return time.monotonic() - t0 end
      time.sleep(0.1)
    end
    clubio.fail{message = string.format("the heartbeat did not reach the DR side within %d s", wait or 30),
                code = "dr.lag", retryable = true,
                hint = "replication is stopped or far behind: check `clubio-dr run dr-setup --status` and the DR server log"}
  end

  -- ---- sequences ---------------------------------------------------------------------------

  local SEQUENCES = [[
SELECT format('%I.%I', sn.nspname, s.relname) AS seq, sn.nspname || '.' || s.relname AS name,
       CASE WHEN t.oid IS NOT NULL THEN format('%I.%I', tn.nspname, t.relname) END AS tbl,
       CASE WHEN a.attname IS NOT NULL THEN quote_ident(a.attname) END AS col,
       ps.increment_by AS inc, ps.last_value AS last, ps.max_value AS max
FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = s.relname
LEFT JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S' AND sn.nspname !~ '^pg_' AND sn.nspname <> 'information_schema'
ORDER BY 2]]

  -- Advances every sequence of the DR database past max(the primary's last_value when it answers,
  -- the column's max on the DR side), plus `gap` (room for rows the primary may have committed
  -- but not sent). Returns {[name] = {from, to, primary, table_max}}.
  function M.sync_sequences(dconn, pconn, gap)
    local primary = {}
    if pconn then
      for _, r in ipairs(pconn:query("SELECT schemaname || '.' || sequencename AS name, last_value FROM pg_sequences",
                                     nil, {typed = true})) do
        primary[r.name] = r.last_value
      end
    end
    local out = {}
    for _, s in ipairs(dconn:query(SEQUENCES, nil, {typed = true})) do
      local entry = {from = s.last, primary = primary[s.name]}
      if s.inc < 0 then
        entry.skipped = "descending sequence"
      else
        if s.tbl and s.col then entry.table_max = dconn:query(string.format("SELECT max(%s)::bigint AS m FROM %s", s.col, s.tbl),
                                                    nil, {typed = true})[1].m end
        local top = math.max(entry.primary or 0, entry.table_max or 0, s.last or 0)
        if top > 0 or entry.primary then
          local target = math.min(top + gap, s.max)
          dconn:query("SELECT setval($1::regclass, $2::bigint, true)", {s.seq, tostring(target)})
          entry.to = target
        end
      end
      out[s.name] = entry
    end
    return out
  end
end
