-- Stale multipart uploads: a `kill -9` of export-database mid-upload leaves an in-progress
-- upload on the store; `retention uploads` lists it and, once older than
-- RETENTION_STALE_UPLOAD_HOURS, aborts it.
--
-- The sandbox's s3rver 5 implements neither ListMultipartUploads nor AbortMultipartUpload (it
-- answers NotImplemented / MethodNotAllowed; the last case checks that retention reports this
-- and goes on). So the endpoint is fault_proxy.py in front of s3rver: every other request is
-- s3rver's, and the proxy answers those two calls from s3rver's own upload state (its
-- ._S3rver_uploads folder) — a MOCK of the two calls, over the real debris the killed export
-- left in the real server. The proxy also slows the parts down so that the kill lands mid-upload.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local s3, env, proc, cjson, pgdump = require "s3", require "env", require "proc", require "cjson", require "pgdump"

local B = env.get("BACKUP_S3_BUCKET")
local BIN = env.get("CLUBIO_DR_BIN")
local tmp = T.tmpdir()
local RUN = string.format("uploads%d-%d/", os.time(), math.random(1e6))
local P = U.proxy(tmp, {uploads = true})
local c = s3.client{endpoint = P.url, retry_base = 0.02}
local direct = s3.client{}
local UPLOADS_DIR = U.S3RVER_DATA .. "/" .. B .. "/._S3rver_uploads"

-- every prefix the sweep looks under is this run's, so other tests' uploads are never touched
local BASE = {AWS_ENDPOINT_URL = P.url, CLUBIO_DR_JOURNAL = "off", EXPORT_PREFIX = RUN .. "database/",
              CONFIG_BACKUP_PREFIX = RUN .. "configs/", ASSETS_BACKUP_PREFIX = RUN .. "assets/", CHANGES_PREFIX = RUN .. "changes/"}
local function run(args, extra)
  local e = {}
  for k, v in pairs(BASE) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  local argv = {BIN, "run"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = proc.run{argv = argv, env = e, unset_env = {"NEON_PROJECT_ID"}}
  local ok, doc = pcall(cjson.decode, r.stdout)
  r.doc = ok and doc or nil
  return r
end

-- s3rver's in-progress uploads under a key prefix: {upload id = key}
local function stored_uploads(prefix)
  local out = {}
  for id in U.out("ls " .. U.q(UPLOADS_DIR) .. " 2>/dev/null"):gmatch("%S+") do
    local f = io.open(UPLOADS_DIR .. "/" .. id .. "/key")
    if f then
      local k = f:read("a")
      f:close()
      if k:sub(1, #prefix) == prefix then out[id] = k end
    end
  end
  return out
end
local function count(t) local n = 0; for _ in pairs(t) do n = n + 1 end; return n end

T.case("c:uploads lists every page; c:abort_upload aborts, and says when it was already gone", function()
  for i = 1, 3 do
    U.sh(U.aws("s3api create-multipart-upload --bucket " .. B .. " --key " .. U.q(RUN .. "many/k" .. i) .. " >/dev/null"))
  end
  T.eq(count(stored_uploads(RUN .. "many/")), 3, "s3rver holds three uploads")
  local ups = c:uploads{bucket = B, prefix = RUN .. "many/", page_size = 2}
  T.eq(#ups, 3)
  T.eq(select(2, U.read(P.log):gsub("GET [^\n]*uploads[^\n]*mock%-list%-uploads", "")), 2, "two pages")
  local seen = {}
  for _, u in ipairs(ups) do
    seen[u.key] = true
    T.match(u.upload_id, "^%x+$")
    T.ok(math.abs(u.initiated - os.time()) < 600, "initiated is a time: " .. u.initiated_iso)
  end
  T.ok(seen[RUN .. "many/k1"] and seen[RUN .. "many/k3"], "the keys")
  T.eq(c:abort_upload(B, ups[1].key, ups[1].upload_id), true)
  T.eq(c:abort_upload(B, ups[1].key, ups[1].upload_id), false, "already gone")
  T.eq(#c:uploads{bucket = B, prefix = RUN .. "many/"}, 2)
  for _, u in ipairs(c:uploads{bucket = B, prefix = RUN .. "many/"}) do c:abort_upload(B, u.key, u.upload_id) end
  T.eq(count(stored_uploads(RUN .. "many/")), 0)
end)

-- a database whose dump is more than one 8 MiB part after gzip (random hex compresses ~2x)
local admin <close> = pgdump.connect(env.get("SANDBOX_PG_ADMIN_URL"))
admin:query("DROP DATABASE IF EXISTS s3_uploads_src WITH (FORCE)")
admin:query("CREATE DATABASE s3_uploads_src")
local DB = string.format("postgresql://postgres:%s@127.0.0.1:%s/s3_uploads_src", env.get("SANDBOX_PG_ADMIN_PW"), env.get("SANDBOX_PG_PORT"))
do
  local db <close> = pgdump.connect(DB)
  db:query("CREATE TABLE noise AS SELECT g AS id, md5(random()::text) || md5(random()::text) || md5(random()::text) AS t " ..
           "FROM generate_series(1, 300000) g")
end

T.case("kill -9 of export-database mid-upload leaves an upload; the sweep lists it, then aborts it", function()
  -- parts wait 120 s at the proxy: the kill comes while they are in flight
  U.rules(P, [=[[{"method": "PUT", "match": "partNumber=", "action": "delay", "seconds": 120}]=] .. "]")
  local envs = {}
  for k, v in pairs(BASE) do envs[#envs + 1] = k .. "=" .. U.q(v) end
  envs[#envs + 1] = "DATABASE_URL=" .. U.q(DB)
  local pid = tonumber(U.out(string.format("env %s %s run export-database >%s 2>&1 & echo $!", table.concat(envs, " "),
                                           U.q(BIN), U.q(tmp .. "/export.log"))))
  T.ok(pid, "started")
  local started
  for _ = 1, 1200 do
    local log = U.read(P.log)
    if log:find("POST [^\n]*%?uploads=[^\n]* forward") and log:find("PUT [^\n]*partNumber=[^\n]* delay") then started = true; break end
    U.sh("sleep 0.1")
  end
  T.ok(started, "the multipart upload started: " .. U.read(tmp .. "/export.log"):sub(-400))
  U.sh("kill -9 " .. pid)
  os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.1; done")
  U.rules(P, "[]")
  local left = stored_uploads(RUN .. "database/")
  T.eq(count(left), 1, "the killed export's upload is still on the store")
  local _, key = next(left)
  T.match(key, "clubio%-db%-%d+%-%d+%.sql%.gz%.enc$")
  T.eq(direct:head(B, key), nil, "no object under the key")

  -- the next export notices it
  local r0 = run({"export-database"}, {DATABASE_URL = DB})
  T.eq(r0.status, 0, r0.stderr)
  T.match(r0.stderr, "1 unfinished multipart upload%(s%) under s3://[^\n]*retention uploads")

  -- a dry run lists it; with the default limit (24 h) a fresh upload is kept
  local r = run({"retention", "uploads", "--dry-run"})
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "keep%s+upload%s+" .. key:gsub("%p", "%%%0") .. "%s+started [^\n]*limit 24 h")
  r = run({"retention", "uploads", "--yes", "--json"})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.targets.uploads.aborted, 0)
  T.eq(count(stored_uploads(RUN .. "database/")), 1)

  -- older than the limit: a dry run says ABORT and changes nothing; --yes aborts it
  r = run({"retention", "uploads", "--dry-run"}, {RETENTION_STALE_UPLOAD_HOURS = "0"})
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "ABORT%s+upload%s+" .. key:gsub("%p", "%%%0"))
  T.match(r.stdout, "uploads: 0 kept, 1 would be aborted")
  T.eq(count(stored_uploads(RUN .. "database/")), 1)
  r = run({"retention", "uploads"}, {RETENTION_STALE_UPLOAD_HOURS = "0"})
  T.eq(r.status, 5, "refused without --yes in a non-interactive run")
  r = run({"retention", "uploads", "--yes", "--json"}, {RETENTION_STALE_UPLOAD_HOURS = "0"})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.targets.uploads.aborted, 1)
  T.eq(r.doc.result.targets.uploads.uploads[1].key, key)
  T.eq(count(stored_uploads(RUN .. "database/")), 0, "the upload is gone from the store")
  T.eq(#c:uploads{bucket = B, prefix = RUN}, 0)
  T.eq(direct:head(B, key), nil)
end)

T.case("a store without ListMultipartUploads (s3rver itself): reported, the rest of retention goes on", function()
  local r = run({"retention", "uploads", "--yes", "--json"}, {AWS_ENDPOINT_URL = env.get("AWS_ENDPOINT_URL")})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.targets.uploads.unsupported, true)
  T.match(r.stderr, "cannot list multipart uploads")
  T.match(r.stderr, "AbortIncompleteMultipartUpload")
  r = run({"retention", "uploads"}, {RETENTION_STALE_UPLOAD_HOURS = "soon"})
  T.eq(r.status, 3)
  T.match(r.stderr, "RETENTION_STALE_UPLOAD_HOURS must be a number of hours >= 0, got 'soon'")
end)

U.stop(P)
admin:query("DROP DATABASE IF EXISTS s3_uploads_src WITH (FORCE)")
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
