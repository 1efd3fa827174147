-- The crypto module seen from a script: gzip/encrypt/decrypt/gunzip stages in pipes, digests
-- read after the pipe, one-shot helpers, option checking, and errors with class and hint.
-- (The examples in modules/crypto/README.md come from here.)
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local crypto = require "crypto"
local secret = require "secret"

local sql = {}
for i = 1, 20000 do
  sql[#sql + 1] = string.format("%d\tuser%d@example.com\t2024-01-15 10:%02d:00\t%d.%02d\n", i, i * 7, i % 60, i * 13 % 9999, i % 100)
end
sql = table.concat(sql)

T.case("one-shot helpers: sha256_hex, hmac_sha256_hex (RFC 4231 case 2), random_hex", function()
  T.eq(crypto.sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  T.eq(crypto.hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
  T.eq(crypto.hmac_sha256_hex(secret.value("Jefe"), "what do ya want for nothing?"),
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
  local r = crypto.random_hex(16)
  T.match(r, "^%x+$")
  T.eq(#r, 32)
  T.ok(r ~= crypto.random_hex(16), "two random values differ")
  T.eq(T.raises(crypto.random_hex, 0).class, "usage")
end)

T.case("gzip + encrypt, then decrypt + gunzip, with digests of both sides", function()
  local r = pipe.run{pipe.string(sql), crypto.sha256{label = "plain"},
                     crypto.gzip{level = 6, threads = 2}, crypto.encrypt{passphrase = "s3cret"},
                     crypto.sha256{label = "stored"}, pipe.buffer()}
  T.eq(r.plain.bytes, #sql)
  T.eq(r.plain.hex, crypto.sha256_hex(sql))
  local archive = r.buffer.data
  T.eq(archive:sub(1, 8), "Salted__")
  T.eq(r.stored.hex, crypto.sha256_hex(archive))
  T.ok(#archive < #sql / 2, "compressed")
  T.eq(r.encrypt.iter, 10000)
  local back = pipe.run{pipe.string(archive), crypto.decrypt{passphrase = "s3cret"}, crypto.gunzip(),
                        crypto.sha256{label = "plain"}, pipe.buffer(), buffer_size = 7}
  T.eq(back.plain.hex, r.plain.hex)
  T.eq(back.buffer.data, sql)
end)

T.case("hmac_sha256 filter matches the one-shot helper", function()
  local r = pipe.run{pipe.string(sql), crypto.hmac_sha256{key = "k", label = "mac"}, pipe.buffer()}
  T.eq(r.mac.hex, crypto.hmac_sha256_hex("k", sql))
  T.eq(r.mac.bytes, #sql)
end)

T.case("a wrong passphrase is a verify error with a hint; no output file is left", function()
  local dir = T.tmpdir()
  local enc = pipe.run{pipe.string(sql), crypto.gzip(), crypto.encrypt{passphrase = "right", iter = 1000}, pipe.buffer()}
  local err = T.raises(pipe.run, {pipe.string(enc.buffer.data), crypto.decrypt{passphrase = "bad", iter = 1000},
                                  crypto.gunzip(), pipe.file_sink(dir .. "/out.sql")})
  T.eq(err.class, "verify")
  T.ok(err.hint and #err.hint > 0, "has a hint")
  T.ok(io.open(dir .. "/out.sql") == nil, "no output file")
  local p = io.popen("ls -A " .. dir)
  T.eq(p:read("a"), "")
  p:close()
  os.remove(dir)
end)

T.case("passphrase from an environment variable (BACKUP_ENCRYPTION_KEY by default)", function()
  local err = T.raises(crypto.encrypt, {passphrase_env = "CLUBIO_TEST_SURELY_UNSET"})
  T.eq(err.class, "config")
  T.match(err.message, "CLUBIO_TEST_SURELY_UNSET")
  T.no_match(tostring(err), "s3cret")
end)

T.case("options are checked", function()
  T.match(T.raises(crypto.gzip, {levle = 6}).message, "unknown option 'levle' for crypto.gzip")
  T.eq(T.raises(crypto.gzip, {level = 13}).class, "usage")
  T.eq(T.raises(crypto.encrypt, {passphrase = "x", iter = 0}).class, "usage")
  T.match(T.raises(crypto.encrypt, {passphrase = "x", passphrase_env = "Y"}).message, "only one of")
end)

T.case("gunzip reports truncation and trailing garbage", function()
  local gz = pipe.run{pipe.string(sql), crypto.gzip{block_size = 4096}, pipe.buffer()}.buffer.data
  local e1 = T.raises(pipe.run, {pipe.string(gz:sub(1, -3)), crypto.gunzip(), pipe.buffer()})
  T.eq(e1.code, "crypto.gzip_truncated")
  local e2 = T.raises(pipe.run, {pipe.string(gz .. "junk"), crypto.gunzip(), pipe.buffer()})
  T.eq(e2.code, "crypto.gzip_trailing")
  local r = pipe.run{pipe.string(gz), crypto.gunzip{label = "gz"}, pipe.buffer()}
  T.ok(r.gz.members > 1, "several members")
end)

return T.finish()
