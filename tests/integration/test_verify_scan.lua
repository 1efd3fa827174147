-- verify.sql_scan against the stock pg_dump: the per-table rows and digests it recomputes from
-- a real plain-SQL dump equal what the server's own `COPY table TO STDOUT` gives (hashed by
-- sha256sum), for awkward data (tabs, newlines, backslashes, unicode, NULLs, bytea) and names.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local proc = require "proc"
local env = require "env"
local verify = require "verify"

local pg_env, psql = T.pg_env, T.psql

local DB = "verify_scan_test"
psql("postgres", "DROP DATABASE IF EXISTS " .. DB)
psql("postgres", "CREATE DATABASE " .. DB)
psql(DB, [[
CREATE TABLE plain_t (id int primary key, v text);
INSERT INTO plain_t SELECT g, 'value ' || g FROM generate_series(1, 20000) g;
CREATE TABLE "Mixed Case" ("a b" text, b bytea, n numeric, j jsonb);
INSERT INTO "Mixed Case" VALUES (E'tab\there', '\xdeadbeef', 1.5, '{"k": [1, 2]}'),
  (E'new\nline', NULL, NULL, NULL), (E'back\\slash', '\x00', -0.0001, '"ünïcode ✓"'), ('', '', 0, 'null');
CREATE TABLE empty_t (id int);
]])

local function sha256_of_copy(table_sql)
  local r = pipe.run{pipe.command{argv = {"psql", "-X", "-c", "COPY " .. table_sql .. " TO STDOUT"}, env = pg_env(DB)},
                     pipe.buffer{limit = 64 << 20}}
  local h = proc.run{argv = {"sha256sum"}, stdin = r.buffer.data}
  return h.stdout:match("^(%x+)"), r.buffer.data
end

T.case("scan of a stock pg_dump matches COPY TO STDOUT table by table", function()
  local r = pipe.run{pipe.command{argv = {"pg_dump", "--format=plain", DB}, env = pg_env(DB)},
                     verify.sql_scan{label = "scan"}}
  T.ok(r.scan.complete, "pg_dump's completion line seen")
  T.eq(r.scan.truncated, false)
  T.eq(r.scan.table_count, 3)
  local cases = {["public.plain_t"] = "plain_t", ['public."Mixed Case"'] = '"Mixed Case"', ["public.empty_t"] = "empty_t"}
  for name, sql in pairs(cases) do
    local got = r.scan.tables[name]
    T.ok(got, "table " .. name .. " found")
    local want, data = sha256_of_copy(sql)
    T.eq(got.sha256, want, name .. " digest")
    local rows = select(2, data:gsub("\n", ""))
    T.eq(got.rows, rows, name .. " rows")
  end
  T.eq(r.scan.tables["public.plain_t"].rows, 20000)
end)

T.case("the scan as an observing filter passes the dump through unchanged", function()
  local r = pipe.run{pipe.command{argv = {"pg_dump", "--format=plain", DB}, env = pg_env(DB)},
                     verify.sql_scan_filter{label = "scan"}, pipe.count{label = "n"}, pipe.buffer{limit = 64 << 20}}
  T.eq(r.n.bytes, #r.buffer.data)
  T.eq(r.scan.tables["public.plain_t"].rows, 20000)
  T.match(r.buffer.data, "PostgreSQL database dump complete")
end)

psql("postgres", "DROP DATABASE " .. DB)
return T.finish()
