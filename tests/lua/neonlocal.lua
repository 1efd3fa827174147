-- Test helper: a neon-local project of the test's own (the sandbox's TEST-ONLY
-- POST /_test/projects, with branch main, database clubio and role app). Tests that reset,
-- restore or promote branches use one, so they never disturb clubio-primary, whose main is the
-- DATABASE_URL of every other test running in parallel.
--
--   local project = require("neonlocal").project("scripts-neon-" .. os.time())
local M = {}

function M.project(id)
  local env, http, cjson = require "env", require "http", require "cjson"
  local root = env.get("NEON_API_HOST"):gsub("/api/v2/?$", "")
  local r = http.request{method = "POST", url = root .. "/_test/projects", timeout = 120,
                         headers = {Authorization = "Bearer " .. env.get("NEON_API_KEY"),
                                    ["Content-Type"] = "application/json"},
                         body = cjson.encode{id = id}}
  assert(r.status == 201, "neon-local would not create project " .. id .. ": " .. r.status .. " " .. r.body)
  return id
end

return M
