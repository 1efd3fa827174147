/*
 * PgSplit — a streaming splitter of plain-SQL scripts (pg_dump's output, psql input).
 *
 * Bytes go in in pieces of any size (one byte at a time works); out come events:
 *   - statement: one complete SQL statement, with the comments before it, up to and including
 *     its ';'. Quotes ('', E'' with backslash escapes, "identifiers", $tag$ dollar quotes $tag$),
 *     -- line comments and nested block comments are honoured, so a ';' inside them does not end
 *     a statement. `content` is the offset of the first byte that is not blank or comment.
 *     A statement `COPY ... FROM stdin;` switches the splitter to COPY data;
 *   - meta: a psql meta-command line (`\connect db`, `\restrict key`), backslash included,
 *     newline excluded; only at the start of a statement;
 *   - copy_data: bytes of COPY data (whole rows or parts of rows; never the `\.` line);
 *   - copy_end: the `\.` line ending the data.
 * Statements are held in memory until complete (bounded by max_statement); COPY data is passed
 * through without copying, so memory does not grow with the tables.
 */
#ifndef CLUBIO_PG_SPLIT_H
#define CLUBIO_PG_SPLIT_H

#include "io/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct PgSplitEvents {
    int (*statement)(void *ud, const char *sql, size_t len, size_t content, bool is_copy,
                     RtError *err);
    int (*meta)(void *ud, const char *line, size_t len, RtError *err);
    int (*copy_data)(void *ud, const uint8_t *data, size_t len, RtError *err);
    int (*copy_end)(void *ud, RtError *err);
} PgSplitEvents;

typedef struct PgSplit PgSplit;

PgSplit *pg_split_new(const PgSplitEvents *ev, void *ud, size_t max_statement);
int pg_split_feed(PgSplit *s, const uint8_t *data, size_t len, RtError *err);
/* End of input: a trailing statement without ';' is passed on (as psql does); unterminated
 * quotes, comments or COPY data are errors. */
int pg_split_finish(PgSplit *s, RtError *err);
/* Statements (and meta-commands) passed on so far — the number used in error messages. */
int64_t pg_split_count(const PgSplit *s);
/* Line number (1-based) where the current statement began. */
int64_t pg_split_line(const PgSplit *s);
void pg_split_free(PgSplit *s);

/* True if the statement text (from its content offset) is `COPY ... FROM stdin`. */
bool pg_split_is_copy_from_stdin(const char *sql, size_t len);

#endif
