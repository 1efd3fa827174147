-- Point-in-time restore from S3 alone (restore-from-s3 --to): a base export, then the change
-- archive's transactions up to the point. See clubio.changes for the layout and the base rule.
local env, time, pipe, log = require "env", require "time", require "pipe", require "log"
local crypto, verify, pgdump, clubio = require "crypto", require "verify", require "pgdump", require "clubio"
local changes = require "changes"
local lib = require "clubio.changes"
local job = require "clubio.job"

local M = {}

local BASE_MARGIN = lib.BASE_MARGIN

-- Creates the roles (no password, NOLOGIN) that the target server does not have.
function M.create_roles(target, roles)
  local db <close> = pgdump.connect(target)
  for _, name in ipairs(roles or {}) do
    if not db:query("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", {name})[1] then
      local q = db:query("SELECT pg_catalog.quote_ident($1) AS q", {name})[1].q
      db:query("CREATE ROLE " .. q)
      log.info("created role " .. name .. " (NOLOGIN, no password)")
    end
  end
end

local function fail_verify(message, hint, code)
  clubio.fail{message = message, class = "verify", code = code or "verify.changes", hint = hint}
end

-- Picks the base and the segments for point `to` (epoch seconds, or nil for latest).
function M.plan(c, cfg, to)
  local bases = lib.list_bases(c, cfg)
  local base
  for _, b in ipairs(bases) do
    if not to or b.time <= to then base = b; break end
  end
  if not base then
    fail_verify(to and ("no base export at or before " .. time.iso(to, true)) or "no base export for the change archive",
                "a base is an export taken by archive-changes (or export-database) whose manifest records its snapshot; choose a later time")
  end
  local from = base.time - BASE_MARGIN
  local chain, problems, read = lib.verify_chain(c, cfg, {from_time = from, to_time = to})
  local segs = {}
  local first_index
  -- only the segments of the base's epoch (clubio.changes): another slot's LSNs and transactions
  -- are not comparable with this base's
  local epoch = base.manifest.changes.epoch
  for i, m in ipairs(chain) do
    if m.epoch == epoch and time.parse(m.last_time) >= from and (not to or time.parse(m.first_time) <= to) then
      first_index = first_index or i
      segs[#segs + 1] = m
    end
  end
  -- the chain must reach back to the base: the oldest segment kept is the first ever, or the
  -- one before it (removed by retention) ended before the base
  local head = chain[1]
  if first_index == 1 and head.seq ~= 1 and not (head.prev and head.prev.last_time and time.parse(head.prev.last_time) < from) then
    fail_verify("the change archive does not reach back to the base " .. base.key .. " (its oldest segment is #" .. chain[1].seq .. ")",
                "choose a point after a newer base")
  end
  local lo = segs[1] and segs[1].seq or math.huge
  local hi = segs[#segs] and segs[#segs].seq or -1
  for _, p in ipairs(problems) do
    if p.seq >= lo - 1 and (p.seq <= hi + 1 or not to) then
      fail_verify(string.format("the change archive is not intact at segment %d (%s): %s", p.seq, p.reason, p.message),
                  "restore to a point before that segment, or run archive-changes --verify for the whole chain",
                  "verify." .. p.reason)
    end
  end
  return base, segs, chain, read.read
end

function M.run(o)
  local c, target = o.client, o.target
  local cfg = lib.config()
  env.get("BACKUP_ENCRYPTION_KEY")
  local to, to_text
  if o.to ~= "latest" then
    to = job.past_time(o.to, "--to")
    to_text = time.iso(to, true)
  end
  -- the point as the replay compares it, to the microsecond when given in UTC
  local stop_text = to and (o.to:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.?%d*Z$") and o.to or to_text)
  -- RESTORE_PREFETCH_MB (128): segments up to this size of SQL (CHANGES_MAX_BYTES cuts them at
  -- 64 MiB unless one transaction is larger) are fetched one ahead of the replay, so two at most
  -- are held in memory; 0 turns prefetching off
  local prefetch_max = tonumber(env.get("RESTORE_PREFETCH_MB", "128"))
  if not prefetch_max or prefetch_max < 0 then
    clubio.fail{message = "RESTORE_PREFETCH_MB must be a number of MiB >= 0", class = "usage", code = "usage.env",
                hint = "e.g. RESTORE_PREFETCH_MB=128 (the default), or 0 to stream every segment"}
  end
  prefetch_max = prefetch_max * 1024 * 1024
  local J = job.new("restore-from-s3")
  local dst = job.describe_url(target)
  local started = time.monotonic()
  local base, segs, _, manifests_read = J:step("choose the base and the segments", {plan = "read the manifests in s3://" .. cfg.bucket}, function()
    return M.plan(c, cfg, to)
  end)
  if J.dry_run then return J:finish(nil, "dry run: nothing was restored") end
  if o.create_roles then M.create_roles(target, base.manifest.roles) end

  local bm = base.manifest
  local rb = J:step("restore the base " .. base.key, {
    plan = "download -> decrypt -> gunzip -> restore into " .. dst.display .. (o.keep_owners and "" or " (without owners and grants)"),
    hint = "the target database is partial: drop and recreate it before trying again",
  }, function()
    local stages = {c:download{bucket = cfg.bucket, key = base.key}, crypto.sha256{label = "stored"}, crypto.decrypt{},
                    crypto.gunzip{}, verify.sql_scan_filter{label = "scan"}, progress = "restore"}
    if not o.keep_owners then stages[#stages + 1] = changes.no_owner{} end
    stages[#stages + 1] = pgdump.restore{url = target, jobs = tonumber(env.get("RESTORE_JOBS", "2")), label = "restore"}
    local r = pipe.run(stages)
    if r.stored.hex ~= bm.stored.sha256 then
      fail_verify("the base's SHA-256 differs from its manifest's: " .. base.key, "the target is partial: drop it; choose another base", "verify.checksum-mismatch")
    end
    local t, why = verify.compare_tables(bm.tables, r.scan.tables)
    if t then fail_verify(why, "the target is partial: drop it", "verify.table-mismatch") end
    return r
  end)

  local rp <close> = changes.replayer{url = target}
  local applied_segments, last_m = 0, nil
  local base_seconds = rb.seconds or 0
  local replay_started = time.monotonic()
  J:step(string.format("replay %d segments", #segs), {
    plan = string.format("transactions committed at or before %s, not in the base", to_text or "the last archived one"),
    hint = "the target holds the base and every segment before the failing one: drop it and restore again",
  }, function()
    -- The next segment is fetched, checked and decrypted into memory (a spool, held in C) while
    -- this one is applied, so that its download, the PBKDF2 of its decryption and its pipe's
    -- start-up overlap the database's work. A segment over RESTORE_PREFETCH_MB streams as before.
    local function fetch_stages(m, sink)
      return {c:download{bucket = cfg.bucket, key = m.archive.key}, crypto.sha256{label = "stored"},
              crypto.decrypt{}, crypto.gunzip{}, sink}
    end
    local function prefetch(m)
      local bytes = m and m.plain and m.plain.bytes
      if not bytes or bytes > prefetch_max then return nil end
      local sp = pipe.spool{limit = math.max(bytes, 1)}
      return {spool = sp, run = pipe.start(fetch_stages(m, sp:sink()))}
    end
    local ahead
    local _ <close> = setmetatable({}, {__close = function() if ahead then ahead.run:stop() end end})
    ahead = prefetch(segs[1])
    local ddl -- the latest schema change replayed so far: past it, the base lacks the new schema
    for i, m in ipairs(segs) do
      if m.schema_change and time.parse(m.last_time) > base.time then ddl = m end
      local cur = ahead
      ahead = nil
      local ok, r = pcall(function()
        local sink = function()
          return rp:sink{stop_time = stop_text, base_snapshot = bm.changes.snapshot_xids,
                         base_lsn = bm.changes.consistent_lsn, expect_sha256 = m.plain.sha256, label = "replay"}
        end
        if not cur then
          ahead = prefetch(segs[i + 1])
          return pipe.run(fetch_stages(m, sink()))
        end
        local sp <close> = cur.spool
        local fetched = cur.run:wait()
        ahead = prefetch(segs[i + 1])
        local applied = pipe.run{sp:source(), sink()}
        applied.stored = fetched.stored
        return applied
      end)
      if not ok then
        if ddl and type(r) == "table" and r.class == "failure" then
          r.hint = string.format("the schema of %s changed at %s, after base %s was taken; choose a point before that, or after the next base export",
                                 table.concat(ddl.schema_change, ", "), ddl.first_time, base.key)
        end
        error(r, 0)
      end
      if r.stored.hex ~= m.stored.sha256 then
        fail_verify("segment " .. m.archive.key .. " differs from its manifest", "verify the chain", "verify.checksum-mismatch")
      end
      local seen = r.replay.applied + r.replay.skipped_base + r.replay.skipped_dup + r.replay.skipped_after
      if seen ~= m.transactions then
        fail_verify(string.format("segment %s holds %d transactions, its manifest says %d", m.archive.key, seen, m.transactions),
                    "the segment does not match its manifest", "verify.count-mismatch")
      end
      applied_segments = applied_segments + 1
      last_m = m
      if r.replay.stopped then break end
    end
  end)

  local replay_seconds = time.monotonic() - replay_started
  J:step("set the sequences", {plan = "setval from the last replayed segment's record"}, function()
    if not last_m then return end
    local db <close> = pgdump.connect(target)
    for name, value in pairs(last_m.sequences or {}) do
      local ok, err = pcall(db.query, db, "SELECT pg_catalog.setval($1::regclass, $2::bigint, true)", {name, string.format("%d", value)})
      if not ok then log.warn("sequence " .. name .. " not set", {error = tostring(type(err) == "table" and err.message or err)}) end
    end
  end)
  local tot = rp:results()
  local result = {target = dst.display, base = base.key, base_snapshot_time = bm.snapshot_time, to = to_text or "latest",
                  segments = applied_segments, transactions = tot.applied, changes = tot.changes,
                  skipped_in_base = tot.skipped_base, skipped_duplicates = tot.skipped_dup,
                  last_commit = tot.last_time, seconds = time.monotonic() - started, base_seconds = base_seconds,
                  replay_seconds = replay_seconds, manifests_read = manifests_read}
  return J:finish(result, string.format("restored %s as of %s: base %s + %d transactions from %d segments (last commit %s) in %.1f s",
                                         dst.display, to_text or "the last archived transaction", base.key, tot.applied,
                                         applied_segments, tostring(tot.last_time or bm.snapshot_time), result.seconds))
end

return M
