/*
 * The pgoutput decoder (modules/changes/pgoutput.c) on bytes captured from PostgreSQL 15:
 * pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1',
 * 'publication_names', pub) over this session (the captured hex is below, one message a line):
 *
 *   create table "Odd ""T""" (id int primary key, "Name" text, big text);
 *   create table f (a int, b text); alter table f replica identity full;
 *   insert into "Odd ""T""" values (1, 'o''k', <6400 bytes of md5 hex: stored out of line>);
 *   insert into f values (1, null);
 *   -- slot created here
 *   begin;
 *   insert into "Odd ""T""" values (2, E'tab\tnl\nbs\\', null), (3, 'x', null);
 *   update "Odd ""T""" set "Name" = 'changed' where id = 1;   -- big: unchanged TOAST ('u')
 *   update "Odd ""T""" set id = 10 where id = 2;              -- key change: old key ('K')
 *   delete from "Odd ""T""" where id = 3;
 *   update f set b = 'b' where a = 1;                        -- replica identity full ('O')
 *   delete from f where a = 1;
 *   commit;
 *   truncate f;
 * Also: truncated and malformed messages are errors, never a crash or a read past the end;
 * transactions at or below the skip position leave nothing.
 */
#include "harness.h"
#include "modules/changes/changes.h"

#include <stdlib.h>
#include <string.h>

static const char *const CAPTURED[] = {
    "4200000000052d4c60000304a96f167b0e000004a5",
    "52000042cc7075626c6963004f646420225422006400030169640000000017ffffffff004e616d650000000019ffff"
    "ffff006269670000000019ffffffff",
    "49000042cc4e0003740000000132740000000a746162096e6c0a62735c6e",
    "49000042cc4e00037400000001337400000001786e",
    "55000042cc4e000374000000013174000000076368616e67656475",
    "55000042cc4b00037400000001326e6e4e000374000000023130740000000a746162096e6c0a62735c6e",
    "44000042cc4b00037400000001336e6e",
    "52000042d37075626c696300660066000201610000000017ffffffff01620000000019ffffffff",
    "55000042d34f00027400000001316e4e0002740000000131740000000162",
    "44000042d34f0002740000000131740000000162",
    "430000000000052d4c6000000000052d4c90000304a96f167b0e",
    "4200000000052d54e8000304a96f16854e000004a6",
    "52000042d37075626c696300660066000201610000000017ffffffff01620000000019ffffffff",
    "540000000100000042d3",
    "430000000000052d54e800000000052d55f8000304a96f16854e",
};
#define NCAP (sizeof CAPTURED / sizeof CAPTURED[0])

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static char *decode_all(ChgDecoder *d, RtError *err, int *rc)
{
    static uint8_t buf[65536];
    *rc = RT_OK;
    for (size_t i = 0; i < NCAP && *rc == RT_OK; i++) {
        size_t n = unhex(CAPTURED[i], buf);
        *rc = chg_decode(d, buf, n, err);
    }
    size_t len;
    const uint8_t *o = chg_decoder_output(d, &len);
    char *s = malloc(len + 1);
    memcpy(s, o, len);
    s[len] = 0;
    chg_decoder_take(d, len);
    return s;
}

static const char EXPECTED[] =
    "-- txn commit_lsn=0/52D4C60 xid=1189 time=2026-12-02T18:18:09.860366Z\n"
    "BEGIN;\n"
    "COPY \"public\".\"Odd \"\"T\"\"\" (\"id\", \"Name\", \"big\") FROM stdin;\n"
    "2\ttab\\tnl\\nbs\\\\\t\\N\n"
    "3\tx\t\\N\n"
    "\\.\n"
    /* big was not changed (TOAST 'u'): not in the SET list */
    "UPDATE \"public\".\"Odd \"\"T\"\"\" SET \"id\" = '1', \"Name\" = 'changed' WHERE \"id\" = "
    "'1';\n"
    /* the key changed: found by the old key */
    "UPDATE \"public\".\"Odd \"\"T\"\"\" SET \"id\" = '10', \"Name\" = E'tab\\tnl\\nbs\\\\', "
    "\"big\" = "
    "NULL WHERE \"id\" = '2';\n"
    "DELETE FROM \"public\".\"Odd \"\"T\"\"\" WHERE \"id\" = '3';\n"
    /* replica identity full: one row, by all its old values */
    "UPDATE \"public\".\"f\" SET \"a\" = '1', \"b\" = 'b' WHERE ctid = (SELECT ctid FROM "
    "\"public\".\"f\" WHERE \"a\" = '1' AND \"b\" IS NULL LIMIT 1);\n"
    "DELETE FROM \"public\".\"f\" WHERE ctid = (SELECT ctid FROM \"public\".\"f\" WHERE \"a\" = "
    "'1' AND \"b\" = 'b' LIMIT 1);\n"
    "COMMIT;\n"
    "-- txn commit_lsn=0/52D54E8 xid=1190 time=2026-12-02T18:18:09.862990Z\n"
    "BEGIN;\n"
    "TRUNCATE TABLE \"public\".\"f\";\n"
    "COMMIT;\n";

static void test_captured(void)
{
    ChgDecoder *d = chg_decoder_new();
    RtError err;
    rt_error_init(&err);
    int rc;
    char *sql = decode_all(d, &err, &rc);
    CHECK_EQ_INT(rc, RT_OK);
    CHECK_EQ_STR(sql, EXPECTED);
    const ChgStats *st = chg_decoder_stats(d);
    CHECK_EQ_INT(st->transactions, 2);
    CHECK_EQ_INT(st->changes, 8); /* 2 inserts, 3 updates, 2 deletes, 1 truncate */
    char l[24];
    chg_lsn_format(st->first_lsn, l);
    CHECK_EQ_STR(l, "0/52D4C60");
    chg_lsn_format(st->last_end_lsn, l);
    CHECK_EQ_STR(l, "0/52D55F8");
    RtResults *res = rt_results_new();
    chg_decoder_results(d, res);
    const RtResults *t = rt_results_get(rt_results_get(res, "tables"), "public.Odd \"T\"");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(t, "inserts")), 2);
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(t, "updates")), 2);
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(t, "deletes")), 1);
    }
    const RtResults *sig = rt_results_get(rt_results_get(res, "relations"), "public.f");
    CHECK(sig != NULL);
    if (sig) CHECK_EQ_STR(rt_results_as_str(sig, NULL), "identity=f;a:23:-1:key,b:25:-1:key");
    rt_results_free(res);
    free(sql);
    chg_decoder_free(d);
}

/* Transactions at or below the skip position (archived before a crash) leave nothing. */
static void test_skip_through(void)
{
    ChgDecoder *d = chg_decoder_new();
    chg_decoder_skip_through(d, 0x52D4C60);
    RtError err;
    rt_error_init(&err);
    int rc;
    char *sql = decode_all(d, &err, &rc);
    CHECK_EQ_INT(rc, RT_OK);
    CHECK(strncmp(sql, "-- txn commit_lsn=0/52D54E8 ", 28) == 0);
    CHECK(strstr(sql, "Odd") == NULL);
    CHECK_EQ_INT(chg_decoder_stats(d)->transactions, 1);
    CHECK_EQ_INT(chg_decoder_stats(d)->skipped, 1);
    free(sql);
    chg_decoder_free(d);
}

/* Every message cut short at every length is an error (or, for a prefix that is itself whole,
 * fine) and never reads past its end (ASan checks that: each cut is its own allocation). */
static void test_truncated(void)
{
    static uint8_t full[65536];
    int errors = 0;
    for (size_t i = 0; i < NCAP; i++) {
        size_t n = unhex(CAPTURED[i], full);
        for (size_t cut = 1; cut < n; cut++) {
            ChgDecoder *d = chg_decoder_new();
            RtError err;
            rt_error_init(&err);
            /* the relations and a Begin first, so that the cut message is the only bad one */
            for (size_t j = 0; j < i; j++) {
                uint8_t tmp[65536];
                size_t m = unhex(CAPTURED[j], tmp);
                if (tmp[0] == 'R' || tmp[0] == 'B' || tmp[0] == 'C') chg_decode(d, tmp, m, &err);
            }
            rt_error_init(&err);
            uint8_t *copy = malloc(cut);
            memcpy(copy, full, cut);
            if (chg_decode(d, copy, cut, &err) != RT_OK) {
                errors++;
                CHECK(err.set);
            }
            free(copy);
            chg_decoder_free(d);
        }
    }
    CHECK(errors > 100);
}

static void test_unknown_and_orphans(void)
{
    ChgDecoder *d = chg_decoder_new();
    RtError err;
    rt_error_init(&err);
    const uint8_t unknown[] = {'Z', 0};
    CHECK_EQ_INT(chg_decode(d, unknown, sizeof unknown, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "changes.protocol");
    /* an Insert for a relation never described */
    uint8_t buf[4096];
    size_t n = unhex(CAPTURED[2], buf);
    rt_error_init(&err);
    CHECK_EQ_INT(chg_decode(d, buf, n, &err), RT_ERR);
    CHECK(strstr(err.message, "before its Relation message") != NULL);
    chg_decoder_free(d);
}

static void test_lsn_time(void)
{
    uint64_t v;
    CHECK(chg_lsn_parse("16/B374D848", &v));
    CHECK(v == 0x16B374D848ull);
    CHECK(!chg_lsn_parse("16/B374D848x", &v));
    CHECK(!chg_lsn_parse("zz", &v));
    char t[40];
    int64_t us;
    chg_time_format(0, t);
    CHECK_EQ_STR(t, "2000-01-01T00:00:00.000000Z");
    CHECK(chg_time_parse("2026-12-02T18:18:09.862990Z", &us));
    chg_time_format(us, t);
    CHECK_EQ_STR(t, "2026-12-02T18:18:09.862990Z");
    CHECK(chg_time_parse("2026-12-02T18:18:09.8Z", &us));
    CHECK_EQ_INT(us % 1000000, 800000);
    CHECK(!chg_time_parse("2026-12-02T18:18:09+02:00", &us));
}

TEST_MAIN(test_captured, test_skip_through, test_truncated, test_unknown_and_orphans, test_lsn_time)
