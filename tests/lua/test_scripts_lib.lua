-- The shared Lua of the scripts, needing no server (lua label): clubio.sanitize (the order-preserving
-- JSON reader/writer and the secret rules behind backup-configs) and clubio.job's journal
-- reader (runs(): grouping, statuses, torn lines, project filter) used by daily-backup-failure.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local S, job, cjson, time = require "clubio.sanitize", require "clubio.job", require "cjson", require "time"

T.case("sanitize: JSON round trip keeps order, numbers' text, empty arrays, escapes", function()
  local src = '{"z": 1, "a": [1, -0.50, 1e10, 2E-3, [], {}], "s": "tab\\t \\"q\\" \\u00e9 \\ud83d\\ude00 /", "n": null, "t": true, "f": false}'
  local out = S.encode(S.decode(src, "x.json"))
  local again = cjson.decode(out)
  T.eq(again.s, "tab\t \"q\" é 😀 /")
  T.match(out, '"a": %[\n    1,\n    %-0.50,\n    1e10,\n    2E%-3,\n    %[%],\n    {}\n  %]')
  T.ok(out:find('"z"', 1, true) < out:find('"a"', 1, true), "order kept")
  T.eq(S.encode(S.decode(out, "y")), out, "stable")
  -- duplicate keys: the last value, the first position (as JSON.parse)
  T.eq(S.encode(S.decode('{"a": 1, "b": 2, "a": 3}')), '{\n  "a": 3,\n  "b": 2\n}')
end)

T.case("sanitize: bad JSON is a config error naming the file and line", function()
  for _, bad in ipairs{'{"a": 1,}', '{"a" 1}', '[1, 2', '"open', '{"a": tru}', '{} x', '', '{"a": 01x}', '{"a": "\\x"}'} do
    local e = T.raises(S.decode, bad, "conf/f.json")
    T.eq(e.class, "config", bad)
    T.match(e.message, "^conf/f%.json is not valid JSON: .* at line %d+$")
  end
  -- JSON's number grammar: no leading zeros, no bare or trailing points, no empty exponent
  for _, bad in ipairs{'[01]', '[1.]', '[-01]', '[.5]', '[+1]', '[1e]', '[1e+]', '[-]', '[1.e5]', '[00]', '[1.5.2]'} do
    local err = T.raises(S.decode, bad, "n.json")
    T.eq(err.class, "config", bad)
    T.match(err.message, "^n%.json is not valid JSON: ", bad)
  end
  for _, good in ipairs{'0', '-0', '10', '0.5', '-0.50', '1e10', '2E-3', '1.5e+2', '0e0', '123456789012345678901234567890'} do
    T.eq(S.encode(S.decode("[" .. good .. "]")), "[\n  " .. good .. "\n]", good)
  end
  local e = T.raises(S.decode, '{\n "a": 1,\n\n "b": }', "f.json")
  T.match(e.message, "line 4")
end)

T.case("sanitize: secret keys, secret-looking values, URL passwords", function()
  for _, k in ipairs{"password", "DB_PASSWORD", "apiKey", "api_key", "secret", "clientSecret", "AUTH_TOKEN",
                     "accessToken", "credentials", "sentry_dsn", "private-key", "stripeSecretKey", "Authorization", "passwd"} do
    T.ok(S.secret_key(k), k)
  end
  for _, k in ipairs{"tokens_per_minute", "keyboard", "monkey", "region", "enabled", "max_requests", "passenger"} do
    T.ok(not S.secret_key(k), k)
  end
  for _, v in ipairs{"AKIAIOSFODNN7EXAMPLE", "sk_live_abcdefgh12345678", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                     "xoxb-1234567890-abcdefghij", "Bearer abc.def.ghi", "-----BEGIN RSA PRIVATE KEY-----\nx",
                     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"} do
    T.eq((S.secret_value(v)), true, v)
  end
  for _, v in ipairs{"hello world", "0123456789abcdef0123456789abcdef01234567", "https://example.com/a/b",
                     "new_checkout_flow_enabled_for_beta_users", "eu-west-1"} do
    T.eq((S.secret_value(v)), false, v)
  end
  local whole, replaced = S.secret_value("postgres://app:pw@db:5432/x and amqp://u:p2@mq/")
  T.eq(whole, false)
  T.eq(replaced, "postgres://app:[redacted]@db:5432/x and amqp://u:[redacted]@mq/")
  local doc = S.decode('{"db": {"password": "pw", "port": 5432, "opts": {"token": ["a", "b"]}}, "keys": {"n": 1}}')
  local changed = S.strip(doc, "c.json")
  T.eq(table.concat(changed, ","), "c.json:db.password,c.json:db.opts.token[1],c.json:db.opts.token[2]")
  local out = cjson.decode(S.encode(doc))
  T.eq(out.db.port, 5432, "numbers stay")
  T.eq(out.keys.n, 1)
end)

T.case("job.runs: grouped by run, newest first, statuses, torn lines, project filter", function()
  local path = T.tmpdir() .. "/journal.jsonl"
  local f = assert(io.open(path, "w"))
  local function e(t) f:write(cjson.encode(t), "\n") end
  local t0 = time.now() - 3600
  e{run = "r1", job = "backup-database", step = "a", status = "ok", start = time.iso(t0), ["end"] = time.iso(t0 + 1), neon_project = "p"}
  e{run = "r2", job = "backup-database", step = "a", status = "ok", start = time.iso(t0 + 10), neon_project = "p"}
  e{run = "r2", job = "backup-database", step = "b", status = "failed", start = time.iso(t0 + 11), error = "boom", neon_project = "p"}
  f:write('{"run": "r3", "job": "backup-data\n') -- a torn line
  e{run = "r4", job = "backup-database", step = "(run)", status = "incomplete", start = time.iso(t0 + 20), neon_project = "q"}
  e{run = "r5", job = "backup-database", step = "x", status = "declined", start = time.iso(t0 + 30)}
  e{run = "r6", job = "export-database", step = "x", status = "ok", start = time.iso(t0 + 40)}
  f:close()
  local runs = job.runs{path = path, job = "backup-database"}
  local got = {}
  for _, r in ipairs(runs) do got[#got + 1] = r.run .. "=" .. r.status end
  T.eq(table.concat(got, " "), "r5=declined r4=failed r2=failed r1=ok")
  T.eq(runs[3].error, "boom")
  T.eq(#job.runs{path = path, job = "backup-database", project = "p"}, 3, "p's runs and the one naming no project")
  T.eq(#job.runs{path = path, job = "backup-database", since = t0 + 15}, 2)
  T.eq(#job.runs{path = path .. ".missing"}, 0)
end)

return T.finish()
