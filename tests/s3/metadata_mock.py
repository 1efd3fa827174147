#!/usr/bin/env python3
"""Stand-in for the AWS credential endpoints that cannot run here (python3 stdlib only):
STS AssumeRoleWithWebIdentity (POST /), the ECS container credentials endpoint (GET /creds)
and EC2 instance metadata IMDSv2 (PUT /latest/api/token, GET /latest/meta-data/iam/...).
It hands out the sandbox's real S3 key pair (from MOCK_AK / MOCK_SK in its environment) plus a
session token, so the client's signed requests are still verified by the real s3rver.
Credentials expire MOCK_TTL seconds after issue. Requests are logged, one line each.

  metadata_mock.py LOG_FILE READY_FILE
"""
import datetime
import http.server
import json
import os
import sys
import urllib.parse

LOG, READY = sys.argv[1], sys.argv[2]
AK, SK = os.environ["MOCK_AK"], os.environ["MOCK_SK"]
TTL = int(os.environ.get("MOCK_TTL", "3600"))


def expiration():
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=TTL)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body, ctype="application/json"):
        b = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def creds_json(self):
        return json.dumps({"AccessKeyId": AK, "SecretAccessKey": SK, "Token": "session-token-" + self.path.strip("/").replace("/", "-"),
                           "Expiration": expiration(), "Code": "Success"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        log("sts action=%s role=%s token=%s" % (form.get("Action", [""])[0], form.get("RoleArn", [""])[0],
                                                 form.get("WebIdentityToken", [""])[0]))
        if form.get("WebIdentityToken", [""])[0] != "web-identity-token-123":
            self.send(400, "<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>", "text/xml")
            return
        self.send(200, f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{AK}</AccessKeyId>
<SecretAccessKey>{SK}</SecretAccessKey><SessionToken>session-token-web</SessionToken>
<Expiration>{expiration()}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>""", "text/xml")

    def do_PUT(self):
        if self.path == "/latest/api/token":
            log("imds token ttl=%s" % self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
            self.send(200, "imds-token-xyz", "text/plain")
        else:
            self.send(404, "")

    def do_GET(self):
        if self.path == "/creds":
            log("container auth=%s" % self.headers.get("Authorization"))
            self.send(200, self.creds_json())
            return
        if self.path.startswith("/latest/meta-data/iam/security-credentials/"):
            if self.headers.get("X-aws-ec2-metadata-token") != "imds-token-xyz":
                log("imds missing token")
                self.send(401, "")
                return
            role = self.path[len("/latest/meta-data/iam/security-credentials/"):]
            log("imds role=%s" % role)
            self.send(200, "role-a\n" if role == "" else self.creds_json(), "text/plain")
            return
        self.send(404, "")


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(READY + ".tmp", "w") as f:
    f.write(f"{srv.server_address[1]} {os.getpid()}\n")
os.rename(READY + ".tmp", READY)
srv.serve_forever()
