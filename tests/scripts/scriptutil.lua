-- Shared by the tests in tests/scripts: run a script or runbook as a child process with extra
-- environment, decode its --json output, and make names unique to this run (tests run in
-- parallel in one sandbox).
local proc, env, cjson = require "proc", require "env", require "cjson"
local M = {}
M.BIN = env.get("CLUBIO_DR_BIN")
-- time and pid: unique among tests running at once (math.random alone is not: equal seeds)
local function pid()
  local f = io.open("/proc/self/stat", "r")
  local p = f and f:read("l"):match("^(%d+)")
  if f then f:close() end
  return tonumber(p) or math.random(0, 99999)
end
M.TAG = string.format("%d%d", os.time(), pid())

-- run({"name", args...}, {VAR = "value" or false (unset)}, {stdin = ..., cwd = ...})
function M.run(args, extra, opts)
  opts = opts or {}
  local e, unset = {}, {}
  for k, v in pairs(extra or {}) do
    if v == false then unset[#unset + 1] = k else e[k] = v end
  end
  local argv = {M.BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e, unset_env = #unset > 0 and unset or nil, cwd = opts.cwd,
                     stdin = opts.stdin or ""}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and type(doc) == "table" and doc or nil
  return r
end

-- A closed loopback port: connections are refused at once.
function M.closed_port()
  local r = proc.run{argv = {"python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1]); s.close()"}}
  return r.stdout:match("%d+")
end

local T = require "testing"
M.write, M.read = T.write, T.read

-- A neon-local project of the test's own (TEST-ONLY endpoint of neon-local), so branches,
-- defaults and backups of one test never meet another's. Returns the project id.
function M.project(name)
  return require("neonlocal").project((name .. "-" .. M.TAG):lower())
end

-- A private AWS stand-in (tests/sandbox/aws_stub.py) with its own state and request log; the
-- sandbox's shared one is left to other tests. Returns {url, log, stop = function}.
function M.aws_stub(dir)
  local here = env.get("CLUBIO_DR_TEST_DIR") .. "/sandbox/aws_stub.py"
  local port_file, pid_file, log_file = dir .. "/aws.port", dir .. "/aws.pid", dir .. "/aws.jsonl"
  local r = proc.run{argv = {"python3", here, "--daemon", "--pid-file", pid_file, "--port-file", port_file,
                             "--access-key", env.get("AWS_ACCESS_KEY_ID"), "--log", log_file},
                     env = {AWS_STUB_SECRET_KEY = env.get("AWS_SECRET_ACCESS_KEY")}}
  assert(r.status == 0, "aws_stub did not start: " .. r.stderr)
  local port
  for _ = 1, 100 do
    port = (M.read(port_file) or ""):match("%d+")
    if port then break end
    require("time").sleep(0.1)
  end
  assert(port, "aws_stub wrote no port")
  local stub = {url = "http://127.0.0.1:" .. port, log = log_file}
  function stub.stop()
    local pid = (M.read(pid_file) or ""):match("%d+")
    if pid then proc.run{argv = {"kill", pid}} end
  end
  -- the accepted requests, as logged by the stub: {service, action, body}
  function stub.requests()
    local out = {}
    for line in ((M.read(log_file) or "")):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
    return out
  end
  return stub
end

return M
