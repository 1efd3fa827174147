-- Restore from S3 alone: an export, or any point in time (an export + the change archive), checked against the manifests
--
-- clubio-dr run restore-from-s3                        list the 10 latest exports
-- clubio-dr run restore-from-s3 TARGET_URL KEY         restore s3://$BACKUP_S3_BUCKET/KEY into TARGET_URL
-- clubio-dr run restore-from-s3 --to TIME TARGET_URL   restore the database as of TIME (ISO 8601, UTC)
-- clubio-dr run restore-from-s3 --to latest TARGET_URL   … as of the last archived transaction
--   TARGET_URL "-" takes it from RESTORE_TARGET_URL (keeps its password out of the process list)
--   --keep-owners    keep ownership and grants (the target has the source's roles)
--   --create-roles   create the source's missing roles (no password, NOLOGIN), then keep owners
--
-- Nothing is written to disk: archives stream from S3 into the database. The target must be
-- empty. By default ownership and privileges are left out (as pg_restore --no-owner
-- --no-privileges): a server built after a complete loss does not have the source's roles, and
-- everything then belongs to the restoring user.
-- KEY: every table is read back from the target and compared with the archive and its manifest
-- (exit status 4 on a mismatch). KEY may also be a file name under EXPORT_PREFIX, or "latest".
-- --to: the newest base (an export whose manifest records its snapshot) at or before TIME, then
-- the change archive's transactions committed at or before TIME (those the base holds and any
-- archived twice skipped), each segment checked against its signed manifest before it is
-- committed, then the sequences' values recorded with the last segment. See docs/changes.md.
-- RESTORE_JOBS (2) connections load the base and read it back; RESTORE_PREFETCH_MB (128): --to
-- fetches and decrypts the next segment into memory while one is applied, when its SQL is at
-- most this size (0: stream each segment in turn).
local env, pipe = require "env", require "pipe"
local s3, crypto, pgdump, verify = require "s3", require "crypto", require "pgdump", require "verify"
local clubio, log = require "clubio", require "log"
local job, exports = require "clubio.job", require "clubio.exports"

local bucket = env.get("BACKUP_S3_BUCKET")
local prefix = env.get("EXPORT_PREFIX", "database/")
local c = require("clubio.objects").client()
local args = require("clubio.args").parse(arg, {
  options = {["--to"] = "TIME", ["--keep-owners"] = true, ["--create-roles"] = true},
  min = 0, max = 2,
})
local target, key = args[1], args[2]
local keep_owners = args["--keep-owners"] or args["--create-roles"]
if args["--to"] then
  if not target or key then
    clubio.fail{message = "restore-from-s3 --to TIME takes one TARGET_URL", class = "usage",
                hint = "clubio-dr run restore-from-s3 --to 2026-01-15T10:30:00Z -   (target in RESTORE_TARGET_URL)"}
  end
  if target == "-" then target = env.get("RESTORE_TARGET_URL") end
  return require("clubio.changes_restore").run{client = c, target = target, to = args["--to"],
                                               keep_owners = keep_owners, create_roles = args["--create-roles"]}
end

if not target then
  local list = exports.list(c, bucket, prefix)
  if clubio.flags.json then
    local out = {}
    for i = 1, math.min(10, #list) do out[i] = list[i] end
    io.stdout:write(require("cjson").encode({ok = true, exports = out}), "\n")
    return 0
  end
  if #list == 0 then print("no exports in s3://" .. bucket .. "/" .. prefix); return 0 end
  print(string.format("%-52s  %10s  %s", "KEY", "SIZE", "MANIFEST"))
  for i = 1, math.min(10, #list) do
    print(string.format("%-52s  %10s  %s", list[i].key, job.bytes(list[i].size), list[i].has_manifest and "yes" or "MISSING"))
  end
  print("\nrestore one with: clubio-dr run restore-from-s3 - KEY   (target URL in RESTORE_TARGET_URL)")
  return 0
end
if not key then
  clubio.fail{message = "restore-from-s3 needs TARGET_URL and KEY", class = "usage",
              hint = "clubio-dr run restore-from-s3 - database/clubio-db-YYYYMMDD-HHMMSS.sql.gz.enc"}
end
if target == "-" then target = env.get("RESTORE_TARGET_URL") end
env.get("BACKUP_ENCRYPTION_KEY")
if key == "latest" then
  local list = exports.list(c, bucket, prefix)
  if not list[1] then clubio.fail{message = "no exports in s3://" .. bucket .. "/" .. prefix, class = "verify"} end
  key = list[1].key
elseif not key:find("/") then
  key = prefix .. key
end
local where = "s3://" .. bucket .. "/" .. key
local dst = job.describe_url(target)
local J = job.new("restore-from-s3")

local manifest = J:step("read the manifest", {plan = where .. verify.MANIFEST_SUFFIX, dry = function() return nil end}, function()
  if not c:head(bucket, key) then
    clubio.fail{message = "no archive at " .. where, class = "verify", code = "verify.missing",
                hint = "list the exports with `clubio-dr run restore-from-s3`"}
  end
  local mkey = key .. verify.MANIFEST_SUFFIX
  if not c:head(bucket, mkey) then
    clubio.fail{message = "the archive has no manifest: " .. where, class = "verify", code = "verify.incomplete",
                hint = "the export did not finish; choose another archive"}
  end
  local m, reason, why = verify.check_manifest(c:get(bucket, mkey))
  if not m then clubio.fail(verify.failure({archive = where, reason = reason, message = why})) end
  return m
end)

local r = J:step("restore " .. where .. " into " .. dst.display, {
  plan = "download -> decrypt -> gunzip -> restore (" .. env.get("RESTORE_JOBS", "2") .. " connections); the target must be empty",
  hint = "the target database is partial: drop and recreate it before trying again",
}, function()
  if args["--create-roles"] then require("clubio.changes_restore").create_roles(target, manifest.roles) end
  -- A manifest that records the SHA-256 of the stored archive (checked below; the manifest is
  -- signed) vouches for every byte of the stream, so the per-table rows and digests need no
  -- scan of their own: the restore counts the rows it loads and sums their set digest (a hash
  -- per row, on its reader thread), to compare with the tables read back. The scan cost 0.6 s
  -- of CPU on the 450 MB benchmark database, on the two cores the server needs
  -- (bench/restore.sh). Older manifests without it: the stream is scanned as before. Exports
  -- that record each table's set digest in the manifest spare the restore its row hashing too
  -- (0.4 s of CPU on that database): the tables read back are compared with the manifest's.
  local manifest_sets = manifest.stored ~= nil and next(manifest.tables or {}) ~= nil
  for _, t in pairs(manifest.tables or {}) do manifest_sets = manifest_sets and t.set_sha256 ~= nil end
  local stages = {c:download{bucket = bucket, key = key}, crypto.sha256{label = "stored"}, crypto.decrypt{},
                  crypto.gunzip{}, progress = "restore"}
  if not manifest.stored then stages[#stages + 1] = verify.sql_scan_filter{label = "scan", row_digests = true} end
  if not keep_owners then stages[#stages + 1] = require("changes").no_owner{} end
  stages[#stages + 1] = pgdump.restore{url = target, jobs = tonumber(env.get("RESTORE_JOBS", "2")),
                                       set_digests = manifest.stored ~= nil and not manifest_sets, label = "restore"}
  local res = pipe.run(stages)
  if not res.scan then -- what the restore loaded, in the scan's terms
    res.scan = {tables = res.restore.tables, table_count = 0, rows = 0}
    for _, t in pairs(res.restore.tables) do res.scan.table_count, res.scan.rows = res.scan.table_count + 1, res.scan.rows + t.rows end
  end
  return res
end)
if J.dry_run then return J:finish(nil, "dry run: nothing was restored") end

J:step("compare with the manifest", {plan = "stored SHA-256, per-table rows and digests; then every table read back from the target"}, function()
  if manifest.stored and r.stored.hex ~= manifest.stored.sha256 then
    clubio.fail{message = "the archive's SHA-256 differs from its manifest's", class = "verify", code = "verify.checksum-mismatch"}
  end
  local t, why = verify.compare_tables(manifest.tables, r.scan.tables)
  if t then clubio.fail{message = why, class = "verify", code = "verify.table-mismatch"} end
  -- what psql would call done is not proof: read the restored tables back. compare_restored
  -- reads each through db:table_digest; they are read beforehand over RESTORE_JOBS connections
  -- (largest first), which halves the check on two cores, and handed to it through `read_back`.
  local db <close> = pgdump.connect(target)
  local names = {}
  for name in pairs(manifest.tables or {}) do names[#names + 1] = name end
  local digests = verify.existing_table_digests(db, target, names, tonumber(env.get("RESTORE_JOBS", "2")))
  local read_back = setmetatable({table_digest = function(_, name) return digests[name] or db:table_digest(name) end},
                                 {__index = function(_, k) return function(_, ...) return db[k](db, ...) end end})
  local _, _, _, bad, msg = verify.compare_restored(read_back, manifest.tables, r.scan.tables)
  if bad then clubio.fail{message = msg, class = "verify", code = "verify.table-mismatch",
                          hint = "the target holds a partial or altered restore: drop it and restore again"} end
end)
local rows = r.scan.rows
return J:finish({archive = where, target = dst.display, tables = r.scan.table_count, rows = rows, seconds = r.seconds},
                string.format("restored %s into %s: %d tables, %d rows, matching the manifest (%.1f s)",
                              where, dst.display, r.scan.table_count, rows, r.seconds or 0))
