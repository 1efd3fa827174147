-- Apply GFS retention (daily 30 days, weekly 90, monthly 1 year) to Neon backup branches and S3 exports
--
-- clubio-dr run retention [--dry-run | --yes] [--json] [all|branches|exports|uploads]
--
-- Prints every backup with keep or delete and the reason; deletes only with --yes (or after a
-- question on a terminal). The newest verified backup is never deleted (a branch counts as
-- verified when ready, an export when its manifest exists). S3 exports kept as weekly or
-- monthly backups are moved to that tier's storage class (a server-side copy onto themselves).
-- An export is deleted manifest first, so an interruption never leaves a manifest without its
-- archive, nor an archive that looks complete.
--
-- Environment: RETENTION_DAILY_DAYS (30), RETENTION_WEEKLY_DAYS (90), RETENTION_MONTHLY_DAYS
-- (365), RETENTION_WEEK_START (0 = Sunday); branches: NEON_PROJECT_ID; exports:
-- BACKUP_S3_BUCKET, EXPORT_PREFIX (database/), RETENTION_STORAGE_CLASS_WEEKLY (none: leave as
-- is), RETENTION_STORAGE_CLASS_MONTHLY (GLACIER_IR; s3rver and some S3-compatible servers know
-- only GLACIER). "all" (the default) covers each target whose variables are set.
-- uploads: in-progress multipart uploads under the tool's prefixes (exports, configs, assets,
-- changes: scripts/lib/clubio/objects.lua) started more than RETENTION_STALE_UPLOAD_HOURS (24)
-- ago are aborted (a killed export leaves one, billed until aborted); --dry-run lists them.
-- The second line of defence is the bucket's lifecycle rule AbortIncompleteMultipartUpload
-- (README). A store that cannot list uploads is reported and skipped.
-- Run it after the backups (e.g. 03:30). backup-database prunes branches with the same policy
-- (its RETENTION_DAYS is the daily tier), so the two agree.
local args = require("clubio.args").parse(arg, {max = 1})
local env, time, clubio, log, cjson = require "env", require "time", require "clubio", require "log", require "cjson"
local job, retention, objects = require "clubio.job", require "clubio.retention", require "clubio.objects"

local target = args[1] or "all"
if target ~= "all" and target ~= "branches" and target ~= "exports" and target ~= "uploads" then
  clubio.fail{message = "retention: unexpected argument '" .. target .. "'", class = "usage",
              hint = "clubio-dr run retention [--dry-run | --yes] [all|branches|exports|uploads]"}
end

local function days(name, default)
  local v = env.get(name, tostring(default))
  local n = tonumber(v)
  if not n or n < 0 or n ~= math.floor(n) then
    clubio.fail{message = name .. " must be a whole number of days >= 0, got '" .. v .. "'", class = "config"}
  end
  return math.tointeger(n)
end
local policy = retention.policy{daily = days("RETENTION_DAILY_DAYS", 30), weekly = days("RETENTION_WEEKLY_DAYS", 90),
                                monthly = days("RETENTION_MONTHLY_DAYS", 365), week_start = days("RETENTION_WEEK_START", 0)}
local classes = {weekly = env.get("RETENTION_STORAGE_CLASS_WEEKLY", "none"),
                 monthly = env.get("RETENTION_STORAGE_CLASS_MONTHLY", "GLACIER_IR")}
for k, v in pairs(classes) do if v == "none" or v == "" then classes[k] = nil end end

local stale_hours = tonumber(env.get("RETENTION_STALE_UPLOAD_HOURS", "24"))
if not stale_hours or stale_hours < 0 then
  clubio.fail{message = "RETENTION_STALE_UPLOAD_HOURS must be a number of hours >= 0, got '" ..
                        env.get("RETENTION_STALE_UPLOAD_HOURS") .. "'", class = "config"}
end

local want = {branches = target == "all" or target == "branches", exports = target == "all" or target == "exports",
              uploads = target == "all" or target == "uploads"}
if target == "all" then
  want.branches = env.has("NEON_PROJECT_ID")
  want.exports = env.has("BACKUP_S3_BUCKET")
  want.uploads = env.has("BACKUP_S3_BUCKET")
  if not want.branches and not want.exports then
    clubio.fail{message = "retention: neither NEON_PROJECT_ID nor BACKUP_S3_BUCKET is set", class = "config",
                hint = "export NEON_PROJECT_ID (backup branches) and/or BACKUP_S3_BUCKET (exports)"}
  end
end

local J = job.new("retention")
local now = time.now()
local report = {policy = policy, dry_run = J.dry_run, targets = {}}
local failures = {}

local function show(kind, decisions, label)
  for _, d in ipairs(decisions) do
    local line = string.format("%-6s %-8s %-52s %s", d.keep and "keep" or "DELETE", kind, label(d.backup), d.reason)
    if J.json then log.info(line) else io.stdout:write(line, "\n") end
  end
end

local function entries(decisions, label)
  local out = {}
  for _, d in ipairs(decisions) do
    out[#out + 1] = {name = label(d.backup), time = time.iso(d.backup.time), verified = d.backup.verified,
                     keep = d.keep, tier = d.tier or cjson.null, reason = d.reason}
  end
  return out
end

-- Deletes the `delete` decisions with fn, after one confirmation; failures are collected.
local function apply(kind, decisions, label, fn)
  local doomed = {}
  for _, d in ipairs(decisions) do if not d.keep then doomed[#doomed + 1] = d end end
  if #doomed == 0 then return 0 end
  local deleted = 0
  J:step(string.format("delete %d %s", #doomed, kind), {
    destructive = true, plan = string.format("delete %d of %d %s (listed above)", #doomed, #decisions, kind),
    confirm = string.format("delete %d %s (listed above)?", #doomed, kind)}, function()
    for _, d in ipairs(doomed) do
      local ok, err = pcall(fn, d.backup)
      if ok then deleted = deleted + 1
      else
        failures[#failures + 1] = label(d.backup) .. ": " .. tostring(err)
        log.error("could not delete " .. label(d.backup), {error = tostring(err)})
      end
    end
  end)
  return deleted
end

-- ---- Neon backup branches ----------------------------------------------------------------

if want.branches then
  local neon, branches = require "neon", require "clubio.branches"
  local n = neon.client{project_id = env.get("NEON_PROJECT_ID")}
  local list = J:step("list backup branches", {dry = function() return branches.backups(n) end},
                      function() return branches.backups(n) end)
  local ds = retention.decide(branches.retention_items(list), now, policy)
  for _, d in ipairs(ds) do
    if d.backup.default and not d.keep then d.keep, d.tier, d.reason = true, "default", "the project's default branch" end
  end
  local label = function(b) return b.name end
  show("branch", ds, label)
  local deleted = apply("backup branches", ds, label, function(b) n:delete_branch(b.id) end)
  local s = retention.summary(ds)
  report.targets.branches = {project = env.get("NEON_PROJECT_ID"), keep = s.keep, delete = s.delete, deleted = deleted,
                             backups = entries(ds, label)}
end

-- ---- S3 exports ----------------------------------------------------------------------------

if want.exports then
  local exports = require "clubio.exports"
  local bucket = env.get("BACKUP_S3_BUCKET")
  local prefix = env.get("EXPORT_PREFIX", "database/")
  local c = objects.client()
  local function list_exports()
    local found, manifests = {}, {}
    for o in c:list{bucket = bucket, prefix = prefix} do
      local d, t = o.key:match(exports.PATTERN)
      if d then
        local at = time.parse(string.format("%s-%s-%sT%s:%s:%sZ", d:sub(1, 4), d:sub(5, 6), d:sub(7, 8),
                                            t:sub(1, 2), t:sub(3, 4), t:sub(5, 6)))
        if at then found[#found + 1] = {key = o.key, time = at, size = o.size, storage_class = o.storage_class} end
      elseif o.key:match("%.manifest%.json$") then
        manifests[o.key:gsub("%.manifest%.json$", "")] = true
      end
    end
    for _, it in ipairs(found) do it.verified = manifests[it.key] == true end
    return found
  end
  local items = J:step("list exports", {plan = "s3://" .. bucket .. "/" .. prefix, dry = list_exports}, list_exports)
  local ds = retention.decide(items, now, policy)
  local label = function(b) return b.key end
  show("export", ds, label)
  -- the storage class of each kept weekly/monthly export
  local moved = 0
  local moves = {}
  for _, d in ipairs(ds) do
    local cls = d.keep and classes[d.tier]
    if cls and cls ~= (d.backup.storage_class or "STANDARD") then moves[#moves + 1] = {d = d, class = cls} end
  end
  if #moves > 0 then
    J:step(string.format("move %d exports to their tier's storage class", #moves),
           {plan = string.format("%d weekly/monthly exports to %s", #moves,
                                 (classes.monthly or "-") .. " (monthly), " .. (classes.weekly or "-") .. " (weekly)")}, function()
      for _, m in ipairs(moves) do
        -- a copy onto itself: keep its metadata and content type (a copy without them would drop
        -- them), encrypt it with the tool's settings like every object it writes, and note the
        -- tier (some servers, s3rver among them, refuse a self-copy that changes only the
        -- storage class)
        local ok, err = pcall(function()
          local h = c:head(bucket, m.d.backup.key)
          if not h then error("the export disappeared", 0) end
          if h.storage_class == m.class then return false end -- a listing may not show the class
          local meta = {}
          for k, v in pairs(h.metadata or {}) do meta[k] = v end
          meta["retention-tier"] = m.d.tier
          c:copy{src_bucket = bucket, src_key = m.d.backup.key, dst_key = m.d.backup.key, storage_class = m.class,
                 metadata = meta, content_type = h.content_type}
          return true
        end)
        if ok and err then moved = moved + 1; m.d.backup.storage_class = m.class
        elseif ok then m.d.backup.storage_class = m.class
        else failures[#failures + 1] = m.d.backup.key .. " (storage class " .. m.class .. "): " .. tostring(err) end
      end
    end)
  end
  local deleted = apply("exports", ds, label, function(b)
    c:delete(bucket, b.key .. ".manifest.json")
    c:delete(bucket, b.key)
  end)
  local s = retention.summary(ds)
  report.targets.exports = {bucket = bucket, prefix = prefix, keep = s.keep, delete = s.delete, deleted = deleted,
                            storage_class_changed = moved, backups = entries(ds, label)}
  -- the change archive: its segments back to the oldest export kept that is a base (docs/changes.md)
  local kept = {}
  for _, d in ipairs(ds) do if d.keep then kept[#kept + 1] = d.backup.key end end
  local changes = require "clubio.changes"
  local ccfg = changes.config()
  local segs = J:step("list change archive segments", {plan = "s3://" .. bucket .. "/" .. ccfg.folder,
                      dry = function() return changes.retention_decisions(c, ccfg, kept) end},
                      function() return changes.retention_decisions(c, ccfg, kept) end)
  if #segs > 0 then
    show("segment", segs, label)
    local sdeleted = apply("change archive segments", segs, label, function(b)
      c:delete(bucket, b.key .. ".manifest.json")
      c:delete(bucket, b.key)
    end)
    local keep = 0
    for _, d in ipairs(segs) do if d.keep then keep = keep + 1 end end
    report.targets.changes = {bucket = bucket, prefix = ccfg.folder, keep = keep, delete = #segs - keep, deleted = sdeleted}
  end
end

-- ---- stale multipart uploads -----------------------------------------------------------------

if want.uploads then
  local bucket = env.get("BACKUP_S3_BUCKET")
  local prefixes = objects.prefixes()
  local c = objects.client()
  local unsupported
  local function list_uploads()
    local found, seen = {}, {}
    for _, p in ipairs(prefixes) do
      local ok, ups = pcall(c.uploads, c, {bucket = bucket, prefix = p.prefix})
      if not ok then
        -- a store without the call, or credentials without s3:ListBucketMultipartUploads: said
        -- loudly, but the sweep is a safety net, not a reason to fail the rest of retention
        if clubio.is_error(ups) and (ups.code == "s3.not_implemented" or ups.code == "s3.access_denied") then
          unsupported = tostring(ups)
          return found
        end
        error(ups, 0)
      end
      for _, u in ipairs(ups) do
        if not seen[u.upload_id] then seen[u.upload_id] = true; u.kind = p.name; found[#found + 1] = u end
      end
    end
    table.sort(found, function(a, b) return a.initiated < b.initiated end)
    return found
  end
  local names = {}
  for i, p in ipairs(prefixes) do names[i] = p.prefix end
  local where = "s3://" .. bucket .. "/{" .. table.concat(names, ",") .. "}"
  local ups = J:step("list in-progress multipart uploads", {plan = where, dry = list_uploads}, list_uploads)
  if unsupported then
    log.warn("this S3 store cannot list multipart uploads (or these credentials may not: s3:ListBucketMultipartUploads); " ..
             "rely on the bucket's AbortIncompleteMultipartUpload lifecycle rule (README)", {error = unsupported})
  end
  local stale, listed = {}, {}
  for _, u in ipairs(ups) do
    local age = now - u.initiated
    -- an upload whose start the store does not give is never taken for stale
    u.stale = u.initiated > 0 and age >= stale_hours * 3600
    local reason = u.initiated > 0 and string.format("started %s, %.1f h ago (limit %g h)", u.initiated_iso, age / 3600, stale_hours)
                   or "the store gives no start time"
    local line = string.format("%-6s %-8s %-52s %s", u.stale and "ABORT" or "keep", "upload", u.key, reason)
    if J.json then log.info(line) else io.stdout:write(line, "\n") end
    if u.stale then stale[#stale + 1] = u end
    listed[#listed + 1] = {key = u.key, upload_id = u.upload_id, initiated = u.initiated_iso, prefix = u.kind,
                           stale = u.stale, reason = reason}
  end
  local aborted = 0
  if #stale > 0 then
    J:step(string.format("abort %d stale multipart upload(s)", #stale), {
      destructive = true, plan = string.format("abort %d of %d in-progress uploads (listed above)", #stale, #ups),
      confirm = string.format("abort %d multipart upload(s) older than %g hours (listed above)?", #stale, stale_hours)}, function()
      for _, u in ipairs(stale) do
        local ok, err = pcall(c.abort_upload, c, bucket, u.key, u.upload_id)
        if ok then
          aborted = aborted + 1
          log.info(string.format("aborted the multipart upload of s3://%s/%s (%s)", bucket, u.key, u.upload_id))
        else
          failures[#failures + 1] = "upload " .. u.key .. ": " .. tostring(err)
          log.error("could not abort the multipart upload of " .. u.key, {error = tostring(err)})
        end
      end
    end)
  end
  report.targets.uploads = {bucket = bucket, prefixes = names, stale_hours = stale_hours, keep = #ups - #stale,
                            delete = #stale, deleted = aborted, aborted = aborted, unsupported = unsupported ~= nil,
                            uploads = listed, verb = {"aborted", "would be aborted"}}
end

if #failures > 0 then
  clubio.fail{message = string.format("retention: %d operation(s) failed, first: %s", #failures, failures[1]),
              hint = "the rest was applied; fix the cause and re-run (retention is idempotent)"}
end
local parts = {}
for k, t in pairs(report.targets) do
  local verb = t.verb or {"deleted", "would be deleted"}
  parts[#parts + 1] = string.format("%s: %d kept, %d %s", k, t.keep, J.dry_run and t.delete or t.deleted,
                                    J.dry_run and verb[2] or verb[1])
end
if report.targets.uploads then report.targets.uploads.verb = nil end
table.sort(parts)
return J:finish(report, (J.dry_run and "dry run: " or "") .. table.concat(parts, "; "))
