-- The runbook's verification queries as functions, part of the `verify` module (added to its
-- table by verify_ext.lua). Table names are written as pg_dump writes them (quote_ident'ed
-- schema and name: `public.users`, `"Sales Dept"."Order Items"`), the keys manifests use.
--
--   verify.row_counts(url)                       -- pg_stat_user_tables.n_live_tup (an estimate)
--   verify.row_counts(url, {exact = true})       -- plus count(*) per table
--   verify.latest_activity(url)                  -- max(updated_at), max(created_at) per table
--   verify.table_digests(url, {tables = {"public.users"}})   -- exact digests over COPY, in C
--
-- Each returns {ok = true, url = <no password>, tables = {[name] = {...}}, table_count,
-- seconds}; with `history = true` (or history_file / history_s3) a record is appended to the
-- verification history. `tables` restricts to the named tables (an unknown one is an error).
return function(M)
  local function lazy(name)
    return setmetatable({}, {__index = function(_, k) return require(name)[k] end})
  end
  local clubio, time = lazy("clubio"), lazy("time")

  local QUERY_OPTIONS = {tables = 1, exact = 1, history = 1, history_file = 1, history_s3 = 1}

  -- url: a string or a secret. Returns the connection and a description without secrets.
  local function connect(url, what)
    if type(url) ~= "string" then
      if type(url) == "userdata" and url.reveal then url = url:reveal()
      else clubio.fail{message = what .. ": the database URL is required", class = "usage", code = "usage.option"} end
    end
    local desc = require("clubio.job").describe_url(url)
    return require("pgdump").connect(url), desc.display
  end
  M._connect = connect

  -- The user tables (ordinary tables: partitions are listed, their parents are not, as in a
  -- dump), keyed by the dump's name, with their oid.
  local TABLES_SQL = [[
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, c.oid::text AS oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1]]

  local function user_tables(db, only, what)
    local all, by = {}, {}
    for _, r in ipairs(db:query(TABLES_SQL)) do all[#all + 1] = r; by[r.name] = r end
    if not only then return all end
    local out = {}
    for _, name in ipairs(only) do
      local t = by[name]
      if not t then
        -- also accept what the server resolves (unquoted mixed case, search_path)
        local rows = db:query([[SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, c.oid::text AS oid
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = to_regclass($1)]], {name})
        t = rows[1]
      end
      if not t then
        clubio.fail{message = string.format("%s: no table %s", what, name), class = "usage", code = "verify.no_table",
                    hint = "name tables as schema.table (e.g. public.users)"}
      end
      out[#out + 1] = t
    end
    return out
  end
  M._user_tables = user_tables

  local function finish(what, url_display, res, o, t0)
    res.ok = res.ok ~= false
    res.url = url_display
    res.seconds = time.monotonic() - t0
    if o.history or o.history_file or o.history_s3 then
      local ho = {history_file = o.history_file, history_s3 = o.history_s3}
      M.record({what = what, target = {database = url_display}, ok = res.ok, reason = res.reason,
                message = res.message, seconds = {total = res.seconds},
                details = {table_count = res.table_count, rows = res.rows, tables = res.tables}}, ho)
    end
    return res
  end

  -- verify.row_counts(url, {exact = false, tables = nil}): per table `estimate` (n_live_tup
  -- from pg_stat_user_tables: what the runbook queries; approximate, 0 before the first
  -- ANALYZE/autovacuum) and, with exact = true, `rows` (count(*)). `rows` at the top is the sum
  -- of exact counts (exact) or of estimates.
  function M.row_counts(url, o)
    o = o or {}
    M._check_options(o, "verify.row_counts", QUERY_OPTIONS)
    local t0 = time.monotonic()
    local db <close>, display = connect(url, "verify.row_counts")
    local est = {}
    for _, r in ipairs(db:query([[SELECT quote_ident(schemaname) || '.' || quote_ident(relname) AS name,
                                         n_live_tup FROM pg_catalog.pg_stat_user_tables]])) do
      est[r.name] = tonumber(r.n_live_tup)
    end
    local res = {tables = {}, table_count = 0, rows = 0, exact = o.exact == true}
    for _, t in ipairs(user_tables(db, o.tables, "verify.row_counts")) do
      local e = {estimate = est[t.name] or 0}
      if o.exact then
        e.rows = tonumber(db:query("SELECT count(*) AS n FROM " .. t.name)[1].n)
      end
      res.tables[t.name] = e
      res.table_count = res.table_count + 1
      res.rows = res.rows + (e.rows or e.estimate)
    end
    return finish("row_counts", display, res, o, t0)
  end

  -- verify.latest_activity(url, {tables = nil}): for every table with an updated_at and/or
  -- created_at column of a date/time type, the latest value of each (ISO 8601 UTC; `nil` when
  -- the table is empty), `latest` (the later of the two) and `age_hours`. The top-level `latest`
  -- and `table` name the most recent activity in the database — the runbook's "is the restored
  -- data recent enough" check.
  function M.latest_activity(url, o)
    o = o or {}
    M._check_options(o, "verify.latest_activity", QUERY_OPTIONS)
    local t0 = time.monotonic()
    local db <close>, display = connect(url, "verify.latest_activity")
    local cols = {}
    for _, r in ipairs(db:query([[SELECT a.attrelid::text AS oid, a.attname
        FROM pg_catalog.pg_attribute a
        WHERE a.attname IN ('updated_at', 'created_at') AND a.attnum > 0 AND NOT a.attisdropped
          AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)]])) do
      cols[r.oid] = cols[r.oid] or {}
      cols[r.oid][r.attname] = true
    end
    local now = time.now()
    local res = {tables = {}, table_count = 0}
    for _, t in ipairs(user_tables(db, o.tables, "verify.latest_activity")) do
      local c = cols[t.oid]
      if c then
        local sel = {}
        for _, name in ipairs{"updated_at", "created_at"} do
          if c[name] then
            -- timestamp without time zone is read as UTC (extract(epoch) does so)
            sel[#sel + 1] = string.format("extract(epoch FROM max(%s))::float8 AS %s", name, name)
          end
        end
        local row = db:query("SELECT " .. table.concat(sel, ", ") .. " FROM " .. t.name, nil, {typed = true})[1]
        local e = {}
        for _, name in ipairs{"updated_at", "created_at"} do
          local v = row[name]
          if v then
            e[name] = time.iso(v)
            if not e.latest_epoch or v > e.latest_epoch then e.latest_epoch = v end
          end
        end
        if e.latest_epoch then
          e.latest = time.iso(e.latest_epoch)
          e.age_hours = (now - e.latest_epoch) / 3600
          if not res.latest_epoch or e.latest_epoch > res.latest_epoch then
            res.latest_epoch, res.table = e.latest_epoch, t.name
          end
        end
        e.latest_epoch = nil
        res.tables[t.name] = e
        res.table_count = res.table_count + 1
      end
    end
    if res.latest_epoch then
      res.latest = time.iso(res.latest_epoch)
      res.age_hours = (now - res.latest_epoch) / 3600
    end
    res.latest_epoch = nil
    return finish("latest_activity", display, res, o, t0)
  end

  -- verify.table_digests(url, {tables = nil}): per table {rows, bytes, sha256, set_sha256},
  -- computed in C over `COPY (SELECT <non-generated columns> FROM t) TO STDOUT`
  -- (pgdump's table_digest). `sha256` hashes the COPY text in the order the server sends it —
  -- the heap's physical order, NOT primary-key order (there is no ORDER BY); it equals a dump's
  -- digest of the same, unchanged table, but not that of a copy whose rows landed in another
  -- order (a parallel restore), and PostgreSQL's synchronized sequential scans can even start a
  -- large table's scan mid-table. `set_sha256` is order-independent: the sum modulo 2^256 of the
  -- SHA-256 of each row's COPY line; compare databases with it.
  function M.table_digests(url, o)
    o = o or {}
    M._check_options(o, "verify.table_digests", QUERY_OPTIONS)
    local t0 = time.monotonic()
    local db <close>, display = connect(url, "verify.table_digests")
    local res = {tables = {}, table_count = 0, rows = 0}
    for _, t in ipairs(user_tables(db, o.tables, "verify.table_digests")) do
      local d = db:table_digest(t.name)
      res.tables[t.name] = {rows = d.rows, bytes = d.bytes, sha256 = d.sha256, set_sha256 = d.set_sha256}
      res.table_count = res.table_count + 1
      res.rows = res.rows + d.rows
    end
    return finish("table_digests", display, res, o, t0)
  end
end
