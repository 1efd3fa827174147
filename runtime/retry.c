/* The retry policy: equal-jitter exponential backoff and Retry-After. */
#include "retry.h"
#include "io/cancel.h"
#include "timestamp.h"

#include <math.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

/* A uniform number in [0, 1) from the kernel: processes started together do not retry in
 * lockstep, and no seed is shared between threads. */
static double uniform(void)
{
    unsigned int r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned int)rand(); /* entropy not ready yet: any spread will do */
    return (double)r / 4294967296.0;
}

double rt_retry_delay(const RtRetry *r, int attempt)
{
    double step = r->base * pow(2, attempt > 1 ? attempt - 1 : 0);
    if (step > r->max) step = r->max;
    return step / 2 + (step / 2) * uniform();
}

bool rt_retry_sleep(const RtRetry *r, int attempt)
{
    return rt_sleep_cancellable(rt_retry_delay(r, attempt));
}

double rt_retry_after(const char *v)
{
    if (!v || !*v) return -1;
    char *end;
    double s = strtod(v, &end);
    if (end != v && *end == '\0' && s >= 0) return s;
    double t = rt_http_parse_date(v);
    if (t <= 0) return -1;
    double d = t - (double)time(NULL);
    return d > 0 ? d : 0;
}
