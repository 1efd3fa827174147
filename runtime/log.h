/*
 * Logging: levels, UTC ISO 8601 timestamps, human lines on stderr, JSON lines with --json.
 * Every line passes through the redactor (redact.h). Thread-safe; callable from any stage.
 *
 *   2026-11-24T02:13:18Z info  uploaded s3://bucket/key bytes=123
 *   {"ts":"2026-11-24T02:13:18Z","level":"info","msg":"uploaded s3://bucket/key","bytes":123}
 */
#ifndef RT_LOG_H
#define RT_LOG_H

#include "timestamp.h"

#include <stdbool.h>

typedef enum RtLogLevel {
    RT_LOG_DEBUG = 0,
    RT_LOG_INFO = 1,
    RT_LOG_WARN = 2,
    RT_LOG_ERROR = 3,
    RT_LOG_OFF = 4
} RtLogLevel;

void rt_log_configure(RtLogLevel level, bool json);
RtLogLevel rt_log_level(void);
bool rt_log_json(void);
int rt_log_level_parse(const char *name); /* -1 if unknown */
const char *rt_log_level_name(RtLogLevel level);

void rt_log(RtLogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* `fields_json` is a pre-encoded JSON object body without braces ("\"bytes\":1") or NULL;
 * on a TTY/human output the fields are printed as key=value. */
void rt_log_fields(RtLogLevel level, const char *msg, const char *fields_json);

#define rt_debug(...) rt_log(RT_LOG_DEBUG, __VA_ARGS__)
#define rt_info(...)  rt_log(RT_LOG_INFO, __VA_ARGS__)
#define rt_warn(...)  rt_log(RT_LOG_WARN, __VA_ARGS__)

/* rt_now and rt_monotonic, the clocks, live in timestamp.h (included here for the callers). */

#endif
