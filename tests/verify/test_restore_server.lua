-- verify.restore_test into a scratch database on the sandbox's standalone PostgreSQL
-- (SANDBOX_PG_ADMIN_URL), from a real export (demo-data + export-database in S3): a good archive
-- passes end to end with sanity checks; a corrupted archive, a manifest naming a missing table,
-- a failing sanity check, a wrong passphrase and SQL the server rejects each give their reason;
-- the scratch database is gone afterwards every time, also when the run is interrupted (SIGINT)
-- mid-test; every test is in the history. Also the restore-test script (report, --json, exit
-- status) and the removal of stale scratch databases.
--
-- All the restore tests against the server are in this one file, run in sequence, so that
-- "no scratch database is left" is exact.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/verify/?.lua;" .. package.path
local T = require "testing"
local F = require "fixture"
local env, proc, cjson, s3, secret = require "env", require "proc", require "cjson", require "s3", require "secret"
local pipe, crypto, verify, pgdump = require "pipe", require "crypto", require "verify", require "pgdump"

local PREFIX = "test-verify-server-" .. os.time() .. "-" .. math.random(1 << 20) .. "/"
local SERVER = secret.value(env.get("SANDBOX_PG_ADMIN_URL"))
local c = s3.client{}
local dir = T.tmpdir()
local HIST = dir .. "/history.jsonl"
local before = F.scratch_databases()
local key, exported, src_url = F.export("verify_server_src", PREFIX, 3000)

local function no_scratch_left()
  local now = F.scratch_databases()
  T.eq(#now, #before, "scratch databases left: " .. table.concat(now, ", "))
end

local function rt(o)
  o.bucket = o.bucket or (not o.file and F.BUCKET) or nil
  o.key = o.key or (not o.file and key) or nil
  o.server_url = o.server_url or SERVER
  o.history_file = o.history_file or HIST
  return verify.restore_test(o)
end

T.case("a good archive restores into a scratch database and matches its manifest", function()
  local r = rt{sanity = {
    {name = "orders", sql = "SELECT count(*) FROM orders", expect = 3000},
    {name = "users exist", sql = "SELECT count(*) > 0 FROM users"},
    {name = "paid orders have transactions", sql = [[SELECT count(*) = 0 FROM orders o WHERE o.status IN ('paid', 'shipped')
      AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.order_id = o.id)]]},
    {name = "function", sql = "SELECT max(id) AS m, min(id) AS n FROM users", expect = function(rows) return rows[1].n == 1 end},
  }}
  T.eq(r.ok, true, r.message)
  T.eq(r.reason, nil)
  T.eq(r.table_count, 3)
  T.eq(r.rows, exported.rows)
  T.eq(r.tables["public.orders"].rows, 3000)
  T.eq(r.tables["public.orders"].manifest_rows, 3000)
  -- the restored tables read back equal the source, row set for row set
  local src <close> = pgdump.connect(src_url)
  for name, t in pairs(r.tables) do T.eq(t.set_sha256, src:table_digest(name).set_sha256, name) end
  T.eq(#r.sanity, 4)
  for _, s in ipairs(r.sanity) do T.eq(s.ok, true, s.name) end
  T.eq(r.target.kind, "database")
  T.match(r.target.name, "^clubio_restore_test_%d%d%d%d%d%d%d%d_%d%d%d%d%d%d_%x%x%x%x%x%x$")
  T.eq(r.target.removed, true)
  T.ok(r.seconds.download_restore > 0 and r.seconds.compare > 0 and r.seconds.total >= r.seconds.download_restore,
       "seconds measured")
  T.eq(r.archive, "s3://" .. F.BUCKET .. "/" .. key)
  T.ok(r.manifest.snapshot_time, "snapshot time from the manifest")
  no_scratch_left()
end)

T.case("a failing sanity check is sanity-failed, naming the check", function()
  local r = rt{sanity = {{name = "ok one", sql = "SELECT true"},
                         {name = "too many orders", sql = "SELECT count(*) FROM orders", expect = 1}}}
  T.eq(r.ok, false)
  T.eq(r.reason, "sanity-failed")
  T.eq(r.check, "too many orders")
  T.match(r.message, "got 3000, expected 1")
  T.eq(r.target.removed, true)
  r = rt{sanity = {{name = "bad sql", sql = "SELECT * FROM no_such_table"}}}
  T.eq(r.reason, "sanity-failed")
  T.match(r.message, "no_such_table")
  no_scratch_left()
end)

-- a copy of the export under another key, with its bytes and/or manifest changed
local function variant(name, edit_bytes, edit_manifest)
  local k = PREFIX .. name .. ".sql.gz.enc"
  local data = c:get(F.BUCKET, key)
  c:put(F.BUCKET, k, edit_bytes and edit_bytes(data) or data)
  local text = c:get(F.BUCKET, key .. verify.MANIFEST_SUFFIX)
  if edit_manifest then
    local m = assert(verify.check_manifest(text))
    m.auth = nil
    edit_manifest(m)
    text = verify.sign_manifest(m)
  end
  c:put(F.BUCKET, k .. verify.MANIFEST_SUFFIX, text)
  return k
end

T.case("a corrupted archive is a checksum mismatch, and the scratch database is gone", function()
  local k = variant("flipped", function(d)
    local at = #d // 2
    return d:sub(1, at - 1) .. string.char(d:byte(at) ~ 0x04) .. d:sub(at + 1)
  end)
  local r = rt{key = k}
  T.eq(r.ok, false)
  T.eq(r.reason, "checksum-mismatch", r.message)
  T.eq(r.target.removed, true)
  no_scratch_left()
end)

T.case("a manifest naming a table the archive lacks is a table-mismatch naming it", function()
  local k = variant("ghost", nil, function(m) m.tables["public.ghost"] = {rows = 5, sha256 = string.rep("0", 64)} end)
  local r = rt{key = k}
  T.eq(r.reason, "table-mismatch")
  T.eq(r.table, "public.ghost")
  T.eq(r.target.removed, true)
  -- a manifest with the wrong row count for a table that is there
  k = variant("rows", nil, function(m) m.tables["public.users"].rows = m.tables["public.users"].rows + 1 end)
  r = rt{key = k}
  T.eq(r.reason, "table-mismatch")
  T.eq(r.table, "public.users")
  no_scratch_left()
end)

T.case("a wrong passphrase is found before any scratch database is made; a missing archive too", function()
  local r = rt{passphrase = secret.value("not-the-passphrase")}
  T.eq(r.reason, "wrong-passphrase")
  T.eq(r.target, nil)
  r = rt{key = PREFIX .. "nothing.sql.gz.enc"}
  T.eq(r.reason, "missing")
  no_scratch_left()
end)

T.case("an intact archive whose SQL the server rejects is restore-failed", function()
  local p = dir .. "/bad.sql.gz.enc"
  local sql = "CREATE TABLE t (id int);\nCOPY public.t (id) FROM stdin;\n1\nnot-a-number\n\\.\n"
  local PASS = secret.value("file-archive-passphrase")
  local w = pipe.run{pipe.string(sql), crypto.sha256{label = "plain"}, verify.sql_scan_filter{label = "scan"},
                     crypto.gzip{}, crypto.encrypt{passphrase = PASS}, crypto.sha256{label = "stored"}, pipe.file_sink(p)}
  local m = {format = verify.FORMAT, format_version = 1, plain = {bytes = w.plain.bytes, sha256 = w.plain.hex},
             stored = {bytes = w.stored.bytes, sha256 = w.stored.hex},
             tables = {["public.t"] = {rows = 2, sha256 = w.scan.tables["public.t"].sha256}}}
  local f = assert(io.open(p .. verify.MANIFEST_SUFFIX, "wb"))
  f:write(verify.sign_manifest(m, {passphrase = PASS}))
  f:close()
  local r = rt{file = p, passphrase = PASS}
  T.eq(r.ok, false)
  T.eq(r.reason, "restore-failed", r.message)
  T.match(r.message, "not%-a%-number")
  T.eq(r.target.removed, true)
  no_scratch_left()
end)

T.case("bad options are usage errors, before anything is created", function()
  local e = T.raises(verify.restore_test, {bucket = F.BUCKET, key = key, history = false})
  T.eq(e.class, "usage")
  T.match(e.message, "server_url")
  e = T.raises(verify.restore_test, {bucket = F.BUCKET, key = key, history = false, server_url = SERVER, colour = "red"})
  T.match(e.message, "unknown option 'colour'")
  e = T.raises(verify.restore_test, {bucket = F.BUCKET, key = key, history = false, server_url = "mysql://x/y"})
  T.match(e.message, "postgresql://")
  e = T.raises(verify.restore_test, {bucket = F.BUCKET, key = key, history = false, server_url = SERVER, sanity = {{name = "x"}}})
  T.match(e.message, "sanity check 1 needs sql")
  e = T.raises(verify.restore_test, {bucket = F.BUCKET, key = key, history = false, neon = "clubio-dr"})
  T.match(e.message, "neon client")
  no_scratch_left()
end)

T.case("a role that may not create databases: a clear error, recorded, nothing left", function()
  local e = T.raises(rt, {server_url = secret.value(F.url("postgres", "app"))})
  T.eq(e.class, "failure")
  T.match(e.message, "permission denied to create database")
  T.no_match(e.message, env.get("SANDBOX_PG_APP_PW"))
  local h = verify.history{file = HIST, limit = 1}
  T.eq(h[1].reason, "error")
  T.match(h[1].message, "permission denied")
  no_scratch_left()
end)

T.case("every restore test is in the history, newest first, without secrets", function()
  local h = verify.history{file = HIST, limit = 100}
  T.ok(#h >= 10, "records: " .. #h)
  T.eq(h[1].what, "restore_test")
  local text = F.read(HIST)
  T.no_match(text, env.get("SANDBOX_PG_ADMIN_PW"), "no password in the history")
  local oks, reasons = 0, {}
  for _, rec in ipairs(h) do
    if rec.ok then oks = oks + 1 else reasons[rec.reason] = true end
    T.ok(rec.at and rec.started_at and rec.tool and rec.tool.version and rec.host, "when, tool version, host")
  end
  T.ok(oks >= 1, "a passing test recorded")
  for _, want in ipairs{"sanity-failed", "checksum-mismatch", "table-mismatch", "wrong-passphrase", "missing", "restore-failed"} do
    T.ok(reasons[want], "a " .. want .. " record")
  end
  local last_ok
  for _, rec in ipairs(h) do if rec.ok then last_ok = rec; break end end
  T.eq(last_ok.target.scratch.removed, true)
  T.ok(last_ok.seconds.download_restore > 0, "restore seconds recorded")
  T.eq(#verify.history{file = HIST, limit = 2}, 2)
end)

T.case("the restore-test script: a short report, --json, and exit 4 on failure", function()
  local e = {BACKUP_S3_BUCKET = F.BUCKET, EXPORT_PREFIX = PREFIX, RESTORE_TEST_SERVER_URL = env.get("SANDBOX_PG_ADMIN_URL"),
             CLUBIO_DR_VERIFY_HISTORY = dir .. "/script-history.jsonl"}
  local r = F.run({"restore-test", key}, e)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "PASSED")
  T.match(r.stdout, "3 tables")
  T.match(r.stdout, "removed")
  T.no_match(r.stdout .. r.stderr, env.get("SANDBOX_PG_ADMIN_PW"), "no password in the output")
  r = F.run({"restore-test", key, "--server", "--json"}, e)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.ok, true)
  T.eq(r.doc.result.ok, true)
  T.eq(r.doc.result.target.removed, true)
  T.eq(r.doc.result.table_count, 3)
  -- a failing archive: exit 4, the reason in the report and in the JSON
  local k = variant("ghost2", nil, function(m) m.tables["public.ghost"] = {rows = 1} end)
  r = F.run({"restore-test", k}, e)
  T.eq(r.status, 4, r.stderr)
  T.match(r.stdout, "FAILED %(table%-mismatch%)")
  T.match(r.stderr, "public%.ghost")
  r = F.run({"restore-test", k, "--json"}, e)
  T.eq(r.status, 4)
  T.eq(r.doc.ok, false)
  T.eq(r.doc.result.reason, "table-mismatch")
  -- the history the script wrote
  local h = verify.history{file = dir .. "/script-history.jsonl"}
  T.eq(#h, 4)
  T.eq(h[1].ok, false)
  T.eq(h[4].ok, true)
  -- a password on the command line is refused; no target is a clear error; --dry-run does nothing
  r = F.run({"restore-test", key, "--server", F.url("postgres")}, e)
  T.eq(r.status, 2)
  T.match(r.stderr, "RESTORE_TEST_SERVER_URL")
  r = F.run({"restore-test", key}, {BACKUP_S3_BUCKET = F.BUCKET, RESTORE_TEST_SERVER_URL = "", NEON_API_KEY = ""})
  T.ok(r.status ~= 0, "no target")
  T.match(r.stderr, "RESTORE_TEST_SERVER_URL")
  r = F.run({"restore-test", "latest", "--dry-run"}, e)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "would restore test")
  no_scratch_left()
end)

T.case("interrupted (SIGINT) in the middle of a restore test, the scratch database is still dropped", function()
  local sanity = dir .. "/slow-sanity.lua"
  local f = assert(io.open(sanity, "w"))
  f:write('return {{name = "slow", sql = "SELECT pg_sleep(3) IS NOT NULL"}}\n')
  f:close()
  -- start the script, wait until its scratch database exists, then Ctrl-C it
  local script = [[
"$BIN" run restore-test "$KEY" --sanity "$SANITY" >"$OUT" 2>&1 &
pid=$!
i=0
# wait for our own run's scratch database (its name is in our log), not any restore test's
until db=$(sed -n 's/.*creating the scratch database \(clubio_restore_test_[0-9a-z_]*\).*/\1/p' "$OUT" | head -n1) &&
      [ -n "$db" ] && psql -X -At -c "SELECT 1 FROM pg_database WHERE datname = '$db'" "$ADMIN" | grep -q 1; do
  i=$((i+1)); [ $i -gt 600 ] && { echo "no scratch database appeared"; kill $pid; exit 9; }
  sleep 0.05
done
kill -INT $pid
wait $pid
echo "status=$?"
]]
  local r = proc.run{argv = {"sh", "-c", script}, env = {
    BIN = F.BIN, KEY = key, SANITY = sanity, OUT = dir .. "/cancel.log", ADMIN = env.get("SANDBOX_PG_ADMIN_URL"),
    BACKUP_S3_BUCKET = F.BUCKET, EXPORT_PREFIX = PREFIX, RESTORE_TEST_SERVER_URL = env.get("SANDBOX_PG_ADMIN_URL"),
    CLUBIO_DR_JOURNAL = "off", CLUBIO_DR_VERIFY_HISTORY = dir .. "/cancel-history.jsonl"}}
  local log = F.read(dir .. "/cancel.log")
  io.stderr:write(log)
  T.match(r.stdout, "status=130", log)
  T.match(log, "removed the scratch database", log)
  no_scratch_left()
  local h = verify.history{file = dir .. "/cancel-history.jsonl"}
  T.eq(h[1].ok, false)
  T.eq(h[1].reason, "cancelled")
  T.eq(h[1].target.scratch.removed, true)
end)

T.case("stale scratch databases (from killed runs) are removed, fresh ones kept", function()
  local a <close> = F.admin()
  a:query("CREATE DATABASE clubio_restore_test_20200101_000000_abcdef")
  local removed = verify.remove_stale_restore_tests{server_url = SERVER, older_than_hours = 24}
  local found = false
  for _, n in ipairs(removed) do if n == "clubio_restore_test_20200101_000000_abcdef" then found = true end end
  T.ok(found, "the old one removed")
  no_scratch_left()
end)

F.drop_database("verify_server_src")
proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
