/*
 * Child processes — see proc.h. posix_spawnp with an explicit environment: our environment
 * plus `env_set`, minus `env_unset`. No shell is involved, so no quoting bugs and no argv
 * secrets.
 *
 * Each child leads its own process group, so that stopping it also stops what it started
 * (`sh -c 'producer; sleep 60'`: a SIGTERM to sh alone leaves the sleep holding our pipes).
 * A terminal's Ctrl-C therefore reaches only us; our cancel path stops the children.
 */
#include "proc.h"
#include "io/cancel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static bool name_matches(const char *entry, const char *name)
{
    size_t n = strlen(name);
    return strncmp(entry, name, n) == 0 && entry[n] == '=';
}

static char **build_env(const RtProcSpec *spec)
{
    size_t n = 0, extra = 0;
    while (environ[n]) n++;
    if (spec->env_set)
        while (spec->env_set[extra]) extra++;
    char **env = calloc(n + extra + 1, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool drop = false;
        for (size_t j = 0; spec->env_unset && spec->env_unset[j] && !drop; j++)
            drop = name_matches(environ[i], spec->env_unset[j]);
        for (size_t j = 0; j < extra && !drop; j++) {
            const char *eq = strchr(spec->env_set[j], '=');
            size_t len = eq ? (size_t)(eq - spec->env_set[j]) : strlen(spec->env_set[j]);
            drop = strncmp(environ[i], spec->env_set[j], len) == 0 && environ[i][len] == '=';
        }
        if (!drop) env[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++) env[k++] = (char *)spec->env_set[j];
    env[k] = NULL;
    return env;
}

int rt_proc_spawn(const RtProcSpec *spec, int pipes, RtProc *out, RtError *err)
{
    out->pid = -1;
    out->in_fd = out->out_fd = out->err_fd = -1;
    if (!spec->argv || !spec->argv[0])
        return rt_error_set(err, RT_CLASS_USAGE, "proc.argv", "no command given to run");
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    char **env = build_env(spec);
    int rc = env ? 0 : ENOMEM;
    if (!rc && (pipes & RT_PROC_STDIN)) rc = pipe2(pin, O_CLOEXEC) ? errno : 0;
    if (!rc && (pipes & RT_PROC_STDOUT)) rc = pipe2(pout, O_CLOEXEC) ? errno : 0;
    if (!rc && (pipes & RT_PROC_STDERR)) rc = pipe2(perr, O_CLOEXEC) ? errno : 0;
    if (!rc) {
        if (pipes & RT_PROC_STDIN)
            posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
        else
            posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (pipes & RT_PROC_STDOUT)
            posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
        else if (pipes & RT_PROC_QUIET)
            posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        if (pipes & RT_PROC_STDERR) posix_spawn_file_actions_adddup2(&fa, perr[1], 2);
        if (spec->cwd) posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
        /* dup2 onto itself clears FD_CLOEXEC in the child only (POSIX.1-2024, glibc >= 2.29) */
        if (spec->inherit_fd > 2)
            posix_spawn_file_actions_adddup2(&fa, spec->inherit_fd, spec->inherit_fd);
        rc = posix_spawnp(&out->pid, spec->argv[0], &fa, &attr, (char *const *)spec->argv, env);
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(env);
    if (pin[0] >= 0) close(pin[0]);
    if (pout[1] >= 0) close(pout[1]);
    if (perr[1] >= 0) close(perr[1]);
    out->in_fd = pin[1];
    out->out_fd = pout[0];
    out->err_fd = perr[0];
    if (rc) {
        rt_proc_close_fds(out);
        out->pid = -1;
        rt_error_errno(err, "spawn", rc, "cannot run %s", spec->argv[0]);
        if (rc == ENOENT) {
            err->hint[0] = '\0';
            rt_error_hint(err, "install %s or put it on PATH", spec->argv[0]);
        }
        return RT_ERR;
    }
    return RT_OK;
}

static int decode_status(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

/* waitpid without blocking: 1 reaped (status in *st), 0 still running, -1 error. */
static int try_reap(RtProc *p, int *st)
{
    int status;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WNOHANG)) < 0 && errno == EINTR) {
    }
    if (r < 0) {
        p->pid = -1;
        *st = -1;
        return -1;
    }
    if (r == 0) return 0;
    p->pid = -1;
    *st = decode_status(status);
    return 1;
}

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int rt_proc_wait(RtProc *p)
{
    if (p->pid <= 0) return -1;
    /* Polled, not a blocking waitpid, so that a cancel (signal, --timeout) is seen within 50 ms
     * even when the child never exits by itself; the nap grows from 1 ms so a child that is
     * already exiting costs no latency. */
    int st, ms = 1;
    for (;;) {
        if (try_reap(p, &st) != 0) return st;
        if (rt_cancelled()) return rt_proc_terminate(p, RT_PROC_GRACE);
        nap(ms);
        if (ms < 50) ms *= 2;
    }
}

int rt_proc_poll(RtProc *p)
{
    if (p->pid <= 0) return -1; /* never waitpid(-1): that would reap someone else's child */
    int st;
    return try_reap(p, &st) == 0 ? RT_PROC_RUNNING : st;
}

int rt_proc_terminate(RtProc *p, double grace)
{
    if (p->pid <= 0) return -1;
    rt_proc_kill(p, SIGTERM);
    int st;
    for (double waited = 0; waited < grace; waited += 0.02) {
        if (rt_cancel_hurried() && waited >= 0.5) break; /* a second signal: 0.5 s is enough */
        if (try_reap(p, &st) != 0) return st;
        nap(20);
    }
    rt_proc_kill(p, SIGKILL);
    int status;
    pid_t pid = p->pid;
    p->pid = -1;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return decode_status(status);
}

void rt_proc_kill(RtProc *p, int sig)
{
    /* the whole group: the child and whatever it started (see the top of this file) */
    if (p->pid > 0 && kill(-p->pid, sig) != 0) kill(p->pid, sig);
}

void rt_proc_close_fds(RtProc *p)
{
    if (p->in_fd >= 0) close(p->in_fd);
    if (p->out_fd >= 0) close(p->out_fd);
    if (p->err_fd >= 0) close(p->err_fd);
    p->in_fd = p->out_fd = p->err_fd = -1;
}

/* ---- capture ---------------------------------------------------------------------------- */

int rt_proc_communicate(RtProc *p, const char *in, size_t in_len, RtProcCapture *out,
                        RtProcCapture *err_c)
{
    size_t in_pos = 0;
    if (p->in_fd >= 0 && in_len == 0) {
        close(p->in_fd);
        p->in_fd = -1;
    }
    while (p->out_fd >= 0 || p->err_fd >= 0 || p->in_fd >= 0) {
        if (rt_cancelled()) {
            rt_proc_kill(p, 15);
            break;
        }
        struct pollfd fds[3];
        int nf = 0, io = -1, oo = -1, eo = -1;
        if (p->in_fd >= 0) fds[io = nf++] = (struct pollfd){p->in_fd, POLLOUT, 0};
        if (p->out_fd >= 0) fds[oo = nf++] = (struct pollfd){p->out_fd, POLLIN, 0};
        if (p->err_fd >= 0) fds[eo = nf++] = (struct pollfd){p->err_fd, POLLIN, 0};
        int r = poll(fds, (nfds_t)nf, 100);
        if (r < 0 && errno != EINTR) break;
        if (r <= 0) continue;
        char buf[16384];
        if (io >= 0 && fds[io].revents) {
            ssize_t w = write(p->in_fd, in + in_pos, in_len - in_pos);
            if (w > 0) in_pos += (size_t)w;
            if (w < 0 || in_pos == in_len) {
                close(p->in_fd);
                p->in_fd = -1;
            }
        }
        if (oo >= 0 && fds[oo].revents) {
            ssize_t n = read(p->out_fd, buf, sizeof buf);
            if (n > 0)
                sb_addn(out, buf, (size_t)n);
            else if (n == 0 || errno != EINTR) {
                close(p->out_fd);
                p->out_fd = -1;
            }
        }
        if (eo >= 0 && fds[eo].revents) {
            ssize_t n = read(p->err_fd, buf, sizeof buf);
            if (n > 0)
                sb_addn(err_c, buf, (size_t)n);
            else if (n == 0 || errno != EINTR) {
                close(p->err_fd);
                p->err_fd = -1;
            }
        }
    }
    rt_proc_close_fds(p);
    return rt_proc_wait(p);
}
