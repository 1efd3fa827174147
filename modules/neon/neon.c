/*
 * The HTTP core of the Neon API v2 client: one call, its retries, its errors. See neon.h. The
 * transport is the host's (runtime/http.c: one kept-alive connection per client, the one cancel
 * path, the debug line per request); the retry rules are Neon's (423 = an operation is running,
 * 429 with Retry-After).
 */
#include "neon.h"

#include "http.h"
#include "io/cancel.h"
#include "log.h"
#include "retry.h"
#include "timestamp.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Responses larger than this are not Neon API answers; refuse instead of growing forever. */
#define NEON_MAX_BODY        (64u << 20)
#define NEON_CALL_TIMEOUT    60.0
#define NEON_CONNECT_TIMEOUT 15.0

struct NeonClient {
    char *host;
    RtSecret *key;
    double timeout;
    RtRetry retry; /* the backoff; the attempts are bounded by the timeout */
    RtHttp *http;  /* one connection, kept alive between calls; used from one thread */
};

NeonClient *neon_client_new(const NeonOptions *opt, RtError *err)
{
    if (!opt->host || strncmp(opt->host, "http", 4) != 0) {
        rt_error_set(err, RT_CLASS_CONFIG, "neon.host", "invalid neon api host '%s'",
                     opt->host ? opt->host : "");
        rt_error_hint(err, "set NEON_API_HOST to a URL such as https://console.neon.tech/api/v2");
        return NULL;
    }
    NeonClient *c = calloc(1, sizeof *c);
    if (!c) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    c->host = strdup(opt->host);
    c->key = rt_secret_dup(opt->key, err);
    c->http = rt_http_new(&(RtHttpOptions){.connect_timeout = NEON_CONNECT_TIMEOUT,
                                           .total_timeout = NEON_CALL_TIMEOUT});
    if (!c->host || !c->key || !c->http) {
        neon_client_free(c);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    size_t n = strlen(c->host);
    while (n > 0 && c->host[n - 1] == '/') c->host[--n] = '\0';
    c->timeout = opt->timeout > 0 ? opt->timeout : 600;
    c->retry = (RtRetry){.base = opt->retry_base > 0 ? opt->retry_base : 0.5,
                         .max = opt->retry_max > 0 ? opt->retry_max : 15};
    return c;
}

void neon_client_free(NeonClient *c)
{
    if (!c) return;
    rt_http_free(c->http);
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

/* One HTTP exchange over the client's connection: rt_http_do's result, the answer in *rs. The
 * key goes into one header line that is wiped after the exchange. */
static int exchange(NeonClient *c, const char *method, const char *url, const char *body,
                    RtHttpResponse *rs, RtError *err)
{
    size_t alen = strlen("Authorization: Bearer ") + c->key->len + 1;
    char *auth = malloc(alen);
    if (!auth) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    snprintf(auth, alen, "Authorization: Bearer %s", c->key->data);
    const char *hdrs[] = {auth, "Accept: application/json", "User-Agent: clubio-dr neon",
                          body ? "Content-Type: application/json" : NULL, NULL};
    RtHttpRequest rq = {.method = method,
                        .url = url,
                        .headers = hdrs,
                        .body = (const uint8_t *)body,
                        .body_len = body ? strlen(body) : 0,
                        .max_body = NEON_MAX_BODY};
    int rc = rt_http_do(c->http, &rq, rs, NULL, err);
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
    if (!url) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    snprintf(url, ulen, "%s%s", c->host, path);
    double deadline = rt_monotonic() + c->timeout;
    /* An API that cannot be reached at all (refused, DNS, TLS) rarely comes back within
     * minutes: give up on it sooner than on a busy one (423/429/5xx), so a runbook run in an
     * incident says "unreachable" in under a minute instead of waiting out the whole timeout. */
    double unreachable_deadline =
        rt_monotonic() +
        (c->timeout < NEON_UNREACHABLE_SECONDS ? c->timeout : NEON_UNREACHABLE_SECONDS);
    bool unreachable = false;
    char last[384] = "";
    int rc = RT_ERR;
    for (int attempt = 1;; attempt++) {
        if (rt_cancelled()) {
            rc = rt_cancel_error(err);
            break;
        }
        RtHttpResponse rs;
        rt_http_response_init(&rs);
        RtError xerr;
        rt_error_init(&xerr);
        int xr = exchange(c, method, url, body, &rs, &xerr);
        out->attempts = attempt;
        double wait = -1;
        long status = rs.status;
        if (xr != RT_OK) {
            rt_http_response_free(&rs);
            if (rt_cancelled()) {
                rc = rt_cancel_error(err);
                break;
            }
            const char *detail = rt_http_error_detail(c->http);
            snprintf(last, sizeof last, "cannot reach %s: %s", c->host,
                     detail[0] ? detail : xerr.message);
            unreachable = true;
        } else if (rs.body_truncated) {
            rt_http_response_free(&rs);
            rc = rt_error_set(err, RT_CLASS_FAILURE, "neon.response",
                              "neon api answer to %s %s is too large", method, path);
            break;
        } else if (retryable_status(status)) {
            char m[256];
            neon_error_message((const char *)rs.body, m, sizeof m);
            snprintf(last, sizeof last, "%s %s answered %ld%s%s", method, path, status,
                     m[0] ? ": " : "", m);
            if (status == 429 || status == 503)
                wait = rt_retry_after(rt_http_header(&rs, "Retry-After"));
            rt_http_response_free(&rs);
        } else {
            out->status = status;
            out->body = rs.body ? (char *)rs.body : strdup("");
            out->len = rs.body_len;
            rs.body = NULL;
            rt_http_response_free(&rs);
            if (!out->body) {
                rc = rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
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
        double now = rt_monotonic();
        if (wait < 0) wait = rt_retry_delay(&c->retry, attempt);
        if (xr == RT_OK) unreachable = false;
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
