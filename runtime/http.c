/*
 * RtHttp — libcurl easy handles with timeouts, stall detection, capped body capture, header
 * capture and cancellation. See http.h for the contract.
 */
#include "http.h"
#include "sbuf.h"

#include "io/cancel.h"
#include "log.h"
#include "timestamp.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct RtHttp {
    CURL *curl;
    RtHttpOptions opts;
    char errbuf[CURL_ERROR_SIZE]; /* curl's description of the last transport failure */
};

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

RtHttp *rt_http_new(const RtHttpOptions *opts)
{
    pthread_once(&g_curl_once, curl_init_once);
    RtHttp *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    if (opts) h->opts = *opts;
    if (h->opts.connect_timeout <= 0) h->opts.connect_timeout = 10;
    if (h->opts.stall_timeout <= 0) h->opts.stall_timeout = 60;
    h->curl = curl_easy_init();
    if (!h->curl) {
        free(h);
        return NULL;
    }
    return h;
}

void rt_http_free(RtHttp *h)
{
    if (!h) return;
    curl_easy_cleanup(h->curl);
    free(h);
}

void rt_http_response_init(RtHttpResponse *r)
{
    memset(r, 0, sizeof *r);
}

void rt_http_response_free(RtHttpResponse *r)
{
    free(r->body);
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    memset(r, 0, sizeof *r);
}

const char *rt_http_header(const RtHttpResponse *r, const char *name)
{
    for (size_t i = r->n_headers; i-- > 0;)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

typedef struct Xfer {
    const RtHttpRequest *req;
    RtHttpResponse *resp;
    SBuf body; /* the captured body, capped at the request's max_body (handed to resp) */
    bool oom;
    bool callback_stopped;
    bool cancelled;
} Xfer;

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    Xfer *x = ud;
    size_t len = size * n;
    RtHttpResponse *r = x->resp;
    /* A new status line (redirect, 100-continue) starts a new header block. */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        for (size_t i = 0; i < r->n_headers; i++) {
            free(r->headers[i].name);
            free(r->headers[i].value);
        }
        r->n_headers = 0;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon) return len;
    size_t nlen = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    RtHttpHeader *nh = realloc(r->headers, (r->n_headers + 1) * sizeof *nh);
    if (!nh) {
        x->oom = true;
        return 0;
    }
    r->headers = nh;
    char *name = strndup(data, nlen), *value = strndup(v, (size_t)(end - v));
    if (!name || !value) {
        free(name);
        free(value);
        x->oom = true;
        return 0;
    }
    nh[r->n_headers].name = name;
    nh[r->n_headers].value = value;
    r->n_headers++;
    return len;
}

static long current_status(Xfer *x, CURL *c)
{
    long st = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    (void)x;
    return st;
}

typedef struct BodyCtx {
    Xfer x;
    CURL *curl;
} BodyCtx;

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    BodyCtx *b = ud;
    Xfer *x = &b->x;
    size_t len = size * n;
    const RtHttpRequest *rq = x->req;
    long st = current_status(x, b->curl);
    if (rq->on_body && (st < 300 || rq->on_body_any_status)) {
        if (!rq->on_body(rq->on_body_ud, (const uint8_t *)data, len)) {
            x->callback_stopped = true;
            return 0;
        }
        return len;
    }
    sb_addn(&x->body, data, len);
    if (x->body.oom) {
        x->oom = true;
        return 0;
    }
    return len;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    Xfer *x = ud;
    if (rt_cancelled() && !x->req->ignore_cancel) {
        x->cancelled = true;
        return 1;
    }
    return 0;
}

typedef struct ReadCtx {
    const uint8_t *p;
    size_t left;
} ReadCtx;

static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    ReadCtx *rc = ud;
    size_t want = size * n;
    if (want > rc->left) want = rc->left;
    memcpy(buf, rc->p, want);
    rc->p += want;
    rc->left -= want;
    return want;
}

static int on_seek(void *ud, curl_off_t off, int origin)
{
    (void)ud;
    (void)off;
    (void)origin;
    return CURL_SEEKFUNC_CANTSEEK;
}

/* "https://host:port/path?query" -> "https://host:port/path" for logs and messages. */
static void url_without_query(const char *url, char *out, size_t cap)
{
    size_t n = strcspn(url, "?");
    if (n >= cap) n = cap - 1;
    memcpy(out, url, n);
    out[n] = 0;
}

static void url_host(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = 0;
}

int rt_http_do(RtHttp *h, const RtHttpRequest *req, RtHttpResponse *resp, const char *what,
               RtError *err)
{
    rt_http_response_free(resp);
    if (rt_cancelled() && !req->ignore_cancel) return rt_cancel_error(err);
    char where[512], host[256];
    url_without_query(req->url, where, sizeof where);
    url_host(req->url, host, sizeof host);
    if (!what) what = host;

    CURL *c = h->curl;
    curl_easy_reset(c);
    h->errbuf[0] = 0;
    BodyCtx bc = {
        .x = {.req = req, .resp = resp, .body = {.limit = req->max_body ? req->max_body : 1 << 20}},
        .curl = c};
    ReadCtx rc = {.p = req->body, .left = req->body_len};
    struct curl_slist *hl = NULL;
    bool oom = false;
    if (req->headers)
        for (const char *const *p = req->headers; *p; p++) {
            struct curl_slist *n = curl_slist_append(hl, *p);
            if (!n) {
                oom = true;
                break;
            }
            hl = n;
        }
    /* No "Expect: 100-continue" round trip: S3 answers errors after the body anyway. */
    struct curl_slist *n2 = oom ? NULL : curl_slist_append(hl, "Expect:");
    if (!n2)
        oom = true;
    else
        hl = n2;
    if (oom) {
        curl_slist_free_all(hl);
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM,
                            "out of memory preparing a request to %s", what);
    }

    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &bc.x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bc);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &bc.x);
    double ct = req->connect_timeout > 0 ? req->connect_timeout : h->opts.connect_timeout;
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(ct * 1000));
    double tt = req->total_timeout > 0 ? req->total_timeout : h->opts.total_timeout;
    if (tt > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(tt * 1000));
    /* Stall detection: fewer than 1 byte/s for stall_timeout seconds aborts the transfer. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(h->opts.stall_timeout + 0.5));
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
    if (h->opts.verbose) curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);

    const char *m = req->method ? req->method : "GET";
    if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(m, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(m, "PUT") == 0 || strcmp(m, "POST") == 0 || req->body_len) {
            curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(c, CURLOPT_READDATA, &rc);
            curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
            curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
        }
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
    }

    double t0 = rt_monotonic();
    CURLcode rc_ = curl_easy_perform(c);
    resp->body = (uint8_t *)bc.x.body.p; /* the response owns it now */
    resp->body_len = bc.x.body.len;
    resp->body_truncated = bc.x.body.truncated;
    resp->seconds = rt_monotonic() - t0;
    curl_slist_free_all(hl);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    const char *date = rt_http_header(resp, "Date");
    if (date) resp->server_date = rt_http_parse_date(date);

    if (bc.x.cancelled || (rc_ != CURLE_OK && rt_cancelled() && !req->ignore_cancel)) {
        rt_debug("http %s %s cancelled", m, where);
        return rt_cancel_error(err);
    }
    if (bc.x.oom)
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM,
                            "out of memory reading the answer of %s", what);
    if (bc.x.callback_stopped)
        return rt_error_set(err, RT_CLASS_FAILURE, "http.aborted",
                            "transfer of %s stopped by its receiver", what);
    if (rc_ != CURLE_OK) {
        if (!h->errbuf[0]) snprintf(h->errbuf, sizeof h->errbuf, "%s", curl_easy_strerror(rc_));
        rt_debug("http %s %s failed: %s", m, where, curl_easy_strerror(rc_));
        rt_error_set(err, RT_CLASS_FAILURE, "http.transport", "%s: %s (%s)", what,
                     curl_easy_strerror(rc_), host);
        err->retryable = rc_ != CURLE_URL_MALFORMAT && rc_ != CURLE_UNSUPPORTED_PROTOCOL &&
                         rc_ != CURLE_SSL_CACERT_BADFILE && rc_ != CURLE_PEER_FAILED_VERIFICATION;
        if (rc_ == CURLE_COULDNT_RESOLVE_HOST || rc_ == CURLE_COULDNT_CONNECT)
            rt_error_hint(err, "check the endpoint %s and the network", host);
        else if (rc_ == CURLE_OPERATION_TIMEDOUT)
            rt_error_hint(
                err, "the server stopped answering; it may be overloaded or the network is down");
        return RT_ERR;
    }
    rt_debug("http %s %s -> %ld (%.2f s)", m, where, resp->status, resp->seconds);
    return RT_OK;
}

const char *rt_http_error_detail(const RtHttp *h)
{
    return h->errbuf;
}
