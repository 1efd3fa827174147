#!/usr/bin/env python3
"""neon-local — a Neon-API-v2-compatible server over real PostgreSQL 15 clusters, for the sandbox.

    NEON_LOCAL_API_KEY=... python3 neon_local.py --state DIR [--port 0] \
        [--project ID ...] [--database clubio] [--role app] [--history-retention 86400]

Each branch is its own PostgreSQL cluster on 127.0.0.1 with its own port (its endpoint). WAL is
archived per branch "incarnation" (a branch gets a new one when it is reset or restored), and a
base backup is taken when a cluster is created, so that a branch at a past timestamp or LSN is a
real point-in-time recovery: base backup + archived WAL + recovery_target_time/lsn, then promote.
Branches at the head are pg_basebackup copies of their parent.

Paths and JSON shapes follow the real API v2 (@neondatabase/api-client's public-v2-for-users.gen.yaml).
Mutating calls answer at once with operations that run in a per-project worker thread; while a
project has running operations, further mutations get 423 Locked, as on Neon.

State lives in DIR (state.json, written atomically); the server survives its own restart. It
binds 127.0.0.1 only. The API key comes from the NEON_LOCAL_API_KEY environment variable (never
argv) or DIR/api_key.

--record FILE appends every API exchange as a JSON line, which openapi_check.js checks against
Neon's OpenAPI description (the contract; see README.md for what neon-local does as the API says
and where it differs).

TEST-ONLY: POST /_test/projects {"id": "name"} creates a project (branch main, database and role
as for --project) so a test can own one; POST /_test/faults {"status": 423|429|5xx, "count": N, "path": "regex",
"method": "GET", "retry_after": seconds} makes the next N matching API requests fail with that
status. It exists for fault-injection tests and is not part of the Neon API.
"""
import argparse
import datetime as dt
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlparse

PGBIN = os.environ.get("NEON_LOCAL_PG_BIN", "/usr/lib/postgresql/15/bin")
ADJ = ["bold", "calm", "cool", "damp", "dry", "fancy", "gentle", "late", "lucky", "misty",
       "odd", "plain", "quiet", "rapid", "shy", "snowy", "still", "tiny", "wild", "young"]
NOUN = ["bar", "bird", "brook", "cell", "dawn", "dust", "fire", "forest", "frog", "glade",
        "hill", "lake", "leaf", "moon", "night", "pine", "rain", "river", "sea", "wave"]


def now():
    return dt.datetime.now(dt.timezone.utc)


def iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(s):
    """RFC 3339 timestamp -> aware datetime, or None."""
    if not isinstance(s, str):
        return None
    m = re.match(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})$", s)
    if not m:
        return None
    frac = (m.group(3) or ".0")[1:7].ljust(6, "0")
    tz = m.group(4)
    if tz == "Z":
        tz = "+00:00"
    elif ":" not in tz:
        tz = tz[:3] + ":" + tz[3:]
    try:
        return dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{frac}{tz}")
    except ValueError:
        return None


def haiku(prefix):
    return f"{prefix}{random.choice(ADJ)}-{random.choice(NOUN)}-{random.randint(100000, 999999)}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lsn_valid(s):
    return isinstance(s, str) and re.match(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", s) is not None


class ApiError(Exception):
    def __init__(self, status, message, code="", headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class OpFailed(Exception):
    pass


def run(argv, env=None, check=True, timeout=600):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=timeout, text=True)
    if check and p.returncode != 0:
        raise OpFailed(f"{os.path.basename(argv[0])} failed: {p.stdout.strip()[-600:]}")
    return p


class Cluster:
    """One PostgreSQL cluster (a branch's compute) under STATE/branches/<id>/."""

    def __init__(self, srv, branch):
        self.srv, self.b = srv, branch
        self.dir = os.path.join(srv.state, "branches", branch["id"])
        self.data = os.path.join(self.dir, "data")

    @property
    def port(self):
        return self.b["_port"]

    def archive_dir(self, gen=None):
        return os.path.join(self.srv.state, "wal", self.b["id"], str(gen or self.b["_gen"]))

    def base_dir(self, gen=None):
        return os.path.join(self.srv.state, "base", self.b["id"], str(gen or self.b["_gen"]))

    def configure(self, data, recovery=None):
        """Writes neon.conf (port, archive folder, ssl) into a data folder; recovery settings go
        to neon_recovery.conf, removed again once the cluster is promoted."""
        arch = self.archive_dir()
        os.makedirs(arch, exist_ok=True)
        conf = os.path.join(data, "postgresql.conf")
        with open(conf) as f:
            text = f.read()
        if "include_if_exists = 'neon.conf'" not in text:
            with open(conf, "a") as f:
                f.write("\ninclude_if_exists = 'neon.conf'\ninclude_if_exists = 'neon_recovery.conf'\n")
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.srv.run_dir}'",
            "wal_level = logical",
            # logical replication (change archivers, DR) needs slots and senders to spare
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "max_connections = 40",
            "shared_buffers = 16MB",
            "fsync = off",
            "archive_mode = on",
            f"archive_command = 'test ! -f {arch}/%f && cp %p {arch}/%f'",
            "ssl = on",
            f"ssl_cert_file = '{self.srv.ssl_cert}'",
            f"ssl_key_file = '{self.srv.ssl_key}'",
            "log_min_messages = warning",
        ]
        with open(os.path.join(data, "neon.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        rec = os.path.join(data, "neon_recovery.conf")
        if recovery:
            with open(rec, "w") as f:
                f.write("\n".join(recovery) + "\n")
            open(os.path.join(data, "recovery.signal"), "w").close()
        elif os.path.exists(rec):
            os.unlink(rec)
        for stale in ("postmaster.pid", "standby.signal"):
            p = os.path.join(data, stale)
            if os.path.exists(p):
                os.unlink(p)

    def running(self):
        pidf = os.path.join(self.data, "postmaster.pid")
        try:
            with open(pidf) as f:
                pid = int(f.readline())
            os.kill(pid, 0)
            return True
        except (OSError, ValueError):
            return False

    def start(self, data=None):
        data = data or self.data
        run([f"{PGBIN}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "server.log"), "-w",
             "-t", "120", "start"])

    def stop(self, data=None):
        data = data or self.data
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop"], check=False)

    def sql(self, query, db="postgres"):
        p = run([f"{PGBIN}/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.srv.run_dir,
                 "-p", str(self.port), "-U", "postgres", "-d", db, "-c", query])
        return p.stdout.strip()

    def wait_promoted(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.running():
                raise OpFailed("point-in-time recovery failed: " + self.log_tail())
            try:
                if self.sql("SELECT pg_is_in_recovery()") == "f":
                    return
            except OpFailed:
                pass
            time.sleep(0.2)
        raise OpFailed("point-in-time recovery did not finish in time")

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log")) as f:
                lines = [l.strip() for l in f.readlines() if "FATAL" in l or "ERROR" in l]
            return lines[-1] if lines else "see server.log"
        except OSError:
            return "no server log"

    def flush_archive(self, gen):
        """Makes every commit so far reachable in the archive: a commit record stamped now (so a
        recovery target before now is always found), a WAL switch, and a wait for the archiver."""
        self.sql("CREATE TEMP TABLE IF NOT EXISTS neon_local_tick(x int); SELECT txid_current()")
        seg = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.exists(os.path.join(self.archive_dir(gen), seg)):
                return
            time.sleep(0.1)
        raise OpFailed(f"WAL segment {seg} was not archived in time")

    def base_backup(self):
        """Takes a base backup of this (running) cluster into its incarnation's base folder."""
        root = self.base_dir()
        os.makedirs(root, exist_ok=True)
        name = now().strftime("%Y%m%dT%H%M%S%f")
        dst = os.path.join(root, name)
        run([f"{PGBIN}/pg_basebackup", "-h", self.srv.run_dir, "-p", str(self.port), "-U",
             "postgres", "-D", dst, "-X", "stream", "-c", "fast"])
        # The backup is usable for targets after the moment it completed.
        with open(os.path.join(dst, "neon_backup_done"), "w") as f:
            f.write(iso_ms(now()))
        done = iso_ms(now())
        self.b.setdefault("_bases", []).append({"gen": self.b["_gen"], "dir": dst, "done_at": done,
                                                 "lsn": self.sql("SELECT pg_current_wal_lsn()")})
        info = self.srv.gen_info(self.b, self.b["_gen"])
        if not info.get("start"):
            info["start"] = done


class Server:
    def __init__(self, args):
        self.state = os.path.abspath(args.state)
        self.args = args
        self.lock = threading.RLock()
        self.record_lock = threading.Lock()
        self.faults = []
        os.makedirs(self.state, exist_ok=True)
        os.chmod(self.state, 0o700)
        self.run_dir = os.path.join(self.state, "run")
        if len(self.run_dir) > 80:  # unix socket paths are limited to ~107 bytes
            self.run_dir = f"/tmp/neon-local-{os.getuid()}-{abs(hash(self.state)) % 10**8}"
        os.makedirs(self.run_dir, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self.api_key = os.environ.get("NEON_LOCAL_API_KEY") or self._key_file()
        self._ssl()
        self.db = self._load()
        self.queues = {}

    # ---- state ---------------------------------------------------------------------------
    def _key_file(self):
        p = os.path.join(self.state, "api_key")
        if not os.path.exists(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.close(fd)
        with open(p) as f:
            return f.read().strip()

    def _ssl(self):
        d = os.path.join(self.state, "ssl")
        self.ssl_cert, self.ssl_key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
        if not os.path.exists(self.ssl_key):
            os.makedirs(d, exist_ok=True)
            run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=neon-local", "-keyout", self.ssl_key, "-out", self.ssl_cert])
            os.chmod(self.ssl_key, 0o600)

    def _load(self):
        p = os.path.join(self.state, "state.json")
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f)
        return {"projects": {}, "branches": {}, "endpoints": {}, "operations": []}

    def save(self):
        with self.lock:
            p = os.path.join(self.state, "state.json")
            tmp = p + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.db, f, indent=1)
            os.replace(tmp, p)

    def record(self, rec, status, obj):
        """--record: appends the exchange as a JSON line (checked against Neon's OpenAPI
        description by openapi_check.js). Passwords and connection URIs are masked, keeping
        their type: the file is a test artefact, not a secret store."""
        if not self.args.record:
            return

        def mask(v, key=""):
            if isinstance(v, dict):
                return {k: mask(x, k) for k, x in v.items()}
            if isinstance(v, list):
                return [mask(x, key) for x in v]
            if isinstance(v, str) and key in ("password", "uri", "connection_uri"):
                return "***"
            return v
        line = json.dumps(dict(rec, t=iso_ms(now()), status=status, request=mask(rec["request"]),
                               response=mask(obj))) + "\n"
        with self.record_lock:
            fd = os.open(self.args.record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    # ---- public views --------------------------------------------------------------------
    @staticmethod
    def public(rec):
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    def branches_of(self, pid):
        return [b for b in self.db["branches"].values() if b["project_id"] == pid and not b.get("_deleted")]

    def project(self, pid):
        p = self.db["projects"].get(pid)
        if not p:
            raise ApiError(404, f"project {pid} not found", "NOT_FOUND")
        return p

    def branch(self, pid, bid):
        self.project(pid)
        b = self.db["branches"].get(bid)
        if not b or b["project_id"] != pid or b.get("_deleted"):  # ids only, as the API (not names)
            raise ApiError(404, f"branch {bid} not found in project {pid}", "NOT_FOUND")
        return b

    def endpoints_of(self, pid, bid=None):
        return [e for e in self.db["endpoints"].values()
                if e["project_id"] == pid and (bid is None or e["branch_id"] == bid)]

    def uri(self, b, role, database, pooled=False):
        pw = b["_roles"].get(role)
        if pw is None:
            raise ApiError(404, f"role {role} not found in branch {b['id']}", "NOT_FOUND")
        if database not in b["_databases"]:
            raise ApiError(404, f"database {database} not found in branch {b['id']}", "NOT_FOUND")
        cred = f"{quote(role, safe='')}:{quote(pw, safe='')}"
        if pooled:
            # Neon's pooled host is the endpoint's with -pooler; no pgbouncer here: the name does
            # not resolve, so hostaddr (libpq) connects to the branch's own port
            eps = self.endpoints_of(b["project_id"], b["id"])
            host = f"{eps[0]['id'] if eps else b['id']}-pooler.neon-local.localhost"
            return f"postgresql://{cred}@{host}:{b['_port']}/{quote(database, safe='')}?hostaddr=127.0.0.1"
        return f"postgresql://{cred}@127.0.0.1:{b['_port']}/{quote(database, safe='')}"

    # ---- history: each incarnation (gen) of a branch has its own WAL archive and base backups
    # from `start` on; before that, its data is its lineage's (the parent, or a restore's source,
    # at that gen) up to `until`, the branching point: history is inherited, as on Neon.
    @staticmethod
    def gen_info(b, gen):
        gens = b.setdefault("_gens", {})
        if str(gen) not in gens:  # state from before lineages: own history only
            gens[str(gen)] = {"start": b.get("_history_start") if gen == b.get("_gen") else None, "lineage": None}
        return gens[str(gen)]

    def resolve(self, bid, gen, ts, depth=0):
        """(branch, gen, ts) whose own archive holds the data `bid` had at `ts`, or None."""
        b = self.db["branches"].get(bid)
        if b is None or depth > 100:
            return None
        info = self.gen_info(b, gen)
        start = parse_ts(info.get("start"))
        if start is not None and ts >= start:
            return b, gen, ts
        lin = info.get("lineage")
        if not lin:
            return None
        return self.resolve(lin["branch"], lin["gen"], min(ts, parse_ts(lin["until"])), depth + 1)

    def history_start(self, bid, gen, depth=0):
        """The earliest time `bid` (at `gen`) has history for, or None."""
        b = self.db["branches"].get(bid)
        if b is None or depth > 100:
            return None
        info = self.gen_info(b, gen)
        lin = info.get("lineage")
        inherited = self.history_start(lin["branch"], lin["gen"], depth + 1) if lin else None
        return inherited if inherited is not None else parse_ts(info.get("start"))

    def referenced(self, bid):
        """Whether some branch's history goes through bid's archives (keep them on delete)."""
        for x in self.db["branches"].values():
            if x["id"] == bid:
                continue
            for info in x.get("_gens", {}).values():
                if (info.get("lineage") or {}).get("branch") == bid:
                    return True
        return False

    # ---- operations ----------------------------------------------------------------------
    def new_op(self, pid, action, branch_id=None, endpoint_id=None):
        t = iso(now())
        op = {"id": secrets.token_hex(4) + "-" + secrets.token_hex(2) + "-" + secrets.token_hex(2) + "-"
                    + secrets.token_hex(2) + "-" + secrets.token_hex(6),
              "project_id": pid, "action": action, "status": "running", "failures_count": 0,
              "created_at": t, "updated_at": t, "total_duration_ms": 0}
        if branch_id:
            op["branch_id"] = branch_id
        if endpoint_id:
            op["endpoint_id"] = endpoint_id
        self.db["operations"].append(op)
        return op

    def busy(self, pid):
        return any(o["project_id"] == pid and o["status"] in ("running", "scheduling")
                   for o in self.db["operations"])

    def submit(self, pid, ops, fn):
        """Runs fn in the project's worker thread; on return the ops finish, on error they fail."""
        def job():
            started = time.time()
            status, error = "finished", None
            try:
                fn()
            except Exception as e:  # the operation's own error, as Neon reports it
                status, error = "failed", str(e) if isinstance(e, OpFailed) else f"internal error: {e}"
                traceback.print_exc()
            with self.lock:
                for op in ops:
                    op["status"] = status
                    op["updated_at"] = iso(now())
                    op["total_duration_ms"] = int((time.time() - started) * 1000)
                    if error:
                        op["error"] = error
                        op["failures_count"] = 1
                self.save()
        threading.Thread(target=job, daemon=True).start()

    # ---- cluster work (runs in operations) -------------------------------------------------
    def init_cluster(self, b, project):
        c = Cluster(self, b)
        os.makedirs(c.dir, exist_ok=True)
        run([f"{PGBIN}/initdb", "-D", c.data, "-U", "postgres", "-A", "scram-sha-256",
             "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        with open(os.path.join(c.data, "pg_hba.conf"), "a") as f:
            f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        c.configure(c.data)
        c.start()
        role, dbname = project["_role"], project["_database"]
        pw = secrets.token_urlsafe(18)
        # Neon's owner role is a member of neon_superuser: CREATEDB, CREATEROLE, REPLICATION, and
        # (Neon's patched server) FOR ALL TABLES publications and subscriptions, which stock
        # PostgreSQL 15 allows superusers only; so here the owner role is a superuser.
        c.sql(f"CREATE ROLE \"{role}\" LOGIN CREATEDB CREATEROLE REPLICATION SUPERUSER PASSWORD '{pw}'")
        c.sql(f"CREATE DATABASE \"{dbname}\" OWNER \"{role}\"")
        b["_roles"] = {role: pw}
        b["_databases"] = [dbname]
        b["_owner"] = role
        c.base_backup()
        with self.lock:  # a root's history begins with its first base backup, as created_at says
            b["created_at"] = self.gen_info(b, b["_gen"])["start"]
        self.ready(b)

    def ready(self, b):
        with self.lock:
            t = iso(now())
            b["current_state"] = "ready"
            b.pop("pending_state", None)
            b["state_changed_at"] = t
            b["updated_at"] = t
            for e in self.endpoints_of(b["project_id"], b["id"]):
                e["current_state"] = "active"
                e["started_at"] = t
            self.save()

    def build_data(self, target, source, data, ts=None, lsn=None, src_gen=None):
        """Fills `data` with the source branch's data at the head (pg_basebackup) or at ts/lsn
        (base backup + archived WAL + recovery target), configured for `target`'s cluster."""
        src = Cluster(self, source)
        tgt = Cluster(self, target)
        if os.path.exists(data):
            shutil.rmtree(data)
        if ts is None and lsn is None:
            run([f"{PGBIN}/pg_basebackup", "-h", self.run_dir, "-p", str(src.port), "-U", "postgres",
                 "-D", data, "-X", "stream", "-c", "fast"])
            tgt.configure(data)
            return None
        src_gen = src_gen or source["_gen"]
        if ts is not None:
            found = self.resolve(source["id"], src_gen, ts)
            if found is None:
                raise OpFailed(f"no history of branch {source['id']} at {iso_ms(ts)}")
            source, src_gen, ts = found
            src = Cluster(self, source)
        if source["_gen"] == src_gen and not source.get("_deleted") and src.running():
            src.flush_archive(src_gen)
        base = self.pick_base(source, ts, lsn, src_gen)
        shutil.copytree(base["dir"], data, symlinks=True)
        os.chmod(data, 0o700)
        arch = src.archive_dir(base["gen"])
        rec = [f"restore_command = 'cp {arch}/%f %p'", "recovery_target_action = 'promote'",
               "recovery_target_timeline = 'latest'"]
        if ts is not None:
            rec.append(f"recovery_target_time = '{ts.astimezone(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'")
        else:
            rec.append(f"recovery_target_lsn = '{lsn}'")
        tgt.configure(data, recovery=rec)
        return True

    def pick_base(self, source, ts, lsn, gen):
        bases = [x for x in source.get("_bases", []) if x["gen"] == gen and os.path.isdir(x["dir"])]
        if ts is not None:
            ok = [x for x in bases if parse_ts(x["done_at"]) <= ts]
        else:
            ok = [x for x in bases if lsn_num(x["lsn"]) <= lsn_num(lsn)]
        if not ok:
            raise OpFailed(f"no base backup of branch {source['id']} precedes the requested point")
        return ok[-1]

    def finish_pitr(self, c, data):
        c.start(data)
        c.wait_promoted()
        os.unlink(os.path.join(data, "neon_recovery.conf"))

    def check_window(self, project, source, ts=None, lsn=None):
        """The history window of a branch: from where its history begins (inherited from its
        parent or a restore's source), no further back than the project's history retention."""
        start = self.history_start(source["id"], source["_gen"]) or now()
        keep = now() - dt.timedelta(seconds=project["history_retention_seconds"])
        lo = max(start, keep)
        if ts is not None:
            if ts < lo or ts > now():
                raise ApiError(400, f"timestamp {iso_ms(ts)} is outside of the history retention window of branch "
                               f"{source['id']}: history is available from {iso_ms(lo)} to now "
                               f"(history_retention_seconds={project['history_retention_seconds']})",
                               "BRANCHING_POINT_OUT_OF_RANGE")
        if lsn is not None:
            bases = [x for x in source.get("_bases", []) if x["gen"] == source["_gen"]]
            first = min((lsn_num(x["lsn"]) for x in bases), default=None)
            if first is None or lsn_num(lsn) < first:
                raise ApiError(400, f"LSN {lsn} is outside of the history retention window of branch {source['id']}",
                               "BRANCHING_POINT_OUT_OF_RANGE")

    # ---- handlers ------------------------------------------------------------------------
    def new_branch_record(self, project, name, parent=None):
        t = iso(now())
        bid = haiku("br-")
        b = {"id": bid, "project_id": project["id"], "name": name, "current_state": "init",
             "pending_state": "ready", "state_changed_at": t, "creation_source": "neon-local",
             "default": False, "protected": False, "cpu_used_sec": 0, "compute_time_seconds": 0,
             "active_time_seconds": 0, "written_data_bytes": 0, "data_transfer_bytes": 0,
             "created_at": t, "updated_at": t, "_port": free_port(), "_gen": 1,
             "_history_start": iso_ms(now()), "_bases": [], "_gens": {"1": {"start": None, "lineage": None}}}
        if parent:
            b["parent_id"] = parent["id"]
            b["_roles"] = dict(parent["_roles"])
            b["_databases"] = list(parent["_databases"])
            b["_owner"] = parent["_owner"]
        self.db["branches"][bid] = b
        return b

    def new_endpoint(self, b, typ="read_write"):
        t = iso(now())
        eid = haiku("ep-")
        e = {"host": f"127.0.0.1:{b['_port']}", "id": eid, "project_id": b["project_id"], "branch_id": b["id"],
             "autoscaling_limit_min_cu": 0.25, "autoscaling_limit_max_cu": 0.25, "region_id": "local",
             "type": typ, "current_state": "init", "pending_state": "active", "settings": {},
             "pooler_enabled": False, "pooler_mode": "transaction", "disabled": False,
             "passwordless_access": False, "creation_source": "neon-local", "created_at": t,
             "updated_at": t, "proxy_host": "127.0.0.1", "suspend_timeout_seconds": 0,
             "provisioner": "k8s-neonvm"}
        self.db["endpoints"][eid] = e
        return e

    def ensure_project(self, pid):
        with self.lock:
            if pid in self.db["projects"]:
                return
            t = iso(now())
            p = {"id": pid, "platform_id": "local", "region_id": "local", "name": pid,
                 "provisioner": "k8s-neonvm", "pg_version": 15, "proxy_host": "127.0.0.1",
                 "branch_logical_size_limit": 0, "branch_logical_size_limit_bytes": 0,
                 "store_passwords": True, "creation_source": "neon-local",
                 "history_retention_seconds": self.args.history_retention, "created_at": t,
                 "updated_at": t, "consumption_period_start": t, "consumption_period_end": t,
                 "owner_id": "neon-local", "data_storage_bytes_hour": 0, "data_transfer_bytes": 0,
                 "written_data_bytes": 0, "compute_time_seconds": 0, "active_time_seconds": 0,
                 "cpu_used_sec": 0, "settings": {}, "_role": self.args.role, "_database": self.args.database}
            self.db["projects"][pid] = p
            b = self.new_branch_record(p, "main")
            b["default"] = True
            b["primary"] = True
            self.new_endpoint(b)
        self.init_cluster(b, p)
        self.save()

    def resume(self):
        """After a restart: fail operations that were cut off, start every branch's cluster."""
        with self.lock:
            for op in self.db["operations"]:
                if op["status"] in ("running", "scheduling"):
                    op["status"] = "failed"
                    op["error"] = "neon-local restarted while the operation ran"
            branches = [b for b in self.db["branches"].values() if not b.get("_deleted")]
        for b in branches:
            c = Cluster(self, b)
            if os.path.isdir(c.data) and not c.running():
                try:
                    c.configure(c.data)
                    c.start()
                except OpFailed as e:
                    print(f"neon-local: branch {b['id']} did not start: {e}", file=sys.stderr)
            if b.get("current_state") == "init" and os.path.isdir(c.data):
                self.ready(b)
        self.save()

    def parse_point(self, ts_s, lsn_s, what):
        ts = lsn = None
        if ts_s is not None:
            ts = parse_ts(ts_s)
            if ts is None:
                raise ApiError(400, f"{what}_timestamp: invalid RFC 3339 timestamp {ts_s!r}", "BAD_REQUEST")
        if lsn_s is not None:
            if not lsn_valid(lsn_s):
                raise ApiError(400, f"{what}_lsn: invalid LSN {lsn_s!r}", "BAD_REQUEST")
            lsn = lsn_s.upper()
        if ts is not None and lsn is not None:
            raise ApiError(400, f"{what}_timestamp and {what}_lsn are mutually exclusive", "BAD_REQUEST")
        return ts, lsn

    def create_branch(self, pid, body):
        project = self.project(pid)
        bo = body.get("branch") or {}
        eps = body.get("endpoints") or []
        if self.busy(pid):
            raise locked()
        default = next(b for b in self.branches_of(pid) if b["default"])
        parent = self.branch(pid, bo["parent_id"]) if bo.get("parent_id") else default
        ts, lsn = self.parse_point(bo.get("parent_timestamp"), bo.get("parent_lsn"), "parent")
        self.check_window(project, parent, ts, lsn)
        if parent.get("current_state") != "ready":
            raise locked()
        name = bo.get("name") or haiku("br-")[3:]
        if any(b["name"] == name for b in self.branches_of(pid)):
            raise ApiError(409, f"branch with name {name!r} already exists", "BRANCH_ALREADY_EXISTS")
        if bo.get("expires_at") is not None:
            self.check_expiry(bo["expires_at"])
        b = self.new_branch_record(project, name, parent)
        if ts is not None:
            b["parent_timestamp"] = iso(ts)
        if lsn is not None:
            b["parent_lsn"] = lsn
        if bo.get("expires_at"):
            b["expires_at"] = iso(parse_ts(bo["expires_at"]))
        endpoints = [self.new_endpoint(b, e.get("type", "read_write")) for e in eps[:1]]
        ops = [self.new_op(pid, "create_branch", b["id"])]
        ops += [self.new_op(pid, "start_compute", b["id"], e["id"]) for e in endpoints]
        self.save()

        parent_gen = parent["_gen"]

        def work():
            c = Cluster(self, b)
            os.makedirs(c.dir, exist_ok=True)
            with self.lock:  # before its own history starts, the branch's history is its parent's
                b["_gens"]["1"]["lineage"] = {"branch": parent["id"], "gen": parent_gen,
                                              "until": iso_ms(ts if ts is not None else now())}
            pitr = self.build_data(b, parent, c.data, ts, lsn)
            if pitr:
                self.finish_pitr(c, c.data)
            else:
                with self.lock:
                    b["parent_lsn"] = Cluster(self, parent).sql("SELECT pg_current_wal_lsn()")
                c.start()
            c.base_backup()
            self.ready(b)
        self.submit(pid, ops, work)
        out = {"branch": self.public(b), "endpoints": [self.public(e) for e in endpoints],
               "operations": [dict(o) for o in ops],
               "roles": [self.role_view(b, r) for r in b["_roles"]],
               "databases": [self.db_view(b, d, i) for i, d in enumerate(b["_databases"])]}
        if endpoints:
            out["connection_uris"] = [{"connection_uri": self.uri(b, b["_owner"], d),
                                       "connection_parameters": {"database": d, "password": b["_roles"][b["_owner"]],
                                                                 "role": b["_owner"], "host": endpoints[0]["host"],
                                                                 "pooler_host": endpoints[0]["host"]}}
                                      for d in b["_databases"]]
        return 201, out

    @staticmethod
    def check_expiry(v):
        t = parse_ts(v)
        if t is None:
            raise ApiError(400, f"expires_at: invalid RFC 3339 timestamp {v!r}", "BAD_REQUEST")
        if t <= now():
            raise ApiError(400, "expires_at must be in the future", "BAD_REQUEST")

    def expire(self):
        """Deletes the branches whose expires_at has passed (Neon's branch expiration), once
        their project is idle; a branch with children waits for them."""
        with self.lock:
            due = [b for b in self.db["branches"].values()
                   if not b.get("_deleted") and b.get("expires_at") and parse_ts(b["expires_at"]) <= now()
                   and not b["default"] and b.get("current_state") == "ready"]
        for b in due:
            try:
                with self.lock:
                    if not b.get("_deleted"):
                        self.delete_branch(b["project_id"], b["id"])
            except ApiError:
                pass  # busy or has children: next round

    def role_view(self, b, r):
        return {"branch_id": b["id"], "name": r, "protected": False, "created_at": b["created_at"],
                "updated_at": b["updated_at"]}

    def db_view(self, b, d, i):
        return {"id": i + 1, "branch_id": b["id"], "name": d, "owner_name": b["_owner"],
                "created_at": b["created_at"], "updated_at": b["updated_at"]}

    def delete_branch(self, pid, bid):
        b = self.branch(pid, bid)
        if self.busy(pid):
            raise locked()
        if b["default"]:
            raise ApiError(400, f"branch {b['id']} is the default branch and cannot be deleted", "BAD_REQUEST")
        if any(c.get("parent_id") == b["id"] for c in self.branches_of(pid)):
            raise ApiError(400, f"branch {b['id']} has child branches; delete them first", "BAD_REQUEST")
        eps = self.endpoints_of(pid, b["id"])
        ops = [self.new_op(pid, "suspend_compute", b["id"], e["id"]) for e in eps]
        ops.append(self.new_op(pid, "delete_timeline", b["id"]))
        b["_deleted"] = True
        b["current_state"] = "deleting"
        self.save()

        def work():
            c = Cluster(self, b)
            c.stop()
            shutil.rmtree(c.dir, ignore_errors=True)
            with self.lock:
                keep = self.referenced(b["id"])
            if not keep:
                shutil.rmtree(os.path.join(self.state, "wal", b["id"]), ignore_errors=True)
                shutil.rmtree(os.path.join(self.state, "base", b["id"]), ignore_errors=True)
            with self.lock:
                for e in eps:
                    self.db["endpoints"].pop(e["id"], None)
                if self.referenced(b["id"]):  # others' inherited history: keep archives and record
                    return
                self.db["branches"].pop(b["id"], None)
        self.submit(pid, ops, work)
        return 200, {"branch": self.public(b), "operations": [dict(o) for o in ops]}

    def restore_branch(self, pid, bid, body):
        project = self.project(pid)
        b = self.branch(pid, bid)
        if self.busy(pid):
            raise locked()
        if not body.get("source_branch_id"):
            raise ApiError(400, "source_branch_id is required", "BAD_REQUEST")
        src = self.branch(pid, body["source_branch_id"])
        ts, lsn = self.parse_point(body.get("source_timestamp"), body.get("source_lsn"), "source")
        if src["id"] == b["id"] and ts is None and lsn is None:
            raise ApiError(400, "restoring a branch to its own head needs a source_timestamp or source_lsn", "BAD_REQUEST")
        preserve = body.get("preserve_under_name")
        children = [x for x in self.branches_of(pid) if x.get("parent_id") == b["id"]]
        if not preserve and (children or src["id"] == b["id"]):
            # the API's rule (RestoreBranchRequest.preserve_under_name)
            raise ApiError(400, f"branch {b['id']} " + ("has children" if children else "is restored from its own history")
                           + ": preserve_under_name is required", "BAD_REQUEST")
        self.check_window(project, src, ts, lsn)
        if preserve and any(x["name"] == preserve for x in self.branches_of(pid)):
            raise ApiError(409, f"branch with name {preserve!r} already exists", "BRANCH_ALREADY_EXISTS")
        ops = [self.new_op(pid, "create_branch", b["id"])]
        eps = self.endpoints_of(pid, b["id"])
        ops += [self.new_op(pid, "start_compute", b["id"], e["id"]) for e in eps]
        old = None
        if preserve:
            # Neon: the previous state becomes a branch named preserve_under_name, which takes the
            # branch's place in the tree: it becomes the parent of the restored branch and of the
            # branch's children ("reset from parent" undoes the restore)
            old = self.new_branch_record(project, preserve, b)
            if b.get("parent_id"):
                old["parent_id"] = b["parent_id"]
            else:
                old.pop("parent_id", None)
            old["creation_source"] = "restore"
            ops.append(self.new_op(pid, "create_branch", old["id"]))
        b["current_state"] = "init"  # until the operations finish, as a client sees on Neon
        b["pending_state"] = "ready"
        src_gen = src["_gen"]
        self.save()

        def work():
            c = Cluster(self, b)
            gen_before = b["_gen"]
            if c.running():  # all of the current incarnation's WAL in its archive
                c.flush_archive(gen_before)
            if old is not None:  # keep the current data under the new name, as its own branch
                oc = Cluster(self, old)
                os.makedirs(oc.dir, exist_ok=True)
                with self.lock:
                    old["_gens"]["1"]["lineage"] = {"branch": b["id"], "gen": gen_before, "until": iso_ms(now())}
                run([f"{PGBIN}/pg_basebackup", "-h", self.run_dir, "-p", str(c.port), "-U", "postgres",
                     "-D", oc.data, "-X", "stream", "-c", "fast"])
                oc.configure(oc.data)
                oc.start()
                oc.base_backup()
                with self.lock:
                    for x in children:
                        x["parent_id"] = old["id"]
                    b["parent_id"] = old["id"]
                self.ready(old)
            new = os.path.join(c.dir, "data.new")
            with self.lock:
                b["_gen"] = gen_before + 1  # the new incarnation archives into a fresh folder
                b["_gens"] = b.get("_gens") or {}
                self.gen_info(b, gen_before)
                b["_gens"][str(gen_before + 1)] = {
                    "start": None,
                    "lineage": {"branch": src["id"], "gen": src_gen, "until": iso_ms(ts if ts is not None else now())}}
            try:
                pitr = self.build_data(b, src, new, ts, lsn, src_gen)
            except Exception:
                with self.lock:
                    b["_gen"] = gen_before
                    b["_gens"].pop(str(gen_before + 1), None)
                raise
            if c.running():
                try:
                    c.flush_archive(gen_before)
                except OpFailed:
                    pass
            c.stop()
            trash = os.path.join(c.dir, "data.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(c.data, trash)
            os.rename(new, c.data)
            if pitr:
                self.finish_pitr(c, c.data)
            else:
                c.start()
            # Neon: a restore removes the branch's replication slots (none come with the data;
            # dropped here in case a copy ever brings one)
            c.sql("SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots")
            shutil.rmtree(trash, ignore_errors=True)
            # The previous incarnation's archive stays: the preserved branch and children inherit it.
            with self.lock:
                b["last_reset_at"] = iso(now())
                b["_history_start"] = iso_ms(now())
                if src["id"] != b["id"]:
                    b["restored_from"] = src["id"]
            c.base_backup()
            self.ready(b)
        self.submit(pid, ops, work)
        return 200, {"branch": self.public(b), "operations": [dict(o) for o in ops]}

    def set_default(self, pid, bid):
        b = self.branch(pid, bid)
        if self.busy(pid):
            raise locked()
        for x in self.branches_of(pid):
            x["default"] = x["id"] == b["id"]
            x["primary"] = x["default"]
        b["updated_at"] = iso(now())
        self.save()
        return 200, {"branch": self.public(b), "operations": []}

    def update_branch(self, pid, bid, body):
        b = self.branch(pid, bid)
        bo = body.get("branch") or {}
        if "name" in bo and bo["name"]:
            if any(x["name"] == bo["name"] and x["id"] != b["id"] for x in self.branches_of(pid)):
                raise ApiError(409, f"branch with name {bo['name']!r} already exists", "BRANCH_ALREADY_EXISTS")
            b["name"] = bo["name"]
        if "expires_at" in bo:
            if bo["expires_at"] is None:
                b.pop("expires_at", None)
            else:
                self.check_expiry(bo["expires_at"])
                b["expires_at"] = iso(parse_ts(bo["expires_at"]))
        b["updated_at"] = iso(now())
        self.save()
        return 200, {"branch": self.public(b), "operations": []}

    @staticmethod
    def page(items, q, key, maximum=400):
        """Cursor pagination as the API's Pagination: `limit` items after the one whose id is
        `cursor`; pagination.cursor is the last item's id (absent when there is none)."""
        try:
            limit = int(q.get("limit", ["0"])[0] or 0)
        except ValueError:
            raise ApiError(400, "limit must be an integer", "BAD_REQUEST")
        if limit < 0 or limit > maximum:
            raise ApiError(400, f"limit must be from 1 to {maximum}", "BAD_REQUEST")
        cursor = q.get("cursor", [None])[0]
        if cursor:
            ids = [x["id"] for x in items]
            if cursor not in ids:
                raise ApiError(400, f"invalid cursor {cursor!r}", "BAD_REQUEST")
            items = items[ids.index(cursor) + 1:]
        if limit:
            items = items[:limit]
        out = {key: items}
        if items:
            out["pagination"] = {"cursor": items[-1]["id"]}
        return out

    def list_branches(self, pid, q):
        self.project(pid)
        bs = sorted(self.branches_of(pid), key=lambda b: (b["created_at"], b["id"]))
        limit = int(q.get("limit", ["0"])[0] or 0)
        start = int(q.get("cursor", ["0"])[0] or 0) if q.get("cursor") else 0
        out = {"branches": [self.public(b) for b in bs], "annotations": {}}
        if limit > 0:
            page = bs[start:start + limit]
            out["branches"] = [self.public(b) for b in page]
            out["pagination"] = {"next": str(start + limit)} if start + limit < len(bs) else {}
        return 200, out

    def route(self, method, path, q, body):
        m = re.match(r"^/api/v2(/.*)$", path)
        if not m:
            raise ApiError(404, f"no such path {path}", "NOT_FOUND")
        p = m.group(1).rstrip("/")
        parts = p.split("/")[1:]
        with self.lock:
            if p == "/users/me":
                return 200, {"id": "neon-local", "email": "neon-local@localhost", "name": "neon-local",
                             "login": "neon-local", "auth_accounts": [], "billing_account": {},
                             "projects_limit": 100, "branches_limit": 500, "max_autoscaling_limit": 1,
                             "plan": "free"}
            if p == "/users/me/organizations":
                return 200, {"organizations": []}
            if p == "/projects" and method == "GET":  # ProjectListItem has active_time
                out = self.page([dict(self.public(x), active_time=0) for x in self.db["projects"].values()], q, "projects")
                return 200, dict(out, applications={}, integrations={})
            if p == "/projects/shared" and method == "GET":  # nothing is shared with neon-local's user
                return 200, self.page([], q, "projects")
            if len(parts) < 2 or parts[0] != "projects":
                raise ApiError(404, f"no such path {p}", "NOT_FOUND")
            pid = parts[1]
            rest = parts[2:]
            if not rest and method == "GET":
                return 200, {"project": self.public(self.project(pid))}
            if rest == ["branches"] and method == "GET":
                return self.list_branches(pid, q)
            if rest == ["branches"] and method == "POST":
                return self.create_branch(pid, body)
            if rest == ["endpoints"] and method == "GET":
                self.project(pid)
                return 200, {"endpoints": [self.public(e) for e in self.endpoints_of(pid)]}
            if rest == ["operations"] and method == "GET":
                self.project(pid)
                ops = [o for o in self.db["operations"] if o["project_id"] == pid]
                ops.reverse()  # newest first
                return 200, self.page(ops, q, "operations", maximum=1000)
            if len(rest) == 2 and rest[0] == "operations" and method == "GET":
                self.project(pid)
                for o in self.db["operations"]:
                    if o["project_id"] == pid and o["id"] == rest[1]:
                        return 200, {"operation": o}
                raise ApiError(404, f"operation {rest[1]} not found in project {pid}", "NOT_FOUND")
            if rest == ["connection_uri"] and method == "GET":
                self.project(pid)
                for need in ("database_name", "role_name"):  # required by the API
                    if not q.get(need, [""])[0]:
                        raise ApiError(400, f"query parameter {need} is required", "BAD_REQUEST")
                bid = q.get("branch_id", [None])[0]
                b = self.branch(pid, bid) if bid else next(x for x in self.branches_of(pid) if x["default"])
                pooled = q.get("pooled", ["false"])[0]
                if pooled not in ("true", "false"):
                    raise ApiError(400, "pooled must be true or false", "BAD_REQUEST")
                return 200, {"uri": self.uri(b, q["role_name"][0], q["database_name"][0], pooled == "true")}
            if len(rest) >= 2 and rest[0] == "branches":
                bid = rest[1]
                sub = rest[2:]
                if not sub and method == "GET":
                    b = self.branch(pid, bid)
                    return 200, {"branch": self.public(b),
                                 "annotation": {"object": {"type": "console/branch", "id": b["id"]}, "value": {}}}
                if not sub and method == "DELETE":
                    return self.delete_branch(pid, bid)
                if not sub and method == "PATCH":
                    return self.update_branch(pid, bid, body)
                if sub == ["restore"] and method == "POST":
                    return self.restore_branch(pid, bid, body)
                if sub == ["set_as_default"] and method == "POST":
                    return self.set_default(pid, bid)
                b = self.branch(pid, bid)
                if sub == ["endpoints"] and method == "GET":
                    return 200, {"endpoints": [self.public(e) for e in self.endpoints_of(pid, b["id"])]}
                if sub == ["roles"] and method == "GET":
                    return 200, {"roles": [self.role_view(b, r) for r in b["_roles"]]}
                if sub == ["databases"] and method == "GET":
                    return 200, {"databases": [self.db_view(b, d, i) for i, d in enumerate(b["_databases"])]}
                if len(sub) == 3 and sub[0] == "roles" and sub[2] == "reveal_password" and method == "GET":
                    if sub[1] not in b["_roles"]:
                        raise ApiError(404, f"role {sub[1]} not found in branch {b['id']}", "NOT_FOUND")
                    return 200, {"password": b["_roles"][sub[1]]}
            raise ApiError(404, f"no such path {method} {p}", "NOT_FOUND")


def locked():
    return ApiError(423, "project already has running conflicting operations, scheduling of new ones is prohibited",
                    "LOCKED")


def lsn_num(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Handler(BaseHTTPRequestHandler):
    server_version = "neon-local/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # never log headers (the API key)
        sys.stderr.write("neon-local: %s %s\n" % (self.address_string(), fmt % args))

    def send(self, status, obj, headers=None):
        rec = getattr(self, "_rec", None)
        if rec is not None:
            self._rec = None
            self.server.neon.record(rec, status, obj)
        data = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, method):
        srv = self.server.neon
        url = urlparse(self.path)
        q = parse_qs(url.query)
        self._rec = None
        try:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw.strip() else {}
            if url.path.startswith("/api/v2"):  # the API's exchanges, for --record
                self._rec = {"method": method, "path": url.path, "query": url.query,
                             "request": body if raw.strip() else None}
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object", "BAD_REQUEST")
        except (ValueError, json.JSONDecodeError):
            return self.send(400, {"code": "BAD_REQUEST", "message": "request body is not valid JSON"})
        try:
            auth = self.headers.get("Authorization", "")
            if not secrets.compare_digest(auth.encode(), f"Bearer {srv.api_key}".encode()):
                raise ApiError(401, "authentication required: invalid API key", "UNAUTHORIZED")
            if url.path == "/_test/faults" and method == "POST":  # TEST-ONLY fault injection
                with srv.lock:
                    if body.get("clear"):
                        srv.faults.clear()
                    else:
                        srv.faults.append({"status": int(body.get("status", 503)), "count": int(body.get("count", 1)),
                                           "path": body.get("path", ""), "method": body.get("method"),
                                           "retry_after": body.get("retry_after")})
                return self.send(200, {"faults": srv.faults})
            if url.path == "/_test/projects" and method == "POST":  # TEST-ONLY: a project of one's own
                pid = body.get("id")
                if not isinstance(pid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,59}", pid):  # the API's pattern
                    raise ApiError(400, "id must be a lower-case project id", "BAD_REQUEST")
                srv.ensure_project(pid)  # creates main and its cluster (initdb) outside the lock
                return self.send(201, {"project": srv.public(srv.project(pid))})
            with srv.lock:
                for f in srv.faults:
                    if f["count"] > 0 and re.search(f["path"], url.path) and f["method"] in (None, method):
                        f["count"] -= 1
                        hdr = {"Retry-After": str(f["retry_after"])} if f["retry_after"] is not None else {}
                        raise ApiError(f["status"], f"injected fault {f['status']}", "INJECTED", hdr)
            status, obj = srv.route(method, url.path, q, body)
            self.send(status, obj)
        except ApiError as e:
            self.send(e.status, {"code": e.code, "message": e.message, "request_id": secrets.token_hex(8)}, e.headers)
        except Exception as e:
            traceback.print_exc()
            self.send(500, {"code": "INTERNAL", "message": f"internal error: {e}"})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_PUT(self):
        self.handle_any("PUT")


def main():
    ap = argparse.ArgumentParser(description="neon-local: a Neon API v2 server over real PostgreSQL")
    ap.add_argument("--state", required=True, help="state folder")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--project", action="append", default=[], help="project id to create if missing")
    ap.add_argument("--database", default="neondb", help="database of new projects")
    ap.add_argument("--role", default="neondb_owner", help="owner role of new projects")
    ap.add_argument("--history-retention", type=int, default=86400, help="history_retention_seconds")
    ap.add_argument("--record", metavar="FILE",
                    help="append every API exchange to FILE as a JSON line (checked by openapi_check.js)")
    ap.add_argument("--daemon", action="store_true",
                    help="detach (new session, all inherited descriptors closed), log to STATE/server.log, "
                         "pid in STATE/server.pid; returns once the server is ready")
    args = ap.parse_args()
    if args.daemon:
        return daemonize(args)
    if os.geteuid() == 0:
        sys.exit("neon-local: PostgreSQL refuses to run as root; run as another user (e.g. runuser -u postgres --)")
    os.umask(0o077)
    srv = Server(args)
    srv.resume()
    for pid in args.project:
        srv.ensure_project(pid)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    httpd.neon = srv
    port = httpd.server_address[1]
    with open(os.path.join(srv.state, "port"), "w") as f:
        f.write(f"{port}\n")

    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def reaper():  # expires_at: expired branches are deleted, as on Neon
        while True:
            time.sleep(1)
            try:
                srv.expire()
            except Exception:
                traceback.print_exc()
    threading.Thread(target=reaper, daemon=True).start()
    print(f"ready http://127.0.0.1:{port}/api/v2", flush=True)
    httpd.serve_forever()
    # Clean stop: every branch's cluster goes down with the server; state stays for a restart.
    with srv.lock:
        branches = [b for b in srv.db["branches"].values() if not b.get("_deleted")]
    for b in branches:
        Cluster(srv, b).stop()
    srv.save()
    print("neon-local: stopped", flush=True)


def daemonize(args):
    state = os.path.abspath(args.state)
    os.makedirs(state, exist_ok=True)
    log_path = os.path.join(state, "server.log")
    argv = [sys.executable, os.path.abspath(__file__)] + [a for a in sys.argv[1:] if a != "--daemon"]
    with open(log_path, "w") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 close_fds=True, start_new_session=True)
    with open(os.path.join(state, "server.pid"), "w") as f:
        f.write(f"{child.pid}\n")
    deadline = time.time() + 300
    while time.time() < deadline:
        if child.poll() is not None:
            sys.exit(f"neon-local: the server exited (status {child.returncode}); see {log_path}")
        with open(log_path) as f:
            if any(l.startswith("ready") for l in f):
                return
        time.sleep(0.1)
    sys.exit(f"neon-local: the server did not become ready; see {log_path}")


if __name__ == "__main__":
    main()
