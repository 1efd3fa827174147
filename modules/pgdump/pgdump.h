/*
 * pgdump — PostgreSQL over libpq: a consistent parallel plain-SQL dump (a pipe source), a native
 * streaming restore of plain SQL (a pipe sink), connections for verification queries, and exact
 * table digests over COPY output (shared with the verify module).
 *
 * Cores never raise and never include lua.h: functions return RT_OK/RT_ERR and fill an RtError
 * whose message is redacted (the password parsed from a URL is registered with the redactor).
 *
 *     RtSource *s = pgdump_dump_source(&(PgDumpOptions){.url = url, .jobs = 2}, &err);
 *     RtSink *k = pgdump_restore_sink(&(PgRestoreOptions){.url = url, .jobs = 2}, &err);
 */
#ifndef CLUBIO_PGDUMP_H
#define CLUBIO_PGDUMP_H

#include "io/stage.h"

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- connections ------------------------------------------------------------------------ */

/* Opens a connection from a postgres:// URL (or a key=value conninfo). The password inside is
 * registered for redaction; errors name "database <db> on <host>:<port>" and never the URL. */
PGconn *pgdump_connect(const char *url, const char *application_name, RtError *err);
/* "database clubio on 127.0.0.1:5432" for messages (no secrets). */
void pgdump_describe(const char *url, char *out, size_t cap);
/* Records the connection's last error (first line, redacted) as "<what>: <message>". */
int pgdump_conn_error(PGconn *c, RtError *err, const char *code, const char *what);
/* Runs sql (no result rows expected); RT_ERR with the server's message; Ctrl-C cancels it. */
int pgdump_exec(PGconn *c, const char *sql, RtError *err);
/* Waits (in poll, 200 ms slices) until PQgetResult(c) will not block. On rt_cancelled() the
 * server is asked once to cancel (w->cancelled set); false when the wait is given up — the
 * server has not answered the cancel within 5 s, a second signal came, or the connection
 * failed. Zero-initialise the PgWait once per exchange. */
typedef struct PgWait {
    bool cancelled;
    double give_up;
} PgWait;
bool pgdump_wait_result(PGconn *c, PgWait *w);
/* PQexec (PQexecParams when nparams > 0) that Ctrl-C interrupts: on rt_cancelled() the server
 * is asked to cancel the statement and *cancelled is set (the caller reports the cancel). */
PGresult *pgdump_exec_cancellable(PGconn *c, const char *sql, int nparams,
                                  const char *const *params, bool *cancelled);
/* PQgetCopyData(c, row, 0) that a cancel (or *stop, if given) interrupts: the wait is in poll;
 * on cancel the server is asked to cancel the COPY (once, *cancelled set) and reading goes on
 * until it ends it, or returns -2 when the server has not within 5 s (or after a second
 * signal): the connection is then unusable. Returns as PQgetCopyData: > 0 a row, -1 the end,
 * -2 an error. */
int pgdump_get_copy_data(PGconn *c, char **row, const atomic_bool *stop, bool *cancelled);

/* ---- table digests ---------------------------------------------------------------------- */

typedef struct PgTableDigest {
    int64_t rows;
    int64_t bytes;
    char sha256[65]; /* SHA-256 of the COPY text data in the order the server sent it */
    /* Order-independent digest: the sum modulo 2^256 of the SHA-256 of every row's COPY line.
     * Equal for two tables holding the same rows whatever their physical order (a parallel
     * restore loads a table's rows in several COPY streams). */
    char set_sha256[65];
} PgTableDigest;

/* Accumulates an order-independent row-set digest (see above). */
typedef struct PgSetDigest {
    uint8_t sum[32];
} PgSetDigest;
void pgdump_set_digest_row(PgSetDigest *d, const uint8_t *row, size_t len);
void pgdump_set_digest_merge(PgSetDigest *into, const PgSetDigest *from);
void pgdump_set_digest_hex(const PgSetDigest *d, char out[65]);
/* One row's hash fed in pieces (a row may span input buffers), added to a set digest at its
 * end: the same as pgdump_set_digest_row on the whole line. No locks, no allocation per row. */
typedef struct PgRowHash PgRowHash;
PgRowHash *pgdump_row_hash_new(void);
void pgdump_row_hash_free(PgRowHash *h);
void pgdump_row_hash_update(PgRowHash *h, const uint8_t *p, size_t n);
/* Adds the row's hash to `into` (nothing if no byte was fed since the last end). */
void pgdump_row_hash_end(PgRowHash *h, PgSetDigest *into);
/* Finishes an ordered SHA-256 (EVP) into lower-case hex. */
void pgdump_digest_final_hex(EVP_MD_CTX *md, char out[65]);

/* Digests `table` (a qualified, already quoted name such as public."Users", or any relation
 * name the server resolves) over `COPY (SELECT <non-generated columns>) TO STDOUT`, the same
 * bytes the dump writes for it. */
int pgdump_table_digest(PGconn *c, const char *table, PgTableDigest *out, RtError *err);
/* Digests n tables (as pgdump_table_digest) over `jobs` connections of their own, opened from
 * url, each taking the next table as soon as it is free: a restore's read-back check at the
 * speed of the restore's own parallelism. out[i] is tables[i]'s; the first error stops the
 * others after their current table. */
int pgdump_table_digests(const char *url, const char *const *tables, size_t n, int jobs,
                         PgTableDigest *out, RtError *err);

/* ---- dump ------------------------------------------------------------------------------- */

typedef enum PgLargeObjects {
    PG_LO_REFUSE = 0, /* error if the database has large objects */
    PG_LO_SKIP = 1,   /* dump without them (pg_dump --no-blobs) */
    PG_LO_INCLUDE = 2 /* dump them as pg_dump does (lo_create in pre-data, lowrite in data) */
} PgLargeObjects;

typedef struct PgDumpOptions {
    const char *url;
    int jobs;            /* worker connections for table data (default 2) */
    const char *pg_dump; /* pg_dump program (default "pg_dump" from PATH) */
    PgLargeObjects large_objects;
    int64_t split_bytes; /* tables larger than this are split in ctid ranges (default 8 MiB) */
    bool row_digests;    /* also an order-independent set_sha256 per table (a hash per row) */
    /* Dump as of this exported snapshot (e.g. a logical replication slot's, see
     * modules/changes) instead of a new one; its exporter must stay open until the source is
     * created. */
    const char *snapshot;
} PgDumpOptions;

/* A source producing a plain-SQL dump that `psql -v ON_ERROR_STOP=1` restores into an empty
 * database. Connects, checks versions and exports the snapshot before returning. Results:
 * { tables = { ["schema.table"] = {rows, bytes, sha256 [, set_sha256]} }, server_version, snapshot,
 *   snapshot_xids (pg_current_snapshot() as "xmin:xmax:xip,...": which transactions the dump
 *   holds), pg_dump_version, sequences }. */
RtSource *pgdump_dump_source(const PgDumpOptions *opt, RtError *err);

/* Parses "pg_dump (PostgreSQL) 15.20 (Debian ...)" into major version 15 (0 if unknown). */
int pgdump_parse_tool_major(const char *version_line);

/* ---- restore ---------------------------------------------------------------------------- */

typedef struct PgRestoreOptions {
    const char *url;
    int jobs;            /* parallel connections for COPY data and CREATE INDEX (default 2) */
    bool clean;          /* drop the target's existing objects first (destructive) */
    int64_t chunk_bytes; /* a COPY command ends after this much data (8 MiB): the commit size */
    bool digests;        /* SHA-256 of each table's COPY data, as the dump computes it */
    /* set_sha256 of each table's rows as loaded (pgdump_table_digest's order-independent
     * digest), computed on the worker threads: to check the restored tables read back */
    bool set_digests;
} PgRestoreOptions;

/* A sink loading a plain-SQL stream (ours or stock pg_dump's). Checks the target is empty (or
 * cleans it) before returning. Results: { statements, tables = { ["schema.table"] = {rows,
 * bytes [, sha256 with digests] [, set_sha256 with set_digests]} } }. */
RtSink *pgdump_restore_sink(const PgRestoreOptions *opt, RtError *err);

#endif
