/*
 * Advisory kernel locks on files (flock(2)), for "at most one of these at a time" across
 * processes: the scheduler's per-job locks.
 *
 * The lock belongs to the open file description, not to a process: a child that inherits the
 * descriptor (RtProcSpec.inherit_fd) keeps the lock held for as long as it lives, even when the
 * process that took it is killed with SIGKILL, and the kernel drops it when the last holder
 * exits. Nothing to go stale, no pid files, no /proc lookups.
 */
#ifndef RT_LOCK_H
#define RT_LOCK_H

#include "io/error.h"

/* Takes an exclusive lock on `path` (created 0600 if missing; its folder must exist), waiting
 * up to `wait` seconds (0: one try) in short naps that a cancel (signal, --timeout) ends.
 * Returns 1 with the descriptor (close-on-exec, always > 2) in *fd, 0 when another holder keeps
 * it past the wait, RT_ERR on an error (cannot open the file; cancelled). */
int rt_lock_take(const char *path, double wait, int *fd, RtError *err);
/* Releases the lock this descriptor holds (children that inherited it may still hold it). */
void rt_lock_release(int fd);

#endif
