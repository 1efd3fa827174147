#!/usr/bin/env python3
"""aws_stub — a local stand-in for the AWS control-plane APIs clubio-dr calls: ECS, SSM, Route53.

This is a mock, the one kind the project allows, because no real peer for these services can run
on this machine (there is no open-source ECS/SSM/Route53 server in Debian or on npm that checks
signatures). It is strict where a mistake of ours would hide: every request must carry a valid
AWS Signature Version 4 for the configured access key (computed here independently from the
client, from the canonical request up), with a fresh x-amz-date; otherwise it answers 403 with
the service's own error shape. State lives in memory.

    aws_stub.py --port-file F --access-key K --secret-key S [--log F] [--daemon --pid-file P]

Implemented (the shapes of the real APIs, the fields clubio-dr uses):
  ECS (JSON 1.1, X-Amz-Target AmazonEC2ContainerServiceV20141113.*): ListTaskDefinitions,
      DescribeTaskDefinition, DescribeServices, UpdateService. Cluster clubio-production has
      service clubio-api running clubio-api:<--ecs-current> of revisions 1..<--ecs-revisions>.
  SSM (JSON 1.1, AmazonSSM.*): PutParameter, GetParameter.
  Route53 (REST XML, 2013-04-01): POST/GET hostedzone/{id}/rrset, GET change/{id}.
Each accepted request is logged as a JSON line {"service", "action", "body"} to --log, and
GET /_stub/requests (unsigned) returns them as a JSON list.
"""
import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

R53NS = "https://route53.amazonaws.com/doc/2013-04-01/"


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def hm(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def uri_encode(s, keep_slash):
    safe = "-_.~" + ("/" if keep_slash else "")
    return urllib.parse.quote(s, safe=safe)


class Stub:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.log = []
        n = args.ecs_revisions
        self.taskdefs = {f"clubio-api:{i}": {"family": "clubio-api", "revision": i} for i in range(1, n + 1)}
        self.services = {("clubio-production", "clubio-api"): {"taskDefinition": f"clubio-api:{args.ecs_current}"}}
        self.params = {}
        self.zones = {}  # zone id -> {(name, type): rrset dict}
        self.changes = 0

    def record(self, service, action, body):
        entry = {"service": service, "action": action, "body": body}
        with self.lock:
            self.log.append(entry)
            if self.args.log:
                with open(self.args.log, "a") as f:
                    f.write(json.dumps(entry) + "\n")


def arn_taskdef(region, name):
    return f"arn:aws:ecs:{region}:123456789012:task-definition/{name}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aws-stub"

    def log_message(self, fmt, *a):  # quiet; the request log is the record
        pass

    # -------------------------------------------------------------- plumbing
    def reply(self, status, body, ctype="application/x-amz-json-1.1"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "stub-%d" % id(data))
        self.end_headers()
        self.wfile.write(data)

    def json_error(self, status, typ, msg):
        self.reply(status, json.dumps({"__type": typ, "message": msg}))

    def xml_error(self, status, code, msg):
        body = (f'<?xml version="1.0"?><ErrorResponse xmlns="{R53NS}"><Error><Type>Sender</Type>'
                f"<Code>{code}</Code><Message>{msg}</Message></Error><RequestId>stub</RequestId></ErrorResponse>")
        self.reply(status, body, "text/xml")

    def verify_sigv4(self, body):
        """Returns (service, region) or None after answering 403."""
        stub = self.server.stub
        auth = self.headers.get("Authorization", "")
        m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", auth)
        if not m:
            self.json_error(403, "MissingAuthenticationTokenException", "missing or malformed Authorization")
            return None
        ak, day, region, service, signed, sig = m.groups()
        if ak != stub.args.access_key:
            self.json_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
            return None
        amz_date = self.headers.get("X-Amz-Date", "")
        try:
            t = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            self.json_error(403, "IncompleteSignatureException", "bad X-Amz-Date")
            return None
        if abs((dt.datetime.now(dt.timezone.utc) - t).total_seconds()) > 900 or amz_date[:8] != day:
            self.json_error(403, "InvalidSignatureException", "Signature expired")
            return None
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names or names != sorted(names):
            self.json_error(403, "InvalidSignatureException", "host and x-amz-date must be signed")
            return None
        for h in ("content-type", "x-amz-target"):
            if self.headers.get(h) is not None and h not in names:
                self.json_error(403, "InvalidSignatureException", f"{h} must be signed")
                return None
        u = urllib.parse.urlsplit(self.path)
        # non-S3 services: the canonical URI is the path encoded twice (it arrives encoded once)
        path = u.path or "/"
        canon_uri = uri_encode(path, True)
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        canon_q = "&".join(f"{uri_encode(k, False)}={uri_encode(v, False)}" for k, v in sorted(q))
        canon_h = ""
        for n in names:
            v = self.headers.get(n)
            if v is None:
                self.json_error(403, "InvalidSignatureException", f"signed header {n} missing")
                return None
            canon_h += n + ":" + re.sub(r"\s+", " ", v.strip()) + "\n"
        creq = "\n".join([self.command, canon_uri, canon_q, canon_h, signed, sha256_hex(body)])
        scope = f"{day}/{region}/{service}/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256_hex(creq.encode())])
        k = hm(("AWS4" + stub.args.secret_key).encode(), day)
        for part in (region, service, "aws4_request"):
            k = hm(k, part)
        want = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig):
            self.json_error(403, "InvalidSignatureException",
                            "The request signature we calculated does not match the signature you provided.")
            return None
        return service, region

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # -------------------------------------------------------------- dispatch
    def do_GET(self):
        if self.path == "/_stub/requests":
            with self.server.stub.lock:
                self.reply(200, json.dumps(self.server.stub.log), "application/json")
            return
        self.handle_signed()

    def do_POST(self):
        self.handle_signed()

    def handle_signed(self):
        body = self.read_body()
        got = self.verify_sigv4(body)
        if not got:
            return
        service, region = got
        if service == "route53":
            return self.route53(body)
        target = self.headers.get("X-Amz-Target", "")
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self.json_error(400, "SerializationException", "body is not JSON")
        if service == "ecs" and target.startswith("AmazonEC2ContainerServiceV20141113."):
            return self.ecs(target.split(".", 1)[1], req, region)
        if service == "ssm" and target.startswith("AmazonSSM."):
            return self.ssm(target.split(".", 1)[1], req)
        self.json_error(400, "UnknownOperationException", f"{service} {target} is not implemented by the stub")

    # -------------------------------------------------------------- ECS
    def ecs(self, action, req, region):
        stub = self.server.stub
        if action == "ListTaskDefinitions":
            prefix = req.get("familyPrefix", "")
            names = [n for n, d in stub.taskdefs.items() if d["family"].startswith(prefix)]
            names.sort(key=lambda n: stub.taskdefs[n]["revision"], reverse=req.get("sort") == "DESC")
            names = names[: int(req.get("maxResults", 100))]
            stub.record("ecs", action, req)
            return self.reply(200, json.dumps({"taskDefinitionArns": [arn_taskdef(region, n) for n in names]}))
        if action == "DescribeTaskDefinition":
            name = req.get("taskDefinition", "").split("/")[-1]
            if name not in stub.taskdefs:
                return self.json_error(400, "ClientException", "Unable to describe task definition.")
            d = stub.taskdefs[name]
            stub.record("ecs", action, req)
            return self.reply(200, json.dumps({"taskDefinition": {
                "taskDefinitionArn": arn_taskdef(region, name), "family": d["family"],
                "revision": d["revision"], "status": "ACTIVE"}}))
        if action in ("DescribeServices", "UpdateService"):
            cluster = req.get("cluster", "default")
            names = req.get("services") if action == "DescribeServices" else [req.get("service")]
            out, failures = [], []
            for name in names or []:
                svc = stub.services.get((cluster, name))
                if svc is None:
                    if action == "UpdateService":
                        return self.json_error(400, "ServiceNotFoundException", "Service not found.")
                    failures.append({"arn": f"arn:aws:ecs:{region}:123456789012:service/{cluster}/{name}",
                                     "reason": "MISSING"})
                    continue
                if action == "UpdateService" and req.get("taskDefinition"):
                    td = req["taskDefinition"].split("/")[-1]
                    if td not in stub.taskdefs:
                        return self.json_error(400, "ClientException", "Unable to describe task definition.")
                    svc["taskDefinition"] = td
                out.append({"serviceName": name, "status": "ACTIVE",
                            "clusterArn": f"arn:aws:ecs:{region}:123456789012:cluster/{cluster}",
                            "taskDefinition": arn_taskdef(region, svc["taskDefinition"]),
                            "desiredCount": 2, "runningCount": 2,
                            "deployments": [{"status": "PRIMARY", "taskDefinition": arn_taskdef(region, svc["taskDefinition"]),
                                             "rolloutState": "IN_PROGRESS" if action == "UpdateService" else "COMPLETED"}]})
            stub.record("ecs", action, req)
            if action == "UpdateService":
                return self.reply(200, json.dumps({"service": out[0]}))
            return self.reply(200, json.dumps({"services": out, "failures": failures}))
        self.json_error(400, "UnknownOperationException", f"ECS {action} is not implemented by the stub")

    # -------------------------------------------------------------- SSM
    def ssm(self, action, req):
        stub = self.server.stub
        name = req.get("Name")
        if not name:
            return self.json_error(400, "ValidationException", "Name is required")
        if action == "PutParameter":
            cur = stub.params.get(name)
            if cur and not req.get("Overwrite"):
                return self.json_error(400, "ParameterAlreadyExists", "The parameter already exists.")
            version = (cur["Version"] + 1) if cur else 1
            stub.params[name] = {"Name": name, "Type": req.get("Type", cur["Type"] if cur else "String"),
                                 "Value": req.get("Value", ""), "Version": version}
            stub.record("ssm", action, req)
            return self.reply(200, json.dumps({"Version": version, "Tier": "Standard"}))
        if action == "GetParameter":
            cur = stub.params.get(name)
            if not cur:
                return self.json_error(400, "ParameterNotFound", "")
            stub.record("ssm", action, req)
            p = dict(cur)
            if p["Type"] == "SecureString" and not req.get("WithDecryption"):
                p["Value"] = "AQICAHencrypted"
            return self.reply(200, json.dumps({"Parameter": p}))
        self.json_error(400, "UnknownOperationException", f"SSM {action} is not implemented by the stub")

    # -------------------------------------------------------------- Route53
    def route53(self, body):
        stub = self.server.stub
        path = urllib.parse.urlsplit(self.path).path
        m = re.fullmatch(r"/2013-04-01/hostedzone/([^/]+)/rrset/?", path)
        c = re.fullmatch(r"/2013-04-01/change/([^/]+)", path)
        if c and self.command == "GET":
            stub.record("route53", "GetChange", {"Id": c.group(1)})
            return self.reply(200, f'<?xml version="1.0"?><GetChangeResponse xmlns="{R53NS}"><ChangeInfo>'
                                   f"<Id>/change/{c.group(1)}</Id><Status>INSYNC</Status>"
                                   f"<SubmittedAt>{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}</SubmittedAt>"
                                   "</ChangeInfo></GetChangeResponse>", "text/xml")
        if not m:
            return self.xml_error(404, "InvalidInput", f"{self.command} {path} is not implemented by the stub")
        zone = stub.zones.setdefault(m.group(1), {})
        if self.command == "GET":
            stub.record("route53", "ListResourceRecordSets", {"HostedZoneId": m.group(1)})
            sets = ""
            for (name, typ), rr in sorted(zone.items()):
                vals = "".join(f"<ResourceRecord><Value>{v}</Value></ResourceRecord>" for v in rr["values"])
                sets += (f"<ResourceRecordSet><Name>{name}</Name><Type>{typ}</Type><TTL>{rr['ttl']}</TTL>"
                         f"<ResourceRecords>{vals}</ResourceRecords></ResourceRecordSet>")
            return self.reply(200, f'<?xml version="1.0"?><ListResourceRecordSetsResponse xmlns="{R53NS}">'
                                   f"<ResourceRecordSets>{sets}</ResourceRecordSets><IsTruncated>false</IsTruncated>"
                                   "<MaxItems>300</MaxItems></ListResourceRecordSetsResponse>", "text/xml")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return self.xml_error(400, "InvalidInput", "body is not XML")
        ns = {"r": R53NS}
        if root.tag != f"{{{R53NS}}}ChangeResourceRecordSetsRequest":
            return self.xml_error(400, "InvalidInput", "expected ChangeResourceRecordSetsRequest in the 2013-04-01 namespace")
        changes = []
        for ch in root.findall("r:ChangeBatch/r:Changes/r:Change", ns):
            action = ch.findtext("r:Action", namespaces=ns)
            rs = ch.find("r:ResourceRecordSet", ns)
            if rs is None or action not in ("CREATE", "DELETE", "UPSERT"):
                return self.xml_error(400, "InvalidInput", "each Change needs an Action and a ResourceRecordSet")
            name = rs.findtext("r:Name", namespaces=ns)
            typ = rs.findtext("r:Type", namespaces=ns)
            ttl = rs.findtext("r:TTL", namespaces=ns)
            values = [v.text for v in rs.findall("r:ResourceRecords/r:ResourceRecord/r:Value", ns)]
            if not name or not typ:
                return self.xml_error(400, "InvalidInput", "a ResourceRecordSet needs Name and Type")
            if not name.endswith("."):
                name += "."
            changes.append({"Action": action, "Name": name, "Type": typ, "TTL": ttl, "Values": values})
        if not changes:
            return self.xml_error(400, "InvalidInput", "no changes")
        for chg in changes:
            key = (chg["Name"], chg["Type"])
            if chg["Action"] == "DELETE":
                zone.pop(key, None)
            elif chg["Action"] == "CREATE" and key in zone:
                return self.xml_error(400, "InvalidChangeBatch", f"record {chg['Name']} {chg['Type']} already exists")
            else:
                zone[key] = {"ttl": chg["TTL"] or "300", "values": chg["Values"]}
        stub.changes += 1
        cid = f"C{stub.changes:08d}STUB"
        stub.record("route53", "ChangeResourceRecordSets", {"HostedZoneId": m.group(1), "Changes": changes})
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply(200, f'<?xml version="1.0"?><ChangeResourceRecordSetsResponse xmlns="{R53NS}"><ChangeInfo>'
                        f"<Id>/change/{cid}</Id><Status>PENDING</Status><SubmittedAt>{now}</SubmittedAt>"
                        "</ChangeInfo></ChangeResourceRecordSetsResponse>", "text/xml")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-key", default=os.environ.get("AWS_STUB_SECRET_KEY"),
                    help="or AWS_STUB_SECRET_KEY in the environment (keeps it out of argv)")
    ap.add_argument("--log")
    ap.add_argument("--ecs-revisions", type=int, default=12)
    ap.add_argument("--ecs-current", type=int, default=12)
    ap.add_argument("--daemon", action="store_true")
    ap.add_argument("--pid-file")
    args = ap.parse_args()
    if not args.secret_key:
        ap.error("give the secret key with AWS_STUB_SECRET_KEY (or --secret-key)")
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.stub = Stub(args)
    if args.daemon:
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(str(os.getpid()))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)  # written last and atomically: readers wait for it
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
