-- The tool's S3 objects, in one place: the settings every object it writes gets (server-side
-- encryption, KMS key id, storage class) and the key prefixes it writes under.
--
--   local objects = require "clubio.objects"
--   local c = objects.client()          -- an s3 client whose every put/upload/copy/sync carries
--                                       -- the settings, unless a call gives its own
--   objects.settings()                  --> {sse = "aws:kms", kms_key_id = "alias/b", storage_class = "STANDARD_IA"}
--   objects.describe()                  --> "SSE aws:kms (key alias/b), STANDARD_IA"
--   objects.prefixes()                  --> {{name = "exports", prefix = "database/"}, ...}
--
-- Scripts and libraries get their s3 clients here (tests/s3/test_s3_objects.lua checks that no
-- other file makes one), so an object added later is encrypted like the others without anyone
-- remembering to pass the settings.
--
-- Environment: S3_SSE (aws:kms, AES256 or none; default aws:kms), S3_SSE_KMS_KEY_ID (with
-- aws:kms; default: the bucket's or the account's key), S3_STORAGE_CLASS (STANDARD_IA; "none":
-- the bucket's default). Prefixes: EXPORT_PREFIX (database/), CONFIG_BACKUP_PREFIX (configs/),
-- ASSETS_BACKUP_PREFIX (assets/), CHANGES_PREFIX (changes/: the change archive).
local env = require "env"
local M = {}

local function fail(message, hint)
  require("clubio").fail{message = message, class = "config", code = "config.env", hint = hint}
end

-- The object settings from the environment, checked (a bad value is a config error naming it).
function M.settings()
  local sse = env.get("S3_SSE", "aws:kms")
  if sse == "none" or sse == "" then sse = nil
  elseif sse ~= "aws:kms" and sse ~= "AES256" then
    fail("S3_SSE must be aws:kms, AES256 or none, got '" .. sse .. "'", "unset it for aws:kms (the runbook's setting)")
  end
  local kms = env.get("S3_SSE_KMS_KEY_ID", "")
  if kms == "" then kms = nil
  elseif sse ~= "aws:kms" then
    fail("S3_SSE_KMS_KEY_ID is set but S3_SSE is " .. tostring(sse or "none"),
         "a KMS key goes with S3_SSE=aws:kms; unset one of them")
  end
  local class = env.get("S3_STORAGE_CLASS", "STANDARD_IA")
  if class == "none" or class == "" then class = nil
  elseif not class:match("^[A-Z_]+$") then
    fail("S3_STORAGE_CLASS '" .. class .. "' is not a storage class", "e.g. STANDARD, STANDARD_IA, GLACIER_IR")
  end
  return {sse = sse, kms_key_id = kms, storage_class = class}
end

-- An s3 client (options as s3.client's) whose writes carry the settings.
function M.client(opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.defaults = o.defaults or M.settings()
  return require("s3").client(o)
end

-- A short text of the settings for plans and logs.
function M.describe(s)
  s = s or M.settings()
  local sse = s.sse and ("SSE " .. s.sse .. (s.kms_key_id and (" (key " .. s.kms_key_id .. ")") or "")) or "no SSE"
  return sse .. ", " .. (s.storage_class or "the bucket's storage class")
end

-- The key prefixes the tool writes under in BACKUP_S3_BUCKET, each once.
function M.prefixes()
  local list = {
    {name = "exports", prefix = env.get("EXPORT_PREFIX", "database/")},
    {name = "configs", prefix = env.get("CONFIG_BACKUP_PREFIX", "configs/")},
    {name = "assets", prefix = env.get("ASSETS_BACKUP_PREFIX", "assets/")},
    {name = "changes", prefix = env.get("CHANGES_PREFIX", "changes/")},
  }
  local out, seen = {}, {}
  for _, p in ipairs(list) do
    if p.prefix == "" then
      fail(string.format("the %s prefix is empty", p.name),
           "give each of EXPORT_PREFIX, CONFIG_BACKUP_PREFIX, ASSETS_BACKUP_PREFIX, CHANGES_PREFIX a folder, e.g. database/")
    end
    if not seen[p.prefix] then seen[p.prefix] = true; out[#out + 1] = p end
  end
  return out
end

return M
