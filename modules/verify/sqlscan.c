/*
 * SqlScan — per-table row counts and COPY-data digests recomputed from a plain-SQL stream.
 * See sqlscan.h for what is recognised and why the digests match the dump's.
 */
#include "sqlscan.h"

#include "modules/pgdump/pgdump.h"
#include "runtime/sbuf.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/* Longest line outside COPY data that is kept to be recognised (a COPY header with its column
 * list); longer lines are skipped unless they start a COPY block. */
#define SQLSCAN_LINE_CAP (1u << 20)

typedef struct ScanTable {
    char *name;
    EVP_MD_CTX *md;
    int64_t rows, bytes;
    char hex[65];
    PgSetDigest set; /* row_digests: the order-independent digest pgdump computes */
} ScanTable;

struct SqlScan {
    /* outside COPY: the current line (its first SQLSCAN_LINE_CAP bytes) */
    SBuf line; /* limit SQLSCAN_LINE_CAP; `truncated` once a line outgrew it */
    /* inside COPY: the table, and the first bytes of a line (to spot "\.") */
    bool in_copy;
    ScanTable *cur;
    uint8_t lead[3];
    size_t lead_n;
    bool at_line_start;
    ScanTable *tables;
    size_t ntables, cap_tables;
    int64_t rows;
    bool complete, truncated, ended;
    /* row_digests: one SHA-256 per row (rows may span input buffers), summed per table */
    bool row_digests;
    PgRowHash *row_md;
};

SqlScan *sqlscan_new(void)
{
    SqlScan *s = calloc(1, sizeof *s);
    if (s) {
        s->at_line_start = true;
        s->line.limit = SQLSCAN_LINE_CAP;
    }
    return s;
}

void sqlscan_free(SqlScan *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->ntables; i++) {
        free(s->tables[i].name);
        EVP_MD_CTX_free(s->tables[i].md);
    }
    free(s->tables);
    sb_free(&s->line);
    pgdump_row_hash_free(s->row_md);
    free(s);
}

static ScanTable *table_for(SqlScan *s, const char *name, size_t len, RtError *err)
{
    for (size_t i = 0; i < s->ntables; i++)
        if (strlen(s->tables[i].name) == len && memcmp(s->tables[i].name, name, len) == 0)
            return &s->tables[i];
    if (s->ntables == s->cap_tables) {
        size_t cap = s->cap_tables ? s->cap_tables * 2 : 64;
        ScanTable *t = realloc(s->tables, cap * sizeof *t);
        if (!t) goto oom;
        s->tables = t;
        s->cap_tables = cap;
    }
    ScanTable *t = &s->tables[s->ntables];
    memset(t, 0, sizeof *t);
    t->name = strndup(name, len);
    t->md = EVP_MD_CTX_new();
    if (!t->name || !t->md || !EVP_DigestInit_ex(t->md, EVP_sha256(), NULL)) {
        free(t->name);
        EVP_MD_CTX_free(t->md);
        goto oom;
    }
    s->ntables++;
    return t;
oom:
    rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory while scanning the dump");
    return NULL;
}

/* The table name of a COPY header: identifiers (plain or "quoted" with "" escapes) joined by
 * dots, as written. Returns its length, 0 if the line is not a COPY ... FROM stdin; header. */
static size_t copy_header_name(const char *line, size_t len, const char **name)
{
    static const char tail[] = " FROM stdin;";
    size_t tl = sizeof tail - 1;
    if (len < 5 + tl || memcmp(line, "COPY ", 5) != 0 || memcmp(line + len - tl, tail, tl) != 0)
        return 0;
    size_t i = 5;
    *name = line + i;
    while (i < len) {
        if (line[i] == '"') {
            for (i++; i < len; i++)
                if (line[i] == '"') {
                    if (i + 1 < len && line[i + 1] == '"')
                        i++;
                    else
                        break;
                }
            if (i >= len) return 0;
            i++;
        } else if (line[i] == ' ') {
            break;
        } else {
            i++;
        }
    }
    return (size_t)(line + i - *name);
}

static int end_of_line(SqlScan *s, RtError *err)
{
    const char *line = s->line.p ? s->line.p : "";
    size_t len = s->line.len;
    const char *name;
    size_t nl = copy_header_name(line, len, &name);
    if (nl) {
        s->cur = table_for(s, name, nl, err);
        if (!s->cur) return RT_ERR;
        s->in_copy = true;
        s->at_line_start = true;
        s->lead_n = 0;
    } else if (len >= 36 && memcmp(line, "-- PostgreSQL database dump complete", 36) == 0) {
        s->complete = true;
    }
    sb_clear(&s->line);
    return RT_OK;
}

static int append_line(SqlScan *s, const uint8_t *p, size_t n, RtError *err)
{
    bool was_truncated = s->line.truncated;
    sb_addn(&s->line, (const char *)p, n);
    if (s->line.oom)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM,
                            "out of memory while scanning the dump");
    /* only the kept prefix is looked at at the end of the line: a COPY header must fit */
    if (s->line.truncated && !was_truncated && memcmp(s->line.p, "COPY ", 5) == 0)
        return rt_error_set(err, RT_CLASS_VERIFY, "verify.copy_header",
                            "a COPY header in the dump is longer than 1 MiB");
    return RT_OK;
}

int sqlscan_set_row_digests(SqlScan *s, bool on, RtError *err)
{
    s->row_digests = on;
    if (on && !s->row_md && !(s->row_md = pgdump_row_hash_new()))
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    return RT_OK;
}

static void row_bytes(SqlScan *s, const uint8_t *p, size_t n)
{
    EVP_DigestUpdate(s->cur->md, p, n);
    s->cur->bytes += (int64_t)n;
    if (s->row_digests) {
        pgdump_row_hash_update(s->row_md, p, n);
    }
}

/* A row ended (its "\n" was fed). */
static void row_end(SqlScan *s)
{
    s->cur->rows++;
    s->rows++;
    /* the row's hash added to the table's sum: what pgdump_set_digest_row does with the whole
     * line at once */
    if (s->row_digests) pgdump_row_hash_end(s->row_md, &s->cur->set);
}

int sqlscan_feed(SqlScan *s, const uint8_t *p, size_t len, RtError *err)
{
    while (len > 0) {
        if (!s->in_copy) {
            const uint8_t *nl = memchr(p, '\n', len);
            size_t n = nl ? (size_t)(nl - p) : len;
            if (append_line(s, p, n, err) != RT_OK) return RT_ERR;
            p += n;
            len -= n;
            if (nl) {
                p++;
                len--;
                if (end_of_line(s, err) != RT_OK) return RT_ERR;
            }
            continue;
        }
        if (s->at_line_start) {
            /* collect up to 3 bytes: the end marker is exactly "\\.\n" */
            while (s->lead_n < 3 && len > 0 && (s->lead_n == 0 || s->lead[s->lead_n - 1] != '\n')) {
                s->lead[s->lead_n++] = *p++;
                len--;
            }
            if (s->lead_n < 3 && s->lead[s->lead_n - 1] != '\n') return RT_OK; /* need more */
            if (s->lead_n == 3 && memcmp(s->lead, "\\.\n", 3) == 0) {
                s->in_copy = false;
                s->cur = NULL;
                s->lead_n = 0;
                continue;
            }
            row_bytes(s, s->lead, s->lead_n);
            if (s->lead[s->lead_n - 1] == '\n') {
                row_end(s);
            } else {
                s->at_line_start = false;
            }
            s->lead_n = 0;
            continue;
        }
        const uint8_t *nl = memchr(p, '\n', len);
        size_t n = nl ? (size_t)(nl - p) + 1 : len;
        row_bytes(s, p, n);
        if (nl) {
            row_end(s);
            s->at_line_start = true;
        }
        p += n;
        len -= n;
    }
    return RT_OK;
}

void sqlscan_end(SqlScan *s)
{
    if (s->ended) return;
    s->ended = true;
    if (s->in_copy) s->truncated = true;
    for (size_t i = 0; i < s->ntables; i++) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        EVP_DigestFinal_ex(s->tables[i].md, md, &mdlen);
        for (unsigned j = 0; j < mdlen && j < 32; j++)
            snprintf(s->tables[i].hex + 2 * j, 3, "%02x", md[j]);
    }
}

void sqlscan_results(SqlScan *s, RtResults *res)
{
    sqlscan_end(s);
    RtResults *tables = rt_results_table(res, "tables");
    for (size_t i = 0; i < s->ntables; i++) {
        RtResults *t = rt_results_table(tables, s->tables[i].name);
        rt_results_int(t, "rows", s->tables[i].rows);
        rt_results_int(t, "bytes", s->tables[i].bytes);
        rt_results_str(t, "sha256", s->tables[i].hex);
        if (s->row_digests) {
            char hex[65];
            pgdump_set_digest_hex(&s->tables[i].set, hex);
            rt_results_str(t, "set_sha256", hex);
        }
    }
    rt_results_int(res, "table_count", (int64_t)s->ntables);
    rt_results_int(res, "rows", s->rows);
    rt_results_bool(res, "complete", s->complete);
    rt_results_bool(res, "truncated", s->truncated);
}

/* ---- stages ----------------------------------------------------------------------------- */

static int scan_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    return sqlscan_feed(self, data, len, err);
}

static int scan_finish(void *self, RtError *err)
{
    (void)err;
    sqlscan_end(self);
    return RT_OK;
}

static void scan_abort(void *self)
{
    (void)self;
}

static void scan_results(void *self, RtResults *res)
{
    sqlscan_results(self, res);
}

static void scan_destroy(void *self)
{
    sqlscan_free(self);
}

static const RtSinkOps sqlscan_sink_ops = {.name = "sqlscan",
                                           .write = scan_write,
                                           .finish = scan_finish,
                                           .abort = scan_abort,
                                           .results = scan_results,
                                           .destroy = scan_destroy};

RtSink *sqlscan_sink(bool row_digests, RtError *err)
{
    RtSink *k = rt_sink_new();
    SqlScan *s = sqlscan_new();
    if (!k || !s || sqlscan_set_row_digests(s, row_digests, err) != RT_OK) {
        free(k);
        sqlscan_free(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_sink_init(k, &sqlscan_sink_ops, s);
    return k;
}

static int scan_observe(void *self, const uint8_t *data, size_t len, RtError *err)
{
    if (!data) {
        sqlscan_end(self);
        return RT_OK;
    }
    return sqlscan_feed(self, data, len, err);
}

static const RtFilterOps sqlscan_filter_ops = {
    .name = "sqlscan", .observe = scan_observe, .results = scan_results, .destroy = scan_destroy};

RtFilter *sqlscan_filter(bool row_digests, RtError *err)
{
    RtFilter *f = rt_filter_new();
    SqlScan *s = sqlscan_new();
    if (!f || !s || sqlscan_set_row_digests(s, row_digests, err) != RT_OK) {
        free(f);
        sqlscan_free(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_filter_init(f, &sqlscan_filter_ops, s);
    return f;
}
