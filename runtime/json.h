/*
 * JSON string escaping — the one escaper of the runtime and the modules (log lines, --json
 * reports, error reports). '"' and '\\' are backslashed, newline and tab become \n and \t, other
 * control bytes \u00XX; every other byte (UTF-8 included) passes as it is.
 */
#ifndef RT_JSON_H
#define RT_JSON_H

#include "sbuf.h"

#include <stddef.h>
#include <stdio.h>

/* Appends s[0..n) escaped, without quotes, to b. */
void rt_json_escape(SBuf *b, const char *s, size_t n);
/* Appends s[0..n) as a quoted JSON string to b. */
void rt_json_quote(SBuf *b, const char *s, size_t n);
/* Writes the NUL-terminated s escaped, without quotes, to f (NULL writes nothing). */
void rt_json_fescape(FILE *f, const char *s);
/* Writes the NUL-terminated s as a quoted JSON string to f (NULL is written as ""). */
void rt_json_fquote(FILE *f, const char *s);

#endif
