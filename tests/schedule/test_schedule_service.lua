-- Service jobs (`service = true`, the change archive's kind of job) through the binary: the
-- scheduler starts the service when it starts; a `kill -9` of the service is recorded with its
-- status and the service is started again; exits in a row alert through the webhook; a second
-- scheduler on the same state stands by instead of starting a second instance, and takes over
-- when the first stops; SIGTERM to a scheduler stops its service with SIGTERM; cron jobs beside
-- a service still run; --list shows the service's state; jobs-file mistakes of services; and
-- proc.spawn, which the scheduler starts its supervisors with.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local read, write, wait_until = T.read, T.write, T.wait_until
local proc, env, cjson, time = require "proc", require "env", require "cjson", require "time"
local S = require "clubio.schedule"
local BIN = env.get("CLUBIO_DR_BIN")
local TESTS = env.get("CLUBIO_DR_TEST_DIR")

local D = T.tmpdir()
local SITE, STATE, MARK = D .. "/site", D .. "/state", D .. "/mark"
proc.run{argv = {"mkdir", "-p", SITE .. "/scripts", STATE, MARK}, check = true}

local function lines(path)
  local out = {}
  for l in (read(path) or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end
local function alive(pid)
  local stat = read("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

-- the service: notes its pid, runs until SIGTERM, then notes that it was stopped that way
write(SITE .. "/scripts/svc.lua", [[
-- A long-running test service
local time = require "time"
local d = os.getenv("MARK_DIR")
local pid = (io.open("/proc/self/stat"):read("a")):match("^(%d+)")
local f = io.open(d .. "/svc.pids", "a"); f:write(pid, " ", os.getenv("CLUBIO_DR_SERVICE") or "", "\n"); f:close()
local ok = pcall(function() while true do time.sleep(0.05) end end)
f = io.open(d .. "/svc.stopped", "a"); f:write(pid, "\n"); f:close()
return 0
]])
write(SITE .. "/scripts/tick.lua", [[
-- Count a run (a test cron job)
local f = io.open(os.getenv("MARK_DIR") .. "/tick.count", "a"); f:write("x"); f:close()
return 0
]])
local CONF = SITE .. "/jobs.conf"
write(CONF, [[
return {scripts = false, defaults = {grace = 400 * 86400, retries = 0},
        jobs = {svc = {script = "svc", service = true, restart_delay = 0.2, restart_max_delay = 1,
                       alert_exits = 2, alert_window = 3600, stop_timeout = 10},
                tick = {schedule = "0 0 1 1 *", timeout = 60}}}
]])

-- the webhook receiver
local PORTF, HOOKLOG = D .. "/hook.port", D .. "/hook.log"
local rpid = proc.run{argv = {"sh", "-c", 'python3 "$0" --port-file "$1" --log "$2" >/dev/null 2>&1 & echo $!',
                              TESTS .. "/schedule/webhook_receiver.py", PORTF, HOOKLOG}, check = true}.stdout:match("%d+")
local port = wait_until("the webhook receiver", function() return read(PORTF) end)

local VARS = {"CLUBIO_DR_PATH=" .. SITE, "CLUBIO_DR_STATE_DIR=" .. STATE, "CLUBIO_DR_JOURNAL=off", "MARK_DIR=" .. MARK,
              "CLUBIO_DR_SCHEDULE=" .. CONF, "CLUBIO_DR_BIN=" .. BIN,
              "ALERT_WEBHOOK_URL=http://127.0.0.1:" .. port .. "/generic"}
local function cli(args)
  local argv = {"env"}
  for _, v in ipairs(VARS) do argv[#argv + 1] = v end
  argv[#argv + 1] = BIN
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run{argv = argv}
end
-- a scheduler in the background, its output to OUT; returns its pid
local function scheduler(out)
  local e = table.concat(VARS, " ")
  return proc.run{argv = {"sh", "-c", '(exec env ' .. e .. ' "$0" schedule > "$1" 2>&1 </dev/null) >/dev/null 2>&1 & echo $!',
                          BIN, out}, check = true}.stdout:match("%d+")
end
local function runs() return S.read_runs(STATE .. "/runs.jsonl") end
local function svc_runs()
  local out = {}
  for _, r in ipairs(runs()) do if r.job == "svc" then out[#out + 1] = r end end
  return out
end
local function pid_n(n)
  return wait_until("service instance " .. n, function()
    local l = lines(MARK .. "/svc.pids")
    return l[n] and l[n]:match("^%d+")
  end)
end
local function list_svc()
  local r = cli{"schedule", "--list", "--json"}
  T.eq(r.status, 0, r.stderr)
  for _, row in ipairs(cjson.decode(r.stdout)) do if row.name == "svc" then return row end end
end

T.case("proc.spawn: runs while we go on; poll, wait with a limit, terminate with a grace, garbage collection", function()
  -- the child waits for our go (a file), so that it is surely running when we ask its pid
  local c = proc.spawn{argv = {"sh", "-c", 'while [ ! -e "$1.go" ]; do sleep 0.01; done; echo "$X" > "$1"; exit 3', "sh",
                               D .. "/spawned"}, env = {X = "from env"}}
  T.ok(math.type(c:pid()) == "integer")
  write(D .. "/spawned.go", "")
  T.eq(c:wait(60), 3)
  T.eq(c:poll(), 3, "the status stays")
  T.eq(c:pid(), nil, "reaped")
  T.eq(read(D .. "/spawned"), "from env\n")
  -- a child that runs on: wait gives up at its limit and leaves it running
  local s = proc.spawn{argv = {"sleep", "60"}}
  T.eq(s:wait(0.05), nil)
  T.eq(s:poll(), nil)
  T.eq(s:terminate(5), 128 + 15, "SIGTERM")
  -- one that ignores SIGTERM gets SIGKILL after the grace
  local k = proc.spawn{argv = {"sh", "-c", "trap '' TERM; touch \"$1\"; while :; do sleep 0.05; done", "sh", D .. "/trapped"}}
  wait_until("the trap to be set", function() return read(D .. "/trapped") end)
  T.eq(k:terminate(0.2), 128 + 9, "SIGKILL after the grace")
  -- a handle that is collected stops its child
  local pid
  do
    local g <close> = proc.spawn{argv = {"sleep", "60"}}
    pid = tostring(g:pid())
  end
  T.ok(not alive(pid), "stopped when closed")
  T.raises(function() proc.spawn{argv = {"true"}, stdin = "x"} end)
  T.raises(function() proc.spawn{argv = {"no-such-command-here"}} end)
end)

T.case("jobs file: a service takes no schedule, timeout or retries; service must be a boolean", function()
  local function conf(text)
    local p = D .. "/bad.conf"
    write(p, text)
    local argv = {"env"}
    for _, v in ipairs(VARS) do argv[#argv + 1] = v:gsub("^CLUBIO_DR_SCHEDULE=.*", "CLUBIO_DR_SCHEDULE=" .. p) end
    argv[#argv + 1] = BIN
    for _, a in ipairs{"schedule", "--list"} do argv[#argv + 1] = a end
    return proc.run{argv = argv}
  end
  local r = conf("return {scripts = false, jobs = {svc = {service = true, schedule = '* * * * *'}}}")
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "job 'svc' is a service %(always running%): it takes no schedule")
  r = conf("return {scripts = false, jobs = {svc = {service = 'yes'}}}")
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "service must be true or false")
  r = conf("return {scripts = false, jobs = {svc = {service = true, restart_delay = -1}}}")
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "restart_delay must be a number")
  -- a service is not run once, and --service refuses a cron job
  r = cli{"schedule", "--run", "svc"}
  T.eq(r.status, 2, r.stderr)
  T.match(r.stderr, "is a service")
  r = cli{"schedule", "--service", "tick"}
  T.eq(r.status, 2, r.stderr)
  T.match(r.stderr, "is not a service")
  T.eq(list_svc().state, "stopped")
end)

T.case("the scheduler starts its service, restarts it after kill -9 (exit recorded), alerts after 2 exits, stops it on SIGTERM; a second scheduler stands by", function()
  local out1, out2 = D .. "/sched1.out", D .. "/sched2.out"
  local s1 = scheduler(out1)
  local ok, err = pcall(function()
    local p1 = pid_n(1)
    T.match(lines(MARK .. "/svc.pids")[1], " 1$", "the service knows it runs under the scheduler")
    -- the cron job beside it still runs when due
    wait_until("the cron job", function() return read(MARK .. "/tick.count") end)
    local row = wait_until("--list to show it running", function()
      local r = list_svc()
      return r.state == "running" and r or nil
    end)
    T.eq(tostring(math.tointeger(row.pid)), p1, "--list names the running instance")
    T.eq(row.service, true)
    T.eq(row.schedule, "service")

    -- kill -9: recorded with its status, started again
    proc.run{argv = {"kill", "-KILL", p1}, check = true}
    local p2 = pid_n(2)
    T.ok(p2 ~= p1)
    local rs = svc_runs()
    local first
    for _, r in ipairs(rs) do if tostring(math.tointeger(r.service_pid)) == p1 and r.status ~= "running" then first = r end end
    T.ok(first, "the exit is recorded")
    T.eq(first.status, "failed")
    T.eq(first.exit, 137)
    T.match(first.error, "killed by signal 9")
    T.match(read(out1), "service svc exited %(status 137%)")
    T.eq(#lines(HOOKLOG), 0, "one exit does not alert")

    -- a second exit within the window alerts (P2), once
    proc.run{argv = {"kill", "-KILL", p2}, check = true}
    local p3 = pid_n(3)
    local hook = wait_until("the alert", function() return lines(HOOKLOG)[1] end)
    local ev = cjson.decode(cjson.decode(hook).body)
    T.eq(ev.event, "failure")
    T.eq(ev.job, "svc")
    T.eq(ev.severity, "P2")
    T.eq(ev.service, true)
    T.eq(ev.exits_in_window, 2)
    T.match(ev.summary, "service svc exited 2 times")

    -- a second scheduler: it stands by, and starts no second instance
    local s2 = scheduler(out2)
    local ok2, err2 = pcall(function()
      wait_until("the second scheduler to stand by", function() return (read(out2) or ""):match("standby: svc runs elsewhere") end)
      T.eq(#lines(MARK .. "/svc.pids"), 3, "no second instance")
      T.ok(alive(p3), "the first scheduler's instance runs on")
      -- SIGTERM to the first scheduler: its service is stopped with SIGTERM (it noted that)
      proc.run{argv = {"kill", "-TERM", s1}, check = true}
      wait_until("the first scheduler to stop", function() return not alive(s1) end)
      T.eq(lines(MARK .. "/svc.stopped")[1], p3, "stopped by SIGTERM, not killed")
      T.ok(not alive(p3))
      local last
      for _, r in ipairs(svc_runs()) do if tostring(math.tointeger(r.service_pid)) == p3 then last = r end end
      T.eq(last.status, "stopped")
      T.match(read(out1), "service svc stopped")
      -- the standby takes over
      local p4 = pid_n(4)
      T.ok(alive(p4))
      T.eq(tostring(math.tointeger(wait_until("--list to show the new instance", function()
        local r = list_svc()
        return r.state == "running" and tostring(math.tointeger(r.pid)) == p4 and r or nil
      end).pid)), p4)
    end)
    proc.run{argv = {"kill", "-TERM", s2}}
    wait_until("the second scheduler to stop", function() return not alive(s2) end)
    if not ok2 then error(err2, 0) end
    T.eq(#lines(MARK .. "/svc.stopped"), 2, "each instance stopped was stopped by SIGTERM")
  end)
  proc.run{argv = {"kill", "-TERM", s1}} -- stopped even when a wait gave up
  wait_until("the first scheduler to stop", function() return not alive(s1) end)
  if not ok then error(err, 0) end
  -- nothing of the service is left: its lock is free, --list says stopped
  local l = proc.lock(STATE .. "/locks/svc.lock")
  T.ok(l, "no process of the service holds its lock")
  l:release()
  T.eq(list_svc().state, "stopped")
  for _, r in ipairs(svc_runs()) do T.ok(r.status ~= "running" or false, "no run is left running") end
end)

T.case("a scheduler killed with SIGKILL: its supervisor stops the service by itself", function()
  local out = D .. "/sched3.out"
  local n0 = #lines(MARK .. "/svc.pids")
  local s = scheduler(out)
  local p = pid_n(n0 + 1)
  proc.run{argv = {"kill", "-KILL", s}, check = true}
  wait_until("the service to be stopped", function() return not alive(p) end)
  T.eq(lines(MARK .. "/svc.stopped")[#lines(MARK .. "/svc.stopped")], p, "with SIGTERM")
  local l = wait_until("the lock to be free", function() return proc.lock(STATE .. "/locks/svc.lock") end)
  l:release()
end)

proc.run{argv = {"kill", rpid}}
if os.getenv("KEEP_TEST_DIR") then print("kept " .. D) else proc.run{argv = {"rm", "-rf", D}} end
return T.finish()
