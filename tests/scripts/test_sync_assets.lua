-- sync-assets end to end on the sandbox's S3 peer: a first sync copies everything, a second
-- nothing, a changed and a new object only those; --dry-run lists without copying; the
-- summary's counts and bytes; failure paths (missing variable, S3 unreachable, arguments).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, s3 = require "env", require "s3"

local SRC, DST = env.get("ASSETS_S3_BUCKET"), env.get("BACKUP_S3_BUCKET")
local SP = "test-sync-" .. U.TAG .. "/"
local DP = "test-sync-" .. U.TAG .. "/assets/"
local E = {ASSETS_PREFIX = SP, ASSETS_BACKUP_PREFIX = DP, CLUBIO_DR_JOURNAL = "off"}
local c = s3.client{}

-- (no "+" in keys: s3rver reads x-amz-copy-source with "+" as a space; the aws CLI fails the same way)
local files = {["img/logo.png"] = string.rep("L", 3000), ["img/hero.jpg"] = string.rep("H", 70000),
               ["css/site.css"] = "body { color: #123 }", ["fonts/a b (1).woff2"] = string.rep("F", 1234),
               ["index.html"] = "<html></html>"}
local total = 0
for k, v in pairs(files) do c:put(SRC, SP .. k, v); total = total + #v end
c:put(SRC, SP .. "empty-folder/", "") -- a folder marker is not an asset

local function dst_keys()
  local out = {}
  for o in c:list{bucket = DST, prefix = DP} do out[o.key:sub(#DP + 1)] = o end
  return out
end

T.case("--dry-run lists what would be copied, copies nothing", function()
  local r = U.run({"sync-assets", "--dry-run"}, E)
  T.eq(r.status, 0, r.stderr)
  for k, v in pairs(files) do T.match(r.stdout, "%s" .. #v .. "  " .. (SP .. k):gsub("%p", "%%%0") .. "\n") end
  T.match(r.stdout, "dry run: 5 of 5 object%(s%) would be copied")
  T.eq(next(dst_keys()), nil)
  r = U.run({"sync-assets", "--dry-run", "--json"}, E)
  T.eq(r.doc.result.would_copy, 5)
  T.eq(r.doc.result.would_copy_bytes, total)
  T.eq(r.doc.result.copied, 0)
end)

-- (the storage class of copies is not checked: s3rver keeps the source's on a CopyObject with
-- x-amz-metadata-directive COPY, whatever x-amz-storage-class says; AWS applies the header)
T.case("first sync copies everything; the second copies nothing", function()
  local r = U.run({"sync-assets", "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.copied, 5)
  T.eq(r.doc.result.bytes, total)
  T.eq(r.doc.result.scanned, 5)
  T.match(r.stderr, "%[5/5%]")
  local got = dst_keys()
  for k, v in pairs(files) do
    T.ok(got[k], k .. " copied")
    T.eq(got[k].size, #v)
  end
  T.eq(c:get(DST, DP .. "css/site.css"), files["css/site.css"])
  r = U.run({"sync-assets"}, E)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "0 copied %(0 B%), 5 up to date, 5 scanned")
end)

T.case("only what changed is copied again", function()
  require("time").sleep(1.1) -- S3 times have one-second resolution
  c:put(SRC, SP .. "css/site.css", "body { color: #456; margin: 0 }")
  c:put(SRC, SP .. "img/new.svg", "<svg/>")
  local r = U.run({"sync-assets", "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.copied, 2)
  T.eq(r.doc.result.skipped, 4)
  T.eq(r.doc.result.bytes, #"body { color: #456; margin: 0 }" + #"<svg/>")
  T.eq(c:get(DST, DP .. "css/site.css"), "body { color: #456; margin: 0 }")
  T.eq(c:get(DST, DP .. "img/new.svg"), "<svg/>")
end)

T.case("failure paths: missing variable, S3 unreachable, same place, arguments", function()
  local r = U.run({"sync-assets"}, {ASSETS_S3_BUCKET = false, CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 3)
  T.match(r.stderr, "ASSETS_S3_BUCKET")
  r = U.run({"sync-assets"}, {ASSETS_PREFIX = SP, ASSETS_BACKUP_PREFIX = DP, CLUBIO_DR_JOURNAL = "off",
                              AWS_ENDPOINT_URL = "http://127.0.0.1:" .. U.closed_port(), AWS_MAX_ATTEMPTS = "1"})
  T.eq(r.status, 1)
  T.match(r.stderr, "\nclubio%-dr: [^\n]*127%.0%.0%.1")
  r = U.run({"sync-assets"}, {BACKUP_S3_BUCKET = SRC, ASSETS_PREFIX = SP, ASSETS_BACKUP_PREFIX = SP, CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 3)
  T.match(r.stderr, "same place")
  r = U.run({"sync-assets", "now"}, E)
  T.eq(r.status, 2)
end)

return T.finish()
