-- The change archive end to end on the sandbox (real PostgreSQL with wal_level=logical, s3rver):
-- archive-changes runs as a service under a write load of inserts, updates (rows whose large
-- TOASTed value is left unchanged), deletes, truncates, a REPLICA IDENTITY FULL table and
-- sequence use; it is killed with SIGKILL mid-load and restarted. Then:
--   - restore-from-s3 --to latest into a fresh server (a throwaway initdb cluster with none of
--     the source's roles): every table and sequence identical to the source;
--   - restore --to a point between two known transactions: exactly that state;
--   - a table without a primary key or replica identity is refused, naming it;
--   - a corrupt or a missing segment is detected by archive-changes --verify and verify-export --changes.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, proc, time, cjson, pgdump, s3 = require "env", require "proc", require "time", require "cjson", require "pgdump", require "s3"

local ADMIN = env.get("SANDBOX_PG_ADMIN_URL")
local BUCKET = env.get("BACKUP_S3_BUCKET")
local TAG = U.TAG
local SRC_DB = "chg_src_" .. TAG
local base_url = ADMIN:gsub("/postgres$", "/")
local SRC = base_url .. SRC_DB
local dir = T.tmpdir()
local ENV = {
  CHANGES_DATABASE_URL = SRC, CHANGES_SLOT = "chg_" .. TAG, CHANGES_PUBLICATION = "chg_pub_" .. TAG,
  CHANGES_PREFIX = "test-changes-" .. TAG .. "/", EXPORT_PREFIX = "test-changes-" .. TAG .. "/database/",
  ARCHIVE_INTERVAL = "1", DATABASE_URL = SRC,
  CLUBIO_DR_TEXTFILE_DIR = dir .. "/prom", CLUBIO_DR_STATE_DIR = dir .. "/state",
}
proc.run{argv = {"mkdir", "-p", dir .. "/prom", dir .. "/state"}, check = true}

local function sh(cmd, ...)
  local r = proc.run{argv = {"sh", "-c", cmd, "sh", ...}, env = ENV}
  if r.status ~= 0 then error("command failed: " .. cmd .. ": " .. r.stderr, 2) end
  return r.stdout
end

local admin <close> = pgdump.connect(ADMIN)
admin:query("CREATE DATABASE " .. SRC_DB)
local src = pgdump.connect(SRC)
src:query([[
  CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int, blob text);
  CREATE TABLE kv (k text PRIMARY KEY, v jsonb, note text);
  CREATE TABLE full_t (a int, b text);
  ALTER TABLE full_t REPLICA IDENTITY FULL;
  CREATE TABLE scratch (id int PRIMARY KEY, t text);
  CREATE SEQUENCE counter_seq;
  INSERT INTO items (name, qty) SELECT 'seed' || g, g FROM generate_series(1, 50) g;
  INSERT INTO kv VALUES ('a', '{"x": 1}', E'tab\there'), ('b''q', 'null', NULL);
  INSERT INTO full_t VALUES (1, 'one'), (1, 'one'), (2, NULL);
  ALTER TABLE items OWNER TO app;
  GRANT SELECT ON kv TO app;
]])

-- A big value that TOAST stores out of line (random hex compresses poorly).
local BIG = "(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 300) g)"
local round = 0
local function load(n)
  for _ = 1, n do
    round = round + 1
    src:query(string.format([[
      BEGIN;
      INSERT INTO items (name, qty, blob) VALUES ('r%d', %d, %s), (E'multi\nline %d', NULL, NULL);
      UPDATE items SET qty = qty + 1 WHERE blob IS NOT NULL AND id %% 3 = %d;
      DELETE FROM items WHERE id = (SELECT min(id) FROM items WHERE name LIKE 'seed%%');
      INSERT INTO kv VALUES ('k%d', '{"round": %d}', 'back\slash') ON CONFLICT (k) DO UPDATE SET v = excluded.v;
      SELECT nextval('counter_seq');
      COMMIT;]], round, round, BIG, round, round % 3, round % 7, round))
    if round % 5 == 0 then
      src:query("UPDATE full_t SET b = 'round " .. round .. "' WHERE a = 2; DELETE FROM full_t WHERE a = 1 AND b = 'one' AND ctid = (SELECT min(ctid) FROM full_t WHERE a = 1); INSERT INTO full_t VALUES (1, 'one')")
      src:query("INSERT INTO scratch SELECT g, 'x' FROM generate_series(100001, 100100) g; TRUNCATE scratch; INSERT INTO scratch VALUES (" .. round .. ", 'kept')")
      src:query("UPDATE kv SET note = NULL WHERE k = 'a'; DELETE FROM kv WHERE k = 'k" .. (round - 3) .. "'")
    end
  end
end

local TABLES = {"public.items", "public.kv", "public.full_t", "public.scratch"}
local function state(db) return T.table_states(db, TABLES) end
local function sequences(db)
  local out = {}
  for _, r in ipairs(db:query("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1", nil, {typed = true})) do
    out[r.sequencename] = r.last_value
  end
  return out
end

local LOG = dir .. "/archiver.log"
local running -- the archiver's pid while one runs: stopped however this script ends
local guard <close> = setmetatable({}, {__close = function()
  if running then proc.run{argv = {"kill", "-9", running}} end
end})
local function start_archiver()
  running = sh([[nohup "$1" run archive-changes >>"$2" 2>&1 </dev/null & echo $!]], U.BIN, LOG):match("%d+")
  return running
end
local function archiver_log()
  local f = io.open(LOG)
  local t = f and f:read("a") or ""
  if f then f:close() end
  return t
end
local function wait_for(what, fn, seconds)
  local deadline = time.monotonic() + (seconds or 120)
  while time.monotonic() < deadline do
    if fn() then return end
    time.sleep(0.2)
  end
  error("timed out waiting for " .. what .. "\n" .. archiver_log())
end
local function run(args, extra)
  local e = {}
  for k, v in pairs(ENV) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  return U.run(args, e)
end
-- waits until the archive holds every transaction committed so far
local marks = 0
local function wait_archived()
  marks = marks + 1
  local mark = src:query("INSERT INTO scratch VALUES (-" .. marks .. ", 'mark') RETURNING now()::text AS t")[1].t
  mark = time.parse((mark:gsub(" ", "T"):gsub("%+00$", "Z")))
  wait_for("the archive to reach the last commit", function()
    local r = run{"archive-changes", "--status", "--json"}
    local st = r.doc and r.doc.status
    return st and st.last_segment and time.parse(st.last_segment.last_commit) >= mark
  end)
end

local pid1 = start_archiver()
wait_for("the first base and the start of archiving", function() return archiver_log():find("archiving changes", 1, true) end)

load(15)
wait_archived()
-- the point: right after a known transaction, before the next
local before = state(src)
src:query("SELECT pg_sleep(0.05)")
local point = src:query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS t")[1].t
src:query("SELECT pg_sleep(0.05)")

load(10)
proc.run{argv = {"kill", "-9", pid1}}
load(10) -- while no archiver runs: the slot keeps it
local pid2 = start_archiver()
load(10)
wait_archived()
-- DDL is not carried: the archiver sees the relation change and takes a new base
src:query("ALTER TABLE kv ADD COLUMN extra int DEFAULT 7")
src:query("INSERT INTO kv (k, v, extra) VALUES ('after-ddl', '{}', 42)")
local in_ddl_window = src:query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS t")[1].t
wait_archived()
wait_for("the new base", function() return archiver_log():find("base export written", 1, true) and
                                        select(2, archiver_log():gsub("base export written", "")) >= 2 end)
load(5)
wait_archived()
-- a scheduled export taken while the slot exists is a base too (it records its snapshot)
local export = run{"export-database", "--json"}
assert(export.status == 0, export.stderr)
local export_key = export.doc.result.key
load(3)
wait_archived()
load(3)
wait_archived()
proc.run{argv = {"kill", "-TERM", pid2}}
wait_for("the archiver to stop", function() return proc.run{argv = {"kill", "-0", pid2}}.status ~= 0 end, 30)
running = nil
local final = state(src)
local final_seq = sequences(src)

T.case("the archiver survives kill -9: restarted, it resumed from the slot", function()
  local log = archiver_log()
  local n = 0
  for _ in log:gmatch("archiving changes") do n = n + 1 end
  T.eq(n, 2, "service starts")
  T.ok(log:find("segment archived", 1, true), "segments archived")
  local r = run{"archive-changes", "--verify", "--json"}
  T.eq(r.status, 0, r.stderr)
  T.ok(r.doc.segments >= 3, "segments: " .. tostring(r.doc.segments))
end)

T.case("gauges from the running archiver and from --status; --status fails over the seconds and inactive limits", function()
  local function prom() local f = assert(io.open(dir .. "/prom/clubio_dr_changes.prom")); local t = f:read("a"); f:close(); return t end
  local function gauge(text, name) return tonumber(text:match("\nclubio_dr_changes_" .. name .. '{slot="' .. ENV.CHANGES_SLOT .. '"} (%S+)')) end
  -- as the running archiver last wrote them
  local p = prom()
  T.eq(gauge(p, "slot_present"), 1, p)
  T.eq(gauge(p, "slot_active"), 1, p)
  T.eq(gauge(p, "healthy"), 1, p)
  for _, g in ipairs{"lag_bytes", "lag_seconds", "retained_wal_bytes", "rpo_seconds", "last_segment_age_seconds"} do
    T.ok(gauge(p, g) and gauge(p, g) >= 0, g .. " in " .. p)
  end
  T.ok(gauge(p, "retained_wal_bytes") >= gauge(p, "lag_bytes"), "the server keeps at least the unconfirmed WAL")
  -- no archiver runs now: WAL written after it (a commit elsewhere) waits, and the archive is
  -- behind by at least the pause since its last commit
  admin:query("SELECT txid_current()")
  time.sleep(1.1)
  local r = run({"archive-changes", "--status"}, {CHANGES_MAX_LAG_SECONDS = "1"})
  T.eq(r.status, 4, r.stdout .. r.stderr)
  T.match(r.stderr, "the change archive is %d+ s behind %(limit 1 s%): no archiver is running")
  p = prom()
  T.eq(gauge(p, "slot_active"), 0, p)
  T.eq(gauge(p, "healthy"), 0, p)
  T.ok(gauge(p, "lag_seconds") > 1, p)
  T.ok(gauge(p, "lag_bytes") > 0, p)
  -- within the default limits it passes, and says how much WAL the slot keeps
  r = run{"archive-changes", "--status"}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stdout, "WAL kept for the slot: ")
  -- inactive since the first --status that saw it: over the limit (0.36 s here) it fails, with
  -- the time left before Neon would remove the slot
  time.sleep(0.4)
  r = run({"archive-changes", "--status"}, {CHANGES_MAX_INACTIVE_HOURS = "0.0001"})
  T.eq(r.status, 4, r.stdout .. r.stderr)
  T.match(r.stderr, "slot " .. ENV.CHANGES_SLOT .. " has been inactive for [%d.]+ h %(limit 0.0001 h%), keeping .* of WAL: Neon removes a slot inactive for about 40 h")
  T.ok(gauge(prom(), "slot_inactive_seconds") >= 0.4)
end)

T.case("archive-changes as the scheduler's service job: started with the scheduler, stopped with it", function()
  local conf, out, promf = dir .. "/jobs.conf", dir .. "/sched.out", dir .. "/prom/clubio_dr_changes.prom"
  U.write(conf, 'return {scripts = false, jobs = {["archive-changes"] = {script = "archive-changes", service = true}}}')
  os.remove(promf)
  local spid = sh([[CLUBIO_DR_SCHEDULE="$3" nohup "$1" schedule > "$2" 2>&1 </dev/null & echo $!]], U.BIN, out, conf):match("%d+")
  running = spid -- killed however this case ends; its supervisor then stops the archiver
  local function sched_out() local f = io.open(out); local t = f and f:read("a") or ""; if f then f:close() end; return t end
  wait_for("the archiver under the scheduler", function() return sched_out():find("archiving changes", 1, true) end)
  -- its gauges: the slot active again
  wait_for("the archiver's gauges", function()
    local f = io.open(promf)
    local t = f and f:read("a") or ""
    if f then f:close() end
    return t:find('clubio_dr_changes_slot_active{slot="' .. ENV.CHANGES_SLOT .. '"} 1', 1, true)
  end)
  local r = run({"schedule", "--list", "--json"}, {CLUBIO_DR_SCHEDULE = conf})
  T.eq(r.status, 0, r.stderr)
  local row = cjson.decode(r.stdout)[1]
  T.eq(row.name, "archive-changes")
  T.eq(row.state, "running")
  proc.run{argv = {"kill", "-TERM", spid}, check = true}
  wait_for("the scheduler to stop", function() return proc.run{argv = {"kill", "-0", spid}}.status ~= 0 end, 60)
  running = nil
  T.match(sched_out(), "service archive%-changes stopped")
  local recs = require("clubio.schedule").read_runs(dir .. "/state/runs.jsonl")
  T.eq(recs[#recs].job, "archive-changes")
  T.eq(recs[#recs].status, "stopped")
  T.eq(proc.run{argv = {"kill", "-0", tostring(math.tointeger(recs[#recs].service_pid))}}.status ~= 0, true, "the archiver is gone")
end)

-- a fresh server: a throwaway cluster with none of the source's roles
local fresh = T.tmpdir() -- its own folder: the server runs as postgres when we are root
local PGBIN = env.get("SANDBOX_PG_BIN")
local port = U.closed_port()
local as_pg = proc.run{argv = {"id", "-u"}}.stdout:match("^0") and "runuser -u postgres -- " or ""
if as_pg ~= "" then sh("chown postgres: \"$1\"", fresh) end
sh(as_pg .. "\"$1/initdb\" -D \"$2/data\" -U postgres -A trust >/dev/null && " ..
   as_pg .. "\"$1/pg_ctl\" -D \"$2/data\" -l \"$2/log\" -w -o \"-p $3 -k $2 -c listen_addresses=127.0.0.1 -c fsync=off -c wal_level=logical\" start >/dev/null",
   PGBIN, fresh, port)
local FRESH = "postgresql://postgres@127.0.0.1:" .. port .. "/"
local fresh_admin <close> = pgdump.connect(FRESH .. "postgres")

T.case("a schema change is detected and a new base is taken", function()
  local log = archiver_log()
  T.match(log, "schema change of published tables: taking a new base export[^\n]*public%.kv")
  T.match(log, "reason=schema change: public%.kv")
end)

T.case("restore --to latest into a fresh server with no roles: every table and sequence identical", function()
  -- items is owned by app, kv granted to it: roles the fresh server does not have
  fresh_admin:query("CREATE DATABASE r_latest")
  local r = run({"restore-from-s3", "--to", "latest", "-", "--json"}, {RESTORE_TARGET_URL = FRESH .. "r_latest"})
  T.eq(r.status, 0, r.stderr .. r.stdout)
  T.ok(r.doc.result.transactions > 0, "transactions replayed")
  T.eq(r.doc.result.base, export_key, "the newest base: the export-database export")
  local db <close> = pgdump.connect(FRESH .. "r_latest")
  local got = state(db)
  for _, t in ipairs(TABLES) do T.eq(got[t], final[t], t) end
  local seqs = sequences(db)
  for name, v in pairs(final_seq) do T.eq(seqs[name], v, "sequence " .. name) end
end)

T.case("a rebuilt server under the same slot name: a new epoch, nothing skipped, each restore replays its own", function()
  -- the source is lost; r_latest (restored above, on another server) takes its place, and the
  -- archiver is pointed at it with the same slot, publication and prefix. That server's LSNs
  -- are far below the ones the archive has passed: a skip by LSN across servers would drop
  -- its transactions
  local REB = FRESH .. "r_latest"
  local e = {CHANGES_DATABASE_URL = REB, DATABASE_URL = REB}
  local c = s3.client{}
  local last_key
  for obj in c:list{bucket = BUCKET, prefix = ENV.CHANGES_PREFIX} do
    if obj.key:match("/%d+%-%x+%.sql%.gz%.enc%.manifest%.json$") and (not last_key or obj.key > last_key) then last_key = obj.key end
  end
  local old = cjson.decode(c:get(BUCKET, last_key))
  local db <close> = pgdump.connect(REB)
  local changes = require "changes"
  T.ok(changes.lsn(db:query("SELECT pg_current_wal_lsn()::text AS l")[1].l) < changes.lsn(old.last_lsn),
       "the rebuilt server's LSNs are below the archive's")
  local r = run({"archive-changes", "--once"}, e)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "a new epoch of the change archive")
  db:query("INSERT INTO scratch VALUES (900001, 'after the rebuild'); SELECT nextval('counter_seq')")
  r = run({"archive-changes", "--once"}, e)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "segment archived")
  fresh_admin:query("CREATE DATABASE r_rebuilt")
  r = run({"restore-from-s3", "--to", "latest", "-", "--json"}, {RESTORE_TARGET_URL = FRESH .. "r_rebuilt"})
  T.eq(r.status, 0, r.stderr .. r.stdout)
  local got_db <close> = pgdump.connect(FRESH .. "r_rebuilt")
  local want, got = state(db), state(got_db)
  for _, t in ipairs(TABLES) do T.eq(got[t], want[t], t) end
  T.eq(got_db:query("SELECT t FROM scratch WHERE id = 900001")[1].t, "after the rebuild")
  local ws, gs = sequences(db), sequences(got_db)
  for name, v in pairs(ws) do T.eq(gs[name], v, "sequence " .. name) end
  db:query("SELECT pg_drop_replication_slot($1)", {ENV.CHANGES_SLOT})
end)

T.case("a restore reads the manifests of its range (and log2 n more), not the whole chain; its links are still checked", function()
  -- a synthetic chain of 64 signed segment manifests, one a minute, in the sandbox's S3: restores
  -- over months of 10 s segments would otherwise read hundreds of thousands of manifests
  local lib, verify, crypto = require "clubio.changes", require "verify", require "crypto"
  local c = s3.client{}
  local cfg = {bucket = BUCKET, folder = ENV.CHANGES_PREFIX .. "synthetic/"}
  local t0 = time.parse("2026-01-01T00:00:00Z")
  local body = "x"
  local prev
  for seq = 1, 64 do
    local key = string.format("%s%010d-%016X.sql.gz.enc", cfg.folder, seq, seq * 4096)
    local m = {format = verify.FORMAT, format_version = verify.FORMAT_VERSION, kind = lib.KIND, seq = seq,
               archive = {bucket = BUCKET, key = key}, stored = {bytes = #body, sha256 = crypto.sha256_hex(body)},
               first_time = time.iso(t0 + 60 * seq - 30), last_time = time.iso(t0 + 60 * seq), prev = prev}
    c:put(BUCKET, key, {body = body})
    c:put(BUCKET, key .. verify.MANIFEST_SUFFIX, {body = verify.sign_manifest(m)})
    prev = {key = key, sha256 = m.stored.sha256, seq = seq, last_time = m.last_time}
  end
  local chain, problems, read = lib.verify_chain(c, cfg)
  T.eq(#chain, 64)
  T.eq(#problems, 0)
  T.eq(read.read, 64)
  -- from 40:00.5 to 50:00 (minutes after t0): segment 40 (the link before the range) to 51 (the
  -- first that begins after the point)
  chain, problems, read = lib.verify_chain(c, cfg, {from_time = t0 + 60 * 40 + 0.5, to_time = t0 + 60 * 50})
  T.eq(#problems, 0)
  T.eq(chain[1].seq, 40)
  T.eq(chain[#chain].seq, 51)
  T.ok(read.read <= 12 + 7, "manifests read: " .. read.read)
  -- a break before the range is not the restore's concern; one at the range's first link is
  local k10 = string.format("%s%010d-%016X.sql.gz.enc", cfg.folder, 10, 10 * 4096)
  c:delete(BUCKET, k10 .. verify.MANIFEST_SUFFIX)
  chain, problems = lib.verify_chain(c, cfg, {from_time = t0 + 60 * 40 + 0.5, to_time = t0 + 60 * 50})
  T.eq(#problems, 0)
  local _, all = lib.verify_chain(c, cfg)
  T.eq(all[1] and all[1].seq, 10, "the whole chain's check sees it")
  local k40 = string.format("%s%010d-%016X.sql.gz.enc", cfg.folder, 40, 40 * 4096)
  c:delete(BUCKET, k40 .. verify.MANIFEST_SUFFIX)
  chain, problems = lib.verify_chain(c, cfg, {from_time = t0 + 60 * 40 + 0.5, to_time = t0 + 60 * 50})
  local seen40 = false
  for _, p in ipairs(problems) do seen40 = seen40 or p.seq == 40 end
  T.ok(seen40, "the range's first link is checked: segment 40 without its manifest is a problem")
  local doomed = {}
  for obj in c:list{bucket = BUCKET, prefix = cfg.folder} do doomed[#doomed + 1] = obj.key end
  for _, k in ipairs(doomed) do c:delete(BUCKET, k) end
end)

T.case("restore --to a point between two known transactions: exactly that state", function()
  admin:query("CREATE DATABASE chg_point_" .. TAG)
  local bad = run({"restore-from-s3", "--to", point, "-"}, {RESTORE_TARGET_URL = base_url .. "chg_point_" .. TAG,
                                                            RESTORE_PREFETCH_MB = "lots"})
  T.eq(bad.status, 2, bad.stderr)
  T.match(bad.stderr, "RESTORE_PREFETCH_MB must be a number")
  -- (segments streamed in turn, not fetched ahead: the path taken by segments too large to hold)
  local r = run({"restore-from-s3", "--to", point, "-", "--json"}, {RESTORE_TARGET_URL = base_url .. "chg_point_" .. TAG,
                                                                      RESTORE_PREFETCH_MB = "0"})
  T.eq(r.status, 0, r.stderr)
  local db <close> = pgdump.connect(base_url .. "chg_point_" .. TAG)
  local got = state(db)
  for _, t in ipairs(TABLES) do T.eq(got[t], before[t], t) end
  T.ok(got["public.items"] ~= final["public.items"], "the point is not the end")
end)

T.case("a point between a schema change and the next base: refused with the reason", function()
  admin:query("CREATE DATABASE chg_ddl_" .. TAG)
  local r = run({"restore-from-s3", "--to", in_ddl_window, "-"}, {RESTORE_TARGET_URL = base_url .. "chg_ddl_" .. TAG})
  T.eq(r.status, 1, r.stderr)
  T.match(r.stderr, "the schema of public%.kv changed at")
  admin:query("DROP DATABASE chg_ddl_" .. TAG)
end)

T.case("a table without a primary key or replica identity is refused, named", function()
  src:query("CREATE TABLE no_key (a int)")
  local r = run{"archive-changes", "--once"}
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "public%.no_key")
  T.match(r.stderr, "REPLICA IDENTITY FULL")
  src:query("DROP TABLE no_key")
end)

T.case("retention keeps the segments back to the oldest retained base", function()
  local r = run({"retention", "--dry-run", "exports"}, {RETENTION_DAYS = "30"})
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "keep%s+segment%s+%S+0000000001%-%x+%.sql%.gz%.enc%s+needed from the oldest retained base on")
  T.no_match(r.stdout, "DELETE%s+segment")
end)

T.case("a corrupt or missing segment is detected by verification", function()
  local c = s3.client{}
  local keys = {}
  for obj in c:list{bucket = BUCKET, prefix = ENV.CHANGES_PREFIX} do
    if obj.key:match("%.sql%.gz%.enc$") then keys[#keys + 1] = obj.key end
  end
  table.sort(keys)
  T.ok(#keys >= 3, "segments")
  -- one byte changed, same size: only the bytes tell
  local k = keys[2]
  local body = c:get(BUCKET, k)
  local pos = #body // 2
  c:put(BUCKET, k, {body = body:sub(1, pos - 1) .. string.char((body:byte(pos) + 1) % 256) .. body:sub(pos + 1)})
  T.eq(run{"archive-changes", "--verify"}.status, 0, "a same-size change needs --deep")
  local r = run{"archive-changes", "--verify", "--deep"}
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "segment 2")
  r = run{"verify-export", "--changes", "--deep"}
  T.eq(r.status, 4, r.stderr)
  c:put(BUCKET, k, {body = body})
  r = run{"archive-changes", "--verify", "--deep"}
  T.eq(r.status, 0, r.stderr)
  -- a missing segment breaks the chain
  c:delete(BUCKET, k .. ".manifest.json")
  c:delete(BUCKET, k)
  r = run{"archive-changes", "--verify"}
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "missing")
  r = run{"verify-export", "--changes"}
  T.eq(r.status, 4, r.stderr)
end)

T.case("a branch restore removes the slot: restore-from-backup's note says so and names the restart", function()
  -- what restore-from-backup and data-corruption print after a branch restore (dr.after_branch_restore)
  local probe = dir .. "/after_restore.lua"
  U.write(probe, [[local r = require("clubio.dr").after_branch_restore{branch = "main"}
print(require("cjson").encode{changes = r.changes or false, affected = r.affected == true, message = r.message})]])
  local r = run{probe}
  T.eq(r.status, 0, r.stderr)
  local d = require("cjson").decode(r.stdout)
  T.eq(d.changes.affected, false, "the slot is still there")
  -- as Neon's branch restore does: the slot is gone
  admin:query("SELECT pg_drop_replication_slot($1)", {ENV.CHANGES_SLOT})
  r = run{probe}
  T.eq(r.status, 0, r.stderr)
  d = require("cjson").decode(r.stdout)
  T.eq(d.changes.affected, true)
  T.eq(d.affected, true)
  T.match(d.message, "change archive's slot " .. ENV.CHANGES_SLOT .. " is gone")
  T.match(d.message, "clubio%-dr run archive%-changes")
end)

-- cleanup: the slot, the databases, the fresh server, the objects
src:close()
pcall(admin.query, admin, "SELECT pg_drop_replication_slot('" .. ENV.CHANGES_SLOT .. "')")
pcall(admin.query, admin, "DROP DATABASE " .. SRC_DB)
pcall(admin.query, admin, "DROP DATABASE chg_point_" .. TAG)
fresh_admin:close()
proc.run{argv = {"sh", "-c", as_pg .. "\"$1/pg_ctl\" -D \"$2/data\" -m immediate stop >/dev/null; rm -rf \"$2\"", "sh", PGBIN, fresh}}
local c = s3.client{}
local doomed = {}
for obj in c:list{bucket = BUCKET, prefix = "test-changes-" .. TAG .. "/"} do doomed[#doomed + 1] = obj.key end
for _, k in ipairs(doomed) do c:delete(BUCKET, k) end
return T.finish()
