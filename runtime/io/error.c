/*
 * RtError — see error.h. Messages pass through the redactor when recorded, so a secret that
 * slipped into a format argument (a URL with a password, say) never reaches a log.
 */
#include "error.h"
#include "../redact.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void rt_error_init(RtError *err) { memset(err, 0, sizeof *err); }
void rt_error_clear(RtError *err) { rt_error_init(err); }

int rt_error_setv(RtError *err, RtErrorClass klass, const char *code, const char *fmt, va_list ap)
{
    if (!err || err->set) return RT_ERR;
    char raw[sizeof err->message];
    vsnprintf(raw, sizeof raw, fmt, ap);
    rt_redact(raw, err->message, sizeof err->message);
    /* one line: the host prints "clubio-dr: <message>" */
    for (char *p = err->message; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    snprintf(err->code, sizeof err->code, "%s", code ? code : "error");
    err->klass = klass ? klass : RT_CLASS_FAILURE;
    err->hint[0] = '\0';
    err->retryable = false;
    err->set = true;
    return RT_ERR;
}

int rt_error_set(RtError *err, RtErrorClass klass, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rt_error_setv(err, klass, code, fmt, ap);
    va_end(ap);
    return RT_ERR;
}

void rt_error_hint(RtError *err, const char *fmt, ...)
{
    if (!err || !err->set || err->hint[0]) return;
    char raw[sizeof err->hint];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    rt_redact(raw, err->hint, sizeof err->hint);
}

int rt_error_errno(RtError *err, const char *code, int errnum, const char *fmt, ...)
{
    if (!err || err->set) return RT_ERR;
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char full[64];
    snprintf(full, sizeof full, "io.%s", code ? code : "error");
    rt_error_set(err, RT_CLASS_FAILURE, full, "%s: %s", what, strerror(errnum));
    if (errnum == ENOSPC) rt_error_hint(err, "free some disk space and try again");
    else if (errnum == EACCES || errnum == EPERM)
        rt_error_hint(err, "check the permissions of the path and of the user running clubio-dr");
    else if (errnum == ENOENT) rt_error_hint(err, "check the path");
    return RT_ERR;
}

void rt_error_copy(RtError *dst, const RtError *src)
{
    if (!dst || dst->set || !src || !src->set) return;
    *dst = *src;
}

const char *rt_error_class_name(RtErrorClass klass)
{
    switch (klass) {
    case RT_CLASS_NONE: return "none";
    case RT_CLASS_FAILURE: return "failure";
    case RT_CLASS_USAGE: return "usage";
    case RT_CLASS_CONFIG: return "config";
    case RT_CLASS_VERIFY: return "verify";
    case RT_CLASS_DECLINED: return "declined";
    case RT_CLASS_TIMEOUT: return "timeout";
    case RT_CLASS_CANCELLED: return "cancelled";
    }
    return "failure";
}

int rt_error_exit_status(RtErrorClass klass)
{
    return klass == RT_CLASS_NONE ? 0 : (int)klass;
}
