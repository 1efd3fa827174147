/*
 * Capture: a logical replication connection (replication=database) streaming pgoutput, and the
 * segment source that turns its transactions into SQL (pgoutput.c) for a pipe.
 *
 * The slot's flush position moves only when chg_capture_confirm() is called, which the archiver
 * does after a segment and its manifest are in S3; until then a crash resends the transactions.
 * The one exception is safe: on a keepalive, when every transaction received so far is
 * confirmed, the server's WAL end is confirmed too (WAL of other databases, or of tables not
 * published, would otherwise be held back while the database is quiet).
 *
 * The stream is read without blocking (PQgetCopyData async + poll with a 200 ms timeout), so
 * Ctrl-C/SIGTERM (rt_cancelled()) is seen promptly.
 */
#include "changes.h"
#include "io/cancel.h"
#include "log.h"
#include "modules/pgdump/pgdump.h"
#include "runtime/sbuf.h"
#include "timestamp.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PG_EPOCH_UNIX 946684800LL
#define STATUS_EVERY  10.0 /* seconds between unsolicited standby status updates */

struct ChgCapture {
    PGconn *conn;
    PGconn *seqconn; /* a normal connection for sequence values */
    char *url, *slot, *publication;
    char what[256];
    ChgDecoder *dec;
    bool streaming;
    bool broken; /* a segment ended early: what it had decoded is gone, restart from the slot */
    uint64_t received; /* highest WAL position received */
    uint64_t flushed;  /* confirmed to the server */
    uint64_t last_commit_end;
    double last_status;
};

static int64_t now_pg_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((int64_t)ts.tv_sec - PG_EPOCH_UNIX) * 1000000 + ts.tv_nsec / 1000;
}

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

void chg_capture_free(ChgCapture *c)
{
    if (!c) return;
    if (c->conn) PQfinish(c->conn);
    if (c->seqconn) PQfinish(c->seqconn);
    if (c->url) {
        memset(c->url, 0, strlen(c->url));
        free(c->url);
    }
    free(c->slot);
    free(c->publication);
    chg_decoder_free(c->dec);
    free(c);
}

ChgCapture *chg_capture_open(const char *url, const char *slot, const char *publication,
                             RtError *err)
{
    ChgCapture *c = calloc(1, sizeof *c);
    if (!c || !(c->dec = chg_decoder_new()) || !(c->url = dupstr(url)) ||
        !(c->slot = dupstr(slot)) || !(c->publication = dupstr(publication))) {
        chg_capture_free(c);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pgdump_describe(url, c->what, sizeof c->what);
    /* replication=database: a walsender that also takes the replication commands */
    SBuf u = {0};
    sb_add(&u, url);
    if (!strncmp(url, "postgres://", 11) || !strncmp(url, "postgresql://", 13))
        sb_add(&u, strchr(url, '?') ? "&replication=database" : "?replication=database");
    else
        sb_add(&u, " replication=database");
    if (u.oom) {
        free(u.p);
        chg_capture_free(c);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    c->conn = pgdump_connect(u.p, "clubio-dr archive-changes", err);
    memset(u.p, 0, u.len);
    free(u.p);
    if (!c->conn) {
        rt_error_hint(err, "the archiver's role needs the REPLICATION attribute (on Neon: enable "
                           "logical replication on the project)");
        chg_capture_free(c);
        return NULL;
    }
    return c;
}

static int conn_fail(ChgCapture *c, RtError *err, const char *what)
{
    char w[400];
    snprintf(w, sizeof w, "%s (%s)", what, c->what);
    return pgdump_conn_error(c->conn, err, "changes.replication", w);
}

int chg_capture_create_slot(ChgCapture *c, ChgSlotInfo *info, RtError *err)
{
    char *slot = PQescapeIdentifier(c->conn, c->slot, strlen(c->slot));
    if (!slot) return conn_fail(c, err, "invalid slot name");
    char sql[300];
    if (PQserverVersion(c->conn) >= 150000)
        snprintf(sql, sizeof sql, "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'export')",
                 slot);
    else
        snprintf(sql, sizeof sql, "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput EXPORT_SNAPSHOT",
                 slot);
    PQfreemem(slot);
    PGresult *r = PQexec(c->conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 3) {
        PQclear(r);
        conn_fail(c, err, "cannot create the replication slot");
        rt_error_hint(err, "check max_replication_slots and wal_level = logical on the server");
        return RT_ERR;
    }
    snprintf(info->consistent_point, sizeof info->consistent_point, "%s", PQgetvalue(r, 0, 1));
    snprintf(info->snapshot, sizeof info->snapshot, "%s", PQgetvalue(r, 0, 2));
    PQclear(r);
    return RT_OK;
}

int chg_capture_start(ChgCapture *c, uint64_t skip_through, RtError *err)
{
    char *slot = PQescapeIdentifier(c->conn, c->slot, strlen(c->slot));
    char *pub = PQescapeLiteral(c->conn, c->publication, strlen(c->publication));
    if (!slot || !pub) {
        if (slot) PQfreemem(slot);
        if (pub) PQfreemem(pub);
        return conn_fail(c, err, "invalid slot or publication name");
    }
    SBuf q = {0};
    sb_addf(&q, "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names %s)",
            slot, pub);
    PQfreemem(slot);
    PQfreemem(pub);
    if (q.oom) {
        free(q.p);
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    PGresult *r = PQexec(c->conn, q.p);
    free(q.p);
    if (PQresultStatus(r) != PGRES_COPY_BOTH) {
        PQclear(r);
        conn_fail(c, err, "cannot start replication from the slot");
        const char *m = PQerrorMessage(c->conn);
        if (strstr(m, "does not exist"))
            rt_error_hint(err, "run archive-changes once without --status to create the slot and "
                               "publication, or check CHANGES_SLOT / CHANGES_PUBLICATION");
        else
            rt_error_hint(err, "is another archiver using the slot? (one archiver per slot)");
        return RT_ERR;
    }
    PQclear(r);
    c->streaming = true;
    chg_decoder_skip_through(c->dec, skip_through);
    c->last_status = rt_monotonic();
    return RT_OK;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static int send_status(ChgCapture *c, RtError *err)
{
    uint8_t m[34];
    m[0] = 'r';
    put64(m + 1, c->received > c->flushed ? c->received : c->flushed);
    put64(m + 9, c->flushed);
    put64(m + 17, c->flushed);
    put64(m + 25, (uint64_t)now_pg_us());
    m[33] = 0;
    if (PQputCopyData(c->conn, (const char *)m, sizeof m) != 1 || PQflush(c->conn) < 0)
        return conn_fail(c, err, "cannot send the standby status");
    c->last_status = rt_monotonic();
    return RT_OK;
}

int chg_capture_confirm(ChgCapture *c, uint64_t lsn, RtError *err)
{
    if (lsn > c->flushed) c->flushed = lsn;
    if (!c->streaming) return RT_OK;
    return send_status(c, err);
}

/* Handles one CopyData message from the server. */
static int handle(ChgCapture *c, const uint8_t *m, size_t len, RtError *err)
{
    if (len >= 25 && m[0] == 'w') {
        uint64_t start = get64(m + 1);
        if (start > c->received) c->received = start;
        int rc = chg_decode(c->dec, m + 25, len - 25, err);
        const ChgStats *st = chg_decoder_stats(c->dec);
        if (st->last_end_lsn > c->last_commit_end) c->last_commit_end = st->last_end_lsn;
        return rc;
    }
    if (len >= 18 && m[0] == 'k') {
        uint64_t wal_end = get64(m + 1);
        if (wal_end > c->received) c->received = wal_end;
        /* nothing received is waiting to be archived: the WAL end can be confirmed */
        if (!chg_decoder_in_txn(c->dec) && c->last_commit_end <= c->flushed && wal_end > c->flushed)
            c->flushed = wal_end;
        if (m[17]) return send_status(c, err);
        return RT_OK;
    }
    return rt_error_set(err, RT_CLASS_FAILURE, "changes.protocol",
                        "unexpected replication message '%c' from %s", len ? m[0] : '?', c->what);
}

/* Reads and handles at most one message, waiting up to timeout seconds. *got = true if one came. */
static int step(ChgCapture *c, double timeout, bool *got, RtError *err)
{
    *got = false;
    if (c->broken)
        return rt_error_set(err, RT_CLASS_FAILURE, "changes.state",
                            "a segment failed on this replication connection; reconnect");
    if (!c->streaming)
        return rt_error_set(err, RT_CLASS_USAGE, "changes.state", "replication is not started");
    if (rt_cancelled()) return rt_cancel_error(err);
    if (rt_monotonic() - c->last_status >= STATUS_EVERY && send_status(c, err) != RT_OK)
        return RT_ERR;
    char *buf = NULL;
    int n = PQgetCopyData(c->conn, &buf, 1);
    if (n == 0) {
        struct pollfd p = {.fd = PQsocket(c->conn), .events = POLLIN};
        int ms = (int)(timeout * 1000);
        if (ms > 200) ms = 200;
        if (ms < 0) ms = 0;
        if (poll(&p, 1, ms) < 0 && !rt_cancelled()) return RT_OK; /* EINTR: look again */
        if (!PQconsumeInput(c->conn)) {
            c->streaming = false;
            conn_fail(c, err, "the replication connection failed");
            err->retryable = true;
            return RT_ERR;
        }
        n = PQgetCopyData(c->conn, &buf, 1);
        if (n == 0) return RT_OK;
    }
    if (n == -1) {
        c->streaming = false;
        PGresult *r = PQgetResult(c->conn);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (ok)
            rt_error_set(err, RT_CLASS_FAILURE, "changes.ended",
                         "the server ended replication (%s)", c->what);
        else
            conn_fail(c, err, "replication ended");
        err->retryable = true;
        return RT_ERR;
    }
    if (n < 0) {
        c->streaming = false;
        conn_fail(c, err, "the replication connection failed");
        err->retryable = true;
        return RT_ERR;
    }
    int rc = handle(c, (const uint8_t *)buf, (size_t)n, err);
    PQfreemem(buf);
    *got = true;
    return rc;
}

int chg_capture_wait(ChgCapture *c, double seconds, uint64_t *lsn, RtError *err)
{
    *lsn = 0;
    double end = rt_monotonic() + seconds;
    for (;;) {
        size_t pending;
        chg_decoder_output(c->dec, &pending);
        if (chg_decoder_in_txn(c->dec) && pending > 0) {
            /* the Begin of a transaction to archive is in: its header carries the LSN */
            const uint8_t *o = chg_decoder_output(c->dec, &pending);
            const char *p = memmem(o, pending, "commit_lsn=", 11);
            char tmp[24] = {0};
            if (p) {
                size_t k = strcspn(p + 11, " \n");
                if (k < sizeof tmp) memcpy(tmp, p + 11, k);
            }
            if (!chg_lsn_parse(tmp, lsn)) *lsn = 1;
            return RT_OK;
        }
        double left = end - rt_monotonic();
        if (left <= 0) return RT_OK;
        bool got;
        if (step(c, left, &got, err) != RT_OK) return RT_ERR;
    }
}

/* ---- the segment source ----------------------------------------------------------------- */

typedef struct Seg {
    ChgCapture *c;
    double deadline;
    int64_t max_bytes;
    char *seq_url;
    bool trailer, eof;
    RtResults *seqs; /* name -> value */
} Seg;

static int read_sequences(Seg *s, RtError *err)
{
    ChgCapture *c = s->c;
    if (!s->seq_url) return RT_OK;
    if (c->seqconn && PQstatus(c->seqconn) != CONNECTION_OK) {
        PQfinish(c->seqconn);
        c->seqconn = NULL;
    }
    if (!c->seqconn) {
        c->seqconn = pgdump_connect(s->seq_url, "clubio-dr archive-changes", err);
        if (!c->seqconn) return RT_ERR;
    }
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(
        c->seqconn,
        "SELECT pg_catalog.format('%I.%I', schemaname, sequencename), last_value "
        "FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL ORDER BY 1",
        0, NULL, &cancelled);
    if (cancelled) {
        PQclear(r);
        return rt_cancel_error(err);
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return pgdump_conn_error(c->seqconn, err, "changes.sequences",
                                 "cannot read the sequences' values");
    }
    chg_decoder_write(c->dec, "-- sequences at the cut\n");
    for (int i = 0; i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0), *val = PQgetvalue(r, i, 1);
        SBuf b = {0};
        sb_add(&b, "SELECT pg_catalog.setval('");
        for (const char *p = name; *p; p++) {
            if (*p == '\'') sb_addc(&b, '\'');
            sb_addc(&b, *p);
        }
        sb_addf(&b, "', %s, true);\n", val);
        if (b.oom) {
            free(b.p);
            PQclear(r);
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        }
        chg_decoder_write(c->dec, b.p);
        free(b.p);
        rt_results_int(s->seqs, name, strtoll(val, NULL, 10));
    }
    PQclear(r);
    return RT_OK;
}

static int seg_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    Seg *s = self;
    ChgCapture *c = s->c;
    *got = 0;
    *eof = false;
    for (;;) {
        size_t n;
        const uint8_t *o = chg_decoder_output(c->dec, &n);
        if (n > 0) {
            if (n > cap) n = cap;
            memcpy(buf, o, n);
            chg_decoder_take(c->dec, n);
            *got = n;
            return RT_OK;
        }
        if (s->trailer) {
            s->eof = true;
            *eof = true;
            return RT_OK;
        }
        const ChgStats *st = chg_decoder_stats(c->dec);
        double left = s->deadline - rt_monotonic();
        if (!chg_decoder_in_txn(c->dec) && st->transactions > 0 &&
            (left <= 0 || st->bytes >= s->max_bytes)) {
            if (read_sequences(s, err) != RT_OK) return RT_ERR;
            s->trailer = true;
            continue;
        }
        bool g;
        if (step(c, left > 0 ? left : 0.2, &g, err) != RT_OK) return RT_ERR;
    }
}

static void seg_results(void *self, RtResults *res)
{
    Seg *s = self;
    const ChgStats *st = chg_decoder_stats(s->c->dec);
    char l[24], t[40];
    chg_lsn_format(st->first_lsn, l);
    rt_results_str(res, "first_lsn", l);
    chg_lsn_format(st->last_lsn, l);
    rt_results_str(res, "last_lsn", l);
    chg_lsn_format(st->last_end_lsn, l);
    rt_results_str(res, "end_lsn", l);
    chg_time_format(st->first_time, t);
    rt_results_str(res, "first_time", t);
    chg_time_format(st->last_time, t);
    rt_results_str(res, "last_time", t);
    rt_results_int(res, "transactions", st->transactions);
    rt_results_int(res, "changes", st->changes);
    rt_results_int(res, "skipped", st->skipped);
    rt_results_int(res, "bytes", st->bytes);
    chg_decoder_results(s->c->dec, res);
    RtResults *seqs = rt_results_table(res, "sequences");
    for (size_t i = 0; i < rt_results_count(s->seqs); i++) {
        const char *k;
        RtValueType ty;
        const RtResults *v = rt_results_at(s->seqs, i, &k, &ty);
        rt_results_int(seqs, k, rt_results_as_int(v));
    }
}

static void seg_destroy(void *self)
{
    Seg *s = self;
    if (!s->eof && s->c) s->c->broken = true;
    if (s->seq_url) {
        memset(s->seq_url, 0, strlen(s->seq_url));
        free(s->seq_url);
    }
    rt_results_free(s->seqs);
    free(s);
}

static const RtSourceOps changes_segment_source_ops = {
    .name = "changes.segment", .read = seg_read, .results = seg_results, .destroy = seg_destroy};

RtSource *chg_segment_source(ChgCapture *c, double interval, int64_t max_bytes,
                             const char *sequences_url, RtError *err)
{
    Seg *s = calloc(1, sizeof *s);
    RtSource *src = rt_source_new();
    if (!s || !src || !(s->seqs = rt_results_new()) ||
        (sequences_url && !(s->seq_url = strdup(sequences_url)))) {
        if (s) seg_destroy(s);
        free(src);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    s->c = c;
    s->deadline = rt_monotonic() + interval;
    s->max_bytes = max_bytes > 0 ? max_bytes : ((int64_t)64 << 20);
    chg_decoder_reset_stats(c->dec);
    rt_source_init(src, &changes_segment_source_ops, s);
    return src;
}
