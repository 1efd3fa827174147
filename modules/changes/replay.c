/*
 * Replay: applies change-archive segments (the SQL pgoutput.c writes) to a database.
 *
 * Speed comes from fewer round trips and less parsing, not from cutting corners: a segment is
 * one server transaction (so each archived transaction is applied whole or not at all, and a
 * segment whose bytes do not match its signed manifest applies nothing). Statements go through
 * libpq's pipeline mode as prepared statements: each line's quoted literals become parameters
 * ("UPDATE public.t SET a = $1 WHERE id = $2"), so a shape is parsed and planned once per
 * connection and then only bound and executed; the pipeline is synced (one round trip) every
 * PIPE_MAX queries or PIPE_BYTES of parameters. Short runs of inserts into one table become
 * executions of a prepared INSERT; runs of SHORT_RUN_ROWS or more stream through one COPY,
 * merged across consecutive archived transactions (COPY leaves pipeline mode for its duration).
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

/* Prepared statements of this connection, by shape (open addressing, PREP_SLOTS entries; past
 * PREP_MAX shapes, statements go unnamed). Named "clubio_rN", N = the shape's number. */
#define PREP_SLOTS 8192
#define PREP_MAX   4096

typedef struct Prep {
    char *shape;
    uint32_t hash;
    int number;
} Prep;

struct ChgReplayer {
    atomic_int refs;
    PGconn *conn;
    char what[256];
    Prep *prep;      /* PREP_SLOTS entries, allocated on first use */
    int nprep;       /* shapes prepared (or being prepared) */
    bool prep_dirty; /* a pipeline failed: the server may lack some of them; start again */
    bool broken;     /* a failed segment could not be rolled back: the connection is unusable */
    bool replica;    /* session_replication_role = replica is set: the target's triggers sleep */
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
    r->replica = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!r->replica)
        rt_warn("replay: cannot set session_replication_role (not a superuser?): triggers on %s "
                "will fire during the replay",
                r->what);
    PQclear(res);
    return r;
}

static void prep_clear(ChgReplayer *r)
{
    if (r->prep)
        for (int i = 0; i < PREP_SLOTS; i++) free(r->prep[i].shape);
    free(r->prep);
    r->prep = NULL;
    r->nprep = 0;
}

void chg_replayer_release(ChgReplayer *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    if (r->conn) PQfinish(r->conn);
    prep_clear(r);
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

/* A sync (one round trip) every PIPE_MAX queries or PIPE_BYTES of values: the server's answers
 * to them (some 30 bytes each) stay well inside the socket buffers, so neither side blocks. */
#define PIPE_MAX   1000
#define PIPE_BYTES (1u << 20)

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
    /* the pipeline */
    bool piped;
    int pending;                          /* queries sent since the last sync */
    const char *pend_shape[PIPE_MAX + 2]; /* their prepared shapes (NULL: unnamed), for messages */
    bool pend_row[PIPE_MAX + 2];          /* an archived row change: must touch exactly one row */
    size_t pending_bytes;
    SBuf shape, vals; /* one statement: its shape, its parameter values (NUL-separated) */
    SBuf nulls;       /* one byte a value: 1 when it is NULL (rows of a run of inserts) */
    SBuf run_shape;   /* the run's INSERT ... VALUES ($1, ...) */
    int run_fields;
    const char **vptr;
    int vcap;
    /* the run of inserts under way */
    char *copy_header; /* "COPY ... FROM stdin;" */
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
    snprintf(w, sizeof w, "replay into %s failed%s%s", p->r->what, *what ? " " : "", what);
    return pgdump_conn_error(p->r->conn, err, "changes.replay", w);
}

static int nomem(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
}

static int malformed(Rp *p, RtError *err, const char *what)
{
    (void)p;
    rt_error_set(err, RT_CLASS_VERIFY, "verify.segment-malformed",
                 "the segment is not a whole change-archive segment: %s", what);
    rt_error_hint(err, "verify the chain with `clubio-dr run verify-export --changes`");
    return RT_ERR;
}

/* ---- the pipeline ----------------------------------------------------------------------- */

/* The shape of the at-th query since the last sync, for messages (NULL when unnamed); a cached
 * shape stays put until prep_clear, which runs only outside a pipeline. */
static const char *shape_of(const Rp *p, int at)
{
    return at < p->pending ? p->pend_shape[at] : NULL;
}

/* Sends a sync and reads every result up to it; the first error is the pipeline's error. */
static int pl_sync(Rp *p, RtError *err)
{
    if (!p->piped || !p->pending) return RT_OK;
    PGconn *c = p->r->conn;
    if (PQpipelineSync(c) != 1) return server_error(p, err, "sending a pipeline sync");
    int rc = RT_OK, at = 0;
    PgWait w = {0};
    for (;;) {
        if (!pgdump_wait_result(c, &w) && w.cancelled) {
            p->r->prep_dirty = true;
            return rt_cancel_error(err);
        }
        if (PQstatus(c) == CONNECTION_BAD) {
            p->r->prep_dirty = true;
            return rc == RT_OK ? server_error(p, err, "") : rc;
        }
        PGresult *res = PQgetResult(c);
        if (!res) {
            at++; /* the end of one query's results */
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            break;
        }
        if (st == PGRES_FATAL_ERROR && rc == RT_OK && !w.cancelled) {
            const char *shape = shape_of(p, at);
            char line[400], w2[600];
            snprintf(line, sizeof line, "%s", PQresultErrorMessage(res));
            line[strcspn(line, "\n")] = 0;
            snprintf(w2, sizeof w2, "at %.160s%s: %s", shape ? shape : "a statement",
                     shape && strlen(shape) > 160 ? "..." : "", line);
            rc = rt_error_set(err, RT_CLASS_FAILURE, "changes.replay", "replay into %s failed %s",
                              p->r->what, w2);
            p->r->prep_dirty = true;
        } else if (st == PGRES_COMMAND_OK && rc == RT_OK && at < p->pending && p->pend_row[at] &&
                   strcmp(PQcmdTuples(res), "1") != 0) {
            /* An archived UPDATE or DELETE names one row by its replica identity: finding none
             * (or several) means the target does not hold what the source held then. */
            const char *shape = shape_of(p, at);
            rc = rt_error_set(err, RT_CLASS_VERIFY, "verify.replay-diverged",
                              "replay into %s: an archived row change found %s rows instead of "
                              "1 (%.160s%s): the target does not hold the rows the archive changes",
                              p->r->what, PQcmdTuples(res), shape ? shape : "a statement",
                              shape && strlen(shape) > 160 ? "..." : "");
            rt_error_hint(err, "%s",
                          p->r->replica ? "nothing of this segment was applied; restore again into "
                                          "an empty database, and verify the chain "
                                          "(verify-export --changes)"
                                        : "nothing of this segment was applied; triggers on the "
                                          "target may have changed rows (session_replication_role "
                                          "could not be set): restore as a superuser");
        }
        PQclear(res);
    }
    p->pending = 0;
    p->pending_bytes = 0;
    if (w.cancelled) { /* the server's "canceling statement" is our cancel, not its failure */
        p->r->prep_dirty = true;
        return rt_cancel_error(err);
    }
    return rc;
}

/* Ends pipeline mode (after a sync), for COPY, BEGIN and COMMIT. */
static int pl_leave(Rp *p, RtError *err)
{
    if (!p->piped) return RT_OK;
    int rc = pl_sync(p, err);
    if (PQexitPipelineMode(p->r->conn) != 1 && rc == RT_OK)
        rc = server_error(p, err, "leaving pipeline mode");
    p->piped = false;
    return rc;
}

static uint32_t shape_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The prepared statement for `shape`: *fresh when it must be prepared now, NULL when the cache is
 * full (the statement goes unnamed). */
static const Prep *prep_find(ChgReplayer *r, const char *shape, bool *fresh)
{
    *fresh = false;
    if (!r->prep && !(r->prep = calloc(PREP_SLOTS, sizeof *r->prep))) return NULL;
    uint32_t h = shape_hash(shape);
    for (uint32_t i = h & (PREP_SLOTS - 1);; i = (i + 1) & (PREP_SLOTS - 1)) {
        Prep *e = &r->prep[i];
        if (!e->shape) {
            if (r->nprep >= PREP_MAX || !(e->shape = strdup(shape))) return NULL;
            e->hash = h;
            e->number = r->nprep++;
            *fresh = true;
            return e;
        }
        if (e->hash == h && !strcmp(e->shape, shape)) return e;
    }
}

/* Queues one statement (its shape and text parameters; NULL = SQL NULL) in the pipeline. */
static int pl_send(Rp *p, const char *shape, int nparams, const char *const *vals, bool row,
                   RtError *err)
{
    PGconn *c = p->r->conn;
    if (!p->piped) {
        if (p->r->prep_dirty) { /* statements of a failed pipeline may or may not exist */
            PGresult *res = PQexec(c, "DEALLOCATE ALL");
            PQclear(res);
            prep_clear(p->r);
            p->r->prep_dirty = false;
        }
        if (PQenterPipelineMode(c) != 1) return server_error(p, err, "entering pipeline mode");
        p->piped = true;
    }
    bool fresh = false;
    const Prep *e = nparams ? prep_find(p->r, shape, &fresh) : NULL;
    char name[24];
    snprintf(name, sizeof name, "clubio_r%d", e ? e->number : -1);
    if (fresh) {
        if (PQsendPrepare(c, name, shape, nparams, NULL) != 1)
            return server_error(p, err, "sending a statement");
        p->pend_row[p->pending] = false;
        p->pend_shape[p->pending++] = e->shape;
    }
    int ok = e ? PQsendQueryPrepared(c, name, nparams, vals, NULL, NULL, 0)
               : PQsendQueryParams(c, shape, nparams, NULL, vals, NULL, NULL, 0);
    if (ok != 1) return server_error(p, err, "sending a statement");
    p->pend_row[p->pending] = row;
    p->pend_shape[p->pending++] = e ? e->shape : NULL;
    for (int i = 0; i < nparams; i++)
        if (vals[i]) p->pending_bytes += strlen(vals[i]);
    if (!e) p->pending_bytes += strlen(shape);
    if (p->pending >= PIPE_MAX || p->pending_bytes >= PIPE_BYTES) return pl_sync(p, err);
    return RT_OK;
}

/* Points p->vptr at the nparams NUL-separated values in p->vals; is_null (or NULL) marks the
 * values that are SQL NULL. */
static const char *const *value_pointers(Rp *p, int nparams, const char *is_null)
{
    if (nparams > p->vcap) {
        int nc = nparams < 64 ? 64 : nparams;
        const char **np = realloc(p->vptr, (size_t)nc * sizeof *np);
        if (!np) return NULL;
        p->vptr = np;
        p->vcap = nc;
    }
    const char *v = p->vals.p;
    for (int i = 0; i < nparams; i++) {
        p->vptr[i] = is_null && is_null[i] ? NULL : v;
        v += strlen(v) + 1;
    }
    return p->vptr;
}

static bool ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '$' || (unsigned char)c >= 0x80;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The byte a backslash escape stands for; *s points just after the backslash (*s < end) and moves
 * past the escape. COPY text (copy) and E'' literals read the same letters (\b \f \n \r \t),
 * octal \ooo and hex \xhh, any other character standing for itself; COPY also reads \v. -1 for
 * a NUL byte (not valid text); in an E'' literal, -2 for what only the server reads here (\u,
 * \U, \x without a hex digit). */
static int unescape(const char **s, const char *end, bool copy)
{
    char x = *(*s)++;
    int v;
    switch (x) {
    case 'b':
        v = '\b';
        break;
    case 'f':
        v = '\f';
        break;
    case 'n':
        v = '\n';
        break;
    case 'r':
        v = '\r';
        break;
    case 't':
        v = '\t';
        break;
    case 'v':
        v = copy ? '\v' : 'v';
        break;
    case 'u':
    case 'U':
        if (!copy) return -2;
        v = x;
        break;
    case 'x':
        if (*s < end && hex_digit(**s) >= 0) {
            v = hex_digit(*(*s)++);
            if (*s < end && hex_digit(**s) >= 0) v = v * 16 + hex_digit(*(*s)++);
        } else if (!copy) {
            return -2;
        } else {
            v = 'x';
        }
        break;
    default:
        v = (unsigned char)x;
        if (x >= '0' && x <= '7') {
            v = x - '0';
            for (int k = 0; k < 2 && *s < end && **s >= '0' && **s <= '7'; k++)
                v = v * 8 + (*(*s)++ - '0');
        }
    }
    return (v & 0xff) ? v & 0xff : -1;
}

/* One statement line as pgoutput.c writes it -> its shape (each '...' or E'...' literal
 * replaced by $n) and the literals' values in p->vals. false when the line is not of that form
 * (an unterminated literal, an escape this does not read, a NUL byte): it then goes as it is. */
static bool parametrize(Rp *p, const char *s, size_t len, int *nparams)
{
    p->shape.len = 0;
    p->vals.len = 0;
    int n = 0;
    size_t i = 0;
    while (i < len) {
        char ch = s[i];
        bool prev_ident = i > 0 && ident_char(s[i - 1]);
        if (ch == '"') { /* a quoted identifier, copied whole */
            size_t j = i + 1;
            for (; j < len; j++)
                if (s[j] == '"') {
                    if (j + 1 < len && s[j + 1] == '"')
                        j++;
                    else
                        break;
                }
            if (j >= len) return false;
            sb_addn(&p->shape, s + i, j + 1 - i);
            i = j + 1;
            continue;
        }
        bool e = (ch == 'E' || ch == 'e') && i + 1 < len && s[i + 1] == '\'' && !prev_ident;
        if (!(ch == '\'' && !prev_ident) && !e) {
            sb_addc(&p->shape, ch);
            i++;
            continue;
        }
        size_t j = i + (e ? 2 : 1);
        for (;;) {
            if (j >= len) return false;
            char c = s[j];
            if (c == '\'') {
                if (j + 1 < len && s[j + 1] == '\'') {
                    sb_addc(&p->vals, '\'');
                    j += 2;
                    continue;
                }
                break;
            }
            if (c == '\\' && e) {
                if (j + 1 >= len) return false;
                const char *at = s + j + 1;
                int v = unescape(&at, s + len, false);
                if (v < 0) return false;
                sb_addc(&p->vals, (char)v);
                j = (size_t)(at - s);
                continue;
            }
            if (!c) return false;
            sb_addc(&p->vals, c);
            j++;
        }
        sb_addc(&p->vals, '\0'); /* the separator */
        n++;
        if (n > 65535) return false;
        sb_addf(&p->shape, "$%d", n);
        i = j + 1;
    }
    *nparams = n;
    return !p->shape.oom && !p->vals.oom;
}

/* ---- statements and runs of inserts ----------------------------------------------------- */

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

static int ensure_begun(Rp *p, RtError *err)
{
    if (p->begun) return RT_OK;
    p->begun = true;
    return pl_send(p, "BEGIN", 0, NULL, false, err);
}

/* A run of inserts into one table (COPY blocks of consecutive transactions with the same header)
 * is held back until it ends or grows: a short run goes into the pipeline as executions of one
 * prepared INSERT, a long one streams through a real COPY. */
#define SHORT_RUN_ROWS  64
#define SHORT_RUN_BYTES (64 * 1024)

static int open_copy(Rp *p, RtError *err)
{
    if (pl_leave(p, err) != RT_OK) return RT_ERR;
    PGresult *res = PQexec(p->r->conn, p->copy_header);
    int st = PQresultStatus(res);
    PQclear(res);
    if (st != PGRES_COPY_IN) return server_error(p, err, p->copy_header);
    p->copy_open = true;
    return flush_copy_data(p, err);
}

/* One COPY text row -> its values in p->vals (COPY's backslash escapes undone) and p->nulls;
 * the number of fields, or -1 when a value would hold a NUL byte (not valid text). */
static int copy_row_values(Rp *p, const char *row, size_t len)
{
    p->vals.len = 0;
    p->nulls.len = 0;
    int n = 0;
    const char *f = row, *end = row + len;
    for (;;) {
        const char *tab = memchr(f, '\t', (size_t)(end - f));
        const char *fe = tab ? tab : end;
        n++;
        if (fe - f == 2 && f[0] == '\\' && f[1] == 'N') {
            sb_addc(&p->nulls, 1);
        } else {
            sb_addc(&p->nulls, 0);
            const char *c = f;
            while (c < fe) {
                if (*c != '\\' || c + 1 >= fe) {
                    sb_addc(&p->vals, *c++);
                    continue;
                }
                c++;
                int v = unescape(&c, fe, true);
                if (v < 0) return -1;
                sb_addc(&p->vals, (char)v);
            }
        }
        sb_addc(&p->vals, '\0');
        if (!tab) break;
        f = tab + 1;
    }
    return n;
}

/* The short run in copybuf -> executions of INSERT INTO <table> (<columns>) VALUES ($1, ...). */
static int rows_to_pipeline(Rp *p, RtError *err)
{
    const char *h = p->copy_header;
    size_t hl = strlen(h);
    const char *q = p->copybuf.p, *end = p->copybuf.p + p->copybuf.len;
    while (q < end) {
        const char *eol = memchr(q, '\n', (size_t)(end - q));
        if (!eol) eol = end;
        int n = copy_row_values(p, q, (size_t)(eol - q));
        if (n < 0) return malformed(p, err, "a NUL byte in a COPY value");
        if (n != p->run_fields) {
            p->run_shape.len = 0;
            sb_add(&p->run_shape, "INSERT INTO ");
            sb_addn(&p->run_shape, h + 5, hl - 5 - 12); /* COPY <table> (<columns>) FROM stdin; */
            sb_add(&p->run_shape, " VALUES (");
            for (int i = 1; i <= n; i++) sb_addf(&p->run_shape, i > 1 ? ", $%d" : "$%d", i);
            sb_addc(&p->run_shape, ')');
            p->run_fields = n;
        }
        const char *const *v = value_pointers(p, n, p->nulls.p);
        if (!v || p->vals.oom || p->nulls.oom || p->run_shape.oom) return nomem(err);
        if (pl_send(p, p->run_shape.p, n, v, false, err) != RT_OK) return RT_ERR;
        q = eol + 1;
    }
    p->copybuf.len = 0;
    return RT_OK;
}

static int end_run(Rp *p, RtError *err)
{
    if (!p->copy_header) return RT_OK;
    int rc = RT_OK;
    if (p->copy_open)
        rc = end_copy(p, err);
    else if (p->run_rows > 0)
        rc = rows_to_pipeline(p, err);
    free(p->copy_header);
    p->copy_header = NULL;
    p->run_rows = 0;
    p->run_fields = -1;
    return rc;
}

static int start_copy(Rp *p, const char *header, RtError *err)
{
    if (p->copy_header && !strcmp(p->copy_header, header)) return RT_OK; /* merge the run */
    if (end_run(p, err) != RT_OK) return RT_ERR;
    p->copy_header = strdup(header);
    if (!p->copy_header) return nomem(err);
    return RT_OK;
}

static int add_row(Rp *p, const char *s, size_t len, RtError *err)
{
    sb_addn(&p->copybuf, s, len);
    sb_addc(&p->copybuf, '\n');
    if (p->copybuf.oom) return nomem(err);
    p->run_rows++;
    if (p->copy_open) return p->copybuf.len >= 256 * 1024 ? flush_copy_data(p, err) : RT_OK;
    if (p->run_rows >= SHORT_RUN_ROWS || p->copybuf.len >= SHORT_RUN_BYTES)
        return open_copy(p, err);
    return RT_OK;
}

/* A statement line of an included transaction: prepared when its literals can be lifted out. */
static int statement(Rp *p, const char *s, size_t len, RtError *err)
{
    int n = 0;
    bool row = !strncmp(s, "UPDATE ", 7) || !strncmp(s, "DELETE FROM ", 12);
    if (parametrize(p, s, len, &n)) {
        const char *const *v = value_pointers(p, n, NULL);
        if (!v) return nomem(err);
        return pl_send(p, p->shape.p, n, v, row, err);
    }
    if (p->shape.oom || p->vals.oom) return nomem(err);
    return pl_send(p, s, 0, NULL, row, err);
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
        return statement(p, s, len, err);
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
    RtError e;
    rt_error_init(&e);
    if (pl_leave(p, &e) != RT_OK && PQstatus(p->r->conn) != CONNECTION_OK) p->r->broken = true;
    if (p->begun && !p->r->broken) {
        PGresult *res = PQexec(p->r->conn, "ROLLBACK");
        if (PQresultStatus(res) != PGRES_COMMAND_OK) p->r->broken = true;
        PQclear(res);
    }
    p->begun = false;
}

static int rp_finish(void *self, RtError *err)
{
    Rp *p = self;
    if (p->line.len) return malformed(p, err, "it ends inside a line");
    if (p->state != S_OUT) return malformed(p, err, "it ends inside a transaction");
    /* every statement's outcome is known (errors, row counts) before COMMIT is sent */
    if (end_run(p, err) != RT_OK || pl_sync(p, err) != RT_OK) return RT_ERR;
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
        if (pl_send(p, "COMMIT", 0, NULL, false, err) != RT_OK || pl_leave(p, err) != RT_OK)
            return RT_ERR;
        p->begun = false;
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
    free(p->shape.p);
    free(p->vals.p);
    free(p->nulls.p);
    free(p->run_shape.p);
    free(p->vptr);
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
    if (r->broken) {
        EVP_MD_CTX_free(p->md);
        free(p);
        free(k);
        rt_error_set(err, RT_CLASS_FAILURE, "changes.replay",
                     "replay into %s: the connection was left unusable by an earlier failure",
                     r->what);
        rt_error_hint(err, "open a new replayer (changes.replayer{url = ...})");
        return NULL;
    }
    atomic_fetch_add(&r->refs, 1);
    p->r = r;
    p->o = *o;
    p->run_fields = -1;
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
