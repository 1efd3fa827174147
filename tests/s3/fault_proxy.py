#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for the s3 tests (python3 standard library only).

Sits between the client under test and the real S3 server (s3rver) and forwards every request
unchanged (same Host header, so SigV4 signatures still verify upstream), except requests that
match a rule in the rules file, which get a fault instead:

  [{"method": "PUT", "match": "partNumber=2", "action": "503", "times": 2}, ...]

actions: "500"/"503"/... (an S3 XML error with that status; "SlowDown" code for 503),
"reset" (close the connection without an answer), "stall" (hold the connection for `seconds`,
then close), "skew" (a RequestTimeTooSkewed 403 with a Date header `seconds` ahead),
"truncate" (forward, but cut the answer body in half).
`times` is how many matching requests get the fault (default: all). The rules file is re-read
when it changes, which resets the counters. Every request is logged as "METHOD PATH?QUERY ACTION".

  fault_proxy.py UPSTREAM_URL RULES_FILE LOG_FILE READY_FILE
"""
import email.utils
import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

UP = urllib.parse.urlparse(sys.argv[1])
RULES_FILE, LOG_FILE, READY_FILE = sys.argv[2], sys.argv[3], sys.argv[4]
lock = threading.Lock()
state = {"mtime": None, "rules": [], "hits": []}


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
        log(f"{self.command} {self.path} {action}")
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if action == "stall":
            time.sleep(float(rule.get("seconds", 30)))
            self.close_connection = True
            return
        if action == "skew":
            ahead = float(rule.get("seconds", 3600))
            self.reply(403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.",
                       date=email.utils.formatdate(time.time() + ahead, usegmt=True))
            return
        if action.isdigit():
            st = int(action)
            self.reply(st, "SlowDown" if st == 503 else "InternalError", "injected fault")
            return
        conn = http.client.HTTPConnection(UP.hostname, UP.port, timeout=120)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(self.command, self.path, body=body if n else None, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        if action == "truncate" and len(data) > 1:
            data = data[: len(data) // 2]
            self.close_connection = True
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        keep_length = action == "truncate" or self.command == "HEAD"
        self.send_header("Content-Length", str(int(resp.getheader("Content-Length") or len(data)) if keep_length else len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

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
