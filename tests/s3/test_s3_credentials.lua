-- The credential chain. Environment keys and the shared credentials/config files are tested
-- against the real s3rver. Web identity (STS), container credentials and IMDSv2 cannot run
-- here: metadata_mock.py (python3 stdlib) plays those endpoints — the only mock in these tests —
-- and hands out the sandbox's real key pair, so every signed request is still checked by s3rver.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/s3/?.lua;" .. package.path
local T = require "testing"
local U = require "s3util"
local env = require "env"

local B = env.get("BACKUP_S3_BUCKET")
local AK, SK = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
local tmp = T.tmpdir()
local BIN = os.getenv("CLUBIO_DR_BIN")

-- The metadata stand-in.
local M = {log = tmp .. "/mock.log", ready = tmp .. "/mock.ready"}
U.write(M.log, "")
U.sh(string.format("MOCK_AK=%s MOCK_SK=%s MOCK_TTL=120 python3 %s %s %s >%s 2>&1 &", U.q(AK), U.q(SK),
                   U.q(U.dir .. "/metadata_mock.py"), U.q(M.log), U.q(M.ready), U.q(tmp .. "/mock.err")))
for _ = 1, 200 do
  local f = io.open(M.ready)
  if f then M.port, M.pid = f:read("n", "n"); f:close(); break end
  U.sh("sleep 0.05")
end
assert(M.port, "metadata mock did not start")
M.url = "http://127.0.0.1:" .. M.port

local script = tmp .. "/probe.lua"
U.write(script, string.format([[
  local s3 = require "s3"
  local c = s3.client{}
  local key = "creds/" .. os.getenv("PROBE_KEY")
  c:put(%q, key, "via " .. c:info().credentials)
  c:put(%q, key, "again") -- a second request (refresh when close to expiry)
  print("source=" .. c:info().credentials .. " body=" .. c:get(%q, key))
]], B, B, B))

-- Runs the probe with a clean credential environment plus `vars`; returns output, exit status.
local function probe(vars, key)
  local unset = "-u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE "
  local set = {"AWS_EC2_METADATA_DISABLED=true", "AWS_SHARED_CREDENTIALS_FILE=" .. tmp .. "/none",
               "AWS_CONFIG_FILE=" .. tmp .. "/none", "HOME=" .. tmp, "PROBE_KEY=" .. key}
  for k, v in pairs(vars) do set[#set + 1] = k .. "=" .. v end
  local args = {}
  for _, s in ipairs(set) do args[#args + 1] = U.q(s) end
  local p = io.popen(string.format("env %s %s %s run %s 2>&1; echo \"exit=$?\"", unset, table.concat(args, " "),
                                   U.q(BIN), U.q(script)))
  local out = p:read("a")
  p:close()
  return out, tonumber(out:match("exit=(%d+)"))
end

local function mock_lines(pat)
  local n = 0
  for line in io.lines(M.log) do if line:find(pat) then n = n + 1 end end
  return n
end

T.case("environment keys", function()
  local out, st = probe({AWS_ACCESS_KEY_ID = AK, AWS_SECRET_ACCESS_KEY = SK}, "env")
  T.eq(st, 0, out)
  T.match(out, "source=environment body=again")
end)

T.case("AWS_PROFILE with the shared credentials file", function()
  U.write(tmp .. "/credentials", string.format("[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n" ..
                                               "[backup]\naws_access_key_id = %s\naws_secret_access_key = %s\n", AK, SK))
  local out, st = probe({AWS_PROFILE = "backup", AWS_SHARED_CREDENTIALS_FILE = tmp .. "/credentials"}, "file")
  T.eq(st, 0, out)
  T.match(out, "source=shared%-credentials%-file body=again")
  T.no_match(out, SK, "secret not printed")
end)

T.case("the config file's [profile NAME] section, and ~/.aws by default", function()
  os.execute("mkdir -p " .. U.q(tmp .. "/.aws"))
  U.write(tmp .. "/.aws/config", string.format("[profile ops]\nregion = us-east-1\naws_access_key_id = %s\naws_secret_access_key = %s\n", AK, SK))
  local out, st = probe({AWS_PROFILE = "ops", AWS_CONFIG_FILE = tmp .. "/.aws/config"}, "config")
  T.eq(st, 0, out)
  T.match(out, "source=config%-file")
end)

T.case("web identity through STS AssumeRoleWithWebIdentity, refreshed before expiry", function()
  U.write(tmp .. "/token", "web-identity-token-123\n")
  local out, st = probe({AWS_WEB_IDENTITY_TOKEN_FILE = tmp .. "/token", AWS_ROLE_ARN = "arn:aws:iam::123:role/backup",
                         AWS_ENDPOINT_URL_STS = M.url}, "web")
  T.eq(st, 0, out)
  T.match(out, "source=web%-identity body=again")
  T.ok(mock_lines("sts action=AssumeRoleWithWebIdentity role=arn:aws:iam::123:role/backup token=web%-identity%-token%-123") >= 2,
       "credentials expiring within 5 minutes are fetched again")
  T.no_match(out, "web%-identity%-token%-123", "token not printed")
end)

T.case("a rejected web identity token is a clear configuration error", function()
  U.write(tmp .. "/badtoken", "nope-token-999\n")
  local out, st = probe({AWS_WEB_IDENTITY_TOKEN_FILE = tmp .. "/badtoken", AWS_ROLE_ARN = "arn:aws:iam::123:role/backup",
                         AWS_ENDPOINT_URL_STS = M.url}, "webbad")
  T.eq(st, 3, out)
  T.match(out, "AssumeRoleWithWebIdentity")
  T.match(out, "InvalidIdentityToken")
  T.no_match(out, "nope%-token%-999")
end)

T.case("container credentials with an authorization token", function()
  local out, st = probe({AWS_CONTAINER_CREDENTIALS_FULL_URI = M.url .. "/creds",
                         AWS_CONTAINER_AUTHORIZATION_TOKEN = "container-auth-777"}, "container")
  T.eq(st, 0, out)
  T.match(out, "source=container body=again")
  T.ok(mock_lines("container auth=container%-auth%-777") >= 1, "token sent")
  T.no_match(out, "container%-auth%-777")
end)

T.case("EC2 instance metadata (IMDSv2: token first)", function()
  local out, st = probe({AWS_EC2_METADATA_DISABLED = "false", AWS_EC2_METADATA_SERVICE_ENDPOINT = M.url}, "imds")
  T.eq(st, 0, out)
  T.match(out, "source=imds body=again")
  T.ok(mock_lines("imds token ttl=21600") >= 1)
  T.ok(mock_lines("imds role=role%-a") >= 1)
  T.eq(mock_lines("imds missing token"), 0)
end)

T.case("no credentials anywhere: a configuration error with a hint", function()
  local out, st = probe({}, "none")
  T.eq(st, 3, out)
  T.match(out, "no AWS credentials found")
  T.match(out, "AWS_ACCESS_KEY_ID")
end)

os.execute("kill " .. M.pid)
os.execute("rm -rf " .. U.q(tmp))
return T.finish()
