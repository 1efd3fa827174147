/*
 * The no-owner filter: a plain-SQL stream without ownership and privileges, for a restore onto
 * a server that does not have the source's roles (a complete-loss recovery). Drops the
 * statements `pg_restore --no-owner --no-privileges` would not write: ALTER ... OWNER TO,
 * GRANT, REVOKE, ALTER DEFAULT PRIVILEGES, SET SESSION AUTHORIZATION. Statements are found
 * with the pgdump splitter, so COPY data and quoted text are never mistaken for them.
 */
#include "changes.h"
#include "modules/pgdump/pg_split.h"
#include "runtime/sbuf.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct Strip {
    PgSplit *split;
    SBuf pending;
    size_t taken;
    bool finished;
    int64_t dropped;
} Strip;

static bool starts(const char *s, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && strncasecmp(s, word, n) == 0;
}

static bool drop(const char *s, size_t len)
{
    if (starts(s, len, "GRANT ") || starts(s, len, "REVOKE ") ||
        starts(s, len, "ALTER DEFAULT PRIVILEGES") || starts(s, len, "SET SESSION AUTHORIZATION"))
        return true;
    if (starts(s, len, "ALTER ")) {
        /* ALTER <kind> <name> OWNER TO <role>; the name may be quoted, so look at the end */
        const char *o = NULL;
        for (size_t i = 0; i + 10 <= len; i++)
            if (!strncmp(s + i, " OWNER TO ", 10)) o = s + i;
        if (o && !memchr(o, '\'', (size_t)(s + len - o))) return true;
    }
    return false;
}

static int ev_statement(void *ud, const char *sql, size_t len, size_t content, bool is_copy,
                        RtError *err)
{
    Strip *st = ud;
    (void)err;
    if (!is_copy && drop(sql + content, len - content)) {
        st->dropped++;
        return RT_OK;
    }
    sb_addn(&st->pending, sql, len);
    if (is_copy) sb_addc(&st->pending, '\n'); /* the splitter takes the newline ending it */
    return RT_OK;
}

static int ev_meta(void *ud, const char *line, size_t len, RtError *err)
{
    Strip *st = ud;
    (void)err;
    sb_addn(&st->pending, line, len);
    sb_addc(&st->pending, '\n');
    return RT_OK;
}

static int ev_copy_data(void *ud, const uint8_t *data, size_t len, RtError *err)
{
    Strip *st = ud;
    (void)err;
    sb_addn(&st->pending, (const char *)data, len);
    return RT_OK;
}

static int ev_copy_end(void *ud, RtError *err)
{
    Strip *st = ud;
    (void)err;
    sb_add(&st->pending, "\\.\n");
    return RT_OK;
}

static void drain(Strip *st, RtBuf *out)
{
    size_t n = st->pending.len - st->taken;
    size_t put = rt_buf_put(out, st->pending.p + st->taken, n);
    st->taken += put;
    if (st->taken == st->pending.len) st->taken = st->pending.len = 0;
}

static int strip_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    Strip *st = self;
    if (st->pending.len > st->taken) {
        drain(st, out);
        return RT_OK;
    }
    if (!in) {
        if (!st->finished) {
            st->finished = true;
            if (pg_split_finish(st->split, err) != RT_OK) return RT_ERR;
        }
        if (st->pending.oom)
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        if (st->pending.len > st->taken)
            drain(st, out);
        else
            *done = true;
        return RT_OK;
    }
    size_t n = rt_buf_remain(in);
    if (n > 65536) n = 65536;
    if (pg_split_feed(st->split, rt_buf_rptr(in), n, err) != RT_OK) return RT_ERR;
    in->pos += n;
    if (st->pending.oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    if (st->pending.len > st->taken) drain(st, out);
    return RT_OK;
}

static void strip_results(void *self, RtResults *res)
{
    Strip *st = self;
    rt_results_int(res, "dropped", st->dropped);
}

static void strip_destroy(void *self)
{
    Strip *st = self;
    if (!st) return;
    pg_split_free(st->split);
    free(st->pending.p);
    free(st);
}

static const RtFilterOps no_owner_filter_ops = {.name = "no_owner",
                                                .process = strip_process,
                                                .results = strip_results,
                                                .destroy = strip_destroy};

RtFilter *chg_no_owner_filter(RtError *err)
{
    static const PgSplitEvents ev = {ev_statement, ev_meta, ev_copy_data, ev_copy_end};
    Strip *st = calloc(1, sizeof *st);
    RtFilter *f = rt_filter_new();
    if (!st || !f || !(st->split = pg_split_new(&ev, st, 0))) {
        strip_destroy(st);
        free(f);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_filter_init(f, &no_owner_filter_ops, st);
    return f;
}
