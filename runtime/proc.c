/*
 * Child processes — see proc.h. posix_spawnp with an explicit environment: our environment
 * plus `env_set`, minus `env_unset`. No shell is involved, so no quoting bugs and no argv
 * secrets.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
    char **env = build_env(spec);
    int rc = env ? 0 : ENOMEM;
    if (!rc && (pipes & RT_PROC_STDIN)) rc = pipe2(pin, O_CLOEXEC) ? errno : 0;
    if (!rc && (pipes & RT_PROC_STDOUT)) rc = pipe2(pout, O_CLOEXEC) ? errno : 0;
    if (!rc && (pipes & RT_PROC_STDERR)) rc = pipe2(perr, O_CLOEXEC) ? errno : 0;
    if (!rc) {
        if (pipes & RT_PROC_STDIN) posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
        else posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (pipes & RT_PROC_STDOUT) posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
        else if (pipes & RT_PROC_QUIET) posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        if (pipes & RT_PROC_STDERR) posix_spawn_file_actions_adddup2(&fa, perr[1], 2);
        if (spec->cwd) posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
        /* dup2 onto itself clears FD_CLOEXEC in the child only (POSIX.1-2024, glibc >= 2.29) */
        if (spec->inherit_fd > 2) posix_spawn_file_actions_adddup2(&fa, spec->inherit_fd, spec->inherit_fd);
        rc = posix_spawnp(&out->pid, spec->argv[0], &fa, NULL, (char *const *)spec->argv, env);
    }
    posix_spawn_file_actions_destroy(&fa);
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

int rt_proc_wait(RtProc *p)
{
    if (p->pid <= 0) return -1;
    int status;
    while (waitpid(p->pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    p->pid = -1;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

void rt_proc_kill(RtProc *p, int sig)
{
    if (p->pid > 0) kill(p->pid, sig);
}

void rt_proc_close_fds(RtProc *p)
{
    if (p->in_fd >= 0) close(p->in_fd);
    if (p->out_fd >= 0) close(p->out_fd);
    if (p->err_fd >= 0) close(p->err_fd);
    p->in_fd = p->out_fd = p->err_fd = -1;
}
