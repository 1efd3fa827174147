-- Object settings in one place (scripts/lib/clubio/objects.lua): every object the tool writes
-- carries S3_SSE / S3_SSE_KMS_KEY_ID / S3_STORAGE_CLASS — archives, manifests, config backups,
-- asset copies, retention's storage-class copies, verification-history objects.
--
-- The S3 endpoint here is fault_proxy.py in front of the sandbox's real s3rver, playing a bucket
-- policy that requires a KMS key: every PUT, copy and multipart initiation without
-- `x-amz-server-side-encryption-aws-kms-key-id: <the key>` gets 403 AccessDenied (the proxy
-- decides; s3rver stores what passes). An export through it must write archive and manifest, and
-- fail cleanly, with nothing left under its prefix, when the key is missing or the manifest is
-- refused.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local s3, pipe, env, proc, cjson, pgdump = require "s3", require "pipe", require "env", require "proc", require "cjson", require "pgdump"
local objects = require "clubio.objects"

local B, ASSETS = env.get("BACKUP_S3_BUCKET"), env.get("ASSETS_S3_BUCKET")
local BIN = env.get("CLUBIO_DR_BIN")
local tmp = T.tmpdir()
local MiB = 1024 * 1024
local RUN = string.format("objects%d-%d/", os.time(), math.random(1e6))
local KMS = "alias/clubio-dr-test"
local P = U.proxy(tmp)
local direct = s3.client{}
local REQUIRE = string.format([=[[
  {"method": "PUT", "exclude": "uploadId=", "action": "require-header",
   "header": "x-amz-server-side-encryption-aws-kms-key-id", "value": %q},
  {"method": "POST", "match": "?uploads", "action": "require-header",
   "header": "x-amz-server-side-encryption-aws-kms-key-id", "value": %q}]=] .. "]", KMS, KMS)

-- the source database: a fresh one with the demo data
local admin <close> = pgdump.connect(env.get("SANDBOX_PG_ADMIN_URL"))
admin:query("DROP DATABASE IF EXISTS s3_objects_src WITH (FORCE)")
admin:query("CREATE DATABASE s3_objects_src")
local DB = string.format("postgresql://postgres:%s@127.0.0.1:%s/s3_objects_src", env.get("SANDBOX_PG_ADMIN_PW"), env.get("SANDBOX_PG_PORT"))

local BASE = {AWS_ENDPOINT_URL = P.url, S3_SSE_KMS_KEY_ID = KMS, DATABASE_URL = DB, CLUBIO_DR_JOURNAL = "off",
              CLUBIO_DR_VERIFY_HISTORY = "off", EXPORT_PREFIX = RUN .. "database/", CONFIG_BACKUP_PREFIX = RUN .. "configs/",
              ASSETS_PREFIX = RUN .. "src/", ASSETS_BACKUP_PREFIX = RUN .. "assets/", APP_VERSION = "test"}
local function run(args, extra, unset)
  local e = {}
  for k, v in pairs(BASE) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  for _, k in ipairs(unset or {}) do e[k] = nil end
  local argv = {BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e, unset_env = unset}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end
local function keys(prefix)
  local out = {}
  for o in direct:list{bucket = B, prefix = prefix} do out[#out + 1] = o.key end
  return out
end
local function denied() return select(2, U.read(P.log):gsub(" deny\n", "")) end

T.case("settings: checked, described, and a client's defaults", function()
  local s = objects.settings()
  T.eq(s.sse, "aws:kms")
  T.eq(s.storage_class, "STANDARD_IA")
  T.eq(objects.describe{sse = "aws:kms", kms_key_id = "k", storage_class = "STANDARD_IA"}, "SSE aws:kms (key k), STANDARD_IA")
  local r = run({"backup-configs"}, {S3_SSE = "aes256"})
  T.eq(r.status, 3)
  T.match(r.stderr, "S3_SSE must be aws:kms, AES256 or none, got 'aes256'")
  r = run({"backup-configs"}, {S3_SSE = "AES256"})
  T.eq(r.status, 3)
  T.match(r.stderr, "S3_SSE_KMS_KEY_ID is set but S3_SSE is AES256")
  local c = objects.client{defaults = {sse = "aws:kms", kms_key_id = KMS, storage_class = "STANDARD_IA"}}
  T.eq(c:info().defaults.kms_key_id, KMS)
end)

T.case("a bucket that requires the KMS key: export writes archive and manifest, both with the key", function()
  U.rules(P, REQUIRE)
  T.eq(run({"demo-data", "300"}).status, 0)
  local r = run({"export-database", "--json"})
  T.eq(r.status, 0, r.stderr)
  local key = r.doc.result.key
  T.ok(direct:head(B, key), "archive")
  T.ok(direct:head(B, key .. ".manifest.json"), "manifest")
  T.eq(denied(), 0, "no request was refused")
  T.match(U.read(P.log), "PUT /[^\n]*manifest%.json forward")
  -- a multipart upload (initiation carries the key) through a client from clubio.objects
  local c = objects.client{endpoint = P.url, defaults = {sse = "aws:kms", kms_key_id = KMS}}
  local src = U.random_file(tmp, "big.bin", 6 * MiB)
  local up = pipe.run{pipe.file(src), c:upload{bucket = B, key = RUN .. "big.bin", part_size = 5 * MiB, label = "up"}}
  T.eq(up.up.parts, 2)
  T.match(U.read(P.log), "POST /[^\n]*big%.bin%?uploads[^\n]* forward")
  -- while a client without the settings is refused by the same bucket
  local plain = s3.client{endpoint = P.url}
  local ok, err = pcall(plain.put, plain, B, RUN .. "plain.txt", "x")
  T.eq(ok, false, U.read(P.log))
  T.eq(err.code, "s3.access_denied")
end)

T.case("configs, asset copies, verification history and retention's copies carry the key too", function()
  U.rules(P, REQUIRE)
  local dir = tmp .. "/config"
  U.sh("mkdir -p " .. U.q(dir))
  U.write(dir .. "/features.json", '{"beta": true}')
  local r = run({"backup-configs"}, {CONFIG_DIR = dir})
  T.eq(r.status, 0, r.stderr)
  T.eq(#keys(RUN .. "configs/"), 1)
  direct:put(ASSETS, RUN .. "src/a.png", "png")
  direct:put(ASSETS, RUN .. "src/b/c.css", "css")
  r = run({"sync-assets", "--json"})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.copied, 2)
  r = run({"verify-export", "--json"}, {CLUBIO_DR_VERIFY_HISTORY_S3 = "s3://" .. B .. "/" .. RUN .. "history/"})
  T.eq(r.status, 0, r.stderr)
  T.no_match(r.stderr, "verification history not written")
  T.eq(#keys(RUN .. "history/"), 2, "the history objects of the freshness and the archive checks")
  -- an export of two months ago, the month's first: retention copies it to the monthly class
  local old = os.time() - 62 * 86400
  local d = os.date("!*t", old)
  local okey = string.format("%sdatabase/clubio-db-%04d%02d01-020000.sql.gz.enc", RUN, d.year, d.month)
  direct:put(B, okey, "old archive")
  direct:put(B, okey .. ".manifest.json", "{}")
  r = run({"retention", "exports", "--yes", "--json"}, {RETENTION_DAILY_DAYS = "1", RETENTION_WEEKLY_DAYS = "0",
                                                        RETENTION_MONTHLY_DAYS = "400", RETENTION_STORAGE_CLASS_MONTHLY = "GLACIER"},
          {"NEON_PROJECT_ID"})
  T.eq(r.status, 0, r.stderr)
  -- (this month's export is its month's first too: both are monthly backups now)
  T.eq(r.doc.result.targets.exports.storage_class_changed, 2)
  T.eq(direct:head(B, okey).storage_class, "GLACIER")
  T.eq(denied(), 0, "no request was refused")
end)

T.case("the key missing: the export fails and leaves nothing under its prefix", function()
  U.rules(P, REQUIRE)
  local prefix = RUN .. "nokey/"
  local r = run({"export-database"}, {EXPORT_PREFIX = prefix}, {"S3_SSE_KMS_KEY_ID"})
  T.eq(r.status, 3, r.stderr) -- access denied: a configuration problem
  T.match(r.stderr, "access denied")
  T.ok(denied() > 0, "refused by the bucket")
  T.eq(#keys(prefix), 0, "no archive, no manifest")
end)

T.case("the manifest refused: the export fails and removes its archive (no archive without a manifest)", function()
  U.rules(P, [=[[{"method": "PUT", "match": ".manifest.json", "action": "deny"}]=] .. "]")
  local prefix = RUN .. "nomanifest/"
  local r = run({"export-database"}, {EXPORT_PREFIX = prefix})
  T.ok(r.status ~= 0, "fails")
  T.match(r.stderr, "the archive was removed")
  T.eq(#keys(prefix), 0, "the archive was removed")
end)

T.case("no script or library makes its own s3 client: every client comes from clubio.objects", function()
  local root = os.getenv("CLUBIO_DR_TEST_DIR") .. "/.."
  local hits = U.out("grep -rnE 's3[\"'\"'\"')]*[.:]client *[{(]|s3%.client' " .. U.q(root .. "/scripts") .. " " ..
                     U.q(root .. "/runbooks") .. " --include=*.lua | grep -v 'scripts/lib/clubio/objects.lua' || true")
  T.eq(hits, "", "s3 clients made outside clubio.objects")
end)

U.stop(P)
admin:query("DROP DATABASE IF EXISTS s3_objects_src WITH (FORCE)")
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
