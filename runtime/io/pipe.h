/*
 * RtPipe — runs source -> filters -> sink on threads joined by bounded queues.
 *
 * Each stage runs on its own thread; neighbours exchange fixed-size buffers through queues of
 * `queue_depth` slots, so memory is bounded by (stages x queue_depth x buffer_size) plus what
 * stages hold themselves, whatever the size of the stream, and a 2-core machine keeps both
 * cores busy (e.g. compression on one, encryption and upload on the other).
 *
 * On the first error anywhere (or on cancel), every stage stops, the sink's abort() is called
 * and rt_pipe_run() returns RT_ERR with that first error. On success the sink's finish() has
 * returned RT_OK and the results are available.
 *
 *     RtPipe *p = rt_pipe_new(NULL);
 *     rt_pipe_set_source(p, src, "file");
 *     rt_pipe_add_filter(p, sha, "plain");
 *     rt_pipe_add_filter(p, gz, NULL);
 *     rt_pipe_set_sink(p, sink, NULL);
 *     if (rt_pipe_run(p, &err) == RT_OK) use(rt_pipe_results(p));
 *     rt_pipe_free(p);
 */
#ifndef RT_IO_PIPE_H
#define RT_IO_PIPE_H

#include "stage.h"

typedef struct RtPipe RtPipe;

typedef struct RtProgress {
    uint64_t bytes_in;  /* bytes read from the source */
    uint64_t bytes_out; /* bytes written to the sink */
    int64_t total;      /* source size if known, else -1 */
    double elapsed;     /* seconds since start */
    bool final;         /* last call, after the pipe ended */
} RtProgress;

typedef void (*RtProgressFn)(void *ud, const RtProgress *p);

typedef struct RtPipeOptions {
    size_t buffer_size;    /* bytes per buffer; default 256 KiB; 1 is allowed (tests) */
    int queue_depth;       /* buffers in flight between two stages; default 4 */
    RtProgressFn progress; /* called from a monitor thread about every progress_interval s */
    void *progress_ud;
    double progress_interval; /* default 0.5 s */
} RtPipeOptions;

RtPipe *rt_pipe_new(const RtPipeOptions *opts); /* NULL on ENOMEM */
/* The pipe takes ownership of each stage (even if the call fails). `label` names the stage's
 * results (default: the stage's name; duplicates get "_2", "_3", ...). */
int rt_pipe_set_source(RtPipe *p, RtSource *src, const char *label);
int rt_pipe_add_filter(RtPipe *p, RtFilter *f, const char *label);
int rt_pipe_set_sink(RtPipe *p, RtSink *sink, const char *label);
/* Runs to completion (once). */
int rt_pipe_run(RtPipe *p, RtError *err);
/* Runs it on a thread of its own (once): the caller goes on while it runs, then rt_pipe_wait()
 * joins it and returns what rt_pipe_run would have. */
int rt_pipe_start(RtPipe *p, RtError *err);
int rt_pipe_wait(RtPipe *p, RtError *err);
/* Stops a started pipe early, as a cancel would (its error: "pipe.stopped"); the sink aborts.
 * Stages see it through rt_cancelled() (their threads' cancel scope, cancel.h). */
void rt_pipe_stop(RtPipe *p);
/* After a successful run: { bytes_in, bytes_out, seconds, <label> = stage results... } */
const RtResults *rt_pipe_results(const RtPipe *p);
void rt_pipe_free(RtPipe *p);

#endif
