-- Restore test: restore an S3 export into a scratch database or Neon branch, check it against its manifest, remove it
-- schedule: 0 3 1 * *
--
-- clubio-dr run restore-test [KEY|latest] [--server [URL] | --neon-branch] [--sanity FILE] [--json]
--
-- "A checksum is not a restore test": the monthly full restore. Streams the archive from S3
-- (download -> decrypt -> gunzip -> parallel restore; no plaintext on disk) into
--   --server       a new database clubio_restore_test_<time>_<rand> on the server of
--                  RESTORE_TEST_SERVER_URL (a role allowed to CREATE DATABASE), dropped at the end;
--   --neon-branch  a temporary branch restore-test-<time>-<rand> of the default branch (or
--                  RESTORE_TEST_NEON_PARENT) of NEON_PROJECT_ID, with expires_at, deleted at the end.
-- Without either: --server when RESTORE_TEST_SERVER_URL is set, else --neon-branch when
-- NEON_API_KEY is. Then every table is read back and its row count and order-independent
-- digest compared with the archive and the manifest; --sanity FILE (a Lua file returning
-- {{name =, sql =, expect =}, ...}) adds checks. The scratch target is removed on success,
-- failure and Ctrl-C. Prints the measured restore time (RTO evidence); exit status 4 when the
-- test fails. Every run is appended to the verification history (see modules/verify/README.md).
--
-- Environment: BACKUP_S3_BUCKET, BACKUP_ENCRYPTION_KEY (required); EXPORT_PREFIX (database/);
-- RESTORE_TEST_SERVER_URL; NEON_API_KEY, NEON_PROJECT_ID, RESTORE_TEST_NEON_PARENT,
-- RESTORE_TEST_DATABASE, RESTORE_TEST_ROLE (neon); RESTORE_JOBS (2); RESTORE_TEST_EXPIRES_HOURS (6);
-- CLUBIO_DR_VERIFY_HISTORY, CLUBIO_DR_VERIFY_HISTORY_S3.
local env, s3, verify, secret = require "env", require "s3", require "verify", require "secret"
local clubio, log, cjson = require "clubio", require "log", require "cjson"
local job, exports = require "clubio.job", require "clubio.exports"

local args = require("clubio.args").parse(arg, {
  options = {["--server"] = true, ["--neon-branch"] = true, ["--sanity"] = "FILE"}, max = 2})
local key, mode, sanity_file = nil, nil, args["--sanity"]
if args["--server"] and args["--neon-branch"] then
  clubio.fail{message = "restore-test: --server and --neon-branch exclude each other", class = "usage", code = "usage.argument",
              hint = "clubio-dr run restore-test [KEY|latest] [--server [URL] | --neon-branch] [--sanity FILE] [--json]"}
end
if args["--server"] then mode = "server" elseif args["--neon-branch"] then mode = "neon" end
for i = 1, args.n do
  local a = args[i]
  if mode == "server" and a:match("^postgres[a-z]*://") then
    -- `--server URL`: fine without a password, refused with one (the process list shows argv
    -- to every user of the machine)
    if a:match("^postgres[a-z]*://[^/@]*:[^/@]*@") then
      clubio.fail{message = "restore-test: --server URL contains a password, which the process list would show",
                  class = "usage", code = "usage.secret_in_argv",
                  hint = "put the URL in RESTORE_TEST_SERVER_URL, or give it without a password and set PGPASSWORD"}
    end
    mode = a
  elseif not key then
    key = a
  else
    clubio.fail{message = "restore-test: unexpected argument '" .. a .. "'", class = "usage", code = "usage.argument",
                hint = "clubio-dr run restore-test [KEY|latest] [--server [URL] | --neon-branch] [--sanity FILE] [--json]"}
  end
end

local bucket = env.get("BACKUP_S3_BUCKET")
env.get("BACKUP_ENCRYPTION_KEY") -- fail early, naming it
local prefix = env.get("EXPORT_PREFIX", "database/")
if not mode then
  if env.has("RESTORE_TEST_SERVER_URL") then mode = "server"
  elseif env.has("NEON_API_KEY") then mode = "neon"
  else
    clubio.fail{message = "restore-test: no scratch target: set RESTORE_TEST_SERVER_URL, or pass --neon-branch",
                class = "config", code = "config.env",
                hint = "RESTORE_TEST_SERVER_URL=postgresql://postgres:...@host:5432/postgres (a role with CREATEDB)"}
  end
end

local opts = {bucket = bucket, jobs = tonumber(env.get("RESTORE_JOBS", "2"))}
local target_desc
if mode == "neon" then
  local neon = require "neon"
  opts.neon = neon.client{}
  opts.parent = env.has("RESTORE_TEST_NEON_PARENT") and env.get("RESTORE_TEST_NEON_PARENT") or nil
  opts.database = env.has("RESTORE_TEST_DATABASE") and env.get("RESTORE_TEST_DATABASE") or nil
  opts.role = env.has("RESTORE_TEST_ROLE") and env.get("RESTORE_TEST_ROLE") or nil
  opts.expires_hours = tonumber(env.get("RESTORE_TEST_EXPIRES_HOURS", "6"))
  target_desc = "a temporary branch of " .. (opts.parent or "the default branch") .. " in neon project " .. opts.neon.project_id
else
  local url = mode == "server" and secret.env("RESTORE_TEST_SERVER_URL") or mode
  opts.server_url = url
  local d = job.describe_url(type(url) == "string" and url or url:reveal())
  target_desc = "a new database on " .. (d.host and (d.host .. ":" .. d.port) or d.display)
end
if sanity_file then
  local chunk, err = loadfile(sanity_file, "t", {})
  if not chunk then clubio.fail{message = "--sanity " .. sanity_file .. ": " .. tostring(err), class = "usage", code = "usage.argument"} end
  local ok, list = pcall(chunk)
  if not ok or type(list) ~= "table" then
    clubio.fail{message = "--sanity " .. sanity_file .. ": must return a list of {name =, sql =, expect =}",
                class = "usage", code = "usage.argument"}
  end
  opts.sanity = list
end

local c = require("clubio.objects").client()
opts.client = c
local J = job.new("restore-test")

key = J:step("find the archive", {plan = "s3://" .. bucket .. "/" .. (key or "latest") .. " and its manifest",
                                  dry = function() return key end}, function()
  if not key or key == "latest" then
    local list = exports.list(c, bucket, prefix)
    if not list[1] then
      clubio.fail{message = "no exports in s3://" .. bucket .. "/" .. prefix, class = "verify", code = "verify.missing",
                  hint = "run `clubio-dr run export-database` first"}
    end
    return list[1].key
  end
  if not key:find("/") then return prefix .. key end
  return key
end)
opts.key = key

J:step("remove stale restore-test targets", {plan = "scratch databases/branches older than 24 hours left by killed runs"}, function()
  verify.remove_stale_restore_tests{server_url = opts.server_url, neon = opts.neon, older_than_hours = 24}
end)

local r = J:step("restore test", {
  plan = string.format("s3://%s/%s -> download, decrypt, gunzip, restore (%d connections) into %s; compare every table with the manifest; remove the target",
                       bucket, tostring(key), opts.jobs, target_desc),
}, function() return verify.restore_test(opts) end)
if J.dry_run then return J:finish(nil, "dry run: nothing was restored") end

local s = r.seconds or {}
local lines = {
  string.format("restore test of %s: %s", r.archive or ("s3://" .. bucket .. "/" .. key),
                r.ok and "PASSED" or ("FAILED (" .. tostring(r.reason) .. ")")),
}
if not r.ok then lines[#lines + 1] = "  reason:    " .. tostring(r.message) end
if r.manifest and r.manifest.snapshot_time then lines[#lines + 1] = "  snapshot:  " .. r.manifest.snapshot_time end
if r.table_count then lines[#lines + 1] = string.format("  tables:    %d tables, %d rows checked against the manifest", r.table_count, r.rows or 0) end
for _, chk in ipairs(r.sanity or {}) do
  lines[#lines + 1] = string.format("  sanity:    %s %s", chk.name, chk.ok and "ok" or ("FAILED: " .. tostring(chk.error)))
end
lines[#lines + 1] = string.format("  restore:   %.1f s (download, decrypt, gunzip, load: the RTO evidence); compare %.1f s; total %.1f s",
                                  s.download_restore or 0, s.compare or 0, s.total or 0)
if r.target then
  lines[#lines + 1] = string.format("  target:    %s %s, %s", r.target.kind, r.target.name,
                                    r.target.removed and "removed" or ("NOT REMOVED: " .. tostring(r.target.remove_error)))
end
local report = table.concat(lines, "\n")

if r.ok then return J:finish(r, report) end
if J.json then
  io.stdout:write(log.redact(cjson.encode({ok = false, job = J.name, run = J.run_id, result = r, steps = J.steps})), "\n")
  log.error(string.format("restore test failed: %s: %s", tostring(r.reason), tostring(r.message)))
  return 4
end
io.stdout:write(log.redact(report), "\n")
local f = verify.failure(r, "do not rely on this archive: run a new export, then run this test again")
clubio.fail{message = string.format("restore test failed: %s: %s", tostring(r.reason), tostring(r.message)),
            class = f.class, code = f.code,
            hint = (r.target and not r.target.removed) and ("remove the scratch " .. r.target.kind .. " " .. r.target.name .. " by hand")
                   or f.hint}
