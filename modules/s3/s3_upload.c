/*
 * The s3 upload sink: a stream of unknown length to s3://bucket/key.
 *
 * Bytes fill a part buffer. A stream that ends within the first part goes as one PUT. Otherwise
 * the first full buffer starts a multipart upload and `concurrency` worker threads send parts
 * while the writer fills the next buffer; at most concurrency + 1 buffers exist, so memory is
 * bounded by (concurrency + 1) x part size whatever the stream's length. Part sizes double every
 * 1000 parts (s3_part_size_for) so 10,000 parts reach past 5 TB.
 *
 * Every part carries Content-MD5 and its ETag is checked against our MD5 (except with SSE-KMS,
 * where ETags are not MD5s); the final ETag (from the completion, or from a HEAD when the store
 * answers the completion without one, as Ceph RGW may) is checked against the multipart ETag
 * rule (md5 of the part md5s, "-N") and the object's size by a HEAD. Any failure, cancel or
 * abort runs AbortMultipartUpload, so no partial object ever appears under the key; an object
 * that fails the final checks is deleted.
 */
#include "modules/aws/aws_xml.h"
#include "s3_internal.h"

#include "modules/crypto/crypto.h"

#include "runtime/io/cancel.h"
#include "runtime/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct Part {
    int number;
    uint8_t *data;
    size_t len, cap;
    struct Part *next;
} Part;

typedef struct PartDone {
    char *etag;
    unsigned char md5[16];
} PartDone;

typedef struct Upload {
    S3Client *c;
    char *bucket, *key, *name;
    char *sse, *kms, *sclass, *ctype;
    char **meta; /* name, value, ..., NULL */
    S3WriteOptions w;
    size_t base;
    int conc;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    Part *cur;
    Part *queue_head, *queue_tail;
    Part *free_list;
    int buffers; /* allocated part buffers (bounded by conc + 1) */
    int in_flight;
    bool started, stop, failed, finished, aborted;
    RtError err;
    char *upload_id;
    pthread_t *threads;
    int n_threads;
    RtHttp **https;
    PartDone *done;
    int done_cap;
    int parts; /* parts submitted */
    uint64_t bytes;
    char *final_etag;
} Upload;

static bool kms(const Upload *u)
{
    return u->sse && strcmp(u->sse, "aws:kms") == 0;
}

/* Waits on the condition with a short timeout so cancellation is noticed. Called locked. */
static void wait_a_bit(Upload *u)
{
    rt_cond_wait_ms(&u->cv, &u->mu, 200);
}

static int record_etag(Upload *u, int number, const char *etag, const unsigned char md5[16],
                       RtError *err)
{
    pthread_mutex_lock(&u->mu);
    if (number > u->done_cap) {
        int nc = u->done_cap ? u->done_cap * 2 : 64;
        while (nc < number) nc *= 2;
        PartDone *nd = realloc(u->done, (size_t)nc * sizeof *nd);
        if (!nd) {
            pthread_mutex_unlock(&u->mu);
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        }
        memset(nd + u->done_cap, 0, (size_t)(nc - u->done_cap) * sizeof *nd);
        u->done = nd;
        u->done_cap = nc;
    }
    free(u->done[number - 1].etag);
    u->done[number - 1].etag = strdup(etag);
    memcpy(u->done[number - 1].md5, md5, 16);
    pthread_mutex_unlock(&u->mu);
    return RT_OK;
}

static int send_part(Upload *u, RtHttp *h, Part *p, RtError *err)
{
    unsigned char md[16];
    char b64[25], hex[33];
    s3_md5(p->data, p->len, md);
    s3_md5_b64(md, b64);
    crypto_hex(md, 16, hex);
    char pn[16];
    snprintf(pn, sizeof pn, "%d", p->number);
    SigV4Param q[] = {{"partNumber", pn}, {"uploadId", u->upload_id}};
    S3Headers hd = {0};
    s3_headers_add(&hd, "Content-MD5: %s", b64);
    S3Req rq = {.op = "upload part",
                .method = "PUT",
                .bucket = u->bucket,
                .key = u->key,
                .query = q,
                .n_query = 2,
                .headers = s3_headers_list(&hd),
                .body = p->data,
                .body_len = p->len,
                .object = u->name};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = RT_OK;
    for (int tries = 0;; tries++) {
        rc = s3_do(u->c, h, &rq, &r, err);
        if (rc != RT_OK) break;
        char *et = s3_etag_clean(rt_http_header(&r, "ETag"));
        if (!et) {
            rc =
                rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                             "s3 upload %s: part %d came back without an etag", u->name, p->number);
            break;
        }
        if (!kms(u) && strcmp(et, hex) != 0) {
            /* The store holds other bytes than we sent: send the part again (it replaces the old).
             */
            free(et);
            if (tries < 2) {
                rt_warn("s3 upload %s: part %d etag mismatch; sending it again", u->name,
                        p->number);
                continue;
            }
            rc = rt_error_set(err, RT_CLASS_VERIFY, "s3.etag_mismatch",
                              "s3 upload %s: part %d etag does not match the md5 of the bytes sent",
                              u->name, p->number);
            rt_error_hint(err,
                          "something between us and the store alters data; the upload was aborted");
            break;
        }
        rc = record_etag(u, p->number, et, md, err);
        free(et);
        break;
    }
    rt_http_response_free(&r);
    s3_headers_free(&hd);
    return rc;
}

static void release(Upload *u, Part *p) /* locked */
{
    p->len = 0;
    p->next = u->free_list;
    u->free_list = p;
}

typedef struct WorkerArg {
    Upload *u;
    int idx;
} WorkerArg;

static void *worker(void *arg)
{
    WorkerArg *wa = arg;
    Upload *u = wa->u;
    RtHttp *h = u->https[wa->idx];
    free(wa);
    pthread_mutex_lock(&u->mu);
    for (;;) {
        while (!u->queue_head && !u->stop && !u->failed) pthread_cond_wait(&u->cv, &u->mu);
        if (u->stop || u->failed) break;
        Part *p = u->queue_head;
        u->queue_head = p->next;
        if (!u->queue_head) u->queue_tail = NULL;
        u->in_flight++;
        pthread_mutex_unlock(&u->mu);
        RtError e;
        rt_error_init(&e);
        int rc = send_part(u, h, p, &e);
        pthread_mutex_lock(&u->mu);
        u->in_flight--;
        release(u, p);
        if (rc != RT_OK) {
            rt_error_copy(&u->err, &e);
            u->failed = true;
        }
        pthread_cond_broadcast(&u->cv);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

static int initiate(Upload *u, RtError *err)
{
    S3Headers h = {0};
    s3_headers_write_opts(&h, &u->w, true);
    SigV4Param q[] = {{"uploads", ""}};
    S3Req rq = {.op = "start upload",
                .method = "POST",
                .bucket = u->bucket,
                .key = u->key,
                .query = q,
                .n_query = 1,
                .headers = s3_headers_list(&h),
                .object = u->name};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(u->c, &rq, &r, err);
    if (rc == RT_OK) {
        const char *cur = (const char *)(r.body ? r.body : (uint8_t *)"");
        AwsXmlSpan sp;
        if (aws_xml_next(&cur, cur + r.body_len, "InitiateMultipartUploadResult", &sp))
            u->upload_id = aws_xml_get(sp, "UploadId");
        if (!u->upload_id)
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 upload %s: no upload id in the answer", u->name);
    }
    rt_http_response_free(&r);
    s3_headers_free(&h);
    if (rc != RT_OK) return rc;
    rt_debug("s3 upload %s: multipart upload started", u->name);
    u->threads = calloc((size_t)u->conc, sizeof *u->threads);
    u->https = calloc((size_t)u->conc, sizeof *u->https);
    if (!u->threads || !u->https)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    for (int i = 0; i < u->conc; i++) {
        u->https[i] = s3_http_new(u->c);
        WorkerArg *wa = malloc(sizeof *wa);
        if (!u->https[i] || !wa) {
            free(wa);
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        }
        wa->u = u;
        wa->idx = i;
        if (pthread_create(&u->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            return rt_error_set(err, RT_CLASS_FAILURE, "s3.thread",
                                "cannot start an upload thread");
        }
        u->n_threads++;
    }
    u->started = true;
    return RT_OK;
}

/* Hands the current buffer to the workers. */
static int submit(Upload *u, RtError *err)
{
    if (!u->started && initiate(u, err) != RT_OK) return RT_ERR;
    pthread_mutex_lock(&u->mu);
    Part *p = u->cur;
    u->cur = NULL;
    p->next = NULL;
    if (u->queue_tail)
        u->queue_tail->next = p;
    else
        u->queue_head = p;
    u->queue_tail = p;
    pthread_cond_broadcast(&u->cv);
    pthread_mutex_unlock(&u->mu);
    return RT_OK;
}

/* Takes a buffer for the next part, waiting while concurrency + 1 buffers are in use. */
static int next_buffer(Upload *u, RtError *err)
{
    int number = u->parts + 1;
    if (number > 10000)
        return rt_error_set(err, RT_CLASS_FAILURE, "s3.too_many_parts",
                            "s3 upload %s: the stream needs more than 10000 parts", u->name);
    size_t want = s3_part_size_for(u->base, number);
    pthread_mutex_lock(&u->mu);
    Part *p = NULL;
    for (;;) {
        if (u->failed) {
            rt_error_copy(err, &u->err);
            pthread_mutex_unlock(&u->mu);
            return RT_ERR;
        }
        if (rt_cancelled()) {
            pthread_mutex_unlock(&u->mu);
            return rt_cancel_error(err);
        }
        /* A free buffer of the wrong size (the part size grew) is dropped. */
        while (u->free_list && u->free_list->cap != want) {
            Part *old = u->free_list;
            u->free_list = old->next;
            free(old->data);
            free(old);
            u->buffers--;
        }
        if (u->free_list) {
            p = u->free_list;
            u->free_list = p->next;
            break;
        }
        if (u->buffers < u->conc + 1) {
            u->buffers++;
            break;
        }
        wait_a_bit(u);
    }
    pthread_mutex_unlock(&u->mu);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (p) p->data = malloc(want);
        if (!p || !p->data) {
            if (p) free(p);
            pthread_mutex_lock(&u->mu);
            u->buffers--;
            pthread_mutex_unlock(&u->mu);
            return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM,
                                "out of memory for a %zu-byte part buffer", want);
        }
        p->cap = want;
    }
    p->len = 0;
    p->number = ++u->parts;
    u->cur = p;
    return RT_OK;
}

static int up_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    Upload *u = self;
    /* A worker's failure stops the stream at the next write (read under the lock). */
    pthread_mutex_lock(&u->mu);
    bool failed = u->failed;
    if (failed) rt_error_copy(err, &u->err);
    pthread_mutex_unlock(&u->mu);
    if (failed) return RT_ERR;
    while (len) {
        if (u->cur && u->cur->len == u->cur->cap && submit(u, err) != RT_OK) return RT_ERR;
        if (!u->cur && next_buffer(u, err) != RT_OK) return RT_ERR;
        size_t n = u->cur->cap - u->cur->len;
        if (n > len) n = len;
        memcpy(u->cur->data + u->cur->len, data, n);
        u->cur->len += n;
        u->bytes += n;
        data += n;
        len -= n;
    }
    return RT_OK;
}

static void stop_workers(Upload *u)
{
    pthread_mutex_lock(&u->mu);
    u->stop = true;
    pthread_cond_broadcast(&u->cv);
    pthread_mutex_unlock(&u->mu);
    for (int i = 0; i < u->n_threads; i++) pthread_join(u->threads[i], NULL);
    u->n_threads = 0;
}

static int single_put(Upload *u, RtError *err)
{
    const uint8_t *data = u->cur ? u->cur->data : (const uint8_t *)"";
    size_t len = u->cur ? u->cur->len : 0;
    char *etag = NULL;
    if (s3_put(u->c, u->bucket, u->key, data, len, &u->w, &etag, err) != RT_OK) return RT_ERR;
    unsigned char md[16];
    char hex[33];
    s3_md5(data, len, md);
    crypto_hex(md, 16, hex);
    /* An empty ETag (some stores) leaves the check to Content-MD5, which the store verified. */
    if (etag && *etag && !kms(u) && strcmp(etag, hex) != 0) {
        free(etag);
        /* Content-MD5 made the store check the bytes, so this is a store that answers oddly:
         * what it holds is not known to be what was sent, so it does not stay. */
        RtError de;
        rt_error_init(&de);
        if (s3_delete(u->c, u->bucket, u->key, &de) != RT_OK)
            rt_warn("s3 upload %s: could not remove the object that failed its check: %s", u->name,
                    de.message);
        return rt_error_set(err, RT_CLASS_VERIFY, "s3.etag_mismatch",
                            "s3 upload %s: the etag does not match the md5 of the bytes sent",
                            u->name);
    }
    u->final_etag = etag;
    return RT_OK;
}

static int up_finish(void *self, RtError *err)
{
    Upload *u = self;
    pthread_mutex_lock(&u->mu);
    bool failed0 = u->failed;
    if (failed0) rt_error_copy(err, &u->err);
    pthread_mutex_unlock(&u->mu);
    if (failed0) return RT_ERR;
    if (!u->started) {
        if (single_put(u, err) != RT_OK) return RT_ERR;
        u->finished = true;
        u->parts = u->cur ? 1 : 0;
        return RT_OK;
    }
    if (u->cur && u->cur->len > 0) {
        if (submit(u, err) != RT_OK) return RT_ERR;
    } else if (u->cur) {
        /* An empty trailing buffer: it never became a part. */
        pthread_mutex_lock(&u->mu);
        release(u, u->cur);
        u->cur = NULL;
        u->parts--;
        pthread_mutex_unlock(&u->mu);
    }
    pthread_mutex_lock(&u->mu);
    while (!u->failed && (u->queue_head || u->in_flight)) {
        if (rt_cancelled()) {
            pthread_mutex_unlock(&u->mu);
            return rt_cancel_error(err);
        }
        wait_a_bit(u);
    }
    bool failed = u->failed;
    if (failed) rt_error_copy(err, &u->err);
    pthread_mutex_unlock(&u->mu);
    if (failed) return RT_ERR;
    stop_workers(u);

    SBuf b = {0};
    unsigned char *all = malloc((size_t)u->parts * 16);
    if (!all) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    sb_add(&b, "<CompleteMultipartUpload>");
    for (int i = 0; i < u->parts; i++) {
        if (i >= u->done_cap || !u->done[i].etag) {
            free(all);
            sb_free(&b);
            return rt_error_set(err, RT_CLASS_FAILURE, "s3.internal",
                                "s3 upload %s: part %d has no etag", u->name, i + 1);
        }
        memcpy(all + 16 * i, u->done[i].md5, 16);
        sb_addf(&b, "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>", i + 1,
                u->done[i].etag);
    }
    sb_add(&b, "</CompleteMultipartUpload>");
    unsigned char md[16];
    char expect[48];
    s3_md5(all, (size_t)u->parts * 16, md);
    free(all);
    crypto_hex(md, 16, expect);
    snprintf(expect + 32, sizeof expect - 32, "-%d", u->parts);
    if (b.oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    SigV4Param q[] = {{"uploadId", u->upload_id}};
    S3Req rq = {.op = "complete upload",
                .method = "POST",
                .bucket = u->bucket,
                .key = u->key,
                .query = q,
                .n_query = 1,
                .headers = (const char *const[]){"Content-Type: application/xml", NULL},
                .body = (const uint8_t *)b.p,
                .body_len = b.len,
                .error_in_200 = true,
                .object = u->name};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(u->c, &rq, &r, err);
    sb_free(&b);
    if (rc == RT_OK) {
        const char *cur = (const char *)(r.body ? r.body : (uint8_t *)"");
        AwsXmlSpan sp;
        char *et = NULL;
        if (aws_xml_next(&cur, cur + r.body_len, "CompleteMultipartUploadResult", &sp))
            et = aws_xml_get(sp, "ETag");
        u->final_etag = s3_etag_clean(et);
        free(et);
        if (!u->final_etag && !(r.body && r.body_len))
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 upload %s: completion answered with an empty body", u->name);
    }
    rt_http_response_free(&r);
    if (rc != RT_OK) return rc;
    u->finished = true; /* the object exists now: abort must not try to remove the upload */
    S3Head hd;
    bool found;
    if (s3_head(u->c, u->bucket, u->key, &hd, &found, err) != RT_OK) return RT_ERR;
    /* Some stores (Ceph RGW) complete with an empty or missing ETag: the object's own, from the
     * HEAD, is checked instead, so the final ETag is never left unchecked. */
    bool from_head = !u->final_etag || !*u->final_etag;
    if (from_head && found && hd.etag && *hd.etag) {
        free(u->final_etag);
        u->final_etag = strdup(hd.etag);
        rt_debug("s3 upload %s: completion gave no etag; the object's is %s", u->name,
                 u->final_etag);
    }
    if (!found || hd.size != (int64_t)u->bytes) {
        rc = rt_error_set(err, RT_CLASS_VERIFY, "s3.size_mismatch",
                          "s3 upload %s: the object holds %lld bytes, %llu were sent", u->name,
                          (long long)(found ? hd.size : -1), (unsigned long long)u->bytes);
    } else if (!u->final_etag || !*u->final_etag) {
        rc = rt_error_set(err, RT_CLASS_VERIFY, "s3.no_etag",
                          "s3 upload %s: neither the completion nor a head gave the object's etag",
                          u->name);
        rt_error_hint(err, "the store gives no way to check what it assembled; the object was "
                           "removed: use another endpoint or report it to the store's operator");
    } else if (!kms(u) && strchr(u->final_etag, '-') && strcmp(u->final_etag, expect) != 0) {
        rc = rt_error_set(err, RT_CLASS_VERIFY, "s3.etag_mismatch",
                          "s3 upload %s: final etag %s%s differs from the expected %s (the md5 of "
                          "the parts' md5s)",
                          u->name, u->final_etag, from_head ? " (from a head)" : "", expect);
        rt_error_hint(err, "the store assembled other parts than were sent; the object was "
                           "removed: check the store, then run again");
    } else if (!strchr(u->final_etag, '-')) {
        /* Some S3-compatible stores (s3rver) do not use AWS's "md5-of-md5s-N" form; the
         * per-part ETags were checked and the size is checked above. */
        rt_debug("s3 upload %s: store etag %s is not in multipart form", u->name, u->final_etag);
    }
    s3_head_free(&hd);
    if (rc != RT_OK && found) {
        /* What the store holds is not what was sent: never leave it looking complete. */
        RtError de;
        rt_error_init(&de);
        if (s3_delete(u->c, u->bucket, u->key, &de) != RT_OK)
            rt_warn("s3 upload %s: could not remove the object that failed its check: %s", u->name,
                    de.message);
    }
    if (rc == RT_OK)
        rt_info("uploaded %s bytes=%llu parts=%d", u->name, (unsigned long long)u->bytes, u->parts);
    return rc;
}

static void up_abort(void *self)
{
    Upload *u = self;
    if (u->aborted) return;
    u->aborted = true;
    stop_workers(u);
    if (!u->upload_id || u->finished) return;
    SigV4Param q[] = {{"uploadId", u->upload_id}};
    S3Req rq = {.op = "abort upload",
                .method = "DELETE",
                .bucket = u->bucket,
                .key = u->key,
                .query = q,
                .n_query = 1,
                .object = u->name,
                .ignore_cancel = true};
    RtHttpResponse r;
    rt_http_response_init(&r);
    RtError e;
    rt_error_init(&e);
    if (s3_do_shared(u->c, &rq, &r, &e) != RT_OK && strcmp(e.code, "s3.no_such_upload") != 0)
        rt_warn("s3 upload %s: could not abort multipart upload (%s); a lifecycle rule "
                "AbortIncompleteMultipartUpload cleans it up",
                u->name, e.message);
    else
        rt_info("s3 upload %s: aborted; no object was created", u->name);
    rt_http_response_free(&r);
}

static void up_results(void *self, RtResults *res)
{
    Upload *u = self;
    rt_results_int(res, "bytes", (int64_t)u->bytes);
    rt_results_int(res, "parts", u->parts);
    rt_results_str(res, "etag", u->final_etag ? u->final_etag : "");
    rt_results_str(res, "bucket", u->bucket);
    rt_results_str(res, "key", u->key);
    rt_results_str(res, "url", u->name);
}

static void free_parts(Part *p)
{
    while (p) {
        Part *n = p->next;
        free(p->data);
        free(p);
        p = n;
    }
}

static void up_destroy(void *self)
{
    Upload *u = self;
    if (!u) return;
    if (u->n_threads) up_abort(u); /* never finished nor aborted: clean up anyway */
    if (u->cur) {
        free(u->cur->data);
        free(u->cur);
    }
    free_parts(u->queue_head);
    free_parts(u->free_list);
    if (u->https)
        for (int i = 0; i < u->conc; i++) rt_http_free(u->https[i]);
    free(u->https);
    free(u->threads);
    for (int i = 0; i < u->done_cap; i++) free(u->done[i].etag);
    free(u->done);
    if (u->meta)
        for (char **m = u->meta; *m; m++) free(*m);
    free(u->meta);
    free(u->bucket);
    free(u->key);
    free(u->name);
    free(u->sse);
    free(u->kms);
    free(u->sclass);
    free(u->ctype);
    free(u->upload_id);
    free(u->final_etag);
    pthread_mutex_destroy(&u->mu);
    pthread_cond_destroy(&u->cv);
    s3_client_unref(u->c);
    free(u);
}

static char *dupn(const char *s)
{
    return s ? strdup(s) : NULL;
}

static const RtSinkOps s3_upload_sink_ops = {.name = "s3.upload",
                                             .write = up_write,
                                             .finish = up_finish,
                                             .abort = up_abort,
                                             .results = up_results,
                                             .destroy = up_destroy};

RtSink *s3_upload_sink(S3Client *c, const S3UploadOptions *o, RtError *err)
{
    if (!o->bucket || !*o->bucket || !o->key || !*o->key) {
        rt_error_set(err, RT_CLASS_USAGE, "s3.usage", "s3 upload needs a bucket and a key");
        return NULL;
    }
    size_t base = o->part_size ? o->part_size : 8u << 20;
    if (base < (5u << 20) || base > (5ULL << 30)) {
        rt_error_set(err, RT_CLASS_USAGE, "s3.usage", "s3 upload part_size %zu is out of range",
                     base);
        rt_error_hint(err, "S3 parts are 5 MiB to 5 GiB (except the last one)");
        return NULL;
    }
    int conc = o->concurrency > 0 ? o->concurrency : 4;
    if (conc > 64) conc = 64;
    Upload *u = calloc(1, sizeof *u);
    RtSink *s = rt_sink_new();
    if (!u || !s) {
        free(u);
        free(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&u->mu, NULL);
    pthread_cond_init(&u->cv, NULL);
    rt_error_init(&u->err);
    u->c = s3_client_ref(c);
    u->bucket = strdup(o->bucket);
    u->key = strdup(o->key);
    u->name = s3_object_name(o->bucket, o->key);
    S3WriteOptions rw;
    s3_write_resolve(c, &o->write, &rw);
    u->sse = dupn(rw.sse);
    u->kms = dupn(rw.kms_key_id);
    u->sclass = dupn(rw.storage_class);
    u->ctype = dupn(o->write.content_type);
    size_t nm = 0;
    if (o->write.metadata)
        while (o->write.metadata[nm]) nm++;
    u->meta = calloc(nm + 1, sizeof(char *));
    if (u->meta)
        for (size_t i = 0; i < nm; i++) u->meta[i] = strdup(o->write.metadata[i]);
    u->w = (S3WriteOptions){u->sse, u->kms, u->sclass, u->ctype, (const char *const *)u->meta};
    u->base = base;
    u->conc = conc;
    rt_sink_init(s, &s3_upload_sink_ops, u);
    if (!u->bucket || !u->key || !u->name || !u->meta) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        rt_sink_free(s);
        return NULL;
    }
    return s;
}
