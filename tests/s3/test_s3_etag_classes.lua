-- The final multipart ETag is always checked, and the store's errors exit with their class.
--
-- Through fault_proxy.py (a proxy in front of the sandbox's real s3rver; every request it does
-- not change is served by s3rver): a completion answered with an empty ETag, as Ceph RGW does,
-- makes the upload take the object's ETag from a HEAD. s3rver's own ETags are the md5 of the
-- whole object; the proxy can also give the HEAD the ETag AWS would (md5 of the parts' md5s,
-- "-N", computed from the parts it forwarded) or one that is a digit off — a mismatch fails the
-- upload and leaves no object. Errors: a 400 InvalidArgument is a failure (exit 1), never a
-- usage error (exit 2, bad command line); an invalid storage class is a configuration error.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local s3, pipe, env, proc = require "s3", require "pipe", require "env", require "proc"

local B = env.get("BACKUP_S3_BUCKET")
local BIN = env.get("CLUBIO_DR_BIN")
local tmp = T.tmpdir()
local MiB = 1024 * 1024
local RUN = string.format("etag%d-%d", os.time(), math.random(1e6))
local P = U.proxy(tmp)
local c = s3.client{endpoint = P.url, retry_base = 0.02}
local direct = s3.client{}
local src = U.random_file(tmp, "src.bin", 12 * MiB + 7) -- three 5 MiB parts

-- the AWS multipart ETag of src cut in 5 MiB parts, and the md5 of the whole file
local function md5s()
  local py = [[
import hashlib,sys
d=open(sys.argv[1],'rb').read()
ps=[hashlib.md5(d[i:i+5*1024*1024]).digest() for i in range(0,len(d),5*1024*1024)]
print(hashlib.md5(b''.join(ps)).hexdigest()+'-%d'%len(ps), hashlib.md5(d).hexdigest())]]
  return U.out("python3 -c " .. U.q(py) .. " " .. U.q(src)):match("^(%S+) (%x+)")
end
local AWS_ETAG, WHOLE_MD5 = md5s()

local function upload(key)
  return pipe.run{pipe.file(src), c:upload{bucket = B, key = key, part_size = 5 * MiB, concurrency = 2, label = "up"}}
end

T.case("an empty ETag on completion: the object's ETag is taken from a HEAD (s3rver's: the md5 of the object)", function()
  U.rules(P, [=[[{"method": "POST", "match": "uploadId=", "action": "blank-etag"}]=] .. "]")
  local key = RUN .. "/blank.bin"
  local r = upload(key)
  T.eq(r.up.parts, 3)
  T.eq(r.up.etag, WHOLE_MD5, "the etag came from the HEAD, not the empty completion")
  T.match(U.read(P.log), "POST [^\n]*uploadId=[^\n]* blank%-etag")
  T.eq(direct:head(B, key).size, 12 * MiB + 7)
end)

T.case("an empty ETag on completion, the AWS form on the HEAD: checked against the parts' md5s and accepted", function()
  U.rules(P, [=[[{"method": "POST", "match": "uploadId=", "action": "blank-etag"},
                 {"method": "HEAD", "action": "aws-etag"}]]=])
  local key = RUN .. "/aws-form.bin"
  local r = upload(key)
  T.eq(r.up.etag, AWS_ETAG)
  T.match(AWS_ETAG, "^%x+%-3$")
end)

T.case("an empty ETag on completion and a wrong one on the HEAD: the upload fails and leaves no object", function()
  U.rules(P, [=[[{"method": "POST", "match": "uploadId=", "action": "blank-etag"},
                 {"method": "HEAD", "action": "aws-etag", "corrupt": true}]]=])
  local key = RUN .. "/corrupt.bin"
  local ok, err = pcall(upload, key)
  T.eq(ok, false)
  T.eq(err.code, "s3.etag_mismatch", tostring(err))
  T.eq(err.class, "verify")
  T.match(tostring(err), "from a head")
  T.eq(direct:head(B, key), nil, "the object that failed its check was removed")
end)

T.case("a completion whose ETag is in AWS form but not the parts' md5s fails, and leaves no object", function()
  U.rules(P, [=[[{"method": "POST", "match": "uploadId=", "action": "blank-etag",
                  "etag": "\"0123456789abcdef0123456789abcdef-3\""}]]=])
  local key = RUN .. "/wrong-complete.bin"
  local ok, err = pcall(upload, key)
  T.eq(ok, false)
  T.eq(err.code, "s3.etag_mismatch", tostring(err))
  T.no_match(tostring(err), "from a head")
  T.eq(direct:head(B, key), nil)
  -- and without any rule, s3rver's own form (the md5 of the object) is accepted: per-part ETags
  -- and the size were checked
  U.rules(P, "[]")
  T.eq(upload(RUN .. "/plain.bin").up.etag, WHOLE_MD5)
end)

T.case("s3 errors exit with their class: 400 InvalidArgument is a failure, InvalidStorageClass a config error", function()
  U.rules(P, [=[[{"method": "PUT", "action": "400", "code": "InvalidArgument"}]=] .. "]")
  local ok, err = pcall(c.put, c, B, RUN .. "/x.txt", "x")
  T.eq(ok, false)
  T.eq(err.code, "s3.invalid_argument")
  T.eq(err.class, "failure")
  local dir = tmp .. "/config"
  U.sh("mkdir -p " .. U.q(dir))
  U.write(dir .. "/features.json", '{"beta": true}')
  local e = {AWS_ENDPOINT_URL = P.url, CONFIG_DIR = dir, CLUBIO_DR_JOURNAL = "off", CONFIG_BACKUP_PREFIX = RUN .. "/configs/",
             APP_VERSION = "test"}
  local r = proc.run{argv = {BIN, "run", "backup-configs"}, env = e}
  T.eq(r.status, 1, r.stderr)
  T.match(r.stderr, "invalid argument")
  U.rules(P, [=[[{"method": "PUT", "action": "400", "code": "InvalidStorageClass"}]=] .. "]")
  r = proc.run{argv = {BIN, "run", "backup-configs"}, env = e}
  T.eq(r.status, 3, r.stderr)
  T.match(r.stderr, "invalid storage class")
  -- and a store that lacks an operation says so, as a failure
  ok, err = pcall(direct.uploads, direct, {bucket = B, prefix = RUN})
  T.eq(ok, false)
  T.eq(err.code, "s3.not_implemented")
  T.eq(err.class, "failure")
end)

U.stop(P)
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
