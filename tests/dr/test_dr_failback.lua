-- dr-failback on the sandbox's neon-local: a failover, writes taken on the DR side (inserts,
-- updates, deletes, a new table, and a writer still inserting while the failback runs), then the
-- failback: every row written on either side is on the primary, its sequences are past every
-- used value, replication primary -> DR runs again, and `dr-setup --resync` refuses to truncate
-- a DR side written to since the failover. Then a failback after the primary was un-fenced by
-- hand: a full copy, after a safety branch.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local neon, env = require "neon", require "env"

local f = F.new("fb")
local password = require("clubio.dr").parse_url(f.dr_url).password
local fb_slot = "clubio_drfb_" .. f.db

local read = T.read
local function n(conn, sql, params) return tonumber(conn:query(sql, params)[1].n) end
local function ids(path)
  local out, fh = {}, io.open(path, "r")
  if fh then for l in fh:lines() do out[#out + 1] = tonumber(l) end fh:close() end
  return out
end
local function same_rows(p, d, tables)
  for _, t in ipairs(tables) do
    T.eq(p:table_digest(t).set_sha256, d:table_digest(t).set_sha256, t .. ": the same rows on both sides")
  end
end

T.case("failover, then the application writes on the DR side", function()
  T.eq(f:run{"dr-setup"}.status, 0)
  local r = f:run{"dr-failover", "--yes", "--json"}
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.result.results["stop-replication"].failback.exact, true, "fenced and drained: an exact failover")
  local d <close> = f:dr()
  d:query("INSERT INTO items (name) SELECT 'on dr ' || g FROM generate_series(1, 300) g")
  d:query("UPDATE accounts SET balance = balance + 1000 WHERE id <= 10")
  d:query("DELETE FROM items WHERE id BETWEEN 100 AND 149")
  d:query("INSERT INTO accounts (owner) VALUES ('dr customer')")
  d:query("SELECT nextval('invoice_no') FROM generate_series(1, 40)")
  d:query("CREATE TABLE dr_only (id serial PRIMARY KEY, v text); INSERT INTO dr_only (v) VALUES ('x'), ('y')")
end)

T.case("dr-setup --resync refuses to truncate a DR side written to since the failover", function()
  local r = f:run{"dr-setup", "--resync", "--yes"}
  -- the primary is still fenced: that is said first; un-fenced, the record is what refuses
  T.ok(r.status ~= 0, r.all)
  local a <close> = require("pgdump").connect(f.primary_admin)
  a:query("ALTER DATABASE " .. f.db .. " RESET default_transaction_read_only")
  r = f:run{"dr-setup", "--resync", "--yes"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "has been failed over to %(at .-%) and may hold writes the primary does not have")
  T.match(r.stderr, "dr%-failback")
  T.match(r.stderr, "%-%-discard%-dr%-writes")
  r = f:run{"dr-setup"}
  T.eq(r.status, 2, r.all)
  T.match(r.stderr, "it is not a replica now")
  local d <close> = f:dr()
  T.eq(n(d, "SELECT count(*) AS n FROM items WHERE name LIKE 'on dr %'"), 300, "nothing truncated")
  a:query("ALTER DATABASE " .. f.db .. " SET default_transaction_read_only = on")
end)

T.case("dr-failback --dry-run checks and changes nothing", function()
  local r = f:run{"dr-failback", "--dry-run"}
  T.eq(r.status, 0, r.all)
  T.match(r.stdout, "dry run: nothing was changed")
  local d <close> = f:dr()
  T.eq(d:query("SELECT current_setting('default_transaction_read_only') AS ro")[1].ro, "off", "the DR side is not fenced")
end)

local writer_log, writer_stop
T.case("dr-failback while a writer keeps inserting on the DR side: only the changes are sent, nothing is lost", function()
  writer_log, writer_stop = f.dir .. "/dr-writer.ids", f.dir .. "/dr-writer.stop"
  local pid = F.spawn({F.BIN, "run", F.HERE .. "/writer.lua"},
                      {WRITER_URL = tostring(f.dr_url), WRITER_LOG = writer_log, WRITER_STOP = writer_stop}, f.dir .. "/dr-writer.err")
  F.wait_until("the writer's first 100 rows on the DR side", function() return #ids(writer_log) >= 100 end)
  local r = f:run{"dr-failback", "--yes", "--json"}
  io.open(writer_stop, "w"):close()
  F.wait_until("the writer to stop", function() return not F.alive(pid) end)
  T.eq(r.status, 0, r.all)
  T.no_match(r.all, password)
  local res = r.doc.result
  T.eq(res.mode, "changes", "exact failover, slot kept, primary still fenced: only the changes")
  T.eq(res.results["replicate-back"].truncated, nil, "nothing truncated on the primary")
  T.eq(table.concat(f:last_run("dr-failback"), " "),
       "check-primary:ok safety-copy:ok replicate-back:ok wait-catch-up:ok fence-dr:ok drain:ok sync-sequences:ok " ..
       "re-establish-replication:ok unfence-primary:ok verify-writes:ok update-app-target:ok update-routing:ok " ..
       "check-replication:ok clear-failover-record:ok notify:ok")
  neon.client{project_id = env.get("NEON_PROJECT_ID_PRIMARY")}:delete_branch(res.results["safety-copy"].branch)
  local p <close> = f:primary()
  local d <close> = f:dr()
  same_rows(p, d, {"public.items", "public.accounts", "public.events", "public.dr_only"})
  -- every id the writer saw committed on the DR side is on the primary
  local on_p = {}
  for _, row in ipairs(p:query("SELECT id FROM events")) do on_p[tonumber(row.id)] = true end
  local committed, missing = ids(writer_log), 0
  for _, id in ipairs(committed) do if not on_p[id] then missing = missing + 1 end end
  T.ok(#committed >= 100)
  T.eq(missing, 0, "ids committed on the DR side missing on the primary")
  T.eq(n(p, "SELECT count(*) AS n FROM items WHERE name LIKE 'on dr %'"), 300)
  T.eq(n(p, "SELECT count(*) AS n FROM items WHERE id BETWEEN 100 AND 149"), 0, "the DR side's deletes")
  T.eq(n(p, "SELECT count(*) AS n FROM accounts WHERE balance >= 1000"), 10, "the DR side's updates")
  T.eq(n(p, "SELECT count(*) AS n FROM dr_only"), 2, "a table made on the DR side, schema and rows")
end)

T.case("after the failback: sequences past every used value, writes on the primary replicate to DR", function()
  local p <close> = f:primary()
  for _, t in ipairs{"items", "accounts", "events", "dr_only"} do
    local max = tonumber(p:query("SELECT max(id) AS m FROM " .. t)[1].m)
    local id = tonumber(p:query("INSERT INTO " .. t .. (t == "accounts" and " (owner) VALUES ('back')" or
                                  t == "events" and " (writer, seq) VALUES (3, 0)" or
                                  t == "dr_only" and " (v) VALUES ('back')" or " (name) VALUES ('back')") .. " RETURNING id")[1].id)
    T.ok(id > max, t .. ": a new id past every used one")
  end
  T.ok(tonumber(p:query("SELECT nextval('invoice_no') AS n")[1].n) > 5064, "the standalone sequence past the DR side's use")
  local id = p:query("INSERT INTO items (name) VALUES ('replicated again') RETURNING id")[1].id
  F.wait_until("the primary's new row on the DR side", function()
    local d <close> = f:dr()
    return d:query("SELECT 1 FROM items WHERE id = $1", {id})[1] ~= nil
  end)
  T.ok(read(f.app_env):find(tostring(f.primary_url), 1, true) ~= nil, "the application points at the primary")
  local d <close> = f:dr()
  T.eq(n(d, "SELECT count(*) AS n FROM pg_publication WHERE pubname = 'clubio_dr_failback'"), 0, "the failover record is gone")
  T.eq(n(d, "SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name = $1", {fb_slot}), 0, "the failback slot is gone")
  T.eq(n(p, "SELECT count(*) AS n FROM pg_subscription WHERE subname = $1", {fb_slot}), 0)
  T.eq(d:query("SELECT current_setting('default_transaction_read_only') AS ro")[1].ro, "on", "the DR side stays fenced: a replica")
  local r = f:run{"dr-setup", "--status", "--json"}
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.status.slot_active, true)
end)

T.case("a failback after the primary was un-fenced by hand: a full copy after a safety branch", function()
  local r = f:run{"dr-failover", "--yes"}
  T.eq(r.status, 0, r.all)
  do
    local d <close> = f:dr()
    d:query("INSERT INTO items (name) SELECT 'second dr ' || g FROM generate_series(1, 50) g")
  end
  local a <close> = require("pgdump").connect(f.primary_admin)
  a:query("ALTER DATABASE " .. f.db .. " RESET default_transaction_read_only")
  do
    local p <close> = f:primary()
    p:query("INSERT INTO items (name) VALUES ('written on the primary while failed over')")
  end
  r = f:run{"dr-failback", "--yes", "--json"}
  T.eq(r.status, 0, r.all)
  local res = r.doc.result
  T.eq(res.mode, "full")
  T.match(res.results["check-primary"].why, "un%-fenced")
  T.ok(res.results["replicate-back"].truncated >= 5, "the primary's copies truncated and copied again")
  local branch = res.results["safety-copy"].branch
  local nc = neon.client{project_id = env.get("NEON_PROJECT_ID_PRIMARY")}
  T.ok(nc:branch(branch) ~= nil, "the safety branch holds the primary as it was")
  nc:delete_branch(branch)
  local p <close> = f:primary()
  local d <close> = f:dr()
  same_rows(p, d, {"public.items", "public.accounts", "public.events", "public.dr_only"})
  T.eq(n(p, "SELECT count(*) AS n FROM items WHERE name LIKE 'second dr %'"), 50)
end)

f:cleanup()
return T.finish()
