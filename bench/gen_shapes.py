#!/usr/bin/env python3
"""Writes N megabytes of plain-SQL pg_dump output (COPY blocks) of one data shape to stdout.

Shapes (what a column mix of a real database looks like once pg_dump has printed it):
  text     text-heavy rows: messages, descriptions and comments of sentences drawn from a
           vocabulary of some thousands of words (Zipf-like), 40..3000 characters each
  numeric  ids, integers, numeric(14,4), double precision, timestamps, dates, booleans
  json     jsonb documents as pg_dump prints them ({"key": value, ...}): nested events with
           repeated keys, ids, timestamps, enums, small arrays, free text
  bytea    bytea as COPY prints it (\\\\x + hex): thumbnails and attachments, part noise,
           part structured (headers, runs, repeated tiles)
  mixed    bench/gen_sql.py's orders rows (ids, uuids, names, emails, amounts, short notes)

Deterministic (fixed seed per shape) so runs are comparable.
  usage: gen_shapes.py SHAPE MB > dump.sql
"""
import random
import string
import subprocess
import sys
import os

SHAPES = ("text", "numeric", "json", "bytea", "mixed")


def header(table, cols):
    return ("\n--\n-- Data for Name: %s; Type: TABLE DATA; Schema: public; Owner: app\n--\n\n"
            "COPY public.%s (%s) FROM stdin;\n" % (table, table, ", ".join(cols)))


def vocabulary(rnd, n=6000):
    # syllable-built words: realistic letter statistics without shipping a dictionary
    syl = ["an", "ar", "be", "ca", "de", "el", "en", "er", "es", "fo", "ga", "in", "is", "ka", "la",
           "le", "li", "ma", "me", "mi", "na", "ne", "no", "on", "or", "ra", "re", "ri", "ro", "sa",
           "se", "st", "ta", "te", "ti", "to", "th", "un", "ur", "ve", "wa", "qu", "ch", "sh", "ly"]
    common = ("the of and to a in is it you that he was for on are with as I his they be at one "
              "have this from or had by not word but what some we can out other were all there "
              "when up use your how said an each she which do their time if will way about many "
              "then them write would like so these her long make thing see him two has look more "
              "day could go come did number sound no most people my over know water than call "
              "first who may down side been now find order customer delivery please thanks").split()
    words = list(common)
    seen = set(words)
    while len(words) < n:
        w = "".join(rnd.choice(syl) for _ in range(rnd.choice((1, 2, 2, 3, 3, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    # Zipf-like: word k has weight 1/(k+1); cumulative, so each draw is a bisection
    cum, t = [], 0.0
    for k in range(len(words)):
        t += 1.0 / (k + 1)
        cum.append(t)
    return words, cum


def sentence_maker(rnd):
    words, cum = vocabulary(rnd)

    def sentence():
        n = rnd.randint(4, 22)
        ws = rnd.choices(words, cum_weights=cum, k=n)
        s = " ".join(ws)
        if rnd.random() < 0.15:
            s += " " + str(rnd.randint(1, 9999))
        return s[0].upper() + s[1:] + rnd.choice(".....?!")

    def paragraph(lo, hi):
        target = rnd.randint(lo, hi)
        out = []
        size = 0
        while size < target:
            s = sentence()
            out.append(s)
            size += len(s) + 1
        return " ".join(out)

    return sentence, paragraph


def ts(rnd):
    return "2024-%02d-%02d %02d:%02d:%02d.%06d+00" % (rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23),
                                                     rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999999))


def copy_text(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def gen_text(rnd, out, target):
    sentence, paragraph = sentence_maker(rnd)
    written, table, rid = 0, 0, 0
    while written < target:
        table += 1
        h = header("messages_%d" % table, ["id", "thread_id", "author", "subject", "body", "created_at"])
        chunks = [h]
        for _ in range(2000):
            rid += 1
            body = paragraph(40, 3000)
            if rnd.random() < 0.3:  # quoted replies and line breaks, as in mail and tickets
                body = body + "\n\n> " + paragraph(40, 400)
            chunks.append("%d\t%d\tuser%d\t%s\t%s\t%s\n" % (rid, rid // 7, rnd.randint(1, 5000), copy_text(sentence()),
                                                         copy_text(body), ts(rnd)))
        chunks.append("\\.\n")
        data = "".join(chunks).encode()
        out.write(data)
        written += len(data)


def gen_numeric(rnd, out, target):
    written, table, rid = 0, 0, 0
    while written < target:
        table += 1
        h = header("measurements_%d" % table, ["id", "sensor_id", "reading", "ratio", "amount", "taken_at",
                                               "day", "count", "ok"])
        chunks = [h]
        base = rnd.uniform(0, 1000)
        for _ in range(20000):
            rid += 1
            base += rnd.gauss(0, 3)
            chunks.append("%d\t%d\t%.4f\t%r\t%d.%02d\t%s\t2024-%02d-%02d\t%d\t%s\n" % (
                rid, rnd.randint(1, 800), base, rnd.random() * rnd.choice((1, 10, 100)), rnd.randint(0, 999999),
                rnd.randint(0, 99), ts(rnd), rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 1 << 31),
                rnd.choice("tf")))
        chunks.append("\\.\n")
        data = "".join(chunks).encode()
        out.write(data)
        written += len(data)


def gen_json(rnd, out, target):
    sentence, _ = sentence_maker(rnd)
    kinds = ["page_view", "click", "purchase", "signup", "login", "logout", "search", "add_to_cart",
             "checkout_started", "refund_requested"]
    browsers = ["firefox", "chrome", "safari", "edge"]
    countries = ["FR", "DE", "US", "GB", "ES", "IT", "NL", "SE", "PL", "BR", "JP", "IN"]

    def jstr(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def obj(d):
        return "{" + ", ".join("%s: %s" % (jstr(k), v) for k, v in sorted(d.items(), key=lambda kv: (len(kv[0]), kv[0]))) + "}"

    written, table, rid = 0, 0, 0
    while written < target:
        table += 1
        h = header("events_%d" % table, ["id", "kind", "payload", "created_at"])
        chunks = [h]
        for _ in range(10000):
            rid += 1
            kind = rnd.choice(kinds)
            items = "[" + ", ".join(obj({"sku": jstr("SKU-%05d" % rnd.randint(1, 40000)), "qty": str(rnd.randint(1, 5)),
                                         "price": "%d.%02d" % (rnd.randint(1, 500), rnd.randint(0, 99))})
                                    for _ in range(rnd.randint(0, 4))) + "]"
            d = {
                "user_id": str(rnd.randint(1, 200000)),
                "session": jstr("%032x" % rnd.getrandbits(128)),
                "kind": jstr(kind),
                "at": jstr(ts(rnd)),
                "client": obj({"browser": jstr(rnd.choice(browsers)), "version": str(rnd.randint(90, 130)),
                               "mobile": rnd.choice(["true", "false"])}),
                "geo": obj({"country": jstr(rnd.choice(countries)), "lat": "%.4f" % rnd.uniform(-60, 70),
                            "lon": "%.4f" % rnd.uniform(-180, 180)}),
                "items": items,
                "flags": "[" + ", ".join(jstr(f) for f in rnd.sample(["beta", "vip", "promo", "first", "returning"], rnd.randint(0, 3))) + "]",
            }
            if rnd.random() < 0.4:
                d["comment"] = jstr(sentence())
            chunks.append("%d\t%s\t%s\t%s\n" % (rid, kind, copy_text(obj(d)), ts(rnd)))
        chunks.append("\\.\n")
        data = "".join(chunks).encode()
        out.write(data)
        written += len(data)


def gen_bytea(rnd, out, target):
    tile = bytes(rnd.getrandbits(8) for _ in range(64))
    written, table, rid = 0, 0, 0
    while written < target:
        table += 1
        h = header("attachments_%d" % table, ["id", "name", "mime", "data"])
        chunks = [h]
        for _ in range(200):
            rid += 1
            n = rnd.randint(200, 12000)
            kind = rnd.random()
            if kind < 0.35:  # already compressed (jpeg/png/zip payloads): noise behind a header
                blob = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rnd.getrandbits(8 * n).to_bytes(n, "little")
            elif kind < 0.7:  # raw bitmaps: runs and repeated tiles with a little noise
                parts = []
                while sum(map(len, parts)) < n:
                    r = rnd.random()
                    if r < 0.4:
                        parts.append(bytes([rnd.getrandbits(8)]) * rnd.randint(4, 200))
                    elif r < 0.8:
                        parts.append(tile[: rnd.randint(8, 64)])
                    else:
                        parts.append(rnd.getrandbits(64).to_bytes(8, "little"))
                blob = b"BM" + b"".join(parts)
            else:  # documents stored as bytes: text with binary framing
                text = " ".join(rnd.choice(string.ascii_lowercase) * rnd.randint(1, 3) + rnd.choice(("tion", "ing", "er", "al"))
                                for _ in range(n // 8)).encode()
                blob = b"%PDF-1.7\n" + text + b"\nendstream\n" + rnd.getrandbits(256).to_bytes(32, "little")
            chunks.append("%d\tfile_%d.bin\tapplication/octet-stream\t\\\\x%s\n" % (rid, rid, blob.hex()))
        chunks.append("\\.\n")
        data = "".join(chunks).encode()
        out.write(data)
        written += len(data)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in SHAPES:
        sys.exit("usage: gen_shapes.py {%s} [MB] > dump.sql" % "|".join(SHAPES))
    shape = sys.argv[1]
    mb = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    out = sys.stdout.buffer
    if shape == "mixed":
        out.flush()
        here = os.path.dirname(os.path.abspath(__file__))
        sys.exit(subprocess.call([sys.executable, os.path.join(here, "gen_sql.py"), str(mb)]))
    rnd = random.Random("clubio-" + shape)
    out.write(b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n"
              b"SET client_encoding = 'UTF8';\n")
    {"text": gen_text, "numeric": gen_numeric, "json": gen_json, "bytea": gen_bytea}[shape](
        rnd, out, mb * 1000 * 1000)
    out.write(b"\n--\n-- PostgreSQL database dump complete\n--\n\n")
    out.flush()


if __name__ == "__main__":
    main()
