/*
 * pgdump connections and table digests: libpq connections from URLs with the password kept out
 * of every message, server errors turned into RtErrors, and exact digests over COPY output.
 */
/* The per-row SHA-256 of the set digests uses OpenSSL's low-level SHA256_* (deprecated since
 * 3.0, still in every 3.x): measured on 110-byte rows, 147 ns a row against 682 ns for
 * EVP_Digest(EVP_sha256()), whose implicit fetch takes locks and allocates on every call, and
 * 238 ns for a reused EVP_MD_CTX with a fetched EVP_MD. A restore hashes every row twice (the
 * stream's scan and the read-back check): 5 M rows, 5 s of CPU against 1.5 s. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "log.h"
#include "modules/crypto/crypto.h"
#include "pgdump.h"
#include "redact.h"
#include "timestamp.h"

#include "io/cancel.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void pgdump_describe(const char *url, char *out, size_t cap)
{
    const char *db = NULL, *host = NULL, *port = NULL;
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(url ? url : "", &msg);
    if (msg) PQfreemem(msg);
    if (opts) {
        for (PQconninfoOption *o = opts; o->keyword; o++) {
            if (!o->val || !*o->val) continue;
            if (!strcmp(o->keyword, "dbname")) db = o->val;
            if (!strcmp(o->keyword, "host")) host = o->val;
            if (!strcmp(o->keyword, "port")) port = o->val;
        }
    }
    snprintf(out, cap, "database %s on %s:%s", db ? db : "(default)", host ? host : "(local)",
             port ? port : "5432");
    if (opts) PQconninfoFree(opts);
}

/* The first line of libpq's message, without "ERROR:  " noise or a trailing newline. */
static void first_line(const char *msg, char *out, size_t cap)
{
    if (!msg) msg = "";
    while (*msg == ' ') msg++;
    if (!strncmp(msg, "ERROR:  ", 8)) msg += 8;
    size_t n = strcspn(msg, "\n");
    if (n >= cap) n = cap - 1;
    memcpy(out, msg, n);
    out[n] = '\0';
}

/* Server notices (e.g. "drop cascades to ...") go to the debug log, not to stderr. */
static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    rt_debug("pgdump: server says: %.*s", (int)strcspn(message, "\n"), message);
}

int pgdump_conn_error(PGconn *c, RtError *err, const char *code, const char *what)
{
    char line[400];
    first_line(c ? PQerrorMessage(c) : "out of memory", line, sizeof line);
    bool gone = c && PQstatus(c) == CONNECTION_BAD;
    rt_error_set(err, RT_CLASS_FAILURE, code, "%s: %s%s", what, line,
                 gone && !strstr(line, "connection") ? " (connection lost)" : "");
    err->retryable = gone;
    return RT_ERR;
}

/* PQconnectdbParams, but a cancel (signal, --timeout) ends the wait: PQconnectStartParams and
 * PQconnectPoll in poll() slices of 100 ms. libpq leaves connect_timeout to the caller in this
 * mode, so `limit` seconds is enforced here (*timed_out set). Returns NULL when cancelled (the
 * connection attempt is dropped) or out of memory. Name resolution inside PQconnectStartParams
 * still blocks: a host name that takes long to resolve delays the cancel. */
static PGconn *connect_cancellable(const char *const *keys, const char *const *vals, double limit,
                                   bool *timed_out)
{
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    if (!c || PQstatus(c) == CONNECTION_BAD) return c;
    double deadline = rt_monotonic() + limit;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        if (rt_cancelled()) {
            PQfinish(c);
            return NULL;
        }
        if (rt_monotonic() > deadline) {
            *timed_out = true;
            return c;
        }
        struct pollfd p = {.fd = PQsocket(c),
                           .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        int r = poll(&p, 1, 100);
        if (r < 0 && errno != EINTR) break;
        if (r > 0) st = PQconnectPoll(c);
    }
    return c;
}

PGconn *pgdump_connect(const char *url, const char *application_name, RtError *err)
{
    if (!url || !*url) {
        rt_error_set(err, RT_CLASS_USAGE, "pgdump.url", "no database url given");
        rt_error_hint(err, "pass url = \"postgresql://user@host:5432/dbname\" (password in the "
                           "url or in PGPASSWORD)");
        return NULL;
    }
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &msg);
    if (!opts) {
        char line[300];
        first_line(msg ? msg : "out of memory", line, sizeof line);
        if (msg) PQfreemem(msg);
        rt_error_set(err, RT_CLASS_USAGE, "pgdump.url", "invalid database url: %s", line);
        rt_error_hint(err, "use postgresql://user:password@host:5432/dbname");
        return NULL;
    }
    const char *keys[64], *vals[64];
    int n = 0;
    bool has_timeout = false;
    for (PQconninfoOption *o = opts; o->keyword && n < 60; o++) {
        if (!o->val) continue;
        if (!strcmp(o->keyword, "password")) rt_redact_register(o->val, strlen(o->val));
        if (!strcmp(o->keyword, "connect_timeout")) has_timeout = true;
        keys[n] = o->keyword;
        vals[n++] = o->val;
    }
    if (!has_timeout) {
        keys[n] = "connect_timeout";
        vals[n++] = "15";
    }
    keys[n] = "application_name";
    vals[n++] = application_name ? application_name : "clubio-dr";
    keys[n] = NULL;
    vals[n] = NULL;
    double limit = 15;
    for (int i = 0; i < n; i++)
        if (!strcmp(keys[i], "connect_timeout") && atof(vals[i]) > 0) limit = atof(vals[i]);
    bool timed_out = false;
    PGconn *c = connect_cancellable(keys, vals, limit, &timed_out);
    PQconninfoFree(opts);
    if (!c && rt_cancelled()) {
        rt_cancel_error(err);
        return NULL;
    }
    if (timed_out) {
        char what[256];
        pgdump_describe(url, what, sizeof what);
        rt_error_set(err, RT_CLASS_FAILURE, "pgdump.connect",
                     "cannot connect to %s: no answer within %g s (connect_timeout)", what, limit);
        rt_error_hint(err, "check that the server is running and reachable");
        err->retryable = true;
        PQfinish(c);
        return NULL;
    }
    if (!c || PQstatus(c) != CONNECTION_OK) {
        char what[256];
        pgdump_describe(url, what, sizeof what);
        char w2[300];
        snprintf(w2, sizeof w2, "cannot connect to %s", what);
        pgdump_conn_error(c, err, "pgdump.connect", w2);
        const char *m = c ? PQerrorMessage(c) : "";
        if (strstr(m, "password authentication failed"))
            rt_error_hint(err, "check the user and password in the url");
        else if (strstr(m, "does not exist"))
            rt_error_hint(err, "check the database name in the url");
        else
            rt_error_hint(err, "check that the server is running and reachable");
        err->retryable = !strstr(m, "password") && !strstr(m, "does not exist");
        if (c) PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, notice_to_log, NULL);
    return c;
}

/* On a cancel (or `stop`), asks the server once to cancel what runs (w->cancelled set; it has 5 s
 * to answer); false once that time is over or a second signal came: a server that does not
 * answer the cancel (network gone) is not waited for. */
static bool cancel_step(PGconn *c, PgWait *w, bool stop)
{
    if (!w->cancelled && (rt_cancelled() || stop)) {
        PGcancel *cn = PQgetCancel(c);
        char eb[128];
        if (cn) PQcancel(cn, eb, sizeof eb);
        PQfreeCancel(cn);
        w->cancelled = true;
        w->give_up = rt_monotonic() + 5;
    }
    return !(w->cancelled && (rt_monotonic() > w->give_up || rt_cancel_hurried()));
}

bool pgdump_wait_result(PGconn *c, PgWait *w)
{
    while (PQisBusy(c)) {
        if (!cancel_step(c, w, false)) return false;
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&p, 1, 200) < 0 && errno != EINTR) return false;
        if (!PQconsumeInput(c)) return false;
    }
    return true;
}

PGresult *pgdump_exec_cancellable(PGconn *c, const char *sql, int nparams,
                                  const char *const *params, bool *cancelled)
{
    *cancelled = false;
    if (rt_cancelled()) {
        *cancelled = true;
        return NULL;
    }
    if (!(nparams ? PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0)
                  : PQsendQuery(c, sql)))
        return NULL;
    PGresult *last = NULL;
    PgWait w = {0};
    for (;;) {
        bool ok = pgdump_wait_result(c, &w);
        *cancelled = w.cancelled;
        if (!ok && w.cancelled) return last;
        PGresult *r = PQgetResult(c);
        if (!r) break;
        ExecStatusType st = PQresultStatus(r);
        /* as PQexec: the last result, but the first error wins and COPY stops here */
        if (last && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(last);
            last = r;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) break;
    }
    return last;
}

int pgdump_get_copy_data(PGconn *c, char **row, const atomic_bool *stop, bool *cancelled)
{
    PgWait w = {.cancelled = *cancelled};
    for (;;) {
        int n = PQgetCopyData(c, row, 1);
        if (n != 0) return n;
        bool go_on = cancel_step(c, &w, stop && atomic_load(stop));
        *cancelled = w.cancelled;
        if (!go_on) return -2;
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&p, 1, 100) < 0 && errno != EINTR) return -2;
        if (!PQconsumeInput(c)) return -2;
    }
}

int pgdump_exec(PGconn *c, const char *sql, RtError *err)
{
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(c, sql, 0, NULL, &cancelled);
    if (cancelled) {
        PQclear(r);
        return rt_cancel_error(err);
    }
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    PQclear(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) return RT_OK;
    return pgdump_conn_error(c, err, "pgdump.sql", "query failed");
}

/* ---- digests ---------------------------------------------------------------------------- */

void pgdump_digest_final_hex(EVP_MD_CTX *md, char out[65])
{
    uint8_t h[32];
    unsigned hl = 0;
    EVP_DigestFinal_ex(md, h, &hl);
    crypto_hex(h, sizeof h, out);
}

static void add256(uint8_t *sum, const uint8_t *v)
{
    unsigned carry = 0;
    for (int i = 31; i >= 0; i--) {
        unsigned t = (unsigned)sum[i] + v[i] + carry;
        sum[i] = (uint8_t)t;
        carry = t >> 8;
    }
}

void pgdump_set_digest_row(PgSetDigest *d, const uint8_t *row, size_t len)
{
    uint8_t h[SHA256_DIGEST_LENGTH];
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, row, len);
    SHA256_Final(h, &c);
    add256(d->sum, h);
}

struct PgRowHash {
    SHA256_CTX c;
    bool open;
};

PgRowHash *pgdump_row_hash_new(void)
{
    return calloc(1, sizeof(PgRowHash));
}

void pgdump_row_hash_free(PgRowHash *h)
{
    free(h);
}

void pgdump_row_hash_update(PgRowHash *h, const uint8_t *p, size_t n)
{
    if (!h->open) {
        SHA256_Init(&h->c);
        h->open = true;
    }
    SHA256_Update(&h->c, p, n);
}

void pgdump_row_hash_end(PgRowHash *h, PgSetDigest *into)
{
    if (!h->open) return;
    uint8_t v[SHA256_DIGEST_LENGTH];
    SHA256_Final(v, &h->c);
    add256(into->sum, v);
    h->open = false;
}

void pgdump_set_digest_merge(PgSetDigest *into, const PgSetDigest *from)
{
    add256(into->sum, from->sum);
}

void pgdump_set_digest_hex(const PgSetDigest *d, char out[65])
{
    crypto_hex(d->sum, sizeof d->sum, out);
}

int pgdump_table_digest(PGconn *c, const char *table, PgTableDigest *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    /* the column list the dump uses: no dropped or generated columns */
    const char *params[1] = {table};
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(
        c,
        "SELECT coalesce(string_agg(quote_ident(attname), ', ' ORDER BY attnum), '') "
        "FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = ''",
        1, params, &cancelled);
    if (cancelled) {
        PQclear(r);
        return rt_cancel_error(err);
    }
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        char w[300];
        snprintf(w, sizeof w, "cannot digest table %s", table);
        return pgdump_conn_error(c, err, "pgdump.digest", w);
    }
    size_t qlen = strlen(PQgetvalue(r, 0, 0)) + strlen(table) + 64;
    char *q = malloc(qlen);
    if (!q) {
        PQclear(r);
        return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    }
    snprintf(q, qlen, "COPY (SELECT %s FROM %s) TO STDOUT", PQgetvalue(r, 0, 0), table);
    PQclear(r);
    r = pgdump_exec_cancellable(c, q, 0, NULL, &cancelled);
    free(q);
    if (cancelled) {
        PQclear(r);
        return rt_cancel_error(err);
    }
    if (!r || PQresultStatus(r) != PGRES_COPY_OUT) {
        PQclear(r);
        char w[300];
        snprintf(w, sizeof w, "cannot digest table %s", table);
        return pgdump_conn_error(c, err, "pgdump.digest", w);
    }
    PQclear(r);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    PgSetDigest set = {{0}};
    int rc = RT_OK;
    for (;;) {
        char *row = NULL;
        int n = pgdump_get_copy_data(c, &row, NULL, &cancelled);
        if (n == -1) break;
        if (n < 0) {
            rc = cancelled ? rt_cancel_error(err)
                           : pgdump_conn_error(c, err, "pgdump.digest", "cannot digest table");
            break;
        }
        EVP_DigestUpdate(md, row, (size_t)n);
        pgdump_set_digest_row(&set, (const uint8_t *)row, (size_t)n);
        out->rows++;
        out->bytes += n;
        PQfreemem(row);
    }
    pgdump_digest_final_hex(md, out->sha256);
    EVP_MD_CTX_free(md);
    pgdump_set_digest_hex(&set, out->set_sha256);
    if (rc != RT_OK && cancelled) return rc; /* the COPY may still be open: the caller drops c */
    while ((r = PQgetResult(c))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == RT_OK)
            rc = cancelled ? rt_cancel_error(err)
                           : pgdump_conn_error(c, err, "pgdump.digest", "cannot digest table");
        PQclear(r);
    }
    return rc;
}

/* ---- several tables over parallel connections ------------------------------------------- */

typedef struct DigestPool {
    const char *const *tables;
    size_t n, next;
    PgTableDigest *out;
    pthread_mutex_t mu;
    bool failed;
    RtError err;
} DigestPool;

typedef struct DigestWorker {
    DigestPool *p;
    PGconn *c;
    pthread_t th;
} DigestWorker;

static void *digest_worker(void *arg)
{
    DigestWorker *w = arg;
    DigestPool *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next++;
        bool stop = p->failed || i >= p->n;
        pthread_mutex_unlock(&p->mu);
        if (stop) break;
        RtError e;
        rt_error_init(&e);
        if (pgdump_table_digest(w->c, p->tables[i], &p->out[i], &e) != RT_OK) {
            pthread_mutex_lock(&p->mu);
            if (!p->failed) {
                p->failed = true;
                rt_error_copy(&p->err, &e);
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
    }
    return NULL;
}

int pgdump_table_digests(const char *url, const char *const *tables, size_t n, int jobs,
                         PgTableDigest *out, RtError *err)
{
    if (n == 0) return RT_OK;
    if (jobs < 1) jobs = 1;
    if ((size_t)jobs > n) jobs = (int)n;
    DigestWorker *w = calloc((size_t)jobs, sizeof *w);
    if (!w) return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
    DigestPool p = {.tables = tables, .n = n, .out = out};
    pthread_mutex_init(&p.mu, NULL);
    rt_error_init(&p.err);
    int rc = RT_OK, started = 0;
    /* every connection is opened here, on the caller's thread, before any worker starts */
    for (int i = 0; i < jobs && rc == RT_OK; i++) {
        w[i].p = &p;
        if (!(w[i].c = pgdump_connect(url, "clubio-dr table digests", err))) rc = RT_ERR;
    }
    for (int i = 0; i < jobs && rc == RT_OK; i++) {
        if (pthread_create(&w[i].th, NULL, digest_worker, &w[i]) != 0) {
            rc = rt_error_set(err, RT_CLASS_FAILURE, "pgdump.thread", "cannot start a thread");
            pthread_mutex_lock(&p.mu);
            p.failed = true; /* the started workers stop after their table */
            pthread_mutex_unlock(&p.mu);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(w[i].th, NULL);
    if (rc == RT_OK && p.failed) {
        rt_error_copy(err, &p.err);
        rc = RT_ERR;
    }
    for (int i = 0; i < jobs; i++)
        if (w[i].c) PQfinish(w[i].c);
    free(w);
    pthread_mutex_destroy(&p.mu);
    return rc;
}
