-- Interop with Debian's aws CLI (/usr/bin/aws) on the same s3rver: what we upload (single PUT
-- and multipart) aws reads byte-identically, and what aws uploads (multipart included) we read
-- byte-identically; both list the same keys.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local s3 = require "s3"
local pipe = require "pipe"
local env = require "env"

local B = env.get("BACKUP_S3_BUCKET")
local tmp = T.tmpdir()
local c = s3.client{}
local MiB = 1024 * 1024
local RUN = string.format("aws%d-%d", os.time(), math.random(1e6))

T.case("what we upload (multipart and single PUT), aws reads byte-identically", function()
  for _, case in ipairs{{"multi.bin", 17 * MiB + 3}, {"single key+é.bin", 300000}} do
    local src = U.random_file(tmp, "src.bin", case[2])
    local key = RUN .. "/ours/" .. case[1]
    pipe.run{pipe.file(src), c:upload{bucket = B, key = key, part_size = 5 * MiB, concurrency = 2}}
    local out = tmp .. "/aws.out"
    U.sh(U.aws(string.format("s3 cp --quiet %s %s", U.q("s3://" .. B .. "/" .. key), U.q(out))))
    T.eq(U.sha256(out), U.sha256(src), key)
    os.remove(out)
  end
end)

T.case("what aws uploads (multipart included), we read byte-identically", function()
  local src = U.random_file(tmp, "theirs.bin", 21 * MiB + 11)
  local key = RUN .. "/theirs/big file.bin"
  -- aws switches to multipart above 8 MiB by default
  U.sh(U.aws(string.format("s3 cp --quiet %s %s", U.q(src), U.q("s3://" .. B .. "/" .. key))))
  local out = tmp .. "/ours.out"
  local r = pipe.run{c:download{bucket = B, key = key, part_size = 5 * MiB, concurrency = 3, label = "down"},
                     pipe.file_sink(out)}
  T.eq(r.down.bytes, 21 * MiB + 11)
  T.eq(U.sha256(out), U.sha256(src))
  -- and from a stream on aws' stdin
  U.sh(string.format("head -c 100000 %s | %s", U.q(src), U.aws("s3 cp --quiet - " .. U.q("s3://" .. B .. "/" .. RUN .. "/theirs/stdin"))))
  T.eq(c:get(B, RUN .. "/theirs/stdin"), U.read(src):sub(1, 100000))
end)

T.case("we and aws list the same keys and sizes", function()
  for i = 1, 5 do c:put(B, RUN .. "/list/k " .. i, string.rep("x", i)) end
  local theirs = U.out(U.aws(string.format("s3api list-objects-v2 --bucket %s --prefix %s --query 'Contents[].[Key,Size]' --output text",
    B, U.q(RUN .. "/"))))
  local n = 0
  for o in c:list{bucket = B, prefix = RUN .. "/"} do
    n = n + 1
    T.ok(theirs:find(o.key .. "\t" .. o.size, 1, true), o.key)
  end
  local lines = select(2, theirs:gsub("\n", ""))
  T.eq(n, lines)
end)

os.execute("rm -rf " .. U.q(tmp))
return T.finish()
