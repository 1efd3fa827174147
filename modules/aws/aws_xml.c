/*
 * Tag extraction and entity decoding for AWS's flat XML answers, S3's and STS's (see aws_xml.h).
 */
#include "aws_xml.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *find_mem(const char *p, const char *end, const char *needle, size_t nl)
{
    if ((size_t)(end - p) < nl) return NULL;
    const char *last = end - nl;
    for (; p <= last; p++) {
        p = memchr(p, needle[0], (size_t)(last - p) + 1);
        if (!p) return NULL;
        if (memcmp(p, needle, nl) == 0) return p;
    }
    return NULL;
}

bool aws_xml_next(const char **cursor, const char *end, const char *tag, AwsXmlSpan *inner)
{
    size_t tl = strlen(tag);
    const char *p = *cursor;
    while (p < end) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        if (!lt) return false;
        p = lt + 1;
        if (p < end && (*p == '!' || *p == '?')) {
            /* Skip comments, CDATA and processing instructions as a whole. */
            const char *close = NULL;
            if ((size_t)(end - p) >= 8 && memcmp(p, "![CDATA[", 8) == 0)
                close = find_mem(p, end, "]]>", 3);
            else if ((size_t)(end - p) >= 3 && memcmp(p, "!--", 3) == 0)
                close = find_mem(p, end, "-->", 3);
            else
                close = memchr(p, '>', (size_t)(end - p));
            if (!close) return false;
            p = close + 1;
            continue;
        }
        if ((size_t)(end - p) < tl + 1 || memcmp(p, tag, tl) != 0) continue;
        char after = p[tl];
        if (after != '>' && after != '/' && after != ' ' && after != '\t' && after != '\r' &&
            after != '\n')
            continue;
        const char *gt = memchr(p, '>', (size_t)(end - p));
        if (!gt) return false;
        if (gt[-1] == '/') { /* <tag/> */
            inner->p = gt + 1;
            inner->len = 0;
            *cursor = gt + 1;
            return true;
        }
        const char *start = gt + 1;
        /* End tag: the first "</tag>" not inside a CDATA section. */
        const char *q = start;
        char closing[96];
        if (tl + 4 > sizeof closing) return false;
        closing[0] = '<';
        closing[1] = '/';
        memcpy(closing + 2, tag, tl);
        closing[tl + 2] = '>';
        for (;;) {
            const char *c = find_mem(q, end, closing, tl + 3);
            const char *cd = find_mem(q, end, "<![CDATA[", 9);
            if (!c) return false;
            if (cd && cd < c) {
                const char *cde = find_mem(cd, end, "]]>", 3);
                if (!cde) return false;
                q = cde + 3;
                continue;
            }
            inner->p = start;
            inner->len = (size_t)(c - start);
            *cursor = c + tl + 3;
            return true;
        }
    }
    return false;
}

static void put_utf8(SBuf *b, uint32_t cp)
{
    char u[4];
    if (cp < 0x80) {
        u[0] = (char)cp;
        sb_addn(b, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        sb_addn(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        sb_addn(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        sb_addn(b, u, 4);
    }
}

char *aws_xml_decode(const char *p, size_t len)
{
    SBuf b = {0};
    const char *end = p + len;
    sb_reserve(&b, len);
    while (p < end) {
        if (*p == '<' && (size_t)(end - p) >= 9 && memcmp(p, "<![CDATA[", 9) == 0) {
            const char *e = find_mem(p + 9, end, "]]>", 3);
            if (!e) goto bad;
            sb_addn(&b, p + 9, (size_t)(e - p - 9));
            p = e + 3;
            continue;
        }
        if (*p != '&') {
            const char *amp = p;
            while (amp < end && *amp != '&' && *amp != '<') amp++;
            if (amp == p) { /* a stray '<' */
                sb_addc(&b, *p++);
                continue;
            }
            sb_addn(&b, p, (size_t)(amp - p));
            p = amp;
            continue;
        }
        const char *semi = memchr(p, ';', (size_t)(end - p));
        if (!semi || semi - p > 12) goto bad;
        size_t n = (size_t)(semi - p - 1);
        const char *e = p + 1;
        if (n == 3 && memcmp(e, "amp", 3) == 0)
            sb_addc(&b, '&');
        else if (n == 2 && memcmp(e, "lt", 2) == 0)
            sb_addc(&b, '<');
        else if (n == 2 && memcmp(e, "gt", 2) == 0)
            sb_addc(&b, '>');
        else if (n == 4 && memcmp(e, "quot", 4) == 0)
            sb_addc(&b, '"');
        else if (n == 4 && memcmp(e, "apos", 4) == 0)
            sb_addc(&b, '\'');
        else if (n >= 2 && e[0] == '#') {
            char num[16];
            memcpy(num, e + 1, n - 1);
            num[n - 1] = 0;
            char *stop;
            unsigned long cp = (num[0] == 'x' || num[0] == 'X') ? strtoul(num + 1, &stop, 16)
                                                                : strtoul(num, &stop, 10);
            if (*stop || cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto bad;
            put_utf8(&b, (uint32_t)cp);
        } else
            goto bad;
        p = semi + 1;
    }
    return sb_take(&b);
bad:
    sb_free(&b);
    return NULL;
}

char *aws_xml_get(AwsXmlSpan span, const char *tag)
{
    const char *cur = span.p;
    AwsXmlSpan in;
    if (!aws_xml_next(&cur, span.p + span.len, tag, &in)) return NULL;
    return aws_xml_decode(in.p, in.len);
}

void aws_xml_escape(SBuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            sb_add(b, "&amp;");
            break;
        case '<':
            sb_add(b, "&lt;");
            break;
        case '>':
            sb_add(b, "&gt;");
            break;
        case '"':
            sb_add(b, "&quot;");
            break;
        case '\'':
            sb_add(b, "&apos;");
            break;
        case '\r':
            sb_add(b, "&#13;");
            break;
        case '\n':
            sb_add(b, "&#10;");
            break;
        default:
            sb_addc(b, *s);
        }
    }
}
