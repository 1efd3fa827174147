/*
 * changes — the change archive's C core: a logical replication connection (pgoutput), a decoder
 * of pgoutput protocol version 1 that renders each committed transaction as plain SQL, and a
 * replay sink that applies such SQL to a database fast. Never includes lua.h, never raises.
 *
 * A segment's SQL (what the decoder writes, what the replay sink and psql read):
 *
 *   -- clubio-dr change archive segment (format 1)
 *   -- txn commit_lsn=0/1A2B3C0 xid=750 time=2026-12-02T18:00:00.123456Z
 *   BEGIN;
 *   COPY public.users (id, name) FROM stdin;      runs of inserts into one table
 *   1\tann
 *   \.
 *   UPDATE public.users SET name = 'bo' WHERE id = '1';     one statement a line
 *   DELETE FROM public.users WHERE id = '2';
 *   TRUNCATE TABLE public.t;
 *   COMMIT;
 *   -- sequences at the cut
 *   SELECT pg_catalog.setval('public.users_id_seq', 42, true);
 *
 * Values are pgoutput's text output, written as quoted literals ('...', E'...' when the value
 * holds a backslash, quote or control character) so one statement is one line. An UPDATE leaves
 * out the columns pgoutput sent as "unchanged TOAST" ('u'). UPDATE and DELETE are keyed by the
 * replica identity (the old key or old tuple when sent, else the key columns of the new tuple);
 * with REPLICA IDENTITY FULL the row is found by all its old values, one row only (ctid).
 */
#ifndef CLUBIO_CHANGES_H
#define CLUBIO_CHANGES_H

#include "io/stage.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

/* LSNs as text, PostgreSQL's way: "16/B374D848". */
void chg_lsn_format(uint64_t lsn, char out[24]);
bool chg_lsn_parse(const char *s, uint64_t *lsn);
/* A pgoutput timestamp (microseconds since 2000-01-01 UTC) as ISO 8601 with microseconds. */
void chg_time_format(int64_t pg_us, char out[40]);
/* Parses what chg_time_format writes (or without fraction); false if not that format. */
bool chg_time_parse(const char *s, int64_t *pg_us);

/* ---- the decoder ------------------------------------------------------------------------ */

typedef struct ChgDecoder ChgDecoder;

ChgDecoder *chg_decoder_new(void);
void chg_decoder_free(ChgDecoder *d);
/* Transactions whose commit LSN is <= this are dropped (already archived). */
void chg_decoder_skip_through(ChgDecoder *d, uint64_t lsn);
/* Decodes one pgoutput message (the payload of an XLogData) and appends the SQL it makes to
 * the decoder's output. */
int chg_decode(ChgDecoder *d, const uint8_t *msg, size_t len, RtError *err);
/* The SQL not yet taken; chg_decoder_take() marks n bytes of it taken. */
const uint8_t *chg_decoder_output(ChgDecoder *d, size_t *len);
void chg_decoder_take(ChgDecoder *d, size_t n);
/* Appends text to the output (segment header, sequences trailer). */
void chg_decoder_write(ChgDecoder *d, const char *text);
bool chg_decoder_in_txn(const ChgDecoder *d);
/* Statistics since the last chg_decoder_reset_stats (one segment): */
typedef struct ChgStats {
    int64_t transactions, changes, skipped;
    uint64_t first_lsn, last_lsn, last_end_lsn; /* commit LSNs; end of the last commit record */
    int64_t first_time, last_time;              /* commit times (pg microseconds) */
    int64_t bytes;                              /* SQL written */
} ChgStats;
const ChgStats *chg_decoder_stats(const ChgDecoder *d);
void chg_decoder_reset_stats(ChgDecoder *d);
/* Per-table counts and relation signatures of the segment into res:
 * tables = {["s.t"] = {inserts, updates, deletes, truncates}}, relations = {["s.t"] = signature},
 * no_identity = {"s.t", ...} (tables whose UPDATE/DELETE came without a usable key). */
void chg_decoder_results(const ChgDecoder *d, RtResults *res);

/* ---- capture ---------------------------------------------------------------------------- */

typedef struct ChgCapture ChgCapture;

typedef struct ChgSlotInfo {
    char consistent_point[24];
    char snapshot[80]; /* valid until the next command on the capture's connection */
} ChgSlotInfo;

ChgCapture *chg_capture_open(const char *url, const char *slot, const char *publication,
                             RtError *err);
void chg_capture_free(ChgCapture *c);
/* CREATE_REPLICATION_SLOT slot LOGICAL pgoutput, exporting its snapshot. */
int chg_capture_create_slot(ChgCapture *c, ChgSlotInfo *info, RtError *err);
/* START_REPLICATION from the slot's confirmed position; transactions with commit LSN <=
 * skip_through are dropped (archived before a crash that came before the confirmation). */
int chg_capture_start(ChgCapture *c, uint64_t skip_through, RtError *err);
/* Waits up to `seconds` for the next transaction (answering keepalives). *lsn = its commit
 * LSN, or 0 on timeout. */
int chg_capture_wait(ChgCapture *c, double seconds, uint64_t *lsn, RtError *err);
/* Reports `lsn` as flushed (durably archived) to the server now. */
int chg_capture_confirm(ChgCapture *c, uint64_t lsn, RtError *err);
/* A source of one segment: whole transactions, until `interval` seconds after it starts (or
 * max_bytes of SQL) at a transaction boundary; then the sequences' values (read on a normal
 * connection, sequences_url) as setval lines. Results: first_lsn, last_lsn, end_lsn,
 * first_time, last_time, transactions, changes, tables, relations, sequences. The capture must
 * outlive the source. */
RtSource *chg_segment_source(ChgCapture *c, double interval, int64_t max_bytes,
                             const char *sequences_url, RtError *err);

/* ---- replay ----------------------------------------------------------------------------- */

typedef struct ChgReplayer ChgReplayer;

typedef struct ChgReplayOptions {
    int64_t stop_time;         /* apply transactions committed at or before it; INT64_MAX = all */
    const char *base_snapshot; /* "xmin:xmax:xip,..." of the base: xids visible in it are skipped */
    uint64_t base_lsn;         /* transactions with commit LSN <= this are in the base (0: none) */
    const char *expect_sha256; /* the plain SQL's SHA-256 from the signed manifest (or NULL) */
} ChgReplayOptions;

/* A connection replaying segments in order; transactions with a commit LSN at or below the
 * last one applied are skipped (seen twice). Reference counted: each sink holds a reference. */
ChgReplayer *chg_replayer_new(const char *url, RtError *err);
void chg_replayer_release(ChgReplayer *r);
/* Totals: applied, skipped_base, skipped_dup, changes, last_lsn, last_time, stopped. */
void chg_replayer_results(ChgReplayer *r, RtResults *res);

/* A sink applying one segment's SQL inside one server transaction, committed at finish only if
 * the segment is whole and the SHA-256 of every byte received matches expect_sha256. Statements
 * go through libpq's pipeline mode as prepared statements (each line's literals become its
 * parameters; a shape is prepared once per replayer), long runs of inserts by COPY (merged
 * across transactions). Results: this segment's applied, skipped and stopped. */
RtSink *chg_replay_sink(ChgReplayer *r, const ChgReplayOptions *o, RtError *err);

/* A filter dropping ownership and privilege statements from a plain-SQL dump (strip.c). */
RtFilter *chg_no_owner_filter(RtError *err);

#endif
