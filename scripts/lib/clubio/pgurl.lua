-- PostgreSQL connection URLs, parsed by libpq itself (pgdump.conninfo_parse, PQconninfoParse):
-- percent-decoding, [IPv6] hosts, host lists and parameters as every libpq client reads them.
-- Used by clubio.dr (replication, failover), clubio.job (what logs show) and verify's restore
-- test (scratch databases on a server).
--
--   local pgurl = require "clubio.pgurl"
--   local u = pgurl.parse(url)          -- {user, password, host, port, database, params = {sslmode = ...}}
--   pgurl.libpq_env(url)                -- {PGHOST = ..., PGPASSWORD = ...} for pg_dump/psql children
--   pgurl.conninfo(url)                 -- "host='h' port='5432' ..." (CREATE SUBSCRIPTION ... CONNECTION)
--   pgurl.display(url)                  -- "user@host:port/database", never the password
--   pgurl.with_database(url, "other")   -- the same URL on another database
local clubio = require "clubio"

local M = {}

local function not_postgres()
  clubio.fail{message = "not a postgres:// connection URL", class = "usage", code = "usage.url",
              hint = "use postgresql://user:password@host:port/database"}
end

-- A postgres URL's parts: {user, password, host, port, database, params}, decoded by libpq;
-- params holds the other options it sets (sslmode, options, ...). A URL libpq refuses is a usage
-- error (code usage.url) that does not quote it.
function M.parse(url)
  url = tostring(url)
  if not (url:find("^postgresql://") or url:find("^postgres://")) then not_postgres() end
  local o = require("pgdump").conninfo_parse(url)
  local u = {user = o.user, password = o.password, host = o.host, port = o.port, database = o.dbname, params = {}}
  for k, v in pairs(o) do
    if k ~= "user" and k ~= "password" and k ~= "host" and k ~= "port" and k ~= "dbname" then u.params[k] = v end
  end
  return u
end

local ENV_OF = {host = "PGHOST", port = "PGPORT", user = "PGUSER", database = "PGDATABASE",
                password = "PGPASSWORD", sslmode = "PGSSLMODE", sslrootcert = "PGSSLROOTCERT",
                sslcert = "PGSSLCERT", sslkey = "PGSSLKEY", options = "PGOPTIONS",
                channel_binding = "PGCHANNELBINDING", connect_timeout = "PGCONNECT_TIMEOUT",
                target_session_attrs = "PGTARGETSESSIONATTRS", application_name = "PGAPPNAME"}

-- The environment for pg_dump/psql children: the password goes in PGPASSWORD, never argv.
function M.libpq_env(url)
  local u = M.parse(url)
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
  local u = M.parse(url)
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

-- user@host:port/database (no password): what logs and reports show; "?" for what is not a URL.
function M.display(url)
  if not url then return "?" end
  local ok, u = pcall(M.parse, url)
  if not ok then return "?" end
  return string.format("%s@%s:%s/%s", u.user or "?", u.host or "?", u.port or "5432", u.database or "?")
end

-- The parts that may be shown: {user, host, port (a number), database, display}; for a URL
-- without a user and host, only display (the URL with any password redacted).
function M.describe(url)
  local ok, u = pcall(M.parse, url)
  if not (ok and u.user and u.host) then return {display = require("log").redact(tostring(url))} end
  local db = u.database or ""
  return {user = u.user, host = u.host, port = tonumber(u.port) or 5432, database = db,
          display = string.format("%s@%s:%s/%s", u.user, u.host, u.port or "5432", db)}
end

-- url (checked by libpq) with its database replaced by `database`; the query string is kept.
function M.with_database(url, database)
  url = tostring(url)
  M.parse(url)
  local pre = url:match("^(postgres[ql]*://[^/?]*)")
  local db = tostring(database):gsub("[^%w._~-]", function(c) return string.format("%%%02X", c:byte()) end)
  return pre .. "/" .. db .. (url:match("%?.*$") or "")
end

-- url with ?k=v added, unless it already sets k.
function M.with_param(url, k, v)
  url = tostring(url)
  if url:find("[?&]" .. k .. "=") then return url end
  return url .. (url:find("?", 1, true) and "&" or "?") .. k .. "=" .. v
end

return M
