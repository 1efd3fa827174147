/*
 * verify's SQL scan: per-table rows and COPY-data digests from a plain-SQL dump, fed whole and
 * one byte at a time; several blocks for one table; empty rows; a "\." split across feeds;
 * quoted names; truncation; pg_dump's completion line; a too-long COPY header; the optional
 * order-independent row digests (pgdump's set digest), across any feed size.
 */
#include "harness.h"
#include "modules/pgdump/pgdump.h"
#include "modules/verify/sqlscan.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>

static const char DUMP[] = "--\n-- PostgreSQL database dump\n--\n"
                           "CREATE TABLE public.users (id integer, name text);\n"
                           "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;\n"
                           "COPY public.users (id, name) FROM stdin;\n"
                           "1\talice\n2\tbob \\\\ backslash\n3\t\\N\n"
                           "\\.\n"
                           "\n"
                           "COPY public.\"Odd Name\" (\"a b\") FROM stdin;\n"
                           "\n"
                           "x\n"
                           "\\.\n"
                           "COPY public.users (id, name) FROM stdin;\n"
                           "4\tcarol\n"
                           "\\.\n"
                           "COPY public.empty (id) FROM stdin;\n"
                           "\\.\n"
                           "SELECT pg_catalog.setval('public.users_id_seq', 4, true);\n"
                           "--\n-- PostgreSQL database dump complete\n--\n";

static void sha_hex(const char *s, char out[65])
{
    unsigned char md[32];
    SHA256((const unsigned char *)s, strlen(s), md);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static const RtResults *table(const RtResults *res, const char *name)
{
    const RtResults *t = rt_results_get(res, "tables");
    return t ? rt_results_get(t, name) : NULL;
}

static void check_dump(size_t step)
{
    SqlScan *s = sqlscan_new();
    RtError err;
    rt_error_init(&err);
    size_t len = strlen(DUMP);
    for (size_t i = 0; i < len; i += step) {
        size_t n = len - i < step ? len - i : step;
        CHECK(sqlscan_feed(s, (const uint8_t *)DUMP + i, n, &err) == RT_OK);
    }
    RtResults *res = rt_results_new();
    sqlscan_results(s, res);
    char want[65];
    const RtResults *u = table(res, "public.users");
    CHECK(u != NULL);
    if (u) {
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(u, "rows")), 4);
        sha_hex("1\talice\n2\tbob \\\\ backslash\n3\t\\N\n4\tcarol\n", want);
        CHECK_EQ_STR(rt_results_as_str(rt_results_get(u, "sha256"), NULL), want);
    }
    const RtResults *o = table(res, "public.\"Odd Name\"");
    CHECK(o != NULL);
    if (o) {
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(o, "rows")), 2);
        sha_hex("\nx\n", want);
        CHECK_EQ_STR(rt_results_as_str(rt_results_get(o, "sha256"), NULL), want);
    }
    const RtResults *e = table(res, "public.empty");
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(e, "rows")), 0);
        sha_hex("", want);
        CHECK_EQ_STR(rt_results_as_str(rt_results_get(e, "sha256"), NULL), want);
    }
    CHECK_EQ_INT(rt_results_as_int(rt_results_get(res, "table_count")), 3);
    CHECK_EQ_INT(rt_results_as_int(rt_results_get(res, "rows")), 6);
    CHECK(rt_results_as_bool(rt_results_get(res, "complete")));
    CHECK(!rt_results_as_bool(rt_results_get(res, "truncated")));
    rt_results_free(res);
    sqlscan_free(s);
}

static void test_whole(void)
{
    check_dump(1 << 20);
}
static void test_one_byte(void)
{
    check_dump(1);
}
static void test_odd_steps(void)
{
    for (size_t step = 2; step < 40; step += 3) check_dump(step);
}

static void test_truncated(void)
{
    const char *cut[] = {"COPY public.t (a) FROM stdin;\n1\n2",
                         "COPY public.t (a) FROM stdin;\n1\n\\",
                         "COPY public.t (a) FROM stdin;\n1\n\\."};
    for (int i = 0; i < 3; i++) {
        SqlScan *s = sqlscan_new();
        RtError err;
        rt_error_init(&err);
        CHECK(sqlscan_feed(s, (const uint8_t *)cut[i], strlen(cut[i]), &err) == RT_OK);
        RtResults *res = rt_results_new();
        sqlscan_results(s, res);
        CHECK(rt_results_as_bool(rt_results_get(res, "truncated")));
        CHECK(!rt_results_as_bool(rt_results_get(res, "complete")));
        rt_results_free(res);
        sqlscan_free(s);
    }
}

static void test_long_copy_header(void)
{
    size_t n = (2u << 20) + 100;
    char *big = malloc(n + 64);
    strcpy(big, "COPY public.t (");
    size_t at = strlen(big);
    while (at < n) big[at++] = 'c';
    strcpy(big + at, ") FROM stdin;\n");
    SqlScan *s = sqlscan_new();
    RtError err;
    rt_error_init(&err);
    CHECK(sqlscan_feed(s, (const uint8_t *)big, strlen(big), &err) == RT_ERR);
    CHECK(strstr(err.message, "longer than 1 MiB") != NULL);
    sqlscan_free(s);
    free(big);
}

/* row digests: whatever the feed size, each table's set_sha256 is pgdump's set digest of its
 * COPY lines ("\n" included), and the same for the rows in another order */
static void set_of(const char *const rows[], size_t n, char out[65])
{
    PgSetDigest d = {{0}};
    for (size_t i = 0; i < n; i++)
        pgdump_set_digest_row(&d, (const uint8_t *)rows[i], strlen(rows[i]));
    pgdump_set_digest_hex(&d, out);
}

static void test_row_digests(void)
{
    static const char *const users[] = {"1\talice\n", "2\tbob \\\\ backslash\n", "3\t\\N\n",
                                        "4\tcarol\n"};
    static const char *const shuffled[] = {"4\tcarol\n", "3\t\\N\n", "1\talice\n",
                                           "2\tbob \\\\ backslash\n"};
    static const char *const odd[] = {"\n", "x\n"};
    char want_users[65], want_shuffled[65], want_odd[65], want_empty[65];
    set_of(users, 4, want_users);
    set_of(shuffled, 4, want_shuffled);
    set_of(odd, 2, want_odd);
    set_of(NULL, 0, want_empty);
    CHECK(strcmp(want_users, want_shuffled) == 0);
    size_t steps[] = {1, 2, 5, 7, 1 << 20};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        SqlScan *s = sqlscan_new();
        RtError err;
        rt_error_init(&err);
        CHECK(sqlscan_set_row_digests(s, true, &err) == RT_OK);
        size_t len = strlen(DUMP);
        for (size_t i = 0; i < len; i += steps[k]) {
            size_t n = len - i < steps[k] ? len - i : steps[k];
            CHECK(sqlscan_feed(s, (const uint8_t *)DUMP + i, n, &err) == RT_OK);
        }
        RtResults *res = rt_results_new();
        sqlscan_results(s, res);
        const RtResults *u = table(res, "public.users"), *o = table(res, "public.\"Odd Name\""),
                        *e = table(res, "public.empty");
        CHECK(u && o && e);
        if (u && o && e) {
            CHECK_EQ_STR(rt_results_as_str(rt_results_get(u, "set_sha256"), NULL), want_users);
            CHECK_EQ_STR(rt_results_as_str(rt_results_get(o, "set_sha256"), NULL), want_odd);
            CHECK_EQ_STR(rt_results_as_str(rt_results_get(e, "set_sha256"), NULL), want_empty);
        }
        rt_results_free(res);
        sqlscan_free(s);
    }
    /* off by default: no set_sha256 */
    SqlScan *s = sqlscan_new();
    RtError err;
    rt_error_init(&err);
    CHECK(sqlscan_feed(s, (const uint8_t *)DUMP, strlen(DUMP), &err) == RT_OK);
    RtResults *res = rt_results_new();
    sqlscan_results(s, res);
    const RtResults *u = table(res, "public.users");
    CHECK(u && rt_results_get(u, "set_sha256") == NULL);
    rt_results_free(res);
    sqlscan_free(s);
}

TEST_MAIN(test_whole, test_one_byte, test_odd_steps, test_truncated, test_long_copy_header,
          test_row_digests)
