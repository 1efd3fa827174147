/*
 * RtPipe — see pipe.h.
 *
 * Stages are joined by queues. A queue owns `depth` buffers that cycle between two lists:
 * `free` (empty, for the producer) and `full` (filled, in order, for the consumer). An observing
 * filter passes bytes on without copying by swapping the data pointers of the buffer it
 * received and an empty buffer of its output queue (all buffers of a pipe have one size).
 *
 * Failure: the first error is recorded under the pipe's lock, `failed` is set and every queue is
 * woken; each stage thread returns at its next queue operation. Waits are timed so that a
 * cancel (SIGINT, --timeout) is noticed within 100 ms even when no stage moves. After all
 * threads have joined, the sink is aborted unless it finished.
 */
#include "pipe.h"
#include "../timestamp.h"
#include "cancel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BUFFER (256 * 1024)
#define DEFAULT_DEPTH  4
#define MAX_STAGES     32

typedef struct Queue {
    RtBuf *bufs; /* depth buffers */
    RtBuf **free_list;
    int n_free;
    RtBuf **full; /* ring */
    int full_head, n_full;
    int depth;
    bool eof;   /* producer closed */
    bool ready; /* mu and cond initialised (queue_destroy undoes only what queue_init did) */
    pthread_mutex_t mu;
    pthread_cond_t cond;
} Queue;

typedef enum { ST_SOURCE, ST_FILTER, ST_SINK } StageKind;

typedef struct Stage {
    StageKind kind;
    union {
        RtSource *src;
        RtFilter *flt;
        RtSink *sink;
    } u;
    char label[64];
    Queue *in, *out;
    pthread_t thread;
    bool started;
    struct RtPipe *pipe;
} Stage;

struct RtPipe {
    RtPipeOptions opts;
    Stage stages[MAX_STAGES];
    int n_stages;
    bool has_source, has_sink, ran, sink_finished;
    Queue *queues;
    int n_queues;
    pthread_mutex_t mu;
    atomic_bool failed;
    RtError err;
    atomic_uint_fast64_t bytes_in, bytes_out;
    double t_start;
    RtResults *results;
    bool setup_failed;
    RtError setup_err;
    bool queues_ready; /* under mu: the queues exist (a stop may wake them) */
    /* rt_pipe_start's thread */
    pthread_t runner;
    bool runner_started, runner_joined;
    int runner_rc;
    RtError runner_err;
    /* progress monitor */
    pthread_t monitor;
    bool monitor_started;
    atomic_bool done;
};

/* ---- failure ---------------------------------------------------------------------------- */

static void pipe_fail(RtPipe *p, const RtError *err)
{
    pthread_mutex_lock(&p->mu);
    if (err && err->set)
        rt_error_copy(&p->err, err);
    else if (!p->err.set)
        rt_error_set(&p->err, RT_CLASS_FAILURE, "pipe.failed", "a pipe stage failed");
    atomic_store(&p->failed, true);
    bool wake = p->queues_ready; /* (a stop may come before the queues exist) */
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; wake && i < p->n_queues; i++) {
        pthread_mutex_lock(&p->queues[i].mu);
        pthread_cond_broadcast(&p->queues[i].cond);
        pthread_mutex_unlock(&p->queues[i].mu);
    }
}

/* Returns false (and fails the pipe) if the pipe failed or the process was cancelled. */
static bool pipe_alive(RtPipe *p)
{
    if (atomic_load(&p->failed)) return false;
    if (rt_cancelled()) {
        RtError e;
        rt_error_init(&e);
        rt_cancel_error(&e);
        pipe_fail(p, &e);
        return false;
    }
    return true;
}

/* ---- queues ----------------------------------------------------------------------------- */

static void queue_destroy(Queue *q)
{
    if (q->bufs)
        for (int i = 0; i < q->depth; i++) rt_buf_free(&q->bufs[i]);
    free(q->bufs);
    free(q->free_list);
    free(q->full);
    if (q->ready) {
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cond);
    }
    memset(q, 0, sizeof *q);
}

/* On failure everything is freed again (the queue is left empty, safe to queue_destroy). */
static int queue_init(Queue *q, int depth, size_t bufsize)
{
    memset(q, 0, sizeof *q);
    q->depth = depth;
    q->bufs = calloc((size_t)depth, sizeof *q->bufs);
    q->free_list = calloc((size_t)depth, sizeof *q->free_list);
    q->full = calloc((size_t)depth, sizeof *q->full);
    bool ok = q->bufs && q->free_list && q->full;
    for (int i = 0; ok && i < depth; i++) {
        ok = rt_buf_alloc(&q->bufs[i], bufsize) == 0;
        if (ok) q->free_list[q->n_free++] = &q->bufs[i];
    }
    if (!ok) {
        queue_destroy(q);
        return -1;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->ready = true;
    return 0;
}

static void timed_wait(Queue *q)
{
    rt_cond_wait_ms(&q->cond, &q->mu, 100);
}

/* An empty buffer for the producer, or NULL if the pipe failed. */
static RtBuf *queue_get_free(RtPipe *p, Queue *q)
{
    pthread_mutex_lock(&q->mu);
    while (q->n_free == 0) {
        pthread_mutex_unlock(&q->mu);
        if (!pipe_alive(p)) return NULL;
        pthread_mutex_lock(&q->mu);
        if (q->n_free == 0) timed_wait(q);
    }
    RtBuf *b = q->free_list[--q->n_free];
    pthread_mutex_unlock(&q->mu);
    rt_buf_reset(b);
    return b;
}

static void queue_put_free(Queue *q, RtBuf *b)
{
    pthread_mutex_lock(&q->mu);
    q->free_list[q->n_free++] = b;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

static void queue_push_full(Queue *q, RtBuf *b)
{
    pthread_mutex_lock(&q->mu);
    q->full[(q->full_head + q->n_full) % q->depth] = b;
    q->n_full++;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

static void queue_close(Queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->eof = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

/* The next filled buffer; NULL with *eof set at the end of the stream, NULL without it if the
 * pipe failed. */
static RtBuf *queue_pop_full(RtPipe *p, Queue *q, bool *eof)
{
    *eof = false;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->n_full > 0) {
            RtBuf *b = q->full[q->full_head];
            q->full_head = (q->full_head + 1) % q->depth;
            q->n_full--;
            pthread_mutex_unlock(&q->mu);
            if (!pipe_alive(p)) {
                queue_put_free(q, b);
                return NULL;
            }
            return b;
        }
        if (q->eof) {
            pthread_mutex_unlock(&q->mu);
            *eof = true;
            return NULL;
        }
        pthread_mutex_unlock(&q->mu);
        if (!pipe_alive(p)) return NULL;
        pthread_mutex_lock(&q->mu);
        if (q->n_full == 0 && !q->eof) timed_wait(q);
    }
}

/* ---- stage threads ---------------------------------------------------------------------- */

static void stage_error(Stage *s, RtError *err, const char *what)
{
    if (!err->set)
        rt_error_set(err, RT_CLASS_FAILURE, "pipe.stage", "%s stage '%s' failed without saying why",
                     what, s->label);
    pipe_fail(s->pipe, err);
}

static void *source_main(void *arg);
static void *observe_main(void *arg);
static void *filter_main(void *arg);
static void *sink_main(void *arg);

/* Each stage thread sees its pipe's failure through rt_cancelled() (cancel.h). */
static void *stage_thread(void *arg)
{
    Stage *s = arg;
    rt_cancel_scope(&s->pipe->failed);
    void *(*fn)(void *) = s->kind == ST_SOURCE ? source_main
                          : s->kind == ST_SINK ? sink_main
                          : s->u.flt->process  ? filter_main
                                               : observe_main;
    fn(s);
    rt_cancel_scope(NULL);
    return NULL;
}

static void *source_main(void *arg)
{
    Stage *s = arg;
    RtPipe *p = s->pipe;
    RtSource *src = s->u.src;
    RtError err;
    rt_error_init(&err);
    for (;;) {
        RtBuf *b = queue_get_free(p, s->out);
        if (!b) return NULL;
        size_t got = 0;
        bool eof = false;
        if (src->read(src->self, b->data, b->size, &got, &eof, &err) != RT_OK) {
            queue_put_free(s->out, b);
            stage_error(s, &err, "source");
            return NULL;
        }
        if (got > b->size) got = b->size;
        b->used = got;
        atomic_fetch_add(&p->bytes_in, got);
        if (got)
            queue_push_full(s->out, b);
        else
            queue_put_free(s->out, b);
        if (eof) {
            queue_close(s->out);
            return NULL;
        }
        if (!got && !pipe_alive(p)) return NULL;
    }
}

static void *observe_main(void *arg)
{
    Stage *s = arg;
    RtPipe *p = s->pipe;
    RtFilter *f = s->u.flt;
    RtError err;
    rt_error_init(&err);
    for (;;) {
        bool eof;
        RtBuf *in = queue_pop_full(p, s->in, &eof);
        if (!in) {
            if (!eof) return NULL;
            if (f->observe(f->self, NULL, 0, &err) != RT_OK) {
                stage_error(s, &err, "filter");
                return NULL;
            }
            queue_close(s->out);
            return NULL;
        }
        if (f->observe(f->self, rt_buf_rptr(in), rt_buf_remain(in), &err) != RT_OK) {
            queue_put_free(s->in, in);
            stage_error(s, &err, "filter");
            return NULL;
        }
        RtBuf *out = queue_get_free(p, s->out);
        if (!out) {
            queue_put_free(s->in, in);
            return NULL;
        }
        RtBuf tmp = *out; /* pass the bytes on by swapping storage, not copying */
        *out = *in;
        *in = tmp;
        rt_buf_reset(in);
        queue_put_free(s->in, in);
        queue_push_full(s->out, out);
    }
}

static void *filter_main(void *arg)
{
    Stage *s = arg;
    RtPipe *p = s->pipe;
    RtFilter *f = s->u.flt;
    RtError err;
    rt_error_init(&err);
    RtBuf *out = NULL;
    bool flushing = false, done = false;
    while (!done) {
        bool eof = false;
        RtBuf *in = NULL;
        if (!flushing) {
            in = queue_pop_full(p, s->in, &eof);
            if (!in && !eof) goto stop;
            if (!in) flushing = true;
        }
        /* Feed this input (or the flush) until consumed (or done), draining output as it fills. */
        while (flushing ? !done : rt_buf_remain(in) > 0) {
            if (!out && !(out = queue_get_free(p, s->out))) goto stop_in;
            size_t pos0 = in ? in->pos : 0, used0 = out->used;
            if (f->process(f->self, in, out, &done, &err) != RT_OK) {
                stage_error(s, &err, "filter");
                goto stop_in;
            }
            bool progressed = (in && in->pos != pos0) || out->used != used0 || done;
            if (rt_buf_space(out) == 0 || (!progressed && out->used > 0)) {
                queue_push_full(s->out, out); /* full, or the filter needs a fresh buffer */
                out = NULL;
            } else if (!progressed) {
                rt_error_set(&err, RT_CLASS_FAILURE, "pipe.stalled", "filter '%s' made no progress",
                             s->label);
                stage_error(s, &err, "filter");
                goto stop_in;
            }
            if (!pipe_alive(p)) goto stop_in;
        }
        if (in) queue_put_free(s->in, in);
        continue;
    stop_in:
        if (in) queue_put_free(s->in, in);
        goto stop;
    }
    if (out) {
        if (out->used)
            queue_push_full(s->out, out);
        else
            queue_put_free(s->out, out);
        out = NULL;
    }
    queue_close(s->out);
    return NULL;
stop:
    if (out) queue_put_free(s->out, out);
    return NULL;
}

static void *sink_main(void *arg)
{
    Stage *s = arg;
    RtPipe *p = s->pipe;
    RtSink *k = s->u.sink;
    RtError err;
    rt_error_init(&err);
    for (;;) {
        bool eof;
        RtBuf *in = queue_pop_full(p, s->in, &eof);
        if (!in) {
            if (!eof || !pipe_alive(p)) return NULL;
            if (k->finish(k->self, &err) != RT_OK) {
                stage_error(s, &err, "sink");
                return NULL;
            }
            pthread_mutex_lock(&p->mu);
            p->sink_finished = true;
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        size_t n = rt_buf_remain(in);
        int rc = k->write(k->self, rt_buf_rptr(in), n, &err);
        queue_put_free(s->in, in);
        if (rc != RT_OK) {
            stage_error(s, &err, "sink");
            return NULL;
        }
        atomic_fetch_add(&p->bytes_out, n);
    }
}

static void *monitor_main(void *arg)
{
    RtPipe *p = arg;
    double interval = p->opts.progress_interval > 0 ? p->opts.progress_interval : 0.5;
    while (!atomic_load(&p->done)) {
        double until = rt_monotonic() + interval;
        while (!atomic_load(&p->done) && rt_monotonic() < until) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (atomic_load(&p->done)) break;
        RtProgress pr = {atomic_load(&p->bytes_in), atomic_load(&p->bytes_out), -1,
                         rt_monotonic() - p->t_start, false};
        RtSource *src = p->stages[0].u.src;
        if (src->size_hint) pr.total = src->size_hint(src->self);
        p->opts.progress(p->opts.progress_ud, &pr);
    }
    return NULL;
}

/* ---- construction ----------------------------------------------------------------------- */

RtPipe *rt_pipe_new(const RtPipeOptions *opts)
{
    RtPipe *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (opts) p->opts = *opts;
    if (p->opts.buffer_size == 0) p->opts.buffer_size = DEFAULT_BUFFER;
    if (p->opts.queue_depth <= 0) p->opts.queue_depth = DEFAULT_DEPTH;
    pthread_mutex_init(&p->mu, NULL);
    rt_error_init(&p->err);
    rt_error_init(&p->setup_err);
    return p;
}

static void destroy_stage_obj(StageKind kind, void *obj)
{
    if (kind == ST_SOURCE)
        rt_source_free(obj);
    else if (kind == ST_FILTER)
        rt_filter_free(obj);
    else
        rt_sink_free(obj);
}

static int add_stage(RtPipe *p, StageKind kind, void *obj, const char *name, const char *label)
{
    const char *why = NULL;
    if (!obj)
        why = "stage is missing";
    else if (p->ran)
        why = "pipe already ran";
    else if (p->n_stages >= MAX_STAGES - 1)
        why = "too many stages";
    else if (kind == ST_SOURCE && p->has_source)
        why = "pipe already has a source";
    else if (kind != ST_SINK && p->has_sink)
        why = "stage added after the sink";
    else if (kind == ST_SINK && p->has_sink)
        why = "pipe already has a sink";
    else if (kind != ST_SOURCE && !p->has_source)
        why = "source must come first";
    if (why) {
        if (obj) destroy_stage_obj(kind, obj);
        p->setup_failed = true;
        return rt_error_set(&p->setup_err, RT_CLASS_USAGE, "pipe.setup", "bad pipe: %s", why);
    }
    Stage *s = &p->stages[p->n_stages++];
    s->kind = kind;
    s->pipe = p;
    if (kind == ST_SOURCE)
        s->u.src = obj;
    else if (kind == ST_FILTER)
        s->u.flt = obj;
    else
        s->u.sink = obj;
    /* unique label: "sha256", "sha256_2", ... */
    const char *base = label && *label ? label : (name ? name : "stage");
    snprintf(s->label, sizeof s->label, "%s", base);
    for (int n = 2;; n++) {
        bool dup = false;
        for (int i = 0; i < p->n_stages - 1; i++)
            if (strcmp(p->stages[i].label, s->label) == 0) dup = true;
        if (!dup) break;
        snprintf(s->label, sizeof s->label, "%.50s_%d", base, n);
    }
    if (kind == ST_SOURCE) p->has_source = true;
    if (kind == ST_SINK) p->has_sink = true;
    return RT_OK;
}

int rt_pipe_set_source(RtPipe *p, RtSource *src, const char *label)
{
    return add_stage(p, ST_SOURCE, src, src ? src->name : NULL, label);
}

int rt_pipe_add_filter(RtPipe *p, RtFilter *f, const char *label)
{
    if (f && !f->process && !f->observe) {
        rt_filter_free(f);
        p->setup_failed = true;
        return rt_error_set(&p->setup_err, RT_CLASS_USAGE, "pipe.setup",
                            "bad pipe: filter has neither process nor observe");
    }
    return add_stage(p, ST_FILTER, f, f ? f->name : NULL, label);
}

int rt_pipe_set_sink(RtPipe *p, RtSink *sink, const char *label)
{
    return add_stage(p, ST_SINK, sink, sink ? sink->name : NULL, label);
}

/* ---- run -------------------------------------------------------------------------------- */

static void collect_results(RtPipe *p)
{
    RtResults *r = rt_results_new();
    if (!r) return;
    rt_results_int(r, "bytes_in", (int64_t)atomic_load(&p->bytes_in));
    rt_results_int(r, "bytes_out", (int64_t)atomic_load(&p->bytes_out));
    rt_results_num(r, "seconds", rt_monotonic() - p->t_start);
    for (int i = 0; i < p->n_stages; i++) {
        Stage *s = &p->stages[i];
        void (*fn)(void *, RtResults *) = s->kind == ST_SOURCE   ? s->u.src->results
                                          : s->kind == ST_FILTER ? s->u.flt->results
                                                                 : s->u.sink->results;
        void *self = s->kind == ST_SOURCE   ? s->u.src->self
                     : s->kind == ST_FILTER ? s->u.flt->self
                                            : s->u.sink->self;
        if (fn) fn(self, rt_results_table(r, s->label));
    }
    p->results = r;
}

int rt_pipe_run(RtPipe *p, RtError *err)
{
    if (p->setup_failed) {
        rt_error_copy(err, &p->setup_err);
        return RT_ERR;
    }
    if (p->ran || !p->has_source || !p->has_sink)
        return rt_error_set(err, RT_CLASS_USAGE, "pipe.setup",
                            p->ran ? "bad pipe: it already ran"
                                   : "bad pipe: needs a source and a sink");
    p->ran = true;
    p->t_start = rt_monotonic();
    p->n_queues = p->n_stages - 1;
    p->queues = calloc((size_t)p->n_queues, sizeof *p->queues);
    if (!p->queues) p->n_queues = 0; /* rt_pipe_free must not walk queues that do not exist */
    bool ok = p->queues != NULL;
    for (int i = 0; ok && i < p->n_queues; i++)
        ok = queue_init(&p->queues[i], p->opts.queue_depth, p->opts.buffer_size) == 0;
    if (!ok) {
        p->stages[p->n_stages - 1].u.sink->abort(p->stages[p->n_stages - 1].u.sink->self);
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory for pipe buffers");
    }
    pthread_mutex_lock(&p->mu);
    p->queues_ready = true;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_stages; i++) {
        Stage *s = &p->stages[i];
        s->in = i > 0 ? &p->queues[i - 1] : NULL;
        s->out = i < p->n_queues ? &p->queues[i] : NULL;
        if (pthread_create(&s->thread, NULL, stage_thread, s) != 0) {
            RtError e;
            rt_error_init(&e);
            rt_error_set(&e, RT_CLASS_FAILURE, "pipe.thread", "cannot start a pipe thread");
            pipe_fail(p, &e);
            break;
        }
        s->started = true;
    }
    if (p->opts.progress)
        p->monitor_started = pthread_create(&p->monitor, NULL, monitor_main, p) == 0;
    for (int i = 0; i < p->n_stages; i++)
        if (p->stages[i].started) pthread_join(p->stages[i].thread, NULL);
    atomic_store(&p->done, true);
    if (p->monitor_started) pthread_join(p->monitor, NULL);

    RtSink *sink = p->stages[p->n_stages - 1].u.sink;
    bool failed = atomic_load(&p->failed) || !p->sink_finished;
    if (failed) {
        sink->abort(sink->self);
        if (!p->err.set)
            rt_error_set(&p->err, RT_CLASS_FAILURE, "pipe.failed", "the pipe stopped early");
    }
    if (p->opts.progress) {
        RtSource *src = p->stages[0].u.src;
        RtProgress pr = {atomic_load(&p->bytes_in), atomic_load(&p->bytes_out),
                         src->size_hint ? src->size_hint(src->self) : -1,
                         rt_monotonic() - p->t_start, true};
        p->opts.progress(p->opts.progress_ud, &pr);
    }
    if (failed) {
        rt_error_copy(err, &p->err);
        return RT_ERR;
    }
    collect_results(p);
    if (!p->results || rt_results_failed(p->results))
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory for pipe results");
    return RT_OK;
}

static void *runner_main(void *arg)
{
    RtPipe *p = arg;
    p->runner_rc = rt_pipe_run(p, &p->runner_err);
    return NULL;
}

int rt_pipe_start(RtPipe *p, RtError *err)
{
    if (p->runner_started || p->ran)
        return rt_error_set(err, RT_CLASS_USAGE, "pipe.setup", "bad pipe: it already ran");
    rt_error_init(&p->runner_err);
    if (pthread_create(&p->runner, NULL, runner_main, p) != 0)
        return rt_error_set(err, RT_CLASS_FAILURE, "pipe.thread", "cannot start a pipe thread");
    p->runner_started = true;
    return RT_OK;
}

int rt_pipe_wait(RtPipe *p, RtError *err)
{
    if (!p->runner_started)
        return rt_error_set(err, RT_CLASS_USAGE, "pipe.setup", "bad pipe: it was not started");
    if (!p->runner_joined) {
        pthread_join(p->runner, NULL);
        p->runner_joined = true;
    }
    if (p->runner_rc != RT_OK) rt_error_copy(err, &p->runner_err);
    return p->runner_rc;
}

void rt_pipe_stop(RtPipe *p)
{
    RtError e;
    rt_error_init(&e);
    rt_error_set(&e, RT_CLASS_FAILURE, "pipe.stopped", "the pipe was stopped");
    pipe_fail(p, &e);
}

const RtResults *rt_pipe_results(const RtPipe *p)
{
    return p->results;
}

void rt_pipe_free(RtPipe *p)
{
    if (!p) return;
    if (p->runner_started && !p->runner_joined) {
        rt_pipe_stop(p);
        pthread_join(p->runner, NULL);
        p->runner_joined = true;
    }
    for (int i = 0; i < p->n_stages; i++) {
        Stage *s = &p->stages[i];
        /* a sink that never ran must not leave anything behind either */
        if (s->kind == ST_SINK && !p->ran) s->u.sink->abort(s->u.sink->self);
        destroy_stage_obj(s->kind, s->kind == ST_SOURCE   ? (void *)s->u.src
                                   : s->kind == ST_FILTER ? (void *)s->u.flt
                                                          : (void *)s->u.sink);
    }
    for (int i = 0; i < p->n_queues; i++) queue_destroy(&p->queues[i]);
    free(p->queues);
    rt_results_free(p->results);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
