-- The scheduler's locks, as an unprivileged user (the shipped unit's User=clubio-dr; as root the
-- schedulers here run as `nobody` through setpriv, with a state folder that user owns): three
-- `schedule --once` started together run a due job once for its fire time, whether the job is
-- still running (the lock is held) or already done (the records are read again under the lock);
-- the service and `--once` together run it once; a scheduler killed with SIGKILL while its job
-- runs leaves the job holding the lock, and a new scheduler does not start it a second time
-- while it lives, nor for that fire time once it has finished (its outcome is in its result file).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local read, write, wait_until = T.read, T.write, T.wait_until
local proc, env, time = require "proc", require "env", require "time"
local S = require "clubio.schedule"
local BIN = env.get("CLUBIO_DR_BIN")

local D = T.tmpdir()
local SITE = D .. "/site"
proc.run{argv = {"mkdir", "-p", SITE .. "/scripts"}, check = true}
proc.run{argv = {"chmod", "755", D, SITE, SITE .. "/scripts"}, check = true}

-- as root, every scheduler runs as nobody: setpriv execs (no fork), so a pid is the scheduler's
local ROOT = proc.run{argv = {"id", "-u"}}.stdout:match("%d+") == "0"
if ROOT then
  -- nobody may not reach the build folder (a checkout under /root is mode 700): the schedulers
  -- run an installed copy of this build, in a folder everyone can read
  local build = BIN:match("^(.*)/[^/]+$")
  proc.run{argv = {"cmake", "--install", build, "--prefix", D .. "/inst"}, check = true}
  proc.run{argv = {"chmod", "-R", "a+rX", D .. "/inst"}, check = true}
  BIN = D .. "/inst/bin/clubio-dr"
end
local AS = ROOT and {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"} or {}
local function owned_dir(path)
  proc.run{argv = {"mkdir", "-p", path}, check = true}
  if ROOT then proc.run{argv = {"chown", "65534:65534", path}, check = true} end
end

local function count(path) return #(read(path) or "") end
-- a scheduler's exit status, once its line is written (the file exists a moment before)
local function exit_of(dir, i)
  local e = read(dir .. "/exit." .. i)
  return e and e:match("\n$") and e or nil
end

write(SITE .. "/scripts/quick.lua", [[
-- Count a run (a test job)
local f = io.open(os.getenv("MARK_DIR") .. "/quick.count", "a"); f:write("x"); f:close()
return 0
]])
write(SITE .. "/scripts/hold.lua", [[
-- Count a run, then wait until released (a test job; it ends with Job:finish, which prints the
-- final document that the scheduler records)
local time = require "time"
local J = require("clubio.job").new("hold")
local d = os.getenv("MARK_DIR")
local f = io.open(d .. "/hold.count", "a"); f:write("x"); f:close()
f = io.open(d .. "/hold.started", "w"); f:write("1"); f:close()
for _ = 1, 2400 do
  local r = io.open(d .. "/hold.release", "r")
  if r then r:close(); break end
  time.sleep(0.05)
end
f = io.open(d .. "/hold.done", "a"); f:write("x"); f:close()
return J:finish({bytes = 4242}, "held and released")
]])
for _, j in ipairs{"quick", "hold"} do
  write(SITE .. "/" .. j .. ".conf", string.format(
    "return {scripts = false, defaults = {grace = 400 * 86400, retries = 0}, jobs = {%s = {schedule = '0 0 1 1 *', timeout = 600}}}", j))
end
local FIRE = assert(time.parse(os.date("!%Y") .. "-01-01T00:00:00Z"))

-- the environment of a scenario: its own state folder and marks folder (owned by the
-- scheduler's user), and its one job; returns the state folder, the variables, the marks folder
local function scenario(name, job)
  local st, mark = D .. "/state-" .. name, D .. "/mark-" .. name
  owned_dir(st)
  owned_dir(mark)
  return st, {"CLUBIO_DR_PATH=" .. SITE, "CLUBIO_DR_STATE_DIR=" .. st, "CLUBIO_DR_JOURNAL=off", "MARK_DIR=" .. mark,
              "CLUBIO_DR_SCHEDULE=" .. SITE .. "/" .. job .. ".conf", "CLUBIO_DR_BIN=" .. BIN}, mark
end
-- argv of a scheduler: [setpriv ...] env VARS clubio-dr ARGS
local function cmd(vars, args)
  local argv = {}
  for _, a in ipairs(AS) do argv[#argv + 1] = a end
  argv[#argv + 1] = "env"
  for _, v in ipairs(vars) do argv[#argv + 1] = v end
  argv[#argv + 1] = BIN
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return argv
end
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function shell_words(argv)
  local out = {}
  for i, a in ipairs(argv) do out[i] = q(a) end
  return table.concat(out, " ")
end
-- starts `n` schedulers at once in the background: out.i and exit.i (its status) under `dir`
local function start(n, vars, args, dir)
  local line = shell_words(cmd(vars, args))
  local script = {}
  for i = 1, n do
    script[#script + 1] = string.format("(%s > %s 2>&1; echo $? > %s) </dev/null >/dev/null 2>&1 &", line,
                                        q(dir .. "/out." .. i), q(dir .. "/exit." .. i))
  end
  proc.run{argv = {"sh", "-c", table.concat(script, "\n") .. "\n"}, check = true}
end
local function runs_of(st, job)
  local out = {}
  for _, r in ipairs(S.read_runs(st .. "/runs.jsonl")) do
    if r.job == job then out[#out + 1] = r end
  end
  return out
end
local function by_status(rs)
  local n = {}
  for _, r in ipairs(rs) do n[r.status] = (n[r.status] or 0) + 1 end
  return n
end
local function outputs(dir, n)
  local all = {}
  for i = 1, n do all[#all + 1] = read(dir .. "/out." .. i) or "" end
  return table.concat(all, "\n---\n")
end

T.case("the schedulers run as an unprivileged user", function()
  local r = proc.run{argv = cmd({}, {"-e", "print(require('proc').run{argv = {'id', '-u'}}.stdout)"})}
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stdout:match("%d+") ~= "0", "not root: " .. r.stdout)
end)

T.case("three --once started together, the job still running: it runs once, the others skip", function()
  local st, vars, MARK = scenario("three-held", "hold")
  local out = D .. "/three-held"
  owned_dir(out)
  start(3, vars, {"schedule", "--once"}, out)
  -- the two that did not get the lock end (skipped) while the job waits to be released
  local ended = wait_until("two schedulers to end", function()
    local e = {}
    for i = 1, 3 do if exit_of(out, i) then e[#e + 1] = i end end
    return #e >= 2 and e or nil
  end)
  -- the third has the lock: its job starts (the others may have ended before it did), and is
  -- let end before anything is checked, so that a failed check leaves nothing running
  wait_until("the job to start", function() return read(MARK .. "/hold.started") end)
  local started = count(MARK .. "/hold.count")
  write(MARK .. "/hold.release", "1")
  T.eq(#ended, 2, "one scheduler still runs the job: " .. outputs(out, 3))
  T.eq(started, 1, "started once")
  for _, i in ipairs(ended) do
    T.eq(exit_of(out, i), "0\n", outputs(out, 3))
    -- "by run ID (pid ...)", or "another scheduler is starting a run" when it came before the
    -- holder's "running" record
    T.match(read(out .. "/out." .. i), "skipped: locked")
  end
  wait_until("the third scheduler to end", function()
    for i = 1, 3 do if not exit_of(out, i) then return nil end end
    return true
  end)
  T.eq(count(MARK .. "/hold.count"), 1, "ran once: " .. outputs(out, 3))
  local n = by_status(runs_of(st, "hold"))
  T.eq(n.ok, 1, "one run recorded")
  T.eq(n.running, nil)
  local rs = runs_of(st, "hold")
  T.eq(rs[#rs].scheduled_at, FIRE)
  -- and for that fire time, nothing more
  local r = proc.run{argv = cmd(vars, {"schedule", "--once"})}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "nothing is due")
  T.eq(count(MARK .. "/hold.count"), 1)
end)

T.case("three --once started together, a quick job: at most once per fire time, seen again under the lock", function()
  for round = 1, 3 do
    local st, vars, MARK = scenario("three-quick-" .. round, "quick")
    local out = D .. "/three-quick-" .. round
    owned_dir(out)
    start(3, vars, {"schedule", "--once"}, out)
    wait_until("the schedulers to end", function()
      for i = 1, 3 do if not exit_of(out, i) then return nil end end
      return true
    end)
    for i = 1, 3 do T.eq(exit_of(out, i), "0\n", outputs(out, 3)) end
    T.eq(count(MARK .. "/quick.count"), 1, "round " .. round .. ": " .. outputs(out, 3))
    local n = by_status(runs_of(st, "quick"))
    T.eq(n.ok, 1, "one run recorded")
    -- each of the others either found the lock held or the fire time already run
    local all = outputs(out, 3)
    local _, skips = all:gsub("skipped: ", "")
    local _, nothing = all:gsub("nothing is due", "")
    T.eq(skips + nothing, 2, all)
  end
end)

T.case("the service and two --once together: the job runs once for its fire time", function()
  local st, vars, MARK = scenario("service", "quick")
  local out = D .. "/service"
  owned_dir(out)
  local svc = proc.run{argv = {"sh", "-c", "(exec " .. shell_words(cmd(vars, {"--log-level", "debug", "schedule"})) .. " > " .. q(out .. "/svc.out") ..
                               " 2>&1 </dev/null) >/dev/null 2>&1 & echo $!"}, check = true}.stdout:match("%d+")
  local ok, err = pcall(function()
    start(2, vars, {"schedule", "--once"}, out)
    wait_until("the --once runs to end", function()
      return exit_of(out, 1) and exit_of(out, 2)
    end)
    -- the service has looked at the job once it has run it, skipped it (held, or run meanwhile),
    -- or found nothing due (the --once runs were first)
    wait_until("the service to deal with the job", function()
      local s = read(out .. "/svc.out") or ""
      return s:match("quick ok in") or s:match("skipped: ") or s:match("nothing is due")
    end)
  end)
  proc.run{argv = {"kill", "-TERM", svc}, check = true} -- stopped even when a wait gave up
  if not ok then error(err, 0) end
  wait_until("the service to stop", function()
    local stat = read("/proc/" .. svc .. "/stat")
    return not stat or stat:match("^%d+ %b() Z")
  end)
  T.eq(count(MARK .. "/quick.count"), 1, read(out .. "/svc.out") .. outputs(out, 2))
  T.eq(by_status(runs_of(st, "quick")).ok, 1)
end)

T.case("a scheduler killed with SIGKILL while its job runs: the job is not started again while it lives", function()
  local st, vars, MARK = scenario("killed", "hold")
  local out = D .. "/killed"
  owned_dir(out)
  start(1, vars, {"schedule", "--once"}, out)
  wait_until("the job to start", function() return read(MARK .. "/hold.started") end)
  local first = runs_of(st, "hold")[1]
  T.eq(first.status, "running")
  local pid = tostring(math.tointeger(first.pid))
  proc.run{argv = {"kill", "-KILL", pid}, check = true}
  T.eq(wait_until("the scheduler to be killed", function() return exit_of(out, 1) end), "137\n")
  T.eq(read(MARK .. "/hold.done"), nil, "the job still runs")
  -- the lock is held by the job's process now (the scheduler is gone)
  T.eq(proc.lock(st .. "/locks/hold.lock"), nil, "the orphaned job holds the lock")
  -- a new scheduler, and a manual run: neither starts it again, and the run stays "running"
  local r = proc.run{argv = cmd(vars, {"schedule", "--once"})}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "skipped: locked by run " .. first.run_id:gsub("%p", "%%%0"))
  r = proc.run{argv = cmd(vars, {"schedule", "--run", "hold"})}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "skipped: locked by run ")
  r = proc.run{argv = cmd(vars, {"schedule", "--list", "--json"})}
  T.eq(r.status, 0, r.stderr)
  T.eq(count(MARK .. "/hold.count"), 1, "not started a second time")
  T.eq(runs_of(st, "hold")[#runs_of(st, "hold")].status, "running")
  -- the job ends: its lock is free once its last process has gone
  write(MARK .. "/hold.release", "1")
  wait_until("the job to end", function() return read(MARK .. "/hold.done") end)
  local l = wait_until("the lock to be free", function() return proc.lock(st .. "/locks/hold.lock") end)
  l:release()
  -- the next scheduler records the outcome the orphaned job left in its result file: it ran for
  -- this fire time, which is not run a second time
  r = proc.run{argv = cmd(vars, {"schedule", "--once"})}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "nothing is due")
  T.match(r.stderr, "recorded the outcome of a run whose scheduler stopped")
  local rs = runs_of(st, "hold")
  T.eq(rs[#rs].run_id, first.run_id)
  T.eq(rs[#rs].status, "ok")
  T.eq(rs[#rs].exit, 0)
  T.eq(rs[#rs].bytes, 4242, "the child's own result")
  T.match(rs[#rs].note, "its scheduler %(pid " .. pid .. "%) stopped during the run")
  T.eq(count(MARK .. "/hold.count"), 1, "at most once per fire time")
  T.eq(count(MARK .. "/hold.done"), 1)
end)

T.case("a scheduler and its job both killed: the run is interrupted, and its fire time runs again", function()
  local st, vars, MARK = scenario("both-killed", "hold")
  local out = D .. "/both-killed"
  owned_dir(out)
  start(1, vars, {"schedule", "--once"}, out)
  wait_until("the job to start", function() return read(MARK .. "/hold.started") end)
  local first = runs_of(st, "hold")[1]
  local pid = tostring(math.tointeger(first.pid))
  -- the scheduler, then its child's process group (`sh` has exec'd `timeout`, which leads it)
  local kids = proc.run{argv = {"pgrep", "-P", pid}}.stdout
  proc.run{argv = {"kill", "-KILL", pid}, check = true}
  for k in kids:gmatch("%d+") do proc.run{argv = {"kill", "-KILL", "--", "-" .. k}} end
  wait_until("the lock to be free", function()
    local l = proc.lock(st .. "/locks/hold.lock")
    if l then l:release() end
    return l
  end)
  T.eq(read(MARK .. "/hold.done"), nil, "the job did not finish")
  write(MARK .. "/hold.release", "1")
  local r = proc.run{argv = cmd(vars, {"schedule", "--once"})}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "recorded an interrupted run")
  local by_id = {}
  for _, x in ipairs(runs_of(st, "hold")) do by_id[x.run_id] = x end
  T.eq(by_id[first.run_id].status, "interrupted")
  T.match(by_id[first.run_id].error, "stopped during the run")
  local rs = runs_of(st, "hold")
  T.eq(rs[#rs].status, "ok")
  T.ok(rs[#rs].run_id ~= first.run_id)
  T.eq(count(MARK .. "/hold.count"), 2, "run again for its fire time")
end)

proc.run{argv = {"rm", "-rf", D}}
return T.finish()
