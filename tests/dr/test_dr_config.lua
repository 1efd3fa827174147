-- DR configuration edges on the sandbox: a dry run of a failover that would fail (replication
-- not set up) says so and exits non-zero; an empty CLUBIO_DR_PATH folder; --steps names the DR
-- database; DR_TABLES with quoted identifiers (and an unlogged table in it, left out with a
-- note); the un-fence command pasted into psql; --from reports the lag measured by the first run.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local proc, dr = require "proc", require "clubio.dr"

local f = F.new("cfg")
local empty = f.dir .. "/site-folder"
proc.run{argv = {"mkdir", "-p", empty}, check = true}
local TABLES = {DR_TABLES = '"Odd Schema"."Mixed Case Table", items "Odd Schema"."Scratch Pad"'}

T.case("dry run without replication: the failover would fail, and the dry run says so (non-zero)", function()
  local r = f:run({"dr-failover", "--dry-run"}, {CLUBIO_DR_PATH = empty})
  T.ok(r.status ~= 0, r.all)
  T.match(r.stderr, "dry run: the failover would fail at step 2/9 'measure%-lag': replication is not set up")
  T.match(r.stderr, "dr%-setup")
  T.no_match(r.all, "Is a directory")
end)

T.case("--steps names the DR database (no '?')", function()
  local r = f:run({"dr-failover", "--steps"}, {CLUBIO_DR_PATH = empty})
  T.eq(r.status, 0, r.all)
  T.match(r.stdout, "point the application at the DR database " .. f.db .. " %(project ")
  T.no_match(r.stdout, "%?")
end)

T.case("DR_TABLES with quoted identifiers; an unlogged table among them is left out with a note", function()
  local p <close> = f:primary()
  p:query([[CREATE SCHEMA "Odd Schema";
            CREATE TABLE "Odd Schema"."Mixed Case Table" ("Id" int PRIMARY KEY, "Some Value" text);
            INSERT INTO "Odd Schema"."Mixed Case Table" SELECT g, 'v' || g FROM generate_series(1, 30) g;
            CREATE UNLOGGED TABLE "Odd Schema"."Scratch Pad" (v int);]])
  local r = f:run({"dr-setup", "--json"}, TABLES)
  T.eq(r.status, 0, r.all)
  T.eq(r.doc.result.tables_synced, 3, "the quoted table, items and the heartbeat")
  T.match(r.all, 'not replicated: Odd Schema%.Scratch Pad %(unlogged%)')
  T.no_match(r.all, "REPLICA IDENTITY")
  local d <close> = f:dr()
  T.eq(d:query([[SELECT count(*) AS n FROM "Odd Schema"."Mixed Case Table"]])[1].n, "30")
  p:query([[INSERT INTO "Odd Schema"."Mixed Case Table" VALUES (31, 'new')]])
  F.wait_until("the new row replicated", function()
    return d:query([[SELECT 1 FROM "Odd Schema"."Mixed Case Table" WHERE "Id" = 31]])[1] ~= nil
  end)
end)

T.case("an empty site folder: the dry run and the failover work", function()
  local r = f:run({"dr-failover", "--dry-run"}, {CLUBIO_DR_PATH = empty, DR_TABLES = TABLES.DR_TABLES})
  T.eq(r.status, 0, r.all)
  T.match(r.stdout, "every check passed")
  r = f:run({"dr-failover", "--yes", "--json"}, {CLUBIO_DR_PATH = empty, DR_TABLES = TABLES.DR_TABLES})
  T.eq(r.status, 0, r.all)
  f.undo = r.doc.result.results["fence-primary"].undo
  f.lag = r.doc.result.lag_bytes
end)

T.case("--from after measure-lag: the result reports the lag the first run measured", function()
  local r = f:run({"dr-failover", "--yes", "--from", "verify-writes"}, {DR_TABLES = TABLES.DR_TABLES})
  T.eq(r.status, 0, r.all)
  T.no_match(r.stdout, "unknown")
  T.match(r.stdout, "lag at failover: [%d.]+ [KMG]?i?B")
  T.eq(type(f.lag), "number")
end)

T.case("the un-fence command from the failover's result works when pasted into psql", function()
  T.match(f.undo, "^BEGIN READ WRITE; ALTER DATABASE")
  local e = dr.libpq_env(f.primary_url)
  local r = proc.run{argv = {"psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", f.undo}, env = e}
  T.eq(r.status, 0, r.stderr)
  local p <close> = f:primary()
  T.eq(p:query("SELECT current_setting('default_transaction_read_only') AS ro")[1].ro, "off")
  p:query("INSERT INTO items (name) VALUES ('writable again')")
end)

f:cleanup()
return T.finish()
