#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for the s3 tests (python3 standard library only).

Sits between the client under test and the real S3 server (s3rver) and forwards every request
unchanged (same Host header, so SigV4 signatures still verify upstream), except requests that
match a rule in the rules file, which get a fault instead:

  [{"method": "PUT", "match": "partNumber=2", "action": "503", "times": 2}, ...]

A rule matches the method (if given), a substring of the path and query (`match`) and not a
substring `exclude`. actions:
  "500"/"503"/"400"/... an S3 XML error with that status (code `code`, else SlowDown for 503,
             InternalError otherwise); "deny": 403 AccessDenied;
  "reset"    close the connection without an answer; "stall": hold it `seconds`, then close;
  "delay"    wait `seconds`, then forward;
  "skew"     a RequestTimeTooSkewed 403 with a Date header `seconds` ahead;
  "truncate" forward, but cut the answer body in half;
  "cut"      forward the headers and the first `bytes` bytes of the body, then wait `seconds`
             or until the file `until_file` exists (at most 60 s), then close the connection;
  "drop-range"  forward, then answer 200 without Content-Range (what a store or proxy that
             ignores Range answers; the body is still the range: a request without its signed
             Range header would not verify upstream);
  "require-header"  forward only when the request has header `header` equal to `value`, else
             403 AccessDenied (what a bucket policy that requires a KMS key answers);
  "blank-etag"  forward, then empty the ETag of the answer's body (Ceph RGW's completion), or
             put `etag` there;
  "aws-etag" (HEAD) forward, then give the ETag AWS would: md5 of the parts' md5s + "-N",
             from the parts this proxy forwarded for that object (`corrupt`: one digit off).
`times` is how many matching requests get the fault (default: all). The rules file is re-read
when it changes, which resets the counters. Every request is logged as "METHOD PATH?QUERY ACTION".

With S3RVER_DATA (the folder s3rver stores into), the proxy also answers the two multipart
calls s3rver 5 lacks, from s3rver's own upload state: ListMultipartUploads (GET /bucket?uploads,
with prefix, key-marker, upload-id-marker, max-uploads) and AbortMultipartUpload (DELETE
/bucket/key?uploadId=ID removes s3rver's folder of that upload). These two answers are a MOCK:
their signatures are not checked and their XML is ours, modelled on AWS's documentation.

  fault_proxy.py UPSTREAM_URL RULES_FILE LOG_FILE READY_FILE [S3RVER_DATA]
"""
import email.utils
import hashlib
import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time
import re
import shutil
import urllib.parse
from xml.sax.saxutils import escape

UP = urllib.parse.urlparse(sys.argv[1])
RULES_FILE, LOG_FILE, READY_FILE = sys.argv[2], sys.argv[3], sys.argv[4]
S3RVER_DATA = sys.argv[5] if len(sys.argv) > 5 else None
lock = threading.Lock()
state = {"mtime": None, "rules": [], "hits": []}
parts = {}  # upload id -> {part number: md5 digest} of the parts forwarded
aws_etags = {}  # object path -> the multipart ETag AWS would give it


def pick(method, path):
    with lock:
        try:
            mt = os.stat(RULES_FILE).st_mtime_ns
        except FileNotFoundError:
            mt = None
        if mt != state["mtime"]:
            state["mtime"] = mt
            try:
                with open(RULES_FILE) as f:
                    state["rules"] = json.load(f)
            except (FileNotFoundError, ValueError):
                state["rules"] = []
            state["hits"] = [0] * len(state["rules"])
        for i, r in enumerate(state["rules"]):
            if r.get("method", method) != method or r.get("match", "") not in path:
                continue
            if r.get("exclude") and r["exclude"] in path:
                continue
            if "times" in r and state["hits"][i] >= r["times"]:
                continue
            state["hits"][i] += 1
            return r
    return None


def log(line):
    with lock, open(LOG_FILE, "a") as f:
        f.write(line + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        rule = pick(self.command, self.path)
        action = rule["action"] if rule else "forward"
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        if action == "forward" and S3RVER_DATA and self.command == "GET" and "uploads" in q:
            action = "mock-list-uploads"
        if action == "forward" and S3RVER_DATA and self.command == "DELETE" and "uploadId" in q:
            action = "mock-abort-upload"
        if action == "require-header":
            got = self.headers.get(rule["header"])
            action = "forward" if got == rule.get("value") else "deny"
        log(f"{self.command} {self.path} {action}")
        if action == "mock-list-uploads":
            return self.list_uploads(u, q)
        if action == "mock-abort-upload":
            return self.abort_upload(u, q)
        if action == "deny":
            self.reply(403, "AccessDenied", "Access Denied")
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if action == "stall":
            time.sleep(float(rule.get("seconds", 30)))
            self.close_connection = True
            return
        if action == "delay":
            time.sleep(float(rule.get("seconds", 1)))
        if action == "skew":
            ahead = float(rule.get("seconds", 3600))
            self.reply(403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.",
                       date=email.utils.formatdate(time.time() + ahead, usegmt=True))
            return
        if action.isdigit():
            st = int(action)
            self.reply(st, rule.get("code") or ("SlowDown" if st == 503 else "InternalError"), "injected fault")
            return
        conn = http.client.HTTPConnection(UP.hostname, UP.port, timeout=120)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(self.command, self.path, body=body if n else None, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        self.track(u, q, body, resp.status)
        headers = resp.getheaders()
        if action == "truncate" and len(data) > 1:
            data = data[: len(data) // 2]
            self.close_connection = True
        if action == "blank-etag":
            data = re.sub(rb"<ETag>[^<]*</ETag>", b"<ETag>" + rule.get("etag", "").encode() + b"</ETag>", data)
        if action == "aws-etag" and u.path in aws_etags:
            et = aws_etags[u.path]
            if rule.get("corrupt"):
                et = ("1" if et[0] != "1" else "2") + et[1:]
            headers = [(k, f'"{et}"' if k.lower() == "etag" else v) for k, v in headers]
        status = resp.status
        if action == "drop-range" and status == 206:
            status = 200
            headers = [(k, v) for k, v in headers if k.lower() != "content-range"]
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        keep_length = action in ("truncate", "cut") or self.command == "HEAD"
        self.send_header("Content-Length", str(int(resp.getheader("Content-Length") or len(data)) if keep_length else len(data)))
        self.end_headers()
        if action == "cut":
            self.wfile.write(data[: int(rule.get("bytes", len(data) // 2))])
            self.wfile.flush()
            until, end = rule.get("until_file"), time.time() + float(rule.get("seconds", 60 if rule.get("until_file") else 0))
            while time.time() < end and not (until and os.path.exists(until)):
                time.sleep(0.02)
            self.close_connection = True
        elif self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    def track(self, u, q, body, status):
        """Remembers the md5 of each part forwarded and, on completion, the AWS multipart ETag."""
        if status // 100 != 2 or "uploadId" not in q:
            return
        uid = q["uploadId"][0]
        with lock:
            if self.command == "PUT" and "partNumber" in q and "x-amz-copy-source" not in self.headers:
                parts.setdefault(uid, {})[int(q["partNumber"][0])] = hashlib.md5(body).digest()
            elif self.command == "POST" and uid in parts:
                ps = parts.pop(uid)
                nums = sorted(ps)
                aws_etags[u.path] = hashlib.md5(b"".join(ps[i] for i in nums)).hexdigest() + f"-{len(nums)}"

    def s3rver_uploads(self, bucket):
        """s3rver's in-progress uploads of a bucket: [(key, upload id, initiated epoch)]."""
        base = os.path.join(S3RVER_DATA, bucket, "._S3rver_uploads")
        out = []
        for uid in os.listdir(base) if os.path.isdir(base) else []:
            try:
                with open(os.path.join(base, uid, "key")) as f:
                    key = f.read()
                out.append((key, uid, os.stat(os.path.join(base, uid, "key")).st_mtime))
            except FileNotFoundError:
                pass  # completed meanwhile
        return base, out

    def list_uploads(self, u, q):
        bucket = u.path.strip("/").split("/")[0]
        _, ups = self.s3rver_uploads(bucket)
        prefix = q.get("prefix", [""])[0]
        km, um = q.get("key-marker", [""])[0], q.get("upload-id-marker", [""])[0]
        limit = int(q.get("max-uploads", ["1000"])[0])
        ups = sorted((x for x in ups if x[0].startswith(prefix)), key=lambda x: (x[0], x[2], x[1]))
        if km and um:  # after that upload (uploads of one key come in order of initiation)
            at = next((i for i, x in enumerate(ups) if x[0] == km and x[1] == um), None)
            ups = ups[at + 1:] if at is not None else [x for x in ups if x[0] > km]
        elif km:
            ups = [x for x in ups if x[0] > km]
        page, more = ups[:limit], len(ups) > limit
        items = "".join(
            f"<Upload><Key>{escape(k)}</Key><UploadId>{uid}</UploadId><StorageClass>STANDARD</StorageClass>"
            f"<Initiated>{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1000):03d}Z</Initiated></Upload>"
            for k, uid, t in page)
        nxt = (f"<NextKeyMarker>{escape(page[-1][0])}</NextKeyMarker><NextUploadIdMarker>{page[-1][1]}</NextUploadIdMarker>"
               if more else "")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult><Bucket>{escape(bucket)}</Bucket>'
                f"<KeyMarker>{escape(km)}</KeyMarker><UploadIdMarker>{escape(um)}</UploadIdMarker>{nxt}"
                f"<Prefix>{escape(prefix)}</Prefix><MaxUploads>{limit}</MaxUploads>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{items}</ListMultipartUploadsResult>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def abort_upload(self, u, q):
        bucket, _, key = u.path.lstrip("/").partition("/")
        key = urllib.parse.unquote(key)
        base, ups = self.s3rver_uploads(bucket)
        uid = q["uploadId"][0]
        if not any(k == key and i == uid for k, i, _ in ups):
            self.reply(404, "NoSuchUpload", "The specified upload does not exist.")
            return
        shutil.rmtree(os.path.join(base, uid), ignore_errors=True)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, status, code, msg, date=None):
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>'
                f"</Error>").encode()
        self.send_response(status)
        if date:
            self.send_header("Date", date)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
with open(READY_FILE + ".tmp", "w") as f:
    f.write(f"{srv.server_address[1]} {os.getpid()}\n")
os.rename(READY_FILE + ".tmp", READY_FILE)
srv.serve_forever()
