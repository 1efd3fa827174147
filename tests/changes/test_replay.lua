-- The replay engine (changes.replayer, modules/changes/replay.c) against the stock psql as the
-- oracle: the same segment SQL applied by `psql -f` and by rp:sink must leave the same tables.
-- The segments are written by hand in the archive's format (changes.h) so that they hold what
-- the pipeline's statement parser must get right: quotes, backslash escapes, control
-- characters, bytea, arrays, NULL against the empty string, quoted identifiers holding quotes
-- and "$1", REPLICA IDENTITY FULL's ctid form, TRUNCATE, runs of inserts short (prepared
-- INSERTs) and long (COPY) interleaved with updates, more statement shapes than the prepared
-- statement cache holds; and a failing statement in the middle of a pipeline: nothing of its
-- segment is applied, the error names the statement's shape, and the next segment applies.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local env, proc, pipe, pgdump, changes = require "env", require "proc", require "pipe", require "pgdump", require "changes"

local ADMIN = env.get("SANDBOX_PG_ADMIN_URL")
local base_url = ADMIN:gsub("/postgres$", "/")
local TAG = tostring(os.time()) .. tostring(math.random(1000, 9999))
local A, B = "rp_ours_" .. TAG, "rp_psql_" .. TAG
local dir = T.tmpdir()

local SCHEMA = [[
  CREATE TABLE t (id int PRIMARY KEY, s text, b bytea, a text[], j jsonb, n numeric, ts timestamptz);
  CREATE TABLE "we'ird $1 ""t""" ("id $1" int PRIMARY KEY, "v'" text);
  CREATE TABLE full_t (a int, b text);
  ALTER TABLE full_t REPLICA IDENTITY FULL;
  CREATE TABLE bulk (id int PRIMARY KEY, v text);
  CREATE TABLE wide (id int PRIMARY KEY, v text);
  INSERT INTO full_t VALUES (1, 'one'), (1, 'one'), (2, NULL);
  INSERT INTO wide SELECT g, 'w' FROM generate_series(1, 10) g;
]]
local TABLES = {"public.t", [[public."we'ird $1 ""t"""]], "public.full_t", "public.bulk", "public.wide"}

local admin <close> = pgdump.connect(ADMIN)
for _, db in ipairs{A, B} do
  admin:query("CREATE DATABASE " .. db)
  T.psql(db, SCHEMA)
end
local guard <close> = setmetatable({}, {__close = function()
  for _, db in ipairs{A, B} do pcall(admin.query, admin, "DROP DATABASE IF EXISTS " .. db .. " WITH (FORCE)") end
end})

local lsn = 0x1000000
local function txn(lines)
  lsn = lsn + 0x100
  local out = {string.format("-- txn commit_lsn=%s xid=%d time=2026-12-02T18:00:%02d.%06dZ", changes.lsn_text(lsn),
                             lsn % 100000, (lsn // 0x100) % 60, lsn % 1000000), "BEGIN;"}
  for _, l in ipairs(lines) do out[#out + 1] = l end
  out[#out + 1] = "COMMIT;"
  return table.concat(out, "\n")
end
local function segment(txns)
  return "-- clubio-dr change archive segment (format 1)\n" .. table.concat(txns, "\n") .. "\n-- sequences at the cut\n"
end

-- segment 1: values the statement parser must carry exactly
local s1 = {}
s1[#s1 + 1] = txn{
  "COPY public.t (id, s, b, a, j, n, ts) FROM stdin;",
  "1\tplain\t\\\\x0001ff\t{1,2,3}\t{\"k\": \"v\"}\t1.50\t2026-12-02 18:00:00+00",
  "2\ttab\\there, new\\nline, back\\\\slash, quote ' and \"\t\\N\t{}\tnull\t-0\t\\N",
  "3\t\t\\\\x\t\\N\t[]\t\\N\tinfinity",
  "\\.",
  "UPDATE public.t SET s = E'it''s \\\\ a\\nb\\tc \\x01 end', b = E'\\\\xdeadbeef' WHERE id = '1';",
  "UPDATE public.t SET s = 'single '' quote', a = '{4,NULL,\"x y\"}' WHERE id = '2';",
  "UPDATE public.t SET s = '', j = '{\"a\": [1, \"$1\", \"''\"]}' WHERE id = '3';",
  "UPDATE public.t SET s = 'ünïcødé ✓ $1 $2', n = '12345678901234567890.123' WHERE id = '3';",
  [[COPY public."we'ird $1 ""t""" ("id $1", "v'") FROM stdin;]],
  "1\tx'y",
  "\\.",
  [[UPDATE public."we'ird $1 ""t""" SET "v'" = 'a''b $1' WHERE "id $1" = '1';]],
  "UPDATE public.full_t SET b = 'two' WHERE ctid = (SELECT ctid FROM public.full_t WHERE a = '2' AND b IS NULL LIMIT 1);",
  "DELETE FROM public.full_t WHERE ctid = (SELECT ctid FROM public.full_t WHERE a = '1' AND b = 'one' LIMIT 1);",
}
-- long runs (COPY) between short ones (prepared INSERTs), across transactions
for k = 1, 5 do
  local rows = {"COPY public.bulk (id, v) FROM stdin;"}
  for i = 1, (k % 2 == 1) and 150 or 3 do rows[#rows + 1] = string.format("%d\tv %d\\t%d", k * 1000 + i, k, i) end
  rows[#rows + 1] = "\\."
  rows[#rows + 1] = string.format("UPDATE public.bulk SET v = 'upd %d' WHERE id = '%d';", k, k * 1000 + 1)
  rows[#rows + 1] = string.format("DELETE FROM public.bulk WHERE id = '%d';", k * 1000 + 2)
  s1[#s1 + 1] = txn(rows)
end
s1[#s1 + 1] = txn{"TRUNCATE TABLE public.wide;", "COPY public.wide (id, v) FROM stdin;", "1\tafter truncate", "\\."}
-- more statement shapes than the prepared statement cache (4,096) holds: the rest go unnamed
local many = {}
for i = 1, 4200 do many[#many + 1] = string.format("UPDATE public.wide SET v = 'shape %d' WHERE id = '1' AND %d = %d;", i, i, i) end
s1[#s1 + 1] = txn(many)
local seg1 = segment(s1)

-- segment 2: its second transaction fails in the middle of the pipeline (a duplicate key)
local seg2 = segment{
  txn{"UPDATE public.t SET s = 'from segment 2' WHERE id = '1';"},
  txn{"COPY public.bulk (id, v) FROM stdin;", "9001\tnew", "1001\tduplicate", "\\.", "UPDATE public.t SET s = 'never' WHERE id = '2';"},
}
-- segment 3: applies after the failure, with the shapes segment 1 prepared
local seg3 = segment{txn{"UPDATE public.t SET s = 'from segment 3' WHERE id = '1';",
                         "COPY public.bulk (id, v) FROM stdin;", "9002\tafter the failure", "\\."}}

local function digests(db)
  local c <close> = pgdump.connect(base_url .. db)
  return T.table_states(c, TABLES)
end
local function psql_file(db, sql)
  local f = dir .. "/seg.sql"
  T.write(f, sql)
  local e = T.pg_env(db)
  local r = proc.run{argv = {"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", f}, env = e}
  return r.status == 0, r.stderr
end

local rp <close> = changes.replayer{url = base_url .. A}

T.case("a segment of awkward values, long and short runs and 4,200 shapes: as psql leaves it", function()
  local ok, why = psql_file(B, seg1)
  T.ok(ok, "psql applies segment 1: " .. tostring(why))
  local r = pipe.run{pipe.string(seg1), rp:sink{label = "replay"}}
  T.eq(r.replay.applied, #s1, "every transaction applied")
  local ours, theirs = digests(A), digests(B)
  for _, t in ipairs(TABLES) do T.eq(ours[t], theirs[t], t .. " as psql left it") end
  -- and the values themselves, read back (a digest match could hide a shared mistake)
  local c <close> = pgdump.connect(base_url .. A)
  local row = c:query("SELECT s, encode(b, 'hex') AS b FROM t WHERE id = 1")[1]
  T.eq(row.s, "it's \\ a\nb\tc \1 end", "E'' escapes undone")
  T.eq(row.b, "deadbeef", "bytea")
  T.eq(c:query("SELECT s FROM t WHERE id = 3")[1].s, "ünïcødé ✓ $1 $2", "unicode and dollar signs")
  T.eq(c:query([[SELECT "v'" AS v FROM "we'ird $1 ""t"""]])[1].v, "a'b $1", "quoted identifiers")
  T.eq(c:query("SELECT v FROM wide WHERE id = 1")[1].v, "shape 4200", "the last unnamed statement")
end)

T.case("a failing statement mid-pipeline: nothing of the segment, its shape named; the next applies", function()
  local before = digests(A)
  local ok, err = pcall(pipe.run, {pipe.string(seg2), rp:sink{label = "replay"}})
  T.ok(not ok, "segment 2 fails")
  local msg = type(err) == "table" and err.message or tostring(err)
  T.match(msg, "INSERT INTO public.bulk %(id, v%) VALUES %(%$1, %$2%)", "the failing statement's shape")
  T.match(msg, "duplicate key", "the server's reason")
  T.no_match(msg, "duplicate\t", "no values in the message")
  local after = digests(A)
  for _, t in ipairs(TABLES) do T.eq(after[t], before[t], t .. " unchanged by the failed segment") end
  local r = pipe.run{pipe.string(seg3), rp:sink{label = "replay"}}
  T.eq(r.replay.applied, 1, "segment 3 applied")
  local c <close> = pgdump.connect(base_url .. A)
  T.eq(c:query("SELECT s FROM t WHERE id = 1")[1].s, "from segment 3", "its update")
  T.eq(c:query("SELECT v FROM bulk WHERE id = 9002")[1].v, "after the failure", "its insert")
end)

T.case("an archived UPDATE or DELETE that finds no row: the target has diverged; nothing applied", function()
  local before = digests(A)
  for _, line in ipairs{"UPDATE public.t SET s = 'gone' WHERE id = '999';", "DELETE FROM public.bulk WHERE id = '424242';"} do
    local seg = segment{txn{"UPDATE public.t SET s = 'first' WHERE id = '2';"}, txn{line}}
    local ok, err = pcall(pipe.run, {pipe.string(seg), rp:sink{label = "replay"}})
    T.ok(not ok, "refused: " .. line)
    T.eq(err.class, "verify", "a verification failure (exit 4)")
    T.eq(err.code, "verify.replay-diverged")
    T.match(err.message, "found 0 rows instead of 1")
    T.match(err.message, line:match("^(%u+)"), "the statement's kind")
    T.no_match(err.message, "999", "no values in the message")
  end
  local after = digests(A)
  for _, t in ipairs(TABLES) do T.eq(after[t], before[t], t .. " unchanged") end
end)

T.case("SIGTERM in the middle of a segment's pipeline: exit 130 soon, nothing of it committed", function()
  -- one transaction of 300,000 updates: seconds of server work, mostly inside pipeline syncs
  local lines = {}
  for _ = 1, 300000 do lines[#lines + 1] = "UPDATE public.wide SET v = 'cancelled run' WHERE id = '1';" end
  T.write(dir .. "/big.sql", segment{txn(lines)})
  T.write(dir .. "/apply.lua", string.format([[
    local pipe, changes = require "pipe", require "changes"
    local rp <close> = changes.replayer{url = %q}
    local f = assert(io.open(%q, "w")); f:close()
    pipe.run{pipe.file(%q), rp:sink{}}
  ]], base_url .. A, dir .. "/started", dir .. "/big.sql"))
  local child <close> = proc.spawn{argv = {env.get("CLUBIO_DR_BIN"), "run", dir .. "/apply.lua"}}
  T.wait_until("the replay to start", function() return io.open(dir .. "/started") ~= nil end)
  local time = require "time"
  time.sleep(0.7)
  T.eq(child:poll(), nil, "still replaying when signalled")
  local t0 = time.monotonic()
  child:kill(15)
  local status = child:wait(60)
  print(string.format("exited %.2f s after SIGTERM", time.monotonic() - t0))
  T.eq(status, 130, "the cancel's exit status")
  local c <close> = pgdump.connect(base_url .. A)
  T.eq(c:query("SELECT v FROM wide WHERE id = 1")[1].v, "shape 4200", "the segment was not committed")
  T.eq(c:query("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()", {A})[1].n,
       "0", "no statement left running on the server")
end)

os.exit(T.finish())
