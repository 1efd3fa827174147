/*
 * SBuf — the one growable buffer of the runtime and the modules (requests, XML and JSON bodies,
 * log lines, a child's captured output, a line of a dump). Always NUL-terminated, so it serves for
 * strings and bytes alike. Allocation failure is sticky (`oom`) and checked once at the end, so
 * building code stays linear.
 *
 * An optional size cap: with `limit` set (0: none), bytes past `limit` are dropped and `truncated`
 * set; the kept prefix stays. Zero-initialise (`SBuf b = {0}` or `{.limit = n}`) and sb_free.
 */
#ifndef RT_SBUF_H
#define RT_SBUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct SBuf {
    char *p;
    size_t len, cap;
    size_t limit;   /* 0: no cap; else at most `limit` bytes are kept */
    bool oom;       /* an allocation failed: the content is incomplete */
    bool truncated; /* bytes past `limit` were dropped */
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
    if (b->limit && (b->len >= b->limit || n > b->limit - b->len)) {
        n = b->len >= b->limit ? 0 : b->limit - b->len;
        b->truncated = true;
    }
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
    if ((size_t)n < sizeof tmp || b->limit) {
        if ((size_t)n < sizeof tmp)
            sb_addn(b, tmp, (size_t)n);
        else {
            char *big = malloc((size_t)n + 1);
            if (!big) {
                b->oom = true;
                return;
            }
            va_start(ap, fmt);
            vsnprintf(big, (size_t)n + 1, fmt, ap);
            va_end(ap);
            sb_addn(b, big, (size_t)n);
            free(big);
        }
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

/* Frees the memory and empties the buffer; the limit stays. */
static inline void sb_free(SBuf *b)
{
    size_t limit = b->limit;
    free(b->p);
    memset(b, 0, sizeof *b);
    b->limit = limit;
}

/* Empties the buffer, keeping its memory and limit; clears `truncated` (not `oom`). */
static inline void sb_clear(SBuf *b)
{
    b->len = 0;
    b->truncated = false;
    if (b->p) b->p[0] = 0;
}

#endif
