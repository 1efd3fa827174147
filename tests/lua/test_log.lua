-- The log module from a script: fields, and a field whose __tostring raises. That error reaches
-- the caller, and the buffer log_at built the line in is freed (the ASan build's leak check, run
-- over this file by ctest -L lua, fails on a leak).
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local log = require "log"

T.case("log.info takes a table of fields of any type", function()
  log.info("test_log fields", {n = 1, x = 1.5, ok = true, s = "text", t = setmetatable({}, {__tostring = function() return "obj" end})})
end)

T.case("a field whose __tostring raises: the error reaches the caller, nothing leaks", function()
  local bad = setmetatable({}, {__tostring = function() error("no string for you") end})
  for _ = 1, 50 do
    local err = T.raises(log.warn, "test_log bad field", {a = "first", b = bad, c = string.rep("x", 1000)})
    T.match(tostring(err), "no string for you")
  end
  log.info("test_log still logs after the errors", {after = true})
end)

return T.finish()
