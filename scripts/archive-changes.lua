-- Archive every committed transaction to S3 within seconds (logical decoding -> encrypted SQL segments)
--
-- clubio-dr run archive-changes              run as a service until SIGTERM/Ctrl-C
-- clubio-dr run archive-changes --status     slot lag (bytes, seconds), retained WAL, last segment, RPO
--                                            now; fails (exit 4, one line) over a limit
-- clubio-dr run archive-changes --verify     check the chain of segments in S3 (--deep: download each)
-- clubio-dr run archive-changes --drop       remove the replication slot (asks, or --yes)
-- clubio-dr run archive-changes --once       archive what is waiting (one segment at most), then exit
--
-- A logical replication slot (pgoutput) streams every committed transaction of the published
-- tables; they are written in commit order as plain-SQL segments (whole transactions), gzip,
-- `openssl enc` format, S3, each with a signed manifest entry chained to the previous one. The
-- slot is confirmed only once a segment and its manifest are in S3: after a crash or kill -9 a
-- restart resumes from the slot, and a transaction archived twice is applied once at restore.
-- On the first run it creates the publication (FOR ALL TABLES) and the slot, and takes the first
-- base export from the slot's own snapshot. A schema change of a published table (a relation
-- that differs from the one recorded, or a new one) is logged and a new base is taken.
-- Not carried by logical replication: sequences (their values are recorded with every segment
-- and set at restore), DDL (see above), large objects (not archived at all).
--
-- Environment: CHANGES_DATABASE_URL (default DATABASE_URL; a role with REPLICATION that may
-- create the publication), BACKUP_S3_BUCKET, BACKUP_ENCRYPTION_KEY; ARCHIVE_INTERVAL (10 s),
-- CHANGES_MAX_BYTES (64 MiB of SQL per segment), CHANGES_SLOT (clubio_changes),
-- CHANGES_PUBLICATION (clubio_changes), CHANGES_PREFIX (changes/), EXPORT_PREFIX (database/),
-- S3_SSE, S3_SSE_KMS_KEY_ID, S3_STORAGE_CLASS (as exports); --status's limits:
-- CHANGES_MAX_LAG_BYTES (1 GiB), CHANGES_MAX_LAG_SECONDS (300), CHANGES_MAX_INACTIVE_HOURS (4; Neon
-- removes a slot inactive for about 40 h).
-- Metrics: with --textfile DIR or CLUBIO_DR_TEXTFILE_DIR, DIR/clubio_dr_changes.prom (node-exporter
-- textfile: slot present/active/inactive seconds, lag bytes/seconds, retained WAL, RPO now, last
-- segment age), written by the running archiver after each segment (at least once a minute while
-- idle) and by every --status.
local args = require("clubio.args").parse(arg, {
  options = {["--status"] = true, ["--drop"] = true, ["--verify"] = true, ["--deep"] = true, ["--once"] = true,
             ["--textfile"] = "DIR"},
  min = 0, max = 0,
})
local env, time, pipe, log, cjson = require "env", require "time", require "pipe", require "log", require "cjson"
local crypto, verify, pgdump, clubio = require "crypto", require "verify", require "pgdump", require "clubio"
local changes = require "changes"
local lib = require "clubio.changes"
local objects = require "clubio.objects"
local job = require "clubio.job"

local cfg = lib.config()
if cfg.url == "" then env.get("DATABASE_URL") end -- names the missing variable
local c = objects.client()
local where = "s3://" .. cfg.bucket .. "/" .. cfg.folder

local textdir = args["--textfile"] or os.getenv("CLUBIO_DR_TEXTFILE_DIR")
if textdir == "" then textdir = nil end
-- The gauges, from a status and the limits (metrics failures are logged, never fatal to the archiver).
local function write_gauges(st, problems, now)
  if not textdir then return nil end
  local path = textdir .. "/clubio_dr_changes.prom"
  local ok, err = pcall(require("clubio.schedule").write_atomic, path,
                        require("clubio.metrics").render_changes(st, #problems == 0, now))
  if not ok then log.warn("metrics textfile not written: " .. tostring(type(err) == "table" and err.message or err)) end
  return ok and path or nil
end

local function slot_row(db)
  return db:query([[SELECT slot_name, active, confirmed_flush_lsn::text AS confirmed,
                           pg_catalog.pg_current_wal_lsn()::text AS current,
                           pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
                           wal_status
                    FROM pg_catalog.pg_replication_slots WHERE slot_name = $1]], {cfg.slot}, {typed = true})[1]
end

---------------------------------------------------------------------------------------------
if args["--status"] then
  local limits = lib.limits()
  local db <close> = pgdump.connect(cfg.url)
  local now = time.now()
  local out = lib.status(db, cfg, lib.last_of(lib.chain_end(c, cfg)), now)
  local problems = lib.problems(out, limits)
  out.limits = limits
  out.textfile = write_gauges(out, problems, now)
  if clubio.flags.json then
    io.stdout:write(cjson.encode({ok = #problems == 0, status = out}), "\n")
  else
    print(string.format("slot %s: %s%s", cfg.slot, out.exists and (out.active and "active" or "inactive (no archiver running)") or "missing",
                        out.exists and (", WAL " .. tostring(out.wal_status)) or ""))
    if out.exists then
      print(string.format("lag: %s behind the server (%s confirmed, %s now), %.1f s", job.bytes(out.lag_bytes or 0),
                          out.confirmed_lsn, out.current_lsn, out.lag_seconds or 0))
      print(string.format("WAL kept for the slot: %s%s", job.bytes(out.retained_bytes or 0),
                          out.inactive_seconds and string.format(" (inactive for %.1f h; Neon removes it after about %d h)",
                                                                 out.inactive_seconds / 3600, limits.removal_hours) or ""))
    end
    local ls = out.last_segment
    if ls then
      print(string.format("last segment: %s (#%d, last commit %s, written %.0f s ago)", ls.key, ls.seq, ls.last_commit,
                          out.last_segment_age_seconds))
    else
      print("last segment: none yet")
    end
    if out.rpo_seconds then print(string.format("RPO now: %.1f s", out.rpo_seconds)) end
  end
  if #problems > 0 then
    local p = problems[1]
    local msg = p.message
    if #problems > 1 then msg = msg .. string.format(" (and %d more: %s)", #problems - 1, problems[2].code) end
    clubio.fail{message = msg, class = "verify", code = p.code, hint = p.hint}
  end
  return 0
end

---------------------------------------------------------------------------------------------
if args["--verify"] then
  local chain, problems = lib.verify_chain(c, cfg, {deep = args["--deep"]})
  for _, p in ipairs(problems) do log.error("segment " .. p.seq .. ": " .. p.reason, {key = p.key, why = p.message}) end
  if #problems > 0 then
    local p = problems[1]
    clubio.fail{message = string.format("the change archive at %s is not intact: segment %d (%s): %s", where, p.seq, p.reason, p.message),
                class = "verify", code = "verify." .. p.reason,
                hint = "a restore past that segment is not possible; see the segment in the log and keep the archiver running so newer segments continue the chain"}
  end
  local msg = string.format("%d segments in %s, chain intact%s", #chain, where, args["--deep"] and " (every byte checked)" or "")
  if clubio.flags.json then io.stdout:write(cjson.encode({ok = true, segments = #chain}), "\n") else print(msg) end
  return 0
end

---------------------------------------------------------------------------------------------
if args["--drop"] then
  local db <close> = pgdump.connect(cfg.url)
  if not slot_row(db) then print("slot " .. cfg.slot .. " does not exist"); return 0 end
  if not clubio.confirm("drop replication slot " .. cfg.slot .. "? The change archive stops; the next run takes a new base") then
    clubio.fail{message = "not dropped", class = "declined", hint = "run with --yes to drop the slot"}
  end
  db:query("SELECT pg_catalog.pg_drop_replication_slot($1)", {cfg.slot})
  print("dropped slot " .. cfg.slot)
  return 0
end

---------------------------------------------------------------------------------------------
-- the service
env.get("BACKUP_ENCRYPTION_KEY")
local db = pgdump.connect(cfg.url)
lib.refuse_without_identity(db)
local lo = db:query("SELECT count(*) AS n FROM pg_catalog.pg_largeobject_metadata", nil, {typed = true})[1].n
if lo > 0 then
  log.warn(string.format("the database has %d large objects: logical replication does not carry them, the change archive will not hold their changes", lo))
end
if not db:query("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", {cfg.publication})[1] then
  local rows = db:query("SELECT pg_catalog.quote_ident($1) AS q", {cfg.publication})
  db:query("CREATE PUBLICATION " .. rows[1].q .. " FOR ALL TABLES")
  log.info("created publication " .. cfg.publication .. " FOR ALL TABLES")
end
local have_slot = slot_row(db) ~= nil
-- the epoch (see clubio.changes): a new one with a new slot, else the one the server keeps
local epoch = have_slot and lib.read_epoch(db, cfg.publication) or nil

-- where the chain stands
local last, segs = lib.chain_end(c, cfg)
local seq = last and last.manifest.seq or 0
local prev = last and {key = last.manifest.archive.key, sha256 = last.manifest.stored.sha256, seq = last.manifest.seq,
                      last_time = last.manifest.last_time} or nil
for _, s in ipairs(segs) do -- segments uploaded without a manifest (a crash in between): not part of the chain
  if not s.has_manifest and s.seq > seq then c:delete(cfg.bucket, s.key); log.warn("removed an unfinished segment", {key = s.key}) end
end
local known = last and last.manifest.schema or {}
local last_seg = lib.last_of(last)
local base_tables

local function open_capture()
  return changes.open{url = cfg.url, slot = cfg.slot, publication = cfg.publication}
end

local cap = open_capture()
local bases = lib.list_bases(c, cfg)
if have_slot and not epoch and bases[1] and bases[1].manifest.changes.epoch then
  -- the comment was lost (or the publication made again): the newest base's epoch is the slot's
  epoch = bases[1].manifest.changes.epoch
  lib.write_epoch(db, cfg.publication, epoch)
end
if not have_slot then
  epoch = lib.new_epoch()
  -- recorded before the slot exists: exports find the epoch there, and a failure here leaves
  -- nothing half made
  local ok, err = pcall(lib.write_epoch, db, cfg.publication, epoch)
  if not ok then
    clubio.fail{message = "cannot record the change archive's epoch on publication " .. cfg.publication .. ": " ..
                          tostring(type(err) == "table" and err.message or err),
                class = "config", code = "changes.epoch",
                hint = "the archiver's role must own the publication (ALTER PUBLICATION " .. cfg.publication ..
                       " OWNER TO <role>), or drop it and let archive-changes create it"}
  end
  local info = cap:create_slot()
  log.info("created replication slot " .. cfg.slot, {consistent_point = info.consistent_point, epoch = epoch})
  -- the first base is the slot's own snapshot: exactly the transactions before its consistent point
  local b = lib.take_base(c, cfg, {snapshot = info.snapshot, consistent_lsn = info.consistent_point, reason = "slot created",
                                   epoch = epoch})
  base_tables = b.manifest.tables
  known = {}
elseif not bases[1] then
  -- a slot without a base (e.g. the first base failed): any snapshot taken now is exact too,
  -- since the slot still holds every transaction after it
  local b = lib.take_base(c, cfg, {reason = "no base for the slot", epoch = epoch})
  base_tables = b.manifest.tables
else
  base_tables = bases[1].manifest.tables
end
db:close()
-- what this slot's stream already archived (a segment stored before the crash that kept it from
-- being confirmed comes again): only within the same epoch, since another slot's LSNs (a rebuilt
-- server, a restored branch) may start below the ones the archive has passed
local skip_through = last and last.manifest.epoch == epoch and last.manifest.last_lsn or nil
if last and last.manifest.epoch ~= epoch then
  log.info("a new epoch of the change archive: the chain goes on, a restore replays each epoch from its own bases",
           {epoch = epoch, previous_epoch = last.manifest.epoch or "none"})
end
-- (replication itself starts in the loop below, which retries while a killed archiver's walsender
-- still holds the slot)
log.info("archiving changes", {slot = cfg.slot, to = where, interval = cfg.interval, next_segment = seq + 1})

-- A schema change: a relation whose definition differs from the recorded one, or one the base
-- does not have.
local function schema_changes(rels)
  local out = {}
  for name, sig in pairs(rels or {}) do
    if (known[name] and known[name] ~= sig) or (not known[name] and not base_tables[name]) then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

local function one_segment(first_lsn)
  seq = seq + 1
  local key = lib.segment_key(cfg, seq, first_lsn)
  local r = pipe.run{
    cap:segment{interval = cfg.interval, max_bytes = cfg.max_bytes, sequences_url = cfg.url, label = "segment"},
    crypto.sha256{label = "plain"},
    crypto.gzip{level = cfg.level},
    crypto.encrypt{},
    crypto.sha256{label = "stored"},
    c:upload{bucket = cfg.bucket, key = key, content_type = "application/octet-stream",
             metadata = {["clubio-format"] = "plain-sql+gzip+openssl-enc-aes-256-cbc-pbkdf2",
                         ["clubio-version"] = clubio.version}, label = "upload"},
  }
  local s = r.segment
  local changed = schema_changes(s.relations)
  for name, sig in pairs(s.relations or {}) do known[name] = sig end
  local m = {
    format = verify.FORMAT, format_version = verify.FORMAT_VERSION, kind = lib.KIND,
    tool = {name = "clubio-dr", version = clubio.version},
    archive = {bucket = cfg.bucket, key = key, layers = {"plain-sql", "gzip", "openssl-enc-aes-256-cbc"},
               cipher = {name = "aes-256-cbc", kdf = "pbkdf2-hmac-sha256", iter = 10000, salted = true}},
    slot = cfg.slot, seq = seq, epoch = epoch,
    first_lsn = s.first_lsn, last_lsn = s.last_lsn, end_lsn = s.end_lsn,
    first_time = s.first_time, last_time = s.last_time,
    transactions = s.transactions, changes = s.changes, tables = s.tables, sequences = s.sequences,
    schema = known, schema_change = #changed > 0 and changed or nil,
    no_identity = s.no_identity,
    plain = {bytes = r.plain.bytes, sha256 = r.plain.hex},
    stored = {bytes = r.stored.bytes, sha256 = r.stored.hex},
    prev = prev,
    created_at = time.iso(time.now(), true),
  }
  c:put(cfg.bucket, key .. verify.MANIFEST_SUFFIX, {body = verify.sign_manifest(m), content_type = "application/json"})
  -- durably in S3 with its manifest: only now may the server forget these transactions
  cap:confirm(s.end_lsn)
  prev = {key = key, sha256 = r.stored.hex, seq = seq, last_time = s.last_time}
  last_seg = {key = key, seq = seq, last_time = s.last_time, created_at = m.created_at, transactions = s.transactions}
  skip_through = s.last_lsn
  log.info("segment archived", {key = key, transactions = s.transactions, changes = s.changes, bytes = r.stored.bytes,
                                last_commit = s.last_time})
  if s.no_identity then
    log.warn("changes without a replica identity were not archived", {tables = table.concat(s.no_identity, ", ")})
  end
  if #changed > 0 then
    log.warn("schema change of published tables: taking a new base export", {tables = table.concat(changed, ", ")})
    local b = lib.take_base(c, cfg, {reason = "schema change: " .. table.concat(changed, ", "), epoch = epoch})
    base_tables = b.manifest.tables
  end
end

-- the gauges, from the running archiver: a connection of its own (opened when first needed,
-- again after an error), after each segment and at least once a minute
local mdb, gauges_at = nil, -math.huge
local function gauges()
  if not textdir then return end
  gauges_at = time.monotonic()
  local ok, err = pcall(function()
    if not mdb then mdb = pgdump.connect(cfg.url) end
    local now = time.now()
    local st = lib.status(mdb, cfg, last_seg, now)
    write_gauges(st, lib.problems(st, lib.limits()), now)
  end)
  if not ok then
    log.warn("gauges not written: " .. tostring(type(err) == "table" and err.message or err))
    if mdb then pcall(mdb.close, mdb); mdb = nil end
  end
end

local backoff = 1
local started = false
local function failed(err, what)
  -- a failed segment was not confirmed: the slot sends its transactions again
  if type(err) == "table" and err.class and err.class ~= "failure" then error(err, 0) end
  seq = prev and prev.seq or 0
  log.warn(what .. "; reconnecting", {error = tostring(type(err) == "table" and err.message or err), retry_in = backoff})
  if cap then pcall(cap.close, cap); cap, started = nil, false end
  time.sleep(backoff)
  backoff = math.min(backoff * 2, 60)
end
while true do
  if cap and not started then
    local ok, err = pcall(cap.start, cap, {skip_through = skip_through})
    if ok then started = true else failed(err, "cannot start replication") end
  end
  if not cap then
    local ok, err = pcall(function()
      local c2 = open_capture()
      c2:start{skip_through = skip_through}
      cap, started = c2, true
    end)
    if not ok then failed(err, "cannot restart replication") end
  end
  if cap and started then
    local ok, err = pcall(function()
      local lsn = cap:wait(args["--once"] and 2 or cfg.interval)
      if lsn then one_segment(lsn) end
      if lsn or time.monotonic() - gauges_at >= 60 then gauges() end
    end)
    if ok then
      backoff = 1
      if args["--once"] then break end
    else
      failed(err, "archiving failed")
    end
  end
end
cap:close()
if mdb then mdb:close() end
return 0
