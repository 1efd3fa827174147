-- Fault injection: a small proxy (fault_proxy.py, python3 stdlib) between the client and the
-- real s3rver answers chosen requests with 503/500, resets or stalls connections, or cuts
-- bodies. Uploads must still end with exactly the right bytes, or fail cleanly with no object.
-- The proxy is the only stand-in here; every request it forwards is served by s3rver.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local s3 = require "s3"
local pipe = require "pipe"
local env = require "env"

local B = env.get("BACKUP_S3_BUCKET")
local tmp = T.tmpdir()
local MiB = 1024 * 1024
local RUN = string.format("faults%d-%d", os.time(), math.random(1e6))
local P = U.proxy(tmp)
local c = s3.client{endpoint = P.url, retry_base = 0.02, stall_timeout = 2}
local direct = s3.client{}
local src = U.random_file(tmp, "src.bin", 17 * MiB + 99)
local src_sha = U.sha256(src)

local function count(pattern)
  local n = 0
  for line in io.lines(P.log) do if line:find(pattern) then n = n + 1 end end
  return n
end

local function upload(key, opts)
  opts = opts or {}
  return pipe.run{pipe.file(src), c:upload{bucket = B, key = key, part_size = 5 * MiB, concurrency = opts.concurrency or 3,
                                           label = "up"}}
end

local function check_object(key)
  local out = tmp .. "/check.out"
  pipe.run{direct:download{bucket = B, key = key}, pipe.file_sink(out, {overwrite = true})}
  T.eq(U.sha256(out), src_sha, "bytes of " .. key)
end

T.case("503 SlowDown and 500 on parts, a reset and a 500 on completion: the upload still succeeds", function()
  U.rules(P, [=[[
    {"method": "PUT", "match": "partNumber=2&", "action": "503", "times": 2},
    {"method": "PUT", "match": "partNumber=3&", "action": "reset", "times": 1},
    {"method": "PUT", "match": "partNumber=4&", "action": "500", "times": 1},
    {"method": "POST", "match": "uploadId=", "action": "500", "times": 1}
  ]]=])
  local key = RUN .. "/retried.bin"
  local r = upload(key)
  T.eq(r.up.bytes, 17 * MiB + 99)
  T.eq(r.up.parts, 4)
  T.eq(count("partNumber=2&.* 503"), 2)
  T.eq(count("partNumber=3&.* reset"), 1)
  check_object(key)
end)

T.case("a stalled part is abandoned after stall_timeout and sent again", function()
  U.rules(P, [=[[{"method": "PUT", "match": "partNumber=1&", "action": "stall", "seconds": 6, "times": 1}]]=])
  local key = RUN .. "/stalled.bin"
  upload(key)
  T.eq(count("partNumber=1&.* stall"), 1)
  T.ok(count("partNumber=1&.* forward") >= 1, "resent")
  check_object(key)
end)

T.case("a part that keeps failing aborts the upload: no object, AbortMultipartUpload sent", function()
  U.rules(P, [=[[{"method": "PUT", "match": "partNumber=3&", "action": "503"}]]=])
  local key = RUN .. "/failed.bin"
  local e = T.raises(upload, key)
  T.match(tostring(e), "s3://")
  T.eq(e.retryable, true)
  T.eq(direct:head(B, key), nil, "no object")
  T.eq(count("^DELETE .*uploadId="), 1, "abort sent")
  T.eq(count("^POST .*uploadId="), 0, "never completed")
end)

T.case("a failing single PUT leaves nothing", function()
  U.rules(P, [=[[{"method": "PUT", "action": "500"}]]=])
  local key = RUN .. "/small.bin"
  local e = T.raises(pipe.run, {pipe.string("small"), c:upload{bucket = B, key = key}})
  T.eq(e.code, "s3.internal")
  T.eq(e.retryable, true)
  T.eq(direct:head(B, key), nil)
end)

T.case("ranged downloads survive 503s, resets and cut bodies", function()
  local key = RUN .. "/retried.bin"
  U.rules(P, [=[[
    {"method": "GET", "match": "retried", "action": "503", "times": 2},
    {"method": "GET", "match": "retried", "action": "reset", "times": 1},
    {"method": "GET", "match": "retried", "action": "truncate", "times": 2}
  ]]=])
  local out = tmp .. "/down.out"
  pipe.run{c:download{bucket = B, key = key, part_size = 5 * MiB, concurrency = 2}, pipe.file_sink(out)}
  T.eq(U.sha256(out), src_sha)
  T.ok(count("truncate") == 2, "bodies were cut")
end)

T.case("a range cut after the reader took its first bytes is completed from there, byte-identical", function()
  -- the proxy sends the first 1 MiB of two ranges, then waits; their bytes must reach the sink
  -- before those ranges are whole (they are handed on as they arrive), and the retries skip them
  local key = RUN .. "/retried.bin"
  local flag = tmp .. "/cut.flag"
  os.remove(flag)
  U.rules(P, string.format([=[[{"method": "GET", "match": "retried", "action": "cut", "bytes": %d,
                                "until_file": %q, "times": 2}]]=], MiB, flag))
  local out = tmp .. "/cut.out"
  local script = tmp .. "/cut.lua"
  U.write(script, string.format([[
    local s3, pipe = require "s3", require "pipe"
    local c = s3.client{endpoint = %q, retry_base = 0.02}
    local r = pipe.run{c:download{bucket = %q, key = %q, part_size = 5 * 1024 * 1024, concurrency = 2,
                                  label = "down"}, pipe.file_sink(%q)}
    print("refetched " .. r.down.refetched_bytes .. " bytes " .. r.down.bytes)
  ]], P.url, B, key, out))
  U.sh(string.format("%s run %s > %s 2>&1 & echo $! > %s", U.q(os.getenv("CLUBIO_DR_BIN")), U.q(script),
                     U.q(tmp .. "/cut.log"), U.q(tmp .. "/cut.pid")))
  local pid = U.read(tmp .. "/cut.pid"):match("%d+")
  -- the sink holds the first range's first MiB while the proxy still holds its connection
  local seen = 0
  for _ = 1, 1000 do
    -- file_sink writes a temp file beside `out`, renamed at the end
    seen = tonumber(U.out("cat " .. U.q(tmp) .. "/.cut.out.tmp-* 2>/dev/null | wc -c")) or 0
    if seen >= MiB then break end
    U.sh("sleep 0.02")
  end
  U.write(flag, "go")
  U.out("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
  T.eq(seen, MiB, "the first range's bytes were handed on before it was whole")
  T.eq(count("GET .*retried.* cut"), 2)
  local log = U.read(tmp .. "/cut.log")
  T.match(log, "refetched " .. 2 * MiB .. " bytes " .. (17 * MiB + 99), "the retries skipped what was stored")
  T.eq(U.sha256(out), src_sha)
end)

T.case("a ranged GET answered 200 without Content-Range (Range ignored) enters the stream only if it is the whole object", function()
  local key = RUN .. "/retried.bin"
  -- a 200 to a range of a larger object cannot be trusted to hold that range: retried, then a
  -- clear error, and nothing of it handed on
  U.rules(P, [=[[{"method": "GET", "match": "retried", "action": "drop-range"}]]=])
  local out = tmp .. "/norange.out"
  local e = T.raises(pipe.run, {c:download{bucket = B, key = key, part_size = 5 * MiB, concurrency = 2},
                                pipe.count{label = "n"}, pipe.file_sink(out)})
  T.eq(e.code, "s3.short_read")
  T.match(e.message, "without that range")
  T.ok(count("GET .*retried.* drop%-range") >= 5, "retried")
  -- an object of one range: the whole object is that range
  local small = RUN .. "/small-one-range.bin"
  direct:put(B, small, "just one range")
  U.rules(P, [=[[{"method": "GET", "match": "small-one-range", "action": "drop-range"}]]=])
  local r = pipe.run{c:download{bucket = B, key = small}, pipe.buffer{}}
  T.eq(r.buffer.data, "just one range")
  T.eq(count("small%-one%-range.* drop%-range"), 1)
end)

T.case("RequestTimeTooSkewed is explained with the measured offset", function()
  U.rules(P, [=[[{"action": "skew", "seconds": 3600}]]=])
  local e = T.raises(c.put, c, B, RUN .. "/skew", "x")
  T.eq(e.code, "s3.clock_skew")
  T.match(e.hint, "%-3%d%d%d s off")
end)

T.case("cancelling (SIGINT) a running upload aborts it and leaves no object", function()
  U.rules(P, [=[[{"method": "PUT", "match": "partNumber=2&", "action": "stall", "seconds": 30}]]=])
  local key = RUN .. "/cancelled.bin"
  local script = tmp .. "/cancel.lua"
  U.write(script, string.format([[
    local s3, pipe = require "s3", require "pipe"
    local c = s3.client{endpoint = %q, stall_timeout = 60}
    pipe.run{pipe.file(%q), c:upload{bucket = %q, key = %q, part_size = 5 * 1024 * 1024, concurrency = 1}}
  ]], P.url, src, B, key))
  -- start the child, wait until the stalled part is in flight, then interrupt it
  U.sh(string.format("%s run %s > %s 2>&1 & echo $! > %s", U.q(os.getenv("CLUBIO_DR_BIN")), U.q(script),
                     U.q(tmp .. "/cancel.out"), U.q(tmp .. "/cancel.pid")))
  local pid = U.read(tmp .. "/cancel.pid"):match("%d+")
  for _ = 1, 400 do
    if count("partNumber=2&.* stall") > 0 then break end
    U.sh("sleep 0.05")
  end
  U.sh("kill -INT " .. pid)
  local status = U.out("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.1; done; echo done")
  T.eq(status, "done\n")
  T.eq(direct:head(B, key), nil, "no object")
  T.eq(count("^DELETE .*uploadId="), 1, "abort sent after the cancel")
end)

U.stop(P)
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
