/*
 * The shared utility layer: SBuf's size cap, the JSON string escaper, the retry policy and the
 * error-code registry. Pure C, no server.
 */
#include "harness.h"
#include "io/error.h"
#include "json.h"
#include "retry.h"
#include "sbuf.h"
#include "timestamp.h"

#include <stdlib.h>
#include <time.h>

static void test_sbuf_grows_and_formats(void)
{
    SBuf b = {0};
    CHECK_EQ_STR(sb_str(&b), "");
    for (int i = 0; i < 1000; i++) sb_addf(&b, "%d,", i % 10);
    CHECK_EQ_INT(b.len, 2000);
    CHECK(!b.oom && !b.truncated);
    char *s = sb_take(&b);
    CHECK(s && s[1999] == ',' && s[2000] == 0);
    free(s);
    CHECK(b.p == NULL && b.len == 0);
}

static void test_sbuf_limit_keeps_the_prefix(void)
{
    SBuf b = {.limit = 5};
    sb_add(&b, "abc");
    CHECK(!b.truncated);
    sb_add(&b, "defgh");
    CHECK_EQ_STR(sb_str(&b), "abcde");
    CHECK(b.truncated);
    sb_addf(&b, "%0300d", 1); /* the formatted path past the stack buffer obeys the cap too */
    CHECK_EQ_INT(b.len, 5);
    sb_clear(&b);
    CHECK(!b.truncated && b.len == 0 && b.limit == 5);
    sb_addf(&b, "%0300d", 7);
    CHECK_EQ_STR(sb_str(&b), "00000");
    sb_free(&b);
    CHECK_EQ_INT(b.limit, 5);
}

static void test_json_escape(void)
{
    SBuf b = {0};
    const char in[] = "a\"b\\c\nd\te\x01"
                      "f\xc3\xa9";
    rt_json_quote(&b, in, sizeof in - 1);
    CHECK_EQ_STR(sb_str(&b), "\"a\\\"b\\\\c\\nd\\te\\u0001f\xc3\xa9\"");
    sb_clear(&b);
    rt_json_escape(&b, "x\0y", 3); /* a NUL inside a Lua string is escaped, not a terminator */
    CHECK_EQ_STR(sb_str(&b), "x\\u0000y");
    sb_free(&b);

    char *mem = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&mem, &len);
    rt_json_fquote(f, "q\"\x1f");
    rt_json_fquote(f, NULL);
    fclose(f);
    CHECK_EQ_STR(mem, "\"q\\\"\\u001f\"\"\"");
    free(mem);
}

static void test_retry_delay_is_equal_jitter(void)
{
    RtRetry r = {.max_attempts = 3, .base = 1, .max = 5};
    for (int i = 0; i < 200; i++) {
        double d1 = rt_retry_delay(&r, 1), d3 = rt_retry_delay(&r, 3), d9 = rt_retry_delay(&r, 9);
        CHECK(d1 >= 0.5 && d1 <= 1);
        CHECK(d3 >= 2 && d3 <= 4);
        CHECK(d9 >= 2.5 && d9 <= 5); /* capped at max */
    }
    CHECK(rt_retry_more(&r, 2));
    CHECK(!rt_retry_more(&r, 3));
    RtRetry unbounded = {.base = 1, .max = 1};
    CHECK(rt_retry_more(&unbounded, 1000));
}

static void test_retry_after(void)
{
    CHECK(rt_retry_after(NULL) == -1);
    CHECK(rt_retry_after("") == -1);
    CHECK(rt_retry_after("soon") == -1);
    CHECK(rt_retry_after("7") == 7);
    CHECK(rt_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0); /* in the past: no wait */
    char date[64];
    time_t t = time(NULL) + 100;
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime(&t));
    double w = rt_retry_after(date);
    CHECK(w > 90 && w <= 100);
}

static void test_clock_and_nomem_code(void)
{
    double a = rt_monotonic(), b = rt_monotonic();
    CHECK(b >= a);
    RtError e;
    rt_error_init(&e);
    rt_error_set(&e, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    CHECK_EQ_STR(e.code, "nomem");
}

TEST_MAIN(test_sbuf_grows_and_formats, test_sbuf_limit_keeps_the_prefix, test_json_escape,
          test_retry_delay_is_equal_jitter, test_retry_after, test_clock_and_nomem_code)
