-- dr-test --scenario complete-loss: the runbook document's "Complete data loss" scenario (Neon
-- itself lost; objectives RTO 8 h, RPO 24 h) rehearsed with the change archive, measured from S3
-- alone.
--
--   require("clubio.dr_complete_loss").run{report_dir = DIR, marker = bool, wait = bool, target_url = URL,
--                                          server_url = URL, keep = bool, checks = {...}}
--
-- Before the loss (the source is only read, except the opt-in marker):
--   - the change archive is current: its slot exists and an archiver holds it (active) at most
--     CHANGES_MAX_LAG_BYTES behind, the chain of segments in S3 is intact, a base export exists;
--   - the source's tables are digested (rows and order-independent digests);
--   - with marker = true, one row of public.clubio_dr_marker is written (the table is created the
--     first time, and then the archiver takes a new base export for it, once: that is waited for);
--     with wait = true the loss strikes only once a segment holding it is in S3 (the restore then
--     holds it; the time that took is reported as the marker's time at risk).
-- The loss: from here on the recovery uses S3 and the target server only.
--   - the target: a scratch database created on server_url (dropped at the end unless keep), or
--     target_url, an existing empty database (never dropped);
--   - `clubio-dr run restore-from-s3 --to latest -` as a child process whose environment has no
--     Neon setting and no source URL (NEON_*, DATABASE_URL, CHANGES_DATABASE_URL, DR_* URLs);
--   - the check: the marker (present exactly when the restore reaches its commit), the optional
--     SQL checks, the restored tables' digests.
-- RTO = the target's creation + the restore (base + replay) + the check, wall time. RPO = the
-- source's last commit before the loss (the marker's commit; without a marker, the loss itself, an
-- upper bound) minus the last commit the restore holds; 0 when the restore holds the marker.
-- Afterwards the source is digested again: when no table changed during the test and the restore
-- holds the marker, every table must equal the source's (else the comparison is reported only:
-- the source moved on).
local env, time, log, cjson, proc = require "env", require "time", require "log", require "cjson", require "proc"
local pgdump, clubio = require "pgdump", require "clubio"
local job = require "clubio.job"

local M = {}

M.OBJECTIVES = {rto_seconds = 8 * 3600, rpo_seconds = 24 * 3600}
M.MARKER = "public.clubio_dr_marker"
M.SCRATCH_PREFIX = "clubio_drt_loss_"
-- what the restore's child process must not see: with these gone it can only use S3
M.NOT_FOR_THE_RESTORE = {"NEON_API_KEY", "NEON_API_HOST", "NEON_PROJECT_ID", "NEON_PROJECT_ID_PRIMARY", "NEON_PROJECT_ID_DR",
                         "DATABASE_URL", "CHANGES_DATABASE_URL", "DR_PRIMARY_URL", "DR_TARGET_URL"}

local function fail(message, hint, class, code)
  clubio.fail{message = message, hint = hint, class = class or "failure", code = code or "dr.complete_loss"}
end

-- Our own binary, to run restore-from-s3 exactly as an operator would.
local function self_bin()
  local bin = os.getenv("CLUBIO_DR_BIN")
  if bin and bin ~= "" then return bin end
  -- our pid from our own /proc/self (a child's /proc/self would be the child)
  local f = io.open("/proc/self/stat", "r")
  local pid = f and f:read("l"):match("^(%d+)")
  if f then f:close() end
  local r = pid and proc.run{argv = {"readlink", "/proc/" .. pid .. "/exe"}}
  return r and r.status == 0 and (r.stdout:gsub("%s+$", "")) or "clubio-dr"
end

-- url with its database replaced (keeps user, password, host, port and parameters; libpq checks it)
local function with_database(url, db)
  return require("clubio.pgurl").with_database(url, db)
end

-- The permanent tables of user schemas (what a FOR ALL TABLES publication carries), qualified and
-- quoted, without the marker table.
local function user_tables(db)
  local out = {}
  for _, r in ipairs(db:query([[
      SELECT format('%I.%I', n.nspname, c.relname) AS name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
      ORDER BY 1]])) do
    if r.name ~= M.MARKER then out[#out + 1] = r.name end
  end
  return out
end

-- Every table's rows and order-independent digest, from one snapshot on one connection (a
-- consistent picture of a source that is being written to).
local function digests(db, tables)
  local out = {}
  db:query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
  for _, t in ipairs(tables) do
    db:query("SAVEPOINT d")
    local ok, d = pcall(db.table_digest, db, t)
    db:query(ok and "RELEASE SAVEPOINT d" or "ROLLBACK TO SAVEPOINT d")
    out[t] = ok and {rows = d.rows, set_sha256 = d.set_sha256} or {missing = true}
  end
  db:query("COMMIT")
  return out
end

-- The same for a database nobody writes to (the restore), so no snapshot is needed: the tables
-- are read over RESTORE_JOBS connections at once, as restore-from-s3 reads its restore back
-- (verify.existing_table_digests). db is a connection to url; a table the database lacks is
-- reported missing.
local function restored_digests(db, url, tables, jobs)
  local d = require("verify").existing_table_digests(db, url, tables, jobs or tonumber(env.get("RESTORE_JOBS", "2")))
  local out = {}
  for _, t in ipairs(tables) do
    out[t] = d[t] and {rows = d[t].rows, set_sha256 = d[t].set_sha256} or {missing = true}
  end
  return out
end
M._restored_digests = restored_digests

local function same(a, b)
  return a and b and not a.missing and not b.missing and a.rows == b.rows and a.set_sha256 == b.set_sha256
end

local dur = require("clubio.dr_checks").duration

local function markdown(report, stamp)
  local m, o = report.measured, {}
  local function w(s) o[#o + 1] = s end
  local function yn(b) if b == nil then return "not measured" end return b and "met" or "**NOT met**" end
  w("# DR test " .. stamp .. ": complete data loss")
  w("")
  w(string.format("Result: **%s**. Source `%s`, archive `s3://%s/%s`, restored into `%s`. Started %s, finished %s.",
                  report.ok and "PASSED" or "FAILED", tostring(report.source), tostring(report.bucket), tostring(report.archive_folder),
                  tostring(report.target), report.started, report.finished))
  w("")
  w("Scenario: Neon is lost (account, project or region). The database is rebuilt from `BACKUP_S3_BUCKET` alone " ..
    "(a base export + the change archive) with `restore-from-s3 --to latest`, run without any Neon setting or source URL. " ..
    (report.marker and "The only write to the source was one marker row (`" .. M.MARKER .. "`)."
                   or "Nothing was written to the source."))
  w("")
  w("## Objectives")
  w("")
  w("| Metric | Objective | Measured | |")
  w("|---|---|---|---|")
  w(string.format("| RTO (loss to a checked database: create, restore, check) | 8 hours | %s | %s |", dur(m.rto_seconds), yn(report.passed.rto)))
  w(string.format("| RPO (source's last commit to the restore's last commit; %s) | 24 hours | %s | %s |",
                  m.rpo_basis or "?", m.rpo_seconds and string.format("%.3f s", m.rpo_seconds) or "not measured", yn(report.passed.rpo)))
  w("")
  w("## Measurements")
  w("")
  local function row(k, v) if v ~= nil then w(string.format("| %s | %s |", k, tostring(v))) end end
  w("| | |")
  w("|---|---|")
  row("the loss", m.loss_at)
  row("source's last commit (" .. tostring(m.rpo_basis) .. ")", m.source_last_commit)
  row("restore's last commit", m.restored_last_commit)
  row("base export", m.base)
  local function int(v) return v and string.format("%d", math.floor(v)) end
  row("transactions replayed", int(m.transactions))
  row("segments replayed", int(m.segments))
  row("restore (base + replay)", m.restore_seconds and string.format("%.1f s (base %.1f s, replay %.1f s)", m.restore_seconds,
                                                                    m.base_seconds or 0, m.replay_seconds or 0))
  row("check", m.check_seconds and string.format("%.1f s", m.check_seconds))
  row("the marker's time at risk (commit to its segment in S3, --wait)", m.archive_delay_seconds and string.format("%.1f s", m.archive_delay_seconds))
  row("archive before the loss", report.archive and string.format("%d segments, last commit %s, slot %s %s behind",
                                                                  report.archive.segments, report.archive.last_commit or "(no segment yet)",
                                                                  report.archive.slot, job.bytes(report.archive.lag_bytes or 0)))
  if report.marker then
    row("marker", string.format("`%s` committed by %s, %s the restore", report.marker.note, report.marker.committed_by,
                                report.marker.restored and "in" or "**not in**"))
  end
  w("")
  w("## Checklist")
  w("")
  for _, l in ipairs(require("clubio.dr_checks").checklist_lines(report.checklist)) do w(l) end
  if report.tables then
    w("")
    w("## Tables (source at the loss vs restore)")
    w("")
    w("| Table | Source rows | Restored rows | Digests |")
    w("|---|---|---|---|")
    for _, t in ipairs(report.tables) do
      w(string.format("| %s | %s | %s | %s |", t.table, tostring(t.source_rows or "?"), t.restored_rows and tostring(t.restored_rows) or "missing",
                      t.match and "equal" or "**differ**"))
    end
  end
  for _, l in ipairs(require("clubio.dr_checks").report_tail_lines(report, "Application checks (on the restore)")) do w(l) end
  w("")
  return table.concat(o, "\n")
end

-- Refuses a URL with a password on the command line (every user of the machine sees argv).
function M.check_argv_url(option, url, env_name)
  if url and url:match("^postgres[a-z]*://[^/@]*:[^/@]*@") then
    clubio.fail{message = "dr-test " .. option .. " URL contains a password, which the process list would show",
                class = "usage", code = "usage.secret_in_argv",
                hint = "put the URL in " .. env_name .. ", or give it without a password and set PGPASSWORD"}
  end
end

function M.run(o)
  local lib = require "clubio.changes"
  local cfg = lib.config()
  if cfg.url == "" then env.get("DATABASE_URL") end -- names the missing variable
  env.get("BACKUP_ENCRYPTION_KEY")
  local target_url = o.target_url or os.getenv("DR_TEST_RESTORE_URL")
  if target_url == "" then target_url = nil end
  local server_url = o.server_url or os.getenv("DR_TEST_RESTORE_SERVER_URL")
  if not server_url or server_url == "" then server_url = os.getenv("RESTORE_TEST_SERVER_URL") end
  if server_url == "" then server_url = nil end
  if o.target_url and o.server_url then
    fail("dr-test: --target-url and --server-url exclude each other", "give one: an empty database, or a server for a scratch database", "usage", "usage.argument")
  end
  if o.target_url then server_url = nil elseif o.server_url then target_url = nil end
  if target_url then server_url = nil end
  if not target_url and not server_url then
    fail("dr-test --scenario complete-loss needs a PostgreSQL server to restore into",
         "set DR_TEST_RESTORE_SERVER_URL=postgresql://postgres:...@host:5432/postgres (a role with CREATEDB: a scratch database is " ..
         "made and dropped), or DR_TEST_RESTORE_URL (an existing empty database)", "config", "config.env")
  end
  if o.keep and not server_url then
    fail("--keep goes with a scratch database (--server-url or DR_TEST_RESTORE_SERVER_URL)",
         "a database given by --target-url or DR_TEST_RESTORE_URL is never dropped", "usage", "usage.argument")
  end

  local c = require("clubio.objects").client()
  local J = job.new("dr-test")
  local stamp = time.format(time.now(), "%Y%m%d-%H%M%S")
  local report = {job = "dr-test", scenario = "complete-loss", run = J.run_id, started = time.iso(time.now()),
                  objectives = M.OBJECTIVES, mode = "rehearsal", source = job.describe_url(cfg.url).display,
                  bucket = cfg.bucket, archive_folder = cfg.folder, checklist = {}, measured = {}, passed = {}, notes = {}}

  if J.dry_run then
    local list = {"check the change archive", "record the source"}
    if o.marker then list[#list + 1] = "write the marker" end
    if o.marker and o.wait then list[#list + 1] = "wait for the marker to be archived" end
    list[#list + 1] = server_url and "create the scratch database" or "check the target is empty"
    for _, s in ipairs{"restore from S3 alone (restore-from-s3 --to latest)", "check the restore", "compare with the source",
                       "measure RTO and RPO"} do list[#list + 1] = s end
    if server_url and not o.keep then list[#list + 1] = "remove the scratch database" end
    list[#list + 1] = "write the report"
    for _, s in ipairs(list) do J:step(s, {plan = s}, function() end) end
    return J:finish(nil, "dry run: nothing was changed")
  end

  local item = require("clubio.dr_checks").checklist(J, report)

  local m = report.measured
  local failed = false
  local tables, before

  -- ---- before the loss: the source is only read (but for the opt-in marker) -----------------
  local ok = item("pre-test", "check the change archive", function()
    local db <close> = pgdump.connect(cfg.url)
    local s = db:query([[SELECT active, wal_status,
                                pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes
                         FROM pg_catalog.pg_replication_slots WHERE slot_name = $1]], {cfg.slot}, {typed = true})[1]
    if not s then
      fail("the change archive's slot " .. cfg.slot .. " does not exist: nothing archives the source's changes",
           "start the archiver (clubio-dr run archive-changes, e.g. examples/archive-changes.service)", "verify", "changes.no-slot")
    end
    if not s.active then
      fail("no archiver is running: slot " .. cfg.slot .. " is inactive, the change archive is not current",
           "start the archiver (clubio-dr run archive-changes) and run the test again", "verify", "changes.inactive")
    end
    local limit = tonumber(env.get("CHANGES_MAX_LAG_BYTES", tostring(1 << 30)))
    if (s.lag_bytes or 0) > limit then
      fail(string.format("the archiver is %s behind the source (limit %s, CHANGES_MAX_LAG_BYTES): the change archive is not current",
                         job.bytes(s.lag_bytes), job.bytes(limit)),
           "see clubio-dr run archive-changes --status and the archiver's log", "verify", "changes.lag")
    end
    local chain, problems = lib.verify_chain(c, cfg)
    if #problems > 0 then
      local p = problems[1]
      fail(string.format("the change archive is not intact: segment %d (%s): %s", p.seq, p.reason, p.message),
           "run clubio-dr run archive-changes --verify", "verify", "verify." .. p.reason)
    end
    local bases = lib.list_bases(c, cfg)
    if not bases[1] then fail("the change archive has no base export", "start the archiver: its first run takes one", "verify", "changes.no-base") end
    local last = chain[#chain]
    report.archive = {slot = cfg.slot, lag_bytes = s.lag_bytes, wal_status = s.wal_status, segments = #chain,
                      last_segment = last and last.archive.key, last_commit = last and last.last_time,
                      written_at = last and last.created_at, base = bases[1].key, base_snapshot_time = bases[1].manifest.snapshot_time}
    return {summary = string.format("slot %s active, %s behind; %d segments, chain intact%s; newest base %s", cfg.slot,
                                    job.bytes(s.lag_bytes or 0), #chain,
                                    last and (", last commit " .. last.last_time) or "", bases[1].key)}
  end, {plan = "the slot is held by an archiver, the chain of segments in S3 is intact, a base exists"})
  failed = not ok

  if not failed then
    ok = item("pre-test", "record the source", function()
      local db <close> = pgdump.connect(cfg.url)
      tables = user_tables(db)
      before = digests(db, tables)
      return {summary = #tables .. " tables digested"}
    end, {plan = "rows and order-independent digests of every table (read only)"})
    failed = not ok
  end

  local marker
  if not failed and o.marker then
    ok = item("pre-test", "write the marker", function()
      local db <close> = pgdump.connect(cfg.url)
      local exists = db:query("SELECT to_regclass($1) IS NOT NULL AS e", {M.MARKER}, {typed = true})[1].e
      if not exists then
        -- a new table is a schema change to the archive: it takes a new base export, which a
        -- restore needs before it can replay the marker; wait for it (once)
        db:query("CREATE TABLE IF NOT EXISTS " .. M.MARKER .. " (id int PRIMARY KEY, note text NOT NULL, at timestamptz NOT NULL)")
        local t = db:query("INSERT INTO " .. M.MARKER .. [[ (id, note, at) VALUES (1, 'created', now())
                           RETURNING extract(epoch FROM clock_timestamp())::float8 AS t]], nil, {typed = true})[1].t
        report.notes[#report.notes + 1] = "created the table " .. M.MARKER .. " on the source (one row); the archiver took a new base export for it"
        log.info("created " .. M.MARKER .. ": waiting for the archiver's new base export (once)")
        local limit = tonumber(env.get("DR_TEST_BASE_WAIT", "1800"))
        local deadline = time.monotonic() + limit
        while true do
          local b = lib.list_bases(c, cfg)[1]
          if b and b.time > t then break end
          if time.monotonic() > deadline then
            fail(string.format("the archiver took no new base export within %d s of creating %s", limit, M.MARKER),
                 "check the archiver's log (clubio-dr run archive-changes --status); DR_TEST_BASE_WAIT sets the wait", "verify", "changes.no-base")
          end
          time.sleep(1)
        end
      end
      local note = "dr-test complete-loss " .. J.run_id
      local seen = {}
      for _, sg in ipairs(lib.list_segments(c, cfg)) do seen[sg.key] = true end
      local r = db:query("INSERT INTO " .. M.MARKER .. [[ (id, note, at) VALUES (2, $1, now())
                         ON CONFLICT (id) DO UPDATE SET note = excluded.note, at = excluded.at
                         RETURNING extract(epoch FROM at)::float8 AS started, extract(epoch FROM clock_timestamp())::float8 AS t]],
                         {note}, {typed = true})[1]
      marker = {note = note, committed_by = time.iso(r.t, true), t = r.t, started = r.started, seen = seen}
      report.marker = {note = note, committed_by = marker.committed_by, table = M.MARKER}
      return {summary = "row 2 of " .. M.MARKER .. " committed by " .. marker.committed_by}
    end, {plan = "one row in " .. M.MARKER .. " (the only write to the source)"})
    failed = not ok
  end

  -- --wait: the loss strikes once the marker is in S3 (a segment whose manifest counts a change to
  -- the marker table, which nothing else writes); how long it took is the time it was at risk
  if not failed and marker and o.wait then
    ok = item("pre-test", "wait for the marker to be archived", function()
      local limit = tonumber(env.get("DR_TEST_ARCHIVE_WAIT", "300"))
      local deadline = time.monotonic() + limit
      while true do
        for _, sg in ipairs(lib.list_segments(c, cfg)) do
          if not marker.seen[sg.key] and sg.has_manifest then
            marker.seen[sg.key] = true
            local mf = lib.read_manifest(c, cfg.bucket, sg.key)
            if mf and mf.tables and mf.tables[M.MARKER] then
              m.archive_delay_seconds = math.max(0, time.parse(mf.created_at) - marker.started)
              report.marker.archived_in = sg.key
              return {summary = string.format("in segment #%d, %.1f s after the marker's transaction began", mf.seq, m.archive_delay_seconds)}
            end
          end
        end
        if time.monotonic() > deadline then
          fail(string.format("the marker was not archived within %d s", limit),
               "is the archiver running and keeping up? clubio-dr run archive-changes --status; DR_TEST_ARCHIVE_WAIT sets the wait",
               "verify", "changes.lag")
        end
        time.sleep(0.3)
      end
    end, {plan = "until a segment holding the marker is in S3 (the time it was at risk)"})
    failed = not ok
  end

  -- ---- the loss: from here on, S3 and the target server only --------------------------------
  local loss = time.now()
  m.loss_at = time.iso(loss, true)
  if marker then
    m.rpo_basis, m.source_last_commit = "the marker's commit", marker.committed_by
  else
    m.rpo_basis, m.source_last_commit = "the loss: an upper bound, exact with --marker", m.loss_at
  end
  local target, scratch, restored
  local recovery_t0 = time.monotonic()
  if not failed then
    if server_url then
      ok = item("recovery", "create the scratch database", function()
        local name = M.SCRATCH_PREFIX .. stamp:gsub("-", "_")
        scratch = {name = name, server = server_url}
        local admin <close> = pgdump.connect(server_url)
        -- what a killed run left (a restored copy of the source): older than a day, so never a
        -- run still going
        for _, r in ipairs(admin:query("SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE $1",
                                       {M.SCRATCH_PREFIX:gsub("_", "\\_") .. "%"})) do
          local y, mo, d, h, mi, se = r.datname:match("_(%d%d%d%d)(%d%d)(%d%d)_(%d%d)(%d%d)(%d%d)$")
          local at = y and time.parse(string.format("%s-%s-%sT%s:%s:%sZ", y, mo, d, h, mi, se))
          if at and time.now() - at > 86400 then
            admin:query("DROP DATABASE IF EXISTS " .. r.datname .. " WITH (FORCE)")
            log.warn("dropped a stale scratch database a killed dr-test left", {database = r.datname})
          end
        end
        local v = admin:query("SELECT current_setting('server_version_num')::int AS v", nil, {typed = true})[1].v
        if v < 140000 then fail("the target server runs PostgreSQL " .. v // 10000 .. ": restores need 14 or later", nil, "config", "config.server") end
        admin:query("CREATE DATABASE " .. name)
        scratch.created = true
        target = with_database(server_url, name)
        return {summary = "database " .. name .. " on " .. (job.describe_url(server_url).host or "the server")}
      end, {plan = "a scratch database on the target server (dropped at the end unless --keep)"})
    else
      ok = item("recovery", "check the target is empty", function()
        local db <close> = pgdump.connect(target_url)
        if #user_tables(db) > 0 or db:query("SELECT to_regclass($1) IS NOT NULL AS e", {M.MARKER}, {typed = true})[1].e then
          fail("the target database " .. job.describe_url(target_url).display .. " is not empty",
               "give an empty database (createdb), or a server with DR_TEST_RESTORE_SERVER_URL for a scratch one", "config", "config.target")
        end
        target = target_url
        return {summary = job.describe_url(target_url).display .. " is empty"}
      end)
    end
    failed = not ok
    report.target = target and job.describe_url(target).display
  end

  if not failed then
    ok = item("recovery", "restore from S3 alone", function()
      local unset = {}
      for i, k in ipairs(M.NOT_FOR_THE_RESTORE) do unset[i] = k end
      local r = proc.run{argv = {self_bin(), "--json", "--no-progress", "run", "restore-from-s3", "--to", "latest", "-"},
                         env = {RESTORE_TARGET_URL = target}, unset_env = unset}
      if r.stderr ~= "" then io.stderr:write(log.redact(r.stderr)) end
      local okj, doc = pcall(cjson.decode, r.stdout)
      if r.status ~= 0 or not okj or type(doc) ~= "table" or not doc.ok then
        local e = okj and type(doc) == "table" and type(doc.error) == "table" and doc.error or {}
        clubio.fail{message = "restore-from-s3 --to latest failed (status " .. r.status .. "): " .. tostring(e.message or r.stderr:match("([^\n]*)\n?$")),
                    class = r.status == 4 and "verify" or "failure", code = e.code or "dr.restore", hint = e.hint}
      end
      restored = doc.result
      m.restore_seconds, m.base_seconds, m.replay_seconds = restored.seconds, restored.base_seconds, restored.replay_seconds
      m.base, m.transactions, m.segments = restored.base, restored.transactions, restored.segments
      m.restored_last_commit = restored.last_commit or restored.base_snapshot_time
      if not restored.last_commit then report.notes[#report.notes + 1] = "no archived transaction after the base: the restore's last commit is the base's snapshot time" end
      return {summary = string.format("base %s + %d transactions from %d segments, last commit %s (%.1f s)", restored.base,
                                      math.floor(restored.transactions or 0), math.floor(restored.segments or 0), tostring(m.restored_last_commit), restored.seconds or 0)}
    end, {plan = "clubio-dr run restore-from-s3 --to latest - (no Neon setting, no source URL in its environment)",
          hint = "run it by hand: RESTORE_TARGET_URL=... clubio-dr run restore-from-s3 --to latest -"})
    failed = not ok
  end

  local after
  if not failed then
    local t0 = time.monotonic()
    ok = item("recovery", "check the restore", function()
      local db <close> = pgdump.connect(target)
      local problems = {}
      if marker then
        local row = db:query("SELECT to_regclass($1) IS NOT NULL AS e", {M.MARKER}, {typed = true})[1].e
          and db:query("SELECT note FROM " .. M.MARKER .. " WHERE id = 2")[1]
        local has = row and row.note == marker.note
        report.marker.restored = has == true
        -- present exactly when the restore reaches the marker's commit (a point-in-time restore
        -- holds every transaction up to its last commit and none after)
        local reaches = m.restored_last_commit and time.parse(m.restored_last_commit) >= marker.t
        if has and not reaches then
          -- the marker's commit time is between its transaction's start and the clock read after it
          report.notes[#report.notes + 1] = "the restore holds the marker, whose commit time is before the clock read after it"
        elseif not has and reaches then
          problems[#problems + 1] = "the marker is missing although the restore reaches " .. tostring(m.restored_last_commit)
        end
      end
      if o.checks then
        local results, bad = require("clubio.dr_checks").run(db, o.checks)
        report.checks = results
        if bad > 0 then problems[#problems + 1] = string.format("%d of %d application checks failed on the restore", bad, #results) end
      end
      after = restored_digests(db, target, tables)
      if #problems > 0 then fail(table.concat(problems, "; "), "the report lists what differs", "verify", "dr.complete_loss") end
      return {summary = string.format("%d tables digested%s%s", #tables,
                                      marker and (report.marker.restored and "; the marker is in" or "; the marker is not in (committed after the restore's point)") or "",
                                      report.checks and ("; " .. #report.checks .. " checks passed") or "")}
    end, {plan = "the marker, the SQL checks, every table's rows and digests"})
    m.check_seconds = time.monotonic() - t0
    if ok then m.rto_seconds = time.monotonic() - recovery_t0 end
    failed = not ok
  end

  -- ---- after: compare with the source (outside the RTO: in a real loss there is no source) ----
  if not failed and after then
    ok = item("post-test", "compare with the source", function()
      local db <close> = pgdump.connect(cfg.url)
      local now = digests(db, tables)
      local quiet = true
      for _, t in ipairs(tables) do if not same(before[t], now[t]) then quiet = false end end
      local rows, differ = {}, 0
      for _, t in ipairs(tables) do
        local b, a = before[t], after[t]
        local match = same(b, a)
        if not match then differ = differ + 1 end
        rows[#rows + 1] = {table = t, source_rows = b.rows, restored_rows = not a.missing and a.rows or nil, match = match}
      end
      report.tables = rows
      m.tables_differing = differ
      m.source_changed_during_test = not quiet
      -- a strict comparison is possible only when nothing changed on the source during the test
      -- and the restore reaches the source's last commit (it holds the marker)
      local strict = quiet and marker and report.marker.restored
      report.passed.integrity = differ == 0 or not strict
      if differ > 0 and strict then
        fail(string.format("%d of %d tables differ from the source, which did not change during the test", differ, #tables),
             "the report lists them; the change archive or the restore lost or altered rows", "verify", "dr.integrity")
      end
      if differ > 0 then
        report.notes[#report.notes + 1] = string.format("%d tables differ from the source at the loss: %s", differ,
          quiet and "the restore stops before the marker (transactions not yet archived at the loss: the RPO)"
                or "the source changed during the test, so the comparison is not strict")
      end
      return {summary = string.format("%d tables, %d differ%s", #tables, differ,
                                      strict and " (strict: the source did not change and the restore holds the marker)" or
                                      (quiet and "" or " (the source changed during the test)"))}
    end, {plan = "the tables digested before the loss vs the restore, and the source read again"})
    failed = not ok
  end

  if not failed and m.rto_seconds then
    item("post-test", "measure RTO and RPO", function()
      if marker and report.marker.restored then
        m.rpo_seconds = 0
      elseif m.restored_last_commit then
        m.rpo_seconds = math.max(0, time.parse(m.source_last_commit) - time.parse(m.restored_last_commit))
      end
      report.passed.rto = m.rto_seconds <= M.OBJECTIVES.rto_seconds
      report.passed.rpo = m.rpo_seconds ~= nil and m.rpo_seconds <= M.OBJECTIVES.rpo_seconds
      return {summary = string.format("RTO %s (objective 8 h), RPO %s (objective 24 h; %s)", dur(m.rto_seconds),
                                      m.rpo_seconds and string.format("%.3f s", m.rpo_seconds) or "?", m.rpo_basis)}
    end)
  end

  if scratch and scratch.created then
    if o.keep then
      report.notes[#report.notes + 1] = "kept the scratch database " .. scratch.name .. " (--keep): drop it when done"
      report.passed.cleaned = true
    else
      local okc = item("post-test", "remove the scratch database", function()
        local admin <close> = pgdump.connect(scratch.server)
        admin:query("DROP DATABASE IF EXISTS " .. scratch.name .. " WITH (FORCE)")
        return {summary = "database " .. scratch.name .. " dropped"}
      end, {hint = "drop it by hand: DROP DATABASE " .. scratch.name})
      report.passed.cleaned = okc
      if not okc then failed = true end
    end
  end

  -- ---- report ---------------------------------------------------------------------------------
  report.finished = time.iso(time.now())
  report.ok = not failed and report.passed.rto == true and report.passed.rpo == true and report.passed.integrity ~= false
  report.scenarios = {{scenario = "Complete data loss", rto_objective = "8 hours", rpo_objective = "24 hours",
                       procedure = "Restore from S3 archive", script = "restore-from-s3",
                       measured_rto_seconds = m.rto_seconds, measured_rpo_seconds = m.rpo_seconds,
                       met = report.passed.rto == true and report.passed.rpo == true}}
  local base = o.report_dir .. "/dr-test-complete-loss-" .. stamp
  item("post-test", "write the report", function()
    report.report = {markdown = base .. ".md", json = base .. ".json"}
    require("clubio.dr_checks").write_report(o.report_dir, base, report, markdown(report, stamp))
    return {summary = base .. ".md"}
  end)

  if not report.ok then
    if clubio.flags.json then io.stdout:write(log.redact(cjson.encode({ok = false, result = report})), "\n") end
    local first
    for _, e in ipairs(report.checklist) do if not e.ok then first = first or e end end
    clubio.fail{message = "DR test (complete loss) failed" .. (first and (" at '" .. first.item .. "': " .. first.error) or
                                                              ": the objectives were not met"),
                class = "verify", code = "dr.test_failed", hint = "the report is " .. base .. ".md"}
  end
  return J:finish(report, string.format("DR test passed (complete loss, from S3 alone): RTO %s (objective 8 h), RPO %s (objective 24 h); report %s.md",
                                        dur(m.rto_seconds), string.format("%.3f s", m.rpo_seconds), base))
end

return M
