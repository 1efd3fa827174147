/*
 * NeonClient — the HTTP core of the Neon API v2 client (no Lua here, never raises).
 *
 * One client holds the API host, the API key (an RtSecret: sent only in the Authorization
 * header, never logged) and a retry policy. neon_request() sends one API call and retries what
 * Neon says to retry: 423 Locked (another operation is running), 429 (honouring Retry-After),
 * 5xx and connection errors, with jittered exponential backoff, until the client's deadline.
 * Cancellation (rt_cancelled) stops waits and transfers at once. The transport is the host's
 * (http.h): one connection per client, kept alive between calls, so a client is used from one
 * thread at a time.
 *
 * Answers 2xx and 404 come back as RT_OK with the status and body (404 is a question for the
 * caller: "is there such a branch?"); 401 and other 4xx become RtErrors whose message carries
 * the API's own message. Operation logic (polling, names) lives in the binding.
 */
#ifndef NEON_NEON_H
#define NEON_NEON_H

#include "io/error.h"
#include "secret.h"
#include <stddef.h>

typedef struct NeonClient NeonClient;

/* How long a call keeps retrying an API it cannot reach at all (connection refused, DNS, TLS),
 * within its overall timeout. */
#define NEON_UNREACHABLE_SECONDS 45.0

typedef struct NeonOptions {
    const char *host;    /* API base, e.g. https://console.neon.tech/api/v2 (no trailing /) */
    const RtSecret *key; /* copied */
    double timeout;      /* overall deadline of one call including retries (seconds) */
    double retry_base;   /* first backoff (seconds) */
    double retry_max;    /* backoff cap (seconds) */
} NeonOptions;

typedef struct NeonResponse {
    long status;
    char *body; /* NUL-terminated; free with neon_response_free */
    size_t len;
    int attempts;
} NeonResponse;

NeonClient *neon_client_new(const NeonOptions *opt, RtError *err);
void neon_client_free(NeonClient *c); /* NULL-safe; wipes the key */
const char *neon_client_host(const NeonClient *c);

/* method: GET/POST/DELETE/PATCH; path starts with '/' and is appended to the host; body is
 * JSON or NULL. `what` names the object for messages ("neon project x"). `accept` is one more
 * 4xx status returned as an answer rather than an error (e.g. 400, so that the caller can say
 * what a bad branching point means), 0 for none. */
int neon_request(NeonClient *c, const char *method, const char *path, const char *body,
                 const char *what, long accept, NeonResponse *out, RtError *err);
void neon_response_free(NeonResponse *r);

/* The "message" string of a Neon error body, unescaped into out (empty if none). */
void neon_error_message(const char *body, char *out, size_t cap);
#endif
