-- backup-configs end to end on the sandbox's S3 peer: a config folder with secrets in many
-- shapes; the uploaded document keeps the structure and values and strips every secret; the git
-- version; the failure paths (a missing variable, a bad JSON file, S3 unreachable, arguments).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, s3, cjson, proc = require "env", require "s3", require "cjson", require "proc"

local dir = T.tmpdir()
local cfg = dir .. "/config"
proc.run{argv = {"mkdir", "-p", cfg}, check = true}
local PREFIX = "test-configs-" .. U.TAG .. "/"
local BUCKET = env.get("BACKUP_S3_BUCKET")
local E = {CONFIG_DIR = cfg, CONFIG_BACKUP_PREFIX = PREFIX, ENVIRONMENT = "staging", CLUBIO_DR_JOURNAL = "off"}
local c = s3.client{}

local SECRETS = {"hunter2-db-pass", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "whsec_Abcdefghijklmnop123456",
                 "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                 "s3cr3t-inline-value", "Zx9Kq2Lm8Np4Rt6Vw1Yb3Cd5Fg7Hj0Qs", "nested-secret-in-list", "pem-body-line"}
U.write(cfg .. "/features.json", [[
{
  "checkout_v2": true,
  "rollout_percent": 12.50,
  "beta_users": [],
  "stripe": {"publishable_key": "pk_live_51Habcdefgh", "secretKey": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
             "webhook_secret": "whsec_Abcdefghijklmnop123456", "currency": "eur"},
  "database_url": "postgresql://app:hunter2-db-pass@db.internal:5432/clubio",
  "analytics": {"endpoint": "https://collector.example.com/v1", "write_key": "Zx9Kq2Lm8Np4Rt6Vw1Yb3Cd5Fg7Hj0Qs"},
  "mirror": "redis://cache:s3cr3t-inline-value@redis.internal:6379/0",
  "aws": {"region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE"},
  "session": {"jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"},
  "credentials": [{"name": "partner", "value": "nested-secret-in-list"}],
  "tls": {"private_key": "-----BEGIN PRIVATE KEY-----\npem-body-line\n-----END PRIVATE KEY-----"},
  "welcome_text": "Welcome to Clubio \u00e9t\u00e9!"
}
]])
U.write(cfg .. "/rate-limits.json", [[
{"default": {"requests_per_minute": 600, "tokens_per_minute": 90000, "burst": 20},
 "routes": [{"path": "/api/login", "requests_per_minute": 10}, {"path": "/api/export", "requests_per_minute": 2}],
 "token_bucket": {"capacity": 100, "refill_per_second": 5}}
]])

local function fetch(key) return c:get(BUCKET, key) end

T.case("uploads the sanitised document under configs/, with SSE and STANDARD_IA", function()
  local r = U.run({"backup-configs", "--json"}, E, {cwd = dir})
  T.eq(r.status, 0, r.stderr)
  local res = r.doc.result
  T.match(res.key, "^" .. PREFIX:gsub("%-", "%%-") .. "config%-backup%-%d%d%d%d%d%d%d%d%-%d%d%d%d%d%d%.json$")
  T.eq(#res.configs, 2)
  local h = c:head(BUCKET, res.key)
  T.eq(h.size, res.bytes)
  T.eq(h.storage_class, "STANDARD_IA")
  T.eq(h.content_type, "application/json")
  local text = fetch(res.key)
  for _, s in ipairs(SECRETS) do T.no_match(text, s:gsub("%p", "%%%0"), "secret " .. s) end
  T.no_match(r.stdout .. r.stderr, "hunter2", "no secret in the output either")
  local doc = cjson.decode(text)
  T.eq(doc.environment, "staging")
  T.match(doc.timestamp, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$")
  local f, rl = doc.configs["features.json"], doc.configs["rate-limits.json"]
  -- values that are not secrets survive, secrets are marked
  T.eq(f.checkout_v2, true)
  T.eq(f.stripe.currency, "eur")
  T.eq(f.stripe.secretKey, "[redacted]")
  T.eq(f.stripe.webhook_secret, "[redacted]")
  T.eq(f.database_url, "[redacted]")
  T.eq(f.mirror, "redis://cache:[redacted]@redis.internal:6379/0", "only the URL's password goes")
  T.eq(f.analytics.endpoint, "https://collector.example.com/v1")
  T.eq(f.analytics.write_key, "[redacted]")
  T.eq(f.aws.region, "eu-west-1")
  T.eq(f.aws.access_key_id, "[redacted]")
  T.eq(f.credentials[1].value, "[redacted]")
  T.eq(f.welcome_text, "Welcome to Clubio été!")
  T.eq(rl.default.tokens_per_minute, 90000, "numbers under token-ish keys are not secrets")
  T.eq(rl.token_bucket.capacity, 100)
  T.eq(rl.routes[2].path, "/api/export")
  -- the file as written: key order, 12.50, empty arrays
  T.match(text, '"rollout_percent": 12.50')
  T.match(text, '"beta_users": %[%]')
  T.ok(text:find('"checkout_v2"', 1, true) < text:find('"welcome_text"', 1, true), "key order kept")
  local listed = {}
  for _, p in ipairs(doc.redacted) do listed[p] = true; T.match(p, "^features%.json:") end
  for _, p in ipairs{"stripe.secretKey", "stripe.webhook_secret", "stripe.publishable_key", "database_url", "mirror",
                     "analytics.write_key", "aws.access_key_id", "session.jwt", "credentials[1].value", "tls.private_key"} do
    T.ok(listed["features.json:" .. p], p .. " listed as redacted")
  end
end)

T.case("the version comes from git describe in a checkout, APP_VERSION otherwise", function()
  local r = U.run({"backup-configs", "--dry-run", "--json"}, E, {cwd = dir})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.version, nil, "not a git checkout")
  local g = {GIT_AUTHOR_NAME = "t", GIT_AUTHOR_EMAIL = "t@example.com", GIT_COMMITTER_NAME = "t", GIT_COMMITTER_EMAIL = "t@example.com"}
  proc.run{argv = {"git", "init", "-q", dir}, check = true}
  proc.run{argv = {"git", "-C", dir, "commit", "-q", "--allow-empty", "-m", "x"}, env = g, check = true}
  proc.run{argv = {"git", "-C", dir, "tag", "v1.4.2"}, check = true}
  r = U.run({"backup-configs", "--dry-run", "--json"}, E, {cwd = dir})
  T.eq(r.doc.result.version, "v1.4.2")
  E.APP_VERSION = "2024.06.1"
  r = U.run({"backup-configs", "--dry-run", "--json"}, E, {cwd = dir})
  E.APP_VERSION = nil
  T.eq(r.doc.result.version, "2024.06.1")
end)

T.case("--dry-run prints the document and uploads nothing; absent files are listed", function()
  local empty = dir .. "/empty"
  proc.run{argv = {"mkdir", "-p", empty}, check = true}
  local r = U.run({"backup-configs", "--dry-run"}, {CONFIG_DIR = empty, CONFIG_BACKUP_PREFIX = PREFIX .. "dry/", CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout:match("^(%b{})"))
  T.eq(#doc.missing, 2)
  T.match(r.stdout, "dry run: nothing was uploaded")
  local n = 0
  for _ in c:list{bucket = BUCKET, prefix = PREFIX .. "dry/"} do n = n + 1 end
  T.eq(n, 0)
end)

T.case("failure paths: missing variable, bad JSON, S3 unreachable, arguments", function()
  local r = U.run({"backup-configs"}, {CONFIG_DIR = cfg, BACKUP_S3_BUCKET = false, CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 3)
  T.match(r.stderr, "BACKUP_S3_BUCKET")
  local bad = dir .. "/bad"
  proc.run{argv = {"mkdir", "-p", bad}, check = true}
  U.write(bad .. "/features.json", '{"a": 1,\n "b": }')
  r = U.run({"backup-configs"}, {CONFIG_DIR = bad, CONFIG_BACKUP_PREFIX = PREFIX .. "bad/", CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 3)
  T.match(r.stderr, "features%.json is not valid JSON: .* line 2")
  r = U.run({"backup-configs"}, {CONFIG_DIR = cfg, CONFIG_BACKUP_PREFIX = PREFIX .. "down/", CLUBIO_DR_JOURNAL = "off",
                                 AWS_ENDPOINT_URL = "http://127.0.0.1:" .. U.closed_port(), AWS_MAX_ATTEMPTS = "1"})
  T.eq(r.status, 1)
  T.match(r.stderr, "\nclubio%-dr: [^\n]*127%.0%.0%.1")
  T.match(r.stderr, "HINT: ")
  local n = 0
  for _ in c:list{bucket = BUCKET, prefix = PREFIX .. "down/"} do n = n + 1 end
  T.eq(n, 0, "nothing uploaded")
  r = U.run({"backup-configs", "extra"}, E)
  T.eq(r.status, 2)
end)

return T.finish()
