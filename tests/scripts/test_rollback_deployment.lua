-- rollback-deployment against the AWS stand-in (tests/sandbox/aws_stub.py: recomputes every
-- SigV4 signature and answers 403 when it differs; a mock, because no ECS server can run here).
-- A private stub instance, so this test owns the service's state and reads back exactly the
-- requests it caused from the stub's log.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local cjson = require "cjson"

local dir = T.tmpdir()
local stub = U.aws_stub(dir)
local E = {AWS_ENDPOINT_URL_ECS = stub.url, CLUBIO_DR_JOURNAL = dir .. "/journal.jsonl", ECS_WAIT_SECONDS = "30"}

local function last(action)
  local log = stub.requests()
  for i = #log, 1, -1 do if log[i].action == action then return log[i], #log end end
  return nil, #log
end
local function count(action)
  local n = 0
  for _, r in ipairs(stub.requests()) do if r.action == action then n = n + 1 end end
  return n
end

T.case("without VERSION: recent revisions, newest first, and the deployed one", function()
  local r = U.run({"rollback-deployment"}, E)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "runs clubio%-api:12")
  T.match(r.stdout, "12%s+clubio%-api:12%s+<%- deployed")
  local req = last("ListTaskDefinitions")
  T.eq(req.body.familyPrefix, "clubio-api")
  T.eq(req.body.sort, "DESC")
  r = U.run({"rollback-deployment", "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.deployed, "clubio-api:12")
  T.eq(r.doc.revisions[1].revision, 12)
  T.eq(r.doc.revisions[1].deployed, true)
  T.eq(#r.doc.revisions, 10)
  T.eq(last("DescribeServices").body.cluster, "clubio-production")
end)

T.case("--dry-run shows the UpdateService request and changes nothing", function()
  local r = U.run({"rollback-deployment", "7", "--dry-run"}, E)
  T.eq(r.status, 0, r.stderr)
  local shown = cjson.decode(r.stdout:match("POST ecs UpdateService (%b{})"))
  T.eq(shown.taskDefinition, "clubio-api:7")
  T.eq(shown.cluster, "clubio-production")
  T.eq(shown.service, "clubio-api")
  T.eq(count("UpdateService"), 0)
end)

T.case("non-interactive without --yes refuses (exit 5), nothing sent", function()
  local r = U.run({"rollback-deployment", "7"}, E)
  T.eq(r.status, 5)
  T.match(r.stderr, "refusing without confirmation")
  T.eq(count("UpdateService"), 0)
  local j = U.read(dir .. "/journal.jsonl")
  T.match(j, '"status":"declined"')
  T.match(j, '"args":%["7"%]', "the run's arguments are in the journal")
end)

T.case("with --yes: UpdateService signed and sent with the right body, then stable", function()
  local r = U.run({"rollback-deployment", "clubio-api:7", "--yes", "--json"}, E)
  T.eq(r.status, 0, r.stderr)
  local req = last("UpdateService")
  T.eq(req.body.cluster, "clubio-production")
  T.eq(req.body.service, "clubio-api")
  T.eq(req.body.taskDefinition, "clubio-api:7")
  T.eq(r.doc.result.previous, "clubio-api:12")
  T.eq(r.doc.result.task_definition, "clubio-api:7")
  T.match(r.doc.result.undo, "rollback%-deployment clubio%-api:12")
  -- the service now runs :7, and a second run is a no-op
  r = U.run({"rollback-deployment", "--json"}, E)
  T.eq(r.doc.deployed, "clubio-api:7")
  r = U.run({"rollback-deployment", "7", "--yes"}, E)
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "already runs clubio%-api:7")
  T.eq(count("UpdateService"), 1)
  -- ECS_CLUSTER / ECS_SERVICE reach the request
  r = U.run({"rollback-deployment", "8", "--yes"}, {AWS_ENDPOINT_URL_ECS = stub.url, CLUBIO_DR_JOURNAL = "off", ECS_SERVICE = "other-api"})
  T.eq(r.status, 3)
  T.match(r.stderr, "service other%-api in cluster clubio%-production")
  T.eq(last("DescribeServices").body.services[1], "other-api")
end)

T.case("bad arguments, a missing revision, wrong credentials, ECS unreachable", function()
  local r = U.run({"rollback-deployment", "seven"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "not a task definition revision")
  r = U.run({"rollback-deployment", "7", "8"}, E)
  T.eq(r.status, 2)
  r = U.run({"rollback-deployment", "99", "--yes"}, E)
  T.eq(r.status, 2)
  T.match(r.stderr, "no task definition clubio%-api:99")
  local before = #stub.requests()
  r = U.run({"rollback-deployment", "5", "--yes"}, {AWS_ENDPOINT_URL_ECS = stub.url, CLUBIO_DR_JOURNAL = "off",
                                                    AWS_SECRET_ACCESS_KEY = "not-the-secret-key-at-all"})
  T.eq(r.status, 3)
  T.match(r.stderr, "403")
  T.no_match(r.stderr, "not%-the%-secret", "the secret stays out of the message")
  T.eq(#stub.requests(), before, "the stub accepted nothing")
  r = U.run({"rollback-deployment", "5", "--yes"}, {AWS_ENDPOINT_URL_ECS = "http://127.0.0.1:" .. U.closed_port(), CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 1)
  T.match(r.stderr, "127%.0%.0%.1")
  r = U.run({"rollback-deployment"}, {AWS_ENDPOINT_URL_ECS = stub.url, CLUBIO_DR_JOURNAL = "off", ECS_WAIT_SECONDS = "soon"})
  T.eq(r.status, 3)
end)

stub.stop()
return T.finish()
