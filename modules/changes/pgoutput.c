/*
 * The pgoutput decoder (protocol version 1) and the SQL writer of the change archive; see
 * changes.h for the SQL it writes. Message layouts: PostgreSQL's "Logical Replication Message
 * Formats" and src/backend/replication/logical/proto.c.
 */
#include "changes.h"
#include "runtime/sbuf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PG_EPOCH_UNIX 946684800LL

void chg_lsn_format(uint64_t lsn, char out[24])
{
    snprintf(out, 24, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
}

bool chg_lsn_parse(const char *s, uint64_t *lsn)
{
    unsigned hi, lo;
    int n = 0;
    if (!s || sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2 || s[n] != '\0') return false;
    *lsn = ((uint64_t)hi << 32) | lo;
    return true;
}

void chg_time_format(int64_t pg_us, char out[40])
{
    int64_t us = pg_us % 1000000;
    int64_t secs = pg_us / 1000000;
    if (us < 0) {
        us += 1000000;
        secs--;
    }
    time_t t = (time_t)(secs + PG_EPOCH_UNIX);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 40, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
}

bool chg_time_parse(const char *s, int64_t *pg_us)
{
    struct tm tm = {0};
    int n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t us = 0;
    const char *p = s + n;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 6) us = us * 10 + (*p - '0');
        if (digits == 0) return false;
        for (; digits < 6; digits++) us *= 10;
    }
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0) return false;
    *pg_us = ((int64_t)timegm(&tm) - PG_EPOCH_UNIX) * 1000000 + us;
    return true;
}

/* ---- relations -------------------------------------------------------------------------- */

typedef struct Col {
    char *qname; /* quoted */
    bool key;
    uint32_t type;
    int32_t typmod;
} Col;

typedef struct Val {
    char kind; /* 'n' null, 'u' unchanged toast, 't' text */
    const char *data;
    size_t len;
} Val;

typedef struct Rel {
    uint32_t oid;
    char *qname;   /* "schema"."table" */
    char *display; /* schema.table */
    char *signature;
    char replident; /* d, n, f, i */
    int ncols;
    Col *cols;
    int64_t inserts, updates, deletes, truncates;
    bool seen_relation; /* a Relation message in this segment */
    bool no_identity;
} Rel;

struct ChgDecoder {
    Rel *rels;
    int nrels, caprels;
    SBuf out;
    size_t taken;
    bool in_txn, skipping;
    uint64_t skip_through;
    uint64_t cur_lsn;
    int64_t cur_time;
    int64_t cur_changes;
    Rel *copy_rel; /* the open COPY block, if any */
    ChgStats st;
    Val *oldv, *newv; /* the tuples of one message */
};

#define MAXCOLS 1664 /* PostgreSQL's limit on the columns of a table */

ChgDecoder *chg_decoder_new(void)
{
    ChgDecoder *d = calloc(1, sizeof(ChgDecoder));
    if (!d) return NULL;
    d->oldv = calloc(MAXCOLS, sizeof(Val));
    d->newv = calloc(MAXCOLS, sizeof(Val));
    if (!d->oldv || !d->newv) {
        free(d->oldv);
        free(d->newv);
        free(d);
        return NULL;
    }
    return d;
}

static void rel_clear(Rel *r)
{
    free(r->qname);
    free(r->display);
    free(r->signature);
    for (int i = 0; i < r->ncols; i++) free(r->cols[i].qname);
    free(r->cols);
    r->qname = r->display = r->signature = NULL;
    r->cols = NULL;
    r->ncols = 0;
}

void chg_decoder_free(ChgDecoder *d)
{
    if (!d) return;
    for (int i = 0; i < d->nrels; i++) rel_clear(&d->rels[i]);
    free(d->rels);
    free(d->out.p);
    free(d->oldv);
    free(d->newv);
    free(d);
}

void chg_decoder_skip_through(ChgDecoder *d, uint64_t lsn)
{
    d->skip_through = lsn;
}
bool chg_decoder_in_txn(const ChgDecoder *d)
{
    return d->in_txn;
}
const ChgStats *chg_decoder_stats(const ChgDecoder *d)
{
    return &d->st;
}

void chg_decoder_reset_stats(ChgDecoder *d)
{
    memset(&d->st, 0, sizeof d->st);
    for (int i = 0; i < d->nrels; i++) {
        Rel *r = &d->rels[i];
        r->inserts = r->updates = r->deletes = r->truncates = 0;
        r->seen_relation = r->no_identity = false;
    }
}

const uint8_t *chg_decoder_output(ChgDecoder *d, size_t *len)
{
    *len = d->out.len - d->taken;
    return (const uint8_t *)d->out.p + d->taken;
}

void chg_decoder_take(ChgDecoder *d, size_t n)
{
    d->taken += n;
    if (d->taken >= d->out.len) {
        d->taken = d->out.len = 0;
        if (d->out.p) d->out.p[0] = 0;
        if (d->out.cap > (4u << 20)) { /* a big transaction passed: give the memory back */
            free(d->out.p);
            memset(&d->out, 0, sizeof d->out);
        }
    }
}

static void emit(ChgDecoder *d, const char *s, size_t n)
{
    sb_addn(&d->out, s, n);
    d->st.bytes += (int64_t)n;
}
static void emits(ChgDecoder *d, const char *s)
{
    emit(d, s, strlen(s));
}

void chg_decoder_write(ChgDecoder *d, const char *text)
{
    emits(d, text);
}

void chg_decoder_results(const ChgDecoder *d, RtResults *res)
{
    RtResults *tables = rt_results_table(res, "tables");
    RtResults *rels = rt_results_table(res, "relations");
    RtResults *noid = NULL;
    for (int i = 0; i < d->nrels; i++) {
        const Rel *r = &d->rels[i];
        if (!r->display) continue;
        if (r->inserts || r->updates || r->deletes || r->truncates) {
            RtResults *t = rt_results_table(tables, r->display);
            rt_results_int(t, "inserts", r->inserts);
            rt_results_int(t, "updates", r->updates);
            rt_results_int(t, "deletes", r->deletes);
            rt_results_int(t, "truncates", r->truncates);
        }
        if (r->seen_relation) rt_results_str(rels, r->display, r->signature);
        if (r->no_identity) {
            if (!noid) noid = rt_results_array(res, "no_identity");
            rt_results_str(noid, NULL, r->display);
        }
    }
}

/* ---- reading messages ------------------------------------------------------------------- */

typedef struct Rd {
    const uint8_t *p, *end;
    bool bad;
} Rd;

static uint64_t rd_u(Rd *r, int bytes)
{
    if (r->bad || r->end - r->p < bytes) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[i];
    r->p += bytes;
    return v;
}

/* A NUL-terminated string inside the message (pointer into it). */
static const char *rd_str(Rd *r)
{
    if (r->bad) return "";
    const uint8_t *z = memchr(r->p, 0, (size_t)(r->end - r->p));
    if (!z) {
        r->bad = true;
        return "";
    }
    const char *s = (const char *)r->p;
    r->p = z + 1;
    return s;
}

/* TupleData into vals (up to max columns); returns the column count or -1. */
static int rd_tuple(Rd *r, Val *vals, int max)
{
    int n = (int)rd_u(r, 2);
    if (r->bad || n > max) return -1;
    for (int i = 0; i < n; i++) {
        vals[i].kind = (char)rd_u(r, 1);
        vals[i].data = NULL;
        vals[i].len = 0;
        if (vals[i].kind == 't' || vals[i].kind == 'b') {
            uint32_t len = (uint32_t)rd_u(r, 4);
            if (r->bad || (size_t)(r->end - r->p) < len) return -1;
            vals[i].data = (const char *)r->p;
            vals[i].len = len;
            r->p += len;
            if (vals[i].kind == 'b') return -1; /* binary mode is never asked for */
        } else if (vals[i].kind != 'n' && vals[i].kind != 'u') {
            return -1;
        }
    }
    return r->bad ? -1 : n;
}

static char *quote_ident(const char *s)
{
    SBuf b = {0};
    sb_addc(&b, '"');
    for (; *s; s++) {
        if (*s == '"') sb_addc(&b, '"');
        sb_addc(&b, *s);
    }
    sb_addc(&b, '"');
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static Rel *find_rel(ChgDecoder *d, uint32_t oid)
{
    for (int i = 0; i < d->nrels; i++)
        if (d->rels[i].oid == oid) return &d->rels[i];
    return NULL;
}

/* ---- writing SQL ------------------------------------------------------------------------ */

static void emit_literal(ChgDecoder *d, const Val *v)
{
    if (v->kind == 'n') {
        emits(d, "NULL");
        return;
    }
    bool plain = true;
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->data[i];
        if (c == '\\' || c == '\'' || c < 0x20) {
            plain = false;
            break;
        }
    }
    if (plain) {
        emit(d, "'", 1);
        emit(d, v->data, v->len);
        emit(d, "'", 1);
        return;
    }
    emit(d, "E'", 2);
    size_t start = 0;
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->data[i];
        const char *esc = NULL;
        char hex[8];
        if (c == '\\')
            esc = "\\\\";
        else if (c == '\'')
            esc = "\\'";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            snprintf(hex, sizeof hex, "\\x%02X", c);
            esc = hex;
        }
        if (!esc) continue;
        emit(d, v->data + start, i - start);
        emits(d, esc);
        start = i + 1;
    }
    emit(d, v->data + start, v->len - start);
    emit(d, "'", 1);
}

static void emit_copy_value(ChgDecoder *d, const Val *v)
{
    if (v->kind != 't') {
        emit(d, "\\N", 2);
        return;
    }
    size_t start = 0;
    for (size_t i = 0; i < v->len; i++) {
        char c = v->data[i];
        const char *esc = c == '\\'   ? "\\\\"
                          : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r"
                          : c == '\t' ? "\\t"
                                      : NULL;
        if (!esc) continue;
        emit(d, v->data + start, i - start);
        emit(d, esc, 2);
        start = i + 1;
    }
    emit(d, v->data + start, v->len - start);
}

static void close_copy(ChgDecoder *d)
{
    if (d->copy_rel) {
        emits(d, "\\.\n");
        d->copy_rel = NULL;
    }
}

/* WHERE clause from the identity tuple: key columns (key_only) or all columns (FULL). */
static bool emit_where(ChgDecoder *d, Rel *r, const Val *vals, int n, bool key_only)
{
    bool any = false;
    for (int i = 0; i < n && i < r->ncols; i++) {
        if (key_only && !r->cols[i].key) continue;
        if (vals[i].kind == 'u') continue; /* not sent: cannot compare */
        emits(d, any ? " AND " : "");
        emits(d, r->cols[i].qname);
        if (vals[i].kind == 'n') {
            emits(d, " IS NULL");
        } else {
            emits(d, " = ");
            emit_literal(d, &vals[i]);
        }
        any = true;
    }
    return any;
}

static bool has_key(const Rel *r)
{
    for (int i = 0; i < r->ncols; i++)
        if (r->cols[i].key) return true;
    return false;
}

/* "WHERE ..." for UPDATE/DELETE; false (and nothing written) when there is no usable identity. */
static bool where_clause(ChgDecoder *d, Rel *r, char oldkind, const Val *old, int nold,
                         const Val *newv, int nnew)
{
    const Val *vals = oldkind ? old : newv;
    int n = oldkind ? nold : nnew;
    bool full = oldkind == 'O' || (!oldkind && r->replident == 'f');
    if (full) {
        emits(d, " WHERE ctid = (SELECT ctid FROM ");
        emits(d, r->qname);
        emits(d, " WHERE ");
        if (!emit_where(d, r, vals, n, false)) emits(d, "true");
        emits(d, " LIMIT 1)");
        return true;
    }
    if (!has_key(r)) return false;
    emits(d, " WHERE ");
    emit_where(d, r, vals, n, true);
    return true;
}

/* ---- messages --------------------------------------------------------------------------- */

static int bad(RtError *err, const char *what)
{
    return rt_error_set(err, RT_CLASS_FAILURE, "changes.protocol", "pgoutput: malformed %s message",
                        what);
}

static int on_relation(ChgDecoder *d, Rd *r, RtError *err)
{
    uint32_t oid = (uint32_t)rd_u(r, 4);
    const char *nsp = rd_str(r);
    const char *name = rd_str(r);
    char ident = (char)rd_u(r, 1);
    int ncols = (int)rd_u(r, 2);
    if (r->bad || ncols < 0 || ncols > 1664) return bad(err, "relation");
    Rel *rel = find_rel(d, oid);
    if (!rel) {
        if (d->nrels == d->caprels) {
            int nc = d->caprels ? d->caprels * 2 : 16;
            Rel *nr = realloc(d->rels, (size_t)nc * sizeof *nr);
            if (!nr) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
            d->rels = nr;
            d->caprels = nc;
        }
        rel = &d->rels[d->nrels++];
        memset(rel, 0, sizeof *rel);
        rel->oid = oid;
    } else {
        rel_clear(rel);
    }
    if (!*nsp) nsp = "pg_catalog";
    char *qn = quote_ident(nsp), *qr = quote_ident(name);
    SBuf q = {0}, disp = {0}, sig = {0};
    sb_addf(&q, "%s.%s", qn ? qn : "", qr ? qr : "");
    sb_addf(&disp, "%s.%s", nsp, name);
    sb_addf(&sig, "identity=%c;", ident);
    free(qn);
    free(qr);
    rel->replident = ident;
    rel->cols = calloc((size_t)(ncols ? ncols : 1), sizeof(Col));
    bool oom = !rel->cols;
    for (int i = 0; i < ncols && !oom; i++) {
        uint8_t flags = (uint8_t)rd_u(r, 1);
        const char *cname = rd_str(r);
        rel->cols[i].type = (uint32_t)rd_u(r, 4);
        rel->cols[i].typmod = (int32_t)rd_u(r, 4);
        rel->cols[i].key = flags & 1;
        rel->cols[i].qname = quote_ident(cname);
        rel->ncols = i + 1;
        if (!rel->cols[i].qname) oom = true;
        sb_addf(&sig, "%s%s:%u:%d%s", i ? "," : "", cname, rel->cols[i].type, rel->cols[i].typmod,
                rel->cols[i].key ? ":key" : "");
    }
    rel->qname = q.p;
    rel->display = disp.p;
    rel->signature = sig.p;
    rel->seen_relation = true;
    if (oom || q.oom || disp.oom || sig.oom)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    if (r->bad) return bad(err, "relation");
    return RT_OK;
}

static Rel *rel_for(ChgDecoder *d, uint32_t oid, RtError *err)
{
    Rel *rel = find_rel(d, oid);
    if (!rel || !rel->qname) {
        rt_error_set(err, RT_CLASS_FAILURE, "changes.protocol",
                     "pgoutput: a change for relation %u came before its Relation message", oid);
        return NULL;
    }
    return rel;
}

static int on_insert(ChgDecoder *d, Rd *r, Val *vals, RtError *err)
{
    Rel *rel = rel_for(d, (uint32_t)rd_u(r, 4), err);
    if (!rel) return RT_ERR;
    if (rd_u(r, 1) != 'N') return bad(err, "insert");
    int n = rd_tuple(r, vals, MAXCOLS);
    if (n < 0 || n != rel->ncols) return bad(err, "insert");
    if (d->skipping) return RT_OK;
    if (d->copy_rel != rel) {
        close_copy(d);
        emits(d, "COPY ");
        emits(d, rel->qname);
        emits(d, " (");
        for (int i = 0; i < rel->ncols; i++) {
            if (i) emits(d, ", ");
            emits(d, rel->cols[i].qname);
        }
        emits(d, ") FROM stdin;\n");
        d->copy_rel = rel;
    }
    for (int i = 0; i < n; i++) {
        if (i) emit(d, "\t", 1);
        emit_copy_value(d, &vals[i]);
    }
    emit(d, "\n", 1);
    rel->inserts++;
    d->cur_changes++;
    return RT_OK;
}

static int on_update(ChgDecoder *d, Rd *r, Val *oldv, Val *newv, RtError *err)
{
    Rel *rel = rel_for(d, (uint32_t)rd_u(r, 4), err);
    if (!rel) return RT_ERR;
    char kind = (char)rd_u(r, 1), oldkind = 0;
    int nold = 0;
    if (kind == 'K' || kind == 'O') {
        oldkind = kind;
        nold = rd_tuple(r, oldv, MAXCOLS);
        if (nold < 0) return bad(err, "update");
        kind = (char)rd_u(r, 1);
    }
    if (kind != 'N') return bad(err, "update");
    int n = rd_tuple(r, newv, MAXCOLS);
    if (n < 0 || n != rel->ncols) return bad(err, "update");
    if (d->skipping) return RT_OK;
    close_copy(d);
    size_t mark = d->out.len;
    int64_t mark_bytes = d->st.bytes;
    emits(d, "UPDATE ");
    emits(d, rel->qname);
    emits(d, " SET ");
    bool any = false;
    for (int i = 0; i < n; i++) {
        if (newv[i].kind == 'u') continue; /* unchanged TOAST: leave the column as it is */
        if (any) emits(d, ", ");
        emits(d, rel->cols[i].qname);
        emits(d, " = ");
        emit_literal(d, &newv[i]);
        any = true;
    }
    if (!any || !where_clause(d, rel, oldkind, oldv, nold, newv, n)) {
        d->out.len = mark; /* nothing to set, or no identity to find the row by */
        d->st.bytes = mark_bytes;
        if (d->out.p) d->out.p[mark] = 0;
        if (!any) return RT_OK;
        rel->no_identity = true;
        emits(d, "-- an UPDATE of ");
        emits(d, rel->display);
        emits(d, " came without a replica identity and could not be archived\n");
        return RT_OK;
    }
    emits(d, ";\n");
    rel->updates++;
    d->cur_changes++;
    return RT_OK;
}

static int on_delete(ChgDecoder *d, Rd *r, Val *oldv, RtError *err)
{
    Rel *rel = rel_for(d, (uint32_t)rd_u(r, 4), err);
    if (!rel) return RT_ERR;
    char kind = (char)rd_u(r, 1);
    if (kind != 'K' && kind != 'O') return bad(err, "delete");
    int n = rd_tuple(r, oldv, MAXCOLS);
    if (n < 0) return bad(err, "delete");
    if (d->skipping) return RT_OK;
    close_copy(d);
    size_t mark = d->out.len;
    int64_t mark_bytes = d->st.bytes;
    emits(d, "DELETE FROM ");
    emits(d, rel->qname);
    if (!where_clause(d, rel, kind, oldv, n, NULL, 0)) {
        d->out.len = mark;
        d->st.bytes = mark_bytes;
        if (d->out.p) d->out.p[mark] = 0;
        rel->no_identity = true;
        emits(d, "-- a DELETE from ");
        emits(d, rel->display);
        emits(d, " came without a replica identity and could not be archived\n");
        return RT_OK;
    }
    emits(d, ";\n");
    rel->deletes++;
    d->cur_changes++;
    return RT_OK;
}

static int on_truncate(ChgDecoder *d, Rd *r, RtError *err)
{
    int n = (int)rd_u(r, 4);
    uint8_t opts = (uint8_t)rd_u(r, 1);
    if (r->bad || n < 0) return bad(err, "truncate");
    if (!d->skipping) {
        close_copy(d);
        emits(d, "TRUNCATE TABLE ");
    }
    for (int i = 0; i < n; i++) {
        Rel *rel = rel_for(d, (uint32_t)rd_u(r, 4), err);
        if (!rel) return RT_ERR;
        if (d->skipping) continue;
        if (i) emits(d, ", ");
        emits(d, rel->qname);
        rel->truncates++;
        d->cur_changes++;
    }
    if (r->bad) return bad(err, "truncate");
    if (d->skipping) return RT_OK;
    if (opts & 2) emits(d, " RESTART IDENTITY");
    if (opts & 1) emits(d, " CASCADE");
    emits(d, ";\n");
    return RT_OK;
}

int chg_decode(ChgDecoder *d, const uint8_t *msg, size_t len, RtError *err)
{
    if (len < 1) return bad(err, "empty");
    Rd r = {msg + 1, msg + len, false};
    Val *oldv = d->oldv, *newv = d->newv;
    int rc = RT_OK;
    switch (msg[0]) {
    case 'B': {
        uint64_t final_lsn = rd_u(&r, 8);
        int64_t ts = (int64_t)rd_u(&r, 8);
        uint32_t xid = (uint32_t)rd_u(&r, 4);
        if (r.bad) return bad(err, "begin");
        if (d->in_txn) return bad(err, "begin (inside a transaction)");
        d->in_txn = true;
        d->cur_lsn = final_lsn;
        d->cur_time = ts;
        d->cur_changes = 0;
        d->skipping = final_lsn <= d->skip_through;
        if (d->skipping) break;
        char l[24], t[40], line[160];
        chg_lsn_format(final_lsn, l);
        chg_time_format(ts, t);
        snprintf(line, sizeof line, "-- txn commit_lsn=%s xid=%u time=%s\nBEGIN;\n", l, xid, t);
        emits(d, line);
        break;
    }
    case 'C': {
        rd_u(&r, 1);
        uint64_t commit_lsn = rd_u(&r, 8);
        uint64_t end_lsn = rd_u(&r, 8);
        int64_t ts = (int64_t)rd_u(&r, 8);
        if (r.bad || !d->in_txn) return bad(err, "commit");
        d->in_txn = false;
        if (d->skipping) {
            d->skipping = false;
            d->st.skipped++;
            break;
        }
        close_copy(d);
        emits(d, "COMMIT;\n");
        if (!d->st.transactions) {
            d->st.first_lsn = commit_lsn;
            d->st.first_time = ts;
        }
        d->st.transactions++;
        d->st.changes += d->cur_changes;
        d->st.last_lsn = commit_lsn;
        d->st.last_end_lsn = end_lsn;
        d->st.last_time = ts;
        break;
    }
    case 'R':
        rc = on_relation(d, &r, err);
        break;
    case 'I':
        rc = on_insert(d, &r, newv, err);
        break;
    case 'U':
        rc = on_update(d, &r, oldv, newv, err);
        break;
    case 'D':
        rc = on_delete(d, &r, oldv, err);
        break;
    case 'T':
        rc = on_truncate(d, &r, err);
        break;
    case 'O': /* origin of a replicated transaction: nothing to replay */
    case 'Y': /* type: values are sent as text, nothing to do */
    case 'M': /* logical decoding message: not asked for */
        break;
    default:
        return rt_error_set(err, RT_CLASS_FAILURE, "changes.protocol",
                            "pgoutput: unknown message type '%c'", msg[0]);
    }
    if (rc == RT_OK && d->out.oom)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    return rc;
}
