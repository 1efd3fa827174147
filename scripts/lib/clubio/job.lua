-- Jobs written as steps. Each step has a name and a plan (what it would do); `--dry-run`
-- prints the plan and runs nothing; a destructive step asks for confirmation (or needs --yes)
-- and a failing step stops the job with what to do next. Every step goes to the journal
-- (JSON lines: run, job, step, start, end, seconds, status, error — redacted), so an incident
-- has a record and DR tests can measure their RTO.
--
--   local job = require "clubio.job"
--   local J = job.new("export-database")
--   local key = J:step("upload", {plan = "stream the dump to s3://b/k"}, function() ... return key end)
--   return J:finish({key = key}, "exported to " .. key)
--
-- The journal is CLUBIO_DR_JOURNAL, else $XDG_STATE_HOME/clubio-dr/journal.jsonl, else
-- ~/.local/state/clubio-dr/journal.jsonl; CLUBIO_DR_JOURNAL=off disables it.
local clubio = require "clubio"
local log = require "log"
local time = require "time"
local cjson = require "cjson"

local M = {}
local Job = {}
Job.__index = Job

local function journal_path()
  local p = os.getenv("CLUBIO_DR_JOURNAL")
  if p == "off" then return nil end
  if p and p ~= "" then return p end
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.local/state"
  end
  return base .. "/clubio-dr/journal.jsonl"
end

local function mkdir_p(dir)
  require("proc").run{argv = {"mkdir", "-p", dir}}
end

function M.new(name, opts)
  opts = opts or {}
  local self = setmetatable({name = name, run_id = string.format("%s-%d-%d", name, os.time(), math.random(1, 1 << 30)),
                             started = time.now(), t0 = time.monotonic(), steps = {},
                             dry_run = clubio.flags.dry_run, json = clubio.flags.json}, Job)
  self.journal = opts.journal or journal_path()
  -- what the run was asked to do, for the record: the script's arguments (the whole journal line
  -- is redacted when written) and the Neon project it works on, so a runbook reading the journal
  -- back can tell one project's runs from another's
  local a = rawget(_G, "arg")
  if type(a) == "table" then
    self.args = {}
    for i = 1, #a do self.args[i] = tostring(a[i]) end
  end
  self.project = opts.project or os.getenv("NEON_PROJECT_ID")
  if self.project == "" then self.project = nil end
  return self
end

function Job:record(entry)
  entry.run = self.run_id
  entry.job = self.name
  entry.neon_project = entry.neon_project or self.project
  if self.args and #self.args > 0 and not self.args_recorded then
    entry.args = self.args -- on the run's first entry
    self.args_recorded = true
  end
  self.steps[#self.steps + 1] = entry
  if not self.journal or self.dry_run then return end
  local ok, line = pcall(cjson.encode, entry)
  if not ok then return end
  local f = io.open(self.journal, "a")
  if not f then
    mkdir_p(self.journal:match("^(.*)/") or ".")
    f = io.open(self.journal, "a")
  end
  if f then
    f:write(log.redact(line), "\n")
    f:close()
  end
end

-- Asks `question` (--yes answers it) before the step `title`; a "no" or nobody to answer is
-- journaled as declined and stops the job (exit 5). Job:step calls it for destructive steps; a
-- job calls it itself to ask once before several steps (e.g. before it takes a safety copy).
function Job:confirm(title, question)
  -- confirm() raises when nobody can answer (no terminal, no --yes): that is a refusal too,
  -- and goes to the journal like a "no"
  local ok, yes = pcall(clubio.confirm, question or (title .. "?"))
  if not ok then
    self:record({step = title, status = "declined", start = time.iso(time.now()), error = tostring(yes)})
    error(yes, 0)
  end
  if not yes then
    self:record({step = title, status = "declined", start = time.iso(time.now())})
    clubio.fail{message = title .. ": declined", class = "declined", code = "declined.step",
                hint = "nothing was changed by this step; re-run with --yes to confirm"}
  end
end

-- Runs fn() as a step. opts: plan (text shown with --dry-run and in the log), destructive
-- (confirmation needed), confirm (the question), hint (what to do if it fails), dry (a function
-- run instead of fn under --dry-run, for read-only checks that make the plan concrete).
function Job:step(title, opts, fn)
  opts = opts or {}
  if self.dry_run then
    log.info("would " .. title .. (opts.plan and (": " .. opts.plan) or ""))
    self:record({step = title, status = "planned", plan = opts.plan})
    if opts.dry then return opts.dry() end
    return nil
  end
  if opts.destructive then self:confirm(title, opts.confirm) end
  local start, t0 = time.now(), time.monotonic()
  log.info(title .. (opts.plan and (": " .. opts.plan) or ""))
  local res = table.pack(pcall(fn))
  local secs = time.monotonic() - t0
  if not res[1] then
    local err = res[2]
    self:record({step = title, status = "failed", start = time.iso(start), ["end"] = time.iso(time.now()),
                 seconds = secs, error = tostring(err)})
    if opts.hint and clubio.is_error(err) and (err.hint == nil or err.hint == "") then err.hint = opts.hint end
    if not clubio.is_error(err) and opts.hint then
      clubio.fail{message = title .. " failed: " .. tostring(err), hint = opts.hint}
    end
    error(err, 0)
  end
  self:record({step = title, status = "ok", start = time.iso(start), ["end"] = time.iso(time.now()), seconds = secs})
  return table.unpack(res, 2, res.n)
end

-- A run that stops between steps (an error outside a step: a Neon outage while listing
-- branches, a bad argument) would leave no trace; when the state closes, a job that never
-- reached finish() records an "incomplete" entry with the error that stopped it (the host keeps
-- it for clubio.exit_error()), which M.runs() counts as a failure.
function Job:__gc()
  if self.finished or self.dry_run or not self.journal then return end
  self.finished = true
  local why = clubio.exit_error()
  pcall(self.record, self, {step = "(run)", status = "incomplete", start = time.iso(self.started), ["end"] = time.iso(time.now()),
                            seconds = time.monotonic() - self.t0,
                            error = why or "the run stopped before finishing (its log has the error)"})
end

-- Ends the job: with --json prints {ok, job, run, seconds, dry_run, steps, result} on stdout,
-- else the summary line. Returns 0 (the script's exit status).
function Job:finish(result, summary)
  self.finished = true
  local secs = time.monotonic() - self.t0
  if self.json then
    local out = {ok = true, job = self.name, run = self.run_id, seconds = secs, dry_run = self.dry_run,
                 result = result or cjson.null, steps = self.steps}
    io.stdout:write(log.redact(cjson.encode(out)), "\n")
  elseif summary then
    io.stdout:write(log.redact(summary), "\n")
  end
  return 0
end

-- The journal file this process writes to (nil when disabled or there is no home).
M.journal_path = journal_path

-- The runs of one job found in a journal, newest first: {run, job, start (epoch), ["end"],
-- status ("ok" | "failed" | "declined"), steps = {entries...}, error}. Lines that are not JSON
-- (a torn write, a foreign line) are skipped; a missing journal gives {}. opts: job (name),
-- path (default: this process's journal), since (epoch: runs that started before are left out),
-- project (only runs for that Neon project; entries that name none match any).
function M.runs(opts)
  opts = opts or {}
  local path = opts.path or journal_path()
  local f = path and io.open(path, "r")
  if not f then return {} end
  local by_run, order = {}, {}
  for line in f:lines() do
    local ok, e = pcall(cjson.decode, line)
    if ok and type(e) == "table" and type(e.run) == "string" and (not opts.job or e.job == opts.job)
       and (not opts.project or e.neon_project == nil or e.neon_project == opts.project) then
      local r = by_run[e.run]
      if not r then
        r = {run = e.run, job = e.job, steps = {}, status = "ok"}
        by_run[e.run] = r
        order[#order + 1] = r
      end
      r.steps[#r.steps + 1] = e
      local st = type(e.start) == "string" and select(2, pcall(time.parse, e.start)) or nil
      if type(st) == "number" and (not r.start or st < r.start) then r.start = st end
      local en = type(e["end"]) == "string" and select(2, pcall(time.parse, e["end"])) or nil
      if type(en) == "number" and (not r["end"] or en > r["end"]) then r["end"] = en end
      if e.status == "failed" then r.status = "failed"; r.error = e.error
      elseif e.status == "declined" and r.status ~= "failed" then r.status = "declined"
      elseif e.status == "incomplete" and r.status == "ok" then r.status = "failed"; r.error = r.error or e.error end
    end
  end
  f:close()
  local out = {}
  for _, r in ipairs(order) do
    if r.start and (not opts.since or r.start >= opts.since) then out[#out + 1] = r end
  end
  table.sort(out, function(a, b) return a.start > b.start end)
  return out
end

-- Small helpers jobs share.

-- A point in the past typed by a user (ISO 8601) as epoch seconds, keeping the fraction the user
-- gave (pass the number on, or show it with time.iso(t, true): a recovery point cut to the whole
-- second loses what was committed in that second); a usage error that names it (`label`, e.g.
-- "--at") when it is not a timestamp or is in the future.
function M.past_time(text, label)
  local pre = label and (label .. " ") or ""
  local ok, t = pcall(time.parse, text)
  if not ok or not t then
    clubio.fail{message = pre .. "'" .. tostring(text) .. "' is not an ISO 8601 timestamp", class = "usage",
                hint = "use the form 2024-01-15T10:30:00Z (UTC) or 2024-01-15T12:30:00+02:00"}
  end
  if t > time.now() then
    clubio.fail{message = pre .. time.iso(t, true) .. " is in the future", class = "usage",
                hint = "choose a time before now (" .. time.iso(time.now()) .. ")"}
  end
  return t
end

-- The parts of a postgres URL that may be shown (never the password): clubio.pgurl.describe.
function M.describe_url(url) return require("clubio.pgurl").describe(url) end

function M.bytes(n)
  local units = {"B", "KiB", "MiB", "GiB", "TiB"}
  local i = 1
  while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
  return i == 1 and string.format("%d B", n) or string.format("%.1f %s", n, units[i])
end

return M
