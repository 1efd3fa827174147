-- Weekly PITR test: branch the default branch as of a past time, check it holds the data as of then, remove it
-- schedule: 0 4 * * 0
--
-- clubio-dr run pitr-test [TIMESTAMP] [--json]
--
-- Point-in-time recovery is the runbook's answer to data corruption; this proves it works
-- before an incident needs it. The point is TIMESTAMP (ISO 8601), else PITR_TEST_AGE_MINUTES
-- (60) before now. A temporary branch `pitr-test-YYYYMMDD-HHMMSS` (expires_at as a backstop) is
-- created from the default branch at that point, then checked:
--   - it has every table the default branch has now (created before the point);
--   - no row's updated_at/created_at is later than the point (a branch "as of T" that holds
--     later rows is not a point-in-time recovery);
--   - its row counts, and how long the branch took to create (the RTO of a PITR).
-- The branch is always deleted (also on failure and on Ctrl-C). The result is appended to the
-- verification history. Exit status 4 when a check fails.
-- Environment: NEON_API_KEY, NEON_PROJECT_ID; PITR_TEST_AGE_MINUTES (60).
local env, time, neon, verify, clubio, log = require "env", require "time", require "neon", require "verify",
  require "clubio", require "log"
local job, branches = require "clubio.job", require "clubio.branches"

local args = require("clubio.args").parse(arg, {min = 0, max = 1, usage = "[TIMESTAMP]"})
local arg_at = args[1]
local at
if arg_at then
  at = job.past_time(arg_at)
else
  local minutes = tonumber(env.get("PITR_TEST_AGE_MINUTES", "60"))
  if not minutes or minutes <= 0 then
    clubio.fail{message = "PITR_TEST_AGE_MINUTES must be a positive number of minutes", class = "config"}
  end
  at = time.now() - minutes * 60
end
if at >= time.now() then
  clubio.fail{message = time.iso(at, true) .. " is not in the past", class = "usage", hint = "a PITR test needs a past point"}
end

local project = env.get("NEON_PROJECT_ID")
local n = neon.client{project_id = project}
local J = job.new("pitr-test")
local main = branches.require_default(n, project)
local name = "pitr-test-" .. time.format(time.now(), "%Y%m%d-%H%M%S")
local main_url = n:connection_uri{branch = main.id}

-- the tables main has now that existed at the point (pg_class has no creation time: the
-- tables whose oldest row predates the point are the ones the branch must have)
local expected = J:step("list the default branch's tables", {plan = "tables of " .. main.name}, function()
  local acts = verify.latest_activity(main_url)
  local want = {}
  local db <close> = require("pgdump").connect(main_url)
  for tname in pairs(acts.tables) do
    local col = acts.tables[tname].created_at and "created_at" or nil
    if col then
      local oldest = db:query(string.format("SELECT extract(epoch FROM min(%s))::float8 AS t FROM %s", col, tname))[1].t
      if oldest and tonumber(oldest) < at then want[#want + 1] = tname end
    end
  end
  table.sort(want)
  return want
end)

local result = {branch = name, at = time.iso(at, true), parent = main.name}
local failure
local started = time.monotonic()
local ok, err = pcall(verify.protect, function()
  local b = J:step("create " .. name, {plan = string.format("branch of %s as of %s (expires in 6 h as a backstop)",
                                                             main.name, time.iso(at, true))}, function()
    return n:create_branch{name = name, parent = main.id, at = at, endpoint = "read_write",
                           expires_at = time.iso(time.now() + 6 * 3600)}
  end)
  if J.dry_run then return end
  result.create_seconds = time.monotonic() - started
  local url = n:connection_uri{branch = b.id}
  J:step("check the branch holds the data as of " .. time.iso(at, true), {plan = "tables, latest activity, row counts"}, function()
    local acts = verify.latest_activity(url)
    local counts = verify.row_counts(url, {exact = true})
    result.tables, result.rows = counts.table_count, counts.rows
    for _, tname in ipairs(expected or {}) do
      if not acts.tables[tname] then
        failure = "table " .. tname .. " existed at " .. time.iso(at, true) .. " but is missing on the branch"
        return
      end
    end
    result.latest_activity = acts.latest
    -- one second of slack: timestamps in the data are the writers' clocks, the point is ours
    if acts.latest and time.parse(acts.latest) and time.parse(acts.latest) > at + 1 then
      failure = string.format("table %s has a row from %s, after the recovery point %s", acts.table, acts.latest, time.iso(at, true))
    end
  end)
end, function()
  if J.dry_run then return end
  local b = n:branch(name)
  if b then
    local del_ok, del_err = pcall(n.delete_branch, n, b.id)
    result.removed = del_ok
    if not del_ok then log.warn("could not delete " .. name .. ": " .. tostring(del_err) .. " (it expires in 6 h)") end
  end
end)
if not ok then
  verify.record({what = "pitr_test", ok = false, target = project .. "/" .. name, reason = "error",
                 message = tostring(err), details = result})
  error(err, 0)
end
if J.dry_run then return J:finish(nil, "dry run: no branch created") end
result.seconds = time.monotonic() - started
verify.record({what = "pitr_test", ok = failure == nil, target = project .. "/" .. name,
               reason = failure and "pitr-mismatch" or nil, message = failure, details = result})
if failure then
  clubio.fail{message = "PITR test failed: " .. failure, class = "verify", code = "verify.pitr-mismatch",
              hint = "the branch was removed; check the project's history retention and open a Neon support case"}
end
return J:finish(result, string.format(
  "PITR test passed: %s as of %s — %d tables, %d rows, latest activity %s; branch created in %.1f s, %s",
  main.name, time.iso(at, true), result.tables or 0, result.rows or 0, tostring(result.latest_activity or "none"),
  result.create_seconds or 0, result.removed and "removed" or "NOT removed"))
