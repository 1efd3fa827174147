/*
 * SqlScan — reads a plain-SQL dump as it streams past and recomputes, for every table, the row
 * count and the SHA-256 of its COPY data, without a database and without keeping the data.
 *
 * A table's COPY data is the bytes between `COPY <table> (<columns>) FROM stdin;` and the `\.`
 * line — exactly what `COPY <table> TO STDOUT` produced on the server, one line per row, each
 * ending in "\n". When a dump splits a table into several COPY blocks, their data is hashed in
 * the order the blocks appear, as one stream. The digest therefore equals the one the dump
 * computed while writing (pgdump's per-table `sha256`), and a manifest's per-table figures can
 * be checked from the archive alone.
 *
 * Recognised lines (at the start of a line, outside a COPY block):
 *   COPY <name> [(<columns>)] FROM stdin;     starts a block; <name> is kept as written
 *   -- PostgreSQL database dump complete      sets `complete` (pg_dump's last line)
 * Everything else is SQL the scan does not interpret. A stream that ends inside a COPY block is
 * truncated.
 *
 * Available as a sink (verify an archive: nothing is written) and as an observing filter
 * (check a stream while something else consumes it, e.g. a restore).
 * Results: { tables = { [name] = {rows, sha256, bytes [, set_sha256]} }, table_count, rows,
 * complete, truncated }.
 *
 * With row digests on, every table also gets `set_sha256`: the sum modulo 2^256 of the SHA-256
 * of each row's COPY line ("\n" included) — exactly pgdump's order-independent digest
 * (`pgdump_table_digest().set_sha256`, `pgdump.dump{row_digests = true}`), so a restored table
 * read back from the server can be checked against the archive whatever its physical order.
 * It costs one SHA-256 finalisation per row, hence opt-in.
 */
#ifndef VERIFY_SQLSCAN_H
#define VERIFY_SQLSCAN_H

#include "io/stage.h"

typedef struct SqlScan SqlScan;

SqlScan *sqlscan_new(void);
/* Feeds bytes; RT_ERR only on allocation failure or an unreadable COPY header. */
int sqlscan_feed(SqlScan *s, const uint8_t *data, size_t len, RtError *err);
/* Marks the end of the stream (sets `truncated` when inside a COPY block). */
void sqlscan_end(SqlScan *s);
/* Turns the per-table set_sha256 on (before the first feed). */
int sqlscan_set_row_digests(SqlScan *s, bool on, RtError *err);
void sqlscan_results(SqlScan *s, RtResults *res);
void sqlscan_free(SqlScan *s);

/* Stages around a scan (the stage owns it). */
RtSink *sqlscan_sink(bool row_digests, RtError *err);
RtFilter *sqlscan_filter(bool row_digests, RtError *err);

#endif
