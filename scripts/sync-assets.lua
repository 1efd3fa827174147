-- Copy what changed in the assets bucket to BACKUP_S3_BUCKET/assets/ (SSE, STANDARD_IA)
-- schedule: 0 3 * * *
--
-- clubio-dr run sync-assets [--dry-run] [--json]
--
-- The runbook's `aws s3 sync s3://$ASSETS_S3_BUCKET s3://$BACKUP_S3_BUCKET/assets/ --sse
-- aws:kms --storage-class STANDARD_IA`: server-side copies of what is missing at the
-- destination, has another size, or another ETag and is newer at the source; nothing is
-- deleted. The plan comes from the s3 module's sync (dry run), then each object is copied with
-- a progress line, so an interrupted run says how far it got and a re-run carries on.
-- --dry-run lists what would be copied with sizes; the summary gives counts and bytes.
--
-- Environment: ASSETS_S3_BUCKET, BACKUP_S3_BUCKET (required); ASSETS_PREFIX (""),
-- ASSETS_BACKUP_PREFIX (assets/), S3_SSE (aws:kms; "none" to omit), S3_SSE_KMS_KEY_ID,
-- S3_STORAGE_CLASS (STANDARD_IA) (scripts/lib/clubio/objects.lua).
require("clubio.args").parse(arg, {})
local env, clubio, log, time = require "env", require "clubio", require "log", require "time"
local job, objects = require "clubio.job", require "clubio.objects"

local src_bucket = env.get("ASSETS_S3_BUCKET")
local dst_bucket = env.get("BACKUP_S3_BUCKET")
local src_prefix = env.get("ASSETS_PREFIX", "")
local dst_prefix = env.get("ASSETS_BACKUP_PREFIX", "assets/")
local settings = objects.settings()
if src_bucket == dst_bucket and src_prefix == dst_prefix then
  clubio.fail{message = "the assets and their backup are the same place (s3://" .. src_bucket .. "/" .. src_prefix .. ")",
              class = "config", hint = "set ASSETS_BACKUP_PREFIX (default assets/) or another BACKUP_S3_BUCKET"}
end
local from = "s3://" .. src_bucket .. "/" .. src_prefix
local to = "s3://" .. dst_bucket .. "/" .. dst_prefix

local c = objects.client{defaults = settings}
local J = job.new("sync-assets")
local dry = J.dry_run

-- What would be copied: the s3 module's sync decides (its rules are aws s3 sync's), the source
-- listing gives each object's size for the listing and the progress lines.
local function compare()
  local s = c:sync{src_bucket = src_bucket, src_prefix = src_prefix, dst_bucket = dst_bucket,
                   dst_prefix = dst_prefix, dry_run = true}
  local sizes = {}
  if #s.keys > 0 then
    for o in c:list{bucket = src_bucket, prefix = src_prefix} do sizes[o.key] = o.size end
  end
  local items = {}
  for i, dk in ipairs(s.keys) do
    local sk = src_prefix .. dk:sub(#dst_prefix + 1)
    items[i] = {src = sk, dst = dk, size = sizes[sk] or 0}
  end
  return {scanned = s.scanned, skipped = s.skipped, bytes = s.bytes, items = items}
end
-- read-only, so it runs under --dry-run too (that is what makes the dry run's list)
local plan = J:step("compare " .. from .. " with " .. to, {plan = "list both, pick what is missing or changed",
                                                            dry = compare}, compare)

local copied, bytes = 0, 0
if dry then
  for _, it in ipairs(plan.items) do
    log.debug(string.format("would copy %s (%s) to s3://%s/%s", it.src, job.bytes(it.size), dst_bucket, it.dst))
  end
  if not J.json then
    for _, it in ipairs(plan.items) do io.stdout:write(string.format("%12d  %s\n", it.size, it.src)) end
  end
elseif #plan.items > 0 then
  J:step(string.format("copy %d object(s)", #plan.items), {
    plan = string.format("%s -> %s, %s (%s)", from, to, job.bytes(plan.bytes), objects.describe(settings)),
    hint = "what was copied stays; re-run sync-assets to copy the rest",
  }, function()
    local t0, last = time.monotonic(), 0
    for i, it in ipairs(plan.items) do
      if clubio.cancelled() then
        clubio.fail{message = string.format("sync-assets cancelled after %d of %d objects", copied, #plan.items),
                    class = "cancelled", hint = "re-run sync-assets to copy the rest"}
      end
      local ok, err = pcall(c.copy, c, {src_bucket = src_bucket, src_key = it.src, dst_bucket = dst_bucket, dst_key = it.dst})
      if not ok then
        if clubio.is_error(err) then
          err.message = string.format("%s (after %d of %d objects, %s copied)", err.message, copied, #plan.items, job.bytes(bytes))
        end
        error(err, 0)
      end
      copied, bytes = copied + 1, bytes + it.size
      -- progress: every object at debug, a summary line at most every 2 s (and the last one)
      log.debug(string.format("copied %s (%s)", it.src, job.bytes(it.size)))
      local now = time.monotonic()
      if now - last >= 2 or i == #plan.items then
        last = now
        log.info(string.format("[%d/%d] %s of %s copied (%.0f%%), %.1f s", i, #plan.items, job.bytes(bytes),
                               job.bytes(plan.bytes), plan.bytes > 0 and 100 * bytes / plan.bytes or 100, now - t0))
      end
    end
  end)
end

local keys = {}
for i, it in ipairs(plan.items) do keys[i] = it.dst end
local result = {source = from, destination = to, scanned = plan.scanned, skipped = plan.skipped,
                copied = dry and 0 or copied, would_copy = dry and #plan.items or nil, bytes = dry and 0 or bytes,
                would_copy_bytes = dry and plan.bytes or nil, keys = keys, dry_run = dry}
if dry then
  return J:finish(result, string.format("dry run: %d of %d object(s) would be copied (%s) from %s to %s; %d up to date",
                                         #plan.items, plan.scanned, job.bytes(plan.bytes), from, to, plan.skipped))
end
return J:finish(result, string.format("synced %s to %s: %d copied (%s), %d up to date, %d scanned",
                                       from, to, copied, job.bytes(bytes), plan.skipped, plan.scanned))
