-- Export the database to S3: dump -> gzip -> encrypt -> upload, then a signed manifest
-- schedule: 0 2 1 * *
--
-- clubio-dr run export-database [--dry-run] [--json]
--
-- The runbook's `pg_dump | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 | aws s3 cp -`, done
-- properly: one streaming pipe in C (no file in /tmp, no plaintext anywhere), a consistent
-- parallel dump, server-side encryption (aws:kms) and STANDARD_IA on the object, a manifest
-- written last (per-table rows and digests, sizes, SHA-256s, HMAC), then a head check of size
-- and metadata. The archive opens with stock tools:
--   aws s3 cp s3://B/K - | openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY | gunzip | psql
--
-- Environment: DATABASE_URL, BACKUP_S3_BUCKET, BACKUP_ENCRYPTION_KEY (required);
-- EXPORT_PREFIX (database/), S3_SSE (aws:kms; "none" to omit), S3_SSE_KMS_KEY_ID,
-- S3_STORAGE_CLASS (STANDARD_IA) — applied to the archive and its manifest alike
-- (scripts/lib/clubio/objects.lua), DUMP_JOBS (2), GZIP_LEVEL (6: the lowest libdeflate level no
-- larger than `gzip -6` on text-heavy, numeric, JSON and bytea dumps; 4 is faster but up to 2%
-- larger; see modules/crypto/README.md).
-- If the manifest cannot be written, the archive is deleted: no archive is left without one.
-- Unfinished multipart uploads under the prefix (a killed export's) are reported at the end;
-- `clubio-dr run retention uploads` aborts them.
require("clubio.args").parse(arg, {})
local env, time, pipe = require "env", require "time", require "pipe"
local crypto, pgdump, verify = require "crypto", require "pgdump", require "verify"
local clubio, log = require "clubio", require "log"
local job, objects = require "clubio.job", require "clubio.objects"

local url = env.get("DATABASE_URL")
local bucket = env.get("BACKUP_S3_BUCKET")
env.get("BACKUP_ENCRYPTION_KEY") -- fail early, naming it, before anything starts
local prefix = env.get("EXPORT_PREFIX", "database/")
local settings = objects.settings()
local jobs = tonumber(env.get("DUMP_JOBS", "2"))
local level = tonumber(env.get("GZIP_LEVEL", "6"))

local J = job.new("export-database")
local started = time.now()
local key = string.format("%sclubio-db-%s.sql.gz.enc", prefix, time.format(started, "%Y%m%d-%H%M%S"))
local where = "s3://" .. bucket .. "/" .. key
local src = job.describe_url(url)
local c = objects.client{defaults = settings}
-- A base for the change archive (docs/changes.md) when its slot exists before the snapshot.
local changes_slot, changes_epoch
if not J.dry_run then changes_slot, changes_epoch = require("clubio.changes").slot_for_export(url) end

local r = J:step("dump, compress, encrypt and upload", {
  plan = string.format("pg_dump of %s (%d jobs) -> gzip -%d -> aes-256-cbc -> %s (%s)",
                       src.display, jobs, level, where, objects.describe(settings)),
  hint = "nothing was left in S3 (the upload was aborted); check the database and bucket, then re-run",
}, function()
  return pipe.run{
    pgdump.dump{url = url, jobs = jobs, row_digests = true, label = "dump"},
    crypto.sha256{label = "plain"},
    crypto.gzip{level = level},
    crypto.encrypt{},
    crypto.sha256{label = "stored"},
    c:upload{bucket = bucket, key = key, content_type = "application/octet-stream",
             metadata = {["clubio-format"] = "plain-sql+gzip+openssl-enc-aes-256-cbc-pbkdf2",
                         ["clubio-version"] = clubio.version},
             label = "upload"},
    progress = "export",
  }
end)

local manifest_key = key .. verify.MANIFEST_SUFFIX
-- the archive without its manifest is incomplete: a failed manifest write deletes it (the error
-- still names the cause), so nothing half-made is left for a restore or the billing
local function remove_archive(err)
  if J.dry_run then return end
  local ok, why = pcall(c.delete, c, bucket, key)
  if ok then log.warn("the manifest was not written; removed the archive " .. where)
  else log.error("the manifest was not written and the archive could not be removed: delete " .. where .. " by hand",
                 {error = tostring(why)}) end
  if clubio.is_error(err) then
    err.hint = (ok and "the archive was removed; " or "delete " .. where .. " by hand; ") ..
               (err.hint and err.hint ~= "" and err.hint or "fix the cause, then re-run the export")
  end
end
-- (verify.protect: the removal runs even when the run is cancelled during the write)
verify.protect(function() return J:step("write the manifest", {plan = "s3://" .. bucket .. "/" .. manifest_key}, function()
  local tables = verify.manifest_tables(r.dump.tables)
  local m = {
    format = verify.FORMAT, format_version = verify.FORMAT_VERSION,
    tool = {name = "clubio-dr", version = clubio.version},
    archive = {bucket = bucket, key = key, layers = {"plain-sql", "gzip", "openssl-enc-aes-256-cbc"},
               cipher = {name = "aes-256-cbc", kdf = "pbkdf2-hmac-sha256", iter = 10000, salted = true}},
    source = {host = src.host, port = src.port, database = src.database, user = src.user,
              server_version = r.dump.server_version},
    snapshot_time = r.dump.snapshot_time or time.iso(started),
    created_at = time.iso(time.now()),
    plain = {bytes = r.plain.bytes, sha256 = r.plain.hex},
    stored = {bytes = r.stored.bytes, sha256 = r.stored.hex},
    tables = tables,
    changes = changes_slot and r.dump.snapshot_xids and {slot = changes_slot, snapshot_xids = r.dump.snapshot_xids, epoch = changes_epoch} or nil,
  }
  local text = verify.sign_manifest(m)
  c:put(bucket, manifest_key, {body = text, content_type = "application/json"})
end) end, function(ok, err) if not ok then remove_archive(err) end end)

J:step("check the uploaded object", {plan = "head " .. where .. ": size and metadata"}, function()
  local h = c:head(bucket, key)
  if not h then clubio.fail{message = "the archive is missing after upload: " .. where, class = "verify"} end
  if h.size ~= r.stored.bytes then
    clubio.fail{message = string.format("%s is %d bytes, %d were uploaded", where, h.size, r.stored.bytes),
                class = "verify", hint = "delete the object and its manifest, then re-run the export"}
  end
end)

if J.dry_run then return J:finish({key = key, dry_run = true}, "dry run: nothing was exported") end

-- an earlier export killed mid-upload (SIGKILL, the OOM killer) leaves an upload that nothing
-- else reports; say so (a store that cannot list uploads says nothing)
local listed, ups = pcall(c.uploads, c, {bucket = bucket, prefix = prefix})
if listed then
  local n = 0
  for _, u in ipairs(ups) do if u.key ~= key then n = n + 1 end end
  if n > 0 then
    log.warn(string.format("%d unfinished multipart upload(s) under s3://%s/%s (an export that was killed?); " ..
                           "`clubio-dr run retention uploads` aborts those older than RETENTION_STALE_UPLOAD_HOURS", n, bucket, prefix))
  end
end
local result = {bucket = bucket, key = key, manifest = manifest_key, plain_bytes = r.plain.bytes,
                stored_bytes = r.stored.bytes, tables = 0, rows = 0, seconds = r.seconds}
for _, t in pairs(r.dump.tables or {}) do result.tables = result.tables + 1; result.rows = result.rows + (t.rows or 0) end
return J:finish(result, string.format("exported %s (%s, %d tables, %d rows, %s of SQL) in %.1f s",
                                       where, job.bytes(r.stored.bytes), result.tables, result.rows,
                                       job.bytes(r.plain.bytes), r.seconds or 0))
