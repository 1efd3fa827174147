-- The command line as a user meets it: exit statuses, error output, list, -e, --json.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local proc = require "proc"
local env = require "env"
local cjson = require "cjson"

local BIN = env.get("CLUBIO_DR_BIN")

local function run(args, extra_env)
  local argv = {BIN}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run{argv = argv, env = extra_env}
end

local function script(text)
  local dir = T.tmpdir()
  local path = dir .. "/s.lua"
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path, dir
end

T.case("-e prints what the chunk returns", function()
  local r = run{"-e", "return 1+1"}
  T.eq(r.status, 0)
  T.eq(r.stdout, "2\n")
  r = run{"-e", "return {a = 1}"}
  T.eq(r.stdout, '{"a":1}\n')
end)

T.case("an undefined global fails naming it and its line, exit 1", function()
  local path = script("local x = 1\nprint(nope)\n")
  local r = run{"run", path}
  T.eq(r.status, 1)
  T.match(r.stderr, "^clubio%-dr: .*s%.lua:2: undefined global 'nope'")
  T.no_match(r.stderr, "stack traceback")
  r = run{"--log-level", "debug", "run", path}
  T.match(r.stderr, "stack traceback")
end)

T.case("structured errors: message, HINT line, class exit status; JSON with --json", function()
  local path = script([[require("clubio").fail{message = "no backups yet", hint = "run backup-database", class = "verify", code = "verify.none"}]])
  local r = run{"run", path}
  T.eq(r.status, 4)
  T.eq(r.stderr, "clubio-dr: no backups yet\nHINT: run backup-database\n")
  r = run{"run", path, "--json"}
  T.eq(r.status, 4)
  local doc = cjson.decode(r.stdout)
  T.eq(doc.ok, false)
  T.eq(doc.error.code, "verify.none")
  T.eq(doc.error.exit, 4)
end)

T.case("script arguments and host flags", function()
  local path = script([[local a, b = ...
local c = require "clubio"
print(a, b, arg[1], arg[2], c.flags.dry_run, c.flags.yes)]])
  local r = run{"run", path, "one", "--dry-run", "two", "--yes"}
  T.eq(r.status, 0)
  T.eq(r.stdout, "one\ttwo\tone\ttwo\ttrue\ttrue\n")
  -- `--` ends the host's flags and reaches the script, so its parser (clubio.args) knows that
  -- what follows are not options either
  r = run{"run", path, "--", "--dry-run"}
  T.eq(r.stdout, "--\t--dry-run\t--\t--dry-run\tfalse\tfalse\n")
end)

T.case("clubio.args: declared options, positional bounds, `--`; anything else is a usage error", function()
  local path = script([[local a = require("clubio.args").parse(arg, {options = {["--to"] = "T", ["--drop"] = true}, max = 2})
print(a["--to"], a["--drop"], a.n, a[1], a[2])]])
  local r = run{"run", path, "--to=2024-01-01", "x", "--", "--drop"}
  T.eq(r.status, 0, r.stderr)
  T.eq(r.stdout, "2024-01-01\tnil\t2\tx\t--drop\n")
  r = run{"run", path, "--to", "5", "--drop", "-"}
  T.eq(r.stdout, "5\ttrue\t1\t-\tnil\n")
  for _, bad in ipairs{{"--nope"}, {"-x"}, {"--to"}, {"--to="}, {"--drop=1"}, {"--drop", "--drop"}, {"a", "b", "c"}} do
    local argv = {"run", path}
    for _, a in ipairs(bad) do argv[#argv + 1] = a end
    local b = run(argv)
    T.eq(b.status, 2, table.concat(bad, " "))
    T.eq(b.stdout, "")
    T.match(b.stderr, "HINT: see clubio%-dr help")
  end
  T.match(run{"run", path, "--nope"}.stderr, "unknown option '%-%-nope' %(options: %-%-drop, %-%-to%)")
end)

T.case("--help and help NAME print the script's header and run nothing", function()
  local marker = os.tmpname()
  os.remove(marker)
  local path = script(string.format([[-- A script that writes a marker
--
-- clubio-dr run this [--force]
io.open(%q, "w"):close()]], marker))
  for _, argv in ipairs{{"run", path, "--help"}, {"run", path, "-h"}, {"run", path, "x", "--yes", "--help"}, {"help", path}} do
    local r = run(argv)
    T.eq(r.status, 0, r.stderr)
    T.eq(r.stdout, "A script that writes a marker\n\nclubio-dr run this [--force]\n")
    T.eq(io.open(marker, "r"), nil, "the script ran for " .. table.concat(argv, " "))
  end
  -- after `--`, --help is the script's argument: it runs
  T.eq(run{"run", path, "--", "--help"}.status, 0)
  T.ok(io.open(marker, "r"), "the script did not run after --")
  os.remove(marker)
end)

T.case("secrets never reach error output", function()
  local path = script([[error("cannot connect to postgresql://app:" .. os.getenv("PGPASSWORD") .. "@db/x")]])
  local r = run({"run", path}, {PGPASSWORD = "Sup3rS3cret-pw"})
  T.eq(r.status, 1)
  T.no_match(r.stderr, "Sup3rS3cret")
  T.match(r.stderr, "postgresql://app:%*%*%*@db/x")
end)

T.case("unknown script and bad usage are usage errors (exit 2)", function()
  local r = run{"run", "no-such-script"}
  T.eq(r.status, 2)
  T.match(r.stderr, "no script or runbook named 'no%-such%-script'")
  T.match(r.stderr, "HINT: run `clubio%-dr list`")
  r = run{"frobnicate"}
  T.eq(r.status, 2)
  r = run{"--timeout", "abc", "-e", "1"}
  T.eq(r.status, 2)
end)

T.case("--timeout cancels a running script with exit 124", function()
  local path = script("while true do end")
  local r = run{"--timeout", "0.3", "run", path}
  T.eq(r.status, 124)
  T.match(r.stderr, "timed out")
  -- pcall cannot swallow the cancel
  path = script("while true do pcall(function() while true do end end) end")
  r = run{"--timeout", "0.3", "run", path}
  T.eq(r.status, 124)
end)

T.case("SIGTERM cancels cleanly with exit 130", function()
  local path = script("require('time').sleep(30)")
  local r = proc.run{argv = {"sh", "-c", '"$0" run "$1" & pid=$!; sleep 0.3; kill -TERM $pid; wait $pid', BIN, path}}
  T.eq(r.status, 130)
  T.match(r.stderr, "cancelled")
end)

T.case("clubio.shielded: cleanup runs to its end after a signal; the cancel comes right after it", function()
  local dir = T.tmpdir()
  local path = script(string.format([[
    local clubio, time = require "clubio", require "time"
    clubio.shielded(function()
      io.open(%q, "w"):close()
      local t0 = time.monotonic()
      while time.monotonic() - t0 < 1.0 do end -- Lua instructions: the cancel hook would raise here
      io.open(%q, "w"):close()
    end)
    print("after the shield")]], dir .. "/started", dir .. "/done"))
  local r = proc.run{argv = {"sh", "-c", '"$0" run "$1" & pid=$!; while [ ! -e "$2" ]; do sleep 0.01; done; kill -TERM $pid; wait $pid',
                             BIN, path, dir .. "/started"}}
  T.eq(r.status, 130, r.stderr)
  T.ok(io.open(dir .. "/done") ~= nil, "the shielded function ran to its end")
  T.no_match(r.stdout, "after the shield", "the cancel was raised as soon as the shield ended")
  -- errors pass through; results come back
  local ok, err = pcall(require("clubio").shielded, function() error({code = "x.y"}) end)
  T.eq(ok, false)
  T.eq(err.code, "x.y")
  T.eq(select("#", require("clubio").shielded(function() return 1, nil, 3 end)), 3)
end)

T.case("list shows scripts with description and schedule; CLUBIO_DR_PATH overrides", function()
  local dir = T.tmpdir()
  local f = assert(io.open(dir .. "/site-check.lua", "w"))
  f:write("-- A site's own check\n-- schedule: 0 6 * * *\nreturn 0\n")
  f:close()
  local r = run({"list", "--json"}, {CLUBIO_DR_PATH = dir})
  T.eq(r.status, 0)
  local items = cjson.decode(r.stdout)
  local found
  for _, it in ipairs(items) do if it.name == "site-check" then found = it end end
  T.ok(found, "site-check listed")
  T.eq(found.description, "A site's own check")
  T.eq(found.schedule, "0 6 * * *")
  r = run({"run", "site-check"}, {CLUBIO_DR_PATH = dir})
  T.eq(r.status, 0)
end)

T.case("--version and --help", function()
  T.match(run{"--version"}.stdout, "^clubio%-dr %d+%.%d+%.%d+")
  local h = run{"--help"}
  T.eq(h.status, 0)
  T.match(h.stdout, "exit status")
  T.match(run{"help", "run"}.stdout, "CLUBIO_DR_PATH")
  local hs = run{"help", "schedule"}
  T.eq(hs.status, 0, hs.stderr)
  T.match(hs.stdout, "clubio%-dr schedule %-%-once")
  T.eq(run{"help", "no-such-command"}.status, 2)
end)

return T.finish()
