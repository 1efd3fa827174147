-- Back up the application configuration to S3 as sanitised JSON (secrets stripped)
-- schedule: 30 2 * * *
--
-- clubio-dr run backup-configs [--dry-run] [--json]
--
-- One JSON document: timestamp, environment, the app version (APP_VERSION, else `git describe
-- --always --tags` in the checkout of CONFIG_DIR or the current directory), and
-- CONFIG_DIR/features.json and CONFIG_DIR/rate-limits.json when present — with secrets stripped
-- (see scripts/lib/clubio/sanitize.lua: secret-named keys, URL passwords, key- and token-shaped
-- values), the paths that were stripped listed in `redacted`. Uploaded to
-- s3://BACKUP_S3_BUCKET/configs/config-backup-YYYYMMDD-HHMMSS.json with SSE aws:kms and
-- STANDARD_IA, then checked with a head. --dry-run prints the document instead of uploading.
--
-- Environment: BACKUP_S3_BUCKET (required); CONFIG_DIR (./config), ENVIRONMENT (production),
-- APP_VERSION (git describe), CONFIG_BACKUP_PREFIX (configs/), S3_SSE (aws:kms; "none" to
-- omit), S3_SSE_KMS_KEY_ID, S3_STORAGE_CLASS (STANDARD_IA) (scripts/lib/clubio/objects.lua).
require("clubio.args").parse(arg, {})
local env, time, proc, clubio, log = require "env", require "time", require "proc", require "clubio", require "log"
local job, sanitize, objects = require "clubio.job", require "clubio.sanitize", require "clubio.objects"

local bucket = env.get("BACKUP_S3_BUCKET")
local dir = env.get("CONFIG_DIR", "./config"):gsub("/+$", "")
local environment = env.get("ENVIRONMENT", "production")
local prefix = env.get("CONFIG_BACKUP_PREFIX", "configs/")
local settings = objects.settings()
local FILES = {"features.json", "rate-limits.json"}

local J = job.new("backup-configs")
local now = time.now()
local key = string.format("%sconfig-backup-%s.json", prefix, time.format(now, "%Y%m%d-%H%M%S"))
local where = "s3://" .. bucket .. "/" .. key

-- The version: APP_VERSION, else git describe in the checkout holding CONFIG_DIR, else in the
-- current directory (nil outside a checkout).
local function app_version()
  local v = env.get("APP_VERSION", "")
  if v ~= "" then return v, "APP_VERSION" end
  for _, where in ipairs{dir, "."} do
    local ok, r = pcall(proc.run, {argv = {"git", "-C", where, "describe", "--always", "--tags"}})
    if ok and r.status == 0 then
      v = r.stdout:gsub("%s+$", "")
      if v ~= "" then return v, "git describe" end
    end
  end
  return nil, "unknown (not a git checkout; set APP_VERSION)"
end

local doc, redacted, included, missing, version, version_from
local function build()
  version, version_from = app_version()
  redacted, included, missing = {}, {}, {}
  local configs = {}
  for _, name in ipairs(FILES) do
    local path = dir .. "/" .. name
    local f = io.open(path, "rb")
    if f then
      local text = f:read("a")
      f:close()
      local node = sanitize.decode(text, path)
      for _, p in ipairs(sanitize.strip(node, name)) do redacted[#redacted + 1] = p end
      configs[#configs + 1] = {name, node}
      included[#included + 1] = name
    else
      missing[#missing + 1] = name
    end
  end
  local cfg = sanitize.object(configs)
  doc = sanitize.object{
    {"timestamp", time.iso(now)},
    {"environment", environment},
    {"version", version or require("cjson").null},
    {"host", clubio.hostname()},
    {"tool", "clubio-dr " .. clubio.version},
    {"config_dir", dir},
    {"configs", cfg},
    {"missing", setmetatable(missing, sanitize.array_mt)},
    {"redacted", setmetatable(redacted, sanitize.array_mt)},
  }
  -- Belt and braces: the secrets this process holds never reach the document, whatever their
  -- key. (Not log.redact: it also blanks non-secret values such as "tokens_per_minute": 600.)
  local out = sanitize.encode(doc) .. "\n"
  for _, name in ipairs{"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "NEON_API_KEY", "BACKUP_ENCRYPTION_KEY", "PGPASSWORD"} do
    local v = env.get(name, "")
    if #v >= 4 then
      local n
      out, n = out:gsub(v:gsub("%W", "%%%0"), sanitize.REDACTED)
      if n > 0 then redacted[#redacted + 1] = "(the value of " .. name .. ")" end
    end
  end
  return out
end

local text = J:step("read and sanitise the configuration", {
  plan = string.format("%s/{%s} (those present), secrets stripped", dir, table.concat(FILES, ",")),
  dry = build,
  hint = "fix the configuration file named above, then re-run",
}, build)
log.info(string.format("configs: %s%s; version %s; %d secret(s) stripped",
                       #included > 0 and table.concat(included, ", ") or "none found in " .. dir,
                       #missing > 0 and (" (missing: " .. table.concat(missing, ", ") .. ")") or "",
                       version or version_from, #redacted))

local c = objects.client{defaults = settings}
J:step("upload the sanitised configuration", {
  plan = string.format("%s (%s, %s)", where, job.bytes(#text), objects.describe(settings)),
  hint = "nothing was uploaded; check the bucket and the credentials, then re-run",
}, function()
  c:put(bucket, key, {body = text, content_type = "application/json",
                      metadata = {["clubio-environment"] = environment, ["clubio-version"] = clubio.version}})
end)

J:step("check the uploaded object", {plan = "head " .. where .. ": size"}, function()
  local h = c:head(bucket, key)
  if not h then clubio.fail{message = "the config backup is missing after upload: " .. where, class = "verify"} end
  if h.size ~= #text then
    clubio.fail{message = string.format("%s is %d bytes, %d were uploaded", where, h.size, #text), class = "verify",
                hint = "re-run backup-configs"}
  end
end)

local result = {bucket = bucket, key = key, bytes = #text, environment = environment,
                version = version, configs = included, missing = missing, redacted = redacted}
if J.dry_run then
  result.key = nil
  if not J.json then io.stdout:write(text) end
  return J:finish(result, "dry run: nothing was uploaded (the document above is what would be)")
end
return J:finish(result, string.format("backed up %d config file(s) to %s (%s, %d secret(s) stripped)",
                                       #included, where, job.bytes(#text), #redacted))
