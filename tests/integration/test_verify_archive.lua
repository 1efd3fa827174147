-- verify.archive on archive files made from a real pg_dump: a good archive passes; one flipped
-- byte, truncation, a wrong passphrase, a manifest from another archive, a missing table and a
-- missing manifest are each detected with the right reason — with no database and no plaintext
-- written.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local pipe, proc, env = require "pipe", require "proc", require "env"
local crypto, verify, secret = require "crypto", require "verify", require "secret"

local PASS = secret.value("archive-test-passphrase-1")
local OTHER = secret.value("some-other-passphrase-2")
local dir = T.tmpdir()

local pg_env, psql = T.pg_env, T.psql

local DB = "verify_archive_test"
psql("postgres", "DROP DATABASE IF EXISTS " .. DB)
psql("postgres", "CREATE DATABASE " .. DB)
psql(DB, [[CREATE TABLE a (id int primary key, t text);
INSERT INTO a SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 30000) g;
CREATE TABLE b (id int, note text); INSERT INTO b VALUES (1, E'tab\tnew\nline'), (2, NULL);]])

-- Builds an archive the way export-database does, and its signed manifest.
local function make_archive(path, opts)
  opts = opts or {}
  local r = pipe.run{pipe.command{argv = {"pg_dump", "--format=plain", DB}, env = pg_env(DB)},
                     crypto.sha256{label = "plain"}, verify.sql_scan_filter{label = "scan"},
                     crypto.gzip{}, crypto.encrypt{passphrase = PASS}, crypto.sha256{label = "stored"},
                     pipe.file_sink(path)}
  local tables = {}
  for name, t in pairs(r.scan.tables) do tables[name] = {rows = t.rows, sha256 = t.sha256} end
  if opts.edit_tables then opts.edit_tables(tables) end
  local m = {format = verify.FORMAT, format_version = 1, archive = {key = path},
             plain = {bytes = r.plain.bytes, sha256 = r.plain.hex},
             stored = {bytes = r.stored.bytes, sha256 = r.stored.hex}, tables = tables}
  local f = assert(io.open(path .. verify.MANIFEST_SUFFIX, "wb"))
  f:write(verify.sign_manifest(m, {passphrase = PASS}))
  f:close()
  return r
end

local read, write = T.read, T.write

local good = dir .. "/good.sql.gz.enc"
make_archive(good)

T.case("a good archive passes, with the manifest's table figures recomputed", function()
  local r = verify.archive{file = good, passphrase = PASS, history = false}
  T.eq(r.ok, true, r.message)
  T.eq(r.tables, 2)
  T.eq(r.rows, 30002)
end)

T.case("the archive opens with stock openssl and gunzip (the escape hatch)", function()
  local r = proc.run{argv = {"sh", "-c", 'openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in "$0" | gunzip | grep -c "^[0-9]"', good},
                     env = {K = PASS:reveal()}}
  T.eq(r.status, 0)
  T.eq(tonumber(r.stdout), 30002)
end)

T.case("one flipped byte is a checksum mismatch (or the padding check catches it)", function()
  local data = read(good)
  for _, at in ipairs{100, #data // 2, #data - 5} do
    local p = dir .. "/flip.sql.gz.enc"
    local b = data:byte(at)
    write(p, data:sub(1, at - 1) .. string.char(b ~ 0x10) .. data:sub(at + 1))
    write(p .. verify.MANIFEST_SUFFIX, read(good .. verify.MANIFEST_SUFFIX))
    local r = verify.archive{file = p, passphrase = PASS, history = false}
    T.eq(r.ok, false)
    T.ok(r.reason == "checksum-mismatch" or r.reason == "wrong-passphrase", "reason " .. tostring(r.reason) .. " at " .. at)
  end
end)

T.case("a truncated archive is size-invalid, or truncated when the manifest is silent on size", function()
  local data = read(good)
  local p = dir .. "/cut.sql.gz.enc"
  write(p, data:sub(1, #data - 4096))
  write(p .. verify.MANIFEST_SUFFIX, read(good .. verify.MANIFEST_SUFFIX))
  local r = verify.archive{file = p, passphrase = PASS, history = false}
  T.eq(r.reason, "size-invalid")
  -- a manifest without the stored size: the stream itself reveals the truncation
  local m = verify.check_manifest(read(good .. verify.MANIFEST_SUFFIX), {passphrase = PASS})
  m.stored = nil
  m.auth = nil
  write(p .. verify.MANIFEST_SUFFIX, verify.sign_manifest(m, {passphrase = PASS}))
  r = verify.archive{file = p, passphrase = PASS, history = false}
  T.eq(r.ok, false)
  -- (the manifest's key check proves the passphrase, so a stream that stops decrypting is damage)
  T.ok(r.reason == "truncated" or r.reason == "checksum-mismatch", "reason " .. tostring(r.reason))
end)

T.case("a wrong passphrase is reported as such", function()
  local r = verify.archive{file = good, passphrase = OTHER, history = false}
  T.eq(r.reason, "wrong-passphrase")
end)

T.case("a manifest from another archive is a mismatch", function()
  local other = dir .. "/other.sql.gz.enc"
  psql(DB, "INSERT INTO b VALUES (3, 'later')")
  make_archive(other)
  local p = dir .. "/swapped.sql.gz.enc"
  write(p, read(good))
  write(p .. verify.MANIFEST_SUFFIX, read(other .. verify.MANIFEST_SUFFIX))
  local r = verify.archive{file = p, passphrase = PASS, history = false}
  T.eq(r.ok, false)
  T.ok(r.reason == "size-invalid" or r.reason == "checksum-mismatch", "reason " .. tostring(r.reason))
end)

T.case("a table missing from the archive is a table-mismatch naming it", function()
  local p = dir .. "/extra.sql.gz.enc"
  make_archive(p, {edit_tables = function(t) t["public.ghost"] = {rows = 1} end})
  local r = verify.archive{file = p, passphrase = PASS, history = false}
  T.eq(r.reason, "table-mismatch")
  T.eq(r.table, "public.ghost")
end)

T.case("no manifest: incomplete; no archive: missing", function()
  local p = dir .. "/bare.sql.gz.enc"
  write(p, read(good))
  T.eq(verify.archive{file = p, passphrase = PASS, history = false}.reason, "incomplete")
  T.eq(verify.archive{file = dir .. "/nothing-here", passphrase = PASS, history = false}.reason, "missing")
end)

T.case("nothing was written but the archives themselves", function()
  local r = proc.run{argv = {"sh", "-c", 'ls -A "$0"', dir}}
  for name in r.stdout:gmatch("[^\n]+") do
    T.ok(name:match("%.sql%.gz%.enc$") or name:match("%.manifest%.json$"), "unexpected file " .. name)
  end
end)

psql("postgres", "DROP DATABASE " .. DB)
proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
