/*
 * SBuf — a growable NUL-terminated string for building requests, XML bodies and messages in the
 * s3 core. Allocation failure is sticky (`oom`) and checked once at the end, so building code
 * stays linear.
 */
#ifndef S3_SBUF_H
#define S3_SBUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct SBuf {
    char *p;
    size_t len, cap;
    bool oom;
} SBuf;

static inline bool sb_reserve(SBuf *b, size_t more)
{
    if (b->oom) return false;
    if (b->len + more + 1 <= b->cap) return true;
    size_t nc = b->cap ? b->cap * 2 : 256;
    while (nc < b->len + more + 1) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) {
        b->oom = true;
        return false;
    }
    b->p = np;
    b->cap = nc;
    b->p[b->len] = 0;
    return true;
}

static inline void sb_addn(SBuf *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n)) return;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static inline void sb_add(SBuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}
static inline void sb_addc(SBuf *b, char c)
{
    sb_addn(b, &c, 1);
}

static inline __attribute__((format(printf, 2, 3))) void sb_addf(SBuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_addn(b, tmp, (size_t)n);
        return;
    }
    if (!sb_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* The string (never NULL unless out of memory; "" when empty). */
static inline const char *sb_str(SBuf *b)
{
    if (!b->p && !b->oom) sb_reserve(b, 0);
    return b->oom ? NULL : b->p;
}

/* Hands the string over to the caller (NULL on earlier OOM), leaving the buffer empty. */
static inline char *sb_take(SBuf *b)
{
    const char *s = sb_str(b);
    char *r = b->oom ? NULL : (char *)s;
    if (b->oom) free(b->p);
    memset(b, 0, sizeof *b);
    return r;
}

static inline void sb_free(SBuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

#endif
