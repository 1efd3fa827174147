-- The scheduler's places and small helpers, shared by its parts (clubio.schedule.*): the state
-- folder, our own process (pid, host, binary), atomic file writes, and its configuration error.
--
--   local P = require "clubio.schedule.places"
--   P.state_dir()                  -- CLUBIO_DR_STATE_DIR, else $XDG_STATE_HOME/clubio-dr, else ~/.local/state/clubio-dr
--   P.write_atomic(path, text)     -- a temporary file in the same folder, then rename
--   P.self()                       -- {pid, host, bin}
local clubio, proc = require "clubio", require "proc"

local M = {}

-- Raises the scheduler's error (class "config" unless given, code config.schedule).
function M.fail(msg, hint, klass)
  clubio.fail{message = msg, hint = hint, class = klass or "config", code = "config.schedule"}
end
local fail = M.fail

function M.state_dir()
  local d = os.getenv("CLUBIO_DR_STATE_DIR")
  if d and d ~= "" then return d end
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then
      fail("no state folder for the scheduler's run records", "set CLUBIO_DR_STATE_DIR (or HOME)")
    end
    base = home .. "/.local/state"
  end
  return base .. "/clubio-dr"
end

function M.mkdir_p(dir)
  local r = proc.run{argv = {"mkdir", "-p", dir}}
  if r.status ~= 0 then fail("cannot create folder " .. dir .. ": " .. r.stderr:gsub("%s+$", ""), "check its permissions") end
end

-- A file's contents, or nil when it cannot be read.
function M.read_file(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local read_file = M.read_file

-- Writes a file atomically: a temporary file in the same folder, then rename.
function M.write_atomic(path, text)
  local tmp = string.format("%s.tmp.%d.%d", path, M.self().pid, math.random(1, 1 << 30))
  local f, err = io.open(tmp, "wb")
  if not f then fail("cannot write " .. path .. ": " .. tostring(err), "check the folder exists and is writable") end
  local ok, werr = f:write(text)
  f:close()
  if not ok then os.remove(tmp); fail("cannot write " .. path .. ": " .. tostring(werr)) end
  local rok, rerr = os.rename(tmp, path)
  if not rok then os.remove(tmp); fail("cannot rename into " .. path .. ": " .. tostring(rerr)) end
end

-- Our own process: pid (from /proc/self/stat), host, and the binary's path.
local SELF
function M.self()
  if SELF then return SELF end
  local stat = read_file("/proc/self/stat") or ""
  local pid = tonumber(stat:match("^(%d+)"))
  SELF = {pid = pid or 0, host = clubio.hostname()}
  local bin = os.getenv("CLUBIO_DR_BIN")
  if not bin or bin == "" then
    local r = proc.run{argv = {"readlink", "/proc/" .. tostring(pid) .. "/exe"}}
    bin = r.status == 0 and r.stdout:gsub("%s+$", "") or "clubio-dr"
  end
  SELF.bin = bin
  return SELF
end

return M
