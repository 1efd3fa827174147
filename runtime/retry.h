/*
 * RtRetry — the one retry policy object: how many attempts, and the backoff between them.
 * Used by s3 (per request and per part) and neon (per API call, bounded by a deadline).
 *
 * The wait before retry n (1-based) is "equal jitter": step = base * 2^(n-1), capped at `max`,
 * and the wait is uniform in [step/2, step], so callers that fail together spread out and a
 * retry never collapses to no wait. A server's Retry-After, when given, is used instead.
 */
#ifndef RT_RETRY_H
#define RT_RETRY_H

#include <stdbool.h>

typedef struct RtRetry {
    int max_attempts; /* attempts in all, the first included; 0: bounded by the caller (deadline) */
    double base;      /* the first step, seconds */
    double max;       /* the cap on a step, seconds */
} RtRetry;

/* True when attempt n (1-based, just failed) may be followed by another. */
static inline bool rt_retry_more(const RtRetry *r, int attempt)
{
    return r->max_attempts <= 0 || attempt < r->max_attempts;
}
/* The wait, in seconds, after failed attempt n (1-based). */
double rt_retry_delay(const RtRetry *r, int attempt);
/* Sleeps rt_retry_delay; false when cancelled during the wait. */
bool rt_retry_sleep(const RtRetry *r, int attempt);
/* Seconds to wait from a Retry-After value (delta-seconds or an HTTP date); -1 when absent or
 * unparseable. */
double rt_retry_after(const char *value);

#endif
