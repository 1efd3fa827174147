-- verify's Lua half: canonical JSON, signed manifests (tamper, wrong passphrase, unsigned,
-- another archive's manifest), table comparison and freshness. Archive verification end to end
-- is in tests/integration.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local verify = require "verify"
local secret = require "secret"
local cjson = require "cjson"

local PASS = secret.value("correct horse battery staple")

local function manifest(extra)
  local m = {format = verify.FORMAT, format_version = 1, archive = {key = "database/clubio-db-20260101-020000.sql.gz.enc"},
             stored = {bytes = 1234, sha256 = ("ab"):rep(32)},
             tables = {["public.users"] = {rows = 3, sha256 = ("01"):rep(32)}, ["public.empty"] = {rows = 0}}}
  for k, v in pairs(extra or {}) do m[k] = v end
  return m
end

T.case("canonical JSON sorts keys and is stable across a decode/encode", function()
  local v = {z = 1, a = {3, 2, {y = false, x = "é\n"}}, m = 1.5, n = -7}
  local text = verify.canonical_json(v)
  T.eq(text, '{"a":[3,2,{"x":"é\\n","y":false}],"m":1.5,"n":-7,"z":1}')
  T.eq(verify.canonical_json(cjson.decode(text)), text)
end)

T.case("a signed manifest checks; its HMAC covers every field", function()
  local text = verify.sign_manifest(manifest(), {passphrase = PASS})
  local m = verify.check_manifest(text, {passphrase = PASS})
  T.ok(m, "manifest accepted")
  T.eq(m.tables["public.users"].rows, 3)
  T.eq(#m.auth.salt, 32)
  T.eq(m.auth.domain, "clubio-dr/manifest/v1")
  for _, edit in ipairs{{'"rows":3', '"rows":4'}, {'"bytes":1234', '"bytes":1235'},
                        {"clubio%-db%-20260101", "clubio-db-20260102"}} do
    local bad = text:gsub(edit[1], edit[2])
    T.ok(bad ~= text, "edit applied: " .. edit[1])
    local ok, reason = verify.check_manifest(bad, {passphrase = PASS})
    T.eq(ok, nil)
    T.eq(reason, "manifest-altered") -- the key check tells it from a wrong passphrase
  end
end)

T.case("a wrong passphrase, an unsigned or foreign document are refused with a reason", function()
  local text = verify.sign_manifest(manifest(), {passphrase = PASS})
  local _, reason = verify.check_manifest(text, {passphrase = "not the passphrase"})
  T.eq(reason, "wrong-passphrase")
  _, reason = verify.check_manifest(cjson.encode(manifest()), {passphrase = PASS})
  T.eq(reason, "incomplete")
  _, reason = verify.check_manifest("{not json", {passphrase = PASS})
  T.eq(reason, "incomplete")
  _, reason = verify.check_manifest('{"format":"something-else"}', {passphrase = PASS})
  T.eq(reason, "incomplete")
end)

T.case("the manifest key is not the passphrase's archive key: same passphrase, new salt, new HMAC", function()
  local a = cjson.decode(verify.sign_manifest(manifest(), {passphrase = PASS}))
  local b = cjson.decode(verify.sign_manifest(manifest(), {passphrase = PASS}))
  T.ok(a.auth.salt ~= b.auth.salt, "fresh salt per manifest")
  T.ok(a.auth.hmac ~= b.auth.hmac, "different HMACs")
end)

T.case("manifest_hmac takes its passphrase from the environment by default and never prints it", function()
  local err = T.raises(verify.manifest_hmac, {text = "x", salt = "00", passphrase_env = "CLUBIO_TEST_NO_SUCH_VAR"})
  T.match(tostring(err), "CLUBIO_TEST_NO_SUCH_VAR")
  err = T.raises(verify.manifest_hmac, {text = "x", salt = "zz", passphrase = PASS})
  T.match(tostring(err), "salt")
  err = T.raises(verify.manifest_hmac, {text = "x", salt = "00", passphrase = PASS, iter = 0})
  T.match(tostring(err), "iter")
  err = T.raises(verify.manifest_hmac, {text = "x", salt = "00", pasphrase = PASS})
  T.match(tostring(err), "unknown option 'pasphrase'")
end)

T.case("compare_tables names the first table that differs", function()
  local want = {["public.a"] = {rows = 1, sha256 = "aa"}, ["public.b"] = {rows = 2, sha256 = "bb"}}
  T.eq(verify.compare_tables(want, {["public.a"] = {rows = 1, sha256 = "aa"}, ["public.b"] = {rows = 2, sha256 = "bb"}}), nil)
  local t, why = verify.compare_tables(want, {["public.a"] = {rows = 1, sha256 = "aa"}})
  T.eq(t, "public.b")
  T.match(why, "in the manifest but not in the archive")
  t, why = verify.compare_tables(want, {["public.a"] = {rows = 1, sha256 = "aa"}, ["public.b"] = {rows = 3, sha256 = "bb"}})
  T.eq(t, "public.b")
  T.match(why, "2 rows in the manifest, 3 found")
  t, why = verify.compare_tables(want, {["public.a"] = {rows = 1, sha256 = "ab"}, ["public.b"] = {rows = 2, sha256 = "bb"}})
  T.eq(t, "public.a")
  T.match(why, "digest differs")
end)

T.case("freshness: ok within the limit, stale beyond, missing without any", function()
  local now = 1800000000
  local f = verify.freshness{times = {now - 3600 * 30, now - 3600 * 5}, max_age_hours = 24, now = now, history = false}
  T.eq(f.ok, true)
  T.eq(f.age_hours, 5)
  f = verify.freshness{times = {now - 3600 * 25}, max_age_hours = 24, now = now, history = false}
  T.eq(f.ok, false)
  T.eq(f.reason, "stale")
  f = verify.freshness{times = {}, max_age_hours = 24, now = now, history = false}
  T.eq(f.reason, "missing")
end)

return T.finish()
