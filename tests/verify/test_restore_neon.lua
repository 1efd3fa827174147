-- verify.restore_test into a temporary neon-local branch (a real PostgreSQL 15 cluster) of the
-- DR project: a good export passes end to end, a manifest naming a missing table fails with
-- table-mismatch, and the scratch branch (created with expires_at) is deleted every time; the
-- restore-test script with --neon-branch. The branch starts as a copy of its parent; the
-- restore drops the copied objects first, so the parent's own data must not leak into the
-- comparison (the parent gets a table the archive does not have).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/verify/?.lua;" .. package.path
local T = require "testing"
local F = require "fixture"
local env, s3, secret, neon, pgdump = require "env", require "s3", require "secret", require "neon", require "pgdump"
local verify, time = require "verify", require "time"
local proc, cjson = require "proc", require "cjson"

local PROJECT = env.get("NEON_PROJECT_ID_DR")
local n = neon.client{project_id = PROJECT}
local PREFIX = "test-verify-neon-" .. os.time() .. "-" .. math.random(1 << 20) .. "/"
local dir = T.tmpdir()
local HIST = dir .. "/history.jsonl"
-- exported from a database the role `app` owns, as production's is (the branch's role is app)
local key, exported = F.export("verify_neon_src", PREFIX, 2000, "app")
local c = s3.client{}

-- a parent branch of our own, holding something the archive does not have
local PARENT = "verify-neon-parent-" .. os.time() .. "-" .. math.random(1 << 20)
n:create_branch{name = PARENT}
do
  local db <close> = pgdump.connect(n:connection_uri{branch = PARENT})
  db:query("CREATE TABLE IF NOT EXISTS parent_only (id int); INSERT INTO parent_only VALUES (1)")
end

local function scratch_branches()
  local out = {}
  for _, b in ipairs(n:branches()) do
    if b.name:match("^restore%-test%-") then out[#out + 1] = b.name end
  end
  return out
end
local before = #scratch_branches()

T.case("a good archive restores into a temporary neon branch, which is deleted afterwards", function()
  local r = verify.restore_test{bucket = F.BUCKET, key = key, neon = n, parent = PARENT, history_file = HIST,
                                sanity = {{name = "orders", sql = "SELECT count(*) FROM orders", expect = 2000},
                                          {name = "parent's table dropped", sql = "SELECT to_regclass('parent_only') IS NULL"},
                                          -- while the test runs, its branch exists with expires_at set in neon-local
                                          {name = "branch expires", sql = "SELECT 1", expect = function()
                                            for _, b in ipairs(n:branches()) do
                                              if b.name:match("^restore%-test%-") and b.expires_at and b.expires_at ~= cjson.null then return true end
                                            end
                                            return false
                                          end}}}
  T.eq(r.ok, true, r.message)
  T.eq(r.table_count, 3)
  T.eq(r.rows, exported.rows)
  T.eq(r.target.kind, "neon-branch")
  T.match(r.target.name, "^restore%-test%-%d%d%d%d%d%d%d%d%-%d%d%d%d%d%d%-%x+$")
  T.eq(r.target.project, PROJECT)
  T.ok(time.parse(r.target.expires_at) > time.now() + 3600, "expires_at set hours ahead")
  T.eq(r.target.removed, true)
  T.eq(n:branch(r.target.name), nil)
  T.ok(r.seconds.download_restore > 0 and r.seconds.create_target > 0, "seconds")
  T.eq(#scratch_branches(), before)
end)

T.case("a manifest naming a missing table: table-mismatch, and the branch is gone", function()
  local k = PREFIX .. "ghost.sql.gz.enc"
  c:copy{src_bucket = F.BUCKET, src_key = key, dst_bucket = F.BUCKET, dst_key = k}
  local m = assert(verify.check_manifest(c:get(F.BUCKET, key .. verify.MANIFEST_SUFFIX)))
  m.auth = nil
  m.tables["public.ghost"] = {rows = 3}
  c:put(F.BUCKET, k .. verify.MANIFEST_SUFFIX, verify.sign_manifest(m))
  local r = verify.restore_test{bucket = F.BUCKET, key = k, neon = n, parent = PARENT, history_file = HIST}
  T.eq(r.reason, "table-mismatch")
  T.eq(r.table, "public.ghost")
  T.eq(r.target.removed, true)
  T.eq(n:branch(r.target.name), nil)
  T.eq(#scratch_branches(), before)
end)

T.case("the history holds both, with the branch and no secrets", function()
  local h = verify.history{file = HIST}
  T.eq(#h, 2)
  T.eq(h[1].reason, "table-mismatch")
  T.eq(h[2].ok, true)
  T.eq(h[2].target.scratch.kind, "neon-branch")
  T.no_match(F.read(HIST), env.get("NEON_API_KEY"), "no API key")
end)

T.case("the restore-test script with --neon-branch", function()
  local r = F.run({"restore-test", "latest", "--neon-branch", "--json"},
                  {BACKUP_S3_BUCKET = F.BUCKET, EXPORT_PREFIX = PREFIX, NEON_PROJECT_ID = PROJECT,
                   RESTORE_TEST_NEON_PARENT = PARENT, RESTORE_TEST_SERVER_URL = ""})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.ok, true)
  T.eq(r.doc.result.target.kind, "neon-branch")
  T.eq(r.doc.result.target.removed, true)
  T.eq(#scratch_branches(), before)
end)

n:delete_branch(PARENT)
F.drop_database("verify_neon_src")
proc.run{argv = {"rm", "-rf", dir}}
return T.finish()
