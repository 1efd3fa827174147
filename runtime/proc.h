/*
 * Child processes from an argv array — never through a shell. Secrets go to the child through
 * its environment (or a pipe), never its argv, which other users can read in /proc.
 */
#ifndef RT_PROC_H
#define RT_PROC_H

#include "io/error.h"
#include "sbuf.h"
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct RtProcSpec {
    const char *const *argv;      /* argv[0] is looked up in PATH; NULL-terminated */
    const char *const *env_set;   /* "NAME=value" entries added to/overriding our environment */
    const char *const *env_unset; /* names removed from the child's environment */
    const char *cwd;              /* may be NULL */
    /* > 2: a descriptor of ours that the child inherits at the same number (every other one is
     * close-on-exec), e.g. a lock (lock.h) the child then holds for as long as it lives; 0: none */
    int inherit_fd;
} RtProcSpec;

typedef struct RtProc {
    pid_t pid;
    int in_fd;  /* write end of the child's stdin, or -1 */
    int out_fd; /* read end of the child's stdout, or -1 */
    int err_fd; /* read end of the child's stderr, or -1 */
} RtProc;

/* Which of the child's standard streams to connect to pipes (others: stdin /dev/null,
 * stdout/stderr inherited). */
enum { RT_PROC_STDIN = 1, RT_PROC_STDOUT = 2, RT_PROC_STDERR = 4, RT_PROC_QUIET = 8 };

/* Seconds a child has after SIGTERM to exit before it gets SIGKILL. */
#define RT_PROC_GRACE 5.0

/* The child leads a new process group (rt_proc_kill signals the group). */
int rt_proc_spawn(const RtProcSpec *spec, int pipes, RtProc *out, RtError *err);
/* Waits for the child; returns its exit status (0..255) or 128+signal. If the process is
 * cancelled (signal, --timeout) during the wait, the child is terminated as by
 * rt_proc_terminate(p, RT_PROC_GRACE) instead of being waited for. */
int rt_proc_wait(RtProc *p);
/* Reaps the child if it has exited, never blocking: its status as rt_proc_wait returns it, or
 * RT_PROC_RUNNING while it runs (-1 when there is no child to reap). */
#define RT_PROC_RUNNING (-2)
int rt_proc_poll(RtProc *p);
/* SIGTERM to the child's group, up to `grace` seconds for the child to exit, then SIGKILL; reaps
 * it and returns its status as rt_proc_wait does. Never blocks longer than grace (plus the
 * kernel's SIGKILL). */
int rt_proc_terminate(RtProc *p, double grace);
/* Sends sig to the child's process group. */
void rt_proc_kill(RtProc *p, int sig);
void rt_proc_close_fds(RtProc *p);

/* Output collected from a child, an SBuf: up to `limit` bytes are kept (the caller sets it); the
 * rest is dropped and `truncated` set (`oom` when memory runs out). The caller sb_frees it. */
typedef SBuf RtProcCapture;

/* Runs a child spawned with RT_PROC_STDIN | RT_PROC_STDOUT | RT_PROC_STDERR to completion:
 * writes in[0..in_len) to its stdin (then closes it) while collecting its stdout and stderr,
 * without deadlock however much it writes. On a cancel the child's group gets SIGTERM. Closes
 * the pipes and returns the exit status as rt_proc_wait does. */
int rt_proc_communicate(RtProc *p, const char *in, size_t in_len, RtProcCapture *out,
                        RtProcCapture *err_c);

#endif
