-- clubio.dr, replication: the tables, the schema copied to the DR side, the publication and the
-- subscription, and their initial sync (dr-setup), and the checks of the replica's state.
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local log, time, proc, clubio = require "log", require "time", require "proc", require "clubio"
  local scalar = require("clubio.dr_util").scalar

  local USER_TABLES = [[
SELECT format('%I.%I', n.nspname, c.relname) AS qname, n.nspname || '.' || c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 2]]

  -- Permanent user tables: unlogged and temporary tables write no WAL, so logical replication
  -- can never carry them (FOR ALL TABLES skips them, FOR TABLE refuses them).
  function M.user_tables(conn)
    local out = {}
    for _, r in ipairs(conn:query(USER_TABLES)) do out[#out + 1] = r.name end
    return out
  end

  -- The unlogged and temporary tables of the database (temporary ones: any session's), which
  -- replication leaves out: {{name, kind = "unlogged"|"temporary"}}.
  function M.unreplicable_tables(conn)
    local out = {}
    for _, r in ipairs(conn:query([[
      SELECT CASE WHEN c.relpersistence = 't' THEN c.relname ELSE n.nspname || '.' || c.relname END AS name,
             CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'temporary' END AS kind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.relpersistence IN ('u', 't') AND n.nspname <> 'information_schema'
        AND (c.relpersistence = 't' OR n.nspname !~ '^pg_')
      ORDER BY 2, 1]])) do
      out[#out + 1] = {name = r.name, kind = r.kind}
    end
    return out
  end

  -- A note naming the tables replication leaves out (nil when there are none).
  function M.left_out_note(list)
    if not list or #list == 0 then return nil end
    local names = {}
    for _, t in ipairs(list) do names[#names + 1] = t.name .. " (" .. t.kind .. ")" end
    return "not replicated: " .. table.concat(names, ", ") ..
           " — unlogged and temporary tables write no WAL, so logical replication cannot carry them; " ..
           "after a failover they are empty on the DR side (ALTER TABLE ... SET LOGGED to replicate one)"
  end

  -- The tables to replicate: cfg.tables (plus the heartbeat) or every permanent user table of the
  -- primary. Second result: the tables left out (unlogged, temporary), named for a note.
  function M.wanted_tables(ctx, pconn)
    local skipped = M.unreplicable_tables(pconn)
    if ctx.cfg.tables then
      local unrep = {}
      for _, t in ipairs(skipped) do unrep[t.name] = t end
      local list, out_skipped = {}, {}
      for _, t in ipairs(ctx.cfg.tables) do
        local name = select(2, M.qualify(t))
        if unrep[name] then out_skipped[#out_skipped + 1] = unrep[name] else list[#list + 1] = name end
      end
      list[#list + 1] = M.HEARTBEAT
      return list, out_skipped
    end
    return M.user_tables(pconn), skipped
  end

  local function columns(conn, name)
    local rows = conn:query([[SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
                            AND NOT attisdropped AND attgenerated = '' ORDER BY attname]], {(M.qualify(name))})
    local out = {}
    for _, r in ipairs(rows) do out[#out + 1] = r.attname end
    return table.concat(out, ",")
  end

  local function run_child(argv, e, stdin, what)
    local r = proc.run{argv = argv, env = e, stdin = stdin}
    if r.status ~= 0 then
      local err = (r.stderr or ""):gsub("%s+$", "")
      local last = err:match("ERROR:%s*([^\n]*)") or err:match("([^\n]*)$") or ""
      clubio.fail{message = what .. " failed (status " .. r.status .. "): " .. log.redact(last),
                  code = "dr.schema", hint = "fix the error above; nothing was committed on the DR side (one transaction)"}
    end
    return r.stdout
  end

  -- Copies the schema of `tables` (all of them when `all`) from the primary to the DR database:
  -- pg_dump --schema-only on the primary piped into psql --single-transaction on the DR side,
  -- both with the password in PGPASSWORD (never argv).
  -- back = true: from the DR database to the primary (failback), into a session that may write
  -- while the primary is fenced (read-only by default).
  function M.copy_schema(ctx, tables, all, back)
    local argv = {"pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--no-publications",
                  "--no-subscriptions", "--no-password"}
    if not all then
      for _, t in ipairs(tables) do argv[#argv + 1] = "--table=" .. select(1, M.qualify(t)) end
    end
    local from, to = ctx.primary_url, ctx.dr_url
    if back then from, to = ctx.dr_url, ctx.primary_url end
    local ddl = run_child(argv, M.libpq_env(from), nil, "pg_dump --schema-only of the " .. (back and "DR" or "primary") .. " database")
    if not all then
      -- pg_dump --table leaves out the tables' schemas: made first when missing
      local schemas, seen = {}, {}
      for _, t in ipairs(tables) do
        local sch = t:match("^([^.]+)%.")
        if sch and not seen[sch] then seen[sch] = true; schemas[#schemas + 1] = "CREATE SCHEMA IF NOT EXISTS " .. M.ident(sch) .. ";" end
      end
      ddl = table.concat(schemas, "\n") .. "\n" .. ddl
    end
    local e = M.libpq_env(to)
    e.PGOPTIONS = ((e.PGOPTIONS and (e.PGOPTIONS .. " ")) or "") .. "-c default_transaction_read_only=off"
    run_child({"psql", "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"},
              e, ddl, "applying the schema on the " .. (back and "primary" or "DR") .. " database")
    return #ddl
  end

  local function missing_identity(conn, tables)
    local rows = conn:query([[
    SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND (n.nspname || '.' || c.relname) = ANY($1::text[])
      AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
           (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))]],
      {M.text_array(tables)})
    local out = {}
    for _, r in ipairs(rows) do out[#out + 1] = r.name end
    return out
  end

  local function slot_info(pconn, slot)
    local r = pconn:query("SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1", {slot})
    return r[1]
  end

  -- Waits until the subscription's tables are all in state 'r' (ready). Returns the seconds waited.
  function M.wait_sync(ctx, dconn, timeout)
    local t0 = time.monotonic()
    local last_log = 0
    while true do
      local r = dconn:query([[SELECT count(*) FILTER (WHERE sr.srsubstate <> 'r') AS pending, count(*) AS total
                            FROM pg_subscription s JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
                            WHERE s.subname = $1 AND s.subdbid = ]] .. M.THIS_DB, {ctx.cfg.subscription}, {typed = true})[1]
      if r.pending == 0 then return time.monotonic() - t0, r.total end
      local waited = time.monotonic() - t0
      if waited > (timeout or ctx.cfg.sync_timeout) then
        clubio.fail{message = string.format("initial sync of subscription %s not finished after %d s (%d of %d tables pending)",
                                            ctx.cfg.subscription, math.floor(waited), r.pending, r.total),
                    code = "dr.sync_timeout", retryable = true,
                    hint = "large tables take time: re-run `clubio-dr run dr-setup` (idempotent) to keep waiting, " ..
                           "or raise DR_SYNC_TIMEOUT; the DR server log says why a table sync fails"}
      end
      if waited - last_log >= 10 then
        log.info("waiting for the initial sync", {pending = r.pending, tables = r.total})
        last_log = waited
      end
      time.sleep(0.3)
    end
  end

  -- Sets up (or checks) replication; idempotent. opts.resync: truncate the DR copies of the tables
  -- and copy them again (destructive on the DR side: callers confirm first).
  function M.setup(ctx, opts)
    opts = opts or {}
    local cfg = ctx.cfg
    local out = {publication = cfg.publication, subscription = cfg.subscription,
                 primary = M.display(ctx.primary_url), dr = M.display(ctx.dr_url)}
    local pconn, perr = M.try_primary(ctx)
    if not pconn then
      clubio.fail{message = "cannot reach the primary database: " .. perr, code = "dr.primary_unreachable",
                  hint = "dr-setup needs the primary; check NEON_PROJECT_ID_PRIMARY, DR_DATABASE and the Neon status"}
    end
    if opts.fenced_ok then
      -- re-establishing replication during a failback: both sides are fenced (read-only by default)
      pconn:query("SET default_transaction_read_only = off")
    elseif scalar(pconn, "SELECT current_setting('default_transaction_read_only') AS ro") == "on" then
      clubio.fail{message = "the primary database " .. M.display(ctx.primary_url) .. " is read-only (fenced by a failover?)",
                  code = "dr.primary_fenced", class = "config",
                  hint = "after a failover, fail back first (`clubio-dr run dr-failback`); to take writes again without it, in psql on that database: " ..
                         M.unfence_sql(M.parse_url(ctx.primary_url).database or "DATABASE")}
    end
    local dconn <close> = M.connect_dr(ctx)
    -- the DR database is fenced while it is a replica (below): this session writes all the same
    dconn:query("SET default_transaction_read_only = off")
    local record = M.failover_record(ctx, dconn)
    if record and not opts.fenced_ok then
      if opts.resync and not opts.discard_dr_writes then
        clubio.fail{message = "the DR database has been failed over to (at " .. tostring(record.at) ..
                              ") and may hold writes the primary does not have: --resync would truncate them",
                    code = "dr.dr_written", class = "usage",
                    hint = "fail back first (`clubio-dr run dr-failback`: the DR writes are copied to the primary); " ..
                           "to throw them away instead: dr-setup --resync --discard-dr-writes (asks, or --yes)"}
      elseif not opts.resync then
        clubio.fail{message = "the DR database has been failed over to (at " .. tostring(record.at) .. "): it is not a replica now",
                    code = "dr.failed_over", class = "usage",
                    hint = "fail back first: `clubio-dr run dr-failback` (it re-establishes replication at its end)"}
      end
    end
    pconn:query(string.format([[CREATE TABLE IF NOT EXISTS %s (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
                                                            note text)]], M.HEARTBEAT))
    local tables, skipped = M.wanted_tables(ctx, pconn)
    out.tables = tables
    out.left_out = skipped
    out.note = M.left_out_note(skipped)
    if out.note then log.warn(out.note) end
    local bad = missing_identity(pconn, tables)
    if #bad > 0 then
      clubio.fail{message = "tables without a primary key or replica identity: " .. table.concat(bad, ", "),
                  code = "dr.replica_identity", class = "config",
                  hint = "once published, UPDATE and DELETE on them would fail on the primary: add a primary key, " ..
                         "or ALTER TABLE ... REPLICA IDENTITY FULL, or leave them out with DR_TABLES"}
    end
    -- schema: everything when the DR database has none of the tables, else only the missing ones
    local have = {}
    for _, t in ipairs(M.user_tables(dconn)) do have[t] = true end
    local missing = {}
    for _, t in ipairs(tables) do if not have[t] then missing[#missing + 1] = t end end
    out.schema_copied = {}
    if #missing > 0 then
      local all = (#missing == #tables) and not cfg.tables
      log.info("copying the schema to the DR database", {tables = #missing, all = all})
      M.copy_schema(ctx, missing, all)
      out.schema_copied = missing
    end
    for _, t in ipairs(tables) do
      if have[t] and columns(pconn, t) ~= columns(dconn, t) then
        clubio.fail{message = "table " .. t .. " has different columns on the DR side",
                    code = "dr.schema_differs", class = "config",
                    hint = "apply the same migration on the DR database (logical replication does not carry DDL), then re-run"}
      end
    end
    -- publication
    local pub = pconn:query("SELECT puballtables FROM pg_publication WHERE pubname = $1", {cfg.publication})[1]
    local list = {}
    for _, t in ipairs(tables) do list[#list + 1] = (M.qualify(t)) end
    if not pub then
      pconn:query(string.format("CREATE PUBLICATION %s %s", M.ident(cfg.publication),
                                cfg.tables and ("FOR TABLE " .. table.concat(list, ", ")) or "FOR ALL TABLES"))
      out.publication_created = true
    elseif (pub.puballtables == "t") ~= (cfg.tables == nil) then
      clubio.fail{message = "publication " .. cfg.publication .. " exists on the primary with a different table set " ..
                            (pub.puballtables == "t" and "(FOR ALL TABLES)" or "(a table list)"),
                  code = "dr.publication", class = "config",
                  hint = "drop it on the primary (DROP PUBLICATION " .. cfg.publication .. ") or set DR_PUBLICATION to another name"}
    elseif cfg.tables then
      pconn:query(string.format("ALTER PUBLICATION %s SET TABLE %s", M.ident(cfg.publication), table.concat(list, ", ")))
    end
    -- subscription
    local sub = dconn:query("SELECT subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = " .. M.THIS_DB, {cfg.subscription})[1]
    if sub and opts.resync then
      M.drop_subscription(ctx, dconn, pconn)
      sub = nil
    end
    if record and opts.resync and opts.discard_dr_writes then
      -- the writes taken on the DR side since the failover are given up: so is the way back
      M.drop_failover_record(ctx, dconn)
      out.discarded_failover = record.at
    end
    if not sub then
      if opts.fenced_ok then
        -- failback: both sides hold the same rows already (checked by its drain); no copy
      elseif opts.resync then
        dconn:query("TRUNCATE " .. table.concat(list, ", "))
        out.truncated = tables
      else
        local nonempty = {}
        for _, t in ipairs(tables) do
          if scalar(dconn, "SELECT EXISTS (SELECT 1 FROM " .. (M.qualify(t)) .. ") AS e") == "t" then
            nonempty[#nonempty + 1] = t
          end
        end
        if #nonempty > 0 then
          clubio.fail{message = "the DR copies of " .. table.concat(nonempty, ", ") .. " already hold rows",
                      code = "dr.target_not_empty", class = "usage",
                      hint = "an initial copy would collide with them: re-run with --resync (truncates the DR copies and " ..
                             "copies them again; asks first, or --yes) — after a failover, fail back first"}
        end
      end
      local slot = slot_info(pconn, cfg.subscription)
      if slot then
        if slot.active == "t" then
          clubio.fail{message = "replication slot " .. cfg.subscription .. " is in use on the primary",
                      code = "dr.slot_in_use", hint = "another subscriber uses this name: set DR_SUBSCRIPTION to another name"}
        end
        log.warn("dropping the stale replication slot left on the primary", {slot = cfg.subscription})
        pconn:query("SELECT pg_drop_replication_slot($1)", {cfg.subscription})
      end
      -- a failing statement is logged by the server with its text, the password included: not
      -- this one, where the role may change the setting (superusers; elsewhere it stays as it is)
      local quiet = pcall(dconn.query, dconn, "SET log_min_error_statement = panic")
      dconn:query(string.format("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (slot_name = %s, copy_data = %s)",
                                M.ident(cfg.subscription), M.literal(M.conninfo(ctx.primary_url)),
                                M.ident(cfg.publication), M.literal(cfg.subscription), opts.fenced_ok and "false" or "true"))
      if quiet then dconn:query("RESET log_min_error_statement") end
      out.subscription_created = true
    else
      if sub.subenabled ~= "t" then
        dconn:query(string.format("ALTER SUBSCRIPTION %s ENABLE", M.ident(cfg.subscription)))
        out.subscription_enabled = true
      end
      dconn:query(string.format("ALTER SUBSCRIPTION %s REFRESH PUBLICATION", M.ident(cfg.subscription)))
    end
    out.sync_seconds, out.tables_synced = M.wait_sync(ctx, dconn, opts.sync_timeout)
    -- a replica takes no writes: one would collide with the primary's next rows and stop the apply
    -- worker (replication broken until someone removes it); the failover lifts the fence
    out.dr_fenced = true
    M.set_fence(dconn, true)
    pconn:close()
    return out
  end

  -- Fences (read-only by default) or un-fences the connection's database; true when it changed.
  -- Existing sessions keep their setting: callers end them when that matters.
  function M.set_fence(conn, on)
    local r = conn:query([[SELECT current_database() AS db, EXISTS (SELECT 1 FROM pg_db_role_setting s
                           JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() AND s.setrole = 0
                           AND 'default_transaction_read_only=on' = ANY(s.setconfig)) AS fenced]])[1]
    if (r.fenced == "t") == on then return false end
    conn:query("BEGIN READ WRITE")
    conn:query("ALTER DATABASE " .. M.ident(r.db) .. (on and " SET default_transaction_read_only = on" or " RESET default_transaction_read_only"))
    conn:query("COMMIT")
    return true
  end

  -- Drops the subscription on the DR side without touching the primary first (it may be gone),
  -- then the slot on the primary when it answers. Returns {dropped, slot_dropped, slot_left}.
  function M.drop_subscription(ctx, dconn, pconn)
    local cfg = ctx.cfg
    local out = {}
    local sub = dconn:query("SELECT oid, subslotname FROM pg_subscription WHERE subname = $1 AND subdbid = " .. M.THIS_DB, {cfg.subscription})[1]
    if sub then
      local applied = dconn:query("SELECT remote_lsn::text AS lsn FROM pg_replication_origin_status WHERE external_id = $1",
                                  {"pg_" .. sub.oid})[1]
      out.applied_lsn = applied and applied.lsn or nil
      local s = M.ident(cfg.subscription)
      dconn:query("ALTER SUBSCRIPTION " .. s .. " DISABLE")
      dconn:query("ALTER SUBSCRIPTION " .. s .. " SET (slot_name = NONE)")
      dconn:query("DROP SUBSCRIPTION " .. s)
      out.dropped = true
    end
    local slot = (sub and sub.subslotname) or cfg.subscription
    if pconn then
      -- the walsender exits once the DR side has disconnected; wait a little for it
      for _ = 1, 50 do
        local si = slot_info(pconn, slot)
        if not si then break end
        if si.active ~= "t" then
          pconn:query("SELECT pg_drop_replication_slot($1)", {slot})
          out.slot_dropped = slot
          break
        end
        time.sleep(0.2)
      end
      if not out.slot_dropped and slot_info(pconn, slot) then out.slot_left = slot end
    else
      out.slot_left = slot
    end
    if out.slot_left then
      log.warn("the replication slot stays on the primary and retains WAL: drop it when the primary is back",
               {slot = slot, sql = "SELECT pg_drop_replication_slot('" .. slot .. "')"})
    end
    return out
  end
end
