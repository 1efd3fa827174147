-- A wrong passphrase is told apart from an altered manifest. A real export (export-database on
-- the sandbox, s3rver) carries auth.key_check; verify-export then says "check
-- BACKUP_ENCRYPTION_KEY" (exit 3) for a wrong key, and "do not trust this archive" (exit 4) for a
-- manifest edited after signing. A manifest from before key checks still verifies with the
-- right key, and a mismatch there says the two cannot be told apart.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/verify/?.lua;" .. package.path
local T = require "testing"
local F = require "fixture"
local verify, cjson, env = require "verify", require "cjson", require "env"

local PREFIX = string.format("test-keycheck-%d-%d/", os.time(), math.random(1, 1 << 20))
local key = F.export("verify_keycheck_src", PREFIX, 300)
local MKEY = key .. verify.MANIFEST_SUFFIX
local c = require("clubio.objects").client()
local original = c:get(F.BUCKET, MKEY)
local E = {EXPORT_PREFIX = PREFIX}
local function with(t) local e = {}; for k, v in pairs(E) do e[k] = v end; for k, v in pairs(t or {}) do e[k] = v end; return e end

T.case("an export's manifest carries a key check that depends on the passphrase only", function()
  local m = cjson.decode(original)
  T.match(m.auth.key_check, "^%x+$")
  T.eq(#m.auth.key_check, 64)
  -- recomputed from the passphrase and the manifest's salt and iterations, whatever the text
  local _, check = verify.manifest_hmac{salt = m.auth.salt, iter = m.auth.iter}
  T.eq(check, m.auth.key_check)
  local _, check2 = verify.manifest_hmac{text = "anything", salt = m.auth.salt, iter = m.auth.iter}
  T.eq(check2, check)
  local _, other = verify.manifest_hmac{salt = m.auth.salt, iter = m.auth.iter, passphrase = "not the passphrase"}
  T.ok(other ~= check, "another passphrase, another key check")
  T.ok(verify.check_manifest(original), "the manifest checks with BACKUP_ENCRYPTION_KEY")
end)

T.case("a wrong passphrase: 'check BACKUP_ENCRYPTION_KEY', exit 3, the archive not blamed", function()
  local r = F.run({"verify-export", key}, with{BACKUP_ENCRYPTION_KEY = "not-the-passphrase"})
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "wrong%-passphrase")
  T.match(r.stderr, "check BACKUP_ENCRYPTION_KEY")
  T.no_match(r.stderr, "do not trust")
  T.no_match(r.stderr, "run a new export")
end)

T.case("an altered manifest (right passphrase): 'do not trust this archive', exit 4", function()
  local m = cjson.decode(original)
  local name = next(m.tables)
  local rows = math.tointeger(m.tables[name].rows)
  local altered = original:gsub('"rows":' .. rows .. ',', '"rows":' .. (rows + 1) .. ',', 1)
  T.ok(altered ~= original, "edit applied")
  c:put(F.BUCKET, MKEY, altered)
  local r = F.run({"verify-export", key}, E)
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "manifest%-altered")
  T.match(r.stderr, "do not trust this archive")
  T.no_match(r.stderr, "check BACKUP_ENCRYPTION_KEY")
  c:put(F.BUCKET, MKEY, original)
  T.eq(F.run({"verify-export", key}, E).status, 0, "the original verifies again")
end)

T.case("a manifest from before key checks still verifies; a mismatch says the cause is unknown", function()
  -- re-signed as the previous version did: the same fields, no key_check
  local m = cjson.decode(original)
  m.auth.key_check, m.auth.hmac = nil, nil
  m.auth.hmac = verify.manifest_hmac{text = verify.canonical_json(m), salt = m.auth.salt, iter = m.auth.iter}
  c:put(F.BUCKET, MKEY, verify.canonical_json(m))
  local r = F.run({"verify-export", key, "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.ok, true)
  r = F.run({"verify-export", key}, with{BACKUP_ENCRYPTION_KEY = "not-the-passphrase"})
  T.eq(r.status, 4, r.stderr)
  T.match(r.stderr, "wrong%-passphrase%-or%-altered")
  T.match(r.stderr, "cannot be told apart")
  c:put(F.BUCKET, MKEY, original)
end)

T.case("with the key proven, an archive that does not decrypt is damaged, not a wrong passphrase", function()
  local dir = T.tmpdir()
  local pipe = require "pipe"
  local p = dir .. "/a.sql.gz.enc"
  pipe.run{c:download{bucket = F.BUCKET, key = key}, pipe.file_sink(p)}
  local data = F.read(p)
  local f = assert(io.open(p, "wb")); f:write(data:sub(1, #data - 32)); f:close()
  local mm = cjson.decode(original)
  mm.stored = nil
  mm.auth = nil
  f = assert(io.open(p .. verify.MANIFEST_SUFFIX, "wb")); f:write(verify.sign_manifest(mm)); f:close()
  local r = verify.archive{file = p, history = false}
  T.eq(r.ok, false)
  T.ok(r.reason == "checksum-mismatch" or r.reason == "truncated", "reason " .. tostring(r.reason))
  os.execute("rm -rf '" .. dir .. "'")
end)

c:delete_many(F.BUCKET, {key, MKEY})
F.drop_database("verify_keycheck_src")
return T.finish()
