/*
 * The dump source: a consistent, parallel plain-SQL dump of one database, in pg_dump's format.
 *
 *   1. A leader connection opens a REPEATABLE READ READ ONLY transaction, exports its snapshot
 *      (pg_export_snapshot) and holds it until the end, so every other connection and both
 *      pg_dump children see the database at the same instant.
 *   2. The schema comes from the system pg_dump (`--section=pre-data` then `post-data`, with
 *      `--snapshot`), the reference implementation of schema extraction; its password goes by
 *      PGPASSWORD in the child's environment, never argv.
 *   3. Table data comes from our own `COPY ... TO STDOUT` on `jobs` worker connections that
 *      import the snapshot. Tables bigger than split_bytes are cut in ctid ranges (a TID range
 *      scan on PostgreSQL 14+), so both workers stay busy on one big table.
 *   4. Output order is fixed (pre-data, tables by schema and name with their ranges in ctid
 *      order, sequence values, post-data) whatever the timing of the workers: each work item
 *      has a queue of blocks; workers take items in output order. Backpressure: a worker waits
 *      when its item's queue holds ITEM_QUEUE_MAX bytes, or, for an item the reader has not
 *      reached yet, when all queues together hold `ahead_max` bytes. Without the second bound a
 *      worker that finishes an item (items are ~split_bytes, smaller than ITEM_QUEUE_MAX) takes
 *      the next one, so with a slow consumer (gzip) the workers ran ahead through the whole
 *      database (255 MiB peak RSS on an 800 MB bench). The item being read is exempt from
 *      that bound, so the reader can always make progress: the data held is at most
 *      ITEM_QUEUE_MAX + ahead_max + one block per worker, whatever the database size.
 *      ahead_max is room for the items the other jobs - 1 workers fill meanwhile, (jobs - 1) x
 *      split_bytes (8 MiB at least, 64 MiB at most): smaller, and a worker that finished its
 *      part would wait for the reader instead of dumping the next one.
 * The pre-data part's "dump complete" trailer is dropped: only the end of the stream may look
 * complete.
 */
#include "io/cancel.h"
#include "io/endpoints.h"
#include "log.h"
#include "pgdump.h"
#include "proc.h"
#include "redact.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_SIZE     (256 * 1024)
#define ITEM_QUEUE_MAX ((size_t)8 << 20)
#define AHEAD_MIN      ((size_t)8 << 20)
#define AHEAD_LIMIT    ((size_t)64 << 20)
#define SPARE_MAX      64 /* emitted blocks kept for reuse (no more than the bounds let exist) */
#define TAIL_HOLD      4096
#define HOLD_SIZE      (TAIL_HOLD + 65536)

typedef struct Block {
    struct Block *next;
    size_t len, cap;
    uint8_t data[];
} Block;

typedef struct Table {
    char *qname;  /* public."Users" */
    char *header; /* comment + COPY ... FROM stdin;\n */
    int64_t rows, bytes;
    EVP_MD_CTX *md;
    char sha256[65];
    PgSetDigest set; /* row_digests: order-independent digest of the rows */
} Table;

typedef struct Item {
    int table;
    bool first, last;
    char *query;
    Block *head, *tail;
    size_t queued;
    bool done;
    PgSetDigest set;
} Item;

typedef struct Dump {
    char *url;
    char what[256];
    char *pg_dump;
    PgLargeObjects lo;
    bool has_lo; /* large objects to include */
    bool row_digests;
    int jobs;
    PGconn *leader;
    char snapshot[80];
    char *import_snapshot; /* opt->snapshot */
    char *snapshot_xids;   /* pg_current_snapshot() of the dump's transaction */
    char server_version[32];
    char tool_version[128];
    int server_num;
    char **env; /* "PGHOST=..." for the pg_dump children */
    int nenv;

    Table *tables;
    int ntables;
    Item *items;
    int nitems;
    char *seq_sql;
    size_t seq_len;
    int nseq;

    pthread_t *threads;
    int nthreads;
    PGconn **wconn;
    int nwconn;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int next_item;
    int reading; /* the item the reader is at (under mu): exempt from ahead_max */
    size_t ahead_max;
    size_t queued; /* bytes in all item queues (under mu) */
    size_t peak_queued;
    Block *spare; /* blocks the reader has emitted, for the workers to fill again */
    int nspare;
    atomic_bool stop;
    bool failed;
    RtError werr;

    /* reader */
    int phase;
    RtSource *child;
    RtSource *post;          /* post-data pg_dump, started early, read after the data */
    uint8_t hold[HOLD_SIZE]; /* pre-data output; the last TAIL_HOLD bytes wait for its end */
    size_t hold_len;
    const char *pending;
    size_t pending_len, pending_pos;
    int cur;
    bool header_sent;
    Block *blk;
    size_t blk_pos;
} Dump;

enum { PH_PRE, PH_DATA, PH_SEQ, PH_LO, PH_LO_DONE, PH_POST, PH_DONE };

/* ---- helpers ---------------------------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

int pgdump_parse_tool_major(const char *line)
{
    const char *p = strstr(line ? line : "", ") ");
    if (!p) return 0;
    return atoi(p + 2);
}

static PGresult *query(Dump *d, PGconn *c, const char *sql, RtError *err)
{
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(c, sql, 0, NULL, &cancelled);
    if (!cancelled && r && PQresultStatus(r) == PGRES_TUPLES_OK) return r;
    PQclear(r);
    if (cancelled) {
        rt_cancel_error(err);
        return NULL;
    }
    char w[320];
    snprintf(w, sizeof w, "cannot dump %s", d->what);
    pgdump_conn_error(c, err, "pgdump.dump", w);
    return NULL;
}

static int exec(Dump *d, PGconn *c, const char *sql, RtError *err)
{
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(c, sql, 0, NULL, &cancelled);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    PQclear(r);
    if (cancelled) return rt_cancel_error(err);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return RT_OK;
    char w[320];
    snprintf(w, sizeof w, "cannot dump %s", d->what);
    return pgdump_conn_error(c, err, "pgdump.dump", w);
}

/* Settings pg_dump uses for its own data connection, so COPY text is exact and portable. */
static const char SESSION_SQL[] =
    "SET statement_timeout = 0; SET lock_timeout = 0; "
    "SET idle_in_transaction_session_timeout = 0; SET DateStyle = ISO; "
    "SET IntervalStyle = postgres; SET extra_float_digits = 3; "
    /* an error, rather than silently fewer rows, if row-level security would filter a table */
    "SET row_security = off";

static void free_blocks(Block *b)
{
    while (b) {
        Block *n = b->next;
        free(b);
        b = n;
    }
}

/* ---- setup ------------------------------------------------------------------------------ */

/* Environment for the pg_dump children: every connection parameter of the URL as its libpq
 * environment variable (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE, ...). */
static int build_child_env(Dump *d, RtError *err)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(d->url, &msg);
    if (msg) PQfreemem(msg);
    if (!opts) return rt_error_set(err, RT_CLASS_USAGE, "pgdump.url", "invalid database url");
    int n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) n++;
    d->env = calloc((size_t)n + 2, sizeof *d->env);
    if (!d->env) {
        PQconninfoFree(opts);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !o->envvar || !strcmp(o->keyword, "application_name")) continue;
        d->env[d->nenv++] = xasprintf("%s=%s", o->envvar, o->val);
    }
    d->env[d->nenv++] = xstrdup("PGAPPNAME=clubio-dr pgdump");
    PQconninfoFree(opts);
    for (int i = 0; i < d->nenv; i++)
        if (!d->env[i]) return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    return RT_OK;
}

static int check_pooler(Dump *d, RtError *err)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(d->url, &msg);
    if (msg) PQfreemem(msg);
    if (!opts) return RT_OK; /* pgdump_connect reports it */
    bool pooled = false;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "host") && o->val && strstr(o->val, "-pooler")) pooled = true;
    PQconninfoFree(opts);
    if (!pooled) return RT_OK;
    rt_error_set(err, RT_CLASS_CONFIG, "pgdump.pooler",
                 "%s is a neon pooled endpoint (-pooler in the host): its pgbouncer runs in "
                 "transaction mode and cannot hold the exported snapshot a consistent dump needs",
                 d->what);
    rt_error_hint(err, "use the direct endpoint: remove \"-pooler\" from the host name");
    return RT_ERR;
}

static int check_pg_dump(Dump *d, RtError *err)
{
    const char *argv[] = {d->pg_dump, "--version", NULL};
    RtProcSpec spec = {.argv = argv};
    RtProc p;
    int server_major = d->server_num / 10000;
    if (rt_proc_spawn(&spec, RT_PROC_STDOUT, &p, err) != RT_OK) {
        err->hint[0] = '\0'; /* ours says which package */
        rt_error_hint(err,
                      "install postgresql-client-%d (apt-get install postgresql-client-%d) "
                      "or pass pg_dump = \"/path/to/pg_dump\"",
                      server_major, server_major);
        return RT_ERR;
    }
    char out[256];
    size_t n = 0;
    for (;;) {
        ssize_t k = read(p.out_fd, out + n, sizeof out - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
        if (n == sizeof out - 1) break;
    }
    out[n] = '\0';
    rt_proc_close_fds(&p);
    int st = rt_proc_wait(&p);
    out[strcspn(out, "\n")] = '\0';
    snprintf(d->tool_version, sizeof d->tool_version, "%s", out);
    int major = pgdump_parse_tool_major(out);
    if (st != 0 || major == 0) {
        rt_error_set(err, RT_CLASS_CONFIG, "pgdump.pg_dump", "cannot run %s --version (status %d)",
                     d->pg_dump, st);
        rt_error_hint(err, "install postgresql-client-%d (apt-get install postgresql-client-%d)",
                      server_major, server_major);
        return RT_ERR;
    }
    if (major < server_major) {
        rt_error_set(err, RT_CLASS_CONFIG, "pgdump.pg_dump_version",
                     "%s is version %d but the server of %s is version %d: pg_dump must be at "
                     "least the server's major version",
                     d->pg_dump, major, d->what, server_major);
        rt_error_hint(err,
                      "install postgresql-client-%d (apt-get install postgresql-client-%d) "
                      "and put /usr/lib/postgresql/%d/bin first in PATH, or pass pg_dump = "
                      "\"/usr/lib/postgresql/%d/bin/pg_dump\"",
                      server_major, server_major, server_major, server_major);
        return RT_ERR;
    }
    return RT_OK;
}

static int list_tables(Dump *d, int64_t split_bytes, RtError *err)
{
    PGresult *r =
        query(d, d->leader,
              "SELECT format('%I.%I', n.nspname, c.relname), n.nspname, c.relname, "
              " coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) "
              "   FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
              "   AND NOT a.attisdropped AND a.attgenerated = ''), ''), "
              " pg_catalog.pg_relation_size(c.oid), pg_catalog.pg_get_userbyid(c.relowner), "
              " current_setting('block_size')::int "
              "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind = 'r' AND c.relpersistence <> 't' "
              " AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
              " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = "
              "   'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e') "
              "ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\"",
              err);
    if (!r) return RT_ERR;
    int nt = PQntuples(r);
    d->tables = calloc((size_t)nt + 1, sizeof *d->tables);
    /* count items first */
    int nitems = 0;
    bool can_split = d->server_num >= 140000;
    int64_t *chunks = calloc((size_t)nt + 1, sizeof *chunks);
    if (!d->tables || !chunks) {
        free(chunks);
        PQclear(r);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    for (int i = 0; i < nt; i++) {
        int64_t size = atoll(PQgetvalue(r, i, 4));
        bool nocols = !*PQgetvalue(r, i, 3);
        chunks[i] = 1;
        if (can_split && !nocols && size > split_bytes)
            chunks[i] = (size + split_bytes - 1) / split_bytes;
        nitems += (int)chunks[i];
    }
    d->items = calloc((size_t)nitems + 1, sizeof *d->items);
    if (!d->items) {
        free(chunks);
        PQclear(r);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    d->ntables = nt;
    int k = 0;
    for (int i = 0; i < nt; i++) {
        Table *t = &d->tables[i];
        const char *q = PQgetvalue(r, i, 0), *cols = PQgetvalue(r, i, 3);
        int64_t block = atoll(PQgetvalue(r, i, 6));
        int64_t pages_per = split_bytes / (block > 0 ? block : 8192);
        if (pages_per < 1) pages_per = 1;
        t->qname = xstrdup(q);
        t->header = xasprintf("--\n-- Data for Name: %s; Type: TABLE DATA; Schema: %s; Owner: "
                              "%s\n--\n\nCOPY %s %s%s%sFROM stdin;\n",
                              PQgetvalue(r, i, 2), PQgetvalue(r, i, 1), PQgetvalue(r, i, 5), q,
                              *cols ? "(" : "", cols, *cols ? ") " : " ");
        t->md = EVP_MD_CTX_new();
        if (!t->qname || !t->header || !t->md) goto nomem;
        EVP_DigestInit_ex(t->md, EVP_sha256(), NULL);
        for (int64_t c = 0; c < chunks[i]; c++, k++) {
            Item *it = &d->items[k];
            it->table = i;
            it->first = c == 0;
            it->last = c == chunks[i] - 1;
            if (chunks[i] == 1) {
                it->query = *cols ? xasprintf("COPY %s (%s) TO STDOUT", q, cols)
                                  : xasprintf("COPY %s TO STDOUT", q);
            } else {
                /* ranges of pages; the last one is open so nothing past the measured size
                 * can be missed */
                long long lo = (long long)(c * pages_per), hi = (long long)((c + 1) * pages_per);
                if (c == 0)
                    it->query = xasprintf("COPY (SELECT %s FROM ONLY %s WHERE ctid < "
                                          "'(%lld,0)'::tid) TO STDOUT",
                                          cols, q, hi);
                else if (c == chunks[i] - 1)
                    it->query = xasprintf("COPY (SELECT %s FROM ONLY %s WHERE ctid >= "
                                          "'(%lld,0)'::tid) TO STDOUT",
                                          cols, q, lo);
                else
                    it->query = xasprintf("COPY (SELECT %s FROM ONLY %s WHERE ctid >= "
                                          "'(%lld,0)'::tid AND ctid < '(%lld,0)'::tid) TO STDOUT",
                                          cols, q, lo, hi);
            }
            if (!it->query) goto nomem;
        }
    }
    d->nitems = nitems;
    free(chunks);
    /* Like pg_dump: ACCESS SHARE locks until the end, so no table can be dropped, altered or
     * truncated (TRUNCATE is not MVCC-safe) while its data is being read. */
    size_t need = 64;
    for (int i = 0; i < nt; i++) need += strlen(PQgetvalue(r, i, 0)) + 2;
    char *lock = malloc(need);
    if (!lock) {
        PQclear(r);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    size_t len = (size_t)snprintf(lock, need, "LOCK TABLE ");
    for (int i = 0; i < nt; i++)
        len += (size_t)snprintf(lock + len, need - len, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
    snprintf(lock + len, need - len, " IN ACCESS SHARE MODE");
    PQclear(r);
    int rc = nt ? exec(d, d->leader, lock, err) : RT_OK;
    free(lock);
    return rc;
nomem:
    d->nitems = k;
    free(chunks);
    PQclear(r);
    return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
}

/* Sequence values as pg_dump's SEQUENCE SET entries (read right after the snapshot). */
static int read_sequences(Dump *d, RtError *err)
{
    PGresult *r =
        query(d, d->leader,
              "SELECT format('%I.%I', n.nspname, c.relname), "
              " quote_literal(format('%I.%I', n.nspname, c.relname)), n.nspname, c.relname, "
              " pg_catalog.pg_get_userbyid(c.relowner) "
              "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
              " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = "
              "   'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e') "
              "ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\"",
              err);
    if (!r) return RT_ERR;
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    if (!out) {
        PQclear(r);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    out[0] = '\0';
    int rc = RT_OK;
    for (int i = 0; i < PQntuples(r) && rc == RT_OK; i++) {
        char *sql = xasprintf("SELECT last_value, is_called FROM %s", PQgetvalue(r, i, 0));
        PGresult *v = sql ? query(d, d->leader, sql, err) : NULL;
        free(sql);
        if (!v) {
            rc = RT_ERR;
            break;
        }
        char *e = xasprintf("--\n-- Name: %s; Type: SEQUENCE SET; Schema: %s; Owner: %s\n--\n\n"
                            "SELECT pg_catalog.setval(%s, %s, %s);\n\n\n",
                            PQgetvalue(r, i, 3), PQgetvalue(r, i, 2), PQgetvalue(r, i, 4),
                            PQgetvalue(r, i, 1), PQgetvalue(v, 0, 0),
                            PQgetvalue(v, 0, 1)[0] == 't' ? "true" : "false");
        PQclear(v);
        if (!e) {
            rc = rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
            break;
        }
        size_t el = strlen(e);
        if (len + el + 1 > cap) {
            while (len + el + 1 > cap) cap *= 2;
            char *n2 = realloc(out, cap);
            if (!n2) {
                free(e);
                rc = rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
                break;
            }
            out = n2;
        }
        memcpy(out + len, e, el + 1);
        len += el;
        free(e);
        d->nseq++;
    }
    PQclear(r);
    d->seq_sql = out;
    d->seq_len = len;
    return rc;
}

static int check_large_objects(Dump *d, RtError *err)
{
    PGresult *r =
        query(d, d->leader, "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata", err);
    if (!r) return RT_ERR;
    long long n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    d->has_lo = n > 0 && d->lo == PG_LO_INCLUDE;
    if (n == 0 || d->lo != PG_LO_REFUSE) return RT_OK;
    rt_error_set(err, RT_CLASS_USAGE, "pgdump.large_objects",
                 "%s has %lld large objects, which this dump does not include", d->what, n);
    rt_error_hint(err, "pass large_objects = \"include\" to dump them too (as pg_dump does, one "
                       "statement per 16 KiB: slow for big ones), or \"skip\" to leave them out");
    return RT_ERR;
}

/* Extension configuration tables (pg_extension_config_dump) hold user rows pg_dump would dump
 * with a filter; this dump does not (yet): say so rather than drop them silently. */
static void warn_extension_config(Dump *d)
{
    bool cancelled = false; /* a cancel is reported by the next step */
    PGresult *r = pgdump_exec_cancellable(d->leader,
                                          "SELECT string_agg(c::regclass::text, ', ') FROM "
                                          "pg_catalog.pg_extension, unnest(extconfig) c",
                                          0, NULL, &cancelled);
    if (!cancelled && r && PQresultStatus(r) == PGRES_TUPLES_OK && !PQgetisnull(r, 0, 0))
        rt_warn("pgdump: %s: data of extension configuration tables is not dumped: %s", d->what,
                PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* ---- workers ---------------------------------------------------------------------------- */

typedef struct WorkerArg {
    Dump *d;
    int idx;
} WorkerArg;

static void worker_fail(Dump *d, PGconn *c, const char *table)
{
    RtError e;
    rt_error_init(&e);
    char w[400];
    snprintf(w, sizeof w, "cannot dump table %s of %s", table, d->what);
    pgdump_conn_error(c, &e, "pgdump.dump", w);
    pthread_mutex_lock(&d->mu);
    if (!d->failed) {
        d->failed = true;
        rt_error_copy(&d->werr, &e);
    }
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* Appends a filled block to the item's queue, waiting while the queue is full. */
static bool item_push(Dump *d, Item *it, Block *b)
{
    int idx = (int)(it - d->items);
    pthread_mutex_lock(&d->mu);
    while ((it->queued >= ITEM_QUEUE_MAX || (idx != d->reading && d->queued >= d->ahead_max)) &&
           !atomic_load(&d->stop) && !d->failed)
        pthread_cond_wait(&d->cv, &d->mu);
    bool ok = !atomic_load(&d->stop) && !d->failed;
    if (ok) {
        b->next = NULL;
        if (it->tail)
            it->tail->next = b;
        else
            it->head = b;
        it->tail = b;
        it->queued += b->len;
        d->queued += b->len;
        if (d->queued > d->peak_queued) d->peak_queued = d->queued;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    if (!ok) free(b);
    return ok;
}

static bool run_item(Dump *d, PGconn *c, Item *it)
{
    const char *table = d->tables[it->table].qname;
    /* Cancellable waits: a cancel or a stop (the source is being destroyed) asks the server to
     * end the statement, and the worker returns without recording an error: the reader reports
     * the cancel itself. */
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(c, it->query, 0, NULL, &cancelled);
    if (cancelled || !r || PQresultStatus(r) != PGRES_COPY_OUT) {
        PQclear(r);
        if (!cancelled) worker_fail(d, c, table);
        return false;
    }
    PQclear(r);
    Block *b = NULL;
    for (;;) {
        char *row = NULL;
        int n = pgdump_get_copy_data(c, &row, &d->stop, &cancelled);
        if (n == -1) break;
        if (n < 0) {
            free(b);
            if (!cancelled) worker_fail(d, c, table);
            return false;
        }
        if (b && b->len + (size_t)n > b->cap) {
            if (!item_push(d, it, b)) {
                PQfreemem(row);
                return false;
            }
            b = NULL;
        }
        if (!b && (size_t)n <= BLOCK_SIZE) {
            /* reuse an emitted block: the same few blocks cycle between the threads, so the
             * heap does not fragment across thread arenas as the dump goes on */
            pthread_mutex_lock(&d->mu);
            if ((b = d->spare)) {
                d->spare = b->next;
                d->nspare--;
            }
            pthread_mutex_unlock(&d->mu);
            if (b) b->len = 0;
        }
        if (!b) {
            size_t cap = (size_t)n > BLOCK_SIZE ? (size_t)n : BLOCK_SIZE;
            b = malloc(sizeof *b + cap);
            if (!b) {
                PQfreemem(row);
                pthread_mutex_lock(&d->mu);
                if (!d->failed) {
                    d->failed = true;
                    rt_error_set(&d->werr, RT_CLASS_FAILURE, "nomem", "out of memory");
                }
                pthread_cond_broadcast(&d->cv);
                pthread_mutex_unlock(&d->mu);
                return false;
            }
            b->len = 0;
            b->cap = cap;
        }
        if (d->row_digests) pgdump_set_digest_row(&it->set, (const uint8_t *)row, (size_t)n);
        memcpy(b->data + b->len, row, (size_t)n);
        b->len += (size_t)n;
        PQfreemem(row);
        if (atomic_load(&d->stop)) {
            free(b);
            return false;
        }
    }
    bool ok = true;
    while ((r = PQgetResult(c))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && ok) {
            ok = false;
            if (!cancelled) worker_fail(d, c, table);
        }
        PQclear(r);
    }
    if (!ok) {
        free(b);
        return false;
    }
    if (b && !item_push(d, it, b)) return false;
    pthread_mutex_lock(&d->mu);
    it->done = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return true;
}

static void *worker_main(void *arg)
{
    WorkerArg *wa = arg;
    Dump *d = wa->d;
    PGconn *c = d->wconn[wa->idx];
    free(wa);
    for (;;) {
        pthread_mutex_lock(&d->mu);
        if (atomic_load(&d->stop) || d->failed || d->next_item >= d->nitems) {
            pthread_mutex_unlock(&d->mu);
            break;
        }
        Item *it = &d->items[d->next_item++];
        pthread_mutex_unlock(&d->mu);
        if (!run_item(d, c, it)) break;
    }
    return NULL;
}

static int start_workers(Dump *d, RtError *err)
{
    int n = d->jobs < d->nitems ? d->jobs : d->nitems;
    if (n < 1) return RT_OK;
    d->wconn = calloc((size_t)n, sizeof *d->wconn);
    d->threads = calloc((size_t)n, sizeof *d->threads);
    d->nwconn = d->wconn ? n : 0;
    if (!d->wconn || !d->threads)
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    char set[160];
    snprintf(set, sizeof set,
             "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '%s'",
             d->snapshot);
    for (int i = 0; i < n; i++) {
        d->wconn[i] = pgdump_connect(d->url, "clubio-dr pgdump", err);
        if (!d->wconn[i]) return RT_ERR;
        PQsetClientEncoding(d->wconn[i], PQparameterStatus(d->leader, "server_encoding"));
        if (exec(d, d->wconn[i], SESSION_SQL, err) != RT_OK) return RT_ERR;
        if (exec(d, d->wconn[i], set, err) != RT_OK) return RT_ERR;
    }
    for (int i = 0; i < n; i++) {
        WorkerArg *wa = malloc(sizeof *wa);
        if (!wa) return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
        wa->d = d;
        wa->idx = i;
        if (pthread_create(&d->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.thread", "cannot start a thread");
        }
        d->nthreads++;
    }
    return RT_OK;
}

static void stop_workers(Dump *d)
{
    atomic_store(&d->stop, true);
    pthread_mutex_lock(&d->mu);
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    /* a worker may be waiting on the server: ask it to stop sending */
    for (int i = 0; i < d->nthreads; i++) {
        PGcancel *cn = d->wconn[i] ? PQgetCancel(d->wconn[i]) : NULL;
        if (cn) {
            char eb[128];
            PQcancel(cn, eb, sizeof eb);
            PQfreeCancel(cn);
        }
    }
    for (int i = 0; i < d->nthreads; i++) pthread_join(d->threads[i], NULL);
    d->nthreads = 0;
}

/* ---- the source ------------------------------------------------------------------------- */

static RtSource *start_pg_dump(Dump *d, const char *section, RtError *err)
{
    char sec[64], snap[128];
    snprintf(sec, sizeof sec, "--section=%s", section);
    snprintf(snap, sizeof snap, "--snapshot=%s", d->snapshot);
    /* the data section is only run for large objects: no table (nor sequence) data */
    const char *extra = !strcmp(section, "data") ? "--exclude-table-data=*.*"
                        : d->lo == PG_LO_SKIP    ? "--no-blobs"
                                                 : NULL;
    const char *argv[] = {d->pg_dump, "--format=plain", "--no-password", sec, snap, extra, NULL};
    static const char *const unset[] = {"PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", NULL};
    RtProcSpec spec = {.argv = argv, .env_set = (const char *const *)d->env, .env_unset = unset};
    return rt_child_source(&spec, err);
}

static int fail_from_workers(Dump *d, RtError *err)
{
    pthread_mutex_lock(&d->mu);
    rt_error_copy(err, &d->werr);
    pthread_mutex_unlock(&d->mu);
    return RT_ERR;
}

/* Drops pg_dump's "dump complete" trailer from the end of the pre-data part. */
static void strip_trailer(Dump *d)
{
    static const char mark[] = "--\n-- PostgreSQL database dump complete\n--\n";
    size_t ml = sizeof mark - 1;
    for (size_t i = d->hold_len >= ml ? d->hold_len - ml + 1 : 0; i-- > 0;) {
        if (memcmp(d->hold + i, mark, ml) == 0) {
            memmove(d->hold + i, d->hold + i + ml, d->hold_len - i - ml);
            d->hold_len -= ml;
            return;
        }
    }
}

static void consume_block(Dump *d, Table *t, const uint8_t *p, size_t n)
{
    EVP_DigestUpdate(t->md, p, n);
    t->bytes += (int64_t)n;
    const uint8_t *e = p + n;
    while ((p = memchr(p, '\n', (size_t)(e - p)))) {
        t->rows++;
        p++;
    }
}

/* Errors of a pg_dump child name the database too. */
static int child_failed(Dump *d, RtError *err)
{
    char msg[sizeof err->message];
    snprintf(msg, sizeof msg, "%s", err->message);
    rt_error_clear(err);
    rt_error_set(err, RT_CLASS_FAILURE, "pgdump.pg_dump", "cannot dump %s: %s", d->what, msg);
    return RT_ERR;
}

static void set_pending(Dump *d, const char *p, size_t len)
{
    d->pending = p;
    d->pending_len = len;
    d->pending_pos = 0;
}

static int dump_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    Dump *d = self;
    *got = 0;
    *eof = false;
    for (;;) {
        if (rt_cancelled()) return rt_cancel_error(err);
        if (d->pending_pos < d->pending_len) {
            size_t n = d->pending_len - d->pending_pos;
            if (n > cap) n = cap;
            memcpy(buf, d->pending + d->pending_pos, n);
            d->pending_pos += n;
            *got = n;
            return RT_OK;
        }
        switch (d->phase) {
        case PH_PRE:
        case PH_LO: {
            if (d->hold_len > TAIL_HOLD) {
                size_t n = d->hold_len - TAIL_HOLD;
                if (n > cap) n = cap;
                memcpy(buf, d->hold, n);
                memmove(d->hold, d->hold + n, d->hold_len - n);
                d->hold_len -= n;
                *got = n;
                return RT_OK;
            }
            size_t n = 0;
            bool ceof = false;
            if (d->child->read(d->child->self, d->hold + d->hold_len, HOLD_SIZE - d->hold_len, &n,
                               &ceof, err) != RT_OK)
                return child_failed(d, err);
            d->hold_len += n;
            if (ceof) {
                rt_source_free(d->child);
                d->child = NULL;
                strip_trailer(d);
                set_pending(d, (const char *)d->hold, d->hold_len);
                if (d->phase == PH_PRE) {
                    /* post-data's pg_dump starts now: it reads the whole catalog (0.3 s on the
                     * bench database) while the data streams, instead of after it with the
                     * cores idle; its output waits in the pipe until the data is out */
                    d->post = start_pg_dump(d, "post-data", err);
                    if (!d->post) return RT_ERR;
                }
                d->phase = d->phase == PH_PRE ? PH_DATA : PH_LO_DONE;
            }
            continue;
        }
        case PH_DATA: {
            if (d->blk) {
                Table *t = &d->tables[d->items[d->cur].table];
                size_t n = d->blk->len - d->blk_pos;
                if (n > cap) n = cap;
                memcpy(buf, d->blk->data + d->blk_pos, n);
                consume_block(d, t, buf, n);
                d->blk_pos += n;
                if (d->blk_pos == d->blk->len) {
                    pthread_mutex_lock(&d->mu);
                    if (d->blk->cap == BLOCK_SIZE && d->nspare < SPARE_MAX) {
                        d->blk->next = d->spare;
                        d->spare = d->blk;
                        d->nspare++;
                    } else {
                        free(d->blk);
                    }
                    pthread_mutex_unlock(&d->mu);
                    d->blk = NULL;
                }
                *got = n;
                return RT_OK;
            }
            if (d->cur >= d->nitems) {
                set_pending(d, d->seq_sql, d->seq_len);
                d->phase = PH_SEQ;
                continue;
            }
            Item *it = &d->items[d->cur];
            Table *t = &d->tables[it->table];
            if (it->first && !d->header_sent) {
                d->header_sent = true;
                set_pending(d, t->header, strlen(t->header));
                continue;
            }
            pthread_mutex_lock(&d->mu);
            while (!it->head && !it->done && !d->failed) {
                rt_cond_wait_ms(&d->cv, &d->mu, 200);
                if (rt_cancelled()) break;
            }
            if (d->failed) {
                pthread_mutex_unlock(&d->mu);
                return fail_from_workers(d, err);
            }
            if (it->head) {
                d->blk = it->head;
                it->head = d->blk->next;
                if (!it->head) it->tail = NULL;
                it->queued -= d->blk->len;
                d->queued -= d->blk->len;
                d->blk_pos = 0;
                pthread_cond_broadcast(&d->cv);
                pthread_mutex_unlock(&d->mu);
                continue;
            }
            bool done = it->done;
            pthread_mutex_unlock(&d->mu);
            if (!done) continue; /* cancelled: reported at the top */
            pthread_mutex_lock(&d->mu);
            d->reading = ++d->cur; /* the next item's worker may now fill its queue */
            pthread_cond_broadcast(&d->cv);
            pthread_mutex_unlock(&d->mu);
            d->header_sent = false;
            pgdump_set_digest_merge(&t->set, &it->set);
            if (it->last) {
                pgdump_digest_final_hex(t->md, t->sha256);
                set_pending(d, "\\.\n\n\n", 5);
            }
            continue;
        }
        case PH_SEQ:
            stop_workers(d);
            if (d->has_lo) {
                /* large objects' contents, as pg_dump writes them (lo_open/lowrite) */
                d->child = start_pg_dump(d, "data", err);
                if (!d->child) return RT_ERR;
                d->hold_len = 0;
                d->phase = PH_LO;
                continue;
            }
            /* fall through */
        case PH_LO_DONE:
            d->child = d->post ? d->post : start_pg_dump(d, "post-data", err);
            d->post = NULL;
            if (!d->child) return RT_ERR;
            d->phase = PH_POST;
            continue;
        case PH_POST: {
            size_t n = 0;
            bool ceof = false;
            if (d->child->read(d->child->self, buf, cap, &n, &ceof, err) != RT_OK)
                return child_failed(d, err);
            if (ceof) {
                rt_source_free(d->child);
                d->child = NULL;
                /* the snapshot is no longer needed */
                bool cancelled = false;
                PQclear(pgdump_exec_cancellable(d->leader, "COMMIT", 0, NULL, &cancelled));
                d->phase = PH_DONE;
            }
            if (n || !ceof) {
                *got = n;
                if (n) return RT_OK;
                continue;
            }
            continue;
        }
        case PH_DONE:
            *eof = true;
            return RT_OK;
        }
    }
}

static void dump_results(void *self, RtResults *res)
{
    Dump *d = self;
    RtResults *tabs = rt_results_table(res, "tables");
    for (int i = 0; i < d->ntables; i++) {
        Table *t = &d->tables[i];
        RtResults *e = rt_results_table(tabs, t->qname);
        rt_results_int(e, "rows", t->rows);
        rt_results_int(e, "bytes", t->bytes);
        rt_results_str(e, "sha256", t->sha256);
        if (d->row_digests) {
            char hex[65];
            pgdump_set_digest_hex(&t->set, hex);
            rt_results_str(e, "set_sha256", hex);
        }
    }
    rt_results_int(res, "table_count", d->ntables);
    rt_results_int(res, "sequences", d->nseq);
    rt_results_int(res, "peak_buffered", (int64_t)d->peak_queued);
    rt_results_int(res, "buffer_limit", (int64_t)(ITEM_QUEUE_MAX + d->ahead_max));
    rt_results_str(res, "server_version", d->server_version);
    rt_results_str(res, "pg_dump_version", d->tool_version);
    rt_results_str(res, "snapshot", d->snapshot);
    if (d->snapshot_xids) rt_results_str(res, "snapshot_xids", d->snapshot_xids);
}

static void dump_destroy(void *self)
{
    Dump *d = self;
    if (!d) return;
    if (d->nthreads) stop_workers(d);
    if (d->child) rt_source_free(d->child);
    if (d->post) rt_source_free(d->post);
    for (int i = 0; i < d->nwconn; i++)
        if (d->wconn[i]) PQfinish(d->wconn[i]);
    free(d->wconn);
    free(d->threads);
    if (d->leader) PQfinish(d->leader);
    for (int i = 0; i < d->ntables; i++) {
        free(d->tables[i].qname);
        free(d->tables[i].header);
        EVP_MD_CTX_free(d->tables[i].md);
    }
    free(d->tables);
    for (int i = 0; i < d->nitems; i++) {
        free(d->items[i].query);
        free_blocks(d->items[i].head);
    }
    free(d->items);
    free(d->blk);
    free_blocks(d->spare);
    free(d->seq_sql);
    for (int i = 0; i < d->nenv; i++) {
        if (!strncmp(d->env[i], "PGPASSWORD=", 11)) memset(d->env[i], 0, strlen(d->env[i]));
        free(d->env[i]);
    }
    free(d->env);
    if (d->url) {
        memset(d->url, 0, strlen(d->url));
        free(d->url);
    }
    free(d->pg_dump);
    free(d->import_snapshot);
    free(d->snapshot_xids);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d);
}

RtSource *pgdump_dump_source(const PgDumpOptions *opt, RtError *err)
{
    Dump *d = calloc(1, sizeof *d);
    if (!d) {
        rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    rt_error_init(&d->werr);
    d->url = xstrdup(opt->url ? opt->url : "");
    d->pg_dump = xstrdup(opt->pg_dump ? opt->pg_dump : "pg_dump");
    d->jobs = opt->jobs > 0 ? opt->jobs : 2;
    d->lo = opt->large_objects;
    d->row_digests = opt->row_digests;
    int64_t split = opt->split_bytes > 0 ? opt->split_bytes : ((int64_t)8 << 20);
    d->ahead_max = AHEAD_LIMIT / (size_t)split >= (size_t)(d->jobs - 1)
                       ? (size_t)(d->jobs - 1) * (size_t)split
                       : AHEAD_LIMIT;
    if (d->ahead_max < AHEAD_MIN) d->ahead_max = AHEAD_MIN;
    pgdump_describe(d->url, d->what, sizeof d->what);
    RtSource *src = NULL;
    if (!d->url || !d->pg_dump) {
        rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
        goto fail;
    }
    if (check_pooler(d, err) != RT_OK) goto fail;
    d->leader = pgdump_connect(d->url, "clubio-dr pgdump", err);
    if (!d->leader) goto fail;
    d->server_num = PQserverVersion(d->leader);
    snprintf(d->server_version, sizeof d->server_version, "%s",
             PQparameterStatus(d->leader, "server_version"));
    if (check_pg_dump(d, err) != RT_OK) goto fail;
    if (build_child_env(d, err) != RT_OK) goto fail;
    if (exec(d, d->leader, SESSION_SQL, err) != RT_OK) goto fail;
    if (exec(d, d->leader, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err) != RT_OK)
        goto fail;
    if (opt->snapshot && *opt->snapshot) {
        /* Import the given snapshot, then export it again from this transaction: the workers
         * and pg_dump children import ours, which lives as long as the dump. */
        char *lit = PQescapeLiteral(d->leader, opt->snapshot, strlen(opt->snapshot));
        char sql[200];
        snprintf(sql, sizeof sql, "SET TRANSACTION SNAPSHOT %s", lit ? lit : "''");
        if (lit) PQfreemem(lit);
        if (exec(d, d->leader, sql, err) != RT_OK) {
            rt_error_hint(err, "the snapshot's exporter (a replication slot's connection) must "
                               "stay open until the dump has started");
            goto fail;
        }
        d->import_snapshot = xstrdup(opt->snapshot);
    }
    PGresult *r = query(d, d->leader,
                        d->server_num >= 130000 ? "SELECT pg_catalog.pg_current_snapshot()::text"
                                                : "SELECT pg_catalog.txid_current_snapshot()::text",
                        err);
    if (!r) goto fail;
    d->snapshot_xids = xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    r = query(d, d->leader, "SELECT pg_catalog.pg_export_snapshot()", err);
    if (!r) {
        rt_error_hint(err, "a dump needs a direct session (not a transaction-mode pooler)");
        goto fail;
    }
    snprintf(d->snapshot, sizeof d->snapshot, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (read_sequences(d, err) != RT_OK) goto fail;
    if (check_large_objects(d, err) != RT_OK) goto fail;
    if (list_tables(d, split, err) != RT_OK) goto fail;
    warn_extension_config(d);
    rt_debug("pgdump: %s snapshot %s, %d tables in %d parts, %d sequences", d->what, d->snapshot,
             d->ntables, d->nitems, d->nseq);
    d->child = start_pg_dump(d, "pre-data", err);
    if (!d->child) goto fail;
    if (start_workers(d, err) != RT_OK) goto fail;
    src = rt_source_new();
    if (!src) {
        rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
        goto fail;
    }
    src->name = "pgdump";
    src->self = d;
    src->read = dump_read;
    src->results = dump_results;
    src->destroy = dump_destroy;
    return src;
fail:
    dump_destroy(d);
    return NULL;
}
