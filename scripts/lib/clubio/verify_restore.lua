-- Restore tests, part of the `verify` module (added to its table by verify_ext.lua): "a checksum
-- is not a restore test". An archive is restored into a scratch target — a fresh database on a
-- given server, or a temporary Neon branch — then every table is read back from the server and
-- compared with the archive and its manifest, optional sanity SQL runs, the restore time is
-- measured (RTO evidence), and the scratch target is always removed: on success, on failure,
-- and on cancel (SIGINT, --timeout; see verify.protect in verify_lua.c).
--
--   local r = verify.restore_test{bucket = B, key = K, server_url = secret.env("RESTORE_TEST_SERVER_URL"),
--                                 sanity = {{name = "users", sql = "SELECT count(*) > 0 FROM users"}}}
--   r.ok, r.reason, r.tables["public.users"].rows, r.seconds.download_restore, r.target.removed
return function(M)
  local function lazy(name)
    return setmetatable({}, {__index = function(_, k) return require(name)[k] end})
  end
  local clubio, time, log, pgdump = lazy("clubio"), lazy("time"), lazy("log"), lazy("pgdump")

  M.SCRATCH_DATABASE_PREFIX = "clubio_restore_test_"
  M.SCRATCH_BRANCH_PREFIX = "restore-test-"

  local OPTIONS = {bucket = 1, key = 1, file = 1, manifest = 1, client = 1, passphrase = 1, passphrase_env = 1,
                   passphrase_file = 1, server_url = 1, neon = 1, parent = 1, database = 1, role = 1,
                   expires_hours = 1, jobs = 1, sanity = 1, history = 1, history_file = 1, history_s3 = 1}

  local function usage(msg, hint)
    clubio.fail{message = msg, class = "usage", code = "usage.option", hint = hint}
  end

  local function reveal(v)
    if type(v) == "userdata" and v.reveal then return v:reveal() end
    return v
  end

  -- url with its database replaced by db (the query string is kept).
  local function with_database(url, db)
    local ok, u = pcall(require("clubio.pgurl").with_database, url, db)
    if not ok then
      usage("verify.restore_test: server_url must be a postgresql:// URL" ..
              (clubio.is_error(u) and u.message ~= "not a postgres:// connection URL" and " (" .. u.message .. ")" or ""),
            "e.g. postgresql://postgres@db.example.com:5432/postgres (password in the URL or PGPASSWORD)")
    end
    return u
  end
  M._with_database = with_database

  local function scratch_name(prefix, sep)
    return prefix .. time.format(time.now(), "%Y%m%d" .. sep .. "%H%M%S") .. sep .. M._rand_hex(3)
  end

  -- A fresh database on server_url's server. Sets state.remove before creating anything, so a
  -- cancel right after CREATE DATABASE still drops it. Returns the database's URL.
  local function database_target(o, state)
    local server_url = reveal(o.server_url)
    if type(server_url) ~= "string" then usage("verify.restore_test: server_url must be a string or a secret") end
    local name = scratch_name(M.SCRATCH_DATABASE_PREFIX, "_")
    local url = with_database(server_url, name)
    local d = require("clubio.job").describe_url(server_url)
    state.target = {kind = "database", name = name, server = d.host and (d.host .. ":" .. d.port) or d.display}
    state.remove = function()
      local admin <close> = pgdump.connect(server_url)
      -- WITH (FORCE) (PostgreSQL 13+) ends sessions a cancelled restore may have left behind
      if not pcall(admin.query, admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)") then
        admin:query("DROP DATABASE IF EXISTS " .. name)
      end
      return #admin:query("SELECT 1 AS x FROM pg_catalog.pg_database WHERE datname = $1", {name}) == 0
    end
    log.info("restore test: creating the scratch database " .. name .. " on " .. state.target.server)
    local admin <close> = pgdump.connect(server_url)
    admin:query("CREATE DATABASE " .. name)
    state.created = true
    return url, false
  end

  -- A temporary Neon branch (expires_at set, so Neon removes it even if we never get to) of
  -- `parent` (default: the default branch). The branch starts as a copy of its parent, so the
  -- restore runs with clean = true: it drops the copied objects of the branch's database first —
  -- destructive on the scratch branch only. Returns the branch database's URL.
  local function neon_target(o, state)
    local n = o.neon
    local name = scratch_name(M.SCRATCH_BRANCH_PREFIX, "-")
    local expires = time.now() + (o.expires_hours or 6) * 3600
    state.target = {kind = "neon-branch", name = name, project = n.project_id, parent = o.parent,
                    expires_at = time.iso(expires)}
    state.remove = function()
      local b = n:branch(name)
      if b then n:delete_branch(b) end
      return n:branch(name) == nil
    end
    log.info("restore test: creating the scratch neon branch " .. name .. " (expires " .. state.target.expires_at .. ")")
    local b = n:create_branch{name = name, parent = o.parent, expires_at = expires, endpoint = "read_write"}
    state.created = true
    state.target.id = b.id
    return n:connection_uri{branch = b, database = o.database, role = o.role}, true
  end

  local function sorted_keys(t)
    local k = {}
    for name in pairs(t or {}) do k[#k + 1] = name end
    table.sort(k)
    return k
  end

  -- The digests ({rows, bytes, sha256, set_sha256}) of those of `names` (schema-qualified) that
  -- exist in the database at url (db: a connection to it), read over `jobs` connections at once
  -- (pgdump.table_digests, in C), the largest first so that the connections finish together.
  -- A table the database lacks is absent from the result.
  function M.existing_table_digests(db, url, names, jobs)
    local quoted, found = {}, {}
    for _, n in ipairs(names) do quoted[#quoted + 1] = '"' .. n:gsub('[\\"]', '\\%0') .. '"' end
    for _, row in ipairs(db:query([[
        SELECT n FROM pg_catalog.unnest($1::text[]) n WHERE pg_catalog.to_regclass(n) IS NOT NULL
        ORDER BY pg_catalog.pg_table_size(pg_catalog.to_regclass(n)) DESC, n]], {"{" .. table.concat(quoted, ",") .. "}"})) do
      found[#found + 1] = row.n
    end
    return pgdump.table_digests(url, found, {jobs = jobs})
  end

  -- Reads every manifest table back from a restored database (a pgdump connection) and compares
  -- it with the archive: row counts with the manifest's, and the order-independent digest with
  -- the one the restore stream's scan computed (verify.sql_scan{row_digests = true}) or, when
  -- the stream was not hashed, the export's in the manifest (`set_sha256` per table) — a
  -- parallel restore may store rows in another order, so the ordered digest cannot be used.
  -- Returns tables ({[name] = {rows, manifest_rows, bytes, set_sha256, same_order}}), count,
  -- rows, and on the first difference the table's name and a one-line message.
  function M.compare_restored(db, manifest_tables, scan_tables)
    local tables, count, rows = {}, 0, 0
    for _, name in ipairs(sorted_keys(manifest_tables)) do
      local w, s = manifest_tables[name], scan_tables[name] or {}
      if not db:query("SELECT to_regclass($1)::text AS t", {name})[1].t then
        return tables, count, rows, name, "table " .. name .. " is in the manifest but not in the restored database"
      end
      local d = db:table_digest(name)
      tables[name] = {rows = d.rows, manifest_rows = w.rows, bytes = d.bytes, set_sha256 = d.set_sha256,
                      same_order = w.sha256 ~= nil and d.sha256 == w.sha256}
      count, rows = count + 1, rows + d.rows
      if d.rows ~= w.rows then
        return tables, count, rows, name, string.format("table %s: %d rows in the manifest, %d in the restored database",
                                                        name, w.rows, d.rows)
      end
      -- the archive's rows: as the restore stream's scan (or the restore) summed them, else as
      -- the export recorded them in the signed manifest; both when both are known
      local want = s.set_sha256 or w.set_sha256
      if not want then
        return tables, count, rows, name, "table " .. name .. ": no digest of the archive's rows to compare with"
      end
      if d.set_sha256 ~= want or (w.set_sha256 and d.set_sha256 ~= w.set_sha256) then
        return tables, count, rows, name, "table " .. name .. ": the restored rows differ from the archive's"
      end
    end
    return tables, count, rows
  end

  -- The value a sanity query returned: its only column of its first row.
  local function sanity_value(rows, check)
    local row = rows[1]
    if not row then return nil end
    local only, n = nil, 0
    for _, v in pairs(row) do only = v; n = n + 1 end
    if n > 1 then
      usage(string.format("sanity check %s: return one column, or give expect as a function(rows)", check.name))
    end
    return only
  end

  local function run_sanity(db, checks)
    local out = {}
    for i, c in ipairs(checks or {}) do
      if type(c) ~= "table" or type(c.sql) ~= "string" then usage("sanity check " .. i .. " needs sql") end
      local name = c.name or ("check " .. i)
      local e = {name = name}
      out[#out + 1] = e
      local ok, rows = pcall(db.query, db, c.sql, nil, {typed = true})
      if not ok then
        e.ok, e.error = false, tostring(rows)
        return out, e
      end
      local why
      if type(c.expect) == "function" then
        e.ok, why = c.expect(rows)
        e.ok = e.ok and true or false
      else
        local v = sanity_value(rows, {name = name})
        e.got = v
        local want = c.expect
        if want == nil then want = true end
        if type(want) == "number" then e.ok = tonumber(v) == want
        elseif type(want) == "boolean" then e.ok = (v == want) or (want and v == "t") or (not want and v == "f")
        else e.ok = v ~= nil and tostring(v) == tostring(want) end
        e.expect = want
        if not e.ok then why = string.format("got %s, expected %s", tostring(v), tostring(want)) end
      end
      if not e.ok then
        e.error = why or "the check returned false"
        return out, e
      end
    end
    return out
  end

  local function is_cancel(e)
    return clubio.is_error(e) and (e.class == "cancelled" or e.class == "timeout")
  end

  -- The test itself; returns a result (ok or a reason); raises only for cancel, usage errors and
  -- operational failures (e.g. the scratch target cannot be created).
  local function run(o, state)
    local pipe, crypto = require "pipe", require "crypto"
    local a, failed = M.open_archive(o)
    if not a then return failed end
    state.archive = a.where
    local m = a.manifest
    local function bad(reason, message, extra)
      local r = {ok = false, reason = reason, message = message}
      for k, v in pairs(extra or {}) do r[k] = v end
      return r
    end

    local t = time.monotonic()
    local url, clean
    if o.server_url then url, clean = database_target(o, state) else url, clean = neon_target(o, state) end
    state.seconds.create_target = time.monotonic() - t

    log.info("restore test: " .. a.where .. " -> " .. state.target.kind .. " " .. state.target.name)
    t = time.monotonic()
    local pass = {passphrase = o.passphrase, passphrase_env = o.passphrase_env, passphrase_file = o.passphrase_file}
    local ok, r = pcall(pipe.run, {a.source(), crypto.sha256{label = "stored"}, crypto.decrypt(pass), crypto.gunzip{},
                                   crypto.sha256{label = "plain"}, M.sql_scan_filter{label = "scan", row_digests = true},
                                   pgdump.restore{url = url, jobs = o.jobs or 2, clean = clean, label = "restore"}})
    state.seconds.download_restore = time.monotonic() - t
    if not ok then
      if is_cancel(r) then error(r, 0) end
      local reason = M._classify(r)
      if reason == "error" and clubio.is_error(r) and tostring(r.code):match("^pgdump%.") then
        -- A damaged archive often shows first as SQL the server rejects (the gzip CRC comes at
        -- the end of a member): check the archive alone to name the real cause.
        log.info("restore test: the restore failed; checking the archive without a database")
        local v = M._archive(o)
        if not v.ok then
          return bad(v.reason, v.message .. " (the restore stopped: " .. tostring(r) .. ")", {table = v.table})
        end
        return bad("restore-failed", tostring(r))
      end
      return bad(reason, tostring(r))
    end

    t = time.monotonic()
    local res = {ok = true, tables = {}, table_count = 0, rows = 0,
                 manifest = {snapshot_time = m.snapshot_time, created_at = m.created_at, tool = m.tool, source = m.source}}
    local function done(x)
      state.seconds.compare = state.seconds.compare or (time.monotonic() - t)
      for k, v in pairs(res) do if x[k] == nil then x[k] = v end end
      return x
    end
    if m.stored and m.stored.sha256 and r.stored.hex ~= m.stored.sha256 then
      return done(bad("checksum-mismatch", "the archive's SHA-256 differs from the manifest's"))
    end
    if m.plain and m.plain.sha256 and r.plain.hex ~= m.plain.sha256 then
      return done(bad("checksum-mismatch", "the decrypted dump's SHA-256 differs from the manifest's"))
    end
    if r.scan.truncated then return done(bad("truncated", "the dump ends inside a COPY block")) end
    local tname, tmsg = M.compare_tables(m.tables, r.scan.tables)
    if tname then return done(bad("table-mismatch", tmsg, {table = tname})) end

    -- read every table back from the server: rows and the order-independent digest must be the
    -- archive's (the parallel restore may have stored the rows in another order)
    local db <close> = pgdump.connect(url)
    local tables, count, rows, bad_table, bad_msg = M.compare_restored(db, m.tables, r.scan.tables)
    res.tables, res.table_count, res.rows = tables, count, rows
    if bad_table then return done(bad("table-mismatch", bad_msg, {table = bad_table})) end
    state.seconds.compare = time.monotonic() - t

    t = time.monotonic()
    local checks, failed_check = run_sanity(db, o.sanity)
    state.seconds.sanity = time.monotonic() - t
    res.sanity = checks
    if failed_check then
      return done(bad("sanity-failed", string.format("sanity check %s failed: %s", failed_check.name, failed_check.error),
                      {check = failed_check.name}))
    end
    return res
  end

  -- verify.restore_test{bucket=, key= | file=, manifest=, client=, passphrase= (a secret; default
  --   BACKUP_ENCRYPTION_KEY) | passphrase_env= | passphrase_file=,
  --   server_url= (URL or secret of a role that may CREATE DATABASE) | neon= (a neon client),
  --   parent=, database=, role=, expires_hours = 6 (neon), jobs = 2,
  --   sanity = {{name=, sql=, expect=}}, history / history_file / history_s3}
  -- -> {ok, reason, message, table, check, archive, target = {kind, name, removed, ...},
  --     tables = {[name] = {rows, manifest_rows, bytes, set_sha256, same_order}}, table_count, rows,
  --     sanity = {{name, ok, got}}, seconds = {create_target, download_restore, compare, sanity,
  --     cleanup, total}, manifest = {snapshot_time, created_at, tool, source}}
  function M.restore_test(o)
    M._check_options(o, "verify.restore_test", OPTIONS)
    if (o.server_url == nil) == (o.neon == nil) then
      usage("verify.restore_test: give server_url (a scratch database) or neon (a scratch branch)",
            "server_url = secret.env(\"RESTORE_TEST_SERVER_URL\"), or neon = neon.client{}")
    end
    if o.sanity ~= nil and type(o.sanity) ~= "table" then usage("verify.restore_test: sanity must be a list of {name, sql, expect}") end
    for i, chk in ipairs(o.sanity or {}) do
      if type(chk) ~= "table" or type(chk.sql) ~= "string" or (chk.name ~= nil and type(chk.name) ~= "string") then
        usage(string.format("verify.restore_test: sanity check %d needs sql (a string) and an optional name", i),
              "sanity = {{name = \"orders\", sql = \"SELECT count(*) FROM orders\", expect = 3000}}")
      end
    end
    if o.server_url then
      local u = reveal(o.server_url)
      if type(u) ~= "string" then usage("verify.restore_test: server_url must be a string or a secret") end
      with_database(u, "x") -- a usage error now rather than after the archive was read
    elseif type(o.neon) ~= "table" or not o.neon.create_branch then
      usage("verify.restore_test: neon must be a neon client (neon.client{...})")
    end
    if o.jobs ~= nil and (math.type(o.jobs) ~= "integer" or o.jobs < 1) then usage("verify.restore_test: jobs must be a positive integer") end
    local state = {t0 = time.monotonic(), started = time.now(), seconds = {}}
    M.protect(function() return run(o, state) end, function(body_ok, val)
      local t = time.monotonic()
      local tg = state.target
      if state.remove then
        local ok, gone = pcall(state.remove)
        tg.removed = ok and gone == true
        if not tg.removed then
          tg.remove_error = ok and "it still exists after removal" or tostring(gone)
          log.error(string.format("restore test: the scratch %s %s was not removed (%s); remove it by hand",
                                  tg.kind, tg.name, tg.remove_error))
        else
          log.info("restore test: removed the scratch " .. tg.kind .. " " .. tg.name)
        end
      end
      state.seconds.cleanup = time.monotonic() - t
      local res = body_ok and val or {ok = false, reason = clubio.is_error(val) and is_cancel(val) and val.class or "error",
                                      message = tostring(val)}
      res.archive = res.archive or state.archive
      res.target = tg
      res.seconds = state.seconds
      res.seconds.total = time.monotonic() - state.t0
      if res.ok and tg and state.created and not tg.removed then
        res.ok, res.reason = false, "cleanup-failed"
        res.message = string.format("the scratch %s %s could not be removed: %s", tg.kind, tg.name, tg.remove_error)
      end
      state.result = res
      M.record({what = "restore_test", started_at = time.iso(state.started), target = {archive = res.archive, scratch = tg}, ok = res.ok,
                reason = res.reason, message = res.message, table = res.table, check = res.check,
                seconds = res.seconds,
                details = {table_count = res.table_count, rows = res.rows, snapshot_time = res.manifest and res.manifest.snapshot_time}}, o)
    end)
    return state.result
  end

  -- verify.remove_stale_restore_tests{server_url= | neon=, older_than_hours = 24}: drops scratch
  -- databases / branches that a killed restore test left behind (kill -9, a second Ctrl-C),
  -- recognised by their names and the time in them. Returns the names removed.
  function M.remove_stale_restore_tests(o)
    M._check_options(o, "verify.remove_stale_restore_tests", {server_url = 1, neon = 1, older_than_hours = 1})
    local limit = time.now() - (o.older_than_hours or 24) * 3600
    local removed = {}
    local function old(ymd, hms)
      local t = time.parse(string.format("%s-%s-%sT%s:%s:%sZ", ymd:sub(1, 4), ymd:sub(5, 6), ymd:sub(7, 8),
                                         hms:sub(1, 2), hms:sub(3, 4), hms:sub(5, 6)))
      return t and t < limit
    end
    if o.server_url then
      local admin <close> = pgdump.connect(reveal(o.server_url))
      for _, r in ipairs(admin:query("SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'clubio\\_restore\\_test\\_%'")) do
        local ymd, hms = r.datname:match("^clubio_restore_test_(%d%d%d%d%d%d%d%d)_(%d%d%d%d%d%d)_%x+$")
        if ymd and old(ymd, hms) then
          if not pcall(admin.query, admin, "DROP DATABASE IF EXISTS " .. r.datname .. " WITH (FORCE)") then
            admin:query("DROP DATABASE IF EXISTS " .. r.datname)
          end
          removed[#removed + 1] = r.datname
        end
      end
    end
    if o.neon then
      for _, b in ipairs(o.neon:branches()) do
        local ymd, hms = b.name:match("^restore%-test%-(%d%d%d%d%d%d%d%d)%-(%d%d%d%d%d%d)%-%x+$")
        if ymd and old(ymd, hms) then
          o.neon:delete_branch(b)
          removed[#removed + 1] = b.name
        end
      end
    end
    for _, name in ipairs(removed) do log.info("removed the stale restore-test target " .. name) end
    return removed
  end
end
