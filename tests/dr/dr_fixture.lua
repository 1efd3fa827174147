-- Shared set-up for the DR tests: a database of the test's own on the sandbox's primary and DR
-- projects (neon-local, real PostgreSQL 15 clusters), the scripts' environment, runs of
-- `clubio-dr run <script>`, background children, and clean-up.
local proc, env, cjson, pgdump, time = require "proc", require "env", require "cjson", require "pgdump", require "time"
local neon, dr = require "neon", require "clubio.dr"

local M = {}
M.BIN = env.get("CLUBIO_DR_BIN")
M.HERE = env.get("CLUBIO_DR_TEST_DIR") .. "/dr"

local function base_uri(project)
  -- branch main by name: other tests move the default branch of the primary for a while
  return neon.client{project_id = project}:connection_uri{branch = "main", database = "clubio"}
end

-- A fresh database named dr_<tag>_<random> on both sides, with the application's tables on
-- the primary. Returns a fixture {db, dir, primary_url, dr_url, env, journal, app_env}.
function M.new(tag, opts)
  opts = opts or {}
  local f = {db = string.format("dr_%s_%d", tag, math.random(100000, 999999))}
  f.dir = require("testing").tmpdir()
  f.journal = f.dir .. "/journal.jsonl"
  f.app_env = f.dir .. "/app.env"
  local pbase, dbase = base_uri(env.get("NEON_PROJECT_ID_PRIMARY")), base_uri(env.get("NEON_PROJECT_ID_DR"))
  for _, u in ipairs{pbase, dbase} do
    local c <close> = pgdump.connect(u)
    c:query("DROP DATABASE IF EXISTS " .. f.db .. " WITH (FORCE)")
    c:query("CREATE DATABASE " .. f.db)
  end
  f.primary_url, f.dr_url = dr.with_database(pbase, f.db), dr.with_database(dbase, f.db)
  f.primary_admin, f.dr_admin = pbase, dbase
  local p <close> = pgdump.connect(f.primary_url)
  p:query([[
    CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE accounts (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner text NOT NULL, balance numeric(12,2));
    CREATE TABLE events (id bigserial PRIMARY KEY, writer int, seq int, at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE SEQUENCE invoice_no START 5000;
    INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 2000) g;
    INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g * 1.5 FROM generate_series(1, 50) g;
    SELECT nextval('invoice_no') FROM generate_series(1, 25);]])
  f.env = {DR_DATABASE = f.db, DR_PRIMARY_BRANCH = "main", DR_BRANCH = "main", CLUBIO_DR_JOURNAL = f.journal, DR_APP_TARGET = "env-file:" .. f.app_env,
           DR_TEST_REPORT_DIR = f.dir .. "/reports"}
  for k, v in pairs(opts.env or {}) do f.env[k] = v end
  return setmetatable(f, {__index = M})
end

-- clubio-dr run ARGS with the fixture's environment (+ extra); r.doc is the decoded --json.
function M:run(args, extra)
  local e = {}
  for k, v in pairs(self.env) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {M.BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  r.all = r.stdout .. r.stderr
  return r
end

function M:primary() return pgdump.connect(self.primary_url) end
function M:dr() return pgdump.connect(self.dr_url) end

-- The journal's entries, optionally only those of one job.
function M:journal_entries(job)
  local out = {}
  local fh = io.open(self.journal, "r")
  if not fh then return out end
  for line in fh:lines() do
    local e = cjson.decode(line)
    if not job or e.job == job then out[#out + 1] = e end
  end
  fh:close()
  return out
end

-- The steps of the last run of `job` in the journal: {"name:status", ...}
function M:last_run(job)
  local entries = self:journal_entries(job)
  if #entries == 0 then return {} end
  local run = entries[#entries].run
  -- the last run: entries of one run are contiguous unless runs overlap, which these tests do not
  local out = {}
  -- clubio.job adds a "(run)" entry to runs that stop without finishing: the steps are what we check
  for _, e in ipairs(entries) do if e.run == run and e.step ~= "(run)" then out[#out + 1] = e.step .. ":" .. e.status end end
  return out
end

-- Starts argv in the background (output to logfile); returns its pid. The secrets it needs go in
-- env, never argv.
function M.spawn(argv, e, logfile)
  local sh = {"sh", "-c", 'exec "$@" >"$LOGFILE" 2>&1 </dev/null & echo $!', "spawn"}
  for _, a in ipairs(argv) do sh[#sh + 1] = a end
  local envt = {LOGFILE = logfile}
  for k, v in pairs(e or {}) do envt[k] = v end
  local r = proc.run{argv = sh, env = envt, check = true}
  return tonumber(r.stdout:match("%d+"))
end

function M.alive(pid)
  return proc.run{argv = {"kill", "-0", tostring(pid)}}.status == 0
end

function M.wait_until(what, fn, timeout)
  local deadline = time.monotonic() + (timeout or 60)
  while time.monotonic() < deadline do
    local v = fn()
    if v then return v end
    time.sleep(0.1)
  end
  error("timed out waiting for " .. what, 2)
end

-- Un-fences the primary database and drops everything the test made on both sides: the
-- subscription (without touching the slot), the slot on the primary, then both databases.
function M:cleanup()
  local slot = "clubio_dr_" .. self.db
  pcall(function()
    local a <close> = pgdump.connect(self.primary_admin)
    a:query("ALTER DATABASE " .. self.db .. " ALLOW_CONNECTIONS true")
    a:query("ALTER DATABASE " .. self.db .. " RESET default_transaction_read_only")
  end)
  pcall(function()
    local d <close> = pgdump.connect(self.dr_url)
    if d:query("SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", {slot})[1] then
      d:query("ALTER SUBSCRIPTION " .. slot .. " DISABLE")
      d:query("ALTER SUBSCRIPTION " .. slot .. " SET (slot_name = NONE)")
      d:query("DROP SUBSCRIPTION " .. slot)
    end
  end)
  pcall(function()
    local a <close> = pgdump.connect(self.primary_admin)
    for _ = 1, 100 do
      local r = a:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {slot})[1]
      if not r then break end
      if r.active == "f" then a:query("SELECT pg_drop_replication_slot($1)", {slot}) break end
      time.sleep(0.1)
    end
  end)
  -- the subscriptions left on either side (the failback's is on the primary), then every slot
  -- of the test's database (a failover leaves the failback slot on the DR side; a database with
  -- a logical slot cannot be dropped)
  for _, u in ipairs{self.primary_url, self.dr_url} do
    pcall(function()
      local c <close> = pgdump.connect(u)
      c:query("SET default_transaction_read_only = off")
      for _, r in ipairs(c:query("SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())")) do
        c:query('ALTER SUBSCRIPTION "' .. r.subname .. '" DISABLE')
        c:query('ALTER SUBSCRIPTION "' .. r.subname .. '" SET (slot_name = NONE)')
        c:query('DROP SUBSCRIPTION "' .. r.subname .. '"')
      end
    end)
  end
  for _, u in ipairs{self.primary_admin, self.dr_admin} do
    pcall(function()
      local c <close> = pgdump.connect(u)
      c:query("ALTER DATABASE " .. self.db .. " ALLOW_CONNECTIONS true")
      c:query("ALTER DATABASE " .. self.db .. " RESET default_transaction_read_only")
      for _ = 1, 100 do
        local busy = false
        for _, r in ipairs(c:query("SELECT slot_name, active FROM pg_replication_slots WHERE database = $1", {self.db})) do
          if r.active == "t" then busy = true else c:query("SELECT pg_drop_replication_slot($1)", {r.slot_name}) end
        end
        if not busy then break end
        time.sleep(0.1)
      end
      c:query("DROP DATABASE IF EXISTS " .. self.db .. " WITH (FORCE)")
    end)
  end
  proc.run{argv = {"rm", "-rf", self.dir}}
end

return M
