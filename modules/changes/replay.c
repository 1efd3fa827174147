/*
 * Replay: applies change-archive segments (the SQL pgoutput.c writes) to a database.
 *
 * Speed comes from fewer round trips, not from cutting corners: a segment is one server
 * transaction (so each archived transaction is applied whole or not at all, and a segment whose
 * bytes do not match its signed manifest applies nothing); runs of inserts into one table stream
 * through one COPY, merged across consecutive archived transactions; other statements go in
 * multi-statement batches of up to 1 MiB (one round trip each).
 *
 * Which transactions are applied: those committed at or before stop_time, not already in the
 * base (xid visible in the base's snapshot, or commit LSN <= the slot's consistent point), and
 * not applied before (commit LSN <= the last one applied: a transaction archived twice).
 */
#include "changes.h"
#include "io/cancel.h"
#include "log.h"
#include "modules/pgdump/pgdump.h"
#include "runtime/sbuf.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ChgReplayer {
    atomic_int refs;
    PGconn *conn;
    char what[256];
    uint64_t applied_through;
    int64_t applied, skipped_base, skipped_dup, changes;
    int64_t last_time;
    bool stopped;
};

ChgReplayer *chg_replayer_new(const char *url, RtError *err)
{
    ChgReplayer *r = calloc(1, sizeof *r);
    if (!r) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&r->refs, 1);
    pgdump_describe(url, r->what, sizeof r->what);
    r->conn = pgdump_connect(url, "clubio-dr restore-from-s3", err);
    if (!r->conn) {
        free(r);
        return NULL;
    }
    /* Triggers and rules already ran on the source: their effects are in the archive too. */
    PGresult *res = PQexec(r->conn, "SET session_replication_role = replica");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rt_warn("replay: cannot set session_replication_role (not a superuser?): triggers on %s "
                "will fire during the replay",
                r->what);
    PQclear(res);
    return r;
}

void chg_replayer_release(ChgReplayer *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    if (r->conn) PQfinish(r->conn);
    free(r);
}

void chg_replayer_results(ChgReplayer *r, RtResults *res)
{
    char l[24], t[40];
    rt_results_int(res, "applied", r->applied);
    rt_results_int(res, "skipped_base", r->skipped_base);
    rt_results_int(res, "skipped_dup", r->skipped_dup);
    rt_results_int(res, "changes", r->changes);
    chg_lsn_format(r->applied_through, l);
    rt_results_str(res, "last_lsn", l);
    if (r->last_time) {
        chg_time_format(r->last_time, t);
        rt_results_str(res, "last_time", t);
    }
    rt_results_bool(res, "stopped", r->stopped);
}

/* ---- the sink --------------------------------------------------------------------------- */

enum { S_OUT, S_HEADER, S_IN, S_COPY };

typedef struct Rp {
    ChgReplayer *r;
    ChgReplayOptions o;
    char *base_snapshot, *expect;
    uint64_t xmin, xmax;
    uint64_t *xip;
    int nxip;
    EVP_MD_CTX *md;
    SBuf line;
    int state;
    bool include, stopped, begun;
    uint64_t cur_lsn;
    int64_t cur_time;
    int64_t cur_changes;
    /* pending work on the server */
    SBuf sql;
    char *copy_header; /* the run of inserts under way ("COPY ... FROM stdin;") */
    bool copy_open;    /* ... streaming through a COPY on the server */
    int64_t run_rows;
    SBuf copybuf;
    /* this segment */
    int64_t applied, skipped_base, skipped_dup, skipped_after, changes;
    uint64_t last_lsn;
    int64_t last_time;
} Rp;

static int server_error(Rp *p, RtError *err, const char *what)
{
    char w[400];
    snprintf(w, sizeof w, "replay into %s failed %s", p->r->what, what);
    return pgdump_conn_error(p->r->conn, err, "changes.replay", w);
}

static int exec_ok(Rp *p, const char *sql, RtError *err)
{
    bool cancelled = false;
    PGresult *res = pgdump_exec_cancellable(p->r->conn, sql, 0, NULL, &cancelled);
    int st = PQresultStatus(res);
    PQclear(res);
    if (cancelled) return rt_cancel_error(err);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return server_error(p, err, "");
    return RT_OK;
}

static int flush_copy_data(Rp *p, RtError *err)
{
    if (!p->copybuf.len) return RT_OK;
    if (PQputCopyData(p->r->conn, p->copybuf.p, (int)p->copybuf.len) != 1)
        return server_error(p, err, "sending COPY data");
    p->copybuf.len = 0;
    return RT_OK;
}

static int end_copy(Rp *p, RtError *err)
{
    if (!p->copy_open) return RT_OK;
    p->copy_open = false;
    if (flush_copy_data(p, err) != RT_OK) return RT_ERR;
    if (PQputCopyEnd(p->r->conn, NULL) != 1) return server_error(p, err, "ending COPY");
    int rc = RT_OK;
    PGresult *res;
    while ((res = PQgetResult(p->r->conn))) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && rc == RT_OK) {
            char w[300];
            snprintf(w, sizeof w, "in %s", p->copy_header);
            rc = server_error(p, err, w);
        }
        PQclear(res);
    }
    return rc;
}

static int flush_sql(Rp *p, RtError *err)
{
    if (!p->sql.len) return RT_OK;
    if (p->sql.oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    int rc = exec_ok(p, p->sql.p, err);
    p->sql.len = 0;
    p->sql.p[0] = 0;
    return rc;
}

static int ensure_begun(Rp *p, RtError *err)
{
    if (p->begun) return RT_OK;
    p->begun = true;
    return exec_ok(p, "BEGIN", err);
}

/* A run of inserts into one table (COPY blocks of consecutive transactions with the same header)
 * is held back until it ends or grows: a short run goes into the statement batch as one
 * INSERT ... VALUES (no round trip of its own), a long one streams through a real COPY. */
#define SHORT_RUN_ROWS  64
#define SHORT_RUN_BYTES (64 * 1024)

static int open_copy(Rp *p, RtError *err)
{
    if (flush_sql(p, err) != RT_OK) return RT_ERR;
    PGresult *res = PQexec(p->r->conn, p->copy_header);
    int st = PQresultStatus(res);
    PQclear(res);
    if (st != PGRES_COPY_IN) return server_error(p, err, p->copy_header);
    p->copy_open = true;
    return flush_copy_data(p, err);
}

/* COPY text rows -> INSERT INTO <table> (<cols>) VALUES (E'...', NULL, ...), ...; appended to the
 * batch. COPY's backslash escapes mean the same in an E'' literal; only quotes need one. */
static void rows_to_insert(Rp *p)
{
    const char *h = p->copy_header;
    size_t hl = strlen(h);
    sb_add(&p->sql, "INSERT INTO ");
    sb_addn(&p->sql, h + 5, hl - 5 - 12);
    sb_add(&p->sql, " VALUES ");
    const char *q = p->copybuf.p, *end = p->copybuf.p + p->copybuf.len;
    bool first_row = true;
    while (q < end) {
        const char *eol = memchr(q, '\n', (size_t)(end - q));
        if (!eol) eol = end;
        sb_add(&p->sql, first_row ? "(" : ",\n(");
        first_row = false;
        const char *f = q;
        for (;;) {
            const char *tab = memchr(f, '\t', (size_t)(eol - f));
            const char *fe = tab ? tab : eol;
            if (fe - f == 2 && f[0] == '\\' && f[1] == 'N') {
                sb_add(&p->sql, "NULL");
            } else {
                sb_add(&p->sql, "E'");
                const char *k = f;
                for (const char *c = f; c < fe; c++) {
                    if (*c != '\'') continue;
                    sb_addn(&p->sql, k, (size_t)(c - k));
                    sb_add(&p->sql, "\\'");
                    k = c + 1;
                }
                sb_addn(&p->sql, k, (size_t)(fe - k));
                sb_addc(&p->sql, '\'');
            }
            if (!tab) break;
            sb_addc(&p->sql, ',');
            f = tab + 1;
        }
        sb_addc(&p->sql, ')');
        q = eol + 1;
    }
    sb_add(&p->sql, ";\n");
    p->copybuf.len = 0;
}

static int end_run(Rp *p, RtError *err)
{
    if (!p->copy_header) return RT_OK;
    int rc = RT_OK;
    if (p->copy_open)
        rc = end_copy(p, err);
    else if (p->run_rows > 0)
        rows_to_insert(p);
    free(p->copy_header);
    p->copy_header = NULL;
    p->run_rows = 0;
    if (rc == RT_OK && p->sql.len >= (1u << 20)) rc = flush_sql(p, err);
    return rc;
}

static int start_copy(Rp *p, const char *header, RtError *err)
{
    if (p->copy_header && !strcmp(p->copy_header, header)) return RT_OK; /* merge the run */
    if (end_run(p, err) != RT_OK) return RT_ERR;
    p->copy_header = strdup(header);
    if (!p->copy_header) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    return RT_OK;
}

static int add_row(Rp *p, const char *s, size_t len, RtError *err)
{
    sb_addn(&p->copybuf, s, len);
    sb_addc(&p->copybuf, '\n');
    if (p->copybuf.oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    p->run_rows++;
    if (p->copy_open) return p->copybuf.len >= 256 * 1024 ? flush_copy_data(p, err) : RT_OK;
    if (p->run_rows >= SHORT_RUN_ROWS || p->copybuf.len >= SHORT_RUN_BYTES)
        return open_copy(p, err);
    return RT_OK;
}

/* Is a 32-bit xid visible (committed) in the base's snapshot? Widened with xmax's epoch. */
static bool visible_in_base(const Rp *p, uint32_t xid)
{
    if (!p->base_snapshot) return false;
    uint64_t full = (p->xmax & ~(uint64_t)0xffffffffu) | xid;
    if (full > p->xmax + 0x7fffffffu && full >= ((uint64_t)1 << 32))
        full -= (uint64_t)1 << 32;
    else if (full + 0x80000000u < p->xmax)
        full += (uint64_t)1 << 32;
    if (full < p->xmin) return true;
    if (full >= p->xmax) return false;
    for (int i = 0; i < p->nxip; i++)
        if (p->xip[i] == full) return false;
    return true;
}

static int malformed(Rp *p, RtError *err, const char *what)
{
    (void)p;
    rt_error_set(err, RT_CLASS_VERIFY, "verify.segment-malformed",
                 "the segment is not a whole change-archive segment: %s", what);
    rt_error_hint(err, "verify the chain with `clubio-dr run verify-export --changes`");
    return RT_ERR;
}

static int on_txn_header(Rp *p, const char *s, RtError *err)
{
    char lsn[24] = {0}, ts[40] = {0};
    unsigned xid = 0;
    if (sscanf(s, "-- txn commit_lsn=%23s xid=%u time=%39s", lsn, &xid, ts) != 3 ||
        !chg_lsn_parse(lsn, &p->cur_lsn) || !chg_time_parse(ts, &p->cur_time))
        return malformed(p, err, "a bad transaction header");
    p->cur_changes = 0;
    p->include = false;
    if (p->stopped || p->cur_time > p->o.stop_time) {
        p->stopped = true;
        p->skipped_after++;
    } else if (p->cur_lsn <= p->r->applied_through) {
        p->skipped_dup++;
    } else if ((p->o.base_lsn && p->cur_lsn <= p->o.base_lsn) || visible_in_base(p, xid)) {
        p->skipped_base++;
    } else {
        p->include = true;
    }
    p->state = S_HEADER;
    return RT_OK;
}

static int on_line(Rp *p, char *s, size_t len, RtError *err)
{
    switch (p->state) {
    case S_OUT:
        if (!strncmp(s, "-- txn ", 7)) return on_txn_header(p, s, err);
        if (len == 0 || !strncmp(s, "--", 2) || !strncmp(s, "SELECT pg_catalog.setval(", 25))
            return RT_OK; /* comments; sequences are set from the manifest at the end */
        return malformed(p, err, "a statement outside a transaction");
    case S_HEADER:
        if (strcmp(s, "BEGIN;") != 0) return malformed(p, err, "no BEGIN after a header");
        p->state = S_IN;
        if (p->include) return ensure_begun(p, err);
        return RT_OK;
    case S_IN:
        if (!strcmp(s, "COMMIT;")) {
            p->state = S_OUT;
            if (p->include) {
                p->applied++;
                p->changes += p->cur_changes;
                p->last_lsn = p->cur_lsn;
                p->last_time = p->cur_time;
            }
            return RT_OK;
        }
        if (!strncmp(s, "COPY ", 5) && len > 12 && !strcmp(s + len - 12, " FROM stdin;")) {
            p->state = S_COPY;
            return p->include ? start_copy(p, s, err) : RT_OK;
        }
        if (!strncmp(s, "--", 2)) return RT_OK;
        if (!p->include) return RT_OK;
        p->cur_changes++;
        if (end_run(p, err) != RT_OK) return RT_ERR;
        sb_addn(&p->sql, s, len);
        sb_addc(&p->sql, '\n');
        if (p->sql.len >= (1u << 20)) return flush_sql(p, err);
        return RT_OK;
    case S_COPY:
        if (!strcmp(s, "\\.")) {
            p->state = S_IN;
            return RT_OK;
        }
        if (!p->include) return RT_OK;
        p->cur_changes++;
        return add_row(p, s, len, err);
    }
    return RT_OK;
}

static int rp_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    Rp *p = self;
    if (rt_cancelled()) return rt_cancel_error(err);
    EVP_DigestUpdate(p->md, data, len);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] != '\n') continue;
        char *s;
        size_t n;
        if (p->line.len) {
            sb_addn(&p->line, (const char *)data + start, i - start);
            if (p->line.oom)
                return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
            s = p->line.p;
            n = p->line.len;
        } else {
            /* the line is whole inside data: copy it once to NUL-terminate it */
            p->line.len = 0;
            sb_addn(&p->line, (const char *)data + start, i - start);
            if (p->line.oom)
                return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
            s = p->line.p ? p->line.p : (char *)"";
            n = i - start;
        }
        int rc = on_line(p, s, n, err);
        p->line.len = 0;
        if (p->line.p) p->line.p[0] = 0;
        if (rc != RT_OK) return RT_ERR;
        start = i + 1;
    }
    if (start < len) {
        sb_addn(&p->line, (const char *)data + start, len - start);
        if (p->line.oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    return RT_OK;
}

static void rollback(Rp *p)
{
    if (p->copy_open) {
        PQputCopyEnd(p->r->conn, "replay aborted");
        PGresult *res;
        while ((res = PQgetResult(p->r->conn))) PQclear(res);
        p->copy_open = false;
    }
    if (p->begun) {
        PGresult *res = PQexec(p->r->conn, "ROLLBACK");
        PQclear(res);
        p->begun = false;
    }
}

static int rp_finish(void *self, RtError *err)
{
    Rp *p = self;
    if (p->line.len) return malformed(p, err, "it ends inside a line");
    if (p->state != S_OUT) return malformed(p, err, "it ends inside a transaction");
    if (end_run(p, err) != RT_OK || flush_sql(p, err) != RT_OK) return RT_ERR;
    if (p->expect) {
        char hex[65];
        pgdump_digest_final_hex(p->md, hex);
        if (strcmp(hex, p->expect) != 0) {
            rt_error_set(err, RT_CLASS_VERIFY, "verify.checksum-mismatch",
                         "the segment's SQL does not match the SHA-256 in its signed manifest");
            rt_error_hint(err, "nothing of this segment was applied; the segment is damaged or "
                               "altered: verify the chain");
            return RT_ERR;
        }
    }
    if (p->begun) {
        p->begun = false;
        if (exec_ok(p, "COMMIT", err) != RT_OK) return RT_ERR;
    }
    ChgReplayer *r = p->r;
    r->applied += p->applied;
    r->skipped_base += p->skipped_base;
    r->skipped_dup += p->skipped_dup;
    r->changes += p->changes;
    if (p->last_lsn > r->applied_through) r->applied_through = p->last_lsn;
    if (p->last_time) r->last_time = p->last_time;
    if (p->stopped) r->stopped = true;
    return RT_OK;
}

static void rp_abort(void *self)
{
    rollback(self);
}

static void rp_results(void *self, RtResults *res)
{
    Rp *p = self;
    rt_results_int(res, "applied", p->applied);
    rt_results_int(res, "skipped_base", p->skipped_base);
    rt_results_int(res, "skipped_dup", p->skipped_dup);
    rt_results_int(res, "skipped_after", p->skipped_after);
    rt_results_int(res, "changes", p->changes);
    rt_results_bool(res, "stopped", p->stopped);
}

static void rp_destroy(void *self)
{
    Rp *p = self;
    if (!p) return;
    if (p->md) EVP_MD_CTX_free(p->md);
    free(p->line.p);
    free(p->sql.p);
    free(p->copybuf.p);
    free(p->copy_header);
    free(p->base_snapshot);
    free(p->expect);
    free(p->xip);
    chg_replayer_release(p->r);
    free(p);
}

static bool parse_snapshot(Rp *p, const char *s)
{
    char *end;
    p->xmin = strtoull(s, &end, 10);
    if (*end != ':') return false;
    p->xmax = strtoull(end + 1, &end, 10);
    if (*end != ':') return false;
    s = end + 1;
    int cap = 0;
    while (*s) {
        uint64_t x = strtoull(s, &end, 10);
        if (end == s) return false;
        if (p->nxip == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *n = realloc(p->xip, (size_t)cap * sizeof *n);
            if (!n) return false;
            p->xip = n;
        }
        p->xip[p->nxip++] = x;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return false;
    }
    return p->xmin <= p->xmax;
}

static const RtSinkOps changes_replay_sink_ops = {.name = "changes.replay",
                                                  .write = rp_write,
                                                  .finish = rp_finish,
                                                  .abort = rp_abort,
                                                  .results = rp_results,
                                                  .destroy = rp_destroy};

RtSink *chg_replay_sink(ChgReplayer *r, const ChgReplayOptions *o, RtError *err)
{
    Rp *p = calloc(1, sizeof *p);
    RtSink *k = rt_sink_new();
    if (!p || !k || !(p->md = EVP_MD_CTX_new()) ||
        EVP_DigestInit_ex(p->md, EVP_sha256(), NULL) != 1) {
        if (p && p->md) EVP_MD_CTX_free(p->md);
        free(p);
        free(k);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    atomic_fetch_add(&r->refs, 1);
    p->r = r;
    p->o = *o;
    if (o->base_snapshot && *o->base_snapshot) {
        p->base_snapshot = strdup(o->base_snapshot);
        if (!p->base_snapshot || !parse_snapshot(p, o->base_snapshot)) {
            rp_destroy(p);
            free(k);
            rt_error_set(err, RT_CLASS_USAGE, "changes.snapshot",
                         "invalid base snapshot '%s' (want xmin:xmax:xip,...)", o->base_snapshot);
            return NULL;
        }
    }
    if (o->expect_sha256 && *o->expect_sha256) p->expect = strdup(o->expect_sha256);
    if (r->stopped) p->stopped = true;
    rt_sink_init(k, &changes_replay_sink_ops, p);
    return k;
}
