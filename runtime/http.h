/*
 * RtHttp — the host's small libcurl wrapper for JSON/XML APIs and S3.
 *
 * One RtHttp is one reusable connection (a curl easy handle with keep-alive) used by one thread
 * at a time; make one per worker thread. A request is a method, a URL, "Name: value" header
 * lines and an optional body held in memory. The response status, headers and body come back in
 * an RtHttpResponse: the body is captured up to a cap (bodies of API errors and XML/JSON answers)
 * or streamed to a callback (object data).
 *
 * Transport failures (refused, reset, timed out, stalled, TLS) return RT_ERR with a retryable
 * error of class FAILURE and code "http.transport"; any HTTP status returns RT_OK — callers
 * decide what a status means. Transfers stop when rt_cancelled() is set (RT_CLASS_CANCELLED).
 *
 * Logging: at debug level each request is logged as "http GET https://host/path -> 200 (0.12 s)"
 * without its query string or headers (signatures, tokens and credentials live there); every
 * line also passes through the redactor.
 *
 *     RtHttp *h = rt_http_new(NULL);
 *     const char *hdrs[] = {"Accept: application/json", NULL};
 *     RtHttpRequest rq = {.method = "GET", .url = "https://api.example/x", .headers = hdrs};
 *     RtHttpResponse rs;
 *     rt_http_response_init(&rs);
 *     if (rt_http_do(h, &rq, &rs, &err) == RT_OK && rs.status == 200) use(rs.body, rs.body_len);
 *     rt_http_response_free(&rs);
 *     rt_http_free(h);
 */
#ifndef RT_HTTP_H
#define RT_HTTP_H

#include "io/error.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct RtHttp RtHttp;

typedef struct RtHttpOptions {
    double connect_timeout; /* seconds; default 10 */
    double stall_timeout;   /* abort when no byte moves for this long; default 60 s */
    double total_timeout;   /* whole request; 0 = none (default) */
    bool verbose;           /* curl's own trace (debugging only; may show headers) */
} RtHttpOptions;

/* Body streaming callback: return false to abort the transfer (the request then fails with
 * the error the callback recorded through its own means, code "http.aborted"). */
typedef bool (*RtHttpBodyFn)(void *ud, const uint8_t *data, size_t len);

typedef struct RtHttpRequest {
    const char *method;         /* "GET", "PUT", "POST", "HEAD", "DELETE" */
    const char *url;            /* the path is sent as is (no "//" or "/../" squashing) */
    const char *const *headers; /* "Name: value" lines, NULL-terminated; may be NULL */
    const uint8_t *body;        /* request body (copied by nobody: must outlive the call) */
    size_t body_len;
    size_t max_body;      /* cap on the captured response body; default 1 MiB */
    RtHttpBodyFn on_body; /* if set, the response body goes here instead of being captured */
    void *on_body_ud;
    bool on_body_any_status; /* stream the body even when status >= 300 (default: capture it) */
    double total_timeout;    /* overrides the handle's option when > 0 */
    double connect_timeout;  /* overrides the handle's option when > 0 */
    bool ignore_cancel;      /* cleanup requests (abort an upload) that must run after a cancel */
} RtHttpRequest;

typedef struct RtHttpHeader {
    char *name;  /* as received */
    char *value; /* trimmed */
} RtHttpHeader;

typedef struct RtHttpResponse {
    long status;
    uint8_t *body; /* NUL-terminated captured body (may be NULL when empty or streamed) */
    size_t body_len;
    bool body_truncated; /* more than max_body arrived */
    RtHttpHeader *headers;
    size_t n_headers;
    double server_date; /* epoch seconds of the Date header, or 0 */
    double seconds;     /* duration of the request */
} RtHttpResponse;

RtHttp *rt_http_new(const RtHttpOptions *opts); /* NULL on ENOMEM or curl failure */
void rt_http_free(RtHttp *h);                   /* NULL-safe */

void rt_http_response_init(RtHttpResponse *r);
void rt_http_response_free(RtHttpResponse *r); /* also resets it for reuse */
/* Case-insensitive header look-up; NULL if absent. */
const char *rt_http_header(const RtHttpResponse *r, const char *name);

/* Runs one request. `what` names the object for error messages ("s3://bucket/key",
 * "sts.amazonaws.com"); NULL means the URL's host. */
int rt_http_do(RtHttp *h, const RtHttpRequest *req, RtHttpResponse *resp, const char *what,
               RtError *err);

/* curl's own words for the last transport failure of h ("Failed to connect to host port 1
 * after 0 ms: Connection refused"), more precise than the error's generic text; "" after a
 * request that reached the server. Valid until the next request on h. */
const char *rt_http_error_detail(const RtHttp *h);

/* HTTP dates: rt_http_parse_date in timestamp.h. */

#endif
