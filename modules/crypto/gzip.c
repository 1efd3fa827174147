/*
 * Parallel gzip (libdeflate) and multi-member gunzip (zlib) filters — see crypto.h.
 *
 * gzip: the filter thread cuts the input into blocks (1 MiB by default) and hands them to
 * `threads` workers, each with its own libdeflate compressor; every block becomes one complete
 * gzip member, and members are emitted strictly in input order. Concatenated members are a
 * valid gzip file (RFC 1952 §2.2; gzip, zcat, pigz and zlib's gunzip read them as one stream).
 * We chose this over pigz-style single members because libdeflate has no sync flush, and
 * libdeflate at level 6 is about twice as fast as zlib with smaller output (measured by
 * bench/deflate_compare.c); the 18-byte member overhead and the lost 32 KiB history at each
 * 1 MiB boundary cost under 0.1%. Memory is bounded: 2 x threads slots of one input block and
 * one output bound each.
 *
 * gunzip: members that fit in a window (GZ_WIN of input, GZ_OUT of output: every member our
 * gzip writes) are decompressed whole by libdeflate, which checks CRC-32 and ISIZE and is about
 * three times faster than zlib's inflate (this is CPU a parallel restore takes from the
 * server). The first member that does not fit — a stock `gzip` file is one big member — or does
 * not decompress switches the stream, from that member on, to zlib's streaming inflate (gzip
 * decoding, windowBits 16+15), which also gives the exact error: after a member ends, the next
 * bytes must be the gzip magic of another member; anything else is "trailing garbage", and EOF
 * inside a member is truncation.
 */
#include "crypto.h"
#include "io/cancel.h"

#include <libdeflate.h>
#include <zlib.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int nomem(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
}

/* ---- gzip ---------------------------------------------------------------------------------- */

enum { JOB_FREE, JOB_FILLING, JOB_QUEUED, JOB_DONE };

typedef struct Job {
    uint8_t *in, *out;
    size_t in_len, out_len, out_pos;
    int state;
    bool failed;
} Job;

typedef struct Gzip {
    int level, threads, nslots;
    size_t block, out_cap;
    Job *jobs;
    /* Jobs are numbered in input order; job k lives in slot k % nslots. [head, submitted) are
     * queued or done, `taken` is the next one a worker picks up, and job `submitted` is being
     * filled when `filling` is set. */
    uint64_t head, taken, submitted;
    bool filling;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    pthread_t *tids;
    int started;
    bool stop;
    uint64_t bytes_in, bytes_out;
} Gzip;

static void *gzip_worker(void *arg)
{
    Gzip *g = arg;
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(g->level);
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->stop && g->taken == g->submitted) pthread_cond_wait(&g->work_cv, &g->mu);
        if (g->stop) break;
        Job *j = &g->jobs[g->taken++ % (uint64_t)g->nslots];
        pthread_mutex_unlock(&g->mu);
        size_t n = c ? libdeflate_gzip_compress(c, j->in, j->in_len, j->out, g->out_cap) : 0;
        pthread_mutex_lock(&g->mu);
        j->out_len = n;
        j->out_pos = 0;
        j->failed = n == 0;
        j->state = JOB_DONE;
        pthread_cond_broadcast(&g->done_cv);
    }
    pthread_mutex_unlock(&g->mu);
    libdeflate_free_compressor(c);
    return NULL;
}

static void gzip_destroy(void *self)
{
    Gzip *g = self;
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_broadcast(&g->work_cv);
    pthread_mutex_unlock(&g->mu);
    for (int i = 0; i < g->started; i++) pthread_join(g->tids[i], NULL);
    if (g->jobs)
        for (int i = 0; i < g->nslots; i++) {
            free(g->jobs[i].in);
            free(g->jobs[i].out);
        }
    free(g->jobs);
    free(g->tids);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->work_cv);
    pthread_cond_destroy(&g->done_cv);
    free(g);
}

static int gzip_start_workers(Gzip *g, RtError *err)
{
    while (g->started < g->threads) {
        int rc = pthread_create(&g->tids[g->started], NULL, gzip_worker, g);
        if (rc != 0) {
            if (g->started > 0) return RT_OK; /* fewer workers is slower, not wrong */
            return rt_error_errno(err, "thread", rc, "gzip: cannot start a worker thread");
        }
        g->started++;
    }
    return RT_OK;
}

static int gzip_submit(Gzip *g, RtError *err)
{
    if (!g->started && gzip_start_workers(g, err) != RT_OK) return RT_ERR;
    pthread_mutex_lock(&g->mu);
    g->jobs[g->submitted % (uint64_t)g->nslots].state = JOB_QUEUED;
    g->submitted++;
    g->filling = false;
    pthread_cond_signal(&g->work_cv);
    pthread_mutex_unlock(&g->mu);
    return RT_OK;
}

/* Waits until the oldest job is compressed, waking every 100 ms to notice a cancel. */
static int gzip_wait_head(Gzip *g, RtError *err)
{
    Job *j = &g->jobs[g->head % (uint64_t)g->nslots];
    pthread_mutex_lock(&g->mu);
    while (j->state != JOB_DONE) {
        if (rt_cancelled()) {
            pthread_mutex_unlock(&g->mu);
            return rt_cancel_error(err);
        }
        rt_cond_wait_ms(&g->done_cv, &g->mu, 100);
    }
    pthread_mutex_unlock(&g->mu);
    return RT_OK;
}

/* Copies finished members, in order, into out. */
static int gzip_emit(Gzip *g, RtBuf *out, RtError *err)
{
    while (g->head < g->submitted && rt_buf_space(out) > 0) {
        Job *j = &g->jobs[g->head % (uint64_t)g->nslots];
        pthread_mutex_lock(&g->mu);
        bool ready = j->state == JOB_DONE;
        pthread_mutex_unlock(&g->mu);
        if (!ready) break;
        if (j->failed)
            return rt_error_set(err, RT_CLASS_FAILURE, "crypto.gzip",
                                "gzip: libdeflate could not compress a block");
        size_t n = rt_buf_put(out, j->out + j->out_pos, j->out_len - j->out_pos);
        j->out_pos += n;
        g->bytes_out += n;
        if (j->out_pos == j->out_len) {
            j->state = JOB_FREE;
            j->in_len = j->out_len = j->out_pos = 0;
            g->head++;
        }
    }
    return RT_OK;
}

static int gzip_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    Gzip *g = self;
    for (;;) {
        if (gzip_emit(g, out, err) != RT_OK) return RT_ERR;
        if (rt_buf_space(out) == 0) return RT_OK;
        if (!in) {
            /* Flush: the partial block (or, for an empty input, one empty member so that the
             * output is still a gzip file), then every member in order. */
            if (g->filling || g->submitted == 0) {
                if (!g->filling) {
                    g->jobs[g->submitted % (uint64_t)g->nslots].state = JOB_FILLING;
                    g->jobs[g->submitted % (uint64_t)g->nslots].in_len = 0;
                }
                if (gzip_submit(g, err) != RT_OK) return RT_ERR;
            }
            if (g->head == g->submitted) {
                *done = true;
                return RT_OK;
            }
            if (gzip_wait_head(g, err) != RT_OK) return RT_ERR;
            continue;
        }
        if (rt_buf_remain(in) == 0) return RT_OK;
        if (!g->filling) {
            if (g->submitted - g->head >= (uint64_t)g->nslots) {
                /* every slot busy: wait for the oldest, then pass it on */
                if (gzip_wait_head(g, err) != RT_OK) return RT_ERR;
                continue;
            }
            Job *j = &g->jobs[g->submitted % (uint64_t)g->nslots];
            j->state = JOB_FILLING;
            j->in_len = 0;
            g->filling = true;
        }
        Job *j = &g->jobs[g->submitted % (uint64_t)g->nslots];
        size_t n = rt_buf_remain(in);
        if (n > g->block - j->in_len) n = g->block - j->in_len;
        memcpy(j->in + j->in_len, rt_buf_rptr(in), n);
        j->in_len += n;
        in->pos += n;
        g->bytes_in += n;
        if (j->in_len == g->block && gzip_submit(g, err) != RT_OK) return RT_ERR;
    }
}

static void gzip_results(void *self, RtResults *res)
{
    Gzip *g = self;
    rt_results_int(res, "bytes_in", (int64_t)g->bytes_in);
    rt_results_int(res, "bytes_out", (int64_t)g->bytes_out);
    rt_results_int(res, "members", (int64_t)g->submitted);
    rt_results_int(res, "level", g->level);
    rt_results_int(res, "threads", g->threads);
}

static const RtFilterOps gzip_filter_ops = {
    .name = "gzip", .process = gzip_process, .results = gzip_results, .destroy = gzip_destroy};

RtFilter *crypto_gzip_filter(const CryptoGzipOptions *opts, RtError *err)
{
    CryptoGzipOptions o = opts ? *opts : (CryptoGzipOptions){0};
    if (o.level == 0) o.level = CRYPTO_GZIP_LEVEL_DEFAULT;
    if (o.level < 1 || o.level > 12) {
        rt_error_set(err, RT_CLASS_USAGE, "usage.option", "gzip: level must be 1..12 (got %d)",
                     o.level);
        return NULL;
    }
    if (o.threads < 0 || o.threads > 256) {
        rt_error_set(err, RT_CLASS_USAGE, "usage.option", "gzip: threads must be 1..256 (got %d)",
                     o.threads);
        return NULL;
    }
    if (o.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = n < 1 ? 1 : n > 16 ? 16 : (int)n; /* 2 x 16 x ~2 MiB at most */
    }
    if (o.block_size == 0) o.block_size = CRYPTO_GZIP_BLOCK_DEFAULT;
    if (o.block_size > ((size_t)1 << 30)) {
        rt_error_set(err, RT_CLASS_USAGE, "usage.option", "gzip: block size too large");
        return NULL;
    }
    RtFilter *f = rt_filter_new();
    Gzip *g = calloc(1, sizeof *g);
    if (!f || !g) {
        free(f);
        free(g);
        nomem(err);
        return NULL;
    }
    g->level = o.level;
    g->threads = o.threads;
    g->nslots = 2 * o.threads;
    g->block = o.block_size;
    g->out_cap = libdeflate_gzip_compress_bound(NULL, o.block_size);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->work_cv, NULL);
    pthread_cond_init(&g->done_cv, NULL);
    g->jobs = calloc((size_t)g->nslots, sizeof *g->jobs);
    g->tids = calloc((size_t)g->threads, sizeof *g->tids);
    bool ok = g->jobs && g->tids;
    for (int i = 0; ok && i < g->nslots; i++) {
        g->jobs[i].in = malloc(g->block);
        g->jobs[i].out = malloc(g->out_cap);
        ok = g->jobs[i].in && g->jobs[i].out;
    }
    if (!ok) {
        gzip_destroy(g);
        free(f);
        nomem(err);
        return NULL;
    }
    rt_filter_init(f, &gzip_filter_ops, g);
    return f;
}

/* ---- gunzip -------------------------------------------------------------------------------- */

enum { GZ_START, GZ_MEMBER, GZ_BOUNDARY };

#define GZ_WIN ((size_t)4 << 20)
#define GZ_OUT ((size_t)4 << 20)

typedef struct Gunzip {
    z_stream z;
    bool z_ready;
    int state;
    int magic; /* bytes of the next member's magic seen */
    uint64_t members, bytes_in, bytes_out;
    /* the libdeflate path, until `streaming`: input from a member's start (win[win_pos..win_len)
     * is left over for zlib after the switch), and one member's output not yet passed on */
    bool streaming, need_full;
    struct libdeflate_decompressor *d;
    uint8_t *win, *ob;
    size_t win_len, win_pos, ob_len, ob_pos;
} Gunzip;

static const uint8_t GZ_MAGIC[2] = {0x1f, 0x8b};

static int gunzip_corrupt(Gunzip *g, RtError *err, const char *code, const char *fmt,
                          const char *detail)
{
    rt_error_set(err, RT_CLASS_VERIFY, code, fmt, detail);
    rt_error_hint(err,
                  "the compressed data is damaged, cut short or not gzip (%llu bytes "
                  "read, %llu member(s) complete); fetch the archive again and check it "
                  "against its manifest",
                  (unsigned long long)g->bytes_in, (unsigned long long)g->members);
    return RT_ERR;
}

/* zlib's streaming inflate over `in` (NULL: the end of the input). */
static int gunzip_zlib(Gunzip *g, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    if (!in) {
        if (g->state == GZ_START && g->magic == 0)
            return gunzip_corrupt(g, err, "crypto.gzip_truncated", "gzip stream is empty%s", "");
        if (g->state != GZ_BOUNDARY || g->magic != 0)
            return gunzip_corrupt(g, err, "crypto.gzip_truncated",
                                  "gzip stream is truncated: it ends inside a member%s", "");
        *done = true;
        return RT_OK;
    }
    while (rt_buf_remain(in) > 0 && rt_buf_space(out) > 0) {
        if (g->state != GZ_MEMBER) {
            uint8_t b = in->data[in->pos];
            if (b != GZ_MAGIC[g->magic]) {
                if (g->members == 0) {
                    /* after crypto.decrypt, garbage from the first byte is a wrong key: the
                     * padding check that would say so comes only at the end */
                    rt_error_set(err, RT_CLASS_VERIFY, "crypto.not_gzip",
                                 "input is not gzip data (bad magic)");
                    rt_error_hint(err,
                                  "if it was decrypted first, the passphrase is wrong (check "
                                  "BACKUP_ENCRYPTION_KEY); otherwise the archive is damaged or "
                                  "not gzip: fetch it again and check it against its manifest");
                    return RT_ERR;
                }
                return gunzip_corrupt(g, err, "crypto.gzip_trailing",
                                      "trailing garbage after the last gzip member%s", "");
            }
            in->pos++;
            g->bytes_in++;
            if (++g->magic < 2) continue;
            g->magic = 0;
            if (inflateReset(&g->z) != Z_OK) return nomem(err);
            g->z.next_in = (Bytef *)GZ_MAGIC;
            g->z.avail_in = 2;
            g->z.next_out = rt_buf_wptr(out);
            g->z.avail_out = 0; /* the header produces nothing */
            int rc = inflate(&g->z, Z_NO_FLUSH);
            if ((rc != Z_OK && rc != Z_BUF_ERROR) || g->z.avail_in != 0)
                return gunzip_corrupt(g, err, "crypto.gzip_corrupt", "corrupt gzip data: %s",
                                      g->z.msg ? g->z.msg : "bad header");
            g->state = GZ_MEMBER;
            continue;
        }
        size_t avail_in = rt_buf_remain(in), avail_out = rt_buf_space(out);
        g->z.next_in = rt_buf_rptr(in);
        g->z.avail_in = avail_in > UINT_MAX ? UINT_MAX : (uInt)avail_in;
        g->z.next_out = rt_buf_wptr(out);
        g->z.avail_out = avail_out > UINT_MAX ? UINT_MAX : (uInt)avail_out;
        uInt in0 = g->z.avail_in, out0 = g->z.avail_out;
        int rc = inflate(&g->z, Z_NO_FLUSH);
        in->pos += in0 - g->z.avail_in;
        out->used += out0 - g->z.avail_out;
        g->bytes_in += in0 - g->z.avail_in;
        g->bytes_out += out0 - g->z.avail_out;
        if (rc == Z_STREAM_END) {
            g->members++;
            g->state = GZ_BOUNDARY;
        } else if (rc == Z_MEM_ERROR) {
            return nomem(err);
        } else if (rc == Z_BUF_ERROR) {
            break; /* needs more input or more room */
        } else if (rc != Z_OK) {
            return gunzip_corrupt(g, err, "crypto.gzip_corrupt", "corrupt gzip data: %s",
                                  g->z.msg ? g->z.msg : "invalid stream");
        }
    }
    return RT_OK;
}

/* Passes on what is left of the last member libdeflate decompressed. */
static void gunzip_drain(Gunzip *g, RtBuf *out)
{
    size_t n = g->ob_len - g->ob_pos, room = rt_buf_space(out);
    if (n > room) n = room;
    memcpy(rt_buf_wptr(out), g->ob + g->ob_pos, n);
    out->used += n;
    g->ob_pos += n;
}

/* From the member at win[win_pos] on, zlib takes over. */
static void gunzip_to_zlib(Gunzip *g)
{
    g->streaming = true;
    g->state = g->members ? GZ_BOUNDARY : GZ_START;
    g->magic = 0;
}

static int gunzip_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    Gunzip *g = self;
    if (!g->streaming) {
        if (g->ob_pos < g->ob_len) {
            gunzip_drain(g, out);
            if (g->ob_pos < g->ob_len) return RT_OK;
        }
        if (in) { /* take input into the window, moving what is left of it to the front */
            size_t n = rt_buf_remain(in);
            if (g->win_pos > 0 && n > GZ_WIN - g->win_len) {
                memmove(g->win, g->win + g->win_pos, g->win_len - g->win_pos);
                g->win_len -= g->win_pos;
                g->win_pos = 0;
            }
            if (n > GZ_WIN - g->win_len) n = GZ_WIN - g->win_len;
            memcpy(g->win + g->win_len, rt_buf_rptr(in), n);
            in->pos += n;
            g->win_len += n;
        }
        /* A member is decompressed once half a window is in (ours are far smaller), or the
         * input has ended. One that fails with less than a full window may just be bigger:
         * it is tried again with a full window before zlib takes over. */
        while (g->ob_pos == g->ob_len) {
            size_t avail = g->win_len - g->win_pos, used_in = 0, used_out = 0;
            if (avail == 0 || (in && (avail < GZ_WIN / 2 || (g->need_full && avail < GZ_WIN))))
                break;
            const uint8_t *m = g->win + g->win_pos;
            if (avail >= 2 && m[0] == GZ_MAGIC[0] && m[1] == GZ_MAGIC[1] &&
                libdeflate_gzip_decompress_ex(g->d, m, avail, g->ob, GZ_OUT, &used_in, &used_out) ==
                    LIBDEFLATE_SUCCESS) {
                g->members++;
                g->bytes_in += used_in;
                g->bytes_out += used_out;
                g->win_pos += used_in;
                g->ob_len = used_out;
                g->ob_pos = 0;
                g->need_full = false;
                gunzip_drain(g, out);
                continue;
            }
            if (!in || avail == GZ_WIN) {
                gunzip_to_zlib(g); /* too big for the window, or an error zlib will name */
                break;
            }
            g->need_full = true;
            break;
        }
        bool drained = g->win_pos == g->win_len && g->ob_pos == g->ob_len;
        if (!in && drained && g->members == 0) gunzip_to_zlib(g); /* which says "empty" */
        if (!g->streaming) {
            if (!in && drained) *done = true;
            return RT_OK;
        }
    }
    if (g->win_pos < g->win_len) { /* what the window held when zlib took over */
        RtBuf w = {g->win, g->win_len, g->win_len, g->win_pos};
        bool wdone = false;
        if (gunzip_zlib(g, &w, out, &wdone, err) != RT_OK) return RT_ERR;
        g->win_pos = w.pos;
        if (g->win_pos < g->win_len) return RT_OK; /* out is full */
    }
    return gunzip_zlib(g, in, out, done, err);
}

static void gunzip_results(void *self, RtResults *res)
{
    Gunzip *g = self;
    rt_results_int(res, "bytes_in", (int64_t)g->bytes_in);
    rt_results_int(res, "bytes_out", (int64_t)g->bytes_out);
    rt_results_int(res, "members", (int64_t)g->members);
}

static void gunzip_destroy(void *self)
{
    Gunzip *g = self;
    if (!g) return;
    if (g->z_ready) inflateEnd(&g->z);
    if (g->d) libdeflate_free_decompressor(g->d);
    free(g->win);
    free(g->ob);
    free(g);
}

static const RtFilterOps gunzip_filter_ops = {.name = "gunzip",
                                              .process = gunzip_process,
                                              .results = gunzip_results,
                                              .destroy = gunzip_destroy};

RtFilter *crypto_gunzip_filter(RtError *err)
{
    RtFilter *f = rt_filter_new();
    Gunzip *g = calloc(1, sizeof *g);
    if (!f || !g || inflateInit2(&g->z, 16 + MAX_WBITS) != Z_OK) {
        free(f);
        free(g);
        nomem(err);
        return NULL;
    }
    g->z_ready = true;
    g->d = libdeflate_alloc_decompressor();
    g->win = malloc(GZ_WIN);
    g->ob = malloc(GZ_OUT);
    if (!g->d || !g->win || !g->ob) {
        free(f);
        gunzip_destroy(g);
        nomem(err);
        return NULL;
    }
    rt_filter_init(f, &gunzip_filter_ops, g);
    return f;
}
