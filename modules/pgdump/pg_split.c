/*
 * PgSplit — the streaming statement splitter of the restore (see pg_split.h).
 *
 * A byte-at-a-time state machine over SQL, following psql's lexer (psqlscan.l) where pg_dump's
 * output needs it. Decisions that need a look-behind (dashes, slash-star, $tag$) look at the bytes
 * already buffered for the current statement, so input may be cut anywhere. COPY data is
 * scanned line by line with memchr and handed on in place; only a candidate `\.` terminator
 * (at most 3 bytes) is held back across calls.
 */
#include "pg_split.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    S_NORMAL,
    S_SQUOTE,  /* '...' (standard_conforming_strings: '' escapes a quote) */
    S_ESTRING, /* E'...' (backslash escapes) */
    S_DQUOTE,  /* "identifier" */
    S_LINE_COMMENT,
    S_BLOCK_COMMENT,
    S_DOLLAR_TAG, /* after a '$' that may open a dollar quote */
    S_DOLLAR,     /* inside $tag$ ... $tag$ */
    S_META        /* a psql meta-command line */
};

/* COPY data: rest of the COPY command's line, line start, mid-line, "\", "\.", "\.\r" */
enum { C_SKIP, C_LS, C_MID, C_E1, C_E2, C_E3 };

struct PgSplit {
    PgSplitEvents ev;
    void *ud;
    size_t max_statement;
    char *buf;
    size_t len, cap;
    int state;
    bool has_content;
    size_t content;
    int depth;         /* block comment nesting */
    size_t tag_start;  /* offset of the '$' opening the dollar quote */
    size_t tag_len;    /* bytes of "$tag$" */
    size_t body_start; /* offset after the opening "$tag$" */
    bool esc;          /* E'' string: the previous byte was a backslash */
    int prev_used;     /* the previous byte already took part in a 2-byte token */
    bool copy;         /* in COPY data */
    int cstate;
    int64_t count;
    int64_t line, stmt_line;
};

PgSplit *pg_split_new(const PgSplitEvents *ev, void *ud, size_t max_statement)
{
    PgSplit *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->ev = *ev;
    s->ud = ud;
    s->max_statement = max_statement ? max_statement : (size_t)256 << 20;
    s->line = 1;
    s->stmt_line = 1;
    return s;
}

void pg_split_free(PgSplit *s)
{
    if (!s) return;
    free(s->buf);
    free(s);
}

int64_t pg_split_count(const PgSplit *s)
{
    return s->count;
}
int64_t pg_split_line(const PgSplit *s)
{
    return s->stmt_line;
}

static int push(PgSplit *s, char c, RtError *err)
{
    if (s->len + 1 >= s->cap) {
        if (s->len + 1 > s->max_statement)
            return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.statement_too_long",
                                "sql statement starting at line %lld is longer than %zu bytes",
                                (long long)s->stmt_line, s->max_statement);
        size_t ncap = s->cap ? s->cap * 2 : 4096;
        if (ncap > s->max_statement + 1) ncap = s->max_statement + 1;
        char *n = realloc(s->buf, ncap);
        if (!n) return rt_error_set(err, RT_CLASS_FAILURE, "nomem", "out of memory");
        s->buf = n;
        s->cap = ncap;
    }
    s->buf[s->len++] = c;
    return RT_OK;
}

static void reset_statement(PgSplit *s)
{
    s->len = 0;
    s->has_content = false;
    s->content = 0;
    s->state = S_NORMAL;
    s->prev_used = 0;
    s->stmt_line = s->line;
}

static bool ident_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

bool pg_split_is_copy_from_stdin(const char *sql, size_t len)
{
    if (len < 4 || strncasecmp(sql, "copy", 4) != 0 || ident_char((unsigned char)sql[4]))
        return false;
    while (len && (sql[len - 1] == ';' || isspace((unsigned char)sql[len - 1]))) len--;
    static const char tail[] = "from stdin";
    size_t tl = sizeof tail - 1;
    return len > tl && strncasecmp(sql + len - tl, tail, tl) == 0 &&
           isspace((unsigned char)sql[len - tl - 1]);
}

static int emit_statement(PgSplit *s, RtError *err)
{
    s->count++;
    bool is_copy = pg_split_is_copy_from_stdin(s->buf + s->content, s->len - s->content);
    if (push(s, '\0', err) != RT_OK) return RT_ERR;
    s->len--;
    int rc = s->ev.statement(s->ud, s->buf, s->len, s->content, is_copy, err);
    reset_statement(s);
    if (rc == RT_OK && is_copy) {
        s->copy = true;
        s->cstate = C_SKIP; /* data starts on the next line, as in psql */
    }
    return rc;
}

/* COPY data: returns bytes consumed (stops after the terminator line) or -1. */
static long feed_copy(PgSplit *s, const uint8_t *p, size_t n, RtError *err)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        switch (s->cstate) {
        case C_SKIP: {
            const uint8_t *nl = memchr(p + i, '\n', n - i);
            if (!nl) return (long)n;
            s->line++;
            i = (size_t)(nl - p) + 1;
            s->cstate = C_LS;
            break;
        }
        case C_LS:
            if (c == '\\') {
                s->cstate = C_E1;
                i++;
                break;
            }
            s->cstate = C_MID;
            /* fall through */
        case C_MID: {
            /* a run of rows goes out in one call: it ends before a line that starts with a
             * backslash (which may be the \. terminator) or at the end of the input */
            const uint8_t *q = p + i, *e = p + n, *nl;
            while ((nl = memchr(q, '\n', (size_t)(e - q)))) {
                s->line++;
                q = nl + 1;
                s->cstate = C_LS;
                if (q == e || *q == '\\') break;
            }
            if (!nl) {
                q = e;
                s->cstate = C_MID;
            }
            size_t end = (size_t)(q - p);
            if (s->ev.copy_data(s->ud, p + i, end - i, err) != RT_OK) return -1;
            i = end;
            break;
        }
        case C_E1:
            if (c == '.') {
                s->cstate = C_E2;
                i++;
            } else {
                if (s->ev.copy_data(s->ud, (const uint8_t *)"\\", 1, err) != RT_OK) return -1;
                s->cstate = C_MID;
            }
            break;
        case C_E2:
        case C_E3:
            if (c == '\n') {
                i++;
                s->line++;
                s->copy = false;
                s->stmt_line = s->line;
                if (s->ev.copy_end(s->ud, err) != RT_OK) return -1;
                return (long)i;
            }
            if (c == '\r' && s->cstate == C_E2) {
                s->cstate = C_E3;
                i++;
                break;
            }
            if (s->ev.copy_data(s->ud, (const uint8_t *)"\\.\r", s->cstate == C_E2 ? 2 : 3, err) !=
                RT_OK)
                return -1;
            s->cstate = C_MID;
            break;
        }
    }
    return (long)i;
}

static int feed_byte(PgSplit *s, unsigned char c, RtError *err)
{
    if (c == '\n') s->line++;
    /* blank bytes before a statement are dropped so that its line number is its first line */
    if (s->len == 0 && s->state == S_NORMAL && isspace(c)) {
        s->stmt_line = s->line;
        return RT_OK;
    }
    char prev = s->len && !s->prev_used ? s->buf[s->len - 1] : 0;
    s->prev_used = 0;
    switch (s->state) {
    case S_NORMAL:
        if (!s->has_content && c == '\\') {
            s->state = S_META;
            s->has_content = true;
            s->content = s->len;
            return push(s, (char)c, err);
        }
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '-' && prev == '-') {
            s->state = S_LINE_COMMENT;
            /* the first '-' was counted as content if nothing else was */
            if (s->has_content && s->content == s->len - 2) s->has_content = false;
            return RT_OK;
        }
        if (c == '*' && prev == '/') {
            s->state = S_BLOCK_COMMENT;
            s->depth = 1;
            s->prev_used = 1;
            if (s->has_content && s->content == s->len - 2) s->has_content = false;
            return RT_OK;
        }
        if (isspace(c)) return RT_OK;
        if (!s->has_content) {
            s->has_content = true;
            s->content = s->len - 1;
        }
        if (c == '\'') {
            bool e = (prev == 'E' || prev == 'e') &&
                     (s->len < 3 || !ident_char((unsigned char)s->buf[s->len - 3]));
            s->state = e ? S_ESTRING : S_SQUOTE;
            s->esc = false;
        } else if (c == '"') {
            s->state = S_DQUOTE;
        } else if (c == '$' && !(prev && ident_char((unsigned char)prev))) {
            s->state = S_DOLLAR_TAG;
            s->tag_start = s->len - 1;
        } else if (c == ';') {
            return emit_statement(s, err);
        }
        return RT_OK;
    case S_SQUOTE:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '\'') s->state = S_NORMAL; /* '' re-enters at once: same result */
        return RT_OK;
    case S_ESTRING:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (s->esc)
            s->esc = false;
        else if (c == '\\')
            s->esc = true;
        else if (c == '\'')
            s->state = S_NORMAL;
        return RT_OK;
    case S_DQUOTE:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '"') s->state = S_NORMAL;
        return RT_OK;
    case S_LINE_COMMENT:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '\n') s->state = S_NORMAL;
        s->prev_used = 1;
        return RT_OK;
    case S_BLOCK_COMMENT:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '*' && prev == '/') {
            s->depth++;
            s->prev_used = 1;
        } else if (c == '/' && prev == '*') {
            s->prev_used = 1;
            if (--s->depth == 0) s->state = S_NORMAL;
        }
        return RT_OK;
    case S_DOLLAR_TAG:
        if (c == '$') {
            if (push(s, (char)c, err) != RT_OK) return RT_ERR;
            s->state = S_DOLLAR;
            s->tag_len = s->len - s->tag_start;
            s->body_start = s->len;
            return RT_OK;
        }
        if (isalpha(c) || c == '_' || c >= 0x80 || (isdigit(c) && s->len - s->tag_start > 1))
            return push(s, (char)c, err);
        /* not a dollar quote ($1, a$b): handle this byte as ordinary SQL */
        s->state = S_NORMAL;
        s->line -= c == '\n';
        return feed_byte(s, c, err);
    case S_DOLLAR:
        if (push(s, (char)c, err) != RT_OK) return RT_ERR;
        if (c == '$' && s->len >= s->body_start + s->tag_len &&
            memcmp(s->buf + s->len - s->tag_len, s->buf + s->tag_start, s->tag_len) == 0)
            s->state = S_NORMAL;
        return RT_OK;
    case S_META:
        if (c == '\n') {
            s->count++;
            size_t n = s->len;
            while (n > s->content && s->buf[n - 1] == '\r') n--;
            if (push(s, '\0', err) != RT_OK) return RT_ERR;
            s->buf[n] = '\0';
            int rc = s->ev.meta(s->ud, s->buf + s->content, n - s->content, err);
            reset_statement(s);
            return rc;
        }
        return push(s, (char)c, err);
    }
    return RT_OK;
}

int pg_split_feed(PgSplit *s, const uint8_t *data, size_t len, RtError *err)
{
    size_t i = 0;
    while (i < len) {
        if (s->copy) {
            long used = feed_copy(s, data + i, len - i, err);
            if (used < 0) return RT_ERR;
            i += (size_t)used;
            continue;
        }
        /* SQL goes byte by byte: schema statements are a small part of a dump */
        if (feed_byte(s, data[i], err) != RT_OK) return RT_ERR;
        i++;
    }
    return RT_OK;
}

int pg_split_finish(PgSplit *s, RtError *err)
{
    if (s->copy) {
        if (s->cstate == C_E2 || s->cstate == C_E3) { /* "\." at the very end, no newline */
            s->copy = false;
            return s->ev.copy_end(s->ud, err);
        }
        return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.truncated",
                            "the sql stream ends inside COPY data (no \\. line): it is truncated");
    }
    switch (s->state) {
    case S_NORMAL:
    case S_LINE_COMMENT:
        if (s->has_content) return emit_statement(s, err);
        reset_statement(s);
        return RT_OK;
    case S_META:
        return feed_byte(s, '\n', err);
    case S_DOLLAR_TAG:
        s->state = S_NORMAL;
        return emit_statement(s, err);
    default:
        return rt_error_set(err, RT_CLASS_FAILURE, "pgdump.truncated",
                            "the sql stream ends inside a quoted string or comment of the "
                            "statement starting at line %lld: it is truncated",
                            (long long)s->stmt_line);
    }
}
