/*
 * Cancellation: SIGINT/SIGTERM and --timeout set one process-wide flag that every long C loop
 * checks. Stages that see it return RT_ERR with class RT_CLASS_CANCELLED (or TIMEOUT); the pipe
 * then aborts its sink, so a cancelled upload leaves no object behind.
 */
#ifndef RT_IO_CANCEL_H
#define RT_IO_CANCEL_H

#include "error.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

bool rt_cancelled(void);
/* Widens rt_cancelled() on the calling thread to `stopped` as well (NULL: no more): a pipe's
 * stage threads see their pipe fail or stop (rt_pipe_stop) wherever they wait, as at a signal;
 * the pipe keeps its first error. */
void rt_cancel_scope(const atomic_bool *stopped);
/* Sets the flag (async-signal-safe). reason: RT_CLASS_CANCELLED or RT_CLASS_TIMEOUT. */
void rt_cancel(RtErrorClass reason);
void rt_cancel_reset(void);
/* A second signal: the run is being stopped and the operator is waiting. Waits that may be
 * shortened are (a child's grace before SIGKILL); cleanup itself (a sink's abort) still runs.
 * Async-signal-safe. */
void rt_cancel_hurry(void);
bool rt_cancel_hurried(void);
/* Records the cancel error in err and returns RT_ERR. */
int rt_cancel_error(RtError *err);
/* Sleeps up to `seconds`, waking early on cancel; returns false if cancelled. */
bool rt_sleep_cancellable(double seconds);
/* Waits on cv (mu held, as for pthread_cond_wait) for at most ms milliseconds: loops that wait
 * for another thread call it so that they look at the cancel flag again at least that often. */
void rt_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms);
/* Waits until fd is ready for `events` (POLLIN or POLLOUT), looking at the cancel flag at least
 * every 100 ms: the one way to block on a pipe, socket or lock fd that a signal or --timeout must
 * be able to interrupt (a blocking read on a silent child would wait for the child). Returns
 * RT_OK when ready (or when poll reports an error or hang-up: the following read/write then
 * says what it is), or the cancel error (RT_ERR). */
int rt_wait_fd(int fd, short events, RtError *err);

#endif
