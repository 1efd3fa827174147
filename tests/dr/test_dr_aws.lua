-- dr-failover's AWS targets through SigV4: the application's DATABASE_URL as an SSM SecureString
-- parameter, traffic routing by a Route53 UPSERT, and the webhook notification. SSM and Route53
-- are the sandbox's stand-in (tests/sandbox/aws_stub.py, which checks every signature: a mock,
-- since no real AWS control plane can run here); the webhook is a local HTTP receiver.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"
local cjson, aws, proc = require "cjson", require "aws", require "proc"

local f = F.new("aws")
local password = require("clubio.dr").parse_url(f.dr_url).password
local param = "/clubio/" .. f.db .. "/DATABASE_URL"
local zone = "Z" .. f.db:upper():gsub("_", "")

-- a webhook receiver: answers 200 and appends each body as a line to the file
local hook_port, hook_bodies = f.dir .. "/hook.port", f.dir .. "/hook.bodies"
local hook_pid = F.spawn({"python3", "-c", [[
import http.server, sys
port_file, bodies = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        b = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(bodies, "ab") as f: f.write(b + b"\n")
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(port_file + ".tmp", "w").write(str(s.server_address[1])); __import__("os").rename(port_file + ".tmp", port_file)
s.serve_forever()
]], hook_port, hook_bodies}, {}, f.dir .. "/hook.log")
local port = F.wait_until("the webhook receiver", function()
  local fh = io.open(hook_port, "r")
  if not fh then return nil end
  local p = fh:read("l")
  fh:close()
  return p
end)
local AWS_ENV = {DR_APP_TARGET = "ssm:" .. param, DR_ROUTE53_ZONE_ID = "/hostedzone/" .. zone,
                 DR_ROUTE53_RECORD = "db.clubio.example", DR_ROUTE53_VALUE = "dr-lb.us-west-2.clubio.example",
                 DR_WEBHOOK_URL = "http://127.0.0.1:" .. port .. "/hooks/dr"}

local function ssm_get()
  local r = aws.request{service = "ssm", headers = {["X-Amz-Target"] = "AmazonSSM.GetParameter",
                                                   ["Content-Type"] = "application/x-amz-json-1.1"},
                        body = cjson.encode({Name = param, WithDecryption = true})}
  return r.status, r.status == 200 and cjson.decode(r.body).Parameter or nil
end

T.case("setup", function() T.eq(f:run{"dr-setup"}.status, 0) end)

T.case("wrong AWS credentials: the failover stops at update-app-target, saying what to do", function()
  local e = {AWS_SECRET_ACCESS_KEY = "not-the-key"}
  for k, v in pairs(AWS_ENV) do e[k] = v end
  local r = f:run({"dr-failover", "--yes"}, e)
  T.eq(r.status, 1, r.all)
  T.match(r.stderr, "failover stopped at step 7/9 'update%-app%-target': ssm PutParameter answered HTTP 403")
  T.match(r.stderr, "update the application's DATABASE_URL by hand")
  T.match(r.stderr, "re%-run with %-%-from update%-routing")
  T.no_match(r.all, password)
  T.no_match(r.all, "not%-the%-key")
  local steps = f:last_run("dr-failover")
  T.eq(steps[#steps], "update-app-target:failed")
  T.eq(ssm_get(), 400, "no parameter written")
end)

T.case("--from update-app-target: SSM SecureString, Route53 UPSERT, webhook", function()
  local r = f:run({"dr-failover", "--yes", "--json", "--from", "update-app-target"}, AWS_ENV)
  T.eq(r.status, 0, r.all)
  T.no_match(r.all, password)
  local status, p = ssm_get()
  T.eq(status, 200)
  T.eq(p.Type, "SecureString")
  T.eq(p.Value, tostring(f.dr_url))
  local res = r.doc.result.results
  T.eq(res["update-app-target"].parameter, param)
  T.eq(res["update-routing"].zone, zone)
  T.match(res["update-routing"].change_id, "^/change/")
  local l = aws.request{service = "route53", method = "GET", path = "/2013-04-01/hostedzone/" .. zone .. "/rrset"}
  T.eq(l.status, 200)
  T.match(l.body, "<Name>db%.clubio%.example%.</Name><Type>CNAME</Type><TTL>60</TTL><ResourceRecords><ResourceRecord>" ..
                  "<Value>dr%-lb%.us%-west%-2%.clubio%.example</Value>")
  local fh = assert(io.open(hook_bodies, "r"))
  local body = cjson.decode(fh:read("l"))
  fh:close()
  T.match(body.text, "failed over to the DR project")
  T.eq(body.fields.dr, require("clubio.dr").display(f.dr_url))
  T.eq(res.notify.webhook, true)
end)

T.case("an unreachable webhook fails the notify step, after the failover itself", function()
  local e = {}
  for k, v in pairs(AWS_ENV) do e[k] = v end
  e.DR_WEBHOOK_URL = "http://127.0.0.1:9/nothing-listens"
  local r = f:run({"dr-failover", "--yes", "--from", "notify"}, e)
  T.ok(r.status ~= 0, "failed")
  T.match(r.stderr, "failover stopped at step 9/9 'notify'")
  T.match(r.stderr, "the webhook %(DR_WEBHOOK_URL%) did not answer")
  T.match(r.stderr, "the failover itself is done")
end)

proc.run{argv = {"kill", tostring(hook_pid)}}
f:cleanup()
return T.finish()
