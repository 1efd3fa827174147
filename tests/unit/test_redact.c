/*
 * Redaction of secrets in log lines and error messages, and the error record.
 */
#include "harness.h"
#include "io/error.h"
#include "redact.h"

#include <stdlib.h>

static const char *red(const char *in)
{
    static char out[1024];
    return rt_redact(in, out, sizeof out);
}

static void test_urls(void)
{
    CHECK_EQ_STR(red("connect postgresql://neondb_owner:s3cr3t@ep-x.neon.tech/neondb?sslmode=require"),
                 "connect postgresql://neondb_owner:***@ep-x.neon.tech/neondb?sslmode=require");
    CHECK_EQ_STR(red("postgres://u:p@h"), "postgres://u:***@h");
    CHECK_EQ_STR(red("postgres://u@h/db"), "postgres://u@h/db"); /* no password: unchanged */
    CHECK_EQ_STR(red("https://example.com/a:b"), "https://example.com/a:b");
    CHECK_EQ_STR(red("'postgresql://a:b@c:5432/d' and more"), "'postgresql://a:***@c:5432/d' and more");
}

static void test_names_and_tokens(void)
{
    CHECK_EQ_STR(red("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG"), "AWS_SECRET_ACCESS_KEY=***");
    CHECK_EQ_STR(red("{\"password\": \"hunter2\", \"user\": \"bob\"}"),
                 "{\"password\": \"***\", \"user\": \"bob\"}");
    CHECK_EQ_STR(red("Authorization: Bearer abc.def.ghi"), "Authorization: Bearer ***");
    CHECK_EQ_STR(red("key napi_abcdefghijklmnopqrstuvwxyz0123 used"), "key *** used");
    CHECK_EQ_STR(red("password authentication failed for user \"x\""),
                 "password authentication failed for user \"x\"");
    CHECK_EQ_STR(red("Signature=0123abcd,Other=1"), "Signature=***,Other=1");
}

static void test_registered(void)
{
    rt_redact_register("correct horse battery", 21);
    CHECK_EQ_STR(red("the passphrase correct horse battery was wrong"), "the passphrase *** was wrong");
    rt_redact_register("abc", 3); /* too short to register: would mangle ordinary text */
    CHECK_EQ_STR(red("abc"), "abc");
    rt_redact_forget_all();
    CHECK_EQ_STR(red("correct horse battery"), "correct horse battery");
}

static void test_errors_are_redacted_and_first_wins(void)
{
    RtError err;
    rt_error_init(&err);
    rt_error_set(&err, RT_CLASS_FAILURE, "db.connect", "cannot connect to %s\nline two",
                 "postgresql://u:pw@h/db");
    rt_error_set(&err, RT_CLASS_USAGE, "other", "second error");
    CHECK_EQ_STR(err.message, "cannot connect to postgresql://u:***@h/db line two");
    CHECK_EQ_STR(err.code, "db.connect");
    rt_error_hint(&err, "check %s", "the host");
    CHECK_EQ_STR(err.hint, "check the host");
    CHECK_EQ_INT(rt_error_exit_status(RT_CLASS_CANCELLED), 130);
    CHECK_EQ_INT(rt_error_exit_status(RT_CLASS_USAGE), 2);
}

static void test_long_input_truncates_safely(void)
{
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char out[64];
    rt_redact(big, out, sizeof out);
    CHECK_EQ_INT(strlen(out), 63);
    char *dup = rt_redact_dup("postgres://u:p@h");
    CHECK_EQ_STR(dup, "postgres://u:***@h");
    free(dup);
}

/* A secret shorter than RT_REDACT_WHOLE_WORD is hidden where it stands as a word, never inside
 * another word (issue 18: "check NEON_API_KEY: *** must be a valid key", "*** passphrase"). */
static void test_short_secrets_as_whole_words(void)
{
    rt_redact_register("key9", 4);
    rt_redact_register("pass", 4);
    CHECK_EQ_STR(red("key9"), "***");
    CHECK_EQ_STR(red("the key is key9."), "the key is ***.");
    CHECK_EQ_STR(red("NEON_API_KEY=key9 is set"), "NEON_API_KEY=*** is set");
    CHECK_EQ_STR(red("(key9)"), "(***)");
    CHECK_EQ_STR(red("'key9' \"key9\" key9/key9"), "'***' \"***\" ***/***");
    /* inside words: left alone, so the message stays readable */
    CHECK_EQ_STR(red("wrong passphrase"), "wrong passphrase");
    CHECK_EQ_STR(red("bypass the passage"), "bypass the passage");
    CHECK_EQ_STR(red("mykey9 key9x key9_a a_key9 2key9"), "mykey9 key9x key9_a a_key9 2key9");
    CHECK_EQ_STR(red("key9\xc3\xa9"), "key9\xc3\xa9"); /* followed by a non-ASCII letter */
    /* a short secret next to an occurrence inside a word */
    CHECK_EQ_STR(red("passport pass"), "passport ***");
    /* 8 characters and more: replaced wherever they occur, as before */
    rt_redact_register("s3cr3tXY", 8);
    CHECK_EQ_STR(red("as3cr3tXYz"), "a***z");
    /* one warning per short value, none for long ones or values never registered */
    CHECK(rt_redact_short_unwarned("key9", 4));
    CHECK(!rt_redact_short_unwarned("key9", 4));
    CHECK(!rt_redact_short_unwarned("s3cr3tXY", 8));
    CHECK(rt_redact_short_unwarned("ab", 2)); /* too short to register: always worth a warning */
    rt_redact_forget_all();
}

TEST_MAIN(test_urls, test_names_and_tokens, test_registered,
          test_errors_are_redacted_and_first_wins, test_long_input_truncates_safely,
          test_short_secrets_as_whole_words)
