/*
 * The HTTP core of the Neon API v2 client over libcurl: one call, its retries, its errors.
 * See neon.h. Its own small HTTP code on purpose (no dependency on a shared wrapper): the
 * retry rules are Neon's (423 = an operation is running, 429 with Retry-After).
 */
#include "neon.h"

#include "io/cancel.h"
#include "log.h"

#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Responses larger than this are not Neon API answers; refuse instead of growing forever. */
#define NEON_MAX_BODY     (64u << 20)
#define NEON_CALL_TIMEOUT 60L

struct NeonClient {
    char *host;
    RtSecret *key;
    double timeout, retry_base, retry_max;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static unsigned int jitter_seed;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* Per-process jitter: clients started together must not retry in lockstep. */
    jitter_seed = (unsigned int)time(NULL) ^ ((unsigned int)getpid() << 16);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

NeonClient *neon_client_new(const NeonOptions *opt, RtError *err)
{
    pthread_once(&curl_once, curl_init_once);
    if (!opt->host || strncmp(opt->host, "http", 4) != 0) {
        rt_error_set(err, RT_CLASS_CONFIG, "neon.host", "invalid neon api host '%s'",
                     opt->host ? opt->host : "");
        rt_error_hint(err, "set NEON_API_HOST to a URL such as https://console.neon.tech/api/v2");
        return NULL;
    }
    NeonClient *c = calloc(1, sizeof *c);
    if (!c) {
        rt_error_set(err, RT_CLASS_FAILURE, "neon.nomem", "out of memory");
        return NULL;
    }
    c->host = strdup(opt->host);
    c->key = rt_secret_dup(opt->key, err);
    if (!c->host || !c->key) {
        neon_client_free(c);
        rt_error_set(err, RT_CLASS_FAILURE, "neon.nomem", "out of memory");
        return NULL;
    }
    size_t n = strlen(c->host);
    while (n > 0 && c->host[n - 1] == '/') c->host[--n] = '\0';
    c->timeout = opt->timeout > 0 ? opt->timeout : 600;
    c->retry_base = opt->retry_base > 0 ? opt->retry_base : 0.5;
    c->retry_max = opt->retry_max > 0 ? opt->retry_max : 15;
    return c;
}

void neon_client_free(NeonClient *c)
{
    if (!c) return;
    rt_secret_free(c->key);
    free(c->host);
    free(c);
}

const char *neon_client_host(const NeonClient *c)
{
    return c->host;
}

void neon_response_free(NeonResponse *r)
{
    if (!r) return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

typedef struct Buf {
    char *p;
    size_t len, cap;
    bool too_big;
} Buf;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    Buf *b = ud;
    size_t n = size * nmemb;
    if (b->len + n + 1 > NEON_MAX_BODY) {
        b->too_big = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

typedef struct Hdr {
    char retry_after[64];
} Hdr;

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    Hdr *h = ud;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        size_t i = sizeof name - 1, j = 0;
        while (i < n && (data[i] == ' ' || data[i] == '\t')) i++;
        while (i < n && data[i] != '\r' && data[i] != '\n' && j + 1 < sizeof h->retry_after)
            h->retry_after[j++] = data[i++];
        h->retry_after[j] = '\0';
    }
    return n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)ud, (void)a, (void)b, (void)c, (void)d;
    return rt_cancelled() ? 1 : 0; /* non-zero aborts the transfer */
}

double neon_retry_after(const char *v)
{
    if (!v || !*v) return -1;
    char *end;
    double s = strtod(v, &end);
    if (end != v && *end == '\0' && s >= 0) return s;
    time_t t = curl_getdate(v, NULL);
    if (t < 0) return -1;
    double d = difftime(t, time(NULL));
    return d > 0 ? d : 0;
}

double neon_backoff(double base, double max, int attempt)
{
    double d = base * pow(2, attempt > 1 ? attempt - 1 : 0);
    if (d > max) d = max;
    /* Full jitter over the upper half: callers that retry together spread out. */
    return d / 2 + (d / 2) * ((double)rand_r(&jitter_seed) / RAND_MAX);
}

void neon_error_message(const char *body, char *out, size_t cap)
{
    out[0] = '\0';
    if (!body || cap == 0) return;
    const char *p = strstr(body, "\"message\"");
    if (!p) return;
    p += 9;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != ':') return;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != '"') return;
    size_t j = 0;
    for (; *p && *p != '"' && j + 1 < cap; p++) {
        char ch = *p;
        if (ch == '\\' && p[1]) {
            p++;
            switch (*p) {
            case 'n':
                ch = ' ';
                break;
            case 't':
                ch = ' ';
                break;
            case 'u':
                ch = '?';
                p += (p[1] && p[2] && p[3] && p[4]) ? 4 : 0;
                break;
            default:
                ch = *p;
            }
        }
        if ((unsigned char)ch < 0x20) ch = ' ';
        out[j++] = ch;
    }
    out[j] = '\0';
}

static bool retryable_status(long s)
{
    return s == 423 || s == 429 || s >= 500;
}

/* One HTTP exchange. Returns the CURLcode; fills status, body, Retry-After. */
static CURLcode exchange(NeonClient *c, const char *method, const char *url, const char *body,
                         long *status, Buf *buf, Hdr *hdr, char *curl_msg, size_t cap)
{
    CURL *h = curl_easy_init();
    if (!h) return CURLE_FAILED_INIT;
    struct curl_slist *hl = NULL;
    /* The key goes into one header line that is wiped after the exchange. */
    size_t alen = strlen("Authorization: Bearer ") + c->key->len + 1;
    char *auth = malloc(alen);
    if (!auth) {
        curl_easy_cleanup(h);
        return CURLE_OUT_OF_MEMORY;
    }
    snprintf(auth, alen, "Authorization: Bearer %s", c->key->data);
    hl = curl_slist_append(hl, auth);
    hl = curl_slist_append(hl, "Accept: application/json");
    if (body) hl = curl_slist_append(hl, "Content-Type: application/json");
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "clubio-dr neon");
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, buf);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, hdr);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, NEON_CALL_TIMEOUT);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    snprintf(curl_msg, cap, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    memset(auth, 0, alen);
    free(auth);
    return rc;
}

int neon_request(NeonClient *c, const char *method, const char *path, const char *body,
                 const char *what, long accept, NeonResponse *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    size_t ulen = strlen(c->host) + strlen(path) + 1;
    char *url = malloc(ulen);
    if (!url) return rt_error_set(err, RT_CLASS_FAILURE, "neon.nomem", "out of memory");
    snprintf(url, ulen, "%s%s", c->host, path);
    double deadline = mono_now() + c->timeout;
    /* An API that cannot be reached at all (refused, DNS, TLS) rarely comes back within
     * minutes: give up on it sooner than on a busy one (423/429/5xx), so a runbook run in an
     * incident says "unreachable" in under a minute instead of waiting out the whole timeout. */
    double unreachable_deadline =
        mono_now() +
        (c->timeout < NEON_UNREACHABLE_SECONDS ? c->timeout : NEON_UNREACHABLE_SECONDS);
    bool unreachable = false;
    char last[384] = "";
    int rc = RT_ERR;
    for (int attempt = 1;; attempt++) {
        if (rt_cancelled()) {
            rc = rt_cancel_error(err);
            break;
        }
        Buf buf = {0};
        Hdr hdr = {{0}};
        long status = 0;
        char cmsg[CURL_ERROR_SIZE + 64];
        CURLcode cc = exchange(c, method, url, body, &status, &buf, &hdr, cmsg, sizeof cmsg);
        out->attempts = attempt;
        double wait = -1;
        if (cc != CURLE_OK) {
            if (rt_cancelled()) {
                free(buf.p);
                rc = rt_cancel_error(err);
                break;
            }
            if (buf.too_big) {
                free(buf.p);
                rc = rt_error_set(err, RT_CLASS_FAILURE, "neon.response",
                                  "neon api answer to %s %s is too large", method, path);
                break;
            }
            snprintf(last, sizeof last, "cannot reach %s: %s", c->host, cmsg);
            unreachable = true;
        } else if (retryable_status(status)) {
            char m[256];
            neon_error_message(buf.p, m, sizeof m);
            snprintf(last, sizeof last, "%s %s answered %ld%s%s", method, path, status,
                     m[0] ? ": " : "", m);
            if (status == 429 || status == 503) wait = neon_retry_after(hdr.retry_after);
        } else {
            out->status = status;
            out->body = buf.p ? buf.p : strdup("");
            out->len = buf.len;
            if (!out->body) {
                rc = rt_error_set(err, RT_CLASS_FAILURE, "neon.nomem", "out of memory");
                break;
            }
            if ((status >= 200 && status < 300) || status == 404 || (accept && status == accept)) {
                rc = RT_OK;
                break;
            }
            char m[320];
            neon_error_message(out->body, m, sizeof m);
            if (status == 401 || status == 403) {
                rt_error_set(err, RT_CLASS_CONFIG, "neon.unauthorized",
                             "neon api key rejected by %s (%ld%s%s)", c->host, status,
                             m[0] ? ": " : "", m);
                /* no "NEON_API_KEY:" or "=" here: the redactor masks the word after such a name */
                rt_error_hint(err, "check the key in NEON_API_KEY; it must be a valid key for "
                                   "this account (create one in the Neon console, Account > API "
                                   "keys)");
            } else {
                rt_error_set(err, RT_CLASS_FAILURE,
                             status == 409 ? "neon.conflict" : "neon.request",
                             "neon api refused %s %s for %s (%ld): %s", method, path,
                             what ? what : "the request", status, m[0] ? m : "no message");
            }
            neon_response_free(out);
            out->status = status;
            rc = RT_ERR;
            break;
        }
        free(buf.p);
        double now = mono_now();
        if (wait < 0) wait = neon_backoff(c->retry_base, c->retry_max, attempt);
        if (cc == CURLE_OK) unreachable = false;
        if (now + wait > deadline || (unreachable && now + wait > unreachable_deadline)) {
            rt_error_set(err, RT_CLASS_FAILURE, "neon.unavailable",
                         "neon api call for %s gave up after %d attempts in %.0f s: %s",
                         what ? what : path, attempt, now - (deadline - c->timeout), last);
            rt_error_hint(err, "the Neon API is busy or unreachable; check https://neonstatus.com "
                               "and retry, or raise the client's timeout");
            err->retryable = true;
            break;
        }
        rt_log(attempt >= 3 ? RT_LOG_WARN : RT_LOG_DEBUG, "neon: %s; retrying in %.1f s", last,
               wait);
        if (!rt_sleep_cancellable(wait)) {
            rc = rt_cancel_error(err);
            break;
        }
    }
    free(url);
    return rc;
}
