-- The quarterly DR test: fail over to the DR project, measure RTO and RPO, fail back, write a report
-- schedule: 0 4 1 */3 *
--
-- clubio-dr run dr-test [--yes] [--json] [--keep-snapshot] [--report-dir DIR] [--checks FILE]
--
-- The runbook document's "Monthly DR Test Checklist", run end to end (the document schedules the
-- DR failover test quarterly, hence the schedule):
--   pre-test      notify, record the current state (replication lag, row counts), check the DR side
--   execution     snapshot (a backup branch of the primary), simulate the primary's failure, run the
--                 failover (the dr-failover steps, with the site file's changes), verify the
--                 application (SQL checks) and the data (row counts and digests, primary at cutover
--                 vs DR)
--   post-test     measure RTO and RPO against the objectives (RTO 4 h, RPO 1 h), restore normal
--                 operations (re-open and un-fence the primary, point the application back, copy
--                 the DR side again and re-create replication), write the report (Markdown + JSON)
--
-- Simulated failure: the primary's database stops accepting connections (ALTER DATABASE ...
-- ALLOW_CONNECTIONS false, and its sessions and replication sender are ended). Neon (and
-- neon-local) cannot stop one database's compute without stopping every database of the
-- branch, so this is the failure of the application's database as the application and the DR
-- side see it: connections refused, replication cut mid-stream. The failover then runs its
-- "primary unreachable" path (no fencing, no drain, the slot left behind, sequences advanced with
-- DR_SEQUENCE_GAP). Restoring normal operations re-opens the database.
--
-- Destructive on both sides (the primary's database is closed for the duration; the DR copies
-- are truncated and copied again): asks first, or --yes. Meant for the sandbox or a staging
-- pair, or a maintenance window.
--
-- Checks (--checks FILE or DR_TEST_CHECKS): a Lua file returning a list of
--   {name = "orders readable", sql = "SELECT count(*) FROM orders", min_rows = 1}
--   {name = "can insert", sql = "INSERT INTO orders ...", write = true}   -- in a rolled-back transaction
--   {name = "admin exists", sql = "SELECT email FROM users WHERE id = $1", params = {1}, expect = "a@b.c"}
-- Without it, every replicated table must answer a SELECT.
-- Report: --report-dir DIR, DR_TEST_REPORT_DIR, else $XDG_STATE_HOME/clubio-dr/dr-tests
-- (~/.local/state/clubio-dr/dr-tests): dr-test-YYYYMMDD-HHMMSS.md and .json.
local clubio, log, cjson, time, proc = require "clubio", require "log", require "cjson", require "time", require "proc"
local job, dr = require "clubio.job", require "clubio.dr"

local OBJECTIVES = {rto_seconds = 4 * 3600, rpo_seconds = 3600}
-- The runbook document's DR scenarios; this test exercises "Region failure".
local SCENARIOS = {
  {scenario = "Database corruption", rto = "1 hour", rpo = "15 min", procedure = "PITR to before corruption", script = "pitr-recovery"},
  {scenario = "Accidental deletion", rto = "30 min", rpo = "0", procedure = "Restore from backup branch", script = "restore-from-backup"},
  {scenario = "Region failure", rto = "4 hours", rpo = "1 hour", procedure = "Failover to DR region", script = "dr-failover", tested = true},
  {scenario = "Complete data loss", rto = "8 hours", rpo = "24 hours", procedure = "Restore from S3 archive", script = "restore-from-s3"},
}

local args = {...}
local keep_snapshot, report_dir, checks_file = false, os.getenv("DR_TEST_REPORT_DIR"), os.getenv("DR_TEST_CHECKS")
local i = 1
while i <= #args do
  local a = args[i]
  if a == "--keep-snapshot" then keep_snapshot = true
  elseif a == "--report-dir" or a == "--checks" then
    local v = args[i + 1]
    if not v then clubio.fail{message = a .. " needs a value", class = "usage"} end
    if a == "--report-dir" then report_dir = v else checks_file = v end
    i = i + 1
  else
    clubio.fail{message = "unknown argument '" .. a .. "'", class = "usage",
                hint = "usage: clubio-dr run dr-test [--yes] [--json] [--keep-snapshot] [--report-dir DIR] [--checks FILE]"}
  end
  i = i + 1
end
if not report_dir or report_dir == "" then
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then base = (os.getenv("HOME") or ".") .. "/.local/state" end
  report_dir = base .. "/clubio-dr/dr-tests"
end
local checks
if checks_file and checks_file ~= "" then
  local chunk, err = loadfile(checks_file)
  if not chunk then clubio.fail{message = "cannot load the checks file: " .. tostring(err), class = "config", code = "config.dr_checks"} end
  checks = chunk()
  if type(checks) ~= "table" then
    clubio.fail{message = "the checks file " .. checks_file .. " must return a list of checks", class = "config", code = "config.dr_checks"}
  end
  for n, c in ipairs(checks) do
    if type(c) ~= "table" or type(c.sql) ~= "string" then
      clubio.fail{message = string.format("check %d of %s has no sql", n, checks_file), class = "config", code = "config.dr_checks"}
    end
  end
end

local ctx = dr.context()
local cfg = ctx.cfg
local J = job.new("dr-test")
local stamp = time.format(time.now(), "%Y%m%d-%H%M%S")
local report = {job = "dr-test", run = J.run_id, started = time.iso(time.now()), objectives = OBJECTIVES,
                primary_project = cfg.primary_project, dr_project = cfg.dr_project,
                primary = dr.display(ctx.primary_url), dr = dr.display(ctx.dr_url),
                checklist = {}, measured = {}, passed = {}, notes = {}}

if J.dry_run then
  for _, s in ipairs{"notify stakeholders", "record the current state", "verify the DR environment is ready",
                     "create a snapshot", "simulate the primary's failure", "run the failover", "verify application functionality",
                     "verify data integrity", "measure RTO and RPO", "restore normal operations", "write the report"} do
    J:step(s, {plan = s}, function() end)
  end
  return J:finish(nil, "dry run: nothing was changed")
end
if not clubio.confirm(string.format("Run the DR test: close the primary database %s, fail over to %s, then fail back " ..
                                    "(the DR copies are copied again)?", report.primary, report.dr)) then
  clubio.fail{message = "dr-test declined", class = "declined", code = "declined.step", hint = "re-run with --yes to confirm"}
end

-- One checklist item: a job step (journal, timings) and a line of the report.
local function item(phase, name, fn, opts)
  opts = opts or {}
  local t0 = time.monotonic()
  local ok, res = pcall(J.step, J, name, {plan = opts.plan, hint = opts.hint}, fn)
  local entry = {phase = phase, item = name, ok = ok, seconds = time.monotonic() - t0}
  if not ok then entry.error = log.redact(clubio.is_error(res) and res.message or tostring(res)) end
  if ok and type(res) == "table" and res.summary then entry.detail = res.summary end
  report.checklist[#report.checklist + 1] = entry
  return ok, res
end

local function counts(conn, tables)
  local out = {}
  for _, t in ipairs(tables) do
    out[t] = tonumber(dr.scalar(conn, "SELECT count(*) AS n FROM " .. (dr.qualify(t))))
  end
  return out
end

local failed = false
local tables, failure, fo_results

-- ---- pre-test ---------------------------------------------------------------------------------
item("pre-test", "notify stakeholders", function()
  local r = dr.notify(ctx, "clubio-dr: DR test starting", {primary = report.primary, dr = report.dr})
  return {summary = r.webhook and "webhook posted" or "logged (no DR_WEBHOOK_URL)"}
end)

local ok = item("pre-test", "record the current state", function()
  local s = dr.status(ctx)
  if not s.subscribed or not s.enabled then
    clubio.fail{message = "replication is not set up for " .. report.dr, code = "dr.not_replicating",
                hint = "run `clubio-dr run dr-setup` first"}
  end
  if (s.syncing or 0) > 0 then
    clubio.fail{message = "the initial copy is still running (" .. s.syncing .. " tables)", code = "dr.not_replicating",
                hint = "wait for `clubio-dr run dr-setup --status` to show 0 tables copying"}
  end
  local p <close> = assert(dr.try_primary(ctx))
  tables = {}
  for _, t in ipairs(dr.wanted_tables(ctx, p)) do if t ~= dr.HEARTBEAT then tables[#tables + 1] = t end end
  report.before = {status = s, rows = counts(p, tables)}
  return {summary = string.format("%d tables; lag %s, heartbeat %.3f s", #tables, s.lag_bytes and job.bytes(s.lag_bytes) or "?",
                                  s.lag_seconds or -1)}
end, {plan = "replication lag, tables and row counts"})
if not ok then failed = true end

if not failed then
  ok = item("pre-test", "verify the DR environment is ready", function()
    local r = dr.steps()[1].run(ctx)
    return {summary = string.format("branch %s, endpoint %s", tostring(r.branch), tostring(r.endpoint_state))}
  end)
  failed = not ok
end

-- ---- execution --------------------------------------------------------------------------------
local snapshot
if not failed and ctx.primary then
  ok = item("execution", "create a snapshot", function()
    snapshot = "dr-test-" .. stamp
    local b = ctx.primary:create_branch{name = snapshot, parent = cfg.primary_branch, endpoint = false}
    report.snapshot = {branch = snapshot, id = b.id, project = cfg.primary_project}
    return {summary = "branch " .. snapshot .. " of project " .. cfg.primary_project}
  end, {plan = "a backup branch of the primary, the way back if the test goes wrong"})
  failed = not ok
end

if not failed then
  ok = item("execution", "simulate the primary's failure", function()
    local p <close> = assert(dr.try_primary(ctx))
    local hb = p:query(string.format([[INSERT INTO %s (id, at, note) VALUES (1, now(), $1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at, note = excluded.note
         RETURNING extract(epoch FROM at)::float8 AS at]], dr.HEARTBEAT), {"dr-test " .. J.run_id}, {typed = true})[1]
    local db = dr.scalar(p, "SELECT current_database() AS d")
    p:close()
    -- from another database of the branch: a database cannot close itself
    local admin <close> = assert(dr.try_primary(ctx, cfg.admin_database))
    admin:query("ALTER DATABASE " .. dr.ident(db) .. " ALLOW_CONNECTIONS false")
    failure = {at = dr.scalar(admin, "SELECT extract(epoch FROM clock_timestamp())::float8 AS t"), t0 = time.monotonic(),
               heartbeat_at = hb.at, database = db}
    failure.at = tonumber(failure.at)
    local n = dr.scalar(admin, [[SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                                WHERE datname = $1 AND pid <> pg_backend_pid()]], {db})
    report.failure = {mode = "database closed (ALLOW_CONNECTIONS false), sessions and replication ended",
                      at = time.iso(failure.at, true), sessions_ended = tonumber(n)}
    return {summary = "database " .. db .. " closed; " .. n .. " sessions ended"}
  end, {plan = "close the primary's database to every connection (the replication sender too)"})
  failed = not ok
end

if not failed then
  ok = item("execution", "run the failover", function()
    local steps = dr.load_site(dr.steps())
    local FJ = job.new("dr-failover")
    local ok2, err = pcall(dr.run_steps, FJ, ctx, steps, {})
    report.failover = {run = FJ.run_id, steps = {}}
    for _, s in ipairs(FJ.steps) do
      report.failover.steps[#report.failover.steps + 1] = {step = s.step, status = s.status, seconds = s.seconds, error = s.error}
    end
    if not ok2 then error(err, 0) end
    failure.recovered = time.monotonic()
    fo_results = ctx.results
    return {summary = string.format("%d steps; DR writable %.1f s after the failure", #steps, failure.recovered - failure.t0)}
  end, {plan = "the dr-failover steps (after the site file's changes)"})
  failed = not ok
end

local dr_digests
if not failed then
  ok = item("execution", "verify application functionality", function()
    local d <close> = dr.connect_dr(ctx, {as_app = true})
    local list = checks
    if not list then
      list = {}
      for _, t in ipairs(tables) do list[#list + 1] = {name = t .. " answers", sql = "SELECT * FROM " .. (dr.qualify(t)) .. " LIMIT 1"} end
    end
    local results, bad = {}, 0
    for n, c in ipairs(list) do
      local r = {name = c.name or ("check " .. n)}
      local okc, rows = pcall(function()
        if c.write then d:query("BEGIN") end
        local rows = d:query(c.sql, c.params)
        if c.write then d:query("ROLLBACK") end
        return rows
      end)
      if not okc then
        pcall(d.query, d, "ROLLBACK")
        r.ok, r.error = false, log.redact(clubio.is_error(rows) and rows.message or tostring(rows))
      else
        r.rows = #rows
        r.ok = true
        if c.min_rows and #rows < c.min_rows then r.ok, r.error = false, string.format("%d rows, expected at least %d", #rows, c.min_rows) end
        if c.expect ~= nil then
          local first = rows[1] and select(2, next(rows[1]))
          if tostring(first) ~= tostring(c.expect) then r.ok, r.error = false, string.format("got %s, expected %s", tostring(first), tostring(c.expect)) end
        end
      end
      if not r.ok then bad = bad + 1 end
      results[#results + 1] = r
    end
    report.checks = results
    if bad > 0 then
      clubio.fail{message = string.format("%d of %d application checks failed on the DR database", bad, #results), class = "verify",
                  code = "dr.checks"}
    end
    return {summary = #results .. " checks passed"}
  end, {plan = "the SQL checks against the DR database"})
  if not ok then failed = true end
end

if failure and not failed then
  ok = item("execution", "verify data integrity", function()
    local d <close> = dr.connect_dr(ctx)
    dr_digests = {}
    for _, t in ipairs(tables) do dr_digests[t] = d:table_digest((dr.qualify(t))) end
    -- the primary at cutover: re-opened for reading only (still fenced: read-only by default)
    local admin <close> = assert(dr.try_primary(ctx, cfg.admin_database))
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " SET default_transaction_read_only = on")
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " ALLOW_CONNECTIONS true")
    failure.reopened = true
    local p <close> = assert(dr.try_primary(ctx))
    local rows, lost, mismatched = {}, 0, 0
    for _, t in ipairs(tables) do
      local pd, dd = p:table_digest((dr.qualify(t))), dr_digests[t]
      local match = pd.set_sha256 == dd.set_sha256
      rows[#rows + 1] = {table = t, primary_rows = pd.rows, dr_rows = dd.rows, primary_set_sha256 = pd.set_sha256,
                         dr_set_sha256 = dd.set_sha256, match = match}
      if not match then mismatched = mismatched + 1 end
      if pd.rows > dd.rows then lost = lost + (pd.rows - dd.rows) end
    end
    report.tables = rows
    local hb = d:query("SELECT note, extract(epoch FROM at)::float8 AS at FROM " .. dr.HEARTBEAT .. " WHERE id = 1", nil, {typed = true})[1]
    report.measured.rows_lost = lost
    report.measured.tables_differing = mismatched
    report.measured.last_heartbeat_replicated = hb and hb.note == ("dr-test " .. J.run_id)
    if mismatched == 0 and report.measured.last_heartbeat_replicated then
      report.measured.rpo_seconds = 0
    elseif hb then
      report.measured.rpo_seconds = math.max(0, failure.at - hb.at)
    end
    report.passed.integrity = mismatched == 0
    return {summary = string.format("%d tables compared, %d differ, %d rows lost", #rows, mismatched, lost)}
  end, {plan = "row counts and order-independent digests of every table: primary at cutover vs DR"})
  if not ok then failed = true end
end

-- ---- post-test --------------------------------------------------------------------------------
if failure and failure.recovered then
  item("post-test", "measure RTO and RPO", function()
    local m = report.measured
    m.rto_seconds = failure.recovered - failure.t0
    local lag = fo_results and fo_results["measure-lag"] or {}
    m.seconds_since_contact_at_failover = lag.seconds_since_contact
    m.lag_bytes_at_failover = lag.lag_bytes
    report.passed.rto = m.rto_seconds <= OBJECTIVES.rto_seconds
    report.passed.rpo = m.rpo_seconds ~= nil and m.rpo_seconds <= OBJECTIVES.rpo_seconds
    return {summary = string.format("RTO %.1f s (objective %d s), RPO %s s (objective %d s)", m.rto_seconds, OBJECTIVES.rto_seconds,
                                    m.rpo_seconds and string.format("%.3f", m.rpo_seconds) or "?", OBJECTIVES.rpo_seconds)}
  end)
end

-- Always attempted once the failure was simulated: the primary must not stay closed.
if failure then
  local okr = item("post-test", "restore normal operations", function()
    local done = {}
    local admin <close> = assert(dr.try_primary(ctx, cfg.admin_database))
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " ALLOW_CONNECTIONS true")
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " RESET default_transaction_read_only")
    done[#done + 1] = "primary re-opened"
    local t = dr.update_app_target(ctx, ctx.primary_url)
    done[#done + 1] = t.skipped and "application target not configured" or "application pointed back at the primary"
    if os.getenv("DR_ROUTE53_PRIMARY_VALUE") then
      dr.update_routing(ctx, os.getenv("DR_ROUTE53_PRIMARY_VALUE"))
      done[#done + 1] = "routing pointed back"
    elseif cfg.route53_zone then
      report.notes[#report.notes + 1] = "traffic routing was not pointed back (set DR_ROUTE53_PRIMARY_VALUE)"
    end
    local r = dr.setup(ctx, {resync = true})
    done[#done + 1] = string.format("replication re-created (%d tables copied in %.1f s)", r.tables_synced or 0, r.sync_seconds or 0)
    report.after = {status = dr.status(ctx)}
    return {summary = table.concat(done, "; ")}
  end, {plan = "re-open and un-fence the primary, point the application back, copy the DR side again, re-create replication",
        hint = "finish by hand: ALTER DATABASE ... ALLOW_CONNECTIONS true; ALTER DATABASE ... RESET default_transaction_read_only; " ..
               "point the application at the primary; clubio-dr run dr-setup --resync --yes"})
  report.passed.restored = okr
  if not okr then failed = true end
end
if snapshot and not keep_snapshot and (not failure or report.passed.restored) then
  item("post-test", "delete the snapshot", function()
    ctx.primary:delete_branch(snapshot)
    return {summary = "branch " .. snapshot .. " deleted (--keep-snapshot keeps it)"}
  end)
end

-- ---- report -----------------------------------------------------------------------------------
report.finished = time.iso(time.now())
report.passed.checks = report.checks ~= nil and (function()
  for _, c in ipairs(report.checks) do if not c.ok then return false end end
  return true
end)()
report.ok = not failed and report.passed.rto == true and report.passed.rpo == true and report.passed.integrity == true
  and report.passed.checks and report.passed.restored == true
report.scenarios = {}
for _, s in ipairs(SCENARIOS) do
  local e = {scenario = s.scenario, rto_objective = s.rto, rpo_objective = s.rpo, procedure = s.procedure, script = s.script}
  if s.tested then
    e.measured_rto_seconds, e.measured_rpo_seconds = report.measured.rto_seconds, report.measured.rpo_seconds
    e.met = report.passed.rto == true and report.passed.rpo == true
  end
  report.scenarios[#report.scenarios + 1] = e
end

local function dur(s)
  if not s then return "not measured" end
  if s < 120 then return string.format("%.1f s", s) end
  if s < 7200 then return string.format("%.1f min", s / 60) end
  return string.format("%.2f h", s / 3600)
end
local function yn(b) if b == nil then return "not measured" end return b and "met" or "**NOT met**" end

local function markdown()
  local m, o = report.measured, {}
  local function w(s) o[#o + 1] = s end
  w("# DR test " .. stamp)
  w("")
  w(string.format("Result: **%s**. Primary `%s` (project %s), DR `%s` (project %s). Started %s, finished %s.",
                  report.ok and "PASSED" or "FAILED", report.primary, tostring(report.primary_project), report.dr,
                  tostring(report.dr_project), report.started, report.finished))
  w("")
  w("## Objectives")
  w("")
  w("| Metric | Objective | Measured | |")
  w("|---|---|---|---|")
  w(string.format("| RTO (failure to DR taking writes) | 4 hours | %s | %s |", dur(m.rto_seconds), yn(report.passed.rto)))
  w(string.format("| RPO (data lost at failover) | 1 hour | %s%s | %s |", dur(m.rpo_seconds),
                  m.rows_lost and string.format(" (%d rows lost)", m.rows_lost) or "", yn(report.passed.rpo)))
  w("")
  w("## Scenarios (from the runbook document)")
  w("")
  w("| Scenario | RTO | RPO | Procedure | This test |")
  w("|---|---|---|---|---|")
  for _, s in ipairs(report.scenarios) do
    w(string.format("| %s | %s | %s | %s (`%s`) | %s |", s.scenario, s.rto_objective, s.rpo_objective, s.procedure, s.script,
                    s.measured_rto_seconds and string.format("RTO %s, RPO %s: %s", dur(s.measured_rto_seconds),
                                                             dur(s.measured_rpo_seconds), s.met and "met" or "NOT met")
                    or "not exercised"))
  end
  w("")
  w("## Checklist")
  w("")
  for _, c in ipairs(report.checklist) do
    w(string.format("- [%s] %s: %s (%.2f s)%s", c.ok and "x" or " ", c.phase, c.item, c.seconds,
                    c.error and (" — FAILED: " .. c.error) or (c.detail and (" — " .. c.detail) or "")))
  end
  if report.failover then
    w("")
    w("## Failover steps (" .. report.failover.run .. ")")
    w("")
    w("| Step | Status | Seconds |")
    w("|---|---|---|")
    for _, s in ipairs(report.failover.steps) do
      w(string.format("| %s | %s | %s |", s.step, s.status, s.seconds and string.format("%.3f", s.seconds) or ""))
    end
  end
  if report.tables then
    w("")
    w("## Data integrity (primary at cutover vs DR)")
    w("")
    w("| Table | Primary rows | DR rows | Digests |")
    w("|---|---|---|---|")
    for _, t in ipairs(report.tables) do
      w(string.format("| %s | %d | %d | %s |", t.table, t.primary_rows, t.dr_rows, t.match and "equal" or "**differ**"))
    end
  end
  if report.checks then
    w("")
    w("## Application checks")
    w("")
    for _, c in ipairs(report.checks) do
      w(string.format("- [%s] %s%s", c.ok and "x" or " ", c.name, c.error and (": " .. c.error) or ""))
    end
  end
  if #report.notes > 0 then
    w("")
    w("## Notes")
    w("")
    for _, n in ipairs(report.notes) do w("- " .. n) end
  end
  w("")
  return table.concat(o, "\n")
end

local base = report_dir .. "/dr-test-" .. stamp
item("post-test", "write the report", function()
  proc.run{argv = {"mkdir", "-p", report_dir}, check = true}
  local json = log.redact(cjson.encode(report))
  for path, text in pairs{[base .. ".json"] = json .. "\n", [base .. ".md"] = log.redact(markdown())} do
    local f, err = io.open(path .. ".tmp", "w")
    if not f then clubio.fail{message = "cannot write " .. path .. ": " .. tostring(err), code = "dr.report"} end
    f:write(text)
    f:close()
    os.rename(path .. ".tmp", path)
  end
  return {summary = base .. ".md"}
end)
report.report = {markdown = base .. ".md", json = base .. ".json"}

if not report.ok then
  if clubio.flags.json then io.stdout:write(log.redact(cjson.encode({ok = false, result = report})), "\n") end
  local first
  for _, c in ipairs(report.checklist) do if not c.ok then first = first or c end end
  clubio.fail{message = "DR test failed" .. (first and (" at '" .. first.item .. "': " .. first.error) or
                                              ": the objectives were not met"),
              class = "verify", code = "dr.test_failed", hint = "the report is " .. base .. ".md"}
end
return J:finish(report, string.format("DR test passed: RTO %s (objective 4 h), RPO %s (objective 1 h); report %s.md",
                                      dur(report.measured.rto_seconds), dur(report.measured.rpo_seconds), base))
