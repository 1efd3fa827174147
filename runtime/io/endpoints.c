/*
 * Runtime stream endpoints — see endpoints.h.
 */
#include "endpoints.h"
#include "../proc.h"
#include "../redact.h"
#include "../sbuf.h"
#include "cancel.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- descriptors ------------------------------------------------------------------------ */

typedef struct FdSrc {
    int fd;
    bool own;
    int64_t size;
    char name[256];
} FdSrc;

static int fd_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    FdSrc *s = self;
    for (;;) {
        /* a pipe or terminal may stay silent: wait where a cancel can end the wait */
        if (rt_wait_fd(s->fd, POLLIN, err) != RT_OK) return RT_ERR;
        ssize_t n = read(s->fd, buf, cap);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return rt_error_errno(err, "read", errno, "cannot read %s", s->name);
        *got = (size_t)n;
        *eof = n == 0;
        return RT_OK;
    }
}

static int64_t fd_size(void *self)
{
    return ((FdSrc *)self)->size;
}

static void fd_src_destroy(void *self)
{
    FdSrc *s = self;
    if (s->own && s->fd >= 0) close(s->fd);
    free(s);
}

static const RtSourceOps file_source_ops = {
    .name = "file", .read = fd_read, .size_hint = fd_size, .destroy = fd_src_destroy};

static RtSource *make_fd_source(int fd, bool own, const char *name, RtError *err)
{
    RtSource *src = rt_source_new();
    FdSrc *s = calloc(1, sizeof *s);
    if (!src || !s) {
        free(src);
        free(s);
        if (own) close(fd);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    s->fd = fd;
    s->own = own;
    snprintf(s->name, sizeof s->name, "%s", name);
    struct stat st;
    s->size = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (int64_t)st.st_size : -1;
    rt_source_init(src, &file_source_ops, s);
    return src;
}

RtSource *rt_file_source(const char *path, RtError *err)
{
    if (strcmp(path, "-") == 0) return rt_fd_source(0, "stdin", err);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rt_error_errno(err, "open", errno, "cannot open %s", path);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        rt_error_set(err, RT_CLASS_USAGE, "io.open", "%s is a directory, not a file", path);
        return NULL;
    }
    return make_fd_source(fd, true, path, err);
}

RtSource *rt_fd_source(int fd, const char *name, RtError *err)
{
    return make_fd_source(fd, false, name, err);
}

/* ---- memory source ---------------------------------------------------------------------- */

typedef struct MemSrc {
    uint8_t *data; /* owned, unless it is a spool's (then the spool holds it) */
    size_t len, pos;
    RtSpool *spool;
} MemSrc;

static int mem_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    (void)err;
    MemSrc *s = self;
    size_t n = s->len - s->pos < cap ? s->len - s->pos : cap;
    if (n) memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    *got = n;
    *eof = s->pos == s->len;
    return RT_OK;
}

static int64_t mem_size(void *self)
{
    return (int64_t)((MemSrc *)self)->len;
}

static void mem_src_destroy(void *self)
{
    MemSrc *s = self;
    if (s->spool)
        rt_spool_release(s->spool);
    else
        free(s->data);
    free(s);
}

static const RtSourceOps memory_source_ops = {
    .name = "memory", .read = mem_read, .size_hint = mem_size, .destroy = mem_src_destroy};

RtSource *rt_mem_source(const void *data, size_t len, RtError *err)
{
    RtSource *src = rt_source_new();
    MemSrc *s = calloc(1, sizeof *s);
    uint8_t *copy = malloc(len ? len : 1);
    if (!src || !s || !copy) {
        free(src);
        free(s);
        free(copy);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    if (len) memcpy(copy, data, len);
    s->data = copy;
    s->len = len;
    rt_source_init(src, &memory_source_ops, s);
    return src;
}

/* ---- file and descriptor sinks ---------------------------------------------------------- */

typedef struct FileSink {
    int fd;
    bool own;    /* we opened fd */
    bool atomic; /* temp file renamed on finish */
    bool finished;
    char *path; /* final name */
    char *tmp;  /* temp name */
    uint64_t bytes;
    uint64_t flushed; /* bytes handed to the kernel's writeback (atomic files) */
} FileSink;

/* Writeback starts every FLUSH_AFTER bytes of a file we sync at the end, as PostgreSQL's
 * *_flush_after settings do: the disk writes while the pipe runs, and the final fsync waits
 * for the last stretch only (it took 0.2 s at the end of a 427 MB dump). */
#define FLUSH_AFTER ((uint64_t)16 << 20)

/* How much of `want` bytes a write to the pipe fd takes without blocking, once poll said
 * POLLOUT. A blocking write to a pipe waits until all of it is in, so a reader that stops would
 * hold a cancel up for ever. POLLOUT means one free page slot at least, so PIPE_BUF bytes always
 * go in; beyond that, the slots not in use: the pipe's capacity less the queued bytes, counting
 * a partial page at each end as a whole one. Not a pipe: all of it (a file never blocks; our
 * children's pipes are non-blocking, see rt_child_sink). */
static size_t pipe_room(int fd, bool is_pipe, size_t want)
{
    if (!is_pipe || want <= PIPE_BUF) return want;
    int cap = fcntl(fd, F_GETPIPE_SZ), queued = 0;
    if (cap <= 0 || ioctl(fd, FIONREAD, &queued) != 0) return PIPE_BUF;
    long page = 4096, free_slots = cap / page - (queued + page - 1) / page - 1;
    size_t room = free_slots > 1 ? (size_t)free_slots * (size_t)page : PIPE_BUF;
    return want < room ? want : room;
}

static int write_all(int fd, const uint8_t *data, size_t len, const char *name, RtError *err)
{
    struct stat st;
    bool is_pipe = fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
    while (len) {
        /* a child or a pipe reader that stops reading must not hold a cancel up */
        if (rt_wait_fd(fd, POLLOUT, err) != RT_OK) return RT_ERR;
        ssize_t n = write(fd, data, pipe_room(fd, is_pipe, len));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) {
            if (errno == EPIPE)
                return rt_error_set(err, RT_CLASS_FAILURE, "io.epipe",
                                    "%s was closed by the reader", name);
            return rt_error_errno(err, "write", errno, "cannot write %s", name);
        }
        data += n;
        len -= (size_t)n;
    }
    return RT_OK;
}

static int fsink_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    FileSink *s = self;
    s->bytes += len;
    if (write_all(s->fd, data, len, s->path, err) != RT_OK) return RT_ERR;
#ifdef SYNC_FILE_RANGE_WRITE
    if (s->atomic && s->bytes - s->flushed >= FLUSH_AFTER) {
        /* asynchronous: failures show at the final fsync */
        (void)sync_file_range(s->fd, (off_t)s->flushed, (off_t)(s->bytes - s->flushed),
                              SYNC_FILE_RANGE_WRITE);
        s->flushed = s->bytes;
    }
#endif
    return RT_OK;
}

static int fsink_finish(void *self, RtError *err)
{
    FileSink *s = self;
    if (!s->atomic) {
        (void)fsync(s->fd); /* stdout may be a pipe or a tty, which cannot be synced */
        s->finished = true;
        return RT_OK;
    }
    if (fsync(s->fd) != 0) return rt_error_errno(err, "fsync", errno, "cannot sync %s", s->path);
    if (close(s->fd) != 0) {
        s->fd = -1;
        return rt_error_errno(err, "close", errno, "cannot close %s", s->path);
    }
    s->fd = -1;
    if (rename(s->tmp, s->path) != 0)
        return rt_error_errno(err, "rename", errno, "cannot rename %s to %s", s->tmp, s->path);
    s->finished = true;
    return RT_OK;
}

static void fsink_abort(void *self)
{
    FileSink *s = self;
    if (s->atomic && !s->finished) {
        if (s->fd >= 0) close(s->fd);
        s->fd = -1;
        if (s->tmp) unlink(s->tmp);
    }
}

static void fsink_results(void *self, RtResults *res)
{
    FileSink *s = self;
    rt_results_int(res, "bytes", (int64_t)s->bytes);
    if (s->atomic) rt_results_str(res, "path", s->path);
}

static void fsink_destroy(void *self)
{
    FileSink *s = self;
    fsink_abort(s); /* no-op once finished */
    if (s->own && s->fd >= 0) close(s->fd);
    free(s->path);
    free(s->tmp);
    free(s);
}

static const RtSinkOps file_sink_ops = {.name = "file_sink",
                                        .write = fsink_write,
                                        .finish = fsink_finish,
                                        .abort = fsink_abort,
                                        .results = fsink_results,
                                        .destroy = fsink_destroy};
static const RtSinkOps stdout_sink_ops = {.name = "stdout",
                                          .write = fsink_write,
                                          .finish = fsink_finish,
                                          .abort = fsink_abort,
                                          .results = fsink_results,
                                          .destroy = fsink_destroy};

static RtSink *make_file_sink(FileSink *s)
{
    RtSink *k = rt_sink_new();
    if (!k) return NULL;
    rt_sink_init(k, s->atomic ? &file_sink_ops : &stdout_sink_ops, s);
    return k;
}

/* A character device or FIFO (`-o /dev/null`, `-o /dev/stdout`, a named pipe) is written in
 * place: it cannot be replaced by a renamed temp file, nor does it hold anything to protect.
 * A block device is only written with `overwrite` (--force), also in place. */
static RtSink *device_sink(const char *path, RtError *err)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        rt_error_errno(err, "open", errno, "cannot open %s", path);
        return NULL;
    }
    RtSink *k = rt_fd_sink(fd, path, err);
    if (!k) {
        close(fd);
        return NULL;
    }
    ((FileSink *)k->self)->own = true;
    k->name = "file_sink";
    return k;
}

RtSink *rt_file_sink(const char *path, bool overwrite, RtError *err)
{
    if (strcmp(path, "-") == 0) return rt_fd_sink(1, "stdout", err);
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || (S_ISBLK(st.st_mode) && overwrite))
            return device_sink(path, err);
        if (S_ISDIR(st.st_mode)) {
            rt_error_set(err, RT_CLASS_USAGE, "io.open", "%s is a directory, not a file", path);
            rt_error_hint(err, "give the name of the file to write");
            return NULL;
        }
    }
    if (!overwrite && lstat(path, &st) == 0) {
        rt_error_set(err, RT_CLASS_USAGE, "io.exists", "%s already exists", path);
        rt_error_hint(err, "choose another name or remove the file first");
        return NULL;
    }
    FileSink *s = calloc(1, sizeof *s);
    char *dcopy = strdup(path), *bcopy = strdup(path);
    if (!s || !dcopy || !bcopy) goto nomem;
    s->path = strdup(path);
    const char *dir = dirname(dcopy), *base = basename(bcopy);
    size_t tl = strlen(dir) + strlen(base) + 32;
    s->tmp = malloc(tl);
    if (!s->path || !s->tmp) goto nomem;
    snprintf(s->tmp, tl, "%s/.%s.tmp-XXXXXX", dir, base);
    s->fd = mkostemp(s->tmp, O_CLOEXEC); /* mode 0600: a partial file is nobody's business */
    if (s->fd < 0) {
        rt_error_errno(err, "open", errno, "cannot create a file in %s", dir);
        free(s->tmp);
        s->tmp = NULL;
        goto fail;
    }
    s->own = s->atomic = true;
    free(dcopy);
    free(bcopy);
    RtSink *k = make_file_sink(s); /* named "file_sink" */
    if (!k) {
        fsink_destroy(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    return k;
nomem:
    rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
fail:
    free(dcopy);
    free(bcopy);
    if (s) {
        free(s->path);
        free(s->tmp);
        free(s);
    }
    return NULL;
}

int rt_write_file(const char *path, const void *data, size_t len, bool overwrite, RtError *err)
{
    RtSink *k = rt_file_sink(path, overwrite, err);
    if (!k) return RT_ERR;
    int rc = k->write(k->self, data, len, err);
    if (rc == RT_OK) rc = k->finish(k->self, err);
    if (rc != RT_OK) k->abort(k->self);
    rt_sink_free(k);
    return rc;
}

RtSink *rt_fd_sink(int fd, const char *name, RtError *err)
{
    FileSink *s = calloc(1, sizeof *s);
    if (s) s->path = strdup(name);
    RtSink *k = s && s->path ? make_file_sink(s) : NULL;
    if (!k) {
        if (s) free(s->path);
        free(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    s->fd = fd;
    return k;
}

/* ---- memory sink ------------------------------------------------------------------------ */

/* The memory sink is an SBuf whose cap is an error, not a truncation: a write past `limit` fails
 * with io.memory_full and keeps nothing of it. */
typedef SBuf MemSink;

static int msink_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    MemSink *s = self;
    if (len > s->limit - s->len)
        return rt_error_set(err, RT_CLASS_FAILURE, "io.memory_full",
                            "memory sink full (limit %zu bytes)", s->limit);
    sb_addn(s, (const char *)data, len);
    if (s->oom) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    return RT_OK;
}

static int msink_finish(void *self, RtError *err)
{
    (void)self;
    (void)err;
    return RT_OK;
}

static void msink_abort(void *self)
{
    sb_clear(self);
}

static void msink_results(void *self, RtResults *res)
{
    MemSink *s = self;
    rt_results_int(res, "bytes", (int64_t)s->len);
    rt_results_strn(res, "data", s->p ? s->p : "", s->len);
}

static void msink_destroy(void *self)
{
    sb_free(self);
    free(self);
}

static const RtSinkOps buffer_sink_ops = {.name = "buffer",
                                          .write = msink_write,
                                          .finish = msink_finish,
                                          .abort = msink_abort,
                                          .results = msink_results,
                                          .destroy = msink_destroy};

RtSink *rt_mem_sink(size_t limit, RtError *err)
{
    RtSink *k = rt_sink_new();
    MemSink *s = calloc(1, sizeof *s);
    if (!k || !s) {
        free(k);
        free(s);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    s->limit = limit;
    rt_sink_init(k, &buffer_sink_ops, s);
    return k;
}

const uint8_t *rt_mem_sink_data(const RtSink *k, size_t *len)
{
    const MemSink *s = k->self;
    *len = s->len;
    return s->p ? (const uint8_t *)s->p : (const uint8_t *)"";
}

/* ---- spool: a memory sink that a later pipe reads as a memory source ------------------------ */

struct RtSpool {
    atomic_int refs;
    SBuf data;            /* written as the memory sink writes its SBuf */
    atomic_bool complete; /* the sink finished: the bytes are whole and no longer change */
    bool has_sink;
};

RtSpool *rt_spool_new(size_t limit)
{
    RtSpool *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    atomic_init(&s->refs, 1);
    atomic_init(&s->complete, false);
    s->data.limit = limit ? limit : SIZE_MAX;
    return s;
}

void rt_spool_release(RtSpool *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
    sb_free(&s->data);
    free(s);
}

size_t rt_spool_bytes(const RtSpool *s)
{
    return atomic_load(&((RtSpool *)s)->complete) ? s->data.len : 0;
}

static int spool_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    return msink_write(&((RtSpool *)self)->data, data, len, err);
}

static int spool_finish(void *self, RtError *err)
{
    (void)err;
    atomic_store(&((RtSpool *)self)->complete, true);
    return RT_OK;
}

static void spool_abort(void *self)
{
    msink_abort(&((RtSpool *)self)->data);
}

static void spool_results(void *self, RtResults *res)
{
    rt_results_int(res, "bytes", (int64_t)((RtSpool *)self)->data.len);
}

static void spool_release_stage(void *self)
{
    rt_spool_release(self);
}

static const RtSinkOps spool_sink_ops = {.name = "spool",
                                         .write = spool_write,
                                         .finish = spool_finish,
                                         .abort = spool_abort,
                                         .results = spool_results,
                                         .destroy = spool_release_stage};

RtSink *rt_spool_sink(RtSpool *s, RtError *err)
{
    if (s->has_sink) {
        rt_error_set(err, RT_CLASS_USAGE, "io.spool", "a spool takes one sink");
        return NULL;
    }
    RtSink *k = rt_sink_new();
    if (!k) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    s->has_sink = true;
    atomic_fetch_add(&s->refs, 1);
    rt_sink_init(k, &spool_sink_ops, s);
    return k;
}

/* The memory source's functions over the spool's bytes (a reference, not a copy). */
static const RtSourceOps spool_source_ops = {
    .name = "spool", .read = mem_read, .size_hint = mem_size, .destroy = mem_src_destroy};

RtSource *rt_spool_source(RtSpool *s, RtError *err)
{
    if (!atomic_load(&s->complete)) {
        rt_error_set(err, RT_CLASS_USAGE, "io.spool",
                     "the spool is not complete: its pipe has not finished");
        return NULL;
    }
    RtSource *src = rt_source_new();
    MemSrc *r = calloc(1, sizeof *r);
    if (!src || !r) {
        free(src);
        free(r);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    atomic_fetch_add(&s->refs, 1);
    *r = (MemSrc){.data = (uint8_t *)s->data.p, .len = s->data.len, .spool = s};
    rt_source_init(src, &spool_source_ops, r);
    return src;
}

/* ---- count filter ----------------------------------------------------------------------- */

static int count_observe(void *self, const uint8_t *data, size_t len, RtError *err)
{
    (void)data;
    (void)err;
    *(uint64_t *)self += len;
    return RT_OK;
}

static void count_results(void *self, RtResults *res)
{
    rt_results_int(res, "bytes", (int64_t) * (uint64_t *)self);
}

static const RtFilterOps count_filter_ops = {
    .name = "count", .observe = count_observe, .results = count_results, .destroy = free};

RtFilter *rt_count_filter(RtError *err)
{
    RtFilter *f = rt_filter_new();
    uint64_t *n = calloc(1, sizeof *n);
    if (!f || !n) {
        free(f);
        free(n);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_filter_init(f, &count_filter_ops, n);
    return f;
}

/* ---- child processes -------------------------------------------------------------------- */

typedef struct Child {
    RtProc proc;
    char name[128];
    pthread_t err_thread;
    bool err_thread_started;
    char err_tail[512]; /* last bytes the child wrote on stderr, for the error message */
    size_t err_len;
    pthread_mutex_t mu;
    atomic_bool stop; /* the child has been waited for: the reader may stop once the pipe is idle */
    bool waited;
    int status;
} Child;

/* Drains the child's stderr so it never blocks on a full pipe, keeping the tail, and passes
 * it on to our stderr (children like pg_dump say useful things there). */
static void *child_err_main(void *arg)
{
    Child *c = arg;
    char buf[4096];
    /* The fd is read-only here and closed only after this thread is joined. A grandchild that
     * inherited the pipe could keep it open after the child is gone: once the child has been
     * waited for (`stop`), an idle pipe ends the loop instead of blocking the join forever. */
    int fd = c->proc.err_fd;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 200);
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) {
            if (atomic_load(&c->stop)) break;
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        pthread_mutex_lock(&c->mu);
        for (ssize_t i = 0; i < n; i++) {
            if (c->err_len == sizeof c->err_tail - 1) {
                memmove(c->err_tail, c->err_tail + 256, c->err_len - 256);
                c->err_len -= 256;
            }
            c->err_tail[c->err_len++] = buf[i];
        }
        c->err_tail[c->err_len] = '\0';
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

static Child *child_start(const RtProcSpec *spec, int pipes, RtError *err)
{
    Child *c = calloc(1, sizeof *c);
    if (!c) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    snprintf(c->name, sizeof c->name, "%s", spec->argv && spec->argv[0] ? spec->argv[0] : "?");
    if (rt_proc_spawn(spec, pipes | RT_PROC_STDERR, &c->proc, err) != RT_OK) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return NULL;
    }
    c->err_thread_started = pthread_create(&c->err_thread, NULL, child_err_main, c) == 0;
    return c;
}

/* Waits for the child and turns a non-zero status into an error with its last stderr line. */
static int child_finish(Child *c, RtError *err)
{
    if (c->proc.in_fd >= 0) {
        close(c->proc.in_fd);
        c->proc.in_fd = -1;
    }
    if (c->proc.out_fd >= 0) {
        close(c->proc.out_fd);
        c->proc.out_fd = -1;
    }
    if (!c->waited) {
        c->status = rt_proc_wait(&c->proc);
        c->waited = true;
    }
    atomic_store(&c->stop, true);
    if (c->err_thread_started) {
        pthread_join(c->err_thread, NULL);
        c->err_thread_started = false;
    }
    if (c->status == 0) return RT_OK;
    /* the last non-empty line of stderr */
    char *tail = c->err_tail;
    size_t n = strlen(tail);
    while (n && (tail[n - 1] == '\n' || tail[n - 1] == '\r')) tail[--n] = '\0';
    char *line = strrchr(tail, '\n');
    line = line ? line + 1 : tail;
    if (*line)
        return rt_error_set(err, RT_CLASS_FAILURE, "proc.exit", "%s exited with status %d: %s",
                            c->name, c->status, line);
    return rt_error_set(err, RT_CLASS_FAILURE, "proc.exit", "%s exited with status %d", c->name,
                        c->status);
}

/* Stops the child (and its process group) on abort or cancel: SIGTERM, then SIGKILL if it is
 * still there after RT_PROC_GRACE seconds, so that a child that ignores SIGTERM cannot hold the
 * process up. */
static void child_kill(Child *c)
{
    if (!c->waited && c->proc.pid > 0) {
        /* stdin/stdout only: stderr belongs to the reader thread until it is joined */
        if (c->proc.in_fd >= 0) close(c->proc.in_fd);
        if (c->proc.out_fd >= 0) close(c->proc.out_fd);
        c->proc.in_fd = c->proc.out_fd = -1;
        c->status = rt_proc_terminate(&c->proc, RT_PROC_GRACE);
        c->waited = true;
    }
    atomic_store(&c->stop, true);
    if (c->err_thread_started) {
        pthread_join(c->err_thread, NULL);
        c->err_thread_started = false;
    }
}

static void child_destroy(void *self)
{
    Child *c = self;
    child_kill(c);
    rt_proc_close_fds(&c->proc);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int child_read(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err)
{
    Child *c = self;
    for (;;) {
        /* A child that stops writing (`sh -c 'echo x; sleep 60'`) would block a plain read until
         * it exits: wait in poll, so that a signal or --timeout ends the wait; the abort then
         * kills the child (child_kill). */
        if (rt_wait_fd(c->proc.out_fd, POLLIN, err) != RT_OK) return RT_ERR;
        ssize_t n = read(c->proc.out_fd, buf, cap);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return rt_error_errno(err, "read", errno, "cannot read from %s", c->name);
        *got = (size_t)n;
        *eof = n == 0;
        /* The stream is only complete if the child says so: check its exit status at EOF. */
        if (n == 0) return child_finish(c, err);
        return RT_OK;
    }
}

static const RtSourceOps command_source_ops = {
    .name = "command", .read = child_read, .destroy = child_destroy};

RtSource *rt_child_source(const RtProcSpec *spec, RtError *err)
{
    Child *c = child_start(spec, RT_PROC_STDOUT, err);
    if (!c) return NULL;
    RtSource *src = rt_source_new();
    if (!src) {
        child_destroy(c);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_source_init(src, &command_source_ops, c);
    return src;
}

static int child_write(void *self, const uint8_t *data, size_t len, RtError *err)
{
    Child *c = self;
    if (write_all(c->proc.in_fd, data, len, c->name, err) == RT_OK) return RT_OK;
    /* the child died early: its own message says more than EPIPE */
    RtError e2;
    rt_error_init(&e2);
    if (child_finish(c, &e2) != RT_OK) {
        rt_error_clear(err);
        rt_error_copy(err, &e2);
    }
    return RT_ERR;
}

static int child_sink_finish(void *self, RtError *err)
{
    return child_finish(self, err);
}
static void child_sink_abort(void *self)
{
    child_kill(self);
}

static const RtSinkOps command_sink_ops = {.name = "command",
                                           .write = child_write,
                                           .finish = child_sink_finish,
                                           .abort = child_sink_abort,
                                           .destroy = child_destroy};

RtSink *rt_child_sink(const RtProcSpec *spec, bool quiet, RtError *err)
{
    Child *c = child_start(spec, RT_PROC_STDIN | (quiet ? RT_PROC_QUIET : 0), err);
    if (!c) return NULL;
    /* our end only (the child's is another file description): a child that stops reading makes
     * write return EAGAIN, and write_all waits where a cancel is seen */
    fcntl(c->proc.in_fd, F_SETFL, fcntl(c->proc.in_fd, F_GETFL) | O_NONBLOCK);
    RtSink *k = rt_sink_new();
    if (!k) {
        child_destroy(c);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    rt_sink_init(k, &command_sink_ops, c);
    return k;
}
