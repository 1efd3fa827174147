-- The neon client against neon-local: real branches, real point-in-time recovery (a branch at
-- time T holds exactly the rows committed before T), reset and restore, set-default, delete,
-- structured 401/404/history-window errors, and 423/429 retries through neon-local's test-only
-- fault injection (POST /_test/faults).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local neon = require "neon"
local env = require "env"
local proc = require "proc"
local time = require "time"
local cjson = require "cjson"
local log = require "log"

local n = neon.client{}
local uniq = tostring(os.time() % 100000) .. tostring(math.random(100, 999))

-- psql against a connection URI, the password through PGPASSWORD (never argv).
local function psql(uri, sql)
  local user, pw, rest = uri:match("^postgresql://([^:]+):([^@]+)@(.*)$")
  local r = proc.run{argv = {"psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "postgresql://" .. user .. "@" .. rest,
                             "-c", sql}, env = {PGPASSWORD = pw}}
  if r.status ~= 0 then error("psql failed: " .. r.stderr) end
  return (r.stdout:gsub("%s+$", ""))
end

local function faults(spec)
  local r = proc.run{argv = {"curl", "-sf", "-H", "@-", "-H", "Content-Type: application/json", "-d", cjson.encode(spec),
                             env.get("NEON_API_HOST"):gsub("/api/v2$", "") .. "/_test/faults"},
                     stdin = "Authorization: Bearer " .. env.get("NEON_API_KEY") .. "\n"}
  assert(r.status == 0, "fault injection failed: " .. r.stderr)
end

local main_uri
T.case("project, branches, the default branch and its connection URI", function()
  local p = n:project()
  T.eq(p.id, env.get("NEON_PROJECT_ID"))
  local main = n:branch("main")
  T.ok(main and main.default, "main is the default branch")
  T.eq(n:branch(main.id).name, "main")
  T.eq(n:branch("no-such-branch-" .. uniq), nil)
  main_uri = n:connection_uri{branch = "main", database = "clubio", role = "app"}
  T.eq(main_uri, env.get("DATABASE_URL"))
  T.eq(n:connection_uri{}, main_uri) -- sole database and role, default branch
  T.no_match(log.redact("uri " .. main_uri), main_uri:match(":([^:@]+)@"))
  T.ok(#n:endpoints() >= 1, "endpoints listed")
end)

T.case("a branch at a past timestamp holds exactly the rows as of that time (real PITR)", function()
  local tbl = "pitr_" .. uniq
  psql(main_uri, "CREATE TABLE " .. tbl .. "(i int); INSERT INTO " .. tbl .. " VALUES (1), (2)")
  time.sleep(1.1)
  local at = time.now()
  time.sleep(1.1)
  psql(main_uri, "INSERT INTO " .. tbl .. " VALUES (3); DELETE FROM " .. tbl .. " WHERE i = 1")
  local b = n:create_branch{name = "pitr-" .. uniq, parent = "main", at = at}
  T.eq(b.current_state, "ready")
  T.ok(b.parent_timestamp ~= nil, "parent_timestamp recorded")
  local uri = n:connection_uri{branch = b.name, database = "clubio", role = "app"}
  T.ok(uri ~= main_uri, "own endpoint")
  T.eq(psql(uri, "SELECT string_agg(i::text, ',' ORDER BY i) FROM " .. tbl), "1,2")
  T.eq(psql(main_uri, "SELECT string_agg(i::text, ',' ORDER BY i) FROM " .. tbl), "2,3")
  -- a head branch sees everything, and writes to it stay on it
  local h = n:create_branch{name = "head-" .. uniq}
  local huri = n:connection_uri{branch = h.id}
  T.eq(psql(huri, "SELECT string_agg(i::text, ',' ORDER BY i) FROM " .. tbl), "2,3")
  psql(huri, "INSERT INTO " .. tbl .. " VALUES (99)")
  T.eq(psql(main_uri, "SELECT count(*) FROM " .. tbl .. " WHERE i = 99"), "0")

  -- branches run with logical replication on (the change archiver and DR need slots), and a
  -- restore removes the branch's replication slots, as Neon's does
  T.eq(psql(huri, "SHOW wal_level"), "logical")
  T.ok(tonumber(psql(huri, "SHOW max_replication_slots")) >= 10, "slots to spare")
  psql(huri, "SELECT pg_create_logical_replication_slot('slot_" .. uniq .. "', 'pgoutput')")
  -- reset to parent: the branch's data becomes main's again, on the same endpoint
  local port = huri:match(":(%d+)/")
  local r = n:restore_branch{branch = h.name, preserve_under_name = "head-old-" .. uniq}
  T.ok(r.last_reset_at ~= nil, "last_reset_at set")
  T.eq(n:connection_uri{branch = h.id}:match(":(%d+)/"), port)
  T.eq(psql(huri, "SELECT count(*) FROM " .. tbl .. " WHERE i = 99"), "0")
  T.eq(psql(huri, "SELECT count(*) FROM pg_replication_slots"), "0", "the restore removed the slot")
  local old = n:branch("head-old-" .. uniq)
  T.ok(old, "the old data was preserved under its new name")
  T.eq(psql(n:connection_uri{branch = old.id}, "SELECT count(*) FROM " .. tbl .. " WHERE i = 99"), "1")
  -- as on Neon, the preserved branch takes the branch's place: it becomes its parent
  T.eq(n:branch(h.id).parent_id, old.id)
  T.eq(old.parent_id, n:branch("main").id)
  -- a branch with children, or restored from its own history, needs preserve_under_name (the
  -- API's rule): the client says so before asking, and neon-local refuses as Neon does
  local e = T.raises(n.restore_branch, n, {branch = old.id, source = "main"})
  T.eq(e.code, "usage.neon_preserve")
  e = T.raises(n.restore_branch, n, {branch = h.id, source = h.id, at = at})
  T.eq(e.code, "usage.neon_preserve")
  local st = proc.run{argv = {"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "@-", "-H",
                              "Content-Type: application/json", "-d", cjson.encode{source_branch_id = n:branch("main").id},
                              env.get("NEON_API_HOST") .. "/projects/" .. env.get("NEON_PROJECT_ID") .. "/branches/" .. old.id .. "/restore"},
                      stdin = "Authorization: Bearer " .. env.get("NEON_API_KEY") .. "\n"}
  T.eq(st.stdout, "400", "neon-local refuses a restore of a branch with children without preserve_under_name")

  -- restore from a source at a time: main as of `at`
  n:restore_branch{branch = h.name, source = "main", at = at}
  T.eq(psql(huri, "SELECT string_agg(i::text, ',' ORDER BY i) FROM " .. tbl), "1,2")

  for _, x in ipairs{h.id, old.id, b.id} do T.eq(n:delete_branch(x), true) end
  T.eq(n:branch(b.name), nil)
  psql(main_uri, "DROP TABLE " .. tbl)
end)

-- GET on the API with the key on stdin (never argv): the decoded body
local function api_get(path)
  local r = proc.run{argv = {"curl", "-sf", "-H", "@-", env.get("NEON_API_HOST") .. path},
                     stdin = "Authorization: Bearer " .. env.get("NEON_API_KEY") .. "\n"}
  assert(r.status == 0, "GET " .. path .. " failed")
  return cjson.decode(r.stdout)
end

T.case("pooled URIs, expires_at, operation pages, ids only in paths (as the API)", function()
  local pooled = n:connection_uri{branch = "main", database = "clubio", role = "app", pooled = true}
  T.match(pooled:match("@([^:/]+)"), "%-pooler", "the pooled host has -pooler")
  T.eq(psql(pooled, "SELECT 1"), "1")
  -- an expired branch is deleted
  local b = n:create_branch{name = "expiring-" .. uniq, endpoint = false, expires_at = time.now() + 2}
  T.ok(b.expires_at ~= nil, "expires_at recorded")
  local gone = false
  for _ = 1, 120 do
    if not n:branch(b.id) then gone = true; break end
    time.sleep(0.25)
  end
  T.ok(gone, "the branch was deleted once expired")
  local e = T.raises(n.create_branch, n, {name = "expired-" .. uniq, endpoint = false, expires_at = time.now() - 10})
  T.match(e.message, "expires_at")
  -- operations: limit and cursor page through, newest first, without overlap
  local p = "/projects/" .. env.get("NEON_PROJECT_ID") .. "/operations"
  local all = api_get(p).operations
  T.ok(#all >= 3, "operations to page through")
  local first = api_get(p .. "?limit=2")
  T.eq(#first.operations, 2)
  T.eq(first.operations[1].id, all[1].id)
  local second = api_get(p .. "?limit=2&cursor=" .. first.pagination.cursor)
  T.eq(second.operations[1].id, all[3].id)
  -- a branch name is not an id: the API's paths take ids only
  local r = proc.run{argv = {"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "@-",
                             env.get("NEON_API_HOST") .. "/projects/" .. env.get("NEON_PROJECT_ID") .. "/branches/main"},
                     stdin = "Authorization: Bearer " .. env.get("NEON_API_KEY") .. "\n"}
  T.eq(r.stdout, "404")
end)

T.case("set_default moves the default and back", function()
  local b = n:create_branch{name = "dflt-" .. uniq, endpoint = false}
  T.eq(#n:endpoints(b), 0)
  T.eq(n:set_default(b).default, true)
  T.eq(n:branch("main").default, false)
  T.eq(n:set_default("main").default, true)
  n:delete_branch(b)
end)

T.case("errors: 404 names the project or branch, 401 the key, out-of-window says the window", function()
  local e = T.raises(n.delete_branch, n, "missing-" .. uniq)
  T.eq(e.code, "neon.branch_not_found")
  T.match(e.message, "missing%-" .. uniq)
  T.ok(e.message:find(env.get("NEON_PROJECT_ID"), 1, true), "names the project")
  e = T.raises(function() neon.client{project_id = "nope-" .. uniq}:project() end)
  T.eq(e.code, "neon.project_not_found")
  T.match(e.message, "nope%-" .. uniq)
  local bad = "wrong-key-" .. uniq
  e = T.raises(function() neon.client{api_key = bad}:branches() end)
  T.eq(e.code, "neon.unauthorized")
  T.eq(e.class, "config")
  T.no_match(tostring(e), bad)
  -- the hint reads right after redaction (a "NAME: word" would be masked as a secret)
  T.match(e.hint, "NEON_API_KEY; it must be a valid key")
  T.no_match(e.hint, "%*%*%*")
  e = T.raises(n.create_branch, n, {name = "old-" .. uniq, at = "2001-01-01T00:00:00Z"})
  T.eq(e.code, "neon.outside_history")
  T.match(e.message, "history of this branch: from .* to now; retention %d+ s")
  -- a time before the branch's history begins but within the retention period: the window
  -- stated is where the history really begins (main's creation), not "now minus retention"
  local main = n:branch("main")
  local before = time.parse(main.created_at) - 60
  e = T.raises(n.create_branch, n, {name = "early-" .. uniq, at = before})
  T.eq(e.code, "neon.outside_history")
  local from = e.message:match("history of this branch: from (%S+) to now")
  T.ok(from and time.parse(from) > before, "the stated window does not contain the refused time: " .. e.message)
  -- a child branch inherits its parent's history: a point before the child's creation works
  local child = n:create_branch{name = "child-" .. uniq, endpoint = false}
  local g = n:create_branch{name = "grandchild-" .. uniq, parent = child.id, at = time.parse(child.created_at) - 1,
                            endpoint = false}
  T.eq(g.current_state, "ready")
  n:delete_branch(g)
  n:delete_branch(child)
  e = T.raises(n.create_branch, n, {name = "x", colour = "red"})
  T.match(e.message, "colour")
  e = T.raises(n.create_branch, n, {name = "x", at = "yesterday"})
  T.eq(e.code, "usage.neon_time")
end)

T.case("423 Locked and 429 Too Many Requests are retried (Retry-After honoured)", function()
  faults{status = 423, count = 2, path = "/branches$", method = "GET"}
  T.ok(#n:branches() >= 1, "listed after two 423s")
  faults{status = 429, count = 1, path = "/projects/[^/]+$", retry_after = 1}
  local t0 = time.monotonic()
  T.eq(n:project().id, env.get("NEON_PROJECT_ID"))
  T.ok(time.monotonic() - t0 >= 0.9, "waited for Retry-After")
  faults{status = 503, count = 1, path = "/branches$", method = "POST"}
  local b = n:create_branch{name = "retry-" .. uniq, endpoint = false}
  T.eq(b.current_state, "ready")
  n:delete_branch(b)
  -- a short deadline gives up with a retryable error naming the cause
  faults{status = 423, count = 100, path = "/operations$"}
  local quick = neon.client{timeout = 1}
  local e = T.raises(quick.operations, quick)
  T.eq(e.code, "neon.unavailable")
  T.eq(e.retryable, true)
  T.match(e.message, "423")
  faults{clear = true}
  T.ok(#n:operations() > 0, "operations listed")
end)

return T.finish()
