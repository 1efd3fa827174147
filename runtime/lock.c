/*
 * File locks — see lock.h.
 */
#include "lock.h"
#include "io/cancel.h"
#include "timestamp.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static int open_lock_file(const char *path, RtError *err)
{
    /* read-only is enough for flock(2), and lets any user who can read an old lock file left
     * by another (root's) run take it */
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0600);
    if (fd < 0)
        return rt_error_errno(err, "lock.open", errno, "cannot open the lock file %s", path);
    if (fd <= 2) {
        /* a descriptor that a child would take for stdin/out/err: move it up */
        int up = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        int e = errno;
        close(fd);
        if (up < 0)
            return rt_error_errno(err, "lock.open", e, "cannot open the lock file %s", path);
        fd = up;
    }
    return fd;
}

int rt_lock_take(const char *path, double wait, int *fd_out, RtError *err)
{
    *fd_out = -1;
    int fd = open_lock_file(path, err);
    if (fd < 0) return RT_ERR;
    double t0 = rt_monotonic();
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            *fd_out = fd;
            return 1;
        }
        if (errno != EWOULDBLOCK && errno != EINTR) {
            int e = errno;
            close(fd);
            return rt_error_errno(err, "lock.flock", e, "cannot lock %s", path);
        }
        double waited = rt_monotonic() - t0;
        if (waited >= wait) break;
        /* a non-blocking try every 50 ms rather than a blocking flock, so that a cancel is seen */
        double nap = wait - waited < 0.05 ? wait - waited : 0.05;
        if (!rt_sleep_cancellable(nap)) {
            close(fd);
            return rt_cancel_error(err);
        }
    }
    close(fd);
    return 0;
}

void rt_lock_release(int fd)
{
    if (fd < 0) return;
    /* close, not LOCK_UN: an unlock would drop the lock of the whole open file description,
     * which a still-running child that inherited it shares */
    close(fd);
}
