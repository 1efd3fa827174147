/*
 * Streaming core: the pipe with runtime endpoints and test filters — 1-byte and odd buffer
 * sizes, empty input, a transform filter that expands and one that needs "same input again",
 * an error in the middle (sink aborted, no file left), cancel, and the results tree.
 */
#include "harness.h"
#include "io/cancel.h"
#include "io/endpoints.h"
#include "io/pipe.h"
#include "proc.h"

#include <dirent.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A transform filter that doubles every byte and, on flush, appends "END" — its output is
 * larger than its input, so with small buffers it hits "output full" constantly. */
typedef struct Doubler {
    int flushed;    /* bytes of "END" written */
    size_t pending; /* 1 if the second copy of a byte still has to be written */
    uint8_t pending_byte;
} Doubler;

static int doubler_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    (void)err;
    Doubler *d = self;
    if (d->pending && rt_buf_space(out)) {
        out->data[out->used++] = d->pending_byte;
        d->pending = 0;
    }
    if (!in) {
        while (!d->pending && d->flushed < 3 && rt_buf_space(out))
            out->data[out->used++] = "END"[d->flushed++];
        *done = d->flushed == 3 && !d->pending;
        return RT_OK;
    }
    while (!d->pending && rt_buf_remain(in) && rt_buf_space(out)) {
        uint8_t c = in->data[in->pos++];
        out->data[out->used++] = c;
        if (rt_buf_space(out))
            out->data[out->used++] = c;
        else {
            d->pending = 1;
            d->pending_byte = c;
        }
    }
    return RT_OK;
}

static RtFilter *doubler_new(void)
{
    RtFilter *f = rt_filter_new();
    f->name = "doubler";
    f->self = calloc(1, sizeof(Doubler));
    f->process = doubler_process;
    f->destroy = free;
    return f;
}

/* An observing filter that fails after N bytes. */
typedef struct Failer {
    size_t seen, limit;
} Failer;

static int failer_observe(void *self, const uint8_t *data, size_t len, RtError *err)
{
    (void)data;
    Failer *f = self;
    f->seen += len;
    if (f->seen > f->limit)
        return rt_error_set(err, RT_CLASS_VERIFY, "test.fail", "injected failure after %zu bytes",
                            f->limit);
    return RT_OK;
}

static RtFilter *failer_new(size_t limit)
{
    RtFilter *f = rt_filter_new();
    Failer *s = calloc(1, sizeof *s);
    s->limit = limit;
    f->name = "failer";
    f->self = s;
    f->observe = failer_observe;
    f->destroy = free;
    return f;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/clubio-test-pipe-XXXXXX");
    if (!mkdtemp(tmpdir)) abort();
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static uint8_t *pattern(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 31 + (i >> 8));
    return p;
}

/* memory -> doubler -> count -> memory, checking every byte. */
static bool run_doubler(size_t n, size_t bufsize, int depth)
{
    RtError err;
    rt_error_init(&err);
    uint8_t *in = pattern(n);
    RtPipeOptions o = {.buffer_size = bufsize, .queue_depth = depth};
    RtPipe *p = rt_pipe_new(&o);
    rt_pipe_set_source(p, rt_mem_source(in, n, &err), NULL);
    rt_pipe_add_filter(p, doubler_new(), NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), NULL);
    RtSink *sink = rt_mem_sink(4 * n + 16, &err);
    rt_pipe_set_sink(p, sink, NULL);
    bool ok = rt_pipe_run(p, &err) == RT_OK;
    if (!ok) fprintf(stderr, "  pipe failed: %s\n", err.message);
    size_t len = 0;
    const uint8_t *out = rt_mem_sink_data(sink, &len);
    ok = ok && len == 2 * n + 3;
    for (size_t i = 0; ok && i < n; i++) ok = out[2 * i] == in[i] && out[2 * i + 1] == in[i];
    ok = ok && memcmp(out + 2 * n, "END", 3) == 0;
    const RtResults *r = rt_pipe_results(p);
    ok = ok && rt_results_as_int(rt_results_get(r, "bytes_in")) == (int64_t)n;
    ok = ok && rt_results_as_int(rt_results_get(rt_results_get(r, "count"), "bytes")) ==
                   (int64_t)(2 * n + 3);
    rt_pipe_free(p);
    free(in);
    return ok;
}

static void test_sizes_and_buffers(void)
{
    static const size_t sizes[] = {0, 1, 2, 3, 15, 16, 17, 1000, 65537};
    static const size_t bufs[] = {1, 2, 3, 7, 4096};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t j = 0; j < sizeof bufs / sizeof bufs[0]; j++) {
            if (sizes[i] > 2000 && bufs[j] < 7) continue; /* slow, adds nothing */
            bool ok = run_doubler(sizes[i], bufs[j], (int)(j % 3) + 1);
            if (!ok) fprintf(stderr, "  size %zu buffer %zu\n", sizes[i], bufs[j]);
            CHECK(ok);
        }
}

static void test_file_roundtrip_atomic(void)
{
    make_tmpdir();
    char src[128], dst[128];
    snprintf(src, sizeof src, "%s/in", tmpdir);
    snprintf(dst, sizeof dst, "%s/out", tmpdir);
    size_t n = 3 * 1024 * 1024 + 5;
    uint8_t *data = pattern(n);
    FILE *f = fopen(src, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_file_source(src, &err), NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), NULL);
    rt_pipe_set_sink(p, rt_file_sink(dst, false, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_OK);
    rt_pipe_free(p);
    struct stat st;
    CHECK(stat(dst, &st) == 0 && st.st_size == (off_t)n);
    CHECK_EQ_INT(count_dir_entries(tmpdir), 2); /* no temp file left */
    /* refuses to overwrite */
    RtSink *again = rt_file_sink(dst, false, &err);
    CHECK(again == NULL);
    CHECK_EQ_STR(err.code, "io.exists");
    unlink(src);
    unlink(dst);
    rmdir(tmpdir);
    free(data);
}

static void test_error_mid_pipe_aborts_sink(void)
{
    make_tmpdir();
    char dst[128];
    snprintf(dst, sizeof dst, "%s/out", tmpdir);
    size_t n = 1024 * 1024;
    uint8_t *data = pattern(n);
    RtError err;
    rt_error_init(&err);
    RtPipeOptions o = {.buffer_size = 4096};
    RtPipe *p = rt_pipe_new(&o);
    rt_pipe_set_source(p, rt_mem_source(data, n, &err), NULL);
    rt_pipe_add_filter(p, failer_new(500000), NULL);
    rt_pipe_set_sink(p, rt_file_sink(dst, false, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "test.fail");
    CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
    rt_pipe_free(p);
    CHECK_EQ_INT(count_dir_entries(tmpdir), 0); /* neither the file nor its temp */
    rmdir(tmpdir);
    free(data);
}

static void test_child_failure_is_an_error(void)
{
    make_tmpdir();
    char dst[128];
    snprintf(dst, sizeof dst, "%s/out", tmpdir);
    const char *argv[] = {"sh", "-c", "echo some output; echo 'it broke' >&2; exit 7", NULL};
    RtProcSpec spec = {.argv = argv};
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_child_source(&spec, &err), NULL);
    rt_pipe_set_sink(p, rt_file_sink(dst, false, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK(strstr(err.message, "status 7") != NULL);
    CHECK(strstr(err.message, "it broke") != NULL);
    rt_pipe_free(p);
    CHECK_EQ_INT(count_dir_entries(tmpdir), 0);
    rmdir(tmpdir);
}

static void test_child_sink(void)
{
    const char *argv[] = {"sh", "-c", "test \"$(wc -c)\" -eq 100000", NULL};
    RtProcSpec spec = {.argv = argv};
    uint8_t *data = pattern(100000);
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_mem_source(data, 100000, &err), NULL);
    rt_pipe_set_sink(p, rt_child_sink(&spec, true, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_OK);
    rt_pipe_free(p);
    free(data);
}

static void test_cancel(void)
{
    /* an endless source: only the cancel flag stops it */
    const char *argv[] = {"cat", "/dev/zero", NULL};
    RtProcSpec spec = {.argv = argv};
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_child_source(&spec, &err), NULL);
    rt_pipe_set_sink(p, rt_mem_sink((size_t)1 << 40, &err), NULL);
    rt_cancel(RT_CLASS_CANCELLED);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_CANCELLED);
    rt_pipe_free(p);
    rt_cancel_reset();
}

/* Sets the cancel flag after 300 ms, as a signal handler would while the pipe waits. */
static void *cancel_later(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    rt_cancel(RT_CLASS_TIMEOUT);
    return NULL;
}

/* A child that writes, then stays silent: the source waits in poll, not in read, so the cancel
 * ends the wait (before, the run waited for the child's `sleep`); the file sink leaves nothing
 * and the child, with what it started, is stopped and reaped. */
static void test_cancel_silent_child_source(void)
{
    make_tmpdir();
    char dst[128];
    snprintf(dst, sizeof dst, "%s/out", tmpdir);
    const char *argv[] = {"sh", "-c", "echo x; sleep 300", NULL};
    RtProcSpec spec = {.argv = argv};
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_child_source(&spec, &err), NULL);
    rt_pipe_set_sink(p, rt_file_sink(dst, false, &err), NULL);
    pthread_t t;
    pthread_create(&t, NULL, cancel_later, NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_TIMEOUT);
    pthread_join(t, NULL);
    rt_pipe_free(p);
    CHECK_EQ_INT(count_dir_entries(tmpdir), 0);
    rmdir(tmpdir);
    rt_cancel_reset();
}

/* A child sink that never reads: the writer waits in poll for room in the pipe, so the cancel
 * ends the wait; the abort kills the child. */
static void test_cancel_child_sink_not_reading(void)
{
    const char *argv[] = {"sh", "-c", "sleep 300", NULL};
    RtProcSpec spec = {.argv = argv};
    uint8_t *data = pattern(4 << 20);
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_mem_source(data, 4 << 20, &err), NULL);
    rt_pipe_set_sink(p, rt_child_sink(&spec, true, &err), NULL);
    pthread_t t;
    pthread_create(&t, NULL, cancel_later, NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_TIMEOUT);
    pthread_join(t, NULL);
    rt_pipe_free(p);
    free(data);
    rt_cancel_reset();
}

/* stdout into a pipe nobody reads (`clubio-dr decrypt | a stuck psql`): writes never exceed the
 * room in the pipe, so the cancel ends the wait instead of a write blocked for ever. */
static void test_cancel_stdout_pipe_not_read(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    uint8_t *data = pattern(4 << 20);
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_mem_source(data, 4 << 20, &err), NULL);
    rt_pipe_set_sink(p, rt_fd_sink(fds[1], "stdout", &err), NULL);
    pthread_t t;
    pthread_create(&t, NULL, cancel_later, NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_TIMEOUT);
    pthread_join(t, NULL);
    rt_pipe_free(p);
    close(fds[0]);
    close(fds[1]);
    free(data);
    rt_cancel_reset();
}

/* rt_proc_terminate: a child that ignores SIGTERM is killed after the grace; the status says
 * SIGKILL. A child that exits on SIGTERM reports 128 + 15. */
static void test_proc_terminate(void)
{
    const char *stubborn[] = {"sh", "-c", "trap '' TERM; while :; do sleep 1; done", NULL};
    RtProcSpec spec = {.argv = stubborn};
    RtProc pr;
    RtError err;
    rt_error_init(&err);
    CHECK_EQ_INT(rt_proc_spawn(&spec, 0, &pr, &err), RT_OK);
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL); /* let sh install its trap */
    CHECK_EQ_INT(rt_proc_terminate(&pr, 0.3), 128 + 9);
    const char *plain[] = {"sleep", "300", NULL};
    spec.argv = plain;
    CHECK_EQ_INT(rt_proc_spawn(&spec, 0, &pr, &err), RT_OK);
    CHECK_EQ_INT(rt_proc_terminate(&pr, 5), 128 + 15);
}

static void test_bad_pipes(void)
{
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR); /* no stages */
    rt_pipe_free(p);
    rt_error_init(&err);
    p = rt_pipe_new(NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), NULL); /* filter before source */
    rt_pipe_set_source(p, rt_mem_source("x", 1, &err), NULL);
    rt_pipe_set_sink(p, rt_mem_sink(10, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "pipe.setup");
    rt_pipe_free(p);
}

static void test_duplicate_labels(void)
{
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_mem_source("abc", 3, &err), NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), NULL);
    rt_pipe_add_filter(p, rt_count_filter(&err), "mine");
    rt_pipe_set_sink(p, rt_mem_sink(10, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_OK);
    const RtResults *r = rt_pipe_results(p);
    CHECK(rt_results_get(r, "count") != NULL);
    CHECK(rt_results_get(r, "count_2") != NULL);
    CHECK(rt_results_get(r, "mine") != NULL);
    rt_pipe_free(p);
}

TEST_MAIN(test_sizes_and_buffers, test_file_roundtrip_atomic, test_error_mid_pipe_aborts_sink,
          test_child_failure_is_an_error, test_child_sink, test_cancel,
          test_cancel_silent_child_source, test_cancel_child_sink_not_reading,
          test_cancel_stdout_pipe_not_read, test_proc_terminate, test_bad_pipes,
          test_duplicate_labels)
