/*
 * Stream endpoints of the runtime: files, stdin/stdout, memory, child processes, plus the
 * generic observing filter "count". Module-specific endpoints (S3 objects, database dumps)
 * live in their modules.
 */
#ifndef RT_IO_ENDPOINTS_H
#define RT_IO_ENDPOINTS_H

#include "stage.h"

/* A regular file (or "-" for stdin). size_hint is the file size. */
RtSource *rt_file_source(const char *path, RtError *err);
/* An open descriptor the source does not close (stdin). */
RtSource *rt_fd_source(int fd, const char *name, RtError *err);
/* Bytes copied from memory. */
RtSource *rt_mem_source(const void *data, size_t len, RtError *err);

/* Atomic file sink: writes "<dir>/.<name>.tmp-XXXXXX" (mode 0600), fsyncs and renames it to
 * `path` on finish; on abort removes the temp file, so a half-written file never appears under
 * the final name. Refuses to overwrite an existing file unless `overwrite`. An existing
 * character device or FIFO (/dev/null, a named pipe) is written in place, with or without
 * `overwrite`; a block device only with `overwrite`; a directory is refused. */
RtSink *rt_file_sink(const char *path, bool overwrite, RtError *err);
/* Writes data[0..len) to `path` through the atomic file sink (write, finish; abort on failure):
 * the whole file or, after an error, nothing new under `path`. */
int rt_write_file(const char *path, const void *data, size_t len, bool overwrite, RtError *err);
/* An open descriptor (stdout); finish flushes, the sink does not close it. */
RtSink *rt_fd_sink(int fd, const char *name, RtError *err);
/* Collects bytes in memory up to `limit` bytes (beyond that: error "memory sink full").
 * rt_mem_sink_data() gives the bytes after the pipe ran (the sink stays owned by the pipe). */
RtSink *rt_mem_sink(size_t limit, RtError *err);
const uint8_t *rt_mem_sink_data(const RtSink *s, size_t *len);

/* A spool: bytes held in memory between two pipes — one pipe writes them through
 * rt_spool_sink(), a later one reads them through rt_spool_source() (e.g. the next segment
 * fetched and decrypted while this one is applied). Up to `limit` bytes (beyond: error
 * io.memory_full). The sink and each source hold a reference; a source made before the sink
 * finished fails (io.spool). Results: sink { bytes }. */
typedef struct RtSpool RtSpool;
RtSpool *rt_spool_new(size_t limit); /* NULL on ENOMEM */
void rt_spool_release(RtSpool *s);
RtSink *rt_spool_sink(RtSpool *s, RtError *err);
RtSource *rt_spool_source(RtSpool *s, RtError *err);
size_t rt_spool_bytes(const RtSpool *s);

/* Observing filter counting bytes; results: { bytes = N }. */
RtFilter *rt_count_filter(RtError *err);

/* Child processes (see runtime/proc.h for argv/env rules: no shell, secrets by env only).
 * Source: the child's stdout; its stdin is /dev/null. Sink: the child's stdin; its stdout goes
 * to ours (or /dev/null if quiet). A non-zero exit status is an error naming argv[0] and the
 * last line the child wrote on stderr (redacted). abort kills the child. */
#include "../proc.h"
RtSource *rt_child_source(const RtProcSpec *spec, RtError *err);
RtSink *rt_child_sink(const RtProcSpec *spec, bool quiet, RtError *err);

#endif
