/*
 * The s3 download source: s3://bucket/key as a stream, fetched with parallel ranged GETs and
 * delivered in order.
 *
 * A HEAD gives the size (the pipe's size hint) and the ETag; every range then carries
 * If-Match with that ETag, so an object replaced mid-read fails cleanly instead of mixing two
 * versions. `concurrency` slots of part_size bytes each hold one range: range i lives in slot
 * i % concurrency and is fetched only once range i - concurrency has been handed to the pipe,
 * which bounds memory at concurrency x part_size. Each range is retried on its own.
 *
 * The range being read is handed on as its bytes arrive, not once it is whole: the first bytes
 * reach the next stage one round trip after the start instead of after a whole range (measured
 * on the restore benchmark: 0.1 s at the start of every restore, with the database idle). A
 * range whose body was cut is fetched again; the retry's bytes are the same (If-Match), so
 * those already stored are skipped and only the rest is appended: bytes the reader may have
 * handed on are never written again. Bytes are stored only from a 206 answer whose
 * Content-Range is the range asked for (or a 200 with the whole object for the first range), so
 * a store or proxy that ignores Range cannot slip another part of the object into the stream.
 */
#include "s3_internal.h"

#include "runtime/io/cancel.h"
#include "runtime/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SLOT_FREE, SLOT_FETCHING, SLOT_READY };

typedef struct Download Download;

typedef struct Slot {
    Download *d;
    int64_t index;
    int state;
    uint8_t *data;
    size_t want;
    size_t len; /* bytes stored, over all attempts: written by the fetching worker under d->mu,
                 * read by the reader under d->mu; data[0, len) is never written again */
    /* the fetching worker's own: */
    const RtHttpResponse *resp; /* of the attempt in flight (its status and headers) */
    size_t att;                 /* body bytes of the current attempt */
    bool checked;               /* the current attempt's answer is the range asked for */
    bool overflow, bad_range;
    uint64_t refetched; /* body bytes received again by retries (skipped) */
} Slot;

struct Download {
    S3Client *c;
    char *bucket, *key, *name, *etag;
    int64_t size;
    size_t part;
    int conc;
    int64_t nchunks, next_fetch, cur;
    size_t cur_pos;
    Slot *slots;
    pthread_t *threads;
    int n_threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* slots taken and freed, failures */
    pthread_cond_t data_cv; /* bytes stored in the slot being read, or a failure */
    bool reader_waiting;
    bool stop, failed, started;
    RtError err;
    uint64_t bytes;
    uint64_t refetched; /* the slots' refetched, summed under mu */
    double t_start;     /* rt_monotonic() of the first read */
    double waited;      /* seconds the reader waited for bytes */
};

/* Whether the answer being received (a 2xx: only those reach on_body; its status is known only
 * once it ends, its headers already) is the range asked for: its Content-Range says so, or it
 * has none (a 200: Range ignored) and the range is the whole object. */
static bool answer_is_range(const Slot *s, int64_t from)
{
    const char *cr = s->resp ? rt_http_header(s->resp, "Content-Range") : NULL;
    if (!cr) return s->resp && from == 0 && (int64_t)s->want == s->d->size;
    char want[96];
    snprintf(want, sizeof want, "bytes %lld-%lld/", (long long)from,
             (long long)(from + (int64_t)s->want - 1));
    return strncmp(cr, want, strlen(want)) == 0;
}

static bool on_body(void *ud, const uint8_t *data, size_t len)
{
    Slot *s = ud;
    Download *d = s->d;
    if (!s->checked) {
        if (!answer_is_range(s, s->index * (int64_t)d->part)) {
            s->bad_range = true;
            return false;
        }
        s->checked = true;
    }
    if (s->att + len > s->want) {
        s->overflow = true;
        return false;
    }
    /* s->att <= s->len: the first s->len - s->att bytes of this piece are stored already */
    size_t end = s->att + len;
    if (end > s->len) {
        size_t skip = s->len - s->att;
        memcpy(s->data + s->len, data + skip, len - skip);
        s->refetched += skip;
        pthread_mutex_lock(&d->mu);
        s->len = end;
        if (d->reader_waiting) pthread_cond_signal(&d->data_cv);
        bool stop = d->stop;
        pthread_mutex_unlock(&d->mu);
        if (stop) return false;
    } else {
        s->refetched += len;
    }
    s->att = end;
    return true;
}

static void on_attempt(void *ud)
{
    Slot *s = ud;
    s->att = 0;
    s->checked = false;
    s->overflow = false;
    s->bad_range = false;
}

static int fetch(Download *d, RtHttp *h, Slot *s, RtError *err)
{
    int64_t from = s->index * (int64_t)d->part;
    int64_t to = from + (int64_t)s->want - 1;
    S3Headers hd = {0};
    s3_headers_add(&hd, "Range: bytes=%lld-%lld", (long long)from, (long long)to);
    if (d->etag) s3_headers_add(&hd, "If-Match: \"%s\"", d->etag);
    S3Req rq = {.op = "get",
                .method = "GET",
                .bucket = d->bucket,
                .key = d->key,
                .headers = s3_headers_list(&hd),
                .on_body = on_body,
                .on_body_ud = s,
                .on_attempt = on_attempt,
                .object = d->name};
    RtHttpResponse r;
    rt_http_response_init(&r);
    s->resp = &r;
    int rc = RT_OK;
    for (int tries = 1;; tries++) {
        RtError e;
        rt_error_init(&e);
        rc = s3_do(d->c, h, &rq, &r, &e);
        bool short_read = rc == RT_OK && s->att != s->want;
        if (rc == RT_OK && !short_read) break;
        bool ours = rc != RT_OK && strcmp(e.code, "http.aborted") == 0;
        if (rc != RT_OK && !(ours && (s->overflow || s->bad_range))) {
            rt_error_copy(err, &e);
            break;
        }
        /* A short or overlong body (a proxy cut it), or not the range asked for (a store that
         * ignored Range): fetch it again. */
        if (tries >= d->c->retry.max_attempts) {
            const char *cr = rt_http_header(&r, "Content-Range");
            if (s->bad_range)
                rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.short_read",
                                  "s3 get %s: range %lld-%lld: the store answered http %ld "
                                  "without that range (Content-Range %s)",
                                  d->name, (long long)from, (long long)to, r.status,
                                  cr ? cr : "missing");
            else
                rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.short_read",
                                  "s3 get %s: range %lld-%lld returned %zu bytes instead of %zu",
                                  d->name, (long long)from, (long long)to, s->att, s->want);
            break;
        }
        if (s->bad_range)
            rt_info("s3 get %s: range %lld-%lld came back as http %ld without that range; "
                    "retrying",
                    d->name, (long long)from, (long long)to, r.status);
        else
            rt_info("s3 get %s: range %lld-%lld came back with %zu of %zu bytes; retrying", d->name,
                    (long long)from, (long long)to, s->att, s->want);
        if (!rt_retry_sleep(&d->c->retry, tries)) {
            rc = rt_cancel_error(err);
            break;
        }
    }
    s->resp = NULL;
    rt_http_response_free(&r);
    s3_headers_free(&hd);
    return rc;
}

static void *worker(void *arg)
{
    Download *d = arg;
    RtHttp *h = s3_http_new(d->c);
    pthread_mutex_lock(&d->mu);
    if (!h) {
        rt_error_set(&d->err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        d->failed = true;
        pthread_cond_broadcast(&d->cv);
        pthread_cond_broadcast(&d->data_cv);
    }
    while (h && !d->stop && !d->failed) {
        if (d->next_fetch >= d->nchunks) break;
        if (d->next_fetch >= d->cur + d->conc) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        int64_t i = d->next_fetch++;
        Slot *s = &d->slots[i % d->conc];
        s->index = i;
        s->state = SLOT_FETCHING;
        int64_t left = d->size - i * (int64_t)d->part;
        s->want = left < (int64_t)d->part ? (size_t)left : d->part;
        s->len = 0;
        s->refetched = 0;
        pthread_mutex_unlock(&d->mu);
        RtError e;
        rt_error_init(&e);
        int rc = fetch(d, h, s, &e);
        pthread_mutex_lock(&d->mu);
        d->refetched += s->refetched;
        if (rc != RT_OK) {
            if (!d->failed) rt_error_copy(&d->err, &e);
            d->failed = true;
        } else
            s->state = SLOT_READY;
        pthread_cond_broadcast(&d->cv);
        pthread_cond_broadcast(&d->data_cv);
    }
    pthread_mutex_unlock(&d->mu);
    rt_http_free(h);
    return NULL;
}

static int start(Download *d, RtError *err)
{
    d->started = true;
    d->t_start = rt_monotonic();
    if (d->nchunks == 0) return RT_OK;
    int n = d->nchunks < d->conc ? (int)d->nchunks : d->conc;
    d->slots = calloc((size_t)d->conc, sizeof *d->slots);
    d->threads = calloc((size_t)n, sizeof *d->threads);
    if (!d->slots || !d->threads)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    for (int i = 0; i < d->conc && i < d->nchunks; i++) {
        d->slots[i].d = d;
        d->slots[i].data = malloc(d->part);
        if (!d->slots[i].data)
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&d->threads[i], NULL, worker, d) != 0)
            return rt_error_set(err, RT_CLASS_FAILURE, "s3.thread",
                                "cannot start a download thread");
        d->n_threads++;
    }
    return RT_OK;
}

static int dl_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    Download *d = self;
    *got = 0;
    *eof = false;
    if (!d->started && start(d, err) != RT_OK) return RT_ERR;
    while (*got == 0) {
        if (d->cur >= d->nchunks) {
            *eof = true;
            return RT_OK;
        }
        pthread_mutex_lock(&d->mu);
        Slot *s = &d->slots[d->cur % d->conc];
        /* bytes of the current range beyond those handed on, or the range complete */
        while (!d->failed && !(s->index == d->cur && s->state != SLOT_FREE &&
                               (s->len > d->cur_pos || s->state == SLOT_READY))) {
            if (rt_cancelled()) {
                pthread_mutex_unlock(&d->mu);
                return rt_cancel_error(err);
            }
            d->reader_waiting = true;
            double t0 = rt_monotonic();
            rt_cond_wait_ms(&d->data_cv, &d->mu, 200);
            d->waited += rt_monotonic() - t0;
            d->reader_waiting = false;
        }
        if (d->failed) {
            rt_error_copy(err, &d->err);
            pthread_mutex_unlock(&d->mu);
            return RT_ERR;
        }
        size_t avail = s->len;
        bool whole = s->state == SLOT_READY;
        pthread_mutex_unlock(&d->mu);
        /* data[cur_pos, avail) is stored and never written again while the range is ours */
        size_t n = avail - d->cur_pos;
        if (n > cap) n = cap;
        memcpy(buf, s->data + d->cur_pos, n);
        d->cur_pos += n;
        if (d->bytes == 0)
            rt_debug("s3 get %s: first %zu bytes handed on %.3f s after the first read", d->name, n,
                     rt_monotonic() - d->t_start);
        d->bytes += n;
        *got = n;
        if (whole && d->cur_pos == s->want) {
            pthread_mutex_lock(&d->mu);
            s->state = SLOT_FREE;
            d->cur++;
            d->cur_pos = 0;
            pthread_cond_broadcast(&d->cv);
            pthread_mutex_unlock(&d->mu);
            if (d->cur >= d->nchunks) {
                *eof = true;
                rt_debug("s3 get %s: %llu bytes in %.2f s, %.2f s of it waiting for them", d->name,
                         (unsigned long long)d->bytes, rt_monotonic() - d->t_start, d->waited);
            }
        }
    }
    return RT_OK;
}

static int64_t dl_size_hint(void *self)
{
    return ((Download *)self)->size;
}

static void dl_results(void *self, RtResults *res)
{
    Download *d = self;
    rt_results_int(res, "bytes", (int64_t)d->bytes);
    rt_results_int(res, "parts", d->nchunks);
    rt_results_int(res, "refetched_bytes", (int64_t)d->refetched);
    rt_results_str(res, "etag", d->etag ? d->etag : "");
    rt_results_str(res, "bucket", d->bucket);
    rt_results_str(res, "key", d->key);
    rt_results_str(res, "url", d->name);
}

static void dl_destroy(void *self)
{
    Download *d = self;
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < d->n_threads; i++) pthread_join(d->threads[i], NULL);
    if (d->slots)
        for (int i = 0; i < d->conc; i++) free(d->slots[i].data);
    free(d->slots);
    free(d->threads);
    free(d->bucket);
    free(d->key);
    free(d->name);
    free(d->etag);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    pthread_cond_destroy(&d->data_cv);
    s3_client_unref(d->c);
    free(d);
}

static const RtSourceOps s3_download_source_ops = {.name = "s3.download",
                                                   .read = dl_read,
                                                   .size_hint = dl_size_hint,
                                                   .results = dl_results,
                                                   .destroy = dl_destroy};

RtSource *s3_download_source(S3Client *c, const S3DownloadOptions *o, RtError *err)
{
    if (!o->bucket || !*o->bucket || !o->key || !*o->key) {
        rt_error_set(err, RT_CLASS_USAGE, "s3.usage", "s3 download needs a bucket and a key");
        return NULL;
    }
    S3Head hd;
    bool found;
    if (s3_head(c, o->bucket, o->key, &hd, &found, err) != RT_OK) return NULL;
    if (!found) {
        char *n = s3_object_name(o->bucket, o->key);
        rt_error_set(err, RT_CLASS_FAILURE, "s3.no_such_key", "s3 get %s: no such key",
                     n ? n : o->key);
        rt_error_hint(err,
                      "check the key; list what exists with c:list{bucket = \"%s\", prefix = ...}",
                      o->bucket);
        free(n);
        return NULL;
    }
    Download *d = calloc(1, sizeof *d);
    RtSource *s = rt_source_new();
    if (!d || !s) {
        free(d);
        free(s);
        s3_head_free(&hd);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    pthread_cond_init(&d->data_cv, NULL);
    rt_error_init(&d->err);
    d->c = s3_client_ref(c);
    d->bucket = strdup(o->bucket);
    d->key = strdup(o->key);
    d->name = s3_object_name(o->bucket, o->key);
    d->etag = hd.etag;
    hd.etag = NULL;
    d->size = hd.size;
    s3_head_free(&hd);
    d->part = o->part_size ? o->part_size : 8u << 20;
    d->conc = o->concurrency > 0 ? (o->concurrency > 64 ? 64 : o->concurrency) : 4;
    d->nchunks = d->size == 0 ? 0 : (d->size + (int64_t)d->part - 1) / (int64_t)d->part;
    rt_source_init(s, &s3_download_source_ops, d);
    if (!d->bucket || !d->key || !d->name) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        rt_source_free(s);
        return NULL;
    }
    return s;
}
