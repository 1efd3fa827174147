-- dr-test on the sandbox: the checklist end to end (snapshot, simulated failure of the primary's
-- database, failover, application checks, integrity, RTO/RPO, fail back), its Markdown and JSON
-- report against the runbook document's objectives, and a failing check: the test fails, says
-- so in the report, and normal operations are restored all the same.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local cjson, neon, env = require "cjson", require "neon", require "env"

local f = F.new("drt")
local password = require("clubio.dr").parse_url(f.primary_url).password

local function read(path)
  local fh = assert(io.open(path, "r"))
  local s = fh:read("a")
  fh:close()
  return s
end

-- the application is back on the primary, which takes writes, and replication runs again
local function normal_operations()
  local p <close> = f:primary()
  local id = p:query("INSERT INTO items (name) VALUES ('after the test') RETURNING id")[1].id
  F.wait_until("the new row on the DR side", function()
    local d <close> = f:dr()
    return d:query("SELECT 1 FROM items WHERE id = $1", {id})[1] ~= nil
  end)
  T.ok(read(f.app_env):find(tostring(f.primary_url), 1, true) ~= nil, "the application points at the primary again")
end

T.case("dr-test refuses to run before replication is set up", function()
  local r = f:run{"dr-test", "--yes"}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "DR test failed at 'record the current state': replication is not set up")
end)

T.case("dr-test: the checklist passes and the report compares with the objectives", function()
  T.eq(f:run{"dr-setup"}.status, 0)
  local checks = f.dir .. "/checks.lua"
  local fh = assert(io.open(checks, "w"))
  fh:write([[return {
  {name = "items readable", sql = "SELECT id FROM items ORDER BY id LIMIT 5", min_rows = 5},
  {name = "owner 1", sql = "SELECT owner FROM accounts WHERE id = $1", params = {1}, expect = "owner 1"},
  {name = "can take an order", sql = "INSERT INTO items (name) VALUES ('check')", write = true},
}]])
  fh:close()
  local r = f:run{"dr-test", "--yes", "--json", "--checks", checks}
  T.eq(r.status, 0, r.all)
  T.no_match(r.all, password)
  local rep = r.doc.result
  T.eq(rep.ok, true)
  T.eq(rep.objectives.rto_seconds, 14400)
  T.eq(rep.objectives.rpo_seconds, 3600)
  T.ok(rep.measured.rto_seconds > 0 and rep.measured.rto_seconds < 14400, "RTO measured")
  T.eq(type(rep.measured.rpo_seconds), "number")
  T.eq(rep.measured.rows_lost, 0)
  T.eq(rep.passed.integrity, true)
  T.eq(#rep.checks, 3)
  T.eq(#rep.scenarios, 4)
  T.eq(rep.scenarios[3].scenario, "Region failure")
  T.eq(rep.scenarios[3].met, true)
  T.eq(#rep.tables, 3, "items, accounts, events (the heartbeat is ours)")
  local names = {}
  for _, c in ipairs(rep.checklist) do names[#names + 1] = c.item end
  T.eq(table.concat(names, "|"), "notify stakeholders|record the current state|verify the DR environment is ready|" ..
       "create a snapshot|simulate the primary's failure|run the failover|verify application functionality|" ..
       "verify data integrity|measure RTO and RPO|restore normal operations|delete the snapshot|write the report")
  -- the report files
  local md = read(rep.report.markdown)
  T.match(md, "Result: %*%*PASSED%*%*")
  T.match(md, "| RTO %(failure to DR taking writes%) | 4 hours | [%d.]+ s | met |")
  T.match(md, "| Region failure | 4 hours | 1 hour | Failover to DR region")
  T.match(md, "| Database corruption | 1 hour | 15 min | .* | not exercised |")
  T.match(md, "%- %[x%] execution: simulate the primary's failure")
  T.no_match(md, password)
  local js = cjson.decode(read(rep.report.json))
  T.eq(js.ok, true)
  T.eq(js.failover.steps[1].step, "check-dr-health")
  -- the snapshot branch was made and removed again
  local found = false
  for _, b in ipairs(neon.client{project_id = env.get("NEON_PROJECT_ID_PRIMARY")}:branches()) do
    if b.name == rep.snapshot.branch then found = true end
  end
  T.ok(not found, "snapshot deleted")
  normal_operations()
end)

T.case("a failing application check fails the test; operations are restored all the same", function()
  local checks = f.dir .. "/bad-checks.lua"
  local fh = assert(io.open(checks, "w"))
  fh:write([[return {{name = "a table the app needs", sql = "SELECT * FROM invoices"}}]])
  fh:close()
  local r = f:run{"dr-test", "--yes", "--checks", checks, "--keep-snapshot"}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "DR test failed at 'verify application functionality': 1 of 1 application checks failed")
  local md = read(r.stderr:match("the report is (%S+%.md)"))
  T.match(md, "Result: %*%*FAILED%*%*")
  T.match(md, "%- %[ %] a table the app needs: .*invoices")
  T.match(md, "%- %[x%] post%-test: restore normal operations")
  local js = cjson.decode(read(r.stderr:match("the report is (%S+)%.md") .. ".json"))
  T.eq(js.ok, false)
  T.eq(js.passed.restored, true)
  local n = neon.client{project_id = env.get("NEON_PROJECT_ID_PRIMARY")}
  T.ok(n:branch(js.snapshot.branch) ~= nil, "--keep-snapshot kept the snapshot")
  n:delete_branch(js.snapshot.branch)
  normal_operations()
end)

f:cleanup()
return T.finish()
