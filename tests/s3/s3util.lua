-- Helpers shared by the s3 tests: shell commands, files of random bytes, digests, and the
-- fault-injecting proxy (fault_proxy.py) started and stopped by pid.
local M = {}
local T = require "testing"
M.dir = os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3"

function M.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function M.sh(cmd)
  local ok, how, code = os.execute(cmd)
  if not ok then error(string.format("command failed (%s %s): %s", how, code, cmd), 2) end
end

function M.out(cmd)
  local p = io.popen(cmd)
  local s = p:read("a")
  p:close()
  return s
end

function M.sha256(path) return (M.out("sha256sum " .. M.q(path)):match("^(%x+)")) end

-- A file of n random bytes.
function M.random_file(dir, name, n)
  local path = dir .. "/" .. name
  M.sh(string.format("head -c %d /dev/urandom > %s", n, M.q(path)))
  return path
end

M.read, M.write = T.read, T.write

function M.aws(args)
  return "/usr/bin/aws --endpoint-url " .. M.q(os.getenv("AWS_ENDPOINT_URL")) .. " " .. args
end

-- s3rver's storage folder in the sandbox (the proxy reads its upload state)
M.S3RVER_DATA = (os.getenv("SANDBOX_STATE") or "") .. "/s3/data"

-- Starts the proxy in front of AWS_ENDPOINT_URL; returns {url, pid, rules, log}. With
-- opts.uploads, it also answers ListMultipartUploads and AbortMultipartUpload from s3rver's
-- upload state (a mock: see fault_proxy.py).
function M.proxy(dir, opts)
  opts = opts or {}
  local p = {rules = dir .. "/rules.json", log = dir .. "/proxy.log", ready = dir .. "/proxy.ready"}
  M.write(p.rules, "[]")
  M.sh(string.format("python3 %s %s %s %s %s %s >%s 2>&1 &", M.q(M.dir .. "/fault_proxy.py"),
                     M.q(os.getenv("AWS_ENDPOINT_URL")), M.q(p.rules), M.q(p.log), M.q(p.ready),
                     opts.uploads and M.q(M.S3RVER_DATA) or "", M.q(dir .. "/proxy.err")))
  for _ = 1, 200 do
    local f = io.open(p.ready)
    if f then
      local port, pid = f:read("n", "n")
      f:close()
      p.url, p.pid = "http://127.0.0.1:" .. port, pid
      return p
    end
    M.sh("sleep 0.05")
  end
  error("the fault proxy did not start; see " .. dir .. "/proxy.err")
end

function M.rules(p, json)
  M.write(p.rules, json)
  M.write(p.log, "")
end

function M.stop(p) if p and p.pid then os.execute("kill " .. p.pid .. " 2>/dev/null") end end

return M
