-- A branch restore and the DR replica, on the sandbox's neon-local with a project of the test's
-- own (a restore replaces the whole default branch: never the shared primary's). The restore
-- rebuilds the branch's data without the replication slot, as Neon's restore does;
-- restore-from-backup then says the DR replica is broken and prints the exact command, and that
-- command re-establishes replication from the restored data.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local neon, pgdump, dr, env = require "neon", require "pgdump", require "clubio.dr", require "env"

local pid = require("neonlocal").project(string.format("drrestore-%d", math.random(100000, 999999)))
local n = neon.client{project_id = pid}
local purl = n:connection_uri{branch = "main", database = "clubio"}
local f = F.new("rst")   -- its DR database is the replica's target
local ENV = {NEON_PROJECT_ID = pid, NEON_PROJECT_ID_PRIMARY = pid, DR_DATABASE = "clubio", DR_PRIMARY_BRANCH = "",
             DR_TARGET_URL = tostring(f.dr_url)}
local slot = "clubio_dr_" .. f.db

T.case("replication from the test's project; a backup branch", function()
  local p <close> = pgdump.connect(purl)
  p:query("CREATE TABLE orders (id serial PRIMARY KEY, v text); INSERT INTO orders (v) SELECT 'o' || g FROM generate_series(1, 50) g")
  local d <close> = f:dr()
  d:query("DROP TABLE IF EXISTS items, accounts, events; DROP SEQUENCE IF EXISTS invoice_no")
  local r = f:run({"dr-setup"}, ENV)
  T.eq(r.status, 0, r.all)
  n:create_branch{name = "backup-20260101", endpoint = false}
  p:query("INSERT INTO orders (v) SELECT 'later' || g FROM generate_series(1, 10) g")
end)

T.case("restore-from-backup: the slot is gone, and it says so with the command", function()
  local r = f:run({"restore-from-backup", "backup-20260101", "--yes"}, ENV)
  T.eq(r.status, 0, r.all)
  T.match(r.stdout, "replication: Neon's branch restore removed the replication slot " .. slot)
  T.match(r.stdout, "clubio%-dr run dr%-setup %-%-resync %-%-yes")
  local p <close> = pgdump.connect(purl)
  T.eq(p:query("SELECT count(*) AS c FROM pg_replication_slots WHERE slot_name = $1", {slot})[1].c, "0")
  T.eq(p:query("SELECT count(*) AS c FROM orders")[1].c, "50", "restored")
end)

T.case("the printed command re-establishes replication from the restored data", function()
  local r = f:run({"dr-setup", "--resync", "--yes"}, ENV)
  T.eq(r.status, 0, r.all)
  local p <close> = pgdump.connect(purl)
  local d <close> = f:dr()
  T.eq(d:table_digest("public.orders").set_sha256, p:table_digest("public.orders").set_sha256, "the DR copy is the restored data")
  local id = p:query("INSERT INTO orders (v) VALUES ('after') RETURNING id")[1].id
  F.wait_until("the new row on the DR side", function() return d:query("SELECT 1 FROM orders WHERE id = $1", {id})[1] ~= nil end)
end)

-- the replica's subscription first, then its slot on the test's project, then the DR database
pcall(function()
  local d <close> = f:dr()
  d:query("SET default_transaction_read_only = off")
  d:query("ALTER SUBSCRIPTION " .. slot .. " DISABLE")
  d:query("ALTER SUBSCRIPTION " .. slot .. " SET (slot_name = NONE)")
  d:query("DROP SUBSCRIPTION " .. slot)
end)
pcall(function()
  local p <close> = pgdump.connect(purl)
  for _ = 1, 50 do
    local r = p:query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", {slot})[1]
    if not r then break end
    if r.active == "f" then p:query("SELECT pg_drop_replication_slot($1)", {slot}) break end
    require("time").sleep(0.1)
  end
end)
f:cleanup()
return T.finish()
