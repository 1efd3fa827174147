-- The Neon API contract: Neon's published OpenAPI description (public-v2-for-users.gen.yaml of the
-- npm package @neondatabase/api-client) is the oracle. neon-local records every exchange
-- (NEON_LOCAL_RECORD, its --record), and tests/sandbox/neon-local/openapi_check.js checks each
-- request (path, method, query parameters, body, required-ness) and response (status, body)
-- against it. Here:
--   1. the checker itself catches contract breaks (crafted exchanges, one per kind of break);
--   2. every Neon-using script runs against a neon-local project of the test's own, and every
--      exchange each one caused is checked (backup-database, verify-backup, pitr-recovery,
--      pitr-test, restore-from-backup, restore-test --neon-branch, daily-backup-failure,
--      data-corruption, retention; dr-setup and dr-failover on the sandbox's two projects);
--      plus what the scripts must send: preserve_under_name on restores, recovery points to the
--      millisecond;
--   3. everything recorded in this sandbox so far (every test's exchanges, neonctl's too).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" ..
  package.path
local T = require "testing"
local proc, env, cjson, pgdump, neon, time = require "proc", require "env", require "cjson", require "pgdump",
  require "neon", require "time"
local BIN = env.get("CLUBIO_DR_BIN")
local REC = env.get("NEON_LOCAL_RECORD")
local CHECK = env.get("CLUBIO_DR_TEST_DIR") .. "/sandbox/neon-local/openapi_check.js"

-- openapi_check.js --json over FILE (only PROJECT's exchanges when given)
local function check(file, project)
  local argv = {"node", CHECK, "--json", file}
  if project then argv[#argv + 1] = "--project"; argv[#argv + 1] = project end
  local r = proc.run{argv = argv}
  assert(r.status == 0 or r.status == 1, "openapi_check failed: " .. r.stderr)
  return cjson.decode(r.stdout)
end

local function lines(file)
  local out = {}
  local f = assert(io.open(file))
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

T.case("the oracle catches contract breaks", function()
  local file = T.tmpdir() .. "/bad.jsonl"
  local ex = {
    -- 1: an undeclared body field (a misspelt preserve_under_name would be ignored by Neon)
    {method = "POST", path = "/api/v2/projects/p-1/branches/br-a-1/restore", query = "",
     request = {source_branch_id = "br-b-1", preserve_name = "old"}, status = 400, response = {code = "x", message = "m"}},
    -- 2: a timestamp that is not RFC 3339
    {method = "POST", path = "/api/v2/projects/p-1/branches", query = "",
     request = {branch = {parent_timestamp = "2024-01-15 10:30"}}, status = 400, response = {code = "x", message = "m"}},
    -- 3: a response without the fields the API marks required
    {method = "GET", path = "/api/v2/projects/p-1/branches/br-a-1", query = "", status = 200,
     response = {branch = {id = "br-a-1"}}},
    -- 4: a path the API does not have
    {method = "GET", path = "/api/v2/projects/p-1/nonsense", query = "", status = 404, response = {code = "x", message = "m"}},
    -- 5: required query parameters missing
    {method = "GET", path = "/api/v2/projects/p-1/connection_uri", query = "branch_id=br-a-1", status = 200,
     response = {uri = "postgresql://x"}},
    -- 6: a query parameter of the wrong type
    {method = "GET", path = "/api/v2/projects/p-1/operations", query = "limit=abc", status = 200, response = {operations = {}}},
    -- 7: a method the path does not have
    {method = "PATCH", path = "/api/v2/projects/p-1/branches/br-a-1/restore", query = "", status = 404,
     response = {code = "x", message = "m"}},
    -- 8: right
    {method = "GET", path = "/api/v2/projects/p-1/connection_uri", query = "database_name=d&role_name=r&pooled=true",
     status = 200, response = {uri = "postgresql://x"}},
  }
  local f = assert(io.open(file, "w"))
  for _, x in ipairs(ex) do f:write(cjson.encode(x), "\n") end
  f:close()
  local doc = check(file)
  T.eq(doc.checked, 8)
  local by_line = {}
  for _, v in ipairs(doc.violations) do by_line[v.line] = (by_line[v.line] or "") .. v.problem .. "; " end
  T.match(by_line[1] or "", "preserve_name: not a property")
  T.match(by_line[2] or "", "RFC 3339")
  T.match(by_line[3] or "", "required property project_id is missing")
  T.match(by_line[3] or "", "required property annotation is missing")
  T.match(by_line[4] or "", "no path")
  T.match(by_line[5] or "", "required query parameter database_name")
  T.match(by_line[6] or "", "not an integer")
  T.match(by_line[7] or "", "no PATCH")
  T.eq(by_line[8], nil, "a right exchange passes")
end)

-- A project of the test's own: restoring and promoting its default branch disturbs no other test.
local PROJECT = require("neonlocal").project(string.format("contract-%d-%d", os.time(), math.random(1000, 9999)))
local n = neon.client{project_id = PROJECT}
local MAIN_URL = n:connection_uri{branch = "main", database = "clubio", role = "app"}
local hist = T.tmpdir() .. "/history.jsonl"
local base_env = {NEON_PROJECT_ID = PROJECT, DATABASE_URL = MAIN_URL, CLUBIO_DR_JOURNAL = T.tmpdir() .. "/journal.jsonl",
                  CLUBIO_DR_VERIFY_HISTORY = hist, EXPORT_PREFIX = "contract-" .. PROJECT .. "/"}

-- exchanges of PROJECT recorded while each script ran: script -> {first line, last line}
local spans, order = {}, {}
local function run(name, args, extra, ok_status)
  local e = {}
  for k, v in pairs(base_env) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local before = #lines(REC)
  local r = proc.run{argv = argv, env = e}
  spans[name] = {before + 1, #lines(REC)}
  order[#order + 1] = name
  T.eq(r.status, ok_status or 0, name .. ": " .. r.stderr)
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end

-- parsed exchanges of PROJECT between two lines of the recording
local function exchanges(span)
  local out = {}
  local all = lines(REC)
  for i = span[1], math.min(span[2], #all) do
    local x = cjson.decode(all[i])
    if x.path:find("/projects/" .. PROJECT, 1, true) then x.line = i; out[#out + 1] = x end
  end
  return out
end

local T0
T.case("every Neon-using script runs against neon-local", function()
  run("demo-data", {"demo-data", "300"})
  run("backup-database", {"backup-database", "--json"})
  run("verify-backup", {"verify-backup", "--json"})
  -- a point with milliseconds: the scripts must not cut it to the second
  time.sleep(1.1)
  T0 = time.iso(time.now() - 0.5, true)
  time.sleep(0.2)
  run("pitr-recovery", {"pitr-recovery", T0, "--json"})
  run("pitr-test", {"pitr-test", T0, "--json"})
  run("restore-from-backup", {"restore-from-backup", "backup-" .. time.ymd(time.now()), "--yes", "--json"})
  run("export-database", {"export-database", "--json"})
  run("restore-test --neon-branch", {"restore-test", "latest", "--neon-branch", "--json"}, {RESTORE_TEST_DATABASE = "clubio",
      RESTORE_TEST_ROLE = "app"})
  run("daily-backup-failure", {"daily-backup-failure", "--yes", "--json"})
  -- corrupt a few rows, then recover the table as of T0 (after the demo data, before the damage)
  local url = n:connection_uri{database = "clubio", role = "app"}
  local c <close> = pgdump.connect(url)
  c:query("UPDATE orders SET total = -1, updated_at = now() WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 3)")
  run("data-corruption", {"data-corruption", "orders", "total < 0", "--at", T0, "--yes", "--json"},
      {DATABASE_URL = url})
  run("retention", {"retention", "branches", "--yes", "--json"})
end)

T.case("DR scripts' Neon calls (dr-setup, its status, a dr-failover plan) on the sandbox's projects", function()
  local F = require "dr_fixture"
  local f = F.new("contract")
  local ok, err = pcall(function()
    for _, s in ipairs{{"dr-setup", {"dr-setup", "--yes", "--json"}}, {"dr-setup --status", {"dr-setup", "--status", "--json"}},
                       {"dr-failover --dry-run", {"dr-failover", "--dry-run", "--json"}}} do
      local before = #lines(REC)
      local r = f:run(s[2])
      spans[s[1]] = {before + 1, #lines(REC), dr = true}
      order[#order + 1] = s[1]
      T.eq(r.status, 0, s[1] .. ": " .. r.all)
    end
  end)
  f:cleanup()
  if not ok then error(err, 0) end
end)

T.case("every exchange each script caused follows Neon's OpenAPI description", function()
  local doc = check(REC)
  local bad = {}
  for _, v in ipairs(doc.violations) do bad[v.line] = v end
  local problems = {}
  for _, name in ipairs(order) do
    local span, count = spans[name], 0
    local all = lines(REC)
    for i = span[1], math.min(span[2], #all) do
      local x = cjson.decode(all[i])
      local mine = x.path:find("/projects/" .. PROJECT, 1, true) or
        (span.dr and (x.path:find("/projects/" .. env.get("NEON_PROJECT_ID_PRIMARY"), 1, true) or
                      x.path:find("/projects/" .. env.get("NEON_PROJECT_ID_DR"), 1, true)))
      if mine then
        count = count + 1
        if bad[i] then problems[#problems + 1] = name .. ": " .. bad[i].where .. ": " .. bad[i].problem end
      end
    end
    if name ~= "demo-data" and name ~= "export-database" then
      T.ok(count > 0, name .. " made Neon API calls that were recorded")
    end
  end
  T.eq(#problems, 0, table.concat(problems, "\n"))
end)

T.case("what the scripts must send: preserve_under_name on restores, recovery points to the millisecond", function()
  local restores, points = 0, {}
  for _, name in ipairs(order) do
    if not spans[name].dr then
      for _, x in ipairs(exchanges(spans[name])) do
        if x.method == "POST" and x.path:match("/restore$") then
          restores = restores + 1
          T.ok(type(x.request.preserve_under_name) == "string", name .. " restores with preserve_under_name")
          T.eq(x.status, 200, name .. "'s restore accepted")
        end
        if x.method == "POST" and x.path:match("/branches$") and x.request.branch.parent_timestamp then
          points[name] = x.request.branch.parent_timestamp
        end
      end
    end
  end
  T.ok(restores >= 1, "restore-from-backup restored")
  for _, name in ipairs{"pitr-recovery", "pitr-test", "data-corruption"} do
    T.ok(points[name] and math.abs(time.parse(points[name]) - time.parse(T0)) < 0.0005,
         name .. " sent " .. tostring(points[name]) .. " for " .. T0)
  end
end)

T.case("everything recorded in this sandbox so far follows the description (all tests, neonctl too)", function()
  local doc = check(REC)
  local out = {}
  for i, v in ipairs(doc.violations) do
    if i > 20 then out[#out + 1] = "..."; break end
    out[#out + 1] = string.format("line %d: %s (%s): %s", v.line, v.where, tostring(v.status), v.problem)
  end
  T.ok(doc.checked > 0, "exchanges recorded")
  T.eq(#doc.violations, 0, table.concat(out, "\n"))
end)

return T.finish()
