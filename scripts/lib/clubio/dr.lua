-- Disaster recovery: a logical replica of the primary Neon project in the DR project, and the
-- failover steps as a Lua table that a site file can extend, reorder or replace.
--
-- Used by scripts/dr-setup.lua (replication), scripts/dr-failover.lua (the failover) and
-- scripts/dr-test.lua (the quarterly DR test); docs/dr.md is the one-page guide.
--
--   local dr = require "clubio.dr"
--   local ctx = dr.context()                 -- env: NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, ...
--   dr.setup(ctx, {})                        -- schema, publication, subscription, initial sync
--   local s = dr.status(ctx)                 -- {lag_bytes, lag_seconds, ...}
--   local steps = dr.load_site(dr.steps())   -- the failover steps, after the site file's changes
--   dr.failover(ctx, steps, {from = nil})    -- runs them as job steps (journal, timings)
--
-- A step is {name = "stop-replication", plan = "...", hint = "...", run = function(ctx) ... end};
-- run returns a table (its result, kept in ctx.results[name]) or nil. Steps share `ctx`:
-- ctx.cfg (settings), ctx.primary / ctx.dr (neon clients), ctx.primary_url / ctx.dr_url (secret
-- connection URIs; never print them), ctx.results, ctx.primary_reachable.
--
-- Secrets: connection URIs come from the Neon API and are registered with the redactor; the
-- subscription's connection string (with the primary's password) is stored by PostgreSQL in
-- pg_subscription.subconninfo on the DR side, readable only by superusers (Neon: the project
-- owner); rotate the primary's password with ALTER SUBSCRIPTION ... CONNECTION after a reset.
local env, log, time, proc, clubio = require "env", require "log", require "time", require "proc", require "clubio"
local pgdump, neon, cjson = require "pgdump", require "neon", require "cjson"

local M = {}

M.HEARTBEAT = "public.clubio_dr_heartbeat"
-- pg_subscription is shared by the databases of a cluster: ours are those of this database
M.THIS_DB = "(SELECT oid FROM pg_database WHERE datname = current_database())"

-- ---- small helpers -----------------------------------------------------------------------

local function getenv(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function M.ident(name) return '"' .. name:gsub('"', '""') .. '"' end

-- The SQL that un-fences a database, as pasted into psql connected to it: a plain ALTER DATABASE
-- ... RESET fails there ("cannot execute ALTER DATABASE in a read-only transaction"), since the
-- fence makes every transaction read-only by default; BEGIN READ WRITE lifts that for this one.
function M.unfence_sql(db)
  return "BEGIN READ WRITE; ALTER DATABASE " .. M.ident(db) .. " RESET default_transaction_read_only; COMMIT;"
end
function M.literal(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end

-- DR_TABLES: names separated by commas or spaces; each is `table` or `schema.table`, and either
-- part may be a quoted identifier ("Odd Schema"."Mixed Case Table", "" for a quote inside).
-- Returns {"schema.table", ...} (unquoted text, as pg_namespace/pg_class spell it); unquoted
-- parts are kept as written. A malformed list is a configuration error naming it.
function M.parse_table_list(text)
  local out, i, n = {}, 1, #text
  local function bad(why)
    clubio.fail{message = "DR_TABLES is malformed: " .. why, class = "config", code = "config.dr_tables",
                hint = 'separate names with commas; quote odd names: DR_TABLES=\'orders, "Odd Schema"."Mixed Case Table"\''}
  end
  while i <= n do
    local c = text:sub(i, i)
    if c:match("[,%s]") then
      i = i + 1
    else
      local parts = {}
      while true do
        local part
        if text:sub(i, i) == '"' then
          local buf, j = {}, i + 1
          while true do
            if j > n then bad("an unterminated quoted name") end
            local ch = text:sub(j, j)
            if ch == '"' then
              if text:sub(j + 1, j + 1) == '"' then buf[#buf + 1] = '"'; j = j + 2 else break end
            else
              buf[#buf + 1] = ch; j = j + 1
            end
          end
          part, i = table.concat(buf), j + 1
          if part == "" then bad("an empty quoted name") end
        else
          local s, e = text:find('^[^,%s."]+', i)
          if not s then bad("a name is missing near position " .. i) end
          part, i = text:sub(s, e), e + 1
        end
        parts[#parts + 1] = part
        if text:sub(i, i) == "." then i = i + 1 else break end
      end
      if #parts > 2 then bad("'" .. table.concat(parts, ".") .. "' has more than schema.table") end
      if i <= n and not text:sub(i, i):match("[,%s]") then bad("unexpected character near position " .. i) end
      out[#out + 1] = #parts == 2 and (parts[1] .. "." .. parts[2]) or ("public." .. parts[1])
    end
  end
  return out
end

-- A Lua list as a PostgreSQL text[] literal (each element quoted: spaces, commas and quotes in
-- names survive).
function M.text_array(list)
  local q = {}
  for i, v in ipairs(list) do q[i] = '"' .. tostring(v):gsub('[\\"]', "\\%0") .. '"' end
  return "{" .. table.concat(q, ",") .. "}"
end

-- "orders" -> "public"."orders"; "sales.orders" -> "sales"."orders"
function M.qualify(name)
  local schema, rel = name:match("^([^.]+)%.(.+)$")
  if not schema then schema, rel = "public", name end
  return M.ident(schema) .. "." .. M.ident(rel), schema .. "." .. rel
end

local function pct_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- A postgres URL's parts: {user, password, host, port, database, params}. Percent-decoded.
function M.parse_url(url)
  url = tostring(url)
  local rest = url:match("^postgresql://(.*)$") or url:match("^postgres://(.*)$")
  if not rest then
    clubio.fail{message = "not a postgres:// connection URL", class = "usage", code = "usage.url",
                hint = "use postgresql://user:password@host:port/database"}
  end
  local main, query = rest:match("^([^?]*)%??(.*)$")
  local authority, path = main:match("^([^/]*)/?(.*)$")
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  local u = {params = {}}
  if userinfo then
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    u.user = pct_decode(user or userinfo)
    u.password = pass and pct_decode(pass) or nil
  end
  local h, p = hostport:match("^%[(.*)%]:?(%d*)$")
  if not h then h, p = hostport:match("^([^:]*):?(%d*)$") end
  u.host = h ~= "" and pct_decode(h) or nil
  u.port = p ~= "" and p or nil
  u.database = path ~= "" and pct_decode(path) or nil
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do u.params[pct_decode(k)] = pct_decode(v) end
  return u
end

local ENV_OF = {host = "PGHOST", port = "PGPORT", user = "PGUSER", database = "PGDATABASE",
                password = "PGPASSWORD", sslmode = "PGSSLMODE", sslrootcert = "PGSSLROOTCERT",
                sslcert = "PGSSLCERT", sslkey = "PGSSLKEY", options = "PGOPTIONS",
                channel_binding = "PGCHANNELBINDING", connect_timeout = "PGCONNECT_TIMEOUT",
                target_session_attrs = "PGTARGETSESSIONATTRS", application_name = "PGAPPNAME"}

-- The environment for pg_dump/psql children: the password goes in PGPASSWORD, never argv.
function M.libpq_env(url)
  local u = M.parse_url(url)
  local e = {}
  for _, k in ipairs{"host", "port", "user", "database", "password"} do
    if u[k] then e[ENV_OF[k]] = u[k] end
  end
  for k, v in pairs(u.params) do
    if ENV_OF[k] then e[ENV_OF[k]] = v end
  end
  return e
end

-- A libpq keyword/value connection string (for CREATE SUBSCRIPTION ... CONNECTION).
function M.conninfo(url)
  local u = M.parse_url(url)
  local parts = {}
  local function add(k, v)
    if v then parts[#parts + 1] = k .. "='" .. tostring(v):gsub("\\", "\\\\"):gsub("'", "\\'") .. "'" end
  end
  add("host", u.host); add("port", u.port); add("dbname", u.database); add("user", u.user)
  add("password", u.password)
  local keys = {}
  for k in pairs(u.params) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do add(k, u.params[k]) end
  return table.concat(parts, " ")
end

-- user@host:port/database (no password): what logs and reports show.
function M.display(url)
  if not url then return "?" end
  local ok, u = pcall(M.parse_url, url)
  if not ok then return "?" end
  return string.format("%s@%s:%s/%s", u.user or "?", u.host or "?", u.port or "5432", u.database or "?")
end

local function with_param(url, k, v)
  url = tostring(url)
  if url:find("[?&]" .. k .. "=") then return url end
  return url .. (url:find("?", 1, true) and "&" or "?") .. k .. "=" .. v
end

local function scalar(conn, sql, params)
  local rows = conn:query(sql, params)
  local r = rows[1]
  if not r then return nil end
  local _, v = next(r)
  return v
end
M.scalar = scalar

-- ---- configuration and context -----------------------------------------------------------

-- Settings from the environment (documented in docs/dr.md). overrides: a table of the same keys.
function M.config(overrides)
  local c = {
    primary_project = getenv("NEON_PROJECT_ID_PRIMARY") or getenv("NEON_PROJECT_ID"),
    dr_project = getenv("NEON_PROJECT_ID_DR"),
    primary_branch = getenv("DR_PRIMARY_BRANCH"),
    dr_branch = getenv("DR_BRANCH"),
    database = getenv("DR_DATABASE"),
    role = getenv("DR_ROLE"),
    admin_database = getenv("DR_ADMIN_DATABASE", "postgres"),
    publication = getenv("DR_PUBLICATION", "clubio_dr"),
    failback_publication = getenv("DR_FAILBACK_PUBLICATION", "clubio_dr_failback"),
    subscription = getenv("DR_SUBSCRIPTION"),
    tables = getenv("DR_TABLES"),
    primary_url = getenv("DR_PRIMARY_URL"),
    target_url = getenv("DR_TARGET_URL"),
    connect_timeout = tonumber(getenv("DR_CONNECT_TIMEOUT", "10")),
    sync_timeout = tonumber(getenv("DR_SYNC_TIMEOUT", "3600")),
    drain_timeout = tonumber(getenv("DR_DRAIN_TIMEOUT", "120")),
    sequence_gap = tonumber(getenv("DR_SEQUENCE_GAP", "1000")),
    app_target = getenv("DR_APP_TARGET"),
    app_target_var = getenv("DR_APP_TARGET_VAR", "DATABASE_URL"),
    route53_zone = getenv("DR_ROUTE53_ZONE_ID"),
    route53_record = getenv("DR_ROUTE53_RECORD"),
    route53_value = getenv("DR_ROUTE53_VALUE"),
    route53_primary_value = getenv("DR_ROUTE53_PRIMARY_VALUE"),
    route53_type = getenv("DR_ROUTE53_TYPE", "CNAME"),
    route53_ttl = tonumber(getenv("DR_ROUTE53_TTL", "60")),
    webhook_env = "DR_WEBHOOK_URL",
  }
  for k, v in pairs(overrides or {}) do c[k] = v end
  if not c.primary_project and not c.primary_url then
    clubio.fail{message = "NEON_PROJECT_ID_PRIMARY is not set", class = "config", code = "config.env",
                hint = "export NEON_PROJECT_ID_PRIMARY (the primary Neon project) or DR_PRIMARY_URL"}
  end
  if not c.dr_project and not c.target_url then
    clubio.fail{message = "NEON_PROJECT_ID_DR is not set", class = "config", code = "config.env",
                hint = "export NEON_PROJECT_ID_DR (the DR Neon project) or DR_TARGET_URL"}
  end
  if type(c.tables) == "string" then
    local list = M.parse_table_list(c.tables)
    c.tables = #list > 0 and list or nil
  end
  return c
end

-- url with its database replaced
function M.with_database(url, database)
  local u = M.parse_url(url)
  local s = tostring(url)
  local a, b = s:find("/" .. (u.database or ""):gsub("%p", "%%%0") .. "%f[?\0]")
  if not a then return s end
  return s:sub(1, a) .. database .. s:sub(b + 1)
end

-- The branch's connection URI for cfg.database. A database created with SQL that the API does
-- not list (neon-local lists only the project's own) is reached with the role's URI for the
-- branch's database and the name swapped: the role and password are the branch's either way.
local function neon_uri(client, cfg, branch)
  local ok, u = pcall(client.connection_uri, client, {branch = branch, database = cfg.database, role = cfg.role})
  if ok then return u end
  if not (cfg.database and clubio.is_error(u) and u.code == "neon.not_found") then error(u, 0) end
  local base = client:connection_uri{branch = branch, role = cfg.role}
  return M.with_database(base, cfg.database)
end

-- The connection URI of `branch` of a Neon project (by name or id), for cfg.database.
function M.branch_url(client, cfg, branch) return neon_uri(client, cfg, branch) end

-- The context steps share. The primary may be unreachable (API or database): then
-- ctx.primary_url is nil and ctx.primary_error says why; the DR side must answer.
function M.context(cfg)
  cfg = cfg or M.config()
  local ctx = {cfg = cfg, results = {}, started = time.now()}
  if cfg.dr_project then ctx.dr = neon.client{project_id = cfg.dr_project, timeout = 120} end
  if cfg.primary_project then
    local ok, c = pcall(neon.client, {project_id = cfg.primary_project, timeout = 60})
    if ok then ctx.primary = c end
  end
  ctx.dr_url = cfg.target_url or neon_uri(ctx.dr, cfg, cfg.dr_branch)
  if cfg.primary_url then
    ctx.primary_url = cfg.primary_url
  else
    local ok, u = pcall(neon_uri, ctx.primary, cfg, cfg.primary_branch)
    if ok then ctx.primary_url = u else ctx.primary_error = tostring(u) end
  end
  local db = M.parse_url(ctx.dr_url).database or "db"
  cfg.subscription = cfg.subscription or ("clubio_dr_" .. db:lower():gsub("[^%w_]", "_")):sub(1, 63)
  -- the failback's slot on the DR side (and its subscription on the primary)
  cfg.failback_slot = cfg.failback_slot or ("clubio_drfb_" .. db:lower():gsub("[^%w_]", "_")):sub(1, 63)
  return ctx
end

-- A connection to the primary, or nil and the error when it does not answer.
function M.try_primary(ctx, database)
  if not ctx.primary_url then return nil, ctx.primary_error or "no primary URL" end
  local url = ctx.primary_url
  if database then url = M.with_database(url, database) end
  local ok, c = pcall(pgdump.connect, with_param(url, "connect_timeout", tostring(ctx.cfg.connect_timeout)))
  if not ok then return nil, tostring(c) end
  return c
end

-- The DR database is fenced (read-only by default) while it is a replica: clubio-dr's own
-- sessions write all the same (subscription changes, heartbeats). opts.as_app: a session as the
-- application gets it (the database's defaults), for checks of what the application can do.
function M.connect_dr(ctx, opts)
  local c = pgdump.connect(with_param(ctx.dr_url, "connect_timeout", tostring(ctx.cfg.connect_timeout)))
  if not (opts and opts.as_app) then c:query("SET default_transaction_read_only = off") end
  return c
end

-- ---- tables, schema, publication, subscription -------------------------------------------

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

-- ---- pluggable targets -------------------------------------------------------------------

-- Writes NAME='value' into an env file atomically (a 0600 file beside it, then rename), keeping
-- its other lines.
function M.write_env_file(path, name, value)
  local lines, found = {}, false
  local f = io.open(path, "r")
  if f then
    for line in f:lines() do
      if line:match("^%s*export%s+" .. name .. "=") or line:match("^%s*" .. name .. "=") then
        if not found then lines[#lines + 1] = name .. "='" .. value:gsub("'", "'\\''") .. "'" end
        found = true
      else
        lines[#lines + 1] = line
      end
    end
    f:close()
  end
  if not found then lines[#lines + 1] = name .. "='" .. value:gsub("'", "'\\''") .. "'" end
  local ok, werr = pcall(require("pipe").write_file, path, table.concat(lines, "\n") .. "\n", {overwrite = true})
  if not ok then
    clubio.fail{message = "cannot replace " .. path .. ": " .. (type(werr) == "table" and werr.message or tostring(werr)),
                code = "dr.app_target", hint = "check the folder's permissions"}
  end
end

local function aws_json(service, target, body, region)
  local aws = require "aws"
  local r = aws.request{service = service, region = region, method = "POST", path = "/",
                        headers = {["X-Amz-Target"] = target, ["Content-Type"] = "application/x-amz-json-1.1"},
                        body = cjson.encode(body), timeout = 30}
  if r.status < 200 or r.status > 299 then
    clubio.fail{message = string.format("%s %s answered HTTP %d: %s", service, target:match("[^.]+$"), r.status,
                                        log.redact((r.body or ""):sub(1, 200))),
                code = "dr.aws", retryable = r.status >= 500,
                hint = "check the AWS credentials' permissions and the region"}
  end
  return r
end

-- Points the application at `url`: DR_APP_TARGET is env-file:PATH, ssm:PARAMETER-NAME or none.
function M.update_app_target(ctx, url)
  local t = ctx.cfg.app_target
  if not t or t == "none" then
    log.warn("no application target configured (DR_APP_TARGET): point the application at the DR database by hand",
             {database = M.display(url)})
    return {skipped = true}
  end
  local kind, where = t:match("^([%w-]+):(.+)$")
  if kind == "env-file" then
    M.write_env_file(where, ctx.cfg.app_target_var, tostring(url))
    return {kind = kind, path = where, var = ctx.cfg.app_target_var, database = M.display(url)}
  elseif kind == "ssm" then
    aws_json("ssm", "AmazonSSM.PutParameter",
             {Name = where, Value = tostring(url), Type = "SecureString", Overwrite = true})
    return {kind = kind, parameter = where, database = M.display(url)}
  end
  clubio.fail{message = "DR_APP_TARGET '" .. t .. "' is not env-file:PATH, ssm:NAME or none", class = "config",
              code = "config.dr_app_target", hint = "e.g. DR_APP_TARGET=env-file:/etc/clubio/db.env or ssm:/clubio/prod/DATABASE_URL"}
end

-- Route53 UPSERT of DR_ROUTE53_RECORD to DR_ROUTE53_VALUE in zone DR_ROUTE53_ZONE_ID.
function M.update_routing(ctx, value)
  local c = ctx.cfg
  value = value or c.route53_value
  if not c.route53_zone or not c.route53_record or not value then
    log.warn("no traffic routing configured (DR_ROUTE53_ZONE_ID, DR_ROUTE53_RECORD, DR_ROUTE53_VALUE): update DNS or the load balancer by hand")
    return {skipped = true}
  end
  local function esc(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end
  local body = string.format([[<?xml version="1.0" encoding="UTF-8"?>
<ChangeResourceRecordSetsRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeBatch><Comment>clubio-dr failover</Comment><Changes><Change><Action>UPSERT</Action><ResourceRecordSet><Name>%s</Name><Type>%s</Type><TTL>%d</TTL><ResourceRecords><ResourceRecord><Value>%s</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>]],
    esc(c.route53_record), esc(c.route53_type), c.route53_ttl, esc(value))
  local zone = c.route53_zone:gsub("^/?hostedzone/", "")
  local r = require("aws").request{service = "route53", method = "POST", path = "/2013-04-01/hostedzone/" .. zone .. "/rrset/",
                                   headers = {["Content-Type"] = "application/xml"}, body = body, timeout = 30}
  if r.status < 200 or r.status > 299 then
    clubio.fail{message = string.format("route53 ChangeResourceRecordSets answered HTTP %d: %s", r.status,
                                        log.redact((r.body or ""):sub(1, 200))),
                code = "dr.route53", retryable = r.status >= 500,
                hint = "check the hosted zone id, the record name and the credentials' route53 permissions"}
  end
  return {zone = zone, record = c.route53_record, type = c.route53_type, value = value,
          change_id = (r.body or ""):match("<Id>([^<]+)</Id>")}
end

function M.notify(ctx, text, fields)
  log.info(text, fields)
  if not getenv(ctx.cfg.webhook_env) then return {webhook = false} end
  -- webhook URLs carry their token in the path: a secret (errors name the host only)
  local url = require("secret").env(ctx.cfg.webhook_env)
  local ok, r = pcall(require("http").request, {method = "POST", url = url, headers = {["Content-Type"] = "application/json"},
                                                 body = cjson.encode({text = text, fields = fields}), timeout = 10})
  if not ok then
    clubio.fail{message = "the webhook (" .. ctx.cfg.webhook_env .. ") did not answer: " ..
                          (clubio.is_error(r) and r.message or tostring(r)),
                code = "dr.webhook", retryable = true,
                hint = "the failover itself is done; tell the team by hand and check the webhook URL"}
  end
  if r.status < 200 or r.status > 299 then
    clubio.fail{message = "the webhook (" .. ctx.cfg.webhook_env .. ") answered HTTP " .. r.status, code = "dr.webhook",
                hint = "the failover itself is done; tell the team by hand and check the webhook URL"}
  end
  return {webhook = true, status = r.status}
end

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

-- ---- site files --------------------------------------------------------------------------

-- A folder? (io.open succeeds on a folder on Linux; reading it fails with EISDIR, 21.)
local function is_dir(path)
  local f = io.open(path, "r")
  if not f then return false end
  local _, _, code = f:read(1)
  f:close()
  return code == 21
end

function M.index(steps, name)
  for i, s in ipairs(steps) do if s.name == name then return i end end
  return nil
end

local function need(steps, name)
  local i = M.index(steps, name)
  if not i then
    clubio.fail{message = "no failover step named '" .. tostring(name) .. "'", class = "config", code = "config.dr_site",
                hint = "the steps are: " .. table.concat((function() local t = {} for _, s in ipairs(steps) do t[#t + 1] = s.name end return t end)(), ", ")}
  end
  return i
end

-- Helpers handed to site files as their second argument.
M.edit = {
  index = M.index,
  get = function(steps, name) return steps[need(steps, name)] end,
  remove = function(steps, name) return table.remove(steps, need(steps, name)) end,
  replace = function(steps, name, step) steps[need(steps, name)] = step; return steps end,
  insert_after = function(steps, name, step) table.insert(steps, need(steps, name) + 1, step); return steps end,
  insert_before = function(steps, name, step) table.insert(steps, need(steps, name), step); return steps end,
  move_after = function(steps, name, after)
    local s = table.remove(steps, need(steps, name))
    table.insert(steps, need(steps, after) + 1, s)
    return steps
  end,
  order = function(steps, names)
    local out = {}
    for _, n in ipairs(names) do out[#out + 1] = steps[need(steps, n)] end
    return out
  end,
}

local function check_steps(steps, where)
  if type(steps) ~= "table" then
    clubio.fail{message = where .. " did not return the steps (a table)", class = "config", code = "config.dr_site"}
  end
  local seen = {}
  for i, s in ipairs(steps) do
    if type(s) ~= "table" or type(s.name) ~= "string" or type(s.run) ~= "function" then
      clubio.fail{message = string.format("%s: step %d is not {name = \"...\", run = function(ctx) ... end}", where, i),
                  class = "config", code = "config.dr_site"}
    end
    if seen[s.name] then
      clubio.fail{message = where .. ": two steps named " .. s.name, class = "config", code = "config.dr_site"}
    end
    seen[s.name] = true
  end
  return steps
end

-- Applies the site files found through CLUBIO_DR_PATH (a colon-separated list of files, or of
-- folders holding dr-site.lua). A site file returns either function(steps, edit, dr) -> steps
-- (it may also edit `steps` in place and return nothing), or a table:
--   {steps = {...}}                          the whole list, replacing the provided one
--   {replace = {["name"] = step}, remove = {"name"}, order = {"name", ...},
--    before = {["name"] = {step, ...}}, after = {["name"] = {step, ...}}}
function M.load_site(steps, path, site_name)
  path = path or getenv("CLUBIO_DR_PATH")
  site_name = site_name or "dr-site.lua"
  if not path then return steps, {} end
  local used = {}
  for entry in path:gmatch("[^:]+") do
    local file = entry
    if is_dir(entry) then
      -- a folder of the path (it may hold only jobs.conf, or nothing yet): its site file or nothing
      file = entry .. "/" .. site_name
      local f = io.open(file, "r")
      if not f then
        log.debug("CLUBIO_DR_PATH folder has no " .. site_name, {entry = entry})
        goto continue
      end
      f:close()
    elseif site_name ~= "dr-site.lua" then
      -- a file on the path is a failover site file; other step lists are only found in folders
      goto continue
    else
      local f = io.open(entry, "r")
      if not f then
        log.debug("CLUBIO_DR_PATH entry does not exist", {entry = entry})
        goto continue
      end
      f:close()
    end
    local chunk, err = loadfile(file)
    if not chunk then
      clubio.fail{message = "cannot load the DR site file " .. file .. ": " .. tostring(err), class = "config",
                  code = "config.dr_site"}
    end
    do
      local ok, site = pcall(chunk)
      if not ok then
        clubio.fail{message = "the DR site file " .. file .. " failed: " .. tostring(site), class = "config", code = "config.dr_site"}
      end
      if type(site) == "function" then
        local ok2, r = pcall(site, steps, M.edit, M)
        if not ok2 then
          if clubio.is_error(r) then error(r, 0) end
          clubio.fail{message = "the DR site file " .. file .. " failed: " .. tostring(r), class = "config", code = "config.dr_site"}
        end
        steps = r or steps
      elseif type(site) == "table" then
        if site.steps then steps = site.steps end
        for name, s in pairs(site.replace or {}) do M.edit.replace(steps, name, s) end
        for _, name in ipairs(site.remove or {}) do M.edit.remove(steps, name) end
        for name, list in pairs(site.before or {}) do
          for _, s in ipairs(list) do M.edit.insert_before(steps, name, s) end
        end
        for name, list in pairs(site.after or {}) do
          for i = #list, 1, -1 do M.edit.insert_after(steps, name, list[i]) end
        end
        if site.order then steps = M.edit.order(steps, site.order) end
      else
        clubio.fail{message = "the DR site file " .. file .. " must return a function or a table", class = "config",
                    code = "config.dr_site"}
      end
      check_steps(steps, file)
      used[#used + 1] = file
    end
    ::continue::
  end
  return steps, used
end

-- ---- running the failover ----------------------------------------------------------------

-- Runs the steps as steps of job J (journal with timings). opts.from: start at that step (the
-- earlier ones are journaled as skipped). A failing step stops the run: the error says which
-- step, what completed, and what to do next.
--
-- Under --dry-run the steps' read-only checks (their `dry`) all run and every problem is
-- collected: a dry run of a failover that would fail says why and exits non-zero.
-- ctx.rehearsal (dr-test on copies): only steps marked `rehearse = true` run; the others (e.g.
-- Route53, or a site's step that acts on production) are journaled as skipped.
-- opts.what names the procedure in errors ("failover", "failback").
function M.run_steps(J, ctx, steps, opts)
  opts = opts or {}
  local what = opts.what or "failover"
  local start = 1
  if opts.from then start = need(steps, opts.from) end
  ctx.completed = {}
  local problems = {}
  for i, s in ipairs(steps) do
    if i < start then
      J:record({step = s.name, status = "skipped", reason = "--from " .. opts.from})
    elseif ctx.rehearsal and not s.rehearse then
      log.info("rehearsal: skipping " .. s.name .. " (it acts on production; a step runs in a rehearsal when marked rehearse = true)")
      J:record({step = s.name, status = "skipped", reason = "rehearsal"})
    else
      local plan = s.plan
      if type(plan) == "function" then plan = plan(ctx) end
      local ok, res = pcall(J.step, J, s.name, {plan = plan, hint = s.hint, dry = s.dry and function() return s.dry(ctx) end},
                            function() return s.run(ctx) end)
      if not ok and J.dry_run then
        local msg = clubio.is_error(res) and res.message or tostring(res)
        log.error(string.format("the %s would fail at step %d/%d '%s': %s", what, i, #steps, s.name, msg))
        problems[#problems + 1] = {step = s.name, index = i, error = res, message = msg}
        ok, res = true, nil
      end
      if not ok then
        local e = res
        local msg = clubio.is_error(e) and e.message or tostring(e)
        -- the error's own hint (the cause), then the step's (what to do about the failover)
        local hint = (clubio.is_error(e) and e.hint) or ""
        if s.hint and s.hint ~= hint then hint = hint ~= "" and (hint .. "; " .. s.hint) or s.hint end
        local nextstep = steps[i + 1] and steps[i + 1].name
        clubio.fail{message = string.format("%s stopped at step %d/%d '%s': %s", what, i, #steps, s.name, msg),
                    code = "dr.step_failed", class = clubio.is_error(e) and e.class or "failure",
                    hint = string.format("%s%sdone so far: %s.%s", hint, hint ~= "" and "; " or "",
                                         #ctx.completed > 0 and table.concat(ctx.completed, ", ") or "nothing",
                                         hint:find("--from", 1, true) and "" or
                                         string.format(" After fixing it, re-run with --from %s%s", s.name,
                                           nextstep and (" (or --from " .. nextstep .. " if you did it by hand)") or ""))}
      end
      ctx.results[s.name] = res
      ctx.completed[#ctx.completed + 1] = s.name
      if opts.after_step then opts.after_step(ctx, s.name, res) end
    end
  end
  if #problems > 0 then
    local p = problems[1]
    local e = p.error
    clubio.fail{message = string.format("dry run: the %s would fail at step %d/%d '%s': %s%s", what, p.index, #steps, p.step,
                                        p.message, #problems > 1 and string.format(" (and %d more problems, logged above)", #problems - 1) or ""),
                code = "dr.dry_run_failed", class = clubio.is_error(e) and e.class ~= "usage" and e.class or "failure",
                hint = (clubio.is_error(e) and e.hint) or steps[p.index].hint or "fix it before failing over"}
  end
  return ctx.results
end

return M
