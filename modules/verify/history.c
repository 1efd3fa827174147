/* The verification history's local append — see history.h. */
#include "history.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void mkdir_parents(const char *path)
{
    char *p = strdup(path);
    if (!p) return;
    for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        if (mkdir(p, 0750) != 0 && errno != EEXIST) break;
        *s = '/';
    }
    free(p);
}

int verify_append_line(const char *path, const char *line, size_t len, RtError *err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0 && errno == ENOENT) {
        mkdir_parents(path);
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    }
    if (fd < 0)
        return rt_error_errno(err, "history", errno, "cannot open the verification history %s",
                              path);
    /* one write for the whole line: O_APPEND writes to a local file are not interleaved */
    ssize_t n;
    do n = write(fd, line, len);
    while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0)
        return rt_error_errno(err, "history", saved, "cannot write the verification history %s",
                              path);
    if ((size_t)n != len)
        return rt_error_set(err, RT_CLASS_FAILURE, "verify.history",
                            "short write to the verification history %s (disk full?)", path);
    return RT_OK;
}
