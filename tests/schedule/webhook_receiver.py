#!/usr/bin/env python3
"""A local webhook receiver for the alert tests: accepts POSTs on 127.0.0.1 (any path),
answers 200 (or the status given by a path ending in /status/NNN), and appends each request
as a JSON line {"path", "content_type", "body"} to --log. Stdlib only.

    webhook_receiver.py --port-file F --log L
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace")
            with open(a.log, "a") as f:
                f.write(json.dumps({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                    "body": body}) + "\n")
            status = 200
            if "/status/" in self.path:
                status = int(self.path.rsplit("/", 1)[1])
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
