-- pgdump's memory stays bounded when the stages after the dump are slower than the dump: a
-- dump of ~100 MB of table data into a sink that reads at most ~20 MB/s must not pile the
-- database up in memory. Measured from outside the code under test: this process's peak RSS
-- (VmHWM in /proc/self/status), which no bookkeeping bug can hide. Its own process (own
-- ctest entry) so the high-water mark is not raised by other tests. No timing is asserted:
-- the slow sink only makes the dump run ahead of it, which is what used to grow the heap.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local pgdump = require "pgdump"
local crypto = require "crypto"
local env = require "env"

local ADMIN = env.get("SANDBOX_PG_ADMIN_URL")
local BASE = ADMIN:gsub("/postgres$", "")
local DB = "pgdump_memory_test"
local admin = pgdump.connect(ADMIN)

local function status_kib(field)
  local f <close> = assert(io.open("/proc/self/status"))
  for line in f:lines() do
    local v = line:match("^" .. field .. ":%s+(%d+) kB")
    if v then return tonumber(v) end
  end
  error("no " .. field .. " in /proc/self/status")
end

-- Under AddressSanitizer freed memory waits in a quarantine (256 MiB) instead of being reused,
-- so RSS says nothing there: the sanitizer build checks the dump's own count only.
local function sanitized()
  local f <close> = assert(io.open("/proc/self/maps"))
  return f:read("a"):find("libasan", 1, true) ~= nil
end
local ASAN = sanitized()
if ASAN then io.stderr:write("AddressSanitizer build: peak RSS bounds not checked\n") end

-- A reader that sleeps 3 ms after each 64 KiB: ~20 MB/s, far slower than the dump.
local SLOW_READER = "import sys, time\n" ..
  "while sys.stdin.buffer.read(65536):\n" ..
  "    time.sleep(0.003)\n"

admin:query('DROP DATABASE IF EXISTS "' .. DB .. '" WITH (FORCE)')
admin:query('CREATE DATABASE "' .. DB .. '"')
local db = pgdump.connect(BASE .. "/" .. DB)
-- ~100 MB of COPY text in two tables (so several work items and both workers), barely
-- compressible per row so that what piles up is really table data.
db:query([[CREATE TABLE big_a (id int PRIMARY KEY, body text)]])
db:query([[CREATE TABLE big_b (id int PRIMARY KEY, body text)]])
db:query([[INSERT INTO big_a SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 250000) g]])
db:query([[INSERT INTO big_b SELECT g, repeat(md5((-g)::text), 6) FROM generate_series(1, 250000) g]])
db:close()

local DATA = 2 * 250000 * (6 * 32 + 2) -- bytes of COPY text, at least (body, tab, newline)

T.case("dump into a slow sink keeps peak RSS bounded", function()
  local before = status_kib("VmHWM")
  local r = pipe.run{pgdump.dump{url = BASE .. "/" .. DB, jobs = 2},
                     pipe.command_sink{argv = {"python3", "-c", SLOW_READER}}}
  local after = status_kib("VmHWM")
  T.eq(r.pgdump.tables['public.big_a'].rows, 250000, "big_a rows")
  T.eq(r.pgdump.tables['public.big_b'].rows, 250000, "big_b rows")
  T.ok(r.bytes_out > DATA, "the whole dump reached the sink (" .. r.bytes_out .. " bytes)")
  -- The dump holds at most 16 MiB of table data (plus a few blocks); the pipe's queues are
  -- 1 MiB each. 48 MiB of growth is generous, and still half of the data.
  local grown = (after - before) // 1024
  io.stderr:write(string.format("peak RSS %d -> %d MiB, dump buffered at most %d MiB\n",
    before // 1024, after // 1024, r.pgdump.peak_buffered >> 20))
  T.ok(ASAN or grown < 48, "peak RSS grew by " .. grown .. " MiB (bound 48) for " .. (DATA >> 20) ..
       " MiB of data")
  T.eq(r.pgdump.buffer_limit, 16 * 1048576, "jobs = 2: 8 MiB for the item being read, 8 ahead")
  -- each of the two bounds is checked before a block (256 KiB here) is added
  T.ok(r.pgdump.peak_buffered <= r.pgdump.buffer_limit + 2 * 262144,
       "the dump's own count of buffered bytes stays under its bound")
end)

T.case("dump -> gzip -> slow sink keeps peak RSS bounded too", function()
  local before = status_kib("VmHWM")
  local r = pipe.run{pgdump.dump{url = BASE .. "/" .. DB, jobs = 2}, crypto.gzip{level = 1},
                     pipe.command_sink{argv = {"python3", "-c", SLOW_READER}}}
  local after = status_kib("VmHWM")
  T.eq(r.gzip.bytes_in, r.bytes_in, "gzip saw the whole dump")
  T.ok(r.pgdump.peak_buffered <= r.pgdump.buffer_limit + 2 * 262144, "dump's buffered bytes bounded")
  T.ok(ASAN or math.max(after, before) // 1024 < 96, "peak RSS " .. (after // 1024) .. " MiB (bound 96)")
end)

T.case("many small parts on three workers: still in order, complete and bounded", function()
  -- more workers than tables and parts far smaller than the bounds: the reader must never
  -- wait for a part whose worker is blocked behind the budget (that would hang here)
  local r = pipe.run{pgdump.dump{url = BASE .. "/" .. DB, jobs = 3, split_bytes = 1048576},
                     crypto.sha256{label = "plain"},
                     pipe.command_sink{argv = {"python3", "-c", SLOW_READER}}}
  T.eq(r.pgdump.tables['public.big_a'].rows, 250000, "big_a rows")
  T.eq(r.pgdump.tables['public.big_b'].rows, 250000, "big_b rows")
  T.eq(r.pgdump.buffer_limit, 16 * 1048576, "8 MiB ahead at least")
  T.ok(r.pgdump.peak_buffered <= r.pgdump.buffer_limit + 3 * 262144, "buffered bytes bounded")
  -- the same bytes as a dump on one worker with whole tables: the order does not depend on timing
  local one = pipe.run{pgdump.dump{url = BASE .. "/" .. DB, jobs = 1, split_bytes = 1 << 40},
                       crypto.sha256{label = "plain"}, pipe.command_sink{argv = {"sh", "-c", "cat >/dev/null"}}}
  T.eq(r.pgdump.tables['public.big_a'].sha256, one.pgdump.tables['public.big_a'].sha256, "big_a digest")
  T.eq(r.pgdump.tables['public.big_b'].sha256, one.pgdump.tables['public.big_b'].sha256, "big_b digest")
end)

admin:query('DROP DATABASE IF EXISTS "' .. DB .. '" WITH (FORCE)')
admin:close()
return T.finish()
