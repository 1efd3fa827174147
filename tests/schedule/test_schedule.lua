-- The scheduler end to end, through the binary, with trivial job scripts in a temporary
-- CLUBIO_DR_PATH: jobs from headers and the jobs file, --list, --once and what "due" means,
-- two concurrent runs of one job (the second refuses), runs left "running", timeout, retries,
-- webhook alerts received by a local HTTP server (P2, P1 after 2 days, recovery), the metrics
-- text and textfile, and SIGTERM stopping the service and its running child.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local read, write = T.read, T.write
local proc, env, cjson, time, clubio = require "proc", require "env", require "cjson", require "time", require "clubio"
local S = require "clubio.schedule"
local BIN = env.get("CLUBIO_DR_BIN")
local TESTS = env.get("CLUBIO_DR_TEST_DIR")

local D = T.tmpdir()
local SITE, STATE, PROM = D .. "/site", D .. "/state", D .. "/prom"
proc.run{argv = {"mkdir", "-p", SITE .. "/scripts", STATE, PROM}, check = true}

local function exists(path) return read(path) ~= nil end
-- waits (bounded) for a file another process writes; the bound is a hang guard, not a timing assertion
local function wait_for(path, what)
  for _ = 1, 1200 do
    if exists(path) then return read(path) end
    time.sleep(0.05)
  end
  error("gave up waiting for " .. (what or path))
end

-- job scripts
write(SITE .. "/scripts/hello.lua", [[
-- Say hello (a test job)
-- schedule: 0 0 1 1 *
local job = require "clubio.job"
local J = job.new("hello")
local f = io.open(os.getenv("MARK_DIR") .. "/hello.count", "a"); f:write("x"); f:close()
return J:finish({bytes = 12345}, "hello")
]])
write(SITE .. "/scripts/slow.lua", [[
-- Wait until released (a test job)
local time = require "time"
local d = os.getenv("MARK_DIR")
local f = io.open(d .. "/slow.started", "w"); f:write("1"); f:close()
for _ = 1, 1200 do
  local r = io.open(d .. "/slow.release", "r")
  if r then r:close(); break end
  time.sleep(0.05)
end
local g = io.open(d .. "/slow.done", "w"); g:write("1"); g:close()
return 0
]])
write(SITE .. "/scripts/flaky.lua", [[
-- Fail on the first attempt, succeed on the second (a test job)
local clubio = require "clubio"
local p = os.getenv("MARK_DIR") .. "/flaky.attempts"
local f = io.open(p, "a"); f:write("x"); f:close()
f = io.open(p, "r"); local n = #f:read("a"); f:close()
if n % 2 == 1 then clubio.fail{message = "flaky: first attempt fails", hint = "try again"} end
return 0
]])
write(SITE .. "/scripts/broken.lua", [[
-- Fail unless MARK_DIR/broken.fixed exists (a test job)
local clubio = require "clubio"
local f = io.open(os.getenv("MARK_DIR") .. "/broken.fixed", "r")
if not f then clubio.fail{message = "broken: the backup failed", hint = "see the daily-backup-failure runbook"} end
f:close()
return 0
]])
write(SITE .. "/scripts/badconf.lua", [[
-- A configuration error (exit 3; not worth retrying)
require("clubio").fail{message = "SOME_VAR is not set", class = "config"}
]])
write(SITE .. "/scripts/sleepy.lua", [[
-- Sleeps far longer than its timeout
require("time").sleep(120)
return 0
]])
write(SITE .. "/jobs.conf", [[
-- test jobs: only this site's scripts, so the built-in jobs never run here
return {
  scripts = "site",
  defaults = {retries = 0, retry_delay = 0, grace = 400 * 86400},
  jobs = {
    ["hello-args"] = {script = "hello", args = {"--dry-run-not"}, schedule = "0 0 1 1 *", enabled = false},
    slow = {schedule = "0 0 1 1 *", timeout = 600},
    flaky = {schedule = "0 0 1 1 *", retries = 2},
    broken = {schedule = "0 2 * * *", grace = 0},
    badconf = {schedule = "0 0 1 1 *", retries = 3},
    sleepy = {schedule = "0 0 1 1 *", timeout = 1, retries = 0},
    ["verify-hello"] = {script = "hello", schedule = "0 6 * * *", verification = true, grace = 0, lock = "hello"},
  },
}
]])

local BASE_ENV = {CLUBIO_DR_PATH = SITE, CLUBIO_DR_STATE_DIR = STATE, CLUBIO_DR_JOURNAL = "off", MARK_DIR = D,
                  CLUBIO_DR_TEXTFILE_DIR = PROM}
local function cli(args, extra)
  local e = {}
  for k, v in pairs(BASE_ENV) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {BIN}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run{argv = argv, env = e}
end
local function runs(job)
  local out = {}
  for _, r in ipairs(S.read_runs(STATE .. "/runs.jsonl")) do
    if not job or r.job == job then out[#out + 1] = r end
  end
  return out
end
local function count(s, pat) local n = 0; for _ in s:gmatch(pat) do n = n + 1 end; return n end

T.case("--list: header jobs and jobs-file jobs, with their next run", function()
  local r = cli{"schedule", "--list", "--json"}
  T.eq(r.status, 0, r.stderr)
  local list = cjson.decode(r.stdout)
  local by = {}
  for _, j in ipairs(list) do by[j.name] = j end
  T.ok(by.hello and by.slow and by.flaky and by["verify-hello"], r.stdout)
  T.ok(not by["backup-database"], "scripts = \"site\" leaves the built-in jobs out")
  T.ok(not by["hello-args"], "enabled = false")
  T.eq(by.hello.schedule, "0 0 1 1 *")
  local y = tonumber(os.date("!%Y")) + 1
  T.eq(by.hello.next, string.format("%d-01-01T00:00:00Z", y))
  T.eq(by.slow.timeout, 600)
  T.eq(by.flaky.retries, 2)
  T.eq(by["verify-hello"].script, "hello")
  r = cli{"schedule", "--list"}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "JOB%s+SCHEDULE%s+NEXT %(UTC%)")
  T.match(r.stdout, "\nhello%s+0 0 1 1 %*%s+%d+%-01%-01T00:00:00Z%s+never")
end)

T.case("jobs file mistakes are one-line configuration errors", function()
  local bad = D .. "/bad.conf"
  local cases = {
    {"return {jobs = {x = {schedule = '0 2 * * *', retires = 2}}}", "job 'x' has an unknown key 'retires'"},
    {"return {jobs = {x = {schedule = '0 25 * * *'}}}", "job 'x' .*hour 25 is out of range"},
    {"return {jobs = {x = {script = 'hello'}}}", "job 'x' has no schedule"},
    {"return {jbos = {}}", "unknown key 'jbos'"},
    {"return {jobs = {x = {schedule = '@daily', timeout = -1}}}", "timeout must be a number"},
    {"return {", "jobs file .*bad.conf"},
    {"os.exit(1)", "attempt to index a nil value"},
  }
  for _, c in ipairs(cases) do
    write(bad, c[1])
    local r = cli({"schedule", "--list"}, {CLUBIO_DR_SCHEDULE = bad})
    T.eq(r.status, 3, c[1] .. ": " .. r.stderr)
    T.match(r.stderr, "^clubio%-dr: [^\n]*" .. c[2], c[1])
    T.ok(count(r.stderr, "\n") <= 2, "one line and a hint: " .. r.stderr)
  end
  local r = cli({"schedule", "--list"}, {CLUBIO_DR_SCHEDULE = D .. "/nope.conf"})
  T.eq(r.status, 3)
  T.match(r.stderr, "nope.conf %(CLUBIO_DR_SCHEDULE%) cannot be read")
  r = cli({"schedule", "--frobnicate"})
  T.eq(r.status, 2)
  T.match(r.stderr, "unknown option '%-%-frobnicate'")
  r = cli({"schedule", "--once", "--list"})
  T.eq(r.status, 2)
  T.match(r.stderr, "one at a time")
  r = cli({"metrics", "somewhere"})
  T.eq(r.status, 2)
  T.match(r.stderr, "a folder is given with %-%-write")
  r = cli({"schedule", "--run", "nosuch"})
  T.eq(r.status, 2)
  T.match(r.stderr, "no scheduled job named 'nosuch'")
end)

T.case("due: latest fire time with no run recorded since; grace for a job never run", function()
  local cron = require "clubio.cron"
  local job = {name = "j", cron = cron.parse("0 2 * * *"), grace = 3600}
  local at = function(s) return assert(time.parse(s)) end
  T.eq(S.due(job, at("2024-01-16T02:30:00Z"), {}), at("2024-01-16T02:00:00Z"), "never run, within grace")
  T.eq(S.due(job, at("2024-01-16T03:30:00Z"), {}), nil, "never run, past grace: wait for the next fire")
  local rec = {job = "j", status = "failed", scheduled_at = at("2024-01-16T02:00:00Z")}
  T.eq(S.due(job, at("2024-01-16T05:00:00Z"), {rec}), nil, "ran (even failed) for this fire time")
  T.eq(S.due(job, at("2024-01-19T05:00:00Z"), {rec}), at("2024-01-19T02:00:00Z"), "missed fires: caught up once")
  local skipped = {job = "j", status = "skipped", scheduled_at = at("2024-01-19T02:00:00Z")}
  T.eq(S.due(job, at("2024-01-19T05:00:00Z"), {rec, skipped}), at("2024-01-19T02:00:00Z"), "a skip is not a run")
  local manual = {job = "j", status = "ok", scheduled_at = at("2024-01-19T04:00:00Z")}
  T.eq(S.due(job, at("2024-01-19T05:00:00Z"), {rec, manual}), nil, "a manual run since the fire covers it")
end)

T.case("--once runs what is due, records it, and the second --once finds nothing due", function()
  local r = cli{"schedule", "--once", "--dry-run"}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "would run hello")
  T.eq(#runs(), 0, "--dry-run records nothing")
  r = cli({"schedule", "--once"}, {CLUBIO_DR_SCHEDULE = D .. "/only-hello.conf"})
  -- (a jobs file with just hello, so that the test jobs above do not all run here)
  T.eq(r.status, 3, "missing jobs file: " .. r.stderr)
  write(D .. "/only-hello.conf", "return {scripts = false, defaults = {grace = 400 * 86400}, jobs = {hello = {schedule = '0 0 1 1 *'}}}")
  r = cli({"schedule", "--once"}, {CLUBIO_DR_SCHEDULE = D .. "/only-hello.conf"})
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "starting hello")
  T.match(r.stderr, "hello ok in")
  T.eq(read(D .. "/hello.count"), "x")
  local rs = runs("hello")
  T.eq(#rs, 1)
  T.eq(rs[1].status, "ok")
  T.eq(rs[1].exit, 0)
  T.eq(rs[1].bytes, 12345)
  T.eq(rs[1].trigger, "once")
  T.eq(rs[1].scheduled, string.format("%s-01-01T00:00:00Z", os.date("!%Y")))
  T.eq(rs[1].host, clubio.hostname())
  r = cli({"schedule", "--once"}, {CLUBIO_DR_SCHEDULE = D .. "/only-hello.conf"})
  T.eq(r.status, 0)
  T.match(r.stderr, "nothing is due")
  T.eq(#runs("hello"), 1)
  T.eq(read(D .. "/hello.count"), "x")
end)

T.case("two concurrent runs of one job: the second refuses while the first holds the lock", function()
  local e = {}
  for k, v in pairs(BASE_ENV) do e[#e + 1] = k .. "=" .. v end
  proc.run{argv = {"sh", "-c", '(env ' .. table.concat(e, " ") .. ' "$0" schedule --run slow > "$1/slow.out" 2>&1; echo $? > "$1/slow.exit") >/dev/null 2>&1 &',
                   BIN, D}, check = true}
  wait_for(D .. "/slow.started", "the first run to start")
  local holder = runs("slow")[1]
  T.eq(holder.status, "running")
  T.eq(holder.host, clubio.hostname())
  T.ok(not proc.lock(STATE .. "/locks/slow.lock"), "the lock is held")
  local r = cli{"schedule", "--run", "slow"}
  T.eq(r.status, 0, "a refused run is not a failure: " .. r.stdout .. r.stderr)
  T.match(r.stderr, "skipped: locked by run " .. holder.run_id:gsub("%p", "%%%0") .. " %(pid " ..
          math.tointeger(holder.pid) .. " on " .. clubio.hostname():gsub("%p", "%%%0"))
  write(D .. "/slow.release", "1")
  T.eq(wait_for(D .. "/slow.exit", "the first run to end"), "0\n")
  local rs = runs("slow")
  T.eq(#rs, 1, "one run recorded")
  T.eq(rs[1].status, "ok")
  local l = proc.lock(STATE .. "/locks/slow.lock")
  T.ok(l, "the lock is released")
  l:release()
end)

T.case("a run left 'running' whose lock is free is recorded as interrupted; an old lock file is no obstacle", function()
  -- what a scheduler killed before its child started leaves: a "running" record, no process
  local f = assert(io.open(STATE .. "/runs.jsonl", "a"))
  f:write(cjson.encode{job = "hello", lock = "hello", run_id = "ghost-1", status = "running", pid = 1, host = "h",
                       scheduled_at = 1, started_at = time.now() - 5}, "\n")
  f:close()
  -- a lock file in the old format (JSON naming a live pid) is only a file: the kernel lock decides
  write(STATE .. "/locks/hello.lock", cjson.encode{pid = S.self().pid, host = clubio.hostname(), run_id = "old-1"})
  local r = cli{"schedule", "--run", "hello"}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "recorded an interrupted run")
  local rs = runs("hello")
  T.eq(rs[#rs].status, "ok")
  T.eq(rs[#rs - 1].run_id, "ghost-1")
  T.eq(rs[#rs - 1].status, "interrupted")
  T.match(rs[#rs - 1].error, "stopped during the run")
  -- a held lock (this test holds it) refuses, and leaves the "running" record alone
  local f2 = assert(io.open(STATE .. "/runs.jsonl", "a"))
  f2:write(cjson.encode{job = "hello", lock = "hello", run_id = "live-1", status = "running", pid = 7, host = "h",
                        scheduled_at = 1, started_at = time.now(), started = "now"}, "\n")
  f2:close()
  local held = assert(proc.lock(STATE .. "/locks/hello.lock"))
  r = cli{"schedule", "--run", "verify-hello"}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "skipped: locked by run live%-1 %(pid 7 on h, started now%)", "verify-hello shares hello's lock")
  T.eq(runs("hello")[#runs("hello")].status, "running")
  held:release()
  r = cli{"schedule", "--run", "hello"}
  T.eq(r.status, 0)
  rs = runs("hello")
  T.eq(rs[#rs - 1].run_id, "live-1")
  T.eq(rs[#rs - 1].status, "interrupted")
end)

T.case("retries: a failing attempt is retried; a configuration error is not; a timeout is recorded", function()
  local r = cli{"schedule", "--run", "flaky"}
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.match(r.stderr, "attempt 1 of 3 failed %(flaky: first attempt fails%)")
  local rs = runs("flaky")
  T.eq(rs[1].status, "ok")
  T.eq(#rs[1].attempts, 2)
  T.eq(rs[1].attempts[1].exit, 1)
  r = cli{"schedule", "--run", "badconf"}
  T.eq(r.status, 1)
  rs = runs("badconf")
  T.eq(#rs[1].attempts, 1, "exit 3 is not retried")
  T.eq(rs[1].exit, 3)
  T.eq(rs[1].error, "SOME_VAR is not set")
  r = cli{"schedule", "--run", "sleepy"}
  T.eq(r.status, 1)
  rs = runs("sleepy")
  T.eq(rs[1].status, "timeout")
  T.eq(rs[1].exit, 124)
  T.match(r.stderr, "sleepy timeout %(exit 124%)")
end)

-- the webhook receiver
local PORTF, HOOKLOG = D .. "/hook.port", D .. "/hook.log"
local rpid = proc.run{argv = {"sh", "-c", 'python3 "$0" --port-file "$1" --log "$2" >/dev/null 2>&1 & echo $!',
                              TESTS .. "/schedule/webhook_receiver.py", PORTF, HOOKLOG}, check = true}.stdout:match("%d+")
local port = wait_for(PORTF, "the webhook receiver")
local HOOKS = {SLACK_WEBHOOK_URL = "http://127.0.0.1:" .. port .. "/services/T000/B000/secret-slack-token",
               ALERT_WEBHOOK_URL = "http://127.0.0.1:" .. port .. "/generic"}
local function hooks()
  local out = {}
  for line in (read(HOOKLOG) or ""):gmatch("[^\n]+") do
    local h = cjson.decode(line)
    h.doc = cjson.decode(h.body)
    out[#out + 1] = h
  end
  return out
end

T.case("alerts: P2 on a first failure, P1 after failures on 2 days, then recovery", function()
  local r = cli({"schedule", "--run", "broken"}, HOOKS)
  T.eq(r.status, 1)
  local h = hooks()
  T.eq(#h, 2, "slack + generic: " .. r.stdout .. r.stderr)
  T.eq(h[1].path, "/services/T000/B000/secret-slack-token")
  T.eq(h[1].content_type, "application/json")
  T.match(h[1].doc.text, "^:red_circle: %[P2%] broken failed on .* %(exit 1%): broken: the backup failed")
  T.eq(h[1].doc.attachments[1].color, "danger")
  T.eq(h[2].path, "/generic")
  T.eq(h[2].doc.event, "failure")
  T.eq(h[2].doc.severity, "P2")
  T.eq(h[2].doc.job, "broken")
  T.eq(h[2].doc.consecutive_failures, 1)
  T.eq(h[2].doc.failing_days, 1)
  T.eq(h[2].doc.hint, "see the daily-backup-failure runbook")
  T.no_match(r.stdout .. r.stderr, "secret%-slack%-token", "the webhook URL is a secret")
  -- yesterday's failure too (written as the scheduler would have): now 2 days -> P1
  local rs = runs("broken")
  local y = rs[1]
  y.run_id, y.scheduled_at, y.started_at = "broken-yesterday", y.scheduled_at - 86400, y.started_at - 86400
  local all = read(STATE .. "/runs.jsonl")
  write(STATE .. "/runs.jsonl", cjson.encode(y) .. "\n" .. all)
  os.remove(HOOKLOG)
  r = cli({"schedule", "--run", "broken"}, HOOKS)
  h = hooks()
  T.eq(#h, 2)
  T.match(h[1].doc.text, "^:rotating_light: %[P1%] broken failed")
  T.eq(h[2].doc.severity, "P1")
  T.eq(h[2].doc.consecutive_failures, 3)
  T.eq(h[2].doc.failing_days, 2)
  T.match(h[2].doc.escalation, "escalated to P1: failing for 2 consecutive days")
  -- fixed: one recovery alert; the next success says nothing
  write(D .. "/broken.fixed", "1")
  os.remove(HOOKLOG)
  r = cli({"schedule", "--run", "broken"}, HOOKS)
  T.eq(r.status, 0)
  h = hooks()
  T.eq(#h, 2)
  T.eq(h[2].doc.event, "recovery")
  T.eq(h[2].doc.severity, "resolved")
  T.eq(h[2].doc.failed_runs, 3)
  T.match(h[1].doc.text, "broken recovered after 3 failed runs")
  T.eq(h[1].doc.attachments[1].color, "good")
  os.remove(HOOKLOG)
  cli({"schedule", "--run", "broken"}, HOOKS)
  T.eq(#hooks(), 0, "ok after ok: no alert")
end)

T.case("an unreachable or failing webhook is logged, and does not change the job's outcome", function()
  os.remove(D .. "/broken.fixed")
  local r = cli({"schedule", "--run", "broken"}, {SLACK_WEBHOOK_URL = "http://127.0.0.1:1/hook",
                                                   ALERT_WEBHOOK_URL = "http://127.0.0.1:" .. port .. "/status/500"})
  T.eq(r.status, 1)
  T.match(r.stderr, "alert not delivered")
  T.match(r.stderr, "HTTP 500")
  T.eq(runs("broken")[#runs("broken")].status, "failed")
end)

T.case("metrics: Prometheus text from the run records, and the textfile after each run", function()
  local r = cli{"metrics"}
  T.eq(r.status, 0, r.stderr)
  local m = r.stdout
  T.match(m, "# HELP clubio_dr_job_last_success_timestamp_seconds [^\n]+\n# TYPE clubio_dr_job_last_success_timestamp_seconds gauge\n")
  T.match(m, '\nclubio_dr_job_last_success_timestamp_seconds{job="hello"} %d+%.?%d*\n')
  T.match(m, '\nclubio_dr_job_last_bytes{job="hello"} 12345\n')
  T.match(m, '\nclubio_dr_job_last_run_success{job="broken"} 0\n')
  T.match(m, '\nclubio_dr_job_consecutive_failures{job="broken"} 1\n')
  T.match(m, '\nclubio_dr_job_runs_total{job="broken",status="failed"} 4\n')
  T.match(m, '\nclubio_dr_job_runs_total{job="sleepy",status="timeout"} 1\n')
  T.match(m, '\nclubio_dr_job_last_duration_seconds{job="hello"} [%d.e+-]+\n')
  T.match(m, "# TYPE clubio_dr_job_runs_total counter\n")
  -- every line is a comment or `name{labels} value`, each metric's HELP/TYPE once
  local seen = {}
  for line in m:gmatch("[^\n]+") do
    if line:sub(1, 1) == "#" then
      local kind, name = line:match("^# (%u+) ([%w_]+) ")
      T.ok(kind == "HELP" or kind == "TYPE", line)
      T.ok(not seen[kind .. name], "once: " .. line)
      seen[kind .. name] = true
    else
      T.ok(line:match('^[a-z_]+{[a-z_]+="[^"]*"[^}]*} [%d.e+-]+$') or line:match("^[a-z_]+ [%d.]+$"), line)
    end
  end
  -- the scheduler wrote the textfile after its last run; `metrics --write DIR` writes one too
  local tf = read(PROM .. "/clubio_dr.prom")
  T.ok(tf, "textfile written")
  T.match(tf, 'clubio_dr_job_last_run_success{job="broken"} 0')
  r = cli{"metrics", "--write", D}
  T.eq(r.status, 0, r.stderr)
  T.match(read(D .. "/clubio_dr.prom"), 'clubio_dr_job_last_bytes{job="hello"} 12345')
  local ls = proc.run{argv = {"ls", "-a", D, PROM}}.stdout
  T.no_match(ls, "%.tmp%.", "no temporary file left")
  -- a verification job's status
  cli{"schedule", "--run", "verify-hello"}
  m = cli{"metrics"}.stdout
  T.match(m, '\nclubio_dr_verification_ok{job="verify%-hello"} 1\n')
end)

T.case("--log-level debug: the alerts' webhook URLs are printed in no form (query, path, userinfo)", function()
  os.remove(HOOKLOG)
  local slack = "http://hookuser:pw0rd-z@127.0.0.1:" .. port .. "/services/T000/B000/secret-slack-token?x=1"
  local generic = "http://127.0.0.1:" .. port .. "/generic?code=Zx9SecretQuery"
  local r = cli({"--log-level", "debug", "schedule", "--run", "broken"}, {SLACK_WEBHOOK_URL = slack, ALERT_WEBHOOK_URL = generic})
  T.eq(r.status, 1)
  local h = hooks()
  T.eq(#h, 2, r.stdout .. r.stderr)
  T.eq(h[1].path, "/services/T000/B000/secret-slack-token?x=1")
  T.eq(h[2].path, "/generic?code=Zx9SecretQuery")
  local out = r.stdout .. r.stderr
  T.match(out, "debug http POST ", "the debug lines are there")
  for _, form in ipairs{"secret%-slack%-token", "Zx9SecretQuery", "pw0rd%-z", "hookuser", "/services/T000/B000", "/generic%?"} do
    T.no_match(out, form, form)
  end
end)

T.case("SIGTERM stops the service after stopping its running child; the next start records the interrupted run", function()
  for _, f in ipairs{"slow.started", "slow.release", "slow.done", "slow.exit"} do os.remove(D .. "/" .. f) end
  -- a fresh state in which only `slow` exists and is due
  local st2 = D .. "/state2"
  write(D .. "/only-slow.conf", "return {scripts = false, defaults = {grace = 400 * 86400, retries = 0}, jobs = {slow = {schedule = '0 0 1 1 *'}}}")
  local e = {}
  for k, v in pairs(BASE_ENV) do e[#e + 1] = k .. "=" .. (k == "CLUBIO_DR_STATE_DIR" and st2 or v) end
  e[#e + 1] = "CLUBIO_DR_SCHEDULE=" .. D .. "/only-slow.conf"
  local pid = proc.run{argv = {"sh", "-c", '(exec env ' .. table.concat(e, " ") .. ' "$0" schedule > "$1/svc.out" 2>&1) & echo $!', BIN, D},
                       check = true}.stdout:match("%d+")
  wait_for(D .. "/slow.started", "the service to start slow")
  local lock = S.read_runs(st2 .. "/runs.jsonl")[1]
  T.eq(lock.status, "running")
  T.eq(tostring(math.tointeger(lock.pid)), pid, "the service runs it")
  proc.run{argv = {"kill", "-TERM", pid}, check = true}
  for _ = 1, 1200 do
    if not exists("/proc/" .. pid .. "/stat") or read("/proc/" .. pid .. "/stat"):match("^%d+ %b() Z") then break end
    time.sleep(0.05)
  end
  T.ok(not exists(D .. "/slow.done"), "the child was stopped, not left to finish")
  local out = read(D .. "/svc.out")
  T.match(out, "scheduler started: 1 job")
  T.match(out, "starting slow")
  -- no process of the run is left: its lock is free
  local l = proc.lock(st2 .. "/locks/slow.lock")
  T.ok(l, "no process of the run holds the lock")
  l:release()
  -- the next start records the interrupted run
  write(D .. "/slow.release", "1")
  local r = cli({"schedule", "--run", "slow"}, {CLUBIO_DR_STATE_DIR = st2, CLUBIO_DR_SCHEDULE = D .. "/only-slow.conf"})
  T.eq(r.status, 0, r.stdout .. r.stderr)
  local rs = S.read_runs(st2 .. "/runs.jsonl")
  T.eq(rs[1].status, "interrupted", r.stdout .. r.stderr)
  T.eq(rs[1].run_id, lock.run_id)
  T.eq(rs[2].status, "ok")
end)

proc.run{argv = {"kill", rpid}}
proc.run{argv = {"rm", "-rf", D}}
return T.finish()
