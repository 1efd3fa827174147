/*
 * The timestamp module (runtime/timestamp.c): ISO 8601 and YYYYMMDD parsing, formatting, and
 * HTTP dates through curl_getdate — the one parser s3, http, neon and the time module share.
 */
#include "harness.h"
#include "timestamp.h"

#include <stdio.h>

static void test_iso8601_forms(void)
{
    double t = 0;
    const char *why = NULL;
    CHECK(rt_parse_iso8601("2024-01-15T10:30:00Z", &t, &why));
    CHECK_EQ_INT((long long)t, 1705314600LL);
    CHECK(rt_parse_iso8601("2024-01-15T12:30:00+02:00", &t, &why));
    CHECK_EQ_INT((long long)t, 1705314600LL);
    CHECK(rt_parse_iso8601("2024-01-15T05:30:00-0500", &t, &why));
    CHECK_EQ_INT((long long)t, 1705314600LL);
    CHECK(rt_parse_iso8601("2024-01-15 10:30", &t, &why));
    CHECK_EQ_INT((long long)t, 1705314600LL);
    CHECK(rt_parse_iso8601("2024-01-15T10:30:00.250Z", &t, &why));
    CHECK(t > 1705314600.24 && t < 1705314600.26);
    CHECK(rt_parse_iso8601("2024-02-29", &t, &why));
    CHECK_EQ_INT((long long)t, 1709164800LL);
}

static void test_iso8601_rejects(void)
{
    double t = 0;
    const char *why = NULL;
    CHECK(!rt_parse_iso8601("2023-02-29T00:00:00Z", &t, &why));
    CHECK_EQ_STR(why, "date or time out of range");
    CHECK(!rt_parse_iso8601("yesterday", &t, &why));
    CHECK(!rt_parse_iso8601("2024-01-15T10:30:00Zjunk", &t, &why));
    CHECK_EQ_STR(why, "unexpected text after the timestamp");
    CHECK(!rt_parse_iso8601("2024-01-15T10:30:00+", &t, &why)); /* no read past the end */
    CHECK_EQ_STR(why, "bad UTC offset (expected +HH:MM)");
    CHECK(!rt_parse_iso8601("2024-01-15T10:30:00.Z", &t, &why));
}

static void test_protocol_fields(void)
{
    /* S3's LastModified and a credential Expiration with an offset. */
    CHECK_EQ_INT((long long)rt_iso8601_epoch("2024-01-15T10:30:00.000Z"), 1705314600LL);
    CHECK_EQ_INT((long long)rt_iso8601_epoch("2024-01-15T10:30:00+00:00"), 1705314600LL);
    CHECK(rt_iso8601_epoch(NULL) == 0);
    CHECK(rt_iso8601_epoch("not a date") == 0);
}

static void test_ymd(void)
{
    double t = 0, u = 0;
    const char *why = NULL;
    CHECK(rt_parse_ymd("20240229", &t, &why));
    CHECK(rt_parse_iso8601("2024-02-29", &u, &why));
    CHECK(t == u);
    CHECK(!rt_parse_ymd("2024011", &t, &why));
    CHECK_EQ_STR(why, "expected YYYYMMDD");
    CHECK(!rt_parse_ymd("20230229", &t, &why));
}

static void test_format(void)
{
    char buf[32];
    CHECK_EQ_STR(rt_iso8601(1705314600.0, false, buf), "2024-01-15T10:30:00Z");
    CHECK_EQ_STR(rt_iso8601(1705314600.25, true, buf), "2024-01-15T10:30:00.250Z");
    double t = 0;
    const char *why;
    CHECK(rt_parse_iso8601(rt_iso8601(1705314600.0, false, buf), &t, &why));
    CHECK_EQ_INT((long long)t, 1705314600LL);
}

/* Every millisecond parsed and printed again is the same (".606" is .60599999... as a double). */
static void test_millis_round_trip(void)
{
    int bad = 0;
    for (int ms = 0; ms < 1000; ms++) {
        char in[40], out[32];
        double t;
        const char *why;
        snprintf(in, sizeof in, "2026-12-03T07:28:02.%03dZ", ms);
        if (!rt_parse_iso8601(in, &t, &why) || strcmp(rt_iso8601(t, true, out), in) != 0) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_http_dates(void)
{
    /* RFC 7231's three forms of the same instant. */
    CHECK_EQ_INT((long long)rt_http_parse_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777LL);
    CHECK_EQ_INT((long long)rt_http_parse_date("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777LL);
    CHECK_EQ_INT((long long)rt_http_parse_date("Sun Nov  6 08:49:37 1994"), 784111777LL);
    CHECK(rt_http_parse_date("soon") == 0);
    CHECK(rt_http_parse_date(NULL) == 0);
}

TEST_MAIN(test_iso8601_forms, test_iso8601_rejects, test_protocol_fields, test_ymd, test_format,
          test_millis_round_trip, test_http_dates)
