-- Shared setup for tests/verify: a source database with the demo data on the sandbox's
-- PostgreSQL, exported to S3 by the real export-database script under a prefix of our own.
local proc, env, cjson, pgdump = require "proc", require "env", require "cjson", require "pgdump"
local M = {}

M.BIN = env.get("CLUBIO_DR_BIN")
M.BUCKET = env.get("BACKUP_S3_BUCKET")

function M.url(db, role)
  if role == "app" then
    return string.format("postgresql://app:%s@127.0.0.1:%s/%s", env.get("SANDBOX_PG_APP_PW"), env.get("SANDBOX_PG_PORT"), db)
  end
  return string.format("postgresql://postgres:%s@127.0.0.1:%s/%s", env.get("SANDBOX_PG_ADMIN_PW"),
                       env.get("SANDBOX_PG_PORT"), db)
end

function M.admin()
  return pgdump.connect(env.get("SANDBOX_PG_ADMIN_URL"))
end

-- owner: "app" for a database the sandbox's app role owns (its dump then says OWNER TO app,
-- which a neon-local branch, whose role is app too, can restore), else the superuser's.
function M.fresh_database(db, owner)
  local a <close> = M.admin()
  a:query("DROP DATABASE IF EXISTS " .. db .. " WITH (FORCE)")
  a:query("CREATE DATABASE " .. db .. (owner and (" OWNER " .. owner) or ""))
  return M.url(db, owner)
end

function M.drop_database(db)
  local a <close> = M.admin()
  a:query("DROP DATABASE IF EXISTS " .. db .. " WITH (FORCE)")
end

-- Runs `clubio-dr run ARGS...` with extra environment; r.doc is stdout decoded as JSON.
function M.run(args, extra)
  local argv = {M.BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local e = {CLUBIO_DR_JOURNAL = "off", CLUBIO_DR_VERIFY_HISTORY = "off"}
  for k, v in pairs(extra or {}) do e[k] = v end
  local r = proc.run{argv = argv, env = e}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end

-- The scratch databases restore tests left on the sandbox's server.
function M.scratch_databases()
  local a <close> = M.admin()
  local out = {}
  for _, r in ipairs(a:query("SELECT datname FROM pg_database WHERE datname LIKE 'clubio\\_restore\\_test\\_%' ORDER BY 1")) do
    out[#out + 1] = r.datname
  end
  return out
end

-- Loads demo-data (ROWS orders) into a fresh database SRC and exports it under PREFIX.
-- Returns the export's key and result.
function M.export(src, prefix, rows, owner)
  local url = M.fresh_database(src, owner)
  local e = {DATABASE_URL = url, EXPORT_PREFIX = prefix}
  local r = M.run({"demo-data", tostring(rows or 3000)}, e)
  assert(r.status == 0, "demo-data failed: " .. r.stderr)
  r = M.run({"export-database", "--json"}, e)
  assert(r.status == 0 and r.doc, "export-database failed: " .. r.stderr)
  return r.doc.result.key, r.doc.result, url
end

M.read = require("testing").read

return M
