-- Shared by the tests in tests/scripts: run a script or runbook as a child process with extra
-- environment, decode its --json output, and make names unique to this run (tests run in
-- parallel in one sandbox).
local proc, env, cjson = require "proc", require "env", require "cjson"
local M = {}
M.BIN = env.get("CLUBIO_DR_BIN")
M.TAG = string.format("%d%04d", os.time(), math.random(0, 9999))

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

function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

return M
