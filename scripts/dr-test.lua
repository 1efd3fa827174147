-- The DR test, safe to schedule: rehearse the failover on copies, measure RTO and RPO, write a report
-- schedule: 0 4 1 */3 *
--
-- clubio-dr run dr-test [--json] [--checks FILE] [--report-dir DIR]
-- clubio-dr run dr-test --production [--keep-snapshot] [--checks FILE] [--report-dir DIR]   (on a terminal only)
-- clubio-dr run dr-test --scenario complete-loss [--marker [--wait]] [--server-url URL | --target-url URL] [--keep]
--                       [--checks FILE] [--report-dir DIR] [--json]
--
-- --scenario region-failure (the default) is the failover test below. --scenario complete-loss
-- rehearses the runbook document's "Complete data loss" (Neon itself lost; RTO 8 h, RPO 24 h)
-- with the change archive, from S3 alone (scripts/lib/clubio/dr_complete_loss.lua):
--   before the loss  an archiver holds the slot, within CHANGES_MAX_LAG_BYTES, and the chain in
--                    S3 is intact (else it fails: no current archive, no rehearsal); the source's tables are digested (read only);
--                    --marker writes one row to public.clubio_dr_marker, the only write to the
--                    source (the first time it creates that table, and waits for the new base
--                    export the archiver then takes); --wait: the loss strikes once the marker is
--                    in S3 (the restore then holds it; the time it was at risk is reported)
--   the loss         `clubio-dr run restore-from-s3 --to latest -` runs with no Neon setting and
--                    no source URL in its environment, into a scratch database it creates on
--                    --server-url / DR_TEST_RESTORE_SERVER_URL / RESTORE_TEST_SERVER_URL (a role
--                    with CREATEDB; dropped at the end unless --keep), or into an existing empty
--                    database --target-url / DR_TEST_RESTORE_URL (never dropped); then checks it
--                    (the marker, --checks, every table's digests)
--   measured         RTO = create + restore (base + replay) + check, wall time; RPO = the marker's
--                    commit (without --marker: the loss, an upper bound) minus the restore's last
--                    commit, 0 when the restore holds the marker; against 8 h and 24 h
--   after            the source is read again: when it did not change and the restore holds the
--                    marker, every table must equal it; report dr-test-complete-loss-*.md/.json
-- A URL with a password is refused on the command line: put it in the environment variable.
--
-- The runbook document's DR test checklist end to end (the document schedules the DR failover
-- test quarterly, hence the schedule):
--   pre-test      notify, record the current state (replication lag, read-only), check the DR side
--   execution     the copies (below), simulate the failure, run the failover (the dr-failover steps,
--                 with the site file's changes), verify the application (SQL checks) and the data
--                 (row counts and digests of what replication carries, at cutover vs DR)
--   post-test     measure RTO and RPO against the objectives (RTO 4 h, RPO 1 h), restore normal
--                 operations, write the report (Markdown + JSON)
--
-- By default it REHEARSES on copies, so production keeps serving and nothing of it changes:
--   - a branch of the primary (dr-test-YYYYMMDD-HHMMSS, with its own compute) plays the primary;
--   - a temporary database in the DR project (drt_YYYYMMDD_HHMMSS_<db>) plays the DR database,
--     replicated from the branch as dr-setup does;
--   - the application target is a scratch env file beside the report; Route53 is not touched,
--     and of a site file's steps only those marked `rehearse = true` run.
-- The failure is simulated on the branch, the failover runs against the copies, and at the end
-- the branch, the temporary database and their slots are removed. Nothing is asked: it is safe
-- for the scheduler (examples/jobs.conf runs it so).
--
-- --production runs the real thing on the production pair: the primary's database is closed
-- (ALTER DATABASE ... ALLOW_CONNECTIONS false), the application is failed over to the DR
-- project, then failed back with the dr-failback steps (every write taken on the DR side in
-- between reaches the primary). It needs a terminal and the primary's project id typed as the
-- confirmation (--yes does not answer it, and a scheduled run never can). Keeps a snapshot
-- branch of the primary (deleted at the end unless --keep-snapshot).
--
-- Checks (--checks FILE or DR_TEST_CHECKS): a Lua file returning a list of
--   {name = "orders readable", sql = "SELECT count(*) FROM orders", min_rows = 1}
--   {name = "can insert", sql = "INSERT INTO orders ...", write = true}   -- in a rolled-back transaction
--   {name = "admin exists", sql = "SELECT email FROM users WHERE id = $1", params = {1}, expect = "a@b.c"}
-- Without it, every replicated table must answer a SELECT.
-- Report: --report-dir DIR, DR_TEST_REPORT_DIR, else $XDG_STATE_HOME/clubio-dr/dr-tests
-- (~/.local/state/clubio-dr/dr-tests): dr-test-YYYYMMDD-HHMMSS.md and .json.
local clubio, log, cjson, time, proc = require "clubio", require "log", require "cjson", require "time", require "proc"
local args = require("clubio.args").parse(arg, {options = {["--production"] = true, ["--keep-snapshot"] = true,
                                                           ["--report-dir"] = "DIR", ["--checks"] = "FILE",
                                                           ["--scenario"] = "NAME", ["--marker"] = true, ["--wait"] = true, ["--keep"] = true,
                                                           ["--target-url"] = "URL", ["--server-url"] = "URL"}})
local scenario = args["--scenario"] or "region-failure"
if scenario ~= "region-failure" and scenario ~= "complete-loss" then
  clubio.fail{message = "dr-test: unknown scenario '" .. scenario .. "'", class = "usage", code = "usage.argument",
              hint = "--scenario region-failure (the default: failover to the DR project) or --scenario complete-loss (restore from S3 alone)"}
end
for _, o in ipairs(scenario == "complete-loss" and {"--production", "--keep-snapshot"} or {"--marker", "--wait", "--keep", "--target-url", "--server-url"}) do
  if args[o] then
    clubio.fail{message = "dr-test: " .. o .. " does not go with --scenario " .. scenario, class = "usage", code = "usage.argument",
                hint = "see clubio-dr help dr-test"}
  end
end
if args["--wait"] and not args["--marker"] then
  clubio.fail{message = "dr-test: --wait goes with --marker (it waits for the marker to be archived)", class = "usage",
              code = "usage.argument", hint = "clubio-dr run dr-test --scenario complete-loss --marker --wait"}
end
if scenario == "complete-loss" then
  local cl = require "clubio.dr_complete_loss"
  cl.check_argv_url("--target-url", args["--target-url"], "DR_TEST_RESTORE_URL")
  cl.check_argv_url("--server-url", args["--server-url"], "DR_TEST_RESTORE_SERVER_URL")
end
local job = require "clubio.job"

local OBJECTIVES = {rto_seconds = 4 * 3600, rpo_seconds = 3600}
-- The runbook document's DR scenarios; this test exercises "Region failure".
local SCENARIOS = {
  {scenario = "Database corruption", rto = "1 hour", rpo = "15 min", procedure = "PITR to before corruption", script = "pitr-recovery"},
  {scenario = "Accidental deletion", rto = "30 min", rpo = "0", procedure = "Restore from backup branch", script = "restore-from-backup"},
  {scenario = "Region failure", rto = "4 hours", rpo = "1 hour", procedure = "Failover to DR region", script = "dr-failover", tested = true},
  {scenario = "Complete data loss", rto = "8 hours", rpo = "24 hours", procedure = "Restore from S3 archive", script = "restore-from-s3"},
}

local production = args["--production"] == true
local keep_snapshot = args["--keep-snapshot"] == true
local report_dir = args["--report-dir"] or os.getenv("DR_TEST_REPORT_DIR")
local checks_file = args["--checks"] or os.getenv("DR_TEST_CHECKS")
if keep_snapshot and not production then
  clubio.fail{message = "--keep-snapshot goes with --production", class = "usage",
              hint = "a rehearsal makes no snapshot: its copies are removed at the end"}
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

if scenario == "complete-loss" then
  -- Neon is "gone": no DR context, no Neon client; the source is the change archive's
  return require("clubio.dr_complete_loss").run{report_dir = report_dir, checks = checks, marker = args["--marker"] == true,
                                                wait = args["--wait"] == true,
                                                target_url = args["--target-url"], server_url = args["--server-url"],
                                                keep = args["--keep"] == true}
end

local dr = require "clubio.dr"
local prod = dr.context()        -- the production pair: only read in a rehearsal
local cfg = prod.cfg
local J = job.new("dr-test")
local stamp = time.format(time.now(), "%Y%m%d-%H%M%S")
local report = {job = "dr-test", run = J.run_id, started = time.iso(time.now()), objectives = OBJECTIVES,
                mode = production and "production" or "rehearsal",
                primary_project = cfg.primary_project, dr_project = cfg.dr_project,
                primary = dr.display(prod.primary_url), dr = dr.display(prod.dr_url),
                checklist = {}, measured = {}, passed = {}, notes = {}}

if J.dry_run then
  local list = production and {"notify stakeholders", "record the current state", "verify the DR environment is ready",
                               "create a snapshot", "simulate the primary's failure", "run the failover", "verify application functionality",
                               "verify data integrity", "measure RTO and RPO", "restore normal operations (failback)", "write the report"}
    or {"notify stakeholders", "record the current state", "verify the DR environment is ready", "create the copies",
        "simulate the primary's failure (on the branch)", "run the failover (on the copies)", "verify application functionality",
        "verify data integrity", "measure RTO and RPO", "remove the copies", "write the report"}
  for _, s in ipairs(list) do J:step(s, {plan = s}, function() end) end
  return J:finish(nil, "dry run: nothing was changed")
end

if production then
  -- the confirmation a schedule cannot give: a person at a terminal typing the project's id
  if os.getenv("CLUBIO_DR_JOB") or not clubio.interactive then
    J:record({step = "production DR test", status = "declined", start = time.iso(time.now()),
              error = "needs a terminal (a scheduled run never has one)"})
    clubio.fail{message = "dr-test --production fails the production pair over and back: it needs a person at a terminal",
                class = "declined", code = "declined.production",
                hint = "run it by hand on a terminal (--yes does not answer this); scheduled runs use the default rehearsal on copies"}
  end
  local want = tostring(cfg.primary_project or dr.parse_url(prod.primary_url).database)
  io.stderr:write(string.format("This closes the production database %s, fails the application over to %s, then fails it back.\n" ..
                                "Type the primary's project id (%s) to go on: ", report.primary, report.dr, want))
  io.stderr:flush()
  local line = io.stdin:read("l")
  if not line or line:gsub("^%s+", ""):gsub("%s+$", "") ~= want then
    J:record({step = "production DR test", status = "declined", start = time.iso(time.now())})
    clubio.fail{message = "dr-test --production: not confirmed", class = "declined", code = "declined.production",
                hint = "nothing was changed; the confirmation is the primary's project id, typed exactly"}
  end
end

-- One checklist item: a job step (journal, timings) and a line of the report.
local item = require("clubio.dr_checks").checklist(J, report)

local failed = false
local tables, failure, fo_results
-- the pair the failover runs on: the copies in a rehearsal, production with --production
local ctx = prod
local copies = {}

-- ---- pre-test ---------------------------------------------------------------------------------
item("pre-test", "notify stakeholders", function()
  local r = dr.notify(prod, "clubio-dr: DR test starting (" .. report.mode .. ")", {primary = report.primary, dr = report.dr})
  return {summary = r.webhook and "webhook posted" or "logged (no DR_WEBHOOK_URL)"}
end)

local ok = item("pre-test", "record the current state", function()
  -- read-only in a rehearsal: no heartbeat is written on the production primary
  local s = dr.status(prod, {heartbeat = production})
  if not s.subscribed or not s.enabled then
    clubio.fail{message = "replication is not set up for " .. report.dr, code = "dr.not_replicating",
                hint = "run `clubio-dr run dr-setup` first"}
  end
  if (s.syncing or 0) > 0 then
    clubio.fail{message = "the initial copy is still running (" .. s.syncing .. " tables)", code = "dr.not_replicating",
                hint = "wait for `clubio-dr run dr-setup --status` to show 0 tables copying"}
  end
  local p <close> = assert(dr.try_primary(prod))
  local skipped
  tables, skipped = dr.wanted_tables(prod, p)
  local list = {}
  for _, t in ipairs(tables) do if t ~= dr.HEARTBEAT then list[#list + 1] = t end end
  tables = list
  local note = dr.left_out_note(skipped)
  if note then report.notes[#report.notes + 1] = note .. "; the integrity check compares only what replication carries" end
  report.before = {status = s, tables = #tables}
  return {summary = string.format("%d tables replicated%s; lag %s", #tables,
                                  #skipped > 0 and string.format(" (%d left out: unlogged or temporary)", #skipped) or "",
                                  s.lag_bytes and job.bytes(s.lag_bytes) or "?")}
end, {plan = "replication lag and the replicated tables"})
if not ok then failed = true end

if not failed then
  ok = item("pre-test", "verify the DR environment is ready", function()
    local r = dr.steps()[1].run(prod)
    return {summary = string.format("branch %s, endpoint %s", tostring(r.branch), tostring(r.endpoint_state))}
  end)
  failed = not ok
end

-- ---- execution --------------------------------------------------------------------------------
local snapshot
if not failed and production and prod.primary then
  ok = item("execution", "create a snapshot", function()
    snapshot = "dr-test-" .. stamp
    local b = prod.primary:create_branch{name = snapshot, parent = cfg.primary_branch, endpoint = false}
    report.snapshot = {branch = snapshot, id = b.id, project = cfg.primary_project}
    return {summary = "branch " .. snapshot .. " of project " .. cfg.primary_project}
  end, {plan = "a backup branch of the primary, the way back if the test goes wrong"})
  failed = not ok
end

if not failed and not production then
  ok = item("execution", "create the copies", function()
    if not prod.primary or cfg.primary_url then
      clubio.fail{message = "a rehearsal needs the primary as a Neon project (to branch it); DR_PRIMARY_URL is set",
                  class = "config", code = "dr.rehearsal",
                  hint = "unset DR_PRIMARY_URL and set NEON_PROJECT_ID_PRIMARY, or run dr-test --production on a terminal"}
    end
    local branch = "dr-test-" .. stamp
    prod.primary:create_branch{name = branch, parent = cfg.primary_branch}
    copies.branch = branch
    local purl = dr.branch_url(prod.primary, cfg, branch)
    -- the temporary DR database, made from the DR side's admin database
    local db = ("drt_" .. stamp:gsub("-", "_") .. "_" .. (dr.parse_url(prod.dr_url).database or "db"):lower():gsub("[^%w_]", "_")):sub(1, 63)
    local admin <close> = require("pgdump").connect(dr.with_database(prod.dr_url, cfg.admin_database))
    admin:query("CREATE DATABASE " .. dr.ident(db))
    copies.dr_database = db
    local rcfg = setmetatable({subscription = ("clubio_drt_" .. stamp:gsub("-", "_")):sub(1, 63),
                               failback_slot = ("clubio_drtfb_" .. stamp:gsub("-", "_")):sub(1, 63),
                               app_target = "env-file:" .. report_dir .. "/dr-test-" .. stamp .. ".app.env",
                               route53_zone = false, route53_record = false, route53_value = false,
                               primary_url = false, target_url = false},
                              {__index = cfg})
    proc.run{argv = {"mkdir", "-p", report_dir}, check = true}
    copies.app_env = report_dir .. "/dr-test-" .. stamp .. ".app.env"
    ctx = {cfg = rcfg, results = {}, started = time.now(), rehearsal = true, primary = prod.primary, dr = prod.dr,
           primary_url = purl, dr_url = dr.with_database(prod.dr_url, db)}
    local r = dr.setup(ctx, {})
    report.copies = {branch = branch, dr_database = db, app_target = copies.app_env}
    return {summary = string.format("branch %s of the primary, database %s in the DR project, %d tables replicated in %.1f s",
                                    branch, db, r.tables_synced or 0, r.sync_seconds or 0)}
  end, {plan = "a branch of the primary (its own compute), a temporary database in the DR project replicated from it, " ..
               "a scratch application target: production is only read"})
  failed = not ok
end

if not failed then
  ok = item("execution", "simulate the primary's failure", function()
    local p <close> = assert(dr.try_primary(ctx))
    p:query("BEGIN READ WRITE")
    local hb = p:query(string.format([[INSERT INTO %s (id, at, note) VALUES (1, now(), $1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at, note = excluded.note
         RETURNING extract(epoch FROM at)::float8 AS at]], dr.HEARTBEAT), {"dr-test " .. J.run_id}, {typed = true})[1]
    p:query("COMMIT")
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
    report.failure = {mode = "database closed (ALLOW_CONNECTIONS false), sessions and replication ended" ..
                             (production and "" or " — on the branch, not production"),
                      at = time.iso(failure.at, true), sessions_ended = tonumber(n)}
    return {summary = "database " .. db .. (production and "" or (" of branch " .. copies.branch)) .. " closed; " .. n .. " sessions ended"}
  end, {plan = production and "close the primary's database to every connection (the replication sender too)"
                          or "close the branch's database to every connection (the replication sender too)"})
  failed = not ok
end
if not failed then
  ok = item("execution", "run the failover", function()
    local steps = dr.load_site(dr.steps())
    -- a rehearsal's failover is journaled under its own name: it is not a failover of production
    local FJ = job.new(production and "dr-failover" or "dr-test-failover")
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
    local results, bad = require("clubio.dr_checks").run(d, list)
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
    -- only what replication carries: unlogged and temporary tables were left out (and noted)
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


-- Always attempted once the failure was simulated: the primary must not stay closed, the copies
-- must not stay behind.
if failure and production then
  local okr = item("post-test", "restore normal operations", function()
    local admin <close> = assert(dr.try_primary(ctx, cfg.admin_database))
    -- re-opened still fenced: the failback un-fences it once the DR side's writes are in
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " SET default_transaction_read_only = on")
    admin:query("ALTER DATABASE " .. dr.ident(failure.database) .. " ALLOW_CONNECTIONS true")
    if report.passed.integrity then
      -- every table matched at cutover and the primary stayed closed, then fenced: what the DR
      -- side took since is all the primary lacks
      local d <close> = dr.connect_dr(ctx)
      local rec = dr.failover_record(ctx, d)
      if rec and rec.slot_present then
        rec.exact, rec.why = true, "dr-test: every table matched at cutover"
        dr.write_failover_record(ctx, d, rec)
      end
    end
    local fb = require "clubio.dr_failback"
    local steps = dr.load_site(fb.steps(), nil, "dr-failback-site.lua")
    local BJ = job.new("dr-failback")
    ctx.results = {}
    dr.run_steps(BJ, ctx, steps, {what = "failback"})
    local mode = (ctx.results["check-primary"] or {}).mode
    report.failback = {run = BJ.run_id, mode = mode}
    return {summary = "failed back (" .. tostring(mode) .. "): the primary takes writes, the application points at it, replication runs again"}
  end, {plan = "re-open the primary (fenced), then the dr-failback steps: the DR side's writes to the primary, application and traffic back, replication again",
        hint = "finish by hand: ALTER DATABASE ... ALLOW_CONNECTIONS true (from another database), then `clubio-dr run dr-failback --yes`"})
  report.passed.restored = okr
  if not okr then failed = true end
elseif not production and copies.branch then
  local okr = item("post-test", "remove the copies", function()
    local done = {}
    if copies.dr_database then
      -- the temporary DR database: its failback slot (made by the failover), then the database
      pcall(function()
        local d <close> = dr.connect_dr(ctx)
        for _, r in ipairs(d:query("SELECT subname FROM pg_subscription WHERE subdbid = " .. dr.THIS_DB)) do
          d:query("ALTER SUBSCRIPTION " .. dr.ident(r.subname) .. " DISABLE")
          d:query("ALTER SUBSCRIPTION " .. dr.ident(r.subname) .. " SET (slot_name = NONE)")
          d:query("DROP SUBSCRIPTION " .. dr.ident(r.subname))
        end
      end)
      local admin <close> = require("pgdump").connect(dr.with_database(prod.dr_url, cfg.admin_database))
      for _, r in ipairs(admin:query("SELECT slot_name FROM pg_replication_slots WHERE database = $1", {copies.dr_database})) do
        admin:query("SELECT pg_drop_replication_slot($1)", {r.slot_name})
      end
      admin:query("DROP DATABASE IF EXISTS " .. dr.ident(copies.dr_database) .. " WITH (FORCE)")
      done[#done + 1] = "database " .. copies.dr_database .. " dropped"
    end
    -- the branch, its compute and its slot
    prod.primary:delete_branch(copies.branch)
    done[#done + 1] = "branch " .. copies.branch .. " deleted"
    if copies.app_env then os.remove(copies.app_env) end
    return {summary = table.concat(done, "; ")}
  end, {plan = "drop the temporary DR database (and its slot), delete the branch, remove the scratch application target",
        hint = "remove them by hand: the branch " .. tostring(copies.branch) .. " of the primary project, the database " ..
               tostring(copies.dr_database) .. " of the DR project"})
  report.passed.restored = okr
  if not okr then failed = true end
end
if snapshot and not keep_snapshot and (not failure or report.passed.restored) then
  item("post-test", "delete the snapshot", function()
    prod.primary:delete_branch(snapshot)
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

local dur = require("clubio.dr_checks").duration
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
  w(report.mode == "production" and "Mode: **production** (the production pair failed over and back)."
    or string.format("Mode: **rehearsal** on copies (branch `%s` of the primary, database `%s` in the DR project, removed " ..
                     "afterwards); production kept serving.", tostring((report.copies or {}).branch), tostring((report.copies or {}).dr_database)))
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
  for _, l in ipairs(require("clubio.dr_checks").checklist_lines(report.checklist)) do w(l) end
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
  for _, l in ipairs(require("clubio.dr_checks").report_tail_lines(report, "Application checks")) do w(l) end
  w("")
  return table.concat(o, "\n")
end

local base = report_dir .. "/dr-test-" .. stamp
item("post-test", "write the report", function()
  require("clubio.dr_checks").write_report(report_dir, base, report, markdown())
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
return J:finish(report, string.format("DR test passed (" .. report.mode .. "): RTO %s (objective 4 h), RPO %s (objective 1 h); report %s.md",
                                      dur(report.measured.rto_seconds), dur(report.measured.rpo_seconds), base))
