-- The host seen from a script: strict globals, structured errors, option checking, the
-- time/env/secret/log helpers, and pipes built from Lua.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local clubio = require "clubio"
local time = require "time"
local env = require "env"
local secret = require "secret"
local proc = require "proc"

T.case("strict globals: reading an undefined global raises with its name and line", function()
  local err = T.raises(function() return undefined_thing end) -- luacheck: ignore
  T.match(err, "test_host.lua:%d+: undefined global 'undefined_thing'")
end)

T.case("strict globals: assigning a new global raises; declare() is the way", function()
  local err = T.raises(function() new_global = 1 end)
  T.match(err, "assignment to undeclared global 'new_global'")
  declare("declared_global", 42)
  T.eq(declared_global, 42)
end)

T.case("arguments reach the script as arg", function()
  T.match(arg[0], "test_host.lua$")
end)

T.case("structured errors carry class, code, message, hint", function()
  local err = T.raises(clubio.fail, {message = "it broke", code = "x.y", hint = "fix it", class = "verify"})
  T.ok(clubio.is_error(err))
  T.eq(err.class, "verify")
  T.eq(err.code, "x.y")
  T.eq(err.hint, "fix it")
  T.eq(tostring(err), "it broke")
  local bad = T.raises(clubio.fail, {message = "m", klass = "verify"})
  T.match(bad.message, "unknown option 'klass' for clubio.error")
end)

T.case("env.get names the missing variable", function()
  local err = T.raises(env.get, "CLUBIO_TEST_SURELY_UNSET")
  T.eq(err.class, "config")
  T.match(err.message, "CLUBIO_TEST_SURELY_UNSET")
  T.eq(env.get("CLUBIO_TEST_SURELY_UNSET", "dflt"), "dflt")
end)

T.case("time: ISO 8601 and YYYYMMDD round trips and errors", function()
  local t = time.parse("2024-01-15T10:30:00Z")
  T.eq(t, 1705314600)
  T.eq(time.iso(t), "2024-01-15T10:30:00Z")
  -- milliseconds round-trip: ".606" is .60599999... as a double and must print as .606 again
  for ms = 0, 999 do
    local s = string.format("2026-12-03T07:04:28.%03dZ", ms)
    T.eq(time.iso(time.parse(s), true), s)
  end
  T.eq(time.parse("2024-01-15T12:30:00+02:00"), t)
  T.eq(time.parse("2024-01-15 10:30"), t)
  T.eq(time.ymd(t), "20240115")
  T.eq(time.stamp(t), "20240115-103000")
  T.eq(time.parse_ymd("20240229"), time.parse("2024-02-29"))
  T.eq(time.add_days(t, -30), time.parse("2023-12-16T10:30:00Z"))
  T.eq(time.days_between(time.parse("2024-01-01"), time.parse("2024-03-01")), 60)
  local n, why = time.parse("2023-02-29T00:00:00Z")
  T.eq(n, nil)
  T.match(why, "out of range")
  T.eq((time.parse("yesterday")), nil)
  T.eq((time.parse_ymd("2024011")), nil)
  T.eq(time.date(t).wday, 1) -- a Monday
end)

T.case("secrets print as *** and are redacted from logs", function()
  local s = secret.value("hunter2-very-secret")
  T.match(tostring(s), "^secret%(")
  T.eq(s:reveal(), "hunter2-very-secret")
  T.eq(require("log").redact("pw is hunter2-very-secret!"), "pw is ***!")
end)

T.case("pipes: string -> count -> buffer, results by label", function()
  local r = pipe.run{pipe.string(("x"):rep(100000)), pipe.count{label = "n"}, pipe.buffer(), buffer_size = 7}
  T.eq(r.n.bytes, 100000)
  T.eq(#r.buffer.data, 100000)
  T.eq(r.bytes_in, 100000)
end)

T.case("pipes: a stage can be used once; kinds are checked", function()
  local src = pipe.string("abc")
  pipe.run{src, pipe.buffer()}
  local err = T.raises(pipe.run, {src, pipe.buffer()})
  T.match(err.message, "already used")
  err = T.raises(pipe.run, {pipe.buffer(), pipe.string("x")})
  T.match(err.message, "expected a source")
  err = T.raises(pipe.run, {pipe.string("x"), pipe.buffer(), bufer_size = 1})
  T.match(err.message, "unknown option 'bufer_size'")
end)

T.case("pipe.start and spools: a pipe runs in the background into memory; a later pipe reads it", function()
  local data = ("0123456789abcdef"):rep(50000) -- 800,000 bytes, many buffers
  local sp = pipe.spool{limit = #data}
  local err = T.raises(sp.source, sp)
  T.match(err.message, "not complete")
  local running = pipe.start{pipe.string(data), pipe.count{label = "n"}, sp:sink(), buffer_size = 4096}
  local r = running:wait()
  T.eq(r.n.bytes, #data)
  T.eq(r.spool.bytes, #data)
  T.eq(sp:bytes(), #data)
  err = T.raises(running.wait, running)
  T.match(err.message, "already waited")
  err = T.raises(sp.sink, sp)
  T.match(err.message, "one sink")
  -- read twice: a source does not consume the spool
  for _ = 1, 2 do
    local out = pipe.run{sp:source(), pipe.buffer{limit = #data}}
    T.eq(out.buffer.data == data, true, "the same bytes")
  end
end)

T.case("pipe.start: errors come out of wait(); a spool over its limit fails; stop ends a pipe", function()
  local running = pipe.start{pipe.string(("x"):rep(11)), pipe.spool{limit = 10}:sink()}
  local err = T.raises(running.wait, running)
  T.eq(err.code, "io.memory_full")
  -- a pipe stopped mid-way: its sink aborts (no file) and stop returns once its threads ended
  local dir = T.tmpdir()
  local slow = pipe.start{pipe.command{argv = {"sh", "-c", "echo start; sleep 30"}}, pipe.file_sink(dir .. "/out")}
  local t0 = time.monotonic()
  slow:stop()
  T.ok(time.monotonic() - t0 < 20, "stop does not wait for the command to end")
  T.eq(proc.run{argv = {"ls", "-A", dir}}.stdout, "", "nothing left behind")
  err = T.raises(slow.wait, slow)
  T.match(err.message, "already waited for or stopped")
  -- bad options and stages are usage errors before anything starts
  err = T.raises(pipe.start, {pipe.string("x"), pipe.buffer(), progress = true})
  T.match(err.message, "unknown option 'progress'")
  err = T.raises(pipe.spool, {limit = 0})
  T.match(err.message, "limit must be > 0")
end)

T.case("pipes: a failing command leaves no output file", function()
  local dir = T.tmpdir()
  local err = T.raises(pipe.run, {pipe.command{argv = {"sh", "-c", "echo data; exit 4"}},
                                  pipe.file_sink(dir .. "/out")})
  T.match(err.message, "exited with status 4")
  local ls = proc.run{argv = {"ls", "-A", dir}}
  T.eq(ls.stdout, "")
  os.remove(dir)
end)

T.case("pipe.write_file: whole or nothing, 0600, replaces only with overwrite", function()
  local dir = T.tmpdir()
  local path = dir .. "/f.env"
  T.eq(pipe.write_file(path, "A='1'\n"), path)
  T.eq(T.read(path), "A='1'\n")
  T.eq(proc.run{argv = {"stat", "-c", "%a", path}}.stdout, "600\n")
  T.match(T.raises(pipe.write_file, path, "B").message, "already exists")
  T.eq(T.read(path), "A='1'\n", "kept")
  pipe.write_file(path, "B", {overwrite = true})
  T.eq(T.read(path), "B")
  T.match(T.raises(pipe.write_file, dir .. "/missing/f", "x").message, "cannot create a file in")
  T.match(T.raises(pipe.write_file, path, "x", {overwrit = true}).message, "unknown option 'overwrit'")
  T.eq(proc.run{argv = {"ls", "-A", dir}}.stdout, "f.env\n", "no temporary file left")
  os.remove(path)
  os.remove(dir)
end)

T.case("proc.run: argv, env, stdin, exit status", function()
  local r = proc.run{argv = {"sh", "-c", 'printf "%s" "$FOO"; cat; exit 3'}, env = {FOO = "bar "}, stdin = "in"}
  T.eq(r.status, 3)
  T.eq(r.stdout, "bar in")
  local err = T.raises(proc.run, {argv = {"sh", "-c", "echo boom >&2; exit 2"}, check = true})
  T.match(err.message, "status 2: boom")
  err = T.raises(proc.run, {argv = {"/nonexistent/tool"}})
  T.match(err.message, "cannot run /nonexistent/tool")
end)

return T.finish()
