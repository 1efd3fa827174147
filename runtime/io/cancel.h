/*
 * Cancellation: SIGINT/SIGTERM and --timeout set one process-wide flag that every long C loop
 * checks. Stages that see it return RT_ERR with class RT_CLASS_CANCELLED (or TIMEOUT); the pipe
 * then aborts its sink, so a cancelled upload leaves no object behind.
 */
#ifndef RT_IO_CANCEL_H
#define RT_IO_CANCEL_H

#include "error.h"
#include <pthread.h>
#include <stdbool.h>

bool rt_cancelled(void);
/* Sets the flag (async-signal-safe). reason: RT_CLASS_CANCELLED or RT_CLASS_TIMEOUT. */
void rt_cancel(RtErrorClass reason);
void rt_cancel_reset(void);
/* Records the cancel error in err and returns RT_ERR. */
int rt_cancel_error(RtError *err);
/* Sleeps up to `seconds`, waking early on cancel; returns false if cancelled. */
bool rt_sleep_cancellable(double seconds);
/* Waits on cv (mu held, as for pthread_cond_wait) for at most ms milliseconds: loops that wait
 * for another thread call it so that they look at the cancel flag again at least that often. */
void rt_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms);

#endif
