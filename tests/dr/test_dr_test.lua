-- dr-test on the sandbox. The default rehearsal on copies (a branch of the primary, a temporary
-- DR database, a scratch application target): the checklist passes with its report, while a
-- writer keeps committing on the production primary without a single failure, and afterwards no
-- trace is left (branches, databases, slots, the application target, the heartbeat). An unlogged
-- table is named and left out, not a false "objectives not met". A failing check fails the test
-- and the copies are removed all the same. --production refuses without a terminal, even with
-- --yes; on a terminal (util-linux `script` gives it one), typed confirmation, it fails the
-- production pair over and back with the failback, and a write taken on the DR side meanwhile
-- reaches the primary.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local read, write = T.read, T.write
local F = require "dr_fixture"
local cjson, neon, env, proc, pgdump = require "cjson", require "neon", require "env", require "proc", require "pgdump"

local f = F.new("drt")
local password = require("clubio.dr").parse_url(f.primary_url).password
local nprimary = neon.client{project_id = env.get("NEON_PROJECT_ID_PRIMARY")}


-- everything a DR test could leave behind, as one comparable string
local function traces()
  local out = {}
  local names = {}
  for _, b in ipairs(nprimary:branches()) do names[#names + 1] = b.name end
  table.sort(names)
  out[#out + 1] = "branches: " .. table.concat(names, ",")
  for side, u in pairs{primary = f.primary_admin, dr = f.dr_admin} do
    local c <close> = pgdump.connect(u)
    local dbs, slots = {}, {}
    for _, r in ipairs(c:query("SELECT datname FROM pg_database ORDER BY 1")) do dbs[#dbs + 1] = r.datname end
    for _, r in ipairs(c:query("SELECT slot_name FROM pg_replication_slots ORDER BY 1")) do slots[#slots + 1] = r.slot_name end
    out[#out + 1] = side .. " databases: " .. table.concat(dbs, ",")
    out[#out + 1] = side .. " slots: " .. table.concat(slots, ",")
  end
  local p <close> = f:primary()
  local hb = p:query("SELECT id, note, at::text AS at FROM clubio_dr_heartbeat ORDER BY id")
  for _, r in ipairs(hb) do out[#out + 1] = "heartbeat " .. r.id .. " " .. tostring(r.note) .. " " .. r.at end
  out[#out + 1] = "app env: " .. tostring(read(f.app_env))
  table.sort(out)
  return table.concat(out, "\n")
end

T.case("dr-test refuses to run before replication is set up", function()
  local r = f:run{"dr-test"}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "DR test failed at 'record the current state': replication is not set up")
end)

T.case("an unlogged table: dr-setup names it and leaves it out (no REPLICA IDENTITY FULL hint)", function()
  local p <close> = f:primary()
  p:query("CREATE UNLOGGED TABLE cache (k text, v text); INSERT INTO cache SELECT g::text, 'v' FROM generate_series(1, 20) g")
  local r = f:run{"dr-setup"}
  T.eq(r.status, 0, r.all)
  T.match(r.all, "not replicated: public%.cache %(unlogged%)")
  T.no_match(r.all, "REPLICA IDENTITY FULL")
  write(f.app_env, "DATABASE_URL='the application's own setting'\n")
end)

local checks = write(f.dir .. "/checks.lua", [[return {
  {name = "items readable", sql = "SELECT id FROM items ORDER BY id LIMIT 5", min_rows = 5},
  {name = "owner 1", sql = "SELECT owner FROM accounts WHERE id = $1", params = {1}, expect = "owner 1"},
  {name = "can take an order", sql = "INSERT INTO items (name) VALUES ('check')", write = true},
}]])

T.case("the default rehearsal: passes on copies, the primary writable throughout, no trace left", function()
  local before = traces()
  local wlog, wstop, werr = f.dir .. "/w.ids", f.dir .. "/w.stop", f.dir .. "/w.err"
  local pid = F.spawn({F.BIN, "run", F.HERE .. "/writer.lua"},
                      {WRITER_URL = tostring(f.primary_url), WRITER_LOG = wlog, WRITER_STOP = wstop}, werr)
  F.wait_until("the writer's first rows", function() return (read(wlog) or ""):find("\n") ~= nil end)
  local n0 = select(2, read(wlog):gsub("\n", ""))
  local r = f:run{"dr-test", "--json", "--checks", checks}
  local n1 = select(2, read(wlog):gsub("\n", ""))
  write(wstop, "")
  F.wait_until("the writer to stop", function() return not F.alive(pid) end)
  T.eq(r.status, 0, r.all)
  T.no_match(r.all, password)
  T.ok(n1 > n0, "the writer kept committing on the primary during the test")
  T.eq(read(werr) or "", "", "not one of the writer's transactions failed")
  local rep = r.doc.result
  T.eq(rep.mode, "rehearsal")
  T.eq(rep.ok, true)
  T.eq(rep.passed.integrity, true)
  T.eq(rep.passed.restored, true)
  T.eq(rep.measured.rows_lost, 0)
  T.eq(#rep.tables, 3, "items, accounts, events: the unlogged table is not compared")
  T.match(rep.notes[1], "not replicated: public%.cache %(unlogged%)")
  T.match(r.stdout, '"scenario":"Region failure"')
  local names = {}
  for _, c in ipairs(rep.checklist) do names[#names + 1] = c.item end
  T.eq(table.concat(names, "|"), "notify stakeholders|record the current state|verify the DR environment is ready|" ..
       "create the copies|simulate the primary's failure|run the failover|verify application functionality|" ..
       "verify data integrity|measure RTO and RPO|remove the copies|write the report")
  local steps = {}
  for _, s in ipairs(rep.failover.steps) do steps[#steps + 1] = s.step .. ":" .. s.status end
  T.eq(table.concat(steps, " "), "check-dr-health:ok measure-lag:ok fence-primary:ok stop-replication:ok sync-sequences:ok " ..
       "verify-writes:ok update-app-target:ok update-routing:skipped notify:ok")
  local md = read(rep.report.markdown)
  T.match(md, "Result: %*%*PASSED%*%*")
  T.match(md, "Mode: %*%*rehearsal%*%* on copies")
  T.match(md, "| RTO %(failure to DR taking writes%) | 4 hours | [%d.]+ s | met |")
  T.no_match(md, password)
  -- no trace: the same branches, databases, slots, heartbeat and application target as before
  T.eq(traces(), before)
  T.eq(#f:journal_entries("dr-failover"), 0, "no dr-failover run in the journal: the rehearsal's is dr-test-failover")
  -- production replication untouched: a new row on the primary reaches the DR side
  local p <close> = f:primary()
  local id = p:query("INSERT INTO items (name) VALUES ('after the rehearsal') RETURNING id")[1].id
  F.wait_until("the new row on the DR side", function()
    local d <close> = f:dr()
    return d:query("SELECT 1 FROM items WHERE id = $1", {id})[1] ~= nil
  end)
end)

T.case("a failing check fails the rehearsal; the copies are removed all the same", function()
  local before = traces()
  local bad = write(f.dir .. "/bad-checks.lua", [[return {{name = "a table the app needs", sql = "SELECT * FROM invoices"}}]])
  local r = f:run{"dr-test", "--checks", bad}
  T.eq(r.status, 4, r.all)
  T.match(r.stderr, "DR test failed at 'verify application functionality': 1 of 1 application checks failed")
  local md = read(r.stderr:match("the report is (%S+%.md)"))
  T.match(md, "Result: %*%*FAILED%*%*")
  T.match(md, "%- %[ %] a table the app needs: .*invoices")
  T.match(md, "%- %[x%] post%-test: remove the copies")
  T.eq(traces(), before)
end)

T.case("--production refuses without a terminal, --yes or not; nothing changes", function()
  local before = traces()
  local r = f:run{"dr-test", "--production", "--yes"}
  T.eq(r.status, 5, r.all)
  T.match(r.stderr, "needs a person at a terminal")
  T.eq(traces(), before)
  r = f:run({"dr-test", "--production", "--yes"}, {CLUBIO_DR_JOB = "dr-test"})
  T.eq(r.status, 5, r.all)
end)

T.case("--production on a terminal: the production pair fails over and back; a DR write reaches the primary", function()
  -- a failback site step writes on the DR side before the failback starts, as the application
  -- (pointed at the DR side since the failover) would
  local site = f.dir .. "/site"
  proc.run{argv = {"mkdir", "-p", site}, check = true}
  write(site .. "/dr-failback-site.lua", [[
return function(steps, edit, dr)
  edit.insert_before(steps, "check-primary", {name = "app-writes-on-dr", run = function(ctx)
    local d <close> = dr.connect_dr(ctx, {as_app = true})
    d:query("INSERT INTO items (name) VALUES ('written on DR during the test')")
  end})
end
]])
  local project = env.get("NEON_PROJECT_ID_PRIMARY")
  local cmd = {"script", "-qec", "\"$CLUBIO_DR_BIN\" run dr-test --production --json --checks \"$CHECKS\"", "/dev/null"}
  local e = {CLUBIO_DR_BIN = F.BIN, CHECKS = checks, CLUBIO_DR_PATH = site}
  for k, v in pairs(f.env) do e[k] = v end
  local r = proc.run{argv = cmd, env = e, stdin = project .. "\n"}
  local out = r.stdout:gsub("\r", "")
  T.eq(r.status, 0, out)
  T.match(out, "Type the primary's project id")
  local doc
  for line in out:gmatch("[^\n]+") do
    local okj, d = pcall(cjson.decode, line)
    if okj and type(d) == "table" and d.job == "dr-test" and d.result then doc = d end
  end
  T.ok(doc ~= nil, "the --json result")
  local rep = doc.result
  T.eq(rep.mode, "production")
  T.eq(rep.ok, true)
  T.eq(rep.failback.mode, "changes", "every table matched at cutover: only the DR side's changes go back")
  local p <close> = f:primary()
  T.eq(p:query("SELECT count(*) AS n FROM items WHERE name = 'written on DR during the test'")[1].n, "1")
  T.ok(read(f.app_env):find(tostring(f.primary_url), 1, true) ~= nil, "the application points at the primary again")
  local id = p:query("INSERT INTO items (name) VALUES ('after the production test') RETURNING id")[1].id
  F.wait_until("the new row on the DR side", function()
    local d <close> = f:dr()
    return d:query("SELECT 1 FROM items WHERE id = $1", {id})[1] ~= nil
  end)
end)

f:cleanup()
return T.finish()
