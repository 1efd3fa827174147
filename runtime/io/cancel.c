/* Cancellation flag — see cancel.h. Written from signal handlers, so a lock-free atomic. */
#include "cancel.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <time.h>

static atomic_int g_cancel;                      /* 0, or the RtErrorClass that cancelled */
static atomic_int g_hurry;                       /* a second signal came */
static _Thread_local const atomic_bool *t_scope; /* this thread's pipe has stopped */

bool rt_cancelled(void)
{
    return atomic_load_explicit(&g_cancel, memory_order_relaxed) != 0 ||
           (t_scope && atomic_load_explicit(t_scope, memory_order_relaxed));
}

void rt_cancel_scope(const atomic_bool *stopped)
{
    t_scope = stopped;
}

void rt_cancel(RtErrorClass reason)
{
    int expected = 0;
    atomic_compare_exchange_strong(&g_cancel, &expected, (int)reason);
}

void rt_cancel_reset(void)
{
    atomic_store(&g_cancel, 0);
    atomic_store(&g_hurry, 0);
}

void rt_cancel_hurry(void)
{
    atomic_store(&g_hurry, 1);
}

bool rt_cancel_hurried(void)
{
    return atomic_load_explicit(&g_hurry, memory_order_relaxed) != 0;
}

int rt_cancel_error(RtError *err)
{
    int why = atomic_load(&g_cancel);
    if (why == RT_CLASS_TIMEOUT)
        return rt_error_set(err, RT_CLASS_TIMEOUT, RT_CODE_TIMEOUT,
                            "timed out (--timeout expired)");
    if (!why && t_scope && atomic_load(t_scope))
        return rt_error_set(err, RT_CLASS_FAILURE, "pipe.stopped",
                            "stopped: the pipe failed elsewhere or was stopped");
    return rt_error_set(err, RT_CLASS_CANCELLED, RT_CODE_CANCELLED, "cancelled by signal");
}

void rt_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

bool rt_sleep_cancellable(double seconds)
{
    while (seconds > 0) {
        if (rt_cancelled()) return false;
        double step = seconds < 0.05 ? seconds : 0.05;
        struct timespec ts = {(time_t)step, (long)((step - (time_t)step) * 1e9)};
        nanosleep(&ts, NULL);
        seconds -= step;
    }
    return !rt_cancelled();
}

int rt_wait_fd(int fd, short events, RtError *err)
{
    for (;;) {
        if (rt_cancelled()) return rt_cancel_error(err);
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, 100);
        if (r > 0) return RT_OK;
        if (r < 0 && errno != EINTR) return RT_OK;
    }
}
