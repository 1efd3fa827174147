/*
 * The restore sink: loads a plain-SQL stream (ours or stock pg_dump's) into an empty database,
 * streaming — no temp files — and in parallel where the dump's structure allows it.
 *
 *   pre-data   every statement up to the first COPY runs on the main connection in
 *              transactions of PRE_DATA_BATCH statements (a failure in a small schema leaves
 *              nothing behind), committed when the first COPY arrives;
 *   data       COPY data is cut at row boundaries into blocks that go into one bounded queue
 *              (memory stays flat); each of the `jobs` worker connections takes the next block
 *              as soon as it is free, so even one big table loads on every connection and no
 *              connection waits while another has work queued. A worker keeps its COPY command
 *              open from block to block of the same table, and ends it (a commit) when the
 *              next block is another table's, after chunk_bytes, or at a barrier;
 *   post-data  any other statement after the first COPY waits until all data is in (a
 *              barrier: queued blocks loaded, every COPY command ended), then runs on the main
 *              connection — except CREATE INDEX and PRIMARY KEY/UNIQUE constraints, which are
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

#define RBLOCK (256 * 1024)
/* COPY data queued for the workers, all tables together: twice the default chunk, so that the
 * reader never waits on one connection while another runs dry */
#define DQUEUE_MAX ((size_t)16 << 20)
/* Schema statements per transaction: one transaction for a whole big schema could run out of
 * lock slots (max_locks_per_transaction), as pg_restore --single-transaction can. */
#define PRE_DATA_BATCH 1000

/* The COPY statement of one table's data: shared by its blocks (refs under Restore.mu). */
typedef struct CopyCmd {
    char *sql;   /* COPY ... FROM stdin; */
    char *table; /* for messages */
    int64_t stmt;
    int refs;
} CopyCmd;

typedef struct Job {
    struct Job *next;
    CopyCmd *copy; /* a block of COPY data (whole rows) of this COPY ... */
    uint8_t *data;
    size_t len;
    char *sql; /* ... or a statement */
    int64_t stmt;
} Job;

typedef struct Restore Restore;

typedef struct Worker {
    Restore *r;
    PGconn *c;
    pthread_t th;
    bool started;
    Job *head, *tail; /* statements for this connection only (session settings) */
    CopyCmd *open;    /* the COPY command in progress on this connection, or NULL */
    size_t open_bytes;
} Worker;

typedef struct TableStat {
    char *name;
    int64_t rows, bytes;
    EVP_MD_CTX *md; /* digests = true */
    char sha256[65];
    PgSetDigest set; /* set_digests = true */
    bool autovacuum_checked, autovacuum_paused;
} TableStat;

struct Restore {
    char *url;
    char what[256];
    int jobs;
    bool clean, digests, set_digests;
    PgRowHash *row_hash; /* set_digests: the row being hashed */
    size_t chunk;
    PGconn *main;
    PgSplit *split;
    bool data_phase, in_txn;
    char **session;
    int nsession;
    Worker *w;
    int nw;
    /* under mu: */
    Job *data_head, *data_tail; /* COPY data blocks, for whichever worker is free */
    size_t data_queued;         /* bytes */
    Job *any_head, *any_tail;   /* index builds, for whichever worker is free */
    int active;                 /* jobs taken and not finished */
    int own_pending;            /* jobs in the workers' own queues */
    int open_copies;            /* workers with a COPY command in progress */
    bool closing;               /* a barrier: workers end their COPY commands */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool failed, stop;
    RtError werr;
    CopyCmd *copy; /* of the COPY block being read */
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
    bool copies_pending; /* COPY data queued since the last barrier */
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

static CopyCmd *copy_new(const char *sql, const char *table, int64_t stmt)
{
    CopyCmd *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->sql = xstrdup(sql);
    c->table = xstrdup(table);
    c->stmt = stmt;
    c->refs = 1;
    if (!c->sql || !c->table) {
        free(c->sql);
        free(c->table);
        free(c);
        return NULL;
    }
    return c;
}

/* Drops a reference; the caller holds r->mu or is the only thread left. */
static void copy_unref(CopyCmd *c)
{
    if (c && --c->refs == 0) {
        free(c->sql);
        free(c->table);
        free(c);
    }
}

static void job_free(Restore *r, Job *j)
{
    if (!j) return;
    if (j->copy) {
        pthread_mutex_lock(&r->mu);
        copy_unref(j->copy);
        pthread_mutex_unlock(&r->mu);
    }
    free(j->sql);
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

/* Reports a failed COPY: the server's error result if it sent one, else libpq's message. */
static void copy_failed(Worker *w, RtError *e, const CopyCmd *cc)
{
    PGresult *res, *bad = NULL;
    while ((res = PQgetResult(w->c))) {
        ExecStatusType st = PQresultStatus(res);
        if (!bad && st == PGRES_FATAL_ERROR) {
            bad = res;
            continue;
        }
        PQclear(res);
        if (st == PGRES_COPY_IN) break; /* still in COPY: there is no result to wait for */
    }
    fail_statement(w->r, e, w->c, bad, cc->stmt, cc->table, cc->sql);
    PQclear(bad);
}

/* Forgets this worker's COPY command (ended, or abandoned after an error: the restore stops and
 * closing the connection rolls it back). */
static void copy_release(Worker *w)
{
    pthread_mutex_lock(&w->r->mu);
    copy_unref(w->open);
    w->open = NULL;
    w->r->open_copies--;
    pthread_mutex_unlock(&w->r->mu);
}

/* Ends this worker's COPY command (its commit). */
static int copy_end(Worker *w, RtError *e)
{
    CopyCmd *cc = w->open;
    int rc = RT_OK;
    if (PQputCopyEnd(w->c, NULL) != 1) {
        copy_failed(w, e, cc);
        rc = RT_ERR;
    } else {
        PGresult *res;
        while ((res = PQgetResult(w->c))) {
            if (PQresultStatus(res) != PGRES_COMMAND_OK && !e->set) {
                fail_statement(w->r, e, w->c, res, cc->stmt, cc->table, cc->sql);
                rc = RT_ERR;
            }
            PQclear(res);
        }
    }
    copy_release(w);
    return rc;
}

/* Loads one block, in the COPY command already open for its table or in a new one. */
static int copy_block(Worker *w, Job *j, RtError *e)
{
    Restore *r = w->r;
    if (w->open && (w->open != j->copy || w->open_bytes >= r->chunk) && copy_end(w, e) != RT_OK)
        return RT_ERR;
    if (!w->open) {
        PGresult *res = PQexec(w->c, j->copy->sql);
        if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
            fail_statement(r, e, w->c, res, j->copy->stmt, j->copy->table, j->copy->sql);
            PQclear(res);
            return RT_ERR;
        }
        PQclear(res);
        pthread_mutex_lock(&r->mu);
        j->copy->refs++;
        w->open = j->copy;
        r->open_copies++;
        pthread_mutex_unlock(&r->mu);
        w->open_bytes = 0;
    }
    if (PQputCopyData(w->c, (const char *)j->data, (int)j->len) != 1) {
        copy_failed(w, e, j->copy);
        copy_release(w);
        return RT_ERR;
    }
    w->open_bytes += j->len;
    return RT_OK;
}

static int exec_job(Worker *w, Job *j, RtError *e)
{
    PGresult *res = PQexec(w->c, j->sql);
    int rc = RT_OK;
    if (!res ||
        (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)) {
        fail_statement(w->r, e, w->c, res, j->stmt, NULL, j->sql);
        rc = RT_ERR;
    }
    PQclear(res);
    return rc;
}

static void push(Job **head, Job **tail, Job *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static Job *pop(Job **head, Job **tail)
{
    Job *j = *head;
    *head = j->next;
    if (!*head) *tail = NULL;
    return j;
}

static void *worker_main(void *arg)
{
    Worker *w = arg;
    Restore *r = w->r;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        Job *j = NULL;
        bool end = false, own = false;
        if (r->data_head) {
            j = pop(&r->data_head, &r->data_tail);
            r->data_queued -= j->len;
        } else if (w->open && (r->closing || w->head || r->any_head)) {
            end = true; /* no more data for now: commit before anything else */
        } else if (w->head) {
            j = pop(&w->head, &w->tail);
            own = true;
        } else if (r->any_head) {
            j = pop(&r->any_head, &r->any_tail);
        } else {
            pthread_cond_wait(&r->cv, &r->mu);
            continue;
        }
        r->active++;
        bool failed = r->failed;
        pthread_cond_broadcast(&r->cv); /* queue space for the reader */
        pthread_mutex_unlock(&r->mu);

        RtError e;
        rt_error_init(&e);
        if (end) {
            if (failed)
                copy_release(w);
            else
                copy_end(w, &e);
        } else if (!failed) {
            if (j->copy)
                copy_block(w, j, &e);
            else
                exec_job(w, j, &e);
        }
        if (e.set) worker_failed(r, &e);
        job_free(r, j);

        pthread_mutex_lock(&r->mu);
        r->active--;
        if (own) r->own_pending--;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static bool timed_wait(Restore *r)
{
    rt_cond_wait_ms(&r->cv, &r->mu, 200);
    return !rt_cancelled();
}

/* The first worker error (RT_ERR) or cancellation; r->mu held. */
static int queue_error(Restore *r, RtError *err)
{
    if (r->failed) {
        rt_error_copy(err, &r->werr);
        return RT_ERR;
    }
    return rt_cancelled() ? rt_cancel_error(err) : RT_OK;
}

/* Queues a block of COPY data (taking it), waiting while the queue is full. */
static int enqueue_data(Restore *r, Job *j, RtError *err)
{
    pthread_mutex_lock(&r->mu);
    while (r->data_queued >= DQUEUE_MAX && !r->failed && timed_wait(r)) {
    }
    int rc = queue_error(r, err);
    if (rc == RT_OK) {
        push(&r->data_head, &r->data_tail, j);
        r->data_queued += j->len;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (rc != RT_OK) job_free(r, j);
    return rc;
}

/* Queues a statement (taking it) for one worker, or for whichever is free first (w NULL). */
static void enqueue_exec(Restore *r, Worker *w, Job *j)
{
    pthread_mutex_lock(&r->mu);
    push(w ? &w->head : &r->any_head, w ? &w->tail : &r->any_tail, j);
    if (w) r->own_pending++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static Job *exec_new(const char *sql, int64_t stmt)
{
    Job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->stmt = stmt;
    if (!(j->sql = xstrdup(sql))) {
        free(j);
        return NULL;
    }
    return j;
}

/* Waits until every queued job is done and every COPY command ended; RT_ERR with the first
 * worker error. */
static int barrier(Restore *r, RtError *err)
{
    pthread_mutex_lock(&r->mu);
    r->closing = true;
    pthread_cond_broadcast(&r->cv);
    while (!r->failed &&
           (r->data_head || r->any_head || r->active || r->own_pending || r->open_copies) &&
           timed_wait(r)) {
    }
    r->closing = false;
    int rc = queue_error(r, err);
    pthread_mutex_unlock(&r->mu);
    return rc;
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

static void free_jobs(Restore *r, Job **head, Job **tail)
{
    while (*head) job_free(r, pop(head, tail));
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
        free_jobs(r, &w->head, &w->tail);
        if (w->open) { /* aborted mid-COPY: closing the connection rolls it back */
            copy_unref(w->open);
            w->open = NULL;
        }
        if (w->c) PQfinish(w->c);
        w->c = NULL;
    }
    free_jobs(r, &r->data_head, &r->data_tail);
    free_jobs(r, &r->any_head, &r->any_tail);
    r->data_queued = 0;
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
    if (r->digests) t->md = EVP_MD_CTX_new();
    if (!t->name || (r->digests && !t->md)) {
        free(t->name);
        EVP_MD_CTX_free(t->md);
        return nomem(err), NULL;
    }
    if (t->md) EVP_DigestInit_ex(t->md, EVP_sha256(), NULL);
    r->cur_tab = r->ntabs++;
    return t;
}

static int exec_main(Restore *r, const char *sql, int64_t stmt, RtError *err)
{
    bool cancelled = false;
    PGresult *res = pgdump_exec_cancellable(r->main, sql, 0, NULL, &cancelled);
    if (cancelled) {
        PQclear(res);
        return rt_cancel_error(err);
    }
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
        char *table = copy_table_name(body);
        CopyCmd *c = table ? copy_new(body, table, stmt) : NULL;
        free(table);
        if (!c) return nomem(err);
        pthread_mutex_lock(&r->mu);
        copy_unref(r->copy);
        r->copy = c;
        pthread_mutex_unlock(&r->mu);
        r->blk_len = 0;
        return table_stat(r, c->table, err) ? RT_OK : RT_ERR;
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
        Job *j = exec_new(body, stmt);
        if (!j) return nomem(err);
        enqueue_exec(r, NULL, j);
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
            Job *j = exec_new(body, stmt);
            if (!j) return nomem(err);
            enqueue_exec(r, &r->w[i], j);
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

/*
 * Autovacuum would visit a table as soon as its rows are in (PostgreSQL 13+ vacuums after
 * inserts) and hold a lock that our CREATE INDEX then waits on until the server cancels the
 * vacuum, after deadlock_timeout (1 s) each time: measured, it made one restore in four 1.3 s
 * slower. So a table with more than one block of data gets autovacuum_enabled = false while
 * it loads, unless its dump set that option itself, and restore_finish resets it.
 */
/* ALTER TABLE <t> <clause> on the main connection. Names are at most 2 x (63 x 2 + 2) bytes
 * (identifiers, quotes doubled), so the buffer always holds the statement. */
static bool alter_table(Restore *r, const TableStat *t, const char *clause)
{
    char sql[640];
    if ((size_t)snprintf(sql, sizeof sql, "ALTER TABLE %s %s", t->name, clause) >= sizeof sql)
        return false;
    PGresult *res = PQexec(r->main, sql);
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

static void pause_autovacuum(Restore *r, TableStat *t)
{
    t->autovacuum_checked = true;
    const char *params[1] = {t->name};
    PGresult *res = PQexecParams(
        r->main,
        "SELECT c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(c.reloptions) o "
        "WHERE o LIKE 'autovacuum\\_enabled=%') FROM pg_catalog.pg_class c WHERE c.oid = "
        "$1::pg_catalog.regclass",
        1, NULL, params, NULL, NULL, 0);
    bool pause = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                 !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (pause) t->autovacuum_paused = alter_table(r, t, "SET (autovacuum_enabled = false)");
}

/* Resets what pause_autovacuum set; `err` NULL: best effort (the restore failed anyway). */
static int resume_autovacuum(Restore *r, RtError *err)
{
    for (int i = 0; i < r->ntabs; i++) {
        TableStat *t = &r->tabs[i];
        if (!t->autovacuum_paused) continue;
        if (alter_table(r, t, "RESET (autovacuum_enabled)")) {
            t->autovacuum_paused = false;
        } else if (err) {
            char msg[400];
            server_message(r->main, NULL, msg, sizeof msg);
            rt_error_set(err, RT_CLASS_FAILURE, "pgdump.restore",
                         "restore into %s: all data is in, but autovacuum of table %s, paused "
                         "while it loaded, could not be turned back on: %s",
                         r->what, t->name, msg);
            rt_error_hint(err, "run ALTER TABLE %s RESET (autovacuum_enabled) on the target",
                          t->name);
            return RT_ERR;
        }
    }
    return RT_OK;
}

/* Queues the filled part of the block (whole rows only unless `all`) for the workers. */
static int flush_rows(Restore *r, bool all, RtError *err)
{
    size_t n = r->blk_len;
    if (!all) {
        while (n && r->blk[n - 1] != '\n') n--;
        if (n == 0) return RT_OK; /* one row longer than the block: let it grow */
        TableStat *t = &r->tabs[r->cur_tab];
        if (!t->autovacuum_checked) pause_autovacuum(r, t);
    }
    if (n == 0) return RT_OK;
    /* the block becomes the job's data; what follows its last whole row starts a new one */
    size_t rest = r->blk_len - n, ncap = rest > RBLOCK ? rest : RBLOCK;
    Job *j = calloc(1, sizeof *j);
    uint8_t *nb = malloc(ncap);
    if (!j || !nb) {
        free(j);
        free(nb);
        return nomem(err);
    }
    memcpy(nb, r->blk + n, rest);
    j->data = r->blk;
    j->len = n;
    r->blk = nb;
    r->blk_cap = ncap;
    r->blk_len = rest;
    pthread_mutex_lock(&r->mu);
    j->copy = r->copy;
    r->copy->refs++;
    pthread_mutex_unlock(&r->mu);
    r->copies_pending = true;
    return enqueue_data(r, j, err);
}

static int on_copy_data(void *ud, const uint8_t *data, size_t len, RtError *err)
{
    Restore *r = ud;
    TableStat *t = &r->tabs[r->cur_tab];
    if (t->md) EVP_DigestUpdate(t->md, data, len);
    t->bytes += (int64_t)len;
    for (const uint8_t *p = data, *e = data + len; p < e;) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(e - p));
        const uint8_t *end = nl ? nl + 1 : e;
        /* set_digests: each row's hash (a row may span calls), summed into its table's: here,
         * on the reader's thread, which runs ahead of the connections by the queued blocks */
        if (r->row_hash) {
            pgdump_row_hash_update(r->row_hash, p, (size_t)(end - p));
            if (nl) pgdump_row_hash_end(r->row_hash, &t->set);
        }
        if (nl) t->rows++;
        p = end;
    }
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
    return flush_rows(ud, true, err);
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
    if (resume_autovacuum(r, err) != RT_OK) return RT_ERR;
    /* a synchronous commit flushes the WAL of every asynchronous commit of the workers */
    if (r->data_phase &&
        exec_main(r, "SELECT pg_catalog.txid_current()", r->statements, err) != RT_OK)
        return RT_ERR;
    for (int i = 0; i < r->ntabs; i++) {
        TableStat *t = &r->tabs[i];
        if (t->md) pgdump_digest_final_hex(t->md, t->sha256);
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
    if (r->main && PQstatus(r->main) == CONNECTION_OK) resume_autovacuum(r, NULL);
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
        if (r->tabs[i].md) rt_results_str(e, "sha256", r->tabs[i].sha256);
        if (r->set_digests) {
            char hex[65];
            pgdump_set_digest_hex(&r->tabs[i].set, hex);
            rt_results_str(e, "set_sha256", hex);
        }
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
    pgdump_row_hash_free(r->row_hash);
    for (int i = 0; i < r->nsession; i++) free(r->session[i]);
    free(r->session);
    for (int i = 0; i < r->ntabs; i++) {
        free(r->tabs[i].name);
        EVP_MD_CTX_free(r->tabs[i].md);
    }
    free(r->tabs);
    copy_unref(r->copy);
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
    r->digests = opt->digests;
    r->set_digests = opt->set_digests;
    if (r->set_digests) r->row_hash = pgdump_row_hash_new();
    r->chunk = opt->chunk_bytes > 0 ? (size_t)opt->chunk_bytes : (size_t)8 << 20;
    pgdump_describe(r->url, r->what, sizeof r->what);
    static const PgSplitEvents ev = {on_statement, on_meta, on_copy_data, on_copy_end};
    r->split = pg_split_new(&ev, r, (size_t)64 << 20); /* memory stays bounded on garbage */
    r->blk = malloc(RBLOCK);
    r->blk_cap = RBLOCK;
    RtSink *k = NULL;
    if (!r->url || !r->split || !r->blk || (r->set_digests && !r->row_hash)) {
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
