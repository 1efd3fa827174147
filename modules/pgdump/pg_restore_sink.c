/*
 * The restore sink: loads a plain-SQL stream (ours or stock pg_dump's) into an empty database,
 * streaming — no temp files — and in parallel where the dump's structure allows it.
 *
 *   pre-data   every statement up to the first COPY runs on the main connection in
 *              transactions of PRE_DATA_BATCH statements (a failure in a small schema leaves
 *              nothing behind), committed when the first COPY arrives;
 *   data       each COPY block is cut at row boundaries into COPY commands of chunk_bytes and
 *              dispatched to `jobs` worker connections (bounded queues: memory stays flat), so
 *              even one big table loads on every connection;
 *   post-data  any other statement after the first COPY waits until all data is in (a
 *              barrier), then runs on the main connection — except CREATE INDEX, which is
 *              queued to the workers so that indexes build in parallel; the next statement of
 *              another kind waits for them (ALTER INDEX ... ATTACH needs its index).
 * Session settings of the script (SET ..., set_config) are replayed on the workers.
 * psql meta-commands: \connect (the target is the url's database) and \restrict/\unrestrict
 * are skipped; any other is an error. The first error stops everything; its message names the
 * statement number, the table and the server's message, and says the target is partial.
 */
#include "io/cancel.h"
#include "log.h"
#include "pg_split.h"
#include "pgdump.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RBLOCK     (256 * 1024)
#define WQUEUE_MAX ((size_t)8 << 20)
/* Schema statements per transaction: one transaction for a whole big schema could run out of
 * lock slots (max_locks_per_transaction), as pg_restore --single-transaction can. */
#define PRE_DATA_BATCH 1000

enum { J_COPY_BEGIN, J_DATA, J_COPY_END, J_EXEC };

typedef struct Job {
    struct Job *next;
    int kind;
    char *sql;     /* COPY header or statement */
    char *table;   /* for messages */
    int64_t stmt;  /* statement number */
    uint8_t *data; /* J_DATA */
    size_t len;
} Job;

typedef struct Restore Restore;

typedef struct Worker {
    Restore *r;
    PGconn *c;
    pthread_t th;
    bool started;
    Job *head, *tail;
    size_t queued;
    int busy;     /* jobs queued or running */
    bool in_copy; /* between COPY_BEGIN and COPY_END: cannot take shared jobs */
} Worker;

typedef struct TableStat {
    char *name;
    int64_t rows, bytes;
    EVP_MD_CTX *md;
    char sha256[65];
} TableStat;

struct Restore {
    char *url;
    char what[256];
    int jobs;
    bool clean;
    size_t chunk;
    PGconn *main;
    PgSplit *split;
    bool data_phase, in_txn;
    char **session;
    int nsession;
    Worker *w;
    int nw;
    Job *any_head, *any_tail; /* index builds: taken by whichever worker is free first */
    int any_busy;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool failed, stop;
    RtError werr;
    /* the COPY block being read */
    bool in_copy;
    char *copy_sql, *copy_table;
    int64_t copy_stmt;
    Worker *cw; /* worker of the open COPY command, or NULL */
    size_t job_bytes;
    uint8_t *blk;
    size_t blk_len, blk_cap;
    TableStat *tabs;
    int ntabs, cur_tab;
    int64_t statements, indexes;
    int txn_statements;
    bool post_logged;
    /* phase boundaries (rt_monotonic), logged at debug level by restore_finish: where the time
     * of a restore goes (see the README's benchmark notes) */
    double t_start, t_data, t_post;
    bool format_checked;
    bool copies_pending; /* COPY commands queued since the last barrier */
};

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int nomem(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
}

static const char PARTIAL_HINT[] =
    "the target database is partial (no post-data, or not all data): fix the cause, then "
    "restore again with clean = true or into a new empty database";

static void server_message(PGconn *c, const PGresult *res, char *out, size_t cap)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m || !*m) m = PQerrorMessage(c);
    if (!strncmp(m, "ERROR:  ", 8)) m += 8;
    size_t n = strcspn(m, "\n");
    if (n >= cap) n = cap - 1;
    memcpy(out, m, n);
    out[n] = '\0';
}

/* The first error of the restore. `table` names the COPY's table; `sql` (worker jobs) the
 * statement; otherwise the line comes from the splitter (main thread only). */
static void fail_statement(Restore *r, RtError *err, PGconn *c, const PGresult *res, int64_t stmt,
                           const char *table, const char *sql)
{
    char msg[400];
    server_message(c, res, msg, sizeof msg);
    if (table)
        rt_error_set(err, RT_CLASS_FAILURE, "pgdump.restore",
                     "restore into %s failed at statement %lld (table %s): %s; the target is "
                     "partial",
                     r->what, (long long)stmt, table, msg);
    else if (sql)
        rt_error_set(err, RT_CLASS_FAILURE, "pgdump.restore",
                     "restore into %s failed at statement %lld (%.*s): %s; the target is partial",
                     r->what, (long long)stmt, (int)strcspn(sql, "\n("), sql, msg);
    else
        rt_error_set(err, RT_CLASS_FAILURE, "pgdump.restore",
                     "restore into %s failed at statement %lld (line %lld): %s; the target is "
                     "partial",
                     r->what, (long long)stmt, (long long)pg_split_line(r->split), msg);
    rt_error_hint(err, "%s", PARTIAL_HINT);
    err->retryable = PQstatus(c) == CONNECTION_BAD;
}

/* ---- workers ---------------------------------------------------------------------------- */

static void job_free(Job *j)
{
    if (!j) return;
    free(j->sql);
    free(j->table);
    free(j->data);
    free(j);
}

static void worker_failed(Restore *r, const RtError *e)
{
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = true;
        rt_error_copy(&r->werr, e);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void *worker_main(void *arg)
{
    Worker *w = arg;
    Restore *r = w->r;
    bool broken = false; /* this worker's current COPY failed: skip its data */
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (!w->head && !(r->any_head && !w->in_copy) && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        Job *j;
        bool shared = !w->head;
        if (shared) {
            j = r->any_head;
            r->any_head = j->next;
            if (!r->any_head) r->any_tail = NULL;
        } else {
            j = w->head;
            w->head = j->next;
            if (!w->head) w->tail = NULL;
        }
        if (j->kind == J_COPY_BEGIN) w->in_copy = true;
        if (j->kind == J_COPY_END) w->in_copy = false;
        bool failed = r->failed;
        pthread_mutex_unlock(&r->mu);

        if (!failed && !broken) {
            RtError e;
            rt_error_init(&e);
            PGresult *res = NULL;
            switch (j->kind) {
            case J_COPY_BEGIN:
                res = PQexec(w->c, j->sql);
                if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
                    fail_statement(r, &e, w->c, res, j->stmt, j->table, j->sql);
                    broken = true;
                }
                break;
            case J_DATA:
                if (PQputCopyData(w->c, (const char *)j->data, (int)j->len) != 1) {
                    fail_statement(r, &e, w->c, NULL, j->stmt, j->table, j->sql);
                    broken = true;
                }
                break;
            case J_COPY_END:
                if (PQputCopyEnd(w->c, NULL) != 1) {
                    fail_statement(r, &e, w->c, NULL, j->stmt, j->table, j->sql);
                    broken = true;
                    break;
                }
                while ((res = PQgetResult(w->c))) {
                    if (PQresultStatus(res) != PGRES_COMMAND_OK && !e.set)
                        fail_statement(r, &e, w->c, res, j->stmt, j->table, j->sql);
                    PQclear(res);
                }
                break;
            case J_EXEC:
                res = PQexec(w->c, j->sql);
                if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK &&
                             PQresultStatus(res) != PGRES_TUPLES_OK))
                    fail_statement(r, &e, w->c, res, j->stmt, j->table, j->sql);
                break;
            }
            PQclear(res);
            if (e.set) worker_failed(r, &e);
        }
        if (j->kind == J_COPY_END) broken = false;
        pthread_mutex_lock(&r->mu);
        if (shared) {
            r->any_busy--;
        } else {
            w->queued -= j->len;
            w->busy--;
        }
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        job_free(j);
    }
    return NULL;
}

static bool timed_wait(Restore *r)
{
    rt_cond_wait_ms(&r->cv, &r->mu, 200);
    return !rt_cancelled();
}

/* Queues a job (taking it), waiting while the worker's queue is full. */
static int enqueue(Restore *r, Worker *w, Job *j, RtError *err)
{
    pthread_mutex_lock(&r->mu);
    while (w->queued >= WQUEUE_MAX && !r->failed && timed_wait(r)) {
    }
    if (r->failed || rt_cancelled()) {
        if (r->failed) rt_error_copy(err, &r->werr);
        pthread_mutex_unlock(&r->mu);
        job_free(j);
        return rt_cancelled() ? rt_cancel_error(err) : RT_ERR;
    }
    j->next = NULL;
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    w->queued += j->len;
    w->busy++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return RT_OK;
}

/* Queues a job for whichever worker is free first. */
static void enqueue_any(Restore *r, Job *j)
{
    pthread_mutex_lock(&r->mu);
    j->next = NULL;
    if (r->any_tail)
        r->any_tail->next = j;
    else
        r->any_head = j;
    r->any_tail = j;
    r->any_busy++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static Job *job_new(int kind, const char *sql, const char *table, int64_t stmt)
{
    Job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = kind;
    j->stmt = stmt;
    j->sql = xstrdup(sql);
    j->table = xstrdup(table);
    if ((sql && !j->sql) || (table && !j->table)) {
        job_free(j);
        return NULL;
    }
    return j;
}

/* Waits until every worker is idle; RT_ERR with the first worker error. */
static int barrier(Restore *r, RtError *err)
{
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->failed) break;
        bool idle = r->any_busy == 0;
        for (int i = 0; i < r->nw; i++)
            if (r->w[i].busy) idle = false;
        if (idle) break;
        if (!timed_wait(r)) break;
    }
    int rc = RT_OK;
    if (r->failed) {
        rt_error_copy(err, &r->werr);
        rc = RT_ERR;
    } else if (rt_cancelled()) {
        rc = rt_cancel_error(err);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static Worker *least_loaded(Restore *r)
{
    pthread_mutex_lock(&r->mu);
    Worker *best = &r->w[0];
    for (int i = 1; i < r->nw; i++)
        if (r->w[i].queued + (size_t)r->w[i].busy < best->queued + (size_t)best->busy)
            best = &r->w[i];
    pthread_mutex_unlock(&r->mu);
    return best;
}

static int start_workers(Restore *r, RtError *err)
{
    r->w = calloc((size_t)r->jobs, sizeof *r->w);
    if (!r->w) return nomem(err);
    for (int i = 0; i < r->jobs; i++) {
        Worker *w = &r->w[i];
        w->r = r;
        w->c = pgdump_connect(r->url, "clubio-dr pgdump restore", err);
        if (!w->c) return RT_ERR;
        r->nw++;
        /* Workers commit without waiting for the WAL flush; the restore's last commit, on the
         * main connection and synchronous, flushes everything before it (see restore_finish). */
        if (pgdump_exec(w->c, "SET synchronous_commit = off", err) != RT_OK) return RT_ERR;
        for (int k = 0; k < r->nsession; k++) {
            PGresult *res = PQexec(w->c, r->session[k]);
            bool ok = res && (PQresultStatus(res) == PGRES_COMMAND_OK ||
                              PQresultStatus(res) == PGRES_TUPLES_OK);
            PQclear(res);
            if (!ok)
                return pgdump_conn_error(w->c, err, "pgdump.restore",
                                         "cannot set up a "
                                         "restore connection");
        }
        if (pthread_create(&w->th, NULL, worker_main, w) != 0)
            return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.thread", "cannot start a thread");
        w->started = true;
    }
    return RT_OK;
}

static void stop_workers(Restore *r, bool cancel)
{
    if (cancel)
        for (int i = 0; i < r->nw; i++) {
            PGcancel *cn = PQgetCancel(r->w[i].c);
            if (cn) {
                char eb[128];
                PQcancel(cn, eb, sizeof eb);
                PQfreeCancel(cn);
            }
        }
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nw; i++) {
        Worker *w = &r->w[i];
        if (w->started) pthread_join(w->th, NULL);
        w->started = false;
        while (w->head) {
            Job *j = w->head;
            w->head = j->next;
            job_free(j);
        }
        w->tail = NULL;
        if (w->c) PQfinish(w->c);
        while (r->any_head) {
            Job *j = r->any_head;
            r->any_head = j->next;
            job_free(j);
        }
        r->any_tail = NULL;
        w->c = NULL;
    }
}

/* ---- statements ------------------------------------------------------------------------- */

static bool starts_with_word(const char *s, const char *word)
{
    size_t n = strlen(word);
    return strncasecmp(s, word, n) == 0 && !isalnum((unsigned char)s[n]) && s[n] != '_';
}

static const char *skip_ws(const char *s)
{
    while (isspace((unsigned char)*s)) s++;
    return s;
}

static bool is_session_setting(const char *s)
{
    if (starts_with_word(s, "SET")) {
        const char *p = skip_ws(s + 3);
        return !starts_with_word(p, "LOCAL") && !starts_with_word(p, "TRANSACTION") &&
               !starts_with_word(p, "CONSTRAINTS") && !starts_with_word(p, "SESSION");
    }
    return strncasecmp(s, "SELECT pg_catalog.set_config(", 29) == 0;
}

/* Statements that build an index and can run beside each other on the workers: CREATE [UNIQUE]
 * INDEX (but not ON ONLY: a partitioned parent's index, attached later) and ALTER TABLE [ONLY] t
 * ADD CONSTRAINT c PRIMARY KEY / UNIQUE (one table each; two on the same table simply wait for
 * each other's lock). Everything else waits for them (ALTER INDEX ... ATTACH, foreign keys). */
static bool is_parallel_index(const char *s)
{
    if (starts_with_word(s, "CREATE")) {
        const char *p = skip_ws(s + 6);
        if (starts_with_word(p, "UNIQUE")) p = skip_ws(p + 6);
        if (!starts_with_word(p, "INDEX")) return false;
        return strstr(s, " ON ONLY ") == NULL;
    }
    if (!starts_with_word(s, "ALTER") || !starts_with_word(skip_ws(s + 5), "TABLE")) return false;
    const char *add = strstr(s, "ADD CONSTRAINT ");
    if (!add || strchr(s, ';') != strrchr(s, ';')) return false;
    /* the constraint name may be quoted; the kind follows it */
    const char *p = skip_ws(add + 15);
    if (*p == '"') {
        for (p++; *p && !(*p == '"' && p[1] != '"'); p += *p == '"' ? 2 : 1) {
        }
        if (*p) p++;
    } else {
        while (*p && !isspace((unsigned char)*p)) p++;
    }
    p = skip_ws(p);
    return starts_with_word(p, "PRIMARY") || starts_with_word(p, "UNIQUE");
}

/* The table of `COPY <table> (cols) FROM stdin`, as written. */
static char *copy_table_name(const char *s)
{
    const char *p = skip_ws(s + 4), *q = p;
    bool quoted = false;
    while (*q && (quoted || (!isspace((unsigned char)*q) && *q != '('))) {
        if (*q == '"') quoted = !quoted;
        q++;
    }
    return strndup(p, (size_t)(q - p));
}

static TableStat *table_stat(Restore *r, const char *name, RtError *err)
{
    if (r->cur_tab >= 0 && !strcmp(r->tabs[r->cur_tab].name, name)) return &r->tabs[r->cur_tab];
    for (int i = 0; i < r->ntabs; i++)
        if (!strcmp(r->tabs[i].name, name)) return &r->tabs[r->cur_tab = i];
    TableStat *n = realloc(r->tabs, (size_t)(r->ntabs + 1) * sizeof *n);
    if (!n) return nomem(err), NULL;
    r->tabs = n;
    TableStat *t = &r->tabs[r->ntabs];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->md = EVP_MD_CTX_new();
    if (!t->name || !t->md) {
        free(t->name);
        EVP_MD_CTX_free(t->md);
        return nomem(err), NULL;
    }
    EVP_DigestInit_ex(t->md, EVP_sha256(), NULL);
    r->cur_tab = r->ntabs++;
    return t;
}

static int exec_main(Restore *r, const char *sql, int64_t stmt, RtError *err)
{
    PGresult *res = PQexec(r->main, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        PQclear(res);
        return RT_OK;
    }
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT) {
        PQclear(res);
        /* a COPY we did not recognise as FROM stdin: end it and refuse */
        PQputCopyEnd(r->main, "unsupported COPY in a restore");
        while ((res = PQgetResult(r->main))) PQclear(res);
        return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.restore",
                            "restore into %s failed at statement %lld (line %lld): only COPY "
                            "... FROM stdin is supported; the target is partial",
                            r->what, (long long)stmt, (long long)pg_split_line(r->split));
    }
    fail_statement(r, err, r->main, res, stmt, NULL, NULL);
    PQclear(res);
    return RT_ERR;
}

static int remember_setting(Restore *r, const char *sql, RtError *err)
{
    char **n = realloc(r->session, (size_t)(r->nsession + 1) * sizeof *n);
    if (!n) return nomem(err);
    r->session = n;
    if (!(r->session[r->nsession] = xstrdup(sql))) return nomem(err);
    r->nsession++;
    return RT_OK;
}

static int enter_data_phase(Restore *r, RtError *err)
{
    if (r->in_txn) {
        if (exec_main(r, "COMMIT", r->statements, err) != RT_OK) return RT_ERR;
        r->in_txn = false;
    }
    r->data_phase = true;
    r->t_data = rt_monotonic();
    rt_debug("pgdump: restore: schema committed after %lld statements, loading data",
             (long long)r->statements);
    return start_workers(r, err);
}

static int on_statement(void *ud, const char *sql, size_t len, size_t content, bool is_copy,
                        RtError *err)
{
    Restore *r = ud;
    (void)len;
    int64_t stmt = pg_split_count(r->split);
    r->statements++;
    const char *body = sql + content;
    if (is_copy) {
        if (!r->data_phase && enter_data_phase(r, err) != RT_OK) return RT_ERR;
        free(r->copy_sql);
        free(r->copy_table);
        r->copy_sql = xstrdup(body);
        r->copy_table = copy_table_name(body);
        if (!r->copy_sql || !r->copy_table) return nomem(err);
        r->copy_stmt = stmt;
        r->in_copy = true;
        r->cw = NULL;
        r->job_bytes = 0;
        r->blk_len = 0;
        return table_stat(r, r->copy_table, err) ? RT_OK : RT_ERR;
    }
    if (starts_with_word(body, "CREATE") && starts_with_word(skip_ws(body + 6), "DATABASE")) {
        rt_warn("pgdump: skipping CREATE DATABASE at statement %lld: the target is %s",
                (long long)stmt, r->what);
        return RT_OK;
    }
    bool setting = is_session_setting(body);
    if (!r->data_phase) {
        if (setting && remember_setting(r, body, err) != RT_OK) return RT_ERR;
        if (r->in_txn && ++r->txn_statements >= PRE_DATA_BATCH) {
            if (exec_main(r, "COMMIT", stmt, err) != RT_OK) return RT_ERR;
            r->in_txn = false;
        }
        if (!r->in_txn) {
            if (exec_main(r, "BEGIN", stmt, err) != RT_OK) return RT_ERR;
            r->in_txn = true;
            r->txn_statements = 0;
        }
        return exec_main(r, sql, stmt, err);
    }
    if (is_parallel_index(body)) {
        /* indexes are built on loaded tables: wait for the COPY commands still queued */
        if (r->copies_pending) {
            if (barrier(r, err) != RT_OK) return RT_ERR;
            r->copies_pending = false;
        }
        if (r->t_post == 0) r->t_post = rt_monotonic();
        r->indexes++;
        Job *j = job_new(J_EXEC, body, NULL, stmt);
        if (!j) return nomem(err);
        enqueue_any(r, j);
        return RT_OK;
    }
    if (barrier(r, err) != RT_OK) return RT_ERR;
    r->copies_pending = false;
    if (r->t_post == 0) r->t_post = rt_monotonic();
    if (!r->post_logged) {
        r->post_logged = true;
        rt_debug("pgdump: restore: data loaded, post-data from statement %lld", (long long)stmt);
    }
    rt_debug("pgdump: restore: statement %lld: %.60s", (long long)stmt, body);
    if (exec_main(r, sql, stmt, err) != RT_OK) return RT_ERR;
    if (setting) {
        if (remember_setting(r, body, err) != RT_OK) return RT_ERR;
        for (int i = 0; i < r->nw; i++) {
            Job *j = job_new(J_EXEC, body, NULL, stmt);
            if (!j) return nomem(err);
            if (enqueue(r, &r->w[i], j, err) != RT_OK) return RT_ERR;
        }
    }
    return RT_OK;
}

static int on_meta(void *ud, const char *line, size_t len, RtError *err)
{
    Restore *r = ud;
    (void)len;
    const char *cmd = line + 1;
    if (starts_with_word(cmd, "connect") || starts_with_word(cmd, "c")) {
        rt_info("pgdump: ignoring \"%.*s\": restoring into %s", (int)strcspn(line, " "), line,
                r->what);
        return RT_OK;
    }
    if (starts_with_word(cmd, "restrict") || starts_with_word(cmd, "unrestrict")) return RT_OK;
    return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.meta",
                        "restore into %s failed at statement %lld (line %lld): unsupported psql "
                        "meta-command \\%.*s; the target is partial",
                        r->what, (long long)pg_split_count(r->split),
                        (long long)pg_split_line(r->split), (int)strcspn(cmd, " \t"), cmd);
}

/* Sends the filled part of the block (whole rows only unless `all`) to the open COPY command,
 * opening one on the least loaded worker if needed. */
static int flush_rows(Restore *r, bool all, RtError *err)
{
    size_t n = r->blk_len;
    if (!all) {
        while (n && r->blk[n - 1] != '\n') n--;
        if (n == 0) return RT_OK; /* one row longer than the block: let it grow */
    }
    if (n == 0) return RT_OK;
    if (!r->cw) {
        r->cw = least_loaded(r);
        Job *b = job_new(J_COPY_BEGIN, r->copy_sql, r->copy_table, r->copy_stmt);
        if (!b) return nomem(err);
        if (enqueue(r, r->cw, b, err) != RT_OK) return RT_ERR;
        r->job_bytes = 0;
    }
    Job *j = job_new(J_DATA, NULL, r->copy_table, r->copy_stmt);
    uint8_t *data = malloc(n);
    if (!j || !data) {
        job_free(j);
        free(data);
        return nomem(err);
    }
    memcpy(data, r->blk, n);
    j->data = data;
    j->len = n;
    memmove(r->blk, r->blk + n, r->blk_len - n);
    r->blk_len -= n;
    if (enqueue(r, r->cw, j, err) != RT_OK) return RT_ERR;
    r->job_bytes += n;
    if (r->job_bytes >= r->chunk) {
        Job *e = job_new(J_COPY_END, NULL, r->copy_table, r->copy_stmt);
        if (!e) return nomem(err);
        if (enqueue(r, r->cw, e, err) != RT_OK) return RT_ERR;
        r->cw = NULL;
    }
    return RT_OK;
}

static int on_copy_data(void *ud, const uint8_t *data, size_t len, RtError *err)
{
    Restore *r = ud;
    TableStat *t = &r->tabs[r->cur_tab];
    EVP_DigestUpdate(t->md, data, len);
    t->bytes += (int64_t)len;
    for (const uint8_t *p = data, *e = data + len; (p = memchr(p, '\n', (size_t)(e - p))); p++)
        t->rows++;
    while (len) {
        if (r->blk_len == r->blk_cap) {
            if (flush_rows(r, false, err) != RT_OK) return RT_ERR;
            if (r->blk_len == r->blk_cap) { /* a long row: grow */
                size_t ncap = r->blk_cap ? r->blk_cap * 2 : RBLOCK;
                uint8_t *nb = realloc(r->blk, ncap);
                if (!nb) return nomem(err);
                r->blk = nb;
                r->blk_cap = ncap;
            }
        }
        size_t n = r->blk_cap - r->blk_len;
        if (n > len) n = len;
        memcpy(r->blk + r->blk_len, data, n);
        r->blk_len += n;
        data += n;
        len -= n;
    }
    return RT_OK;
}

static int on_copy_end(void *ud, RtError *err)
{
    Restore *r = ud;
    r->in_copy = false;
    r->copies_pending = true;
    if (flush_rows(r, true, err) != RT_OK) return RT_ERR;
    if (r->cw) {
        Job *e = job_new(J_COPY_END, NULL, r->copy_table, r->copy_stmt);
        if (!e) return nomem(err);
        if (enqueue(r, r->cw, e, err) != RT_OK) return RT_ERR;
        r->cw = NULL;
    }
    return RT_OK;
}

/* ---- the sink --------------------------------------------------------------------------- */

/* The first bytes of a stream that is not plain SQL, with what to do instead. */
static int check_format(Restore *r, const uint8_t *d, size_t len, RtError *err)
{
    const char *kind = NULL, *hint = NULL;
    if (len >= 2 && d[0] == 0x1f && d[1] == 0x8b) {
        kind = "gzip-compressed";
        hint = "add crypto.gunzip{} before pgdump.restore in the pipe";
    } else if (len >= 8 && !memcmp(d, "Salted__", 8)) {
        kind = "encrypted (openssl enc)";
        hint = "add crypto.decrypt{} and crypto.gunzip{} before pgdump.restore in the pipe";
    } else if (len >= 5 && !memcmp(d, "PGDMP", 5)) {
        kind = "a pg_dump custom-format archive";
        hint = "restore it with pg_restore, or dump with --format=plain";
    } else if (memchr(d, 0, len)) {
        kind = "binary";
        hint = "pgdump.restore reads plain SQL as written by pg_dump --format=plain";
    }
    if (!kind) return RT_OK;
    rt_error_set(err, RT_CLASS_USAGE, "pgdump.format",
                 "the stream restored into %s is %s, not plain SQL; nothing was restored", r->what,
                 kind);
    rt_error_hint(err, "%s", hint);
    return RT_ERR;
}

static int restore_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    Restore *r = self;
    if (rt_cancelled()) return rt_cancel_error(err);
    if (!r->format_checked && len) {
        r->format_checked = true;
        if (check_format(r, data, len < 4096 ? len : 4096, err) != RT_OK) return RT_ERR;
    }
    pthread_mutex_lock(&r->mu);
    bool failed = r->failed;
    pthread_mutex_unlock(&r->mu);
    if (failed) return barrier(r, err); /* reports the workers' error */
    return pg_split_feed(r->split, data, len, err);
}

static int restore_finish(void *self, RtError *err)
{
    Restore *r = self;
    if (pg_split_finish(r->split, err) != RT_OK) {
        rt_error_hint(err, "%s", PARTIAL_HINT);
        return RT_ERR;
    }
    if (barrier(r, err) != RT_OK) return RT_ERR;
    if (r->in_txn) {
        if (exec_main(r, "COMMIT", r->statements, err) != RT_OK) return RT_ERR;
        r->in_txn = false;
    }
    stop_workers(r, false);
    /* a synchronous commit flushes the WAL of every asynchronous commit of the workers */
    if (r->data_phase &&
        exec_main(r, "SELECT pg_catalog.txid_current()", r->statements, err) != RT_OK)
        return RT_ERR;
    for (int i = 0; i < r->ntabs; i++) {
        TableStat *t = &r->tabs[i];
        pgdump_digest_final_hex(t->md, t->sha256);
    }
    rt_debug("pgdump: restored %lld statements, %d tables, %lld parallel indexes into %s",
             (long long)r->statements, r->ntabs, (long long)r->indexes, r->what);
    double end = rt_monotonic(), data = r->t_data ? r->t_data : end;
    double post = r->t_post ? r->t_post : end;
    rt_debug("pgdump: restore phases: schema %.2f s, data %.2f s, post-data %.2f s",
             data - r->t_start, post - data, end - post);
    return RT_OK;
}

static void restore_abort(void *self)
{
    Restore *r = self;
    stop_workers(r, true);
    if (r->main && r->in_txn) {
        PGresult *res = PQexec(r->main, "ROLLBACK");
        PQclear(res);
        r->in_txn = false;
    }
    rt_warn("pgdump: restore into %s aborted: the target database is partial", r->what);
}

static void restore_results(void *self, RtResults *res)
{
    Restore *r = self;
    rt_results_int(res, "statements", r->statements);
    rt_results_int(res, "indexes", r->indexes);
    RtResults *tabs = rt_results_table(res, "tables");
    for (int i = 0; i < r->ntabs; i++) {
        RtResults *e = rt_results_table(tabs, r->tabs[i].name);
        rt_results_int(e, "rows", r->tabs[i].rows);
        rt_results_int(e, "bytes", r->tabs[i].bytes);
        rt_results_str(e, "sha256", r->tabs[i].sha256);
    }
}

static void restore_destroy(void *self)
{
    Restore *r = self;
    if (!r) return;
    stop_workers(r, true);
    free(r->w);
    if (r->main) PQfinish(r->main);
    pg_split_free(r->split);
    for (int i = 0; i < r->nsession; i++) free(r->session[i]);
    free(r->session);
    for (int i = 0; i < r->ntabs; i++) {
        free(r->tabs[i].name);
        EVP_MD_CTX_free(r->tabs[i].md);
    }
    free(r->tabs);
    free(r->copy_sql);
    free(r->copy_table);
    free(r->blk);
    if (r->url) {
        memset(r->url, 0, strlen(r->url));
        free(r->url);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* Objects a dump would collide with: anything in a user schema, extensions but plpgsql,
 * schemas but public. */
static const char COUNT_SQL[] =
    "SELECT (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON "
    "n.oid = c.relnamespace WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_') + "
    "(SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON "
    "n.oid = p.pronamespace WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_') + "
    "(SELECT count(*) FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON "
    "n.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r', 'm') AND n.nspname <> "
    "'information_schema' AND n.nspname !~ '^pg_') + "
    "(SELECT count(*) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql') + "
    "(SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname <> 'public' AND nspname <> "
    "'information_schema' AND nspname !~ '^pg_')";

/* Drops what COUNT_SQL counts (clean = true). Destructive: the Lua layer asks first. */
static const char CLEAN_SQL[] =
    "DO $clean$ DECLARE r record; BEGIN "
    "FOR r IN SELECT extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' LOOP "
    "  EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname); END LOOP; "
    "FOR r IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> 'public' AND nspname "
    "  <> 'information_schema' AND nspname !~ '^pg_' LOOP "
    "  EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname); END LOOP; "
    "FOR r IN SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace "
    "  n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN "
    "  ('r','p','v','m','S','f') ORDER BY c.relkind IN ('r','p') DESC LOOP "
    "  EXECUTE format('DROP %s IF EXISTS public.%I CASCADE', CASE r.relkind WHEN 'v' THEN 'VIEW' "
    "    WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN "
    "    'FOREIGN TABLE' ELSE 'TABLE' END, r.relname); END LOOP; "
    "FOR r IN SELECT p.oid::regprocedure AS f FROM pg_catalog.pg_proc p WHERE p.pronamespace = "
    "  'public'::regnamespace LOOP "
    "  EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', r.f); END LOOP; "
    "FOR r IN SELECT t.typname, t.typtype FROM pg_catalog.pg_type t WHERE t.typnamespace = "
    "  'public'::regnamespace AND t.typtype IN ('e','d','r','m','c','b') AND (t.typrelid = 0 OR "
    "  (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c') AND t.typelem = 0 "
    "  LOOP "
    "  EXECUTE format('DROP %s IF EXISTS public.%I CASCADE', CASE r.typtype WHEN 'd' THEN "
    "    'DOMAIN' ELSE 'TYPE' END, r.typname); END LOOP; "
    "END $clean$";

static int check_target(Restore *r, RtError *err)
{
    PGresult *res = PQexec(r->main, COUNT_SQL);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        char w[320];
        snprintf(w, sizeof w, "cannot inspect %s", r->what);
        return pgdump_conn_error(r->main, err, "pgdump.restore", w);
    }
    long long n = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (n == 0) return RT_OK;
    if (r->clean) {
        rt_warn("pgdump: dropping %lld existing objects of %s (clean = true)", n, r->what);
        if (pgdump_exec(r->main, CLEAN_SQL, err) != RT_OK) return RT_ERR;
        r->clean = false;
        return check_target(r, err);
    }
    rt_error_set(err, RT_CLASS_USAGE, "pgdump.target_not_empty",
                 "%s is not empty (%lld objects): a restore needs an empty database", r->what, n);
    rt_error_hint(err, "restore into a new empty database, or pass clean = true to drop the "
                       "existing objects first (destructive)");
    return RT_ERR;
}

RtSink *pgdump_restore_sink(const PgRestoreOptions *opt, RtError *err)
{
    Restore *r = calloc(1, sizeof *r);
    if (!r) {
        nomem(err);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    rt_error_init(&r->werr);
    r->cur_tab = -1;
    r->t_start = rt_monotonic();
    r->url = xstrdup(opt->url ? opt->url : "");
    r->jobs = opt->jobs > 0 ? opt->jobs : 2;
    r->clean = opt->clean;
    r->chunk = opt->chunk_bytes > 0 ? (size_t)opt->chunk_bytes : (size_t)8 << 20;
    pgdump_describe(r->url, r->what, sizeof r->what);
    static const PgSplitEvents ev = {on_statement, on_meta, on_copy_data, on_copy_end};
    r->split = pg_split_new(&ev, r, (size_t)64 << 20); /* memory stays bounded on garbage */
    r->blk = malloc(RBLOCK);
    r->blk_cap = RBLOCK;
    RtSink *k = NULL;
    if (!r->url || !r->split || !r->blk) {
        nomem(err);
        goto fail;
    }
    r->main = pgdump_connect(r->url, "clubio-dr pgdump restore", err);
    if (!r->main) goto fail;
    if (check_target(r, err) != RT_OK) goto fail;
    k = rt_sink_new();
    if (!k) {
        nomem(err);
        goto fail;
    }
    k->name = "pgdump.restore";
    k->self = r;
    k->write = restore_write;
    k->finish = restore_finish;
    k->abort = restore_abort;
    k->results = restore_results;
    k->destroy = restore_destroy;
    return k;
fail:
    restore_destroy(r);
    return NULL;
}
