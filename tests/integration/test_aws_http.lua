-- The `http` and `aws` modules against the sandbox: SigV4-signed JSON and XML calls to the AWS
-- stand-in (tests/sandbox/aws_stub.py, which recomputes every signature on its own and answers
-- 403 when it differs — a mock, because no ECS/SSM/Route53 server can run here), a webhook-style
-- POST, transport errors, and secrets kept out of error messages.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local aws, http, cjson, env, proc, secret = require "aws", require "http", require "cjson", require "env", require "proc", require "secret"
local STUB = env.get("SANDBOX_AWS_STUB_URL")

local function stub_log()
  return cjson.decode(http.request{url = STUB .. "/_stub/requests"}.body)
end
local function last(service, action)
  local log = stub_log()
  for i = #log, 1, -1 do
    if log[i].service == service and log[i].action == action then return log[i] end
  end
end
local function ecs(action, body)
  return aws.request{service = "ecs",
                     headers = {["X-Amz-Target"] = "AmazonEC2ContainerServiceV20141113." .. action,
                                ["Content-Type"] = "application/x-amz-json-1.1"},
                     body = cjson.encode(body)}
end

T.case("aws.request: a signed ECS call the stub accepts, and its answer", function()
  local r = ecs("ListTaskDefinitions", {familyPrefix = "clubio-api", sort = "DESC", maxResults = 2})
  T.eq(r.status, 200, r.body)
  local doc = cjson.decode(r.body)
  T.eq(#doc.taskDefinitionArns, 2)
  T.match(doc.taskDefinitionArns[1], "task%-definition/clubio%-api:%d+$")
  T.match(r.headers["content-type"], "json")
end)

T.case("aws.request: UpdateService changes the stub's state, seen by DescribeServices", function()
  local r = ecs("UpdateService", {cluster = "clubio-production", service = "clubio-api", taskDefinition = "clubio-api:7"})
  T.eq(r.status, 200, r.body)
  T.eq(last("ecs", "UpdateService").body.taskDefinition, "clubio-api:7")
  r = ecs("DescribeServices", {cluster = "clubio-production", services = {"clubio-api"}})
  T.match(cjson.decode(r.body).services[1].taskDefinition, "clubio%-api:7$")
  r = ecs("UpdateService", {cluster = "clubio-production", service = "clubio-api", taskDefinition = "clubio-api:999"})
  T.eq(r.status, 400)
  T.match(r.body, "ClientException")
end)

T.case("aws.request: query parameters and a path with spaces are signed as AWS does", function()
  local r = aws.request{service = "route53", method = "GET", path = "/2013-04-01/hostedzone/Z 1/rrset",
                        query = {name = "db.clubio.example.", type = "CNAME", ["max items"] = "1/2"}}
  T.eq(r.status, 200, r.body)
  T.match(r.body, "ListResourceRecordSetsResponse")
end)

T.case("aws.request: Route53 UPSERT in XML, and SSM SecureString put/get", function()
  local xml = [[<?xml version="1.0" encoding="UTF-8"?>
<ChangeResourceRecordSetsRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeBatch><Changes><Change><Action>UPSERT</Action><ResourceRecordSet><Name>db.clubio.example</Name><Type>CNAME</Type><TTL>60</TTL><ResourceRecords><ResourceRecord><Value>dr.example</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>]]
  local r = aws.request{service = "route53", path = "/2013-04-01/hostedzone/ZTEST/rrset/",
                        headers = {["Content-Type"] = "text/xml"}, body = xml}
  T.eq(r.status, 200, r.body)
  T.match(r.body, "<Status>PENDING</Status>")
  T.eq(last("route53", "ChangeResourceRecordSets").body.Changes[1].Values[1], "dr.example")
  local function ssm(action, body)
    return aws.request{service = "ssm", headers = {["X-Amz-Target"] = "AmazonSSM." .. action,
                       ["Content-Type"] = "application/x-amz-json-1.1"}, body = cjson.encode(body)}
  end
  T.eq(ssm("PutParameter", {Name = "/t/aws-http", Value = "v1", Type = "SecureString", Overwrite = true}).status, 200)
  local g = cjson.decode(ssm("GetParameter", {Name = "/t/aws-http", WithDecryption = true}).body)
  T.eq(g.Parameter.Value, "v1")
end)

T.case("aws.request: a wrong secret key is refused by the peer's signature check", function()
  local r = proc.run{argv = {env.get("CLUBIO_DR_BIN"), "-e",
    "local r = require('aws').request{service='ssm', body='{}', headers={['X-Amz-Target']='AmazonSSM.GetParameter'}} print(r.status)"},
    env = {AWS_SECRET_ACCESS_KEY = "not-the-sandbox-key"}}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "^403")
end)

T.case("aws.request: bad options are one-line usage errors", function()
  local e = T.raises(aws.request, {service = "ecs", bogus = 1})
  T.match(tostring(e), "unknown option")
  e = T.raises(aws.request, {service = "ECS"})
  T.match(tostring(e), "lower%-case")
  e = T.raises(aws.request, {service = "ecs", endpoint = "http://h/x"})
  T.match(tostring(e), "is not a URL like")
  e = T.raises(aws.request, {service = "ecs", headers = {Authorization = "x"}})
  T.match(tostring(e), "set by the signer")
end)

T.case("http.request: a JSON POST and its echo, and a refused connection as a retryable error", function()
  local r = http.request{url = STUB .. "/_stub/requests", timeout = 5}
  T.eq(r.status, 200)
  T.ok(type(cjson.decode(r.body)) == "table")
  -- unsigned POSTs are refused by the stub with a JSON error: a status, not an exception
  r = http.request{method = "POST", url = STUB .. "/", headers = {["Content-Type"] = "application/json"}, body = "{}"}
  T.eq(r.status, 403)
  local e = T.raises(http.request, {url = "http://127.0.0.1:1/services/T000/B000/XXXXSECRET", timeout = 2})
  T.ok(require("clubio").is_error(e), "structured error")
  T.ok(e.retryable, "transport errors are retryable")
  T.no_match(tostring(e), "XXXXSECRET")
  e = T.raises(http.request, {url = secret.value("http://127.0.0.1:1/hooks/TOPSECRET"), timeout = 2})
  T.no_match(tostring(e), "TOPSECRET")
  e = T.raises(http.request, {url = "ftp://x/y"})
  T.match(tostring(e), "not an http")
end)

T.case("http.request: the captured body is capped at max_body, and says it was cut", function()
  local full = http.request{url = STUB .. "/_stub/requests"}
  T.ok(#full.body > 20, "a body longer than the cap")
  T.eq(full.truncated, false)
  local cut = http.request{url = STUB .. "/_stub/requests", max_body = 20}
  T.eq(cut.status, 200)
  T.eq(#cut.body, 20)
  T.eq(cut.body, full.body:sub(1, 20), "the body's first bytes")
  T.eq(cut.truncated, true)
end)

os.exit(T.finish())
