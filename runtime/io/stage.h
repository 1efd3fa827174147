/*
 * Sources, filters and sinks — the three kinds of stage in a pipe.
 *
 * Bytes of a dump, an archive or an upload flow source -> filter -> ... -> sink, entirely in C.
 * Each stage is a struct of function pointers over a private `self`. Stages are created by the
 * C core of a module (crypto, s3, pgdump, ...) and handed to a pipe (pipe.h), which owns them
 * from then on and calls `destroy` exactly once, whatever happens.
 *
 * Threads: the pipe runs every stage on its own thread, but never calls one stage from two
 * threads at once. A stage may start its own threads (parallel gzip, parallel upload parts).
 * Stages must check rt_cancelled() in long loops (cancel.h) and return RT_ERR with class
 * RT_CLASS_CANCELLED when it is set.
 *
 * The filter contract (after pgBackRest's IoFilter, in our names):
 *
 *   process(self, in, out, err)
 *     `in` is the input with a read cursor, or NULL to mean "no more input: flush".
 *     The filter consumes what it can from `in` (advancing in->pos) and appends what it
 *     produces to `out` (advancing out->used), never writing past out->size.
 *     If `out` fills before `in` is consumed, the filter simply leaves in->pos where it stopped;
 *     the pipe hands the *same input again* (the unread rest) once `out` has been drained.
 *     When flushing (in == NULL), the filter writes what it can and sets *done = true once its
 *     last byte is written; the pipe calls it again with NULL until done.
 *     A filter must make progress on every call: consume input, produce output, or finish.
 *     It may buffer internally (e.g. a block for parallel compression) but must not hold an
 *     unbounded amount.
 *   An *observing* filter (hash, count) sets `observe` instead of `process`: it sees every byte
 *   exactly once (len bytes at data; data == NULL at the end) and the pipe passes the bytes on
 *   unchanged, without a copy.
 *
 *   results(self, res)  fills `res` once the pipe has finished successfully (may be NULL).
 *   destroy(self)       frees everything; must also wipe any secret the stage holds.
 *
 * Sources:
 *   read(self, buf, cap, *got, *eof, err): fill up to cap bytes; *got == 0 only with *eof set.
 *   size_hint(self): total bytes if known (for progress and ETA), else -1.
 *
 * Sinks:
 *   write(self, data, len, err), then exactly one of finish(self, err) — make the result
 *   visible (rename the temp file, complete the multipart upload) — or abort(self) — leave
 *   nothing behind that looks complete (remove the temp file, AbortMultipartUpload). abort is
 *   also called when finish fails.
 */
#ifndef RT_IO_STAGE_H
#define RT_IO_STAGE_H

#include "buf.h"
#include "error.h"
#include "results.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct RtSource {
    const char *name; /* short kind name: "file", "pgdump", "s3.get" */
    void *self;
    int (*read)(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err);
    int64_t (*size_hint)(void *self);            /* may be NULL */
    void (*results)(void *self, RtResults *res); /* may be NULL */
    void (*destroy)(void *self);
} RtSource;

typedef struct RtFilter {
    const char *name; /* "gzip", "gunzip", "encrypt", "decrypt", "sha256", "count" */
    void *self;
    /* transform filters: */
    int (*process)(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err);
    /* observing filters (process == NULL): */
    int (*observe)(void *self, const uint8_t *data, size_t len, RtError *err);
    void (*results)(void *self, RtResults *res); /* may be NULL */
    void (*destroy)(void *self);
} RtFilter;

typedef struct RtSink {
    const char *name; /* "file", "s3.put", "pgdump.restore", "memory" */
    void *self;
    int (*write)(void *self, const uint8_t *data, size_t len, RtError *err);
    int (*finish)(void *self, RtError *err);
    void (*abort)(void *self);
    void (*results)(void *self, RtResults *res); /* may be NULL */
    void (*destroy)(void *self);
} RtSink;

/* A stage kind's operations, once per kind as a `static const` table (as liolib.c has one
 * method table per class); rt_*_init points an allocated stage at its table and its `self`:
 *
 *   static const RtSinkOps MEM_SINK = {.name = "buffer", .write = msink_write, ...};
 *   rt_sink_init(k, &MEM_SINK, s);
 */
typedef struct RtSourceOps {
    const char *name;
    int (*read)(void *self, uint8_t *buf, size_t cap, size_t *got, bool *eof, RtError *err);
    int64_t (*size_hint)(void *self);
    void (*results)(void *self, RtResults *res);
    void (*destroy)(void *self);
} RtSourceOps;

typedef struct RtFilterOps {
    const char *name;
    int (*process)(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err);
    int (*observe)(void *self, const uint8_t *data, size_t len, RtError *err);
    void (*results)(void *self, RtResults *res);
    void (*destroy)(void *self);
} RtFilterOps;

typedef struct RtSinkOps {
    const char *name;
    int (*write)(void *self, const uint8_t *data, size_t len, RtError *err);
    int (*finish)(void *self, RtError *err);
    void (*abort)(void *self);
    void (*results)(void *self, RtResults *res);
    void (*destroy)(void *self);
} RtSinkOps;

void rt_source_init(RtSource *s, const RtSourceOps *ops, void *self);
void rt_filter_init(RtFilter *f, const RtFilterOps *ops, void *self);
void rt_sink_init(RtSink *k, const RtSinkOps *ops, void *self);

/* Convenience for cores: allocate a zeroed stage struct (NULL on ENOMEM). */
RtSource *rt_source_new(void);
RtFilter *rt_filter_new(void);
RtSink *rt_sink_new(void);
/* Destroy a stage that never reached a pipe (NULL-safe; calls destroy then frees the struct). */
void rt_source_free(RtSource *s);
void rt_filter_free(RtFilter *f);
void rt_sink_free(RtSink *s);

#endif
