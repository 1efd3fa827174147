-- The README's main job on the sandbox, run by tools/demo.sh: sample data, the daily Neon
-- backup, the S3 export, both verifications, and a restore of the export into a scratch
-- database; then a short report of what happened and how long each step took.
--
--   clubio-dr run tools/demo.lua path/to/clubio-dr
local proc, env, time, cjson = require "proc", require "env", require "time", require "cjson"
local pgdump = require "pgdump"
local BIN = assert(..., "usage: clubio-dr run tools/demo.lua path/to/clubio-dr")

local report = {}
local function run(title, args, extra_env)
  local argv = {BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--json"
  argv[#argv + 1] = "--yes"
  io.stderr:write("\n== ", title, "\n")
  local t0 = time.monotonic()
  local r = proc.run{argv = argv, env = extra_env}
  local secs = time.monotonic() - t0
  io.stderr:write(r.stderr)
  local ok, doc = pcall(cjson.decode, r.stdout)
  report[#report + 1] = {title = title, status = r.status, seconds = secs, doc = ok and doc or nil}
  if r.status ~= 0 then
    local msg = ok and doc.error and doc.error.message or r.stdout
    io.stderr:write(string.format("\n%s failed (exit %d): %s\n", title, r.status, msg))
    os.exit(r.status)
  end
  return ok and doc or {}
end

run("sample database", {"demo-data"})
if env.has("NEON_API_HOST") then run("daily Neon backup", {"backup-database"}) end
local exp = run("export to S3", {"export-database"})
if env.has("NEON_API_HOST") then run("verify the backup branch", {"verify-backup"}) end
run("verify the export", {"verify-export", exp.result.key})

-- a scratch database on the sandbox's PostgreSQL for the restore
local scratch = "clubio_restore_" .. time.format(time.now(), "%Y%m%d%H%M%S")
local admin <close> = pgdump.connect(env.get("SANDBOX_PG_ADMIN_URL"))
admin:query("CREATE DATABASE " .. scratch)
local target = string.format("postgresql://postgres:%s@127.0.0.1:%s/%s", env.get("SANDBOX_PG_ADMIN_PW"),
                             env.get("SANDBOX_PG_PORT"), scratch)
run("restore the export into " .. scratch, {"restore-from-s3", "-", exp.result.key}, {RESTORE_TARGET_URL = target})

local w = 4
for _, s in ipairs(report) do w = math.max(w, #s.title) end
print(string.format("\n%-" .. w .. "s  %8s  %s", "STEP", "SECONDS", "RESULT"))
for _, s in ipairs(report) do
  print(string.format("%-" .. w .. "s  %8.2f  %s", s.title, s.seconds, s.status == 0 and "ok" or ("exit " .. s.status)))
end
local r = exp.result
print(string.format("\nexport: s3://%s/%s — %d tables, %d rows, %d bytes of SQL stored as %d bytes",
                    r.bucket, r.key, r.tables, r.rows, r.plain_bytes, r.stored_bytes))
print("restored into database " .. scratch .. " on the sandbox's PostgreSQL, matching the manifest")
return 0
