-- Cancellation reaches every wait (issue 18, item 2). A child source that writes, then stays
-- silent (`sh -c 'echo x; sleep 300'`) used to hold a SIGTERM or `--timeout 2` until the child
-- ended, and a second SIGTERM exited at once, leaving the S3 multipart upload in progress. Here a
-- real clubio-dr runs such a pipe into a file sink and into an S3 upload; it gets the signal (or
-- its --timeout), and the test checks what is left: the exit status, no partial file, no
-- multipart upload in progress, no child left running.
--
-- No timed assertions: each run has a generous outer limit (60 s) that only guards against a
-- hang; the measured seconds are printed. S3 goes through two fault proxies (fault_proxy.py): the
-- outer one can hold the abort request (to deliver a second signal during it), the inner one
-- answers ListMultipartUploads/AbortMultipartUpload from s3rver's upload state, which s3rver 5
-- lacks (a mock of those two calls; every other request is served by s3rver).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local env = require "env"
local time = require "time"
local cjson = require "cjson"

local BIN = env.get("CLUBIO_DR_BIN")
local B = env.get("BACKUP_S3_BUCKET")
local tmp = T.tmpdir()
local RUN = string.format("cancel%d-%d", os.time(), math.random(1e6))
local HANG_GUARD = 60 -- seconds; only a hang gets near this
-- the silent child: far longer than the guard (a run that waits for the child fails as a hang),
-- and a marker duration, so that a leftover `sleep` can be found by its argv
local SLEEP = "300." .. tostring(math.random(100, 999))

local inner = U.proxy(tmp, {uploads = true}) -- list/abort uploads (mock) in front of s3rver
-- the outer proxy: its own folder, upstream = the inner proxy
local odir = tmp .. "/outer"
U.sh("mkdir -p " .. U.q(odir))
local outer = {rules = odir .. "/rules.json", log = odir .. "/proxy.log", ready = odir .. "/proxy.ready"}
U.write(outer.rules, "[]")
U.sh(string.format("python3 %s %s %s %s %s >%s 2>&1 &", U.q(U.dir .. "/fault_proxy.py"), U.q(inner.url),
                   U.q(outer.rules), U.q(outer.log), U.q(outer.ready), U.q(odir .. "/proxy.err")))
for _ = 1, 200 do
  local f = io.open(outer.ready)
  if f then
    local port, pid = f:read("n", "n")
    f:close()
    outer.url, outer.pid = "http://127.0.0.1:" .. port, pid
    break
  end
  time.sleep(0.05)
end
assert(outer.url, "the outer fault proxy did not start; see " .. odir .. "/proxy.err")

local function file_exists(p)
  local f = io.open(p)
  if f then f:close() end
  return f ~= nil
end

local function log_has(path, pattern)
  local f = io.open(path)
  if not f then return false end
  for line in f:lines() do
    if line:find(pattern) then
      f:close()
      return true
    end
  end
  f:close()
  return false
end

-- Starts `clubio-dr [flags] run SCRIPT` in the background; returns a handle with its pid.
local function launch(name, script_text, flags)
  local dir = tmp .. "/" .. name
  U.sh("mkdir -p " .. U.q(dir .. "/out"))
  local script = dir .. "/job.lua"
  U.write(script, script_text)
  local h = {dir = dir, out = dir .. "/out", rc = dir .. "/rc", pidf = dir .. "/pid", err = dir .. "/stderr"}
  -- the wrapper records the pid and, when the tool ends, its exit status
  U.sh(string.format("sh -c %s sh %s %s %s %s %s %s </dev/null >/dev/null 2>&1 &",
                     U.q('bin=$1 script=$2 err=$3 pidf=$4 rcf=$5; shift 5; "$bin" "$@" run "$script" 2>"$err" & ' ..
                         'echo $! >"$pidf.tmp" && mv "$pidf.tmp" "$pidf"; wait $!; echo $? >"$rcf.tmp" && mv "$rcf.tmp" "$rcf"'),
                     U.q(BIN), U.q(script), U.q(h.err), U.q(h.pidf), U.q(h.rc), flags or ""))
  for _ = 1, 400 do
    if file_exists(h.pidf) then break end
    time.sleep(0.025)
  end
  h.pid = tonumber(U.read(h.pidf):match("%d+"))
  h.t0 = time.monotonic()
  return h
end

-- Waits until cond() holds (the run reached the wait we want to interrupt); a guard, not a timing.
local function wait_for(cond, what)
  local t0 = time.monotonic()
  while not cond() do
    if time.monotonic() - t0 > HANG_GUARD then error("never happened: " .. what) end
    time.sleep(0.05)
  end
end

-- Waits for the run to end; returns its exit status and the seconds since `since`.
local function finish(h, since, what)
  local ok = pcall(wait_for, function() return file_exists(h.rc) end, "exit")
  if not ok then
    os.execute("kill -KILL " .. h.pid .. " 2>/dev/null")
    for pid in U.out("pgrep -f " .. U.q("[s]leep " .. SLEEP) .. " || true"):gmatch("%d+") do
      os.execute("kill " .. pid .. " 2>/dev/null") -- the silent child this test started
    end
    error(string.format("%s: still running %d s after the signal (hang)", what, HANG_GUARD))
  end
  local secs = time.monotonic() - since
  local rc = tonumber(U.read(h.rc):match("%d+"))
  io.stderr:write(string.format("  %s: exit %d, %.2f s after the signal/timeout\n", what, rc, secs))
  return rc, U.read(h.err)
end

local function signal(h, sig) U.sh(string.format("kill -%s %d", sig, h.pid)) end

local function entries(dir)
  local names = {}
  local p = io.popen("ls -A " .. U.q(dir))
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  return names
end

-- No process is left running the silent child's sleep.
local function no_leftover_child()
  local t0 = time.monotonic()
  -- "[s]leep": the pattern must not match the shell that runs pgrep
  while U.out("pgrep -f " .. U.q("[s]leep " .. SLEEP) .. " || true"):match("%d") do
    if time.monotonic() - t0 > 5 then error("the child's `sleep " .. SLEEP .. "` is still running") end
    time.sleep(0.05)
  end
end

local function uploads(prefix)
  local out = U.out(string.format("/usr/bin/aws --endpoint-url %s s3api list-multipart-uploads --bucket %s --prefix %s --output json 2>&1",
                                  U.q(inner.url), U.q(B), U.q(prefix)))
  local ok, doc = pcall(cjson.decode, out ~= "" and out or "{}")
  if not ok then error("aws s3api list-multipart-uploads: " .. out) end
  local list = doc.Uploads
  return type(list) == "table" and #list or 0, out
end

local function object_exists(key)
  local ok = os.execute(string.format("/usr/bin/aws --endpoint-url %s s3api head-object --bucket %s --key %s >/dev/null 2>&1",
                                      U.q(env.get("AWS_ENDPOINT_URL")), U.q(B), U.q(key)))
  return ok == true
end

local CHILD = string.format([[{"sh", "-c", "echo x; sleep %s"}]], SLEEP)

local function file_job(path)
  return string.format([[
local pipe = require "pipe"
pipe.run{pipe.command{argv = %s}, pipe.file_sink(%q)}
]], CHILD, path)
end

-- A partial temp file of the file sink with the child's bytes in it: the child has written and
-- is now silent.
local function partial_written(dir)
  return function()
    for _, n in ipairs(entries(dir)) do
      if n:find("%.tmp%-") then
        local f = io.open(dir .. "/" .. n)
        local sz = f and f:seek("end") or 0
        if f then f:close() end
        if sz >= 2 then return true end
      end
    end
    return false
  end
end

for _, c in ipairs{{"SIGTERM", "TERM", nil, 130}, {"SIGINT", "INT", nil, 130}, {"--timeout 2", nil, "--timeout 2", 124}} do
  local what, sig, flags, want = c[1], c[2], c[3], c[4]
  T.case(what .. " while a child source is silent: the file sink leaves no file, the child is stopped", function()
    local name = "file-" .. (sig or "timeout")
    local dir = tmp .. "/" .. name .. "/out"
    local h = launch(name, file_job(dir .. "/dump.sql"), flags)
    wait_for(partial_written(dir), "the child's first bytes in the partial file")
    local since = time.monotonic()
    if sig then signal(h, sig) else since = h.t0 + 2 end
    local rc, err = finish(h, since, what)
    T.eq(rc, want, "exit status (stderr: " .. err .. ")")
    T.match(err, sig and "cancelled" or "timed out")
    T.eq(#entries(dir), 0, "files left in the output folder: " .. table.concat(entries(dir), " "))
    no_leftover_child()
  end)
end

local MiB = 1024 * 1024

-- 6 MiB then silence: the first 5 MiB part is uploaded, so a multipart upload is in progress
-- when the signal comes.
local function s3_job(key)
  return string.format([[
local pipe, s3 = require "pipe", require "s3"
local c = s3.client{endpoint = %q}
pipe.run{pipe.command{argv = {"sh", "-c", "head -c %d /dev/urandom; sleep %s"}},
         c:upload{bucket = %q, key = %q, part_size = %d, concurrency = 2}}
]], outer.url, 6 * MiB, SLEEP, B, key, 5 * MiB)
end

local function part_sent(key)
  return function()
    return log_has(outer.log, "^PUT /" .. B:gsub("%p", "%%%0") .. "/" .. key:gsub("%p", "%%%0") .. "%?.*partNumber=1")
  end
end

local function s3_case(what, sig, flags, want, second)
  T.case(what, function()
    local name = "s3-" .. (sig or "timeout") .. (second and "-twice" or "")
    local key = RUN .. "/" .. name .. "/dump.sql.gz.enc"
    U.write(outer.rules, second and '[{"method": "DELETE", "match": "uploadId=", "action": "delay", "seconds": 2}]' or "[]")
    U.write(outer.log, "")
    local h = launch(name, s3_job(key), flags)
    wait_for(part_sent(key), "the first part's upload")
    -- (with --timeout the run may be over before a listing could see the upload: the proxy's
    -- log of the first part is the evidence that there was one to abort)
    if sig then wait_for(function() return (uploads(RUN .. "/" .. name .. "/")) == 1 end, "the upload listed as in progress") end
    local since = time.monotonic()
    if sig then signal(h, sig) else since = h.t0 + 2 end
    if second then
      -- the second signal lands while the abort request is held by the proxy
      wait_for(function() return log_has(outer.log, "^DELETE .*uploadId=.* delay") end, "the abort request")
      signal(h, sig)
    end
    local rc, err = finish(h, since, what)
    T.eq(rc, want, "exit status (stderr: " .. err .. ")")
    if second then T.match(err, "stopping: aborting") end
    local n, listing = uploads(RUN .. "/" .. name .. "/")
    T.eq(n, 0, "multipart uploads left in progress: " .. listing)
    T.ok(log_has(outer.log, "^DELETE .*uploadId="), "the abort request was sent")
    T.ok(not object_exists(key), "no object at " .. key)
    no_leftover_child()
  end)
end

s3_case("SIGTERM while a child source is silent: the S3 multipart upload is aborted", "TERM", nil, 130)
s3_case("--timeout 2 while a child source is silent: the S3 multipart upload is aborted", nil, "--timeout 2", 124)
s3_case("a second SIGTERM during the abort still leaves no upload behind", "TERM", nil, 130, true)

-- The other waits: an S3 request the server holds without answering (libcurl's progress callback
-- sees the flag), time.sleep, and proc.run of a child that ignores SIGTERM (it gets SIGKILL after
-- the grace, with what it started).
local function simple_case(what, name, script_text, sig, flags, want, before)
  T.case(what, function()
    if before then before() end
    local h = launch(name, script_text, flags)
    local since = h.t0 + 2
    if sig then
      time.sleep(1.5)
      since = time.monotonic()
      signal(h, sig)
    end
    local rc, err = finish(h, since, what)
    T.eq(rc, want, "exit status (stderr: " .. err .. ")")
    T.no_match(err, "returned")
    no_leftover_child()
  end)
end

simple_case("SIGTERM during an S3 request the server holds: 130", "http-stall", string.format([[
local s3 = require "s3"
local c = s3.client{endpoint = %q, stall_timeout = 120, max_attempts = 1}
c:head(%q, %q)
print("head returned")
]], outer.url, B, RUN .. "/stalled"), "TERM", nil, 130, function()
  U.write(outer.rules, '[{"method": "HEAD", "match": "stalled", "action": "stall", "seconds": 200}]')
  U.write(outer.log, "")
end)
simple_case("--timeout 2 during time.sleep(300): 124", "sleep-timeout",
            'require("time").sleep(300)\nprint("sleep returned")\n', nil, "--timeout 2", 124)
simple_case("SIGTERM during proc.run of a child that ignores SIGTERM: 130 (it is killed)", "proc-stubborn",
            string.format([[
require("proc").run{argv = {"sh", "-c", "trap '' TERM; sleep %s; sleep %s"}}
print("proc.run returned")
]], SLEEP, SLEEP), "TERM", nil, 130)

U.stop(inner)
U.stop(outer)
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
