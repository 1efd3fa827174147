-- A tiny test harness for Lua tests run by the host: named cases, assertions that say what
-- differed, and the closing "N passed, N failed" line CI reads. A failing run exits non-zero.
--
--   local T = require "testing"
--   T.case("adds", function() T.eq(1 + 1, 2) end)
--   return T.finish()
local M = {}
local passed, failed = 0, 0

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function M.eq(got, want, what)
  if got ~= want then
    error(string.format("%sexpected %s, got %s", what and (what .. ": ") or "", show(want), show(got)), 2)
  end
end

function M.ok(cond, what)
  if not cond then error("expected true: " .. (what or "condition"), 2) end
end

function M.match(s, pattern, what)
  if type(s) ~= "string" or not s:find(pattern) then
    error(string.format("%sexpected %s to match %q", what and (what .. ": ") or "", show(s), pattern), 2)
  end
end

function M.no_match(s, pattern, what)
  if type(s) == "string" and s:find(pattern) then
    error(string.format("%sexpected %s not to match %q", what and (what .. ": ") or "", show(s), pattern), 2)
  end
end

-- Calls fn, which must raise; returns the error value.
function M.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error, but the call succeeded", 2) end
  return err
end

function M.case(name, fn)
  local ok, err = pcall(fn)
  if ok then
    passed = passed + 1
    io.stderr:write("ok ", name, "\n")
  else
    failed = failed + 1
    io.stderr:write("not ok ", name, ": ", tostring(err), "\n")
  end
end

function M.tmpdir()
  local p = io.popen("mktemp -d /tmp/clubio-test-XXXXXX")
  local d = p:read("l")
  p:close()
  return d
end

-- A file's bytes, or nil when it does not exist.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes text to path (replacing it); returns path.
function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Waits (bounded: 2,400 tries 50 ms apart) for something another process does and returns
-- pred's value; the bound is a hang guard, never a timing assertion.
function M.wait_until(what, pred)
  for _ = 1, 2400 do
    local v = pred()
    if v then return v end
    require("time").sleep(0.05)
  end
  error("gave up waiting for " .. what, 2)
end

-- The libpq environment for the sandbox's PostgreSQL as its superuser (the password in
-- PGPASSWORD, never argv), on database db ("postgres" by default).
function M.pg_env(db)
  local env = require "env"
  return {PGHOST = "127.0.0.1", PGPORT = env.get("SANDBOX_PG_PORT"), PGUSER = "postgres",
          PGDATABASE = db or "postgres", PGPASSWORD = env.get("SANDBOX_PG_ADMIN_PW")}
end

-- Runs sql through the stock psql on the sandbox's database db; returns its unaligned output,
-- raises with psql's stderr when it fails.
function M.psql(db, sql)
  local r = require("proc").run{argv = {"psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql},
                                env = M.pg_env(db)}
  if r.status ~= 0 then error("psql failed: " .. r.stderr) end
  return r.stdout
end

-- Each table's rows and order-independent digest ("N rows <set_sha256>") over the open
-- pgdump connection c: two databases hold the same rows when these are equal.
function M.table_states(c, tables)
  local out = {}
  for _, t in ipairs(tables) do
    local d = c:table_digest(t)
    out[t] = string.format("%d rows %s", d.rows, d.set_sha256)
  end
  return out
end

function M.finish()
  print(string.format("%d passed, %d failed", passed, failed))
  return failed == 0 and 0 or 1
end

return M
