-- pgdump against the sandbox's real PostgreSQL 15: dumps of a schema with many features
-- restored by psql and by our restore, stock pg_dump output restored by us, compared table by
-- table (row counts and digests) with the source; and the failure cases (bad url, wrong
-- password, server gone mid-dump, target not empty, an error in the stream).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local pgdump = require "pgdump"
local env = require "env"
local proc = require "proc"

local ADMIN = env.get("SANDBOX_PG_ADMIN_URL")
local BASE = ADMIN:gsub("/postgres$", "")
local admin = pgdump.connect(ADMIN)
local tmp = T.tmpdir()

local function url(db) return BASE .. "/" .. db end
local pg_env = T.pg_env
local function fresh(db)
  admin:query('DROP DATABASE IF EXISTS "' .. db .. '" WITH (FORCE)')
  admin:query('CREATE DATABASE "' .. db .. '"')
  return url(db)
end
local function psql(db, args, stdin)
  local argv = {"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run{argv = argv, env = pg_env(db), stdin = stdin, check = true}
end

-- The tables of a database and their digests, keyed like the dump's results.
local function digests(u)
  local db <close> = pgdump.connect(u)
  local out = {}
  local rows = db:query([[SELECT format('%I.%I', n.nspname, c.relname) AS q FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'
    AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' ORDER BY 1]])
  for _, r in ipairs(rows) do out[r.q] = db:table_digest(r.q) end
  return out
end

local function same_tables(src, dst)
  local n = 0
  for name, d in pairs(src) do
    n = n + 1
    T.ok(dst[name], "table " .. name .. " restored")
    T.eq(dst[name].rows, d.rows, name .. " rows")
    T.eq(dst[name].set_sha256, d.set_sha256, name .. " digest")
  end
  for name in pairs(dst) do T.ok(src[name], "no extra table " .. name) end
  return n
end

-- Objects beyond table data that a restore must bring back.
local function check_objects(u)
  local db <close> = pgdump.connect(u)
  local r = db:query("SELECT last_value, is_called FROM counter_seq", nil, {typed = true})[1]
  T.eq(r.last_value, 142, "sequence value")
  T.eq(r.is_called, true)
  -- identity sequence continues after the restored rows; the trigger fires
  local ins = db:query("INSERT INTO people (name) VALUES ('after') RETURNING id, name_len", nil,
                       {typed = true})[1]
  T.eq(ins.id, 6, "identity continues")
  T.eq(ins.name_len, 5, "generated column computed")
  T.eq(db:query("SELECT count(*) AS n FROM audit WHERE what LIKE 'people INSERT; id=6'", nil,
                {typed = true})[1].n, 1, "trigger fired")
  T.eq(#db:query("SELECT * FROM people_view"), 2, "view")
  T.eq(db:query("SELECT sum(n)::int AS s FROM mood_counts", nil, {typed = true})[1].s, 5, "matview refreshed")
  T.eq(db:query("SELECT obj_description('people'::regclass) AS c")[1].c,
       "people; with a 'quote' and a $$dollar$$", "comment")
  T.eq(db:query("SELECT 'A@EXAMPLE.COM'::citext = email AS eq FROM people WHERE id = 1", nil,
                {typed = true})[1].eq, true, "citext extension")
  T.eq(#db:query([[SELECT 1 FROM pg_indexes WHERE indexname IN ('order items by person',
    'events_payload', 'people_email_key')]]), 3, "indexes")
  T.raises(db.query, db, [[INSERT INTO "Sales Dept"."Order Items" ("personId") VALUES (999)]])
  T.raises(db.query, db, "INSERT INTO people (name, n) VALUES ('x', -1)") -- the domain's check
end

local SRC = fresh("pgdump_src")
psql("pgdump_src", {"-f", os.getenv("CLUBIO_DR_TEST_DIR") .. "/fixtures/pgdump-features.sql"})
local SRC_DIGESTS = digests(SRC)

T.case("our dump restores with psql and matches the source table by table", function()
  local file = tmp .. "/ours.sql"
  local r = pipe.run{pgdump.dump{url = SRC, jobs = 2, split_bytes = 1 << 20, label = "dump"},
                     pipe.file_sink(file)}
  -- results per table: rows and the exact digest of the COPY data, as the source has it
  local n = 0
  for name, d in pairs(SRC_DIGESTS) do
    n = n + 1
    T.ok(r.dump.tables[name], "dump result for " .. name)
    T.eq(r.dump.tables[name].rows, d.rows, name .. " rows")
    T.eq(r.dump.tables[name].sha256, d.sha256, name .. " sha256")
    T.eq(r.dump.tables[name].bytes, d.bytes, name .. " bytes")
  end
  T.eq(n, 6)
  T.eq(r.dump.tables["public.big"].rows, 60000)
  T.eq(r.dump.sequences, 4)
  local text = io.open(file):read("a")
  -- exactly one "dump complete" trailer, at the end; sequence values in the data section
  local _, trailers = text:gsub("PostgreSQL database dump complete", "")
  T.eq(trailers, 1)
  T.match(text, "SELECT pg_catalog.setval%('public.counter_seq', 142, true%);")
  T.match(text, "COPY public.people %(id, name, email, tags, scores, doc, docb, photo, m, n, amount, big, seen, ratio, secret%) FROM stdin;")
  local dst = fresh("pgdump_psql")
  psql("pgdump_psql", {"-f", file})
  same_tables(SRC_DIGESTS, digests(dst))
  check_objects(dst)
end)

T.case("the dump is deterministic: two dumps of the same database are identical but for keys", function()
  local a = pipe.run{pgdump.dump{url = SRC, jobs = 3, split_bytes = 300000}, pipe.buffer{limit = 64 << 20}}
  local b = pipe.run{pgdump.dump{url = SRC, jobs = 1}, pipe.buffer{limit = 64 << 20}}
  local function norm(s) return (s:gsub("\\(u?n?restrict) %w+", "\\%1 KEY")) end
  T.ok(norm(a.buffer.data) == norm(b.buffer.data), "same bytes with 3 jobs and split tables as with 1 job")
end)

T.case("our restore loads our dump in parallel and matches the source", function()
  local dst = fresh("pgdump_ours")
  local r = pipe.run{pgdump.dump{url = SRC, jobs = 2, split_bytes = 1 << 20, row_digests = true, label = "dump"},
                     pgdump.restore{url = dst, jobs = 2, chunk_bytes = 100000, digests = true, set_digests = true,
                                    label = "restore"}}
  local restored = digests(dst)
  for name, d in pairs(r.dump.tables) do
    T.eq(r.restore.tables[name].rows, d.rows, name .. " rows loaded")
    T.eq(r.restore.tables[name].sha256, d.sha256, name .. " sha256 of the loaded stream")
    -- the set digest of the rows the workers sent, summed over both connections
    T.eq(r.restore.tables[name].set_sha256, d.set_sha256, name .. " set digest of the loaded rows")
    -- the restored table holds the dumped rows, whatever their physical order
    T.eq(restored[name].set_sha256, d.set_sha256, name .. " set digest")
  end
  T.ok(r.restore.indexes >= 2, "indexes built by the workers")
  same_tables(SRC_DIGESTS, digests(dst))
  check_objects(dst)
end)

T.case("set_digests: the rows' set digest as loaded, with rows cut across the sink's writes", function()
  -- a 997-byte buffer cuts most rows of the dump between two writes into the sink
  local file = tmp .. "/ours.sql"
  local dst = fresh("pgdump_setdig")
  local r = pipe.run{pipe.file(file), pgdump.restore{url = dst, jobs = 2, set_digests = true, label = "restore"},
                     buffer_size = 997}
  local n = 0
  for name, d in pairs(SRC_DIGESTS) do
    n = n + 1
    T.eq(r.restore.tables[name].set_sha256, d.set_sha256, name .. " set digest of the loaded rows")
    T.eq(r.restore.tables[name].rows, d.rows, name .. " rows")
  end
  T.eq(n, 6)
  local plain = pipe.run{pipe.file(file), pgdump.restore{url = fresh("pgdump_setdig"), jobs = 1, label = "restore"}}
  T.eq(plain.restore.tables["public.big"].set_sha256, nil, "no set digest unless asked for")
end)

T.case("table_digests reads several tables over parallel connections, as table_digest does one by one", function()
  local names = {}
  for name in pairs(SRC_DIGESTS) do names[#names + 1] = name end
  table.sort(names)
  for _, jobs in ipairs({1, 2, 8}) do -- 8: more connections than tables
    local d = pgdump.table_digests(SRC, names, {jobs = jobs})
    local n = 0
    for name, got in pairs(d) do
      n = n + 1
      local want = SRC_DIGESTS[name]
      T.ok(want, name .. " was asked for")
      for _, k in ipairs({"rows", "bytes", "sha256", "set_sha256"}) do
        T.eq(got[k], want[k], string.format("%s %s with %d jobs", name, k, jobs))
      end
    end
    T.eq(n, #names, "one result per table")
  end
  T.eq(next(pgdump.table_digests(SRC, {})), nil, "no tables, no connection, an empty result")
  -- a missing table: an error naming it, whichever connection met it
  local err = T.raises(pgdump.table_digests, SRC, {"public.big", "public.no_such_table", "public.people"}, {jobs = 2})
  T.match(tostring(err), "no_such_table")
  T.raises(pgdump.table_digests, SRC, {"public.big", 7})
  T.raises(pgdump.table_digests, SRC, names, {jobs = 0})
  T.raises(pgdump.table_digests, SRC, names, {job = 2})
end)

T.case("our restore loads stock pg_dump output (with \\restrict lines) and matches the source", function()
  local dst = fresh("pgdump_stock")
  local e = pg_env("pgdump_src")
  local r = pipe.run{pipe.command{argv = {"pg_dump", "--no-password"}, env = e},
                     pgdump.restore{url = dst, jobs = 2, chunk_bytes = 65536, label = "restore"}}
  T.eq(r.restore.tables["public.big"].rows, 60000)
  same_tables(SRC_DIGESTS, digests(dst))
  check_objects(dst)
end)

T.case("a stock pg_dump --create dump (CREATE DATABASE, \\connect) restores into the url's database", function()
  local dst = fresh("pgdump_create")
  local e = pg_env("pgdump_src")
  pipe.run{pipe.command{argv = {"pg_dump", "--no-password", "--create"}, env = e},
           pgdump.restore{url = dst}}
  same_tables(SRC_DIGESTS, digests(dst))
end)

T.case("a restore refuses a non-empty target, and clean = true empties it first", function()
  local dst = url("pgdump_ours") -- restored above
  local err = T.raises(pgdump.restore, {url = dst})
  T.eq(err.code, "pgdump.target_not_empty")
  T.match(err.message, "is not empty")
  T.match(err.hint, "clean = true")
  pipe.run{pgdump.dump{url = SRC}, pgdump.restore{url = dst, clean = true}}
  same_tables(SRC_DIGESTS, digests(dst))
end)

T.case("an error in the stream stops the restore with the statement number, table and message", function()
  local dst = fresh("pgdump_err")
  local sql = "CREATE TABLE t (id int PRIMARY KEY, v text);\n" ..
              "COPY public.t (id, v) FROM stdin;\n1\ta\n2\tb\n\\.\n" ..
              "ALTER TABLE t ADD CONSTRAINT v_check CHECK (v = 'a');\nCREATE TABLE after_error (x int);\n"
  local err = T.raises(pipe.run, {pipe.string(sql), pgdump.restore{url = dst}})
  T.match(err.message, "statement 3")
  T.match(err.message, "is violated")
  T.match(err.message, "partial")
  local db <close> = pgdump.connect(dst)
  T.eq(#db:query("SELECT 1 FROM pg_class WHERE relname = 'after_error'"), 0, "stopped at the first error")
  -- bad COPY data names the table
  dst = fresh("pgdump_err2")
  err = T.raises(pipe.run, {pipe.string("CREATE TABLE t (id int);\nCOPY public.t (id) FROM stdin;\nx\n\\.\n"),
                            pgdump.restore{url = dst}})
  T.match(err.message, "statement 2 %(table public.t%)")
  T.match(err.message, "invalid input syntax")
  -- an index built by a worker names its statement
  dst = fresh("pgdump_err4")
  err = T.raises(pipe.run, {pipe.string("CREATE TABLE t (v int);\nCOPY public.t (v) FROM stdin;\n1\n1\n\\.\n" ..
                                        "-- Name: t_v\nCREATE UNIQUE INDEX t_v ON public.t USING btree (v);\n"),
                            pgdump.restore{url = dst}})
  T.match(err.message, "statement 3 %(CREATE UNIQUE INDEX t_v ON public.t USING btree %): could not create unique index")
  -- a compressed or custom-format stream is recognised
  dst = fresh("pgdump_err5")
  err = T.raises(pipe.run, {pipe.string("\x1f\x8b\x08\x00junk"), pgdump.restore{url = dst}})
  T.eq(err.code, "pgdump.format")
  T.match(err.message, "gzip%-compressed, not plain SQL; nothing was restored")
  T.match(err.hint, "crypto.gunzip")
  err = T.raises(pipe.run, {pipe.string("PGDMP\1\14"), pgdump.restore{url = dst}})
  T.match(err.hint, "pg_restore")
  -- a truncated stream is an error, not a quiet success
  dst = fresh("pgdump_err3")
  err = T.raises(pipe.run, {pipe.string("CREATE TABLE t (id int);\nCOPY public.t (id) FROM stdin;\n1\n"),
                            pgdump.restore{url = dst}})
  T.match(err.message, "truncated")
end)

-- Every COPY block of a stream split into `parts` blocks of the same table (a merged or
-- hand-edited dump may carry a table's data in several blocks).
local function split_copy_blocks(sql, parts)
  return (sql:gsub("(\nCOPY [^\n]- FROM stdin;\n)(.-)\\%.\n", function(head, rows)
    local lines = {}
    for l in rows:gmatch("[^\n]*\n") do lines[#lines + 1] = l end
    local out, per = {}, math.ceil(#lines / parts)
    for p = 0, parts - 1 do
      out[#out + 1] = head .. table.concat(lines, "", p * per + 1, math.min(#lines, (p + 1) * per)) .. "\\.\n"
    end
    return table.concat(out)
  end))
end

T.case("post-data of many tables with foreign keys, after tables in several COPY parts, restores the source", function()
  local src = fresh("pgdump_post_src")
  local db <close> = pgdump.connect(src)
  db:query([[
    CREATE TABLE region (id int PRIMARY KEY, name text UNIQUE);
    CREATE TABLE customer (id int PRIMARY KEY, region_id int NOT NULL REFERENCES region, email text);
    CREATE TABLE product (id int PRIMARY KEY, sku text, price numeric(10,2));
    CREATE TABLE "Order" (id bigint PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    CREATE TABLE line (order_id bigint REFERENCES "Order", n int, product_id int REFERENCES product,
                       qty int, PRIMARY KEY (order_id, n));
    CREATE UNIQUE INDEX product_sku ON product (sku);
    CREATE INDEX customer_email ON customer (lower(email));
    CREATE INDEX order_at ON "Order" (at);
    CREATE INDEX line_product ON line (product_id);
    INSERT INTO region SELECT g, 'region ' || g FROM generate_series(1, 20) g;
    INSERT INTO customer SELECT g, 1 + g % 20, 'c' || g || '@example.com' FROM generate_series(1, 3000) g;
    INSERT INTO product SELECT g, 'SKU-' || g, g * 1.5 FROM generate_series(1, 500) g;
    INSERT INTO "Order" SELECT g, 1 + g % 3000, '2024-01-01'::timestamptz + g * interval '1 minute'
      FROM generate_series(1, 6000) g;
    INSERT INTO line SELECT 1 + g / 3, g % 3, 1 + g % 500, g % 7 FROM generate_series(0, 17999) g;
  ]])
  local dump = pipe.run{pipe.command{argv = {"pg_dump", "--no-password"}, env = pg_env("pgdump_post_src")},
                        pipe.buffer{limit = 64 << 20}}.buffer.data
  local parted = split_copy_blocks(dump, 3)
  local _, blocks = parted:gsub("\nCOPY ", "")
  T.eq(blocks, 15, "five tables in three COPY blocks each")
  local dst = fresh("pgdump_post_dst")
  local r = pipe.run{pipe.string(parted),
                     pgdump.restore{url = dst, jobs = 2, chunk_bytes = 4096, label = "restore"}}
  T.eq(r.restore.tables["public.line"].rows, 18000, "the parts of a table add up")
  T.eq(r.restore.tables['public."Order"'].rows, 6000)
  T.eq(same_tables(digests(src), digests(dst)), 5)
  -- every constraint and index is back, and the foreign keys hold
  local function catalog(u)
    local c <close> = pgdump.connect(u)
    local out = {}
    for _, row in ipairs(c:query([[SELECT conname || ' ' || pg_get_constraintdef(oid) AS d FROM pg_constraint
      WHERE connamespace = 'public'::regnamespace UNION ALL SELECT indexdef FROM pg_indexes
      WHERE schemaname = 'public' ORDER BY 1]])) do out[#out + 1] = row.d end
    return table.concat(out, "\n")
  end
  local want = catalog(src)
  T.match(want, "line_product_id_fkey FOREIGN KEY %(product_id%) REFERENCES product%(id%)")
  T.eq(catalog(dst), want, "constraints and indexes")
  local d <close> = pgdump.connect(dst)
  local err = T.raises(d.query, d, "INSERT INTO line VALUES (6001, 0, 1, 1)")
  T.match(err.message, "violates foreign key constraint")
end)

T.case("an error in a post-data statement after tables in several parts names the statement and stops", function()
  local head = "CREATE TABLE p (id int);\nCREATE TABLE c (id int, p int);\n" ..
               "COPY public.p (id) FROM stdin;\n1\n\\.\nCOPY public.c (id, p) FROM stdin;\n1\t1\n\\.\n"
  -- statements 1-2 schema, 3-6 COPY blocks, 7 the primary key, 8 an index, 9 the foreign key
  local function stream(p_rows, c_rows)
    return head .. "COPY public.p (id) FROM stdin;\n" .. p_rows .. "\\.\n" ..
           "COPY public.c (id, p) FROM stdin;\n" .. c_rows .. "\\.\n" ..
           "ALTER TABLE ONLY public.p\n    ADD CONSTRAINT p_pkey PRIMARY KEY (id);\n" ..
           "CREATE INDEX c_p ON public.c USING btree (p);\n" ..
           "ALTER TABLE ONLY public.c\n    ADD CONSTRAINT c_p_fkey FOREIGN KEY (p) REFERENCES public.p(id);\n" ..
           "CREATE TABLE after_error (x int);\n"
  end
  -- a row of the second part of c references no row of p: the foreign key fails
  local dst = fresh("pgdump_post_err")
  local err = T.raises(pipe.run, {pipe.string(stream("2\n", "2\t3\n")),
                                  pgdump.restore{url = dst, jobs = 2, chunk_bytes = 4096}})
  T.eq(err.code, "pgdump.restore")
  T.match(err.message, "failed at statement 9 ")
  T.match(err.message, "violates foreign key constraint \"c_p_fkey\"")
  T.match(err.message, "the target is partial")
  local db <close> = pgdump.connect(dst)
  T.eq(#db:query("SELECT 1 FROM pg_class WHERE relname = 'after_error'"), 0, "stopped at the first error")
  T.eq(#db:query("SELECT 1 FROM pg_class WHERE relname IN ('p_pkey', 'c_p')"), 2, "post-data before it ran")
  -- the second part of p repeats a key of the first: the primary key fails, nothing after it runs
  dst = fresh("pgdump_post_err2")
  err = T.raises(pipe.run, {pipe.string(stream("1\n", "2\t1\n")),
                            pgdump.restore{url = dst, jobs = 2, chunk_bytes = 4096}})
  T.match(err.message, "failed at statement 7 %(ALTER TABLE ONLY public.p%): could not create unique index \"p_pkey\"")
  local db2 <close> = pgdump.connect(dst)
  T.eq(#db2:query("SELECT 1 FROM pg_class WHERE relname = 'after_error'"), 0, "stopped at the first error")
  T.eq(#db2:query("SELECT 1 FROM pg_constraint WHERE conname = 'c_p_fkey'"), 0, "no foreign key after it")
end)

T.case("autovacuum is paused on big tables while they load, then reset, also after a failure", function()
  -- big: 40,000 rows (about 1 MB, more than one 256 KiB block); tuned: big too, but its dump
  -- sets autovacuum_enabled itself; small: one block. A post-data statement records what the
  -- catalog says mid-restore.
  local rows = {}
  for i = 1, 40000 do rows[i] = i .. "\tpadding text for row " .. i .. "\n" end
  local data = table.concat(rows)
  local function stream(bad_row)
    return "CREATE TABLE big (id int, v text);\n" ..
           "CREATE TABLE tuned (id int, v text) WITH (fillfactor = 90, autovacuum_enabled = true);\n" ..
           "CREATE TABLE small (id int);\n" ..
           "COPY public.big (id, v) FROM stdin;\n" .. data .. (bad_row or "") .. "\\.\n" ..
           "COPY public.tuned (id, v) FROM stdin;\n" .. data .. "\\.\n" ..
           "COPY public.small (id) FROM stdin;\n1\n\\.\n" ..
           "CREATE TABLE seen AS SELECT relname::text, reloptions::text AS opts FROM pg_class " ..
           "WHERE relname IN ('big', 'tuned', 'small');\n"
  end
  local function options(db)
    local out = {}
    for _, row in ipairs(db:query("SELECT relname, reloptions::text AS opts FROM pg_class " ..
                                  "WHERE relname IN ('big', 'tuned', 'small')")) do
      out[row.relname] = row.opts or "none"
    end
    return out
  end
  local dst = fresh("pgdump_autovac")
  local r = pipe.run{pipe.string(stream()), pgdump.restore{url = dst, jobs = 2, label = "restore"}}
  T.eq(r.restore.tables["public.big"].rows, 40000)
  local db <close> = pgdump.connect(dst)
  local seen = {}
  for _, row in ipairs(db:query("SELECT relname, opts FROM seen")) do seen[row.relname] = row.opts or "none" end
  T.eq(seen.big, "{autovacuum_enabled=false}", "paused while the restore ran")
  T.eq(seen.tuned, "{fillfactor=90,autovacuum_enabled=true}", "the dump's own setting is left alone")
  T.eq(seen.small, "none", "one block: not worth two catalog updates")
  local now = options(db)
  T.eq(now.big, "none", "reset at the end")
  T.eq(now.tuned, "{fillfactor=90,autovacuum_enabled=true}")
  T.eq(now.small, "none")
  -- a bad row in the last block of big fails the restore; the pause is undone all the same
  dst = fresh("pgdump_autovac_err")
  local err = T.raises(pipe.run, {pipe.string(stream("x\ty\n")), pgdump.restore{url = dst, jobs = 2}})
  T.match(err.message, "%(table public.big%): invalid input syntax for type integer")
  local db2 <close> = pgdump.connect(dst)
  T.eq(options(db2).big, "none", "reset after the failure")
end)

T.case("Ctrl-C during a long query stops it at once, and the server cancels the statement", function()
  local path = tmp .. "/sleep.lua"
  local f = assert(io.open(path, "w"))
  f:write('local db <close> = require("pgdump").connect(arg[1])\n',
          'db:query("SELECT pg_sleep(20) AS clubio_cancel_test")\nprint("query returned")\n')
  f:close()
  -- sh's parent is this clubio-dr
  local r = proc.run{argv = {"sh", "-c", [[
"$(readlink /proc/$PPID/exe)" run "$0" "$1" & pid=$!
sleep 1; kill -INT $pid; wait $pid; echo "status=$?"]], path, ADMIN}}
  T.match(r.stdout, "status=130", r.stderr)
  T.ok(not r.stdout:find("query returned"), "the script stopped at the query")
  local left
  for _ = 1, 40 do
    left = admin:query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE " ..
                       "'%clubio_cancel_test%' AND pid <> pg_backend_pid()")[1].n
    if left == "0" then break end
    proc.run{argv = {"sleep", "0.05"}}
  end
  T.eq(left, "0", "no statement left running on the server")
end)

T.case("bad url, wrong password, pooled endpoint: clear errors without the password", function()
  local err = T.raises(pgdump.dump, {url = "postgresql://u@host/db?nosuchparam=1"})
  T.match(err.message, "invalid database url")
  T.eq(err.code, "pgdump.url")
  err = T.raises(pgdump.connect, "postgresql://u@host:notaport/db")
  T.match(err.message, "invalid integer value \"notaport\" for connection option \"port\"")
  local wrong = BASE:gsub("(//postgres:)[^@]+@", "%1WrongPassw0rd-xyz@") .. "/pgdump_src"
  err = T.raises(pgdump.dump, {url = wrong})
  T.match(err.message, "password authentication failed")
  T.no_match(err.message, "WrongPassw0rd")
  err = T.raises(pgdump.connect, wrong)
  T.no_match(tostring(err), "WrongPassw0rd")
  err = T.raises(pgdump.dump, {url = "postgresql://u:Secret123@ep-cool-1234-pooler.us-east-2.aws.neon.tech/db"})
  T.eq(err.code, "pgdump.pooler")
  T.match(err.hint, "remove \"%-pooler\"")
  T.no_match(err.message, "Secret123")
  err = T.raises(pgdump.dump, {url = SRC, jbos = 2})
  T.match(tostring(err), "unknown option 'jbos'")
  err = T.raises(pgdump.dump, {url = SRC, pg_dump = "/nonexistent/pg_dump"})
  T.match(err.hint, "postgresql%-client%-15")
  -- a pg_dump older than the server is refused, naming the package to install
  local old = tmp .. "/pg_dump14"
  local f = io.open(old, "w")
  f:write("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11 (Debian 14.11-1)'\n")
  f:close()
  proc.run{argv = {"chmod", "+x", old}, check = true}
  err = T.raises(pgdump.dump, {url = SRC, pg_dump = old})
  T.eq(err.code, "pgdump.pg_dump_version")
  T.match(err.message, "version 14 but the server of database pgdump_src .* is version 15")
  T.match(err.hint, "apt%-get install postgresql%-client%-15")
end)

T.case("large objects are refused unless included or skipped", function()
  local u = fresh("pgdump_lo")
  local db <close> = pgdump.connect(u)
  db:query("CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT lo_from_bytea(0, 'blob')")
  local err = T.raises(pgdump.dump, {url = u})
  T.eq(err.code, "pgdump.large_objects")
  T.match(err.hint, "large_objects = \"include\"")
  T.match(err.hint, "\"skip\"")
  local r = pipe.run{pgdump.dump{url = u, large_objects = "skip"}, pipe.buffer{}}
  T.eq(r.pgdump.tables["public.t"].rows, 1)
  T.no_match(r.buffer.data, "lo_create")
  -- included: psql and our restore bring them back
  local file = tmp .. "/lo.sql"
  r = pipe.run{pgdump.dump{url = u, large_objects = "include"}, pipe.file_sink(file)}
  local text = io.open(file):read("a")
  local _, trailers = text:gsub("PostgreSQL database dump complete", "")
  T.eq(trailers, 1)
  for _, how in ipairs{"psql", "ours"} do
    local dst = fresh("pgdump_lo_" .. how)
    if how == "psql" then psql("pgdump_lo_" .. how, {"-f", file})
    else pipe.run{pipe.file(file), pgdump.restore{url = dst}} end
    local t <close> = pgdump.connect(dst)
    T.eq(t:query("SELECT convert_from(lo_get(oid), 'UTF8') AS v FROM pg_largeobject_metadata")[1].v, "blob", how)
    T.eq(#t:query("SELECT * FROM t"), 1, how)
  end
end)

T.case("the server going away mid-dump fails the dump, and nothing looks complete", function()
  local file = tmp .. "/partial.sql"
  -- the sink reads 200 kB of the dump, then terminates the dump's connections, then reads on
  local script = [[head -c 200000 > "$1"; psql -X -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE application_name LIKE 'clubio-dr pgdump%' AND pid <> pg_backend_pid()" >/dev/null; cat >> "$1"]]
  local err = T.raises(pipe.run, {pgdump.dump{url = SRC, jobs = 2},
                                  pipe.command_sink{argv = {"sh", "-c", script, "sh", file}, env = pg_env("postgres")}})
  T.match(err.message, "cannot dump")
  local text = io.open(file):read("a")
  T.ok(#text >= 200000, "the dump had started")
  T.no_match(text, "PostgreSQL database dump complete")
end)

T.case("connections: parameters, NULLs, typed values, close", function()
  local db = pgdump.connect(SRC)
  local rows, n = db:query("SELECT id, name, n, email FROM people WHERE id = ANY($1::int[]) ORDER BY id", {"{1,3}"})
  T.eq(n, 2)
  T.eq(rows[1].id, "1")
  T.eq(rows[2].email, nil)
  T.eq(rows[2].name, "new\nline\r\nand \\ backslash")
  local t = db:query("SELECT $1::int + 1 AS x, $2::bool AS b, NULL::int AS z", {41, true}, {typed = true})[1]
  T.eq(t.x, 42)
  T.eq(t.b, true)
  T.eq(t.z, nil)
  local err = T.raises(db.query, db, "SELECT nonsense")
  T.match(err.message, "column \"nonsense\" does not exist")
  db:close()
  db:close()
  err = T.raises(db.query, db, "SELECT 1")
  T.match(err.message, "closed")
end)

-- Cancellation of the other libpq waits (issue 18, item 2): a connection that gets no answer, a
-- table digest whose COPY is silent, a dump blocked on a lock. Each runs in its own clubio-dr
-- that gets SIGTERM (or its --timeout); the run must end with 130 (124), well before the wait
-- would have ended by itself (60 s or more), and leave no statement on the server. The outer
-- limit (40 s, then SIGKILL) only guards against a hang; the measured time is printed.
local function interrupted(name, script_text, how, args)
  local path = tmp .. "/" .. name .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(script_text)
  f:close()
  local flags = how == "timeout" and "--timeout 2" or ""
  -- sh's parent is this clubio-dr; the guard kills the run only if it hangs (its output goes to
  -- /dev/null: a guard's sleep holding our stdout open kept proc.run waiting its whole 40 s)
  local r = proc.run{argv = {"sh", "-c", [[
bin=$(readlink /proc/$PPID/exe); script=$1; flags=$2; shift 2
t0=$(date +%s.%N)
"$bin" $flags run "$script" "$@" & pid=$!
sleep 1.5
[ -n "$flags" ] || kill -TERM $pid
t1=$(date +%s.%N)
( sleep 40; kill -KILL $pid 2>/dev/null ) >/dev/null 2>&1 & guard=$!
wait $pid; st=$?
pkill -P $guard sleep 2>/dev/null; kill $guard 2>/dev/null
echo "status=$st after=$(echo "$(date +%s.%N) - $t1" | bc)"]], "sh", path, flags, table.unpack(args or {})}}
  io.stderr:write(string.format("  %s: %s", name, r.stdout))
  return tonumber(r.stdout:match("status=(%d+)")), r.stderr
end

local function no_statement_left(marker)
  local left
  for _ = 1, 100 do
    left = admin:query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%" .. marker ..
                       "%' AND pid <> pg_backend_pid()")[1].n
    if left == "0" then return end
    proc.run{argv = {"sleep", "0.05"}}
  end
  T.eq(left, "0", "statements left running on the server (" .. marker .. ")")
end

T.case("SIGTERM and --timeout during a connection the server never answers: 130 and 124", function()
  -- a TCP listener that accepts and never speaks: libpq waits for the server's first message
  local portf = tmp .. "/silent.port"
  proc.run{argv = {"sh", "-c", [[python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
open(sys.argv[1] + ".tmp", "w").write("%d %d" % (s.getsockname()[1], __import__("os").getpid()))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
conns = []
while True: conns.append(s.accept())
' "$1" >/dev/null 2>&1 &]], "sh", portf}}
  local port, pid
  for _ = 1, 200 do
    local pf = io.open(portf)
    if pf then port, pid = pf:read("n", "n"); pf:close(); break end
    proc.run{argv = {"sleep", "0.05"}}
  end
  T.ok(port, "the silent listener started")
  local silent = string.format("postgresql://u:pw@127.0.0.1:%d/db?connect_timeout=120", port)
  local script = 'require("pgdump").connect(arg[1])\nprint("connected")\n'
  local st, err = interrupted("connect-term", script, "term", {silent})
  T.eq(st, 130, err)
  T.match(err, "cancelled")
  st, err = interrupted("connect-timeout", script, "timeout", {silent})
  T.eq(st, 124, err)
  -- connect_timeout is ours to enforce in this mode (libpq leaves it to the caller)
  local e = T.raises(pgdump.connect, silent:gsub("120$", "1"))
  T.match(e.message, "no answer within 1 s")
  T.no_match(tostring(e.message), "pw@")
  proc.run{argv = {"kill", tostring(pid)}}
end)

T.case("SIGTERM during a table digest whose COPY is silent: 130, the statement is cancelled", function()
  admin:query("CREATE OR REPLACE VIEW public.clubio_slow_rows AS SELECT g AS a FROM generate_series(1, 2) g, " ..
              "LATERAL (SELECT pg_sleep(CASE WHEN g = 2 THEN 90 ELSE 0 END)) s")
  local script = 'local db <close> = require("pgdump").connect(arg[1])\n' ..
                 'db:table_digest("public.clubio_slow_rows")\nprint("digest returned")\n'
  local st, err = interrupted("digest-term", script, "term", {ADMIN})
  T.eq(st, 130, err)
  no_statement_left("clubio_slow_rows")
  admin:query("DROP VIEW public.clubio_slow_rows")
end)

T.case("SIGTERM and --timeout during a dump blocked by another session's lock: 130 and 124", function()
  local src = fresh("pgdump_locked")
  local db <close> = pgdump.connect(src)
  db:query("CREATE TABLE held (id int); INSERT INTO held SELECT generate_series(1, 1000)")
  local out = tmp .. "/locked-out"
  proc.run{argv = {"mkdir", "-p", out}}
  local script = string.format([[
local pipe, pgdump = require "pipe", require "pgdump"
pipe.run{pgdump.dump{url = arg[1], jobs = 2}, pipe.file_sink(%q)}
print("dump returned")
]], out .. "/dump.sql")
  for _, how in ipairs{"term", "timeout"} do
    -- a session holds the table's lock (and a marker statement) for 90 s
    proc.run{argv = {"sh", "-c", [[psql -X -q -c "BEGIN" -c "LOCK TABLE held IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(90) AS clubio_lock_holder" >/dev/null 2>&1 &]]},
             env = pg_env("pgdump_locked")}
    local held
    for _ = 1, 100 do
      held = admin:query("SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database " ..
                         "WHERE d.datname = 'pgdump_locked' AND l.mode = 'AccessExclusiveLock' AND l.granted")[1].n
      if held ~= "0" then break end
      proc.run{argv = {"sleep", "0.05"}}
    end
    T.ok(held ~= "0", "the lock is held")
    local st, err = interrupted("dump-locked-" .. how, script, how, {src})
    T.eq(st, how == "term" and 130 or 124, err)
    T.eq(#proc.run{argv = {"ls", "-A", out}}.stdout, 0, "nothing left in the output folder")
    admin:query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%clubio_lock_holder%' " ..
                "AND pid <> pg_backend_pid()")
    no_statement_left("clubio_lock_holder")
  end
  -- the dump's own sessions are gone too (their statements were cancelled or the connections closed)
  local left
  for _ = 1, 100 do
    left = admin:query("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = 'pgdump_locked' " ..
                       "AND application_name LIKE 'clubio-dr pgdump%'")[1].n
    if left == "0" then break end
    proc.run{argv = {"sleep", "0.05"}}
  end
  T.eq(left, "0", "dump sessions left on the server")
end)

admin:close()
proc.run{argv = {"rm", "-rf", tmp}}
return T.finish()
