/*
 * RtError — the error record of the C cores.
 *
 * C code below the Lua bindings never raises: it returns RT_OK or RT_ERR and fills an RtError
 * that the caller owns. The binding (the only code that touches Lua) turns it into a structured
 * Lua error { code, message, hint, retryable, class } with rt_lua_raise_error().
 *
 * Messages are lower case, name the object ("s3://bucket/key", "table public.users"), never
 * contain secrets, and put the remedy in `hint`. The first error recorded wins: later calls to
 * rt_error_set() on an error that is already set do nothing, so the root cause survives cleanup.
 */
#ifndef RT_IO_ERROR_H
#define RT_IO_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#define RT_OK  0
#define RT_ERR (-1)

/* Error classes: each maps to a stable process exit status (see README "Exit codes"). */
typedef enum RtErrorClass {
    RT_CLASS_NONE = 0,
    RT_CLASS_FAILURE = 1,    /* an operation failed (network, database, storage...) */
    RT_CLASS_USAGE = 2,      /* bad command line, bad option, bad argument */
    RT_CLASS_CONFIG = 3,     /* missing or invalid environment/configuration */
    RT_CLASS_VERIFY = 4,     /* verification found a problem (corrupt, stale, mismatch) */
    RT_CLASS_DECLINED = 5,   /* a destructive step was declined or needs --yes */
    RT_CLASS_TIMEOUT = 124,  /* --timeout expired */
    RT_CLASS_CANCELLED = 130 /* SIGINT / SIGTERM */
} RtErrorClass;

typedef struct RtError {
    RtErrorClass klass;
    bool set;
    bool retryable;
    char code[48];     /* stable machine-readable code, e.g. "io.open", "crypto.bad_decrypt" */
    char message[512]; /* one line, lower case, no secrets */
    char hint[384];    /* what to do about it; may be empty */
} RtError;

void rt_error_init(RtError *err);
void rt_error_clear(RtError *err);

/* Records the error unless one is already recorded. Always returns RT_ERR so callers can write
 * `return rt_error_set(err, ...);`. The message is redacted (registered secrets, URL passwords). */
int rt_error_set(RtError *err, RtErrorClass klass, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int rt_error_setv(RtError *err, RtErrorClass klass, const char *code, const char *fmt, va_list ap);
/* Sets the hint of the recorded error (only if the hint is still empty). */
void rt_error_hint(RtError *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records errno as "<what>: <strerror>" with class FAILURE and code "io.<code>". */
int rt_error_errno(RtError *err, const char *code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copies src into dst unless dst already holds an error. */
void rt_error_copy(RtError *dst, const RtError *src);

/* The registry of the codes that belong to no one module (a module's own codes are
 * "<module>.<what>", e.g. "s3.retry"). Out of memory has one code everywhere. */
#define RT_CODE_NOMEM     "nomem"     /* an allocation failed (class FAILURE) */
#define RT_CODE_USAGE     "usage"     /* a bad command line (class USAGE) */
#define RT_CODE_TIMEOUT   "timeout"   /* --timeout expired (class TIMEOUT) */
#define RT_CODE_CANCELLED "cancelled" /* SIGINT / SIGTERM (class CANCELLED) */

const char *rt_error_class_name(RtErrorClass klass);
int rt_error_exit_status(RtErrorClass klass);

#endif
