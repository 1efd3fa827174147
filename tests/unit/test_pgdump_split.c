/*
 * Unit tests of the restore's streaming statement splitter (modules/pgdump/pg_split.c): quotes,
 * E'' strings, identifiers, dollar quotes with tags, nested comments, psql meta-commands, COPY
 * data and its terminator — fed whole, one byte at a time and in odd-sized pieces, which must
 * all give the same events.
 */
#include "harness.h"
#include "modules/pgdump/pg_split.h"

#include <stdlib.h>
#include <string.h>

/* Events as a transcript: "S[<content>]" "M[<line>]" "D[<data>]" "E" (data pieces merged). */
typedef struct Log {
    char buf[16384];
    size_t len;
    bool in_data;
} Log;

static void add(Log *l, const char *s, size_t n)
{
    if (l->len + n >= sizeof l->buf) n = sizeof l->buf - 1 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    l->buf[l->len] = '\0';
}

static void close_data(Log *l)
{
    if (l->in_data) add(l, "]", 1);
    l->in_data = false;
}

static int ev_stmt(void *ud, const char *sql, size_t len, size_t content, bool is_copy,
                   RtError *err)
{
    (void)err;
    Log *l = ud;
    close_data(l);
    add(l, is_copy ? "C[" : "S[", 2);
    add(l, sql + content, len - content);
    add(l, "]", 1);
    return RT_OK;
}

static int ev_meta(void *ud, const char *line, size_t len, RtError *err)
{
    (void)err;
    Log *l = ud;
    close_data(l);
    add(l, "M[", 2);
    add(l, line, len);
    add(l, "]", 1);
    return RT_OK;
}

static int ev_data(void *ud, const uint8_t *d, size_t len, RtError *err)
{
    (void)err;
    Log *l = ud;
    if (!l->in_data) add(l, "D[", 2);
    l->in_data = true;
    add(l, (const char *)d, len);
    return RT_OK;
}

static int ev_end(void *ud, RtError *err)
{
    (void)err;
    Log *l = ud;
    close_data(l);
    add(l, "E", 1);
    return RT_OK;
}

static const PgSplitEvents EV = {ev_stmt, ev_meta, ev_data, ev_end};

/* Splits `in` in pieces of `step` bytes (0 = whole); returns RT_OK/RT_ERR, transcript in l. */
static int run(const char *in, size_t step, Log *l, RtError *err)
{
    memset(l, 0, sizeof *l);
    rt_error_init(err);
    PgSplit *s = pg_split_new(&EV, l, 0);
    size_t n = strlen(in);
    int rc = RT_OK;
    for (size_t i = 0; i < n && rc == RT_OK;) {
        size_t k = step ? step : n;
        if (k > n - i) k = n - i;
        rc = pg_split_feed(s, (const uint8_t *)in + i, k, err);
        i += k;
    }
    if (rc == RT_OK) rc = pg_split_finish(s, err);
    pg_split_free(s);
    close_data(l);
    return rc;
}

/* Same transcript whole, byte by byte, and in pieces of 2, 3, 7 and 64 bytes. */
static void expect(const char *in, const char *want)
{
    static const size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        Log l;
        RtError err;
        int rc = run(in, steps[i], &l, &err);
        CHECK_EQ_INT(rc, RT_OK);
        if (strcmp(l.buf, want) != 0)
            fprintf(stderr, "  step %zu: got  %s\n           want %s\n", steps[i], l.buf, want);
        CHECK_EQ_STR(l.buf, want);
    }
}

static void expect_error(const char *in, const char *msg_part)
{
    static const size_t steps[] = {0, 1};
    for (size_t i = 0; i < 2; i++) {
        Log l;
        RtError err;
        CHECK_EQ_INT(run(in, steps[i], &l, &err), RT_ERR);
        CHECK(strstr(err.message, msg_part) != NULL);
    }
}

static void test_simple_statements(void)
{
    expect("SELECT 1;\nSELECT 2;", "S[SELECT 1;]S[SELECT 2;]");
    expect("  \n\nCREATE TABLE t (a int);\n\n", "S[CREATE TABLE t (a int);]");
    expect("SELECT 1", "S[SELECT 1]"); /* psql sends a trailing statement at the end */
    expect("", "");
    expect("-- only a comment\n", "");
}

static void test_quotes(void)
{
    expect("SELECT 'a;b', 'it''s;';", "S[SELECT 'a;b', 'it''s;';]");
    expect("SELECT E'a\\';b', e'\\\\';", "S[SELECT E'a\\';b', e'\\\\';]");
    /* a backslash in a standard string is not an escape */
    expect("SELECT 'a\\';SELECT 2;", "S[SELECT 'a\\';]S[SELECT 2;]");
    /* "E" ending an identifier does not start an E'' string */
    expect("SELECT nameE'x\\';", "S[SELECT nameE'x\\';]");
    expect("CREATE TABLE \"a;b\"\"c\" (\"x;\" int);", "S[CREATE TABLE \"a;b\"\"c\" (\"x;\" int);]");
}

static void test_comments(void)
{
    expect("-- header; with semicolon\nSELECT 1; -- trailing;\nSELECT 2;",
           "S[SELECT 1;]S[SELECT 2;]"); /* comments before a statement are not its content */
    expect("/* a; /* nested; */ still; */ SELECT 1;", "S[SELECT 1;]");
    expect("SELECT 1 /* ; */ + 2;", "S[SELECT 1 /* ; */ + 2;]");
    expect("SELECT 4 - -2;", "S[SELECT 4 - -2;]");
    expect("SELECT 1 -- x\n;", "S[SELECT 1 -- x\n;]");
}

static void test_dollar_quotes(void)
{
    expect("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;",
           "S[CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;]");
    expect("DO $body$ BEGIN PERFORM '$$;'; -- ;\n END $body$;",
           "S[DO $body$ BEGIN PERFORM '$$;'; -- ;\n END $body$;]");
    expect("SELECT $a$ $b$ ; $b$ ; $a$;", "S[SELECT $a$ $b$ ; $b$ ; $a$;]");
    expect("PREPARE p AS SELECT $1;SELECT a$b;", "S[PREPARE p AS SELECT $1;]S[SELECT a$b;]");
    expect("SELECT $_x1$;$_x1$;", "S[SELECT $_x1$;$_x1$;]");
}

static void test_meta_commands(void)
{
    expect("\\restrict abc123\nSET x = 1;\n\\connect \"db\"\nSELECT 1;\n\\unrestrict abc123\n",
           "M[\\restrict abc123]S[SET x = 1;]M[\\connect \"db\"]S[SELECT 1;]"
           "M[\\unrestrict abc123]");
    expect("--\n-- comment\n--\n\\connect db\r\n", "M[\\connect db]");
}

static void test_copy(void)
{
    expect("COPY public.t (a, b) FROM stdin;\n1\tx\n2\t\\N\n\\.\nSELECT 1;",
           "C[COPY public.t (a, b) FROM stdin;]D[1\tx\n2\t\\N\n]ES[SELECT 1;]");
    /* lines starting with a backslash that are not the terminator stay data */
    expect("COPY t FROM stdin;\n\\\\.\n\\.x\n\\\n\\.\n",
           "C[COPY t FROM stdin;]D[\\\\.\n\\.x\n\\\n]E");
    /* CRLF terminator, empty data, terminator at the very end without a newline */
    expect("COPY t FROM stdin;\r\n1\r\n\\.\r\nCOPY u FROM stdin;\n\\.\nCOPY v FROM stdin;\n\\.",
           "C[COPY t FROM stdin;]D[1\r\n]EC[COPY u FROM stdin;]EC[COPY v FROM stdin;]E");
    /* a ';' inside data and SQL-looking data do not matter */
    expect("copy t from STDIN ;\n'; -- /* $$\n\\.\n", "C[copy t from STDIN ;]D['; -- /* $$\n]E");
    /* COPY TO and COPY FROM a file are ordinary statements */
    expect("COPY t TO STDOUT;\nCOPY t FROM '/x';", "S[COPY t TO STDOUT;]S[COPY t FROM '/x';]");
    CHECK(pg_split_is_copy_from_stdin("COPY \"a b\" (x) FROM stdin;", 26));
    CHECK(!pg_split_is_copy_from_stdin("COPYX t FROM stdin;", 19));
}

static void test_truncated(void)
{
    expect_error("COPY t FROM stdin;\n1\n2\n", "truncated");
    expect_error("SELECT 'abc", "truncated");
    expect_error("SELECT $$ abc", "truncated");
    expect_error("SELECT 1 /* abc", "truncated");
}

static void test_counts_and_lines(void)
{
    Log l;
    RtError err;
    memset(&l, 0, sizeof l);
    rt_error_init(&err);
    PgSplit *s = pg_split_new(&EV, &l, 0);
    const char *in = "SELECT 1;\n\n-- c\nSELECT\n2;";
    CHECK_EQ_INT(pg_split_feed(s, (const uint8_t *)in, 17, &err), RT_OK);
    CHECK_EQ_INT(pg_split_count(s), 1);
    CHECK_EQ_INT(pg_split_line(s), 3); /* the comment before statement 2 starts line 3 */
    CHECK_EQ_INT(pg_split_feed(s, (const uint8_t *)in + 17, strlen(in) - 17, &err), RT_OK);
    CHECK_EQ_INT(pg_split_count(s), 2);
    pg_split_free(s);
    /* lines of COPY data count, also when rows arrive in pieces and a row starts with \ */
    memset(&l, 0, sizeof l);
    s = pg_split_new(&EV, &l, 0);
    const char *cp = "COPY t FROM stdin;\n1\n\\N\n2\n\\.\n\nSELECT 1;";
    CHECK_EQ_INT(pg_split_feed(s, (const uint8_t *)cp, 22, &err), RT_OK);
    CHECK_EQ_INT(pg_split_feed(s, (const uint8_t *)cp + 22, strlen(cp) - 22, &err), RT_OK);
    CHECK_EQ_INT(pg_split_line(s), 7); /* SELECT 1; (and what may follow it) is on line 7 */
    CHECK_EQ_INT(pg_split_finish(s, &err), RT_OK);
    CHECK_EQ_INT(pg_split_count(s), 2);
    pg_split_free(s);
    /* a statement longer than the limit is an error, not unbounded memory */
    memset(&l, 0, sizeof l);
    s = pg_split_new(&EV, &l, 100);
    char big[300];
    memset(big, 'x', sizeof big);
    CHECK_EQ_INT(pg_split_feed(s, (const uint8_t *)big, sizeof big, &err), RT_ERR);
    CHECK(strstr(err.message, "longer than") != NULL);
    pg_split_free(s);
}

TEST_MAIN(test_simple_statements, test_quotes, test_comments, test_dollar_quotes,
          test_meta_commands, test_copy, test_truncated, test_counts_and_lines)
