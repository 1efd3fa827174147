-- The scheduler's jobs: scripts' `-- schedule:` headers plus an optional jobs file, checked
-- and merged into one sorted list (part of clubio.schedule; see its banner).
--
--   local J = require "clubio.schedule.jobs"
--   local jobs = J.load_jobs()   -- {{name, script, args, schedule, cron, timeout, ...}}, sorted by name
--
-- The jobs file: CLUBIO_DR_SCHEDULE (a path, or "off"), else the first jobs.conf in a
-- CLUBIO_DR_PATH folder; Lua returning {defaults = {...}, jobs = {NAME = {...} | false},
-- scripts = "all" | "site" | false}.
local log, proc, cjson = require "log", require "proc", require "cjson"
local cron = require "clubio.cron"
local P = require "clubio.schedule.places"
local fail, read_file = P.fail, P.read_file

local M = {}

M.DEFAULTS = {timeout = 3600, retries = 1, retry_delay = 60, grace = 3600}
M.SERVICE_DEFAULTS = {restart_delay = 5, restart_max_delay = 300, alert_exits = 3, alert_window = 900, stop_timeout = 30}
local JOB_KEYS = {script = true, args = true, schedule = true, timeout = true, retries = true, retry_delay = true,
                  grace = true, env = true, lock = true, verification = true, enabled = true, description = true,
                  service = true, restart_delay = true, restart_max_delay = true, alert_exits = true,
                  alert_window = true, stop_timeout = true}
-- keys that only mean something for one kind of job
local CRON_ONLY = {schedule = true, timeout = true, retries = true, retry_delay = true, grace = true}

local function check_job(name, j, where)
  if type(j) ~= "table" then fail(string.format("%s: job '%s' must be a table or false", where, name)) end
  for k in pairs(j) do
    if not JOB_KEYS[k] then
      fail(string.format("%s: job '%s' has an unknown key '%s'", where, name, tostring(k)),
           "job keys: script, args, schedule, timeout, retries, retry_delay, grace, env, lock, verification, enabled; " ..
           "service jobs: service, restart_delay, restart_max_delay, alert_exits, alert_window, stop_timeout")
    end
  end
  if j.service ~= nil and type(j.service) ~= "boolean" then
    fail(string.format("%s: job '%s': service must be true or false", where, name))
  end
  if j.service and name ~= "defaults" then
    for k in pairs(j) do
      if CRON_ONLY[k] then
        fail(string.format("%s: job '%s' is a service (always running): it takes no %s", where, name, k),
             "a service is restarted when it exits; tune restart_delay, restart_max_delay, alert_exits, alert_window, stop_timeout")
      end
    end
  end
  for _, k in ipairs{"timeout", "retries", "retry_delay", "grace", "restart_delay", "restart_max_delay", "alert_exits",
                     "alert_window", "stop_timeout"} do
    local v = j[k]
    if v ~= nil and (type(v) ~= "number" or v < 0 or ((k == "timeout" or k == "alert_exits") and v <= 0)) then
      fail(string.format("%s: job '%s': %s must be a number of %s %s 0, got %s", where, name, k,
                         (k == "retries" or k == "alert_exits") and "attempts" or "seconds",
                         (k == "timeout" or k == "alert_exits") and ">" or ">=", tostring(v)))
    end
  end
  if j.args ~= nil then
    if type(j.args) ~= "table" then fail(string.format("%s: job '%s': args must be a list of strings", where, name)) end
    for i, a in ipairs(j.args) do
      if type(a) ~= "string" and type(a) ~= "number" then
        fail(string.format("%s: job '%s': args[%d] is a %s, not a string", where, name, i, type(a)))
      end
      j.args[i] = tostring(a)
    end
  end
  if j.env ~= nil and type(j.env) ~= "table" then fail(string.format("%s: job '%s': env must be a table", where, name)) end
end

-- The jobs file: CLUBIO_DR_SCHEDULE, else the first jobs.conf in a CLUBIO_DR_PATH folder.
-- It is Lua returning {defaults = {...}, jobs = {NAME = {...} | false}}; it runs with no
-- globals but `env` (os.getenv), so it can only describe jobs.
function M.jobs_file()
  local p = os.getenv("CLUBIO_DR_SCHEDULE")
  if p and p ~= "" then
    if p == "off" then return nil end
    if not read_file(p) then fail("jobs file " .. p .. " (CLUBIO_DR_SCHEDULE) cannot be read", "check the path, or unset CLUBIO_DR_SCHEDULE") end
    return p
  end
  for dir in (os.getenv("CLUBIO_DR_PATH") or ""):gmatch("[^:]+") do
    if read_file(dir .. "/jobs.conf") then return dir .. "/jobs.conf" end
  end
  return nil
end

local function load_jobs_file(path)
  local text = read_file(path)
  local chunk, err = load(text, "@" .. path, "t", {env = os.getenv, tostring = tostring, tonumber = tonumber})
  if not chunk then fail("jobs file " .. path .. ": " .. err, "it is Lua: return {defaults = {...}, jobs = {...}}") end
  local ok, spec = pcall(chunk)
  if not ok then fail("jobs file " .. path .. ": " .. tostring(spec)) end
  if type(spec) ~= "table" then fail("jobs file " .. path .. " must return a table", "return {defaults = {...}, jobs = {...}}") end
  for k in pairs(spec) do
    if k ~= "defaults" and k ~= "jobs" and k ~= "scripts" then
      fail(string.format("jobs file %s: unknown key '%s' (use defaults, jobs, scripts)", path, tostring(k)))
    end
  end
  if spec.scripts ~= nil and spec.scripts ~= "all" and spec.scripts ~= "site" and spec.scripts ~= false then
    fail(string.format("jobs file %s: scripts must be \"all\", \"site\" or false", path),
         "\"site\": only scripts in CLUBIO_DR_PATH folders; false: only the jobs file's jobs")
  end
  return spec
end

-- The scripts with a `-- schedule:` header, from `clubio-dr list --json` (same search path
-- and shadowing as `run`).
function M.scripts()
  local r = proc.run{argv = {P.self().bin, "list", "--json"}}
  if r.status ~= 0 then fail("cannot list scripts: " .. r.stderr:gsub("%s+$", ""), nil, "failure") end
  local ok, list = pcall(cjson.decode, r.stdout)
  if not ok or type(list) ~= "table" then fail("cannot parse `clubio-dr list --json` output", nil, "failure") end
  return list
end

-- All jobs, sorted by name. opts: scripts (a list like M.scripts() returns), file (a jobs file
-- path, or false for none).
function M.load_jobs(opts)
  opts = opts or {}
  local scripts = opts.scripts or M.scripts()
  local file = opts.file
  if file == nil then file = M.jobs_file() end
  local spec = file and load_jobs_file(file) or {}
  local defaults = {}
  for k, v in pairs(M.DEFAULTS) do defaults[k] = v end
  if spec.defaults then
    check_job("defaults", spec.defaults, file)
    for k, v in pairs(spec.defaults) do defaults[k] = v end
  end
  local known = {}
  for _, s in ipairs(scripts) do known[s.name] = s end
  local jobs = {}
  local function from_site(path)
    for dir in (os.getenv("CLUBIO_DR_PATH") or ""):gmatch("[^:]+") do
      if path:sub(1, #dir + 1) == dir .. "/" then return true end
    end
    return false
  end
  for _, s in ipairs(scripts) do
    local wanted = spec.scripts ~= false and (spec.scripts ~= "site" or from_site(s.path or ""))
    if wanted and s.schedule and s.schedule ~= cjson.null and s.schedule ~= "" then
      jobs[s.name] = {name = s.name, script = s.name, schedule = s.schedule, source = s.path,
                      description = s.description}
    end
  end
  for name, j in pairs(spec.jobs or {}) do
    if type(name) ~= "string" or not name:match("^[%w][%w._-]*$") then
      fail(string.format("jobs file %s: job name '%s' must be letters, digits, '.', '_' or '-'", file, tostring(name)))
    end
    if j == false then
      jobs[name] = nil
    else
      check_job(name, j, file)
      local base = jobs[name] or {name = name, script = name, source = file}
      for k, v in pairs(j) do base[k] = v end
      if base.enabled == false then jobs[name] = nil else jobs[name] = base end
      -- a service has no schedule (one from the script's header is not used)
      if jobs[name] and base.service then base.schedule = nil end
      if jobs[name] and not base.service and not jobs[name].schedule then
        if not j.script and not known[name] then
          -- settings for a script that is not installed (yet): say so, keep the rest working
          log.warn(string.format("jobs file %s: job '%s' tunes a script that does not exist; ignored", file, name))
          jobs[name] = nil
        else
          fail(string.format("jobs file %s: job '%s' has no schedule", file, name),
               "add schedule = \"CRON\", or give the script a `-- schedule:` line")
        end
      end
    end
  end
  local out = {}
  for name, j in pairs(jobs) do
    for k, v in pairs(defaults) do if j[k] == nil then j[k] = v end end
    j.args = j.args or {}
    j.lock = j.lock or name
    if j.verification == nil then j.verification = j.script:match("^verify") ~= nil end
    if j.service then
      for k, v in pairs(M.SERVICE_DEFAULTS) do if j[k] == nil then j[k] = v end end
      j.restart_max_delay = math.max(j.restart_max_delay, j.restart_delay)
    else
      local ok, c = pcall(cron.parse, j.schedule)
      if not ok then
        fail(string.format("job '%s' (%s): %s", name, j.source or "?", tostring(c)),
             "fix the `-- schedule:` line or the jobs file entry")
      end
      j.cron = c
    end
    j.missing = known[j.script] == nil and not j.script:find("/") and true or nil
    out[#out + 1] = j
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

return M
