-- The change archive in S3 (issue 16): configuration, segment keys and manifests, the chain,
-- bases (exports that anchor it), and the checks of the source's tables.
--
--   local changes = require "clubio.changes"
--   local cfg = changes.config()
--   for _, s in ipairs(changes.list_segments(c, cfg)) do ... end
--   local ok, problems = changes.verify_chain(c, cfg)
--
-- Layout in BACKUP_S3_BUCKET:
--   <CHANGES_PREFIX><slot>/<seq, 10 digits>-<first commit LSN, 16 hex>.sql.gz.enc  a segment
--   ….sql.gz.enc.manifest.json                                                    its manifest
-- Bases are ordinary exports (EXPORT_PREFIX) whose manifest has a `changes` block:
--   changes = {slot =, snapshot_xids = "xmin:xmax:xip,...", consistent_lsn = (first base only)}.
--
-- Which archived transactions a base already holds (exact, not "about the same time"): a
-- transaction is in the base when its xid is visible in the base's snapshot (committed before
-- the snapshot was taken: xid < xmin, or xid < xmax and not in xip). For the first base, taken
-- from the slot's exported snapshot, that is the same as "commit LSN <= the slot's consistent
-- point", which is recorded too.
local env, time, pipe, log = require "env", require "time", require "pipe", require "log"
local crypto, verify, pgdump, clubio = require "crypto", require "verify", require "pgdump", require "clubio"
local cjson = require "cjson"
local objects = require "clubio.objects"

local M = {}
M.KIND = "changes-segment"

function M.config()
  local interval = tonumber(env.get("ARCHIVE_INTERVAL", "10"))
  if not interval or interval <= 0 then
    clubio.fail{message = "ARCHIVE_INTERVAL must be a number of seconds > 0", class = "config", code = "config.env",
                hint = "e.g. ARCHIVE_INTERVAL=10"}
  end
  local slot = env.get("CHANGES_SLOT", "clubio_changes")
  if not slot:match("^[a-z0-9_]+$") then
    clubio.fail{message = "CHANGES_SLOT '" .. slot .. "' is not a valid slot name", class = "config", code = "config.env",
                hint = "lower-case letters, digits and underscores"}
  end
  local prefix = env.get("CHANGES_PREFIX", "changes/")
  return {
    url = env.get("CHANGES_DATABASE_URL", env.get("DATABASE_URL", "")),
    slot = slot,
    publication = env.get("CHANGES_PUBLICATION", "clubio_changes"),
    prefix = prefix,
    folder = prefix .. slot .. "/",
    export_prefix = env.get("EXPORT_PREFIX", "database/"),
    bucket = env.get("BACKUP_S3_BUCKET"),
    interval = interval,
    max_bytes = tonumber(env.get("CHANGES_MAX_BYTES", tostring(64 << 20))),
    level = tonumber(env.get("GZIP_LEVEL", "6")), -- as export-database
  }
end

function M.segment_key(cfg, seq, lsn)
  local hi, lo = lsn:match("^(%x+)/(%x+)$")
  return string.format("%s%010d-%08X%08X.sql.gz.enc", cfg.folder, seq, tonumber(hi, 16), tonumber(lo, 16))
end

-- Every segment under the slot's folder, by sequence number: {seq, key, size, has_manifest}.
function M.list_segments(c, cfg)
  local segs, manifests = {}, {}
  for obj in c:list{bucket = cfg.bucket, prefix = cfg.folder} do
    local seq = obj.key:match("/(%d%d%d%d%d%d%d%d%d%d)%-%x+%.sql%.gz%.enc$")
    if seq then
      segs[#segs + 1] = {seq = tonumber(seq), key = obj.key, size = obj.size}
    elseif obj.key:match("%.manifest%.json$") then
      manifests[obj.key:gsub("%.manifest%.json$", "")] = true
    end
  end
  table.sort(segs, function(a, b) return a.seq < b.seq or (a.seq == b.seq and a.key < b.key) end)
  for _, s in ipairs(segs) do s.has_manifest = manifests[s.key] == true end
  return segs
end

-- The signed manifest of a segment or export: m, or nil, reason, why.
function M.read_manifest(c, bucket, key)
  local mkey = key .. verify.MANIFEST_SUFFIX
  if not c:head(bucket, mkey) then return nil, "incomplete", "no manifest (" .. mkey .. ")" end
  return verify.check_manifest(c:get(bucket, mkey))
end

-- The newest segment with a manifest (the chain's end), as {seg, manifest}, or nil.
function M.chain_end(c, cfg)
  local segs = M.list_segments(c, cfg)
  for i = #segs, 1, -1 do
    if segs[i].has_manifest then
      local m, reason, why = M.read_manifest(c, cfg.bucket, segs[i].key)
      if not m then clubio.fail(verify.failure({archive = "s3://" .. cfg.bucket .. "/" .. segs[i].key, reason = reason, message = why})) end
      return {seg = segs[i], manifest = m}, segs
    end
  end
  return nil, segs
end

-- Tables the archive cannot carry UPDATEs and DELETEs for: no primary key and replica identity
-- DEFAULT, or identity NOTHING. (Unlogged and temporary tables are never published.)
function M.tables_without_identity(db)
  return (db:query([[
    SELECT format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
      AND (c.relreplident = 'n'
           OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                                    WHERE i.indrelid = c.oid AND i.indisprimary)))
    ORDER BY 1]]))
end

function M.refuse_without_identity(db)
  local bad = M.tables_without_identity(db)
  if #bad > 0 then
    local names = {}
    for i, r in ipairs(bad) do names[i] = r.name end
    clubio.fail{message = "tables without a primary key or replica identity cannot be archived: " .. table.concat(names, ", "),
                class = "config", code = "changes.no-identity",
                hint = "add a primary key, or run ALTER TABLE <name> REPLICA IDENTITY FULL for each (their UPDATEs and DELETEs would otherwise fail on the source once it publishes them)"}
  end
end

-- Roles other than the built-in ones (a restore onto a new server can create them).
function M.roles(db)
  local out = {}
  for _, r in ipairs(db:query("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' AND oid >= 16384 ORDER BY 1")) do
    out[#out + 1] = r.rolname
  end
  return out
end

-- Takes a base: an export (dump -> gzip -> encrypt -> S3, manifest last) as of `snapshot` (the
-- slot's exported snapshot) or of a new snapshot, recording which transactions it holds.
function M.take_base(c, cfg, opts)
  local started = time.now()
  local key = string.format("%sclubio-db-%s.sql.gz.enc", cfg.export_prefix, time.format(started, "%Y%m%d-%H%M%S"))
  if c:head(cfg.bucket, key) then -- two bases in one second
    time.sleep(1.1)
    started = time.now()
    key = string.format("%sclubio-db-%s.sql.gz.enc", cfg.export_prefix, time.format(started, "%Y%m%d-%H%M%S"))
  end
  local roles
  do
    local db <close> = pgdump.connect(cfg.url)
    roles = M.roles(db)
  end
  local r = pipe.run{
    pgdump.dump{url = cfg.url, jobs = tonumber(env.get("DUMP_JOBS", "2")), snapshot = opts.snapshot, row_digests = true,
                label = "dump"},
    crypto.sha256{label = "plain"},
    crypto.gzip{level = cfg.level},
    crypto.encrypt{},
    crypto.sha256{label = "stored"},
    c:upload{bucket = cfg.bucket, key = key, content_type = "application/octet-stream",
             metadata = {["clubio-format"] = "plain-sql+gzip+openssl-enc-aes-256-cbc-pbkdf2",
                         ["clubio-version"] = clubio.version}, label = "upload"},
  }
  local tables = verify.manifest_tables(r.dump.tables)
  local m = {
    format = verify.FORMAT, format_version = verify.FORMAT_VERSION,
    tool = {name = "clubio-dr", version = clubio.version},
    archive = {bucket = cfg.bucket, key = key, layers = {"plain-sql", "gzip", "openssl-enc-aes-256-cbc"},
               cipher = {name = "aes-256-cbc", kdf = "pbkdf2-hmac-sha256", iter = 10000, salted = true}},
    source = {server_version = r.dump.server_version},
    snapshot_time = r.dump.snapshot_time or time.iso(started, true),
    created_at = time.iso(time.now()),
    plain = {bytes = r.plain.bytes, sha256 = r.plain.hex},
    stored = {bytes = r.stored.bytes, sha256 = r.stored.hex},
    tables = tables,
    roles = roles,
    changes = {slot = cfg.slot, snapshot_xids = r.dump.snapshot_xids, consistent_lsn = opts.consistent_lsn,
               reason = opts.reason, epoch = opts.epoch},
  }
  c:put(cfg.bucket, key .. verify.MANIFEST_SUFFIX, {body = verify.sign_manifest(m), content_type = "application/json"})
  log.info("base export written", {key = key, reason = opts.reason, bytes = r.stored.bytes})
  return {key = key, manifest = m}
end

-- The epoch: one per creation of the slot. LSNs, and so the archive's "already archived"
-- positions, mean something only within one slot's stream: a slot made again on a rebuilt
-- server, or on a Neon branch restored to an earlier point, starts over at LSNs the archive has
-- already passed. Every base and segment records its epoch; the archiver skips only what its own
-- epoch archived, and a restore replays only the segments of its base's epoch. The current epoch
-- is kept on the server, as the publication's comment, where export-database finds it too.
-- (Archives from before epochs have none: nil, which matches only nil.)
local EPOCH_COMMENT = "clubio-dr change archive epoch "

function M.new_epoch()
  return crypto.random_hex(8)
end

function M.read_epoch(db, publication)
  local row = db:query("SELECT pg_catalog.obj_description(oid, 'pg_publication') AS c FROM pg_catalog.pg_publication " ..
                       "WHERE pubname = $1", {publication})[1]
  local c = row and row.c
  if not c or c:sub(1, #EPOCH_COMMENT) ~= EPOCH_COMMENT then return nil end
  return c:sub(#EPOCH_COMMENT + 1):match("^%x+$")
end

function M.write_epoch(db, publication, epoch)
  local q = db:query("SELECT pg_catalog.quote_ident($1) AS q", {publication})[1].q
  db:query("COMMENT ON PUBLICATION " .. q .. " IS '" .. EPOCH_COMMENT .. epoch .. "'")
end

-- The change archive's slot name and epoch if the slot exists on the database at url (an export
-- taken now is then a base: the slot holds every transaction its snapshot does not), else nil.
-- Never raises.
function M.slot_for_export(url)
  local slot = env.get("CHANGES_SLOT", "clubio_changes")
  local publication = env.get("CHANGES_PUBLICATION", "clubio_changes")
  local ok, rows, epoch = pcall(function()
    local db <close> = pgdump.connect(url)
    local r = db:query("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()", {slot})
    return r, M.read_epoch(db, publication)
  end)
  if ok and rows[1] then return slot, epoch end
  return nil
end

-- Exports usable as bases (their manifest records the snapshot's transactions), newest first.
function M.list_bases(c, cfg)
  local out = {}
  for _, e in ipairs(require("clubio.exports").list(c, cfg.bucket, cfg.export_prefix)) do
    if e.has_manifest then
      local m = M.read_manifest(c, cfg.bucket, e.key)
      if m and m.changes and m.changes.snapshot_xids and m.changes.slot == cfg.slot then
        out[#out + 1] = {key = e.key, manifest = m, time = time.parse(m.snapshot_time)}
      end
    end
  end
  table.sort(out, function(a, b) return a.time > b.time end)
  return out
end

-- Checks every segment's manifest and the chain (sequence numbers without a gap, each
-- manifest's `prev` equal to the previous segment's stored SHA-256 and key). With deep = true,
-- also downloads each segment and checks its stored and plain SHA-256s and sizes.
-- Returns the manifests in order and a list of problems ({seq, key, reason, message}).
-- The index of the first segment whose last commit is at or after t: a binary search over the
-- sequence (commit times grow with it), reading log2(n) manifests; 1 when a probed manifest
-- cannot be read (the caller then reads the whole chain and reports what is wrong).
local function first_at_or_after(c, cfg, segs, t, counter)
  local lo, hi = 1, #segs + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    local m = segs[mid].has_manifest and M.read_manifest(c, cfg.bucket, segs[mid].key)
    counter.read = counter.read + 1
    local last = m and m.last_time and time.parse(m.last_time)
    if not last then return 1 end
    if last >= t then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- Checks the chain of segment manifests: returns the manifests in order, the problems found, and
-- {read = manifests read}. opts.deep downloads every segment too; opts.strict counts a newest
-- segment without a manifest as a problem; opts.from_start wants the chain to begin at #1.
-- opts.from_time / opts.to_time (epoch seconds) bound what a restore needs: from the segment
-- before the first whose last commit is at or after from_time (so that its link is checked) to
-- the first whose first commit is after to_time. A month of 10 s segments is 260,000 manifests;
-- a restore reads those of its range and log2(n) more, not all of them.
function M.verify_chain(c, cfg, opts)
  opts = opts or {}
  local segs = M.list_segments(c, cfg)
  local problems, chain = {}, {}
  local prev
  local counter = {read = 0}
  local start = 1
  if opts.from_time and #segs > 0 then
    start = math.max(1, first_at_or_after(c, cfg, segs, opts.from_time, counter) - 1)
  end
  for idx = start, #segs do
    local s = segs[idx]
    local function bad(reason, message) problems[#problems + 1] = {seq = s.seq, key = s.key, reason = reason, message = message} end
    if not s.has_manifest then
      -- the newest segment may be in flight (uploaded, manifest not yet written)
      if s ~= segs[#segs] or opts.strict then bad("incomplete", "segment without a manifest") end
    else
      local m, reason, why = M.read_manifest(c, cfg.bucket, s.key)
      counter.read = counter.read + 1
      if not m then
        bad(reason, why)
      elseif m.kind ~= M.KIND or m.seq ~= s.seq or m.archive.key ~= s.key then
        bad("manifest-mismatch", "the manifest does not describe this segment")
      else
        if prev and m.seq ~= prev.seq + 1 then
          bad("missing", string.format("segments %d to %d are missing", prev.seq + 1, m.seq - 1))
        elseif prev and (not m.prev or m.prev.sha256 ~= prev.stored.sha256 or m.prev.key ~= prev.archive.key) then
          bad("chain-broken", "its previous-segment hash does not match segment " .. prev.seq)
        elseif not prev and m.prev and opts.from_start then
          bad("missing", "the segments before " .. m.seq .. " are missing")
        end
        if s.size ~= m.stored.bytes then
          bad("size-mismatch", string.format("%d bytes stored, the manifest says %d", s.size, m.stored.bytes))
        elseif opts.deep then
          local ok, r = pcall(pipe.run, {c:download{bucket = cfg.bucket, key = s.key}, crypto.sha256{label = "stored"},
                                         crypto.decrypt{}, crypto.gunzip{}, crypto.sha256{label = "plain"}, pipe.file_sink("/dev/null")})
          if not ok then
            bad("corrupt", tostring(type(r) == "table" and r.message or r))
          elseif r.stored.hex ~= m.stored.sha256 or r.plain.hex ~= m.plain.sha256 then
            bad("checksum-mismatch", "the segment's bytes do not match its manifest")
          end
        end
        chain[#chain + 1] = m
        prev = m
        if opts.to_time and m.first_time and time.parse(m.first_time) > opts.to_time then break end
      end
    end
  end
  return chain, problems, counter
end

-- How far before a base's snapshot time a transaction it does not hold can have its commit time
-- (a commit's time is taken a moment before it becomes visible). Restores read, and retention
-- keeps, the segments from this long before the base on. Generous; the skip rule is exact.
M.BASE_MARGIN = 300

-- Retention of the change archive (used by the retention script): segments are kept back to
-- the oldest base that the exports' retention keeps; older ones are deleted. `kept` lists the
-- keys of the exports kept. Returns decisions as retention.decide makes them ({keep, reason,
-- backup = {key, time, verified}}), oldest first. Nothing is deleted while no kept export is
-- a base of this slot.
function M.retention_decisions(c, cfg, kept)
  local oldest
  for _, key in ipairs(kept) do
    local m = M.read_manifest(c, cfg.bucket, key)
    if m and m.changes and m.changes.slot == cfg.slot and m.changes.snapshot_xids then
      local t = time.parse(m.snapshot_time)
      if not oldest or t < oldest.time then oldest = {key = key, time = t} end
    end
  end
  local out = {}
  local reached = false -- commit times grow with the sequence number: past the first kept, all are
  for _, s in ipairs(M.list_segments(c, cfg)) do
    if reached then
      out[#out + 1] = {backup = {key = s.key, time = 0, verified = s.has_manifest}, keep = true,
                       reason = "needed from the oldest retained base on"}
      goto continue
    end
    local m = oldest and s.has_manifest and M.read_manifest(c, cfg.bucket, s.key)
    local last = m and time.parse(m.last_time)
    local d = {backup = {key = s.key, time = last or 0, verified = m and true or false}, keep = true}
    if not oldest then
      d.reason = "no retained export is a base of slot " .. cfg.slot
    elseif not last then
      d.reason = "no manifest (in flight, or to check by hand)"
    elseif last < oldest.time - M.BASE_MARGIN then
      d.keep, d.reason = false, "older than the oldest retained base " .. oldest.key
    else
      d.reason = "needed from the oldest retained base on"
      reached = true
    end
    out[#out + 1] = d
    ::continue::
  end
  return out
end

-- LSN helpers
function M.lsn(s) return s and require("changes").lsn(s) or 0 end

-- ---- status, limits and gauges (archive-changes --status, and the running archiver) ---------

-- The limits --status checks: CHANGES_MAX_LAG_BYTES (1 GiB), CHANGES_MAX_LAG_SECONDS (300),
-- CHANGES_MAX_INACTIVE_HOURS (4: an inactive slot keeps WAL, and Neon removes a slot inactive
-- for about 40 h, so the alert comes long before).
M.SLOT_REMOVAL_HOURS = 40
function M.limits()
  local function num(name, default)
    local v = tonumber(env.get(name, tostring(default)))
    if not v or v <= 0 then
      clubio.fail{message = name .. " must be a number > 0", class = "config", code = "config.env",
                  hint = string.format("e.g. %s=%s", name, tostring(default))}
    end
    return v
  end
  return {lag_bytes = num("CHANGES_MAX_LAG_BYTES", 1 << 30), lag_seconds = num("CHANGES_MAX_LAG_SECONDS", 300),
          inactive_hours = num("CHANGES_MAX_INACTIVE_HOURS", 4), removal_hours = M.SLOT_REMOVAL_HOURS}
end

-- The slot on the server: active, LSNs, lag (WAL not confirmed), retained WAL (since restart_lsn,
-- what the server keeps for the slot), the walsender's flush lag, and since when it is inactive
-- (PostgreSQL 17's inactive_since; nil before). nil when the slot does not exist.
function M.slot_row(db, slot)
  local cols = {}
  for _, r in ipairs(db:query([[SELECT attname FROM pg_catalog.pg_attribute
                                WHERE attrelid = 'pg_catalog.pg_replication_slots'::regclass AND attnum > 0]])) do
    cols[r.attname] = true
  end
  return db:query(string.format([[
    SELECT s.slot_name, s.active, s.confirmed_flush_lsn::text AS confirmed,
           pg_catalog.pg_current_wal_lsn()::text AS current,
           pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS lag_bytes,
           pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
           s.wal_status, %s AS inactive_since_epoch,
           (SELECT extract(epoch FROM r.flush_lag)::float8 FROM pg_catalog.pg_stat_replication r
             WHERE r.pid = s.active_pid) AS flush_lag
    FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1]],
    cols.inactive_since and "extract(epoch FROM s.inactive_since)::float8" or "NULL::float8"), {slot}, {typed = true})[1]
end

-- Since when the slot has been seen inactive, kept in the scheduler's state folder
-- (changes-SLOT.json) when the server does not say (before PostgreSQL 17): the first --status
-- or archiver check that finds it inactive starts the count.
local function inactive_since(cfg, row, now)
  local S = require "clubio.schedule"
  local ok, dir = pcall(S.state_dir)
  local path = ok and (dir .. "/changes-" .. cfg.slot .. ".json") or nil
  local st = {}
  if path then
    local f = io.open(path, "r")
    if f then
      local okd, t = pcall(cjson.decode, f:read("a"))
      f:close()
      if okd and type(t) == "table" then st = t end
    end
  end
  local since
  if row and not row.active then since = row.inactive_since_epoch or st.inactive_since or now end
  if path and st.inactive_since ~= since then
    st.inactive_since = since
    local okw = pcall(S.write_atomic, path, cjson.encode(st))
    if not okw then
      okw = pcall(function()
        require("proc").run{argv = {"mkdir", "-p", dir}}
        S.write_atomic(path, cjson.encode(st))
      end)
    end
    if not okw then log.warn("the slot's inactive time was not kept in " .. path) end
  end
  return since
end

-- The archive's state now. `last`: the last archived segment ({key, seq, last_time, created_at,
-- transactions}) or nil. Returns {slot, exists, active, lag_bytes, retained_bytes,
-- confirmed_lsn, current_lsn, wal_status, inactive_seconds, lag_seconds, rpo_seconds,
-- last_segment, last_segment_age_seconds}.
--   lag_seconds: how far behind the archive is in time. 0 when the slot holds no unconfirmed
--     WAL; while the archiver runs, the server's own measure (pg_stat_replication.flush_lag:
--     from WAL written to the archiver confirming it, i.e. durably in S3); while it is down,
--     the time since the last archived commit.
--   rpo_seconds: what would be lost now: 0 when nothing waits, else the time since the last
--     archived commit.
function M.status(db, cfg, last, now)
  local s = M.slot_row(db, cfg.slot)
  local out = {slot = cfg.slot, exists = s ~= nil, active = s and s.active or false,
               lag_bytes = s and s.lag_bytes or nil, retained_bytes = s and s.retained_bytes or nil,
               confirmed_lsn = s and s.confirmed or nil, current_lsn = s and s.current or nil,
               wal_status = s and s.wal_status or nil}
  local since = inactive_since(cfg, s, now)
  if s and since then out.inactive_seconds = math.max(0, now - since) end
  if last then
    out.last_segment = {key = last.key, seq = last.seq, last_commit = last.last_time, written_at = last.created_at,
                        transactions = last.transactions}
    out.last_segment_age_seconds = now - time.parse(last.created_at)
  end
  if s then
    local waiting = (s.lag_bytes or 0) > 0
    local since_commit = last and last.last_time and (now - time.parse(last.last_time)) or nil
    if waiting then out.rpo_seconds = since_commit else out.rpo_seconds = 0 end
    if not waiting then out.lag_seconds = 0
    elseif s.active then out.lag_seconds = s.flush_lag or 0
    else out.lag_seconds = since_commit end
  end
  return out
end

-- The segment `last` as M.status takes it, from a chain_end() result.
function M.last_of(chain_last)
  if not chain_last then return nil end
  local m = chain_last.manifest
  return {key = m.archive.key, seq = m.seq, last_time = m.last_time, created_at = m.created_at, transactions = m.transactions}
end

-- What is wrong, worst first: {{code, message, hint}, ...} (empty: healthy).
function M.problems(st, limits)
  local out = {}
  local function add(code, message, hint) out[#out + 1] = {code = code, message = message, hint = hint} end
  local bytes = require("clubio.job").bytes
  if not st.exists then
    add("changes.no-slot", "replication slot " .. st.slot .. " does not exist",
        "start the archiver (clubio-dr run archive-changes) to create it")
    return out
  end
  if st.wal_status == "lost" then
    add("changes.slot-lost", "replication slot " .. st.slot .. " lost WAL it needed (wal_status lost): the chain cannot continue",
        "drop the slot (archive-changes --drop --yes) and start the archiver: it takes a new base")
  end
  if st.inactive_seconds and st.inactive_seconds > limits.inactive_hours * 3600 then
    add("changes.inactive", string.format(
          "slot %s has been inactive for %.1f h (limit %g h), keeping %s of WAL: Neon removes a slot inactive for about %d h, so at the latest in %.1f h",
          st.slot, st.inactive_seconds / 3600, limits.inactive_hours, bytes(st.retained_bytes or 0), limits.removal_hours,
          math.max(0, limits.removal_hours * 3600 - st.inactive_seconds) / 3600),
        "start the archiver (clubio-dr run archive-changes, or the scheduler's service job); if it must stay down, drop the slot (--drop)")
  end
  if (st.lag_bytes or 0) > limits.lag_bytes then
    add("changes.lag", string.format("slot %s is %s behind (limit %s): the server keeps that WAL", st.slot,
                                     bytes(st.lag_bytes), bytes(limits.lag_bytes)),
        "start or fix the archiver; if it cannot run for long, drop the slot (--drop) before the server's disk fills")
  end
  if (st.lag_seconds or 0) > limits.lag_seconds then
    add("changes.lag-seconds", string.format("the change archive is %.0f s behind (limit %g s)%s", st.lag_seconds,
                                             limits.lag_seconds, st.active and "" or ": no archiver is running"),
        "start or fix the archiver (its log says why it is behind); `archive-changes --status` shows the slot")
  end
  return out
end

return M
