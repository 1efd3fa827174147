-- verify.protect(body, cleanup): the cleanup runs after success, after an error and after a
-- cancel (--timeout, SIGINT), and the cancel still stops the script right after it. What keeps
-- restore tests from leaving scratch databases behind.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local verify, proc, env = require "verify", require "proc", require "env"
local BIN = env.get("CLUBIO_DR_BIN")
local dir = T.tmpdir()

T.case("success: the body's result, cleanup told ok", function()
  local seen
  local v = verify.protect(function() return 42 end, function(ok, val) seen = {ok, val} end)
  T.eq(v, 42)
  T.eq(seen[1], true)
  T.eq(seen[2], 42)
end)

T.case("error: cleanup runs and the body's error is raised", function()
  local seen
  local e = T.raises(verify.protect, function() error({code = "x"}, 0) end, function(ok, val) seen = {ok, val} end)
  T.eq(e.code, "x")
  T.eq(seen[1], false)
  T.eq(seen[2].code, "x")
end)

T.case("a failing cleanup: raised after a good body, logged after a failing one", function()
  local e = T.raises(verify.protect, function() return 1 end, function() error("cleanup broke", 0) end)
  T.eq(e, "cleanup broke")
  e = T.raises(verify.protect, function() error("body broke", 0) end, function() error("cleanup broke", 0) end)
  T.eq(e, "body broke")
end)

T.case("a cancel (--timeout) mid-body: the cleanup still runs, then the script stops", function()
  local marker = dir .. "/cleaned"
  local code = string.format([[
local verify, time = require "verify", require "time"
verify.protect(function() time.sleep(30) end, function(ok, err)
  local t0 = 0
  for i = 1, 100000 do t0 = t0 + i end -- plenty of Lua instructions: the cancel hook must not fire
  local f = io.open(%q, "w"); f:write(tostring(ok), " ", tostring(err.class), " ", t0); f:close()
end)
io.open(%q, "w"):close()]], marker, dir .. "/after")
  local r = proc.run{argv = {BIN, "--timeout", "0.5", "-e", code}}
  T.eq(r.status, 124, r.stderr)
  local f = io.open(marker)
  T.ok(f, "the cleanup ran")
  if f then T.eq(f:read("a"), "false timeout 5000050000"); f:close() end
  T.eq(io.open(dir .. "/after"), nil, "nothing ran after the protected call")
end)

proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
