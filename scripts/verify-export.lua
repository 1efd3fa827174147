-- Verify an S3 export without a database: manifest HMAC, size, SHA-256s, gzip CRCs, per-table rows and digests
-- schedule: 0 6 * * *
--
-- clubio-dr run verify-export [KEY] [--json]
-- clubio-dr run verify-export --changes [--deep]   verify the change archive's chain instead
--
-- Without KEY, verifies the latest export under EXPORT_PREFIX. Streams the archive through
-- decrypt -> gunzip -> SQL scan; nothing is written. Exit status 4 when the archive is missing,
-- incomplete (no manifest), stale (older than MAX_EXPORT_AGE_HOURS, default 32 days) or does
-- not match its manifest.
-- --changes: every segment manifest of the change archive (CHANGES_PREFIX, CHANGES_SLOT) is
-- authenticated and the chain checked (sequence numbers without a gap, each segment's
-- previous-segment hash); --deep also downloads every segment and checks its SHA-256s.
local args = require("clubio.args").parse(arg, {options = {["--changes"] = true, ["--deep"] = true}, min = 0, max = 1})
local env, time = require "env", require "time"
local verify, clubio = require "verify", require "clubio"
local job, exports = require "clubio.job", require "clubio.exports"

local bucket = env.get("BACKUP_S3_BUCKET")
env.get("BACKUP_ENCRYPTION_KEY")
local max_age = tonumber(env.get("MAX_EXPORT_AGE_HOURS", tostring(32 * 24)))
local c = require("clubio.objects").client()
local J = job.new("verify-export")

if args["--changes"] then
  local lib = require "clubio.changes"
  local cfg = lib.config()
  local chain, problems = J:step("verify the change archive s3://" .. bucket .. "/" .. cfg.folder,
    {plan = "authenticate every segment manifest and check the chain" .. (args["--deep"] and "; download every segment" or "")},
    function() return lib.verify_chain(c, cfg, {deep = args["--deep"]}) end)
  if J.dry_run then return J:finish(nil, "dry run: nothing was verified") end
  if #problems > 0 then
    local p = problems[1]
    clubio.fail{message = string.format("the change archive is not intact: segment %d (%s): %s", p.seq, p.reason, p.message),
                class = "verify", code = "verify." .. p.reason,
                hint = "a restore past that segment is not possible; keep the archiver running and take a new base export"}
  end
  return J:finish({segments = #chain, first = chain[1] and chain[1].first_time, last = chain[#chain] and chain[#chain].last_time},
                  string.format("ok: %d segments of the change archive, chain intact%s", #chain, args["--deep"] and ", every byte checked" or ""))
end

local key = args[1]
local fresh
if not key then
  local list = exports.list(c, bucket)
  fresh = verify.freshness{times = {list[1] and list[1].last_modified}, max_age_hours = max_age, what = "export"}
  if not list[1] then
    clubio.fail{message = "no exports in s3://" .. bucket .. "/" .. env.get("EXPORT_PREFIX", "database/"),
                class = "verify", code = "verify.missing", hint = "run `clubio-dr run export-database`"}
  end
  key = list[1].key
end

local r = J:step("verify s3://" .. bucket .. "/" .. key, {plan = "stream, decrypt, gunzip and scan; compare with the manifest"},
  function() return verify.archive{bucket = bucket, key = key, client = c} end)
if J.dry_run then return J:finish(nil, "dry run: nothing was verified") end
r.manifest = nil
r.freshness = fresh
if not r.ok then
  -- a wrong passphrase says to check the key (exit 3); an altered or damaged archive is not to be trusted (exit 4)
  clubio.fail(verify.failure(r))
end
if fresh and not fresh.ok then
  clubio.fail{message = fresh.message, class = "verify", code = "verify.stale",
              hint = "the export job has not run recently: check its schedule and last run"}
end
return J:finish(r, string.format("ok: %s — %d tables, %d rows, %s of SQL verified in %.1f s",
                                 r.archive, r.tables, r.rows, job.bytes(r.plain_bytes), r.seconds or 0))
