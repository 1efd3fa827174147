/* JSON string escaping: one rule, for buffers and streams. */
#include "json.h"

#include <string.h>

/* The escaped form of byte c into o; returns its length (1 when c passes as it is). */
static size_t escape_byte(unsigned char c, char o[8])
{
    switch (c) {
    case '"':
    case '\\':
        o[0] = '\\';
        o[1] = (char)c;
        return 2;
    case '\n':
        memcpy(o, "\\n", 2);
        return 2;
    case '\t':
        memcpy(o, "\\t", 2);
        return 2;
    default:
        if (c < 0x20) return (size_t)snprintf(o, 8, "\\u%04x", c);
        o[0] = (char)c;
        return 1;
    }
}

void rt_json_escape(SBuf *b, const char *s, size_t n)
{
    size_t run = 0; /* bytes that pass as they are, appended in one go */
    for (size_t i = 0; i < n; i++) {
        char o[8];
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        sb_addn(b, s + i - run, run);
        run = 0;
        sb_addn(b, o, escape_byte(c, o));
    }
    sb_addn(b, s + n - run, run);
}

void rt_json_quote(SBuf *b, const char *s, size_t n)
{
    sb_addc(b, '"');
    rt_json_escape(b, s, n);
    sb_addc(b, '"');
}

void rt_json_fescape(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        char o[8];
        fwrite(o, 1, escape_byte((unsigned char)*s, o), f);
    }
}

void rt_json_fquote(FILE *f, const char *s)
{
    fputc('"', f);
    rt_json_fescape(f, s);
    fputc('"', f);
}
