#!/usr/bin/env python3
"""Writes N megabytes of SQL-like plain pg_dump output (COPY blocks) to stdout.

Realistic mixed rows (ids, uuids, names, emails, timestamps, amounts, status words, free text)
that gzip -6 compresses about 2.5:1 — unlike pgbench's padding, which compresses 35:1.
Deterministic (fixed seed) so runs are comparable.   usage: gen_sql.py MB > dump.sql
"""
import random
import sys
import uuid

def main():
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    target = mb * 1000 * 1000
    rnd = random.Random(20240115)
    first = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
             "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
             "xavier", "yolanda", "zoe", "maria", "jose", "wei", "fatima", "olga", "kenji"]
    last = ["smith", "johnson", "garcia", "miller", "davis", "rodriguez", "martinez", "lee",
            "walker", "hall", "young", "king", "wright", "lopez", "hill", "scott", "green",
            "adams", "baker", "nelson", "carter", "mitchell", "perez", "roberts", "turner"]
    domains = ["example.com", "mail.example.org", "clubio.test", "corp.example.net", "inbox.dev"]
    status = ["active", "pending", "cancelled", "refunded", "shipped", "delivered", "on_hold"]
    words = ("the order was delivered late customer asked for refund gift wrap please leave at "
             "front door call before arrival fragile handle with care weekend delivery preferred "
             "invoice attached discount code applied membership renewal second attempt billing "
             "address differs from shipping address backorder expected next week").split()
    out = sys.stdout.buffer
    written = 0
    table = 0
    row = 0
    while written < target:
        table += 1
        head = ("\n--\n-- Data for Name: orders_%d; Type: TABLE DATA; Schema: public\n--\n\n"
                "COPY public.orders_%d (id, uid, customer, email, created_at, amount, qty, status, "
                "note) FROM stdin;\n" % (table, table)).encode()
        out.write(head)
        written += len(head)
        lines = []
        for _ in range(20000):
            row += 1
            fn, ln = rnd.choice(first), rnd.choice(last)
            note = " ".join(rnd.choice(words) for _ in range(rnd.randint(0, 9))) or "\\N"
            lines.append("%d\t%s\t%s %s\t%s.%s%d@%s\t2024-%02d-%02d %02d:%02d:%02d.%06d+00\t%d.%02d\t%d\t%s\t%s\n" % (
                row, uuid.UUID(int=rnd.getrandbits(128), version=4), fn.title(), ln.title(), fn, ln,
                rnd.randint(1, 999), rnd.choice(domains), rnd.randint(1, 12), rnd.randint(1, 28),
                rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999999),
                rnd.randint(1, 99999), rnd.randint(0, 99), rnd.randint(1, 20), rnd.choice(status), note))
        block = ("".join(lines) + "\\.\n").encode()
        out.write(block)
        written += len(block)
    out.flush()

if __name__ == "__main__":
    main()
