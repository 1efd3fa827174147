-- dr-setup and dr-failover end to end on the sandbox's neon-local (primary and DR projects are
-- real PostgreSQL 15 clusters): replication with its lag, a failover while an application-like
-- writer keeps inserting into the primary (every row the primary committed is on the DR side),
-- then inserts on the DR side that must not collide with the replicated ids.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local time, env = require "time", require "env"

local f = F.new("fo")
local password = require("clubio.dr").parse_url(f.primary_url).password

T.case("dr-setup: schema copied, publication and subscription, initial copy, lag", function()
  local r = f:run{"dr-setup", "--json"}
  T.eq(r.status, 0, r.all)
  local res = r.doc.result
  T.eq(res.subscription_created, true)
  T.eq(res.publication_created, true)
  T.eq(#res.schema_copied, 4, "items, accounts, events and the heartbeat")
  T.eq(res.tables_synced, 4)
  T.eq(res.status.subscribed, true)
  T.eq(res.status.enabled, true)
  T.eq(type(res.status.lag_bytes), "number")
  T.eq(type(res.status.lag_seconds), "number")
  T.no_match(r.all, password, "the password is neither printed nor logged")
  local d <close> = f:dr()
  T.eq(d:query("SELECT count(*) AS n FROM items")[1].n, "2000")
  T.eq(d:query("SELECT count(*) AS n FROM accounts")[1].n, "50")
end)

T.case("dr-setup: idempotent; a new table on both sides is picked up by the refresh", function()
  local p <close> = f:primary()
  p:query("CREATE TABLE notes (id serial PRIMARY KEY, body text); INSERT INTO notes (body) VALUES ('a'), ('b')")
  local r = f:run{"dr-setup", "--json"}
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.result.subscription_created, nil)
  T.eq(r.doc.result.schema_copied[1], "public.notes", "only the missing table's schema is copied")
  local d <close> = f:dr()
  T.eq(d:query("SELECT count(*) AS n FROM notes")[1].n, "2")
end)

T.case("dr-setup --status: the lag in bytes and seconds, text and JSON", function()
  local p <close> = f:primary()
  p:query("INSERT INTO items (name) SELECT 'more ' || g FROM generate_series(1, 100) g")
  local r = f:run{"dr-setup", "--status", "--json"}
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.status.primary_reachable, true)
  T.eq(r.doc.status.running, true)
  T.ok(r.doc.status.lag_seconds >= 0, "heartbeat measured")
  local t = f:run{"dr-setup", "--status"}
  T.eq(t.status, 0, t.all)
  T.match(t.stdout, "lag: [%d.]+ [KMG]?i?B behind %(slot active%), heartbeat applied in [%d.]+ s")
  T.no_match(t.all, password)
end)

T.case("dr-setup refuses a table without a primary key, naming it", function()
  local p <close> = f:primary()
  p:query("CREATE TABLE nokey (v int)")
  local r = f:run{"dr-setup"}
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "tables without a primary key or replica identity: public%.nokey")
  T.match(r.stderr, "REPLICA IDENTITY FULL")
  p:query("DROP TABLE nokey")
end)

local writer_pid, writer_log, writer_stop, writer_err
T.case("dr-failover while a writer keeps inserting into the primary: nothing it committed is lost", function()
  writer_log, writer_stop, writer_err = f.dir .. "/writer.ids", f.dir .. "/writer.stop", f.dir .. "/writer.err"
  writer_pid = F.spawn({F.BIN, "run", F.HERE .. "/writer.lua"},
                       {WRITER_URL = tostring(f.primary_url), WRITER_LOG = writer_log, WRITER_STOP = writer_stop}, writer_err)
  local function committed()
    local ids, fh = {}, io.open(writer_log, "r")
    if fh then for l in fh:lines() do ids[#ids + 1] = tonumber(l) end fh:close() end
    return ids
  end
  F.wait_until("the writer's first 200 rows", function() return #committed() >= 200 end)
  local before = #committed()
  local r = f:run{"dr-failover", "--yes", "--json"}
  T.eq(r.status, 0, r.all)
  T.no_match(r.all, password)
  -- the writer was still at it: its attempts now fail on the fenced primary
  F.wait_until("the writer to hit the fence", function()
    local fh = io.open(writer_err, "r")
    local s = fh and fh:read("a") or ""
    if fh then fh:close() end
    return s:find("read%-only") ~= nil
  end)
  io.open(writer_stop, "w"):close()
  F.wait_until("the writer to stop", function() return not F.alive(writer_pid) end)
  local ids = committed()
  T.ok(#ids > before, "rows were committed while the failover ran")
  local res = r.doc.result.results
  T.eq(res["fence-primary"].fenced, true)
  T.eq(res["stop-replication"].drained, true)
  T.eq(res["stop-replication"].slot_dropped, "clubio_dr_" .. f.db)
  -- every row the primary committed is on the DR side, and nothing else
  local p <close> = f:primary()
  local d <close> = f:dr()
  T.eq(d:table_digest("public.events").set_sha256, p:table_digest("public.events").set_sha256, "events equal")
  local on_dr = {}
  for _, row in ipairs(d:query("SELECT id FROM events")) do on_dr[tonumber(row.id)] = true end
  local missing = 0
  for _, id in ipairs(ids) do if not on_dr[id] then missing = missing + 1 end end
  T.eq(missing, 0, "ids the writer saw committed that are missing on the DR side")
  T.eq(d:query("SELECT count(*) AS n FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())")[1].n, "0", "replication stopped")
  T.eq(p:query("SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name = $1", {"clubio_dr_" .. f.db})[1].n, "0")
end)

T.case("after the failover, inserts on the DR side do not collide with replicated ids", function()
  local d <close> = f:dr()
  local maxes = {}
  for _, t in ipairs{"items", "accounts", "events", "notes"} do
    maxes[t] = tonumber(d:query("SELECT max(id) AS m FROM " .. t)[1].m)
  end
  for _ = 1, 5 do
    T.ok(tonumber(d:query("INSERT INTO items (name) VALUES ('after') RETURNING id")[1].id) > maxes.items)
    T.ok(tonumber(d:query("INSERT INTO accounts (owner) VALUES ('after') RETURNING id")[1].id) > maxes.accounts)
    T.ok(tonumber(d:query("INSERT INTO events (writer, seq) VALUES (2, 0) RETURNING id")[1].id) > maxes.events)
    T.ok(tonumber(d:query("INSERT INTO notes (body) VALUES ('after') RETURNING id")[1].id) > maxes.notes)
  end
  T.ok(tonumber(d:query("SELECT nextval('invoice_no') AS n")[1].n) > 5024, "a standalone sequence follows the primary's")
end)

T.case("the application target: an env file pointing at the DR database, mode 0600", function()
  local fh = assert(io.open(f.app_env, "r"))
  local text = fh:read("a")
  fh:close()
  T.match(text, "^DATABASE_URL='postgresql://")
  T.ok(text:find(tostring(f.dr_url), 1, true) ~= nil, "the DR URL")
  local st = require("proc").run{argv = {"stat", "-c", "%a", f.app_env}}
  T.eq(st.stdout, "600\n")
end)

T.case("the journal: every failover step, in order, with timings", function()
  local steps = f:last_run("dr-failover")
  T.eq(table.concat(steps, " "), "check-dr-health:ok measure-lag:ok fence-primary:ok stop-replication:ok sync-sequences:ok " ..
                                 "verify-writes:ok update-app-target:ok update-routing:ok notify:ok")
  for _, e in ipairs(f:journal_entries("dr-failover")) do
    T.eq(type(e.seconds), "number", e.step .. " has its duration")
  end
end)

T.case("dr-failover again: replication already stopped, still safe", function()
  local r = f:run{"dr-failover", "--yes", "--json"}
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.result.results["stop-replication"].dropped, nil)
end)

T.case("dr-setup after a failover: refused while the primary is fenced, and --status says it is not set up", function()
  local r = f:run{"dr-setup"}
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "is read%-only %(fenced by a failover%?%)")
  T.match(r.stderr, "fail back first")
  r = f:run{"dr-setup", "--status"}
  T.eq(r.status, 1, r.all)
  T.match(r.stdout, "not set up: no subscription on the DR side")
end)

if writer_pid and F.alive(writer_pid) then
  io.open(writer_stop, "w"):close()
  require("proc").run{argv = {"kill", tostring(writer_pid)}}
end
f:cleanup()
return T.finish()
