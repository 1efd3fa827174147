-- Run by test_s3.lua with a wrong AWS_SECRET_ACCESS_KEY: the put must fail with a structured
-- error that names the object and shows neither the secret nor the signature.
local s3 = require "s3"
local env = require "env"
local c = s3.client{max_attempts = 1}
c:put(env.get("BACKUP_S3_BUCKET"), "k", "x")
