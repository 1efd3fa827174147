/*
 * SigV4 known-answer tests (AWS's published examples) and the s3 XML extractor.
 *
 * Vectors: the S3 "Authenticating Requests (AWS Signature Version 4)" examples (GET object with
 * Range, PUT object, GET ?lifecycle, GET list objects) signed with AKIAIOSFODNN7EXAMPLE, and
 * cases from the aws-sig-v4-test-suite (get-vanilla, get-vanilla-query-order-key-case,
 * get-vanilla-empty-query-key, get-utf8) signed with AKIDEXAMPLE.
 */
#include "harness.h"

#include "modules/s3/s3.h"
#include "modules/aws/aws_xml.h"
#include "modules/aws/sigv4.h"

#include <stdlib.h>

static const SigV4Credentials S3EX = {"AKIAIOSFODNN7EXAMPLE",
                                      "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", NULL};
static const SigV4Credentials SUITE = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                       NULL};

static void sign(const SigV4Request *rq, const SigV4Credentials *c, const char *want)
{
    SigV4Result r;
    CHECK(sigv4_sign(rq, c, &r) == 0);
    CHECK_EQ_STR(r.signature, want);
    sigv4_result_free(&r);
}

static void test_s3_get_object(void)
{
    SigV4Param h[] = {{"Host", "examplebucket.s3.amazonaws.com"},
                      {"Range", "bytes=0-9"},
                      {"x-amz-content-sha256", SIGV4_EMPTY_SHA256},
                      {"x-amz-date", "20130524T000000Z"}};
    SigV4Request rq = {.method = "GET",
                       .path = "/test.txt",
                       .headers = h,
                       .n_headers = 4,
                       .payload_hash = SIGV4_EMPTY_SHA256,
                       .region = "us-east-1",
                       .service = "s3",
                       .amz_date = "20130524T000000Z"};
    SigV4Result r;
    CHECK(sigv4_sign(&rq, &S3EX, &r) == 0);
    CHECK_EQ_STR(r.canonical_request,
                 "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
                 "x-amz-content-sha256:" SIGV4_EMPTY_SHA256 "\nx-amz-date:20130524T000000Z\n\n"
                 "host;range;x-amz-content-sha256;x-amz-date\n" SIGV4_EMPTY_SHA256);
    CHECK_EQ_STR(r.string_to_sign,
                 "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
                 "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
    CHECK_EQ_STR(r.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK_EQ_STR(
        r.authorization,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    sigv4_result_free(&r);
}

static void test_s3_put_object(void)
{
    char body_hash[65];
    sigv4_sha256_hex("Welcome to Amazon S3.", 21, body_hash);
    CHECK_EQ_STR(body_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    SigV4Param h[] = {{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                      {"Host", "examplebucket.s3.amazonaws.com"},
                      {"x-amz-content-sha256", body_hash},
                      {"x-amz-date", "20130524T000000Z"},
                      {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
    SigV4Request rq = {.method = "PUT",
                       .path = "/test$file.text",
                       .headers = h,
                       .n_headers = 5,
                       .payload_hash = body_hash,
                       .region = "us-east-1",
                       .service = "s3",
                       .amz_date = "20130524T000000Z"};
    SigV4Result r;
    CHECK(sigv4_sign(&rq, &S3EX, &r) == 0);
    CHECK_EQ_STR(r.encoded_path, "/test%24file.text");
    CHECK_EQ_STR(r.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
    sigv4_result_free(&r);
}

static void test_s3_lifecycle_and_list(void)
{
    SigV4Param h[] = {{"host", "examplebucket.s3.amazonaws.com"},
                      {"x-amz-content-sha256", SIGV4_EMPTY_SHA256},
                      {"x-amz-date", "20130524T000000Z"}};
    SigV4Param q1[] = {{"lifecycle", NULL}};
    SigV4Request rq = {.method = "GET",
                       .path = "/",
                       .query = q1,
                       .n_query = 1,
                       .headers = h,
                       .n_headers = 3,
                       .payload_hash = SIGV4_EMPTY_SHA256,
                       .region = "us-east-1",
                       .service = "s3",
                       .amz_date = "20130524T000000Z"};
    sign(&rq, &S3EX, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
    SigV4Param q2[] = {{"prefix", "J"}, {"max-keys", "2"}}; /* out of order on purpose */
    rq.query = q2;
    rq.n_query = 2;
    SigV4Result r;
    CHECK(sigv4_sign(&rq, &S3EX, &r) == 0);
    CHECK_EQ_STR(r.canonical_query, "max-keys=2&prefix=J");
    CHECK_EQ_STR(r.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    sigv4_result_free(&r);
}

static void test_suite_get_vanilla(void)
{
    SigV4Param h[] = {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}};
    SigV4Request rq = {.method = "GET",
                       .path = "/",
                       .headers = h,
                       .n_headers = 2,
                       .payload_hash = SIGV4_EMPTY_SHA256,
                       .region = "us-east-1",
                       .service = "service",
                       .amz_date = "20150830T123600Z"};
    sign(&rq, &SUITE, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    SigV4Param q[] = {{"Param2", "value2"}, {"Param1", "value1"}};
    rq.query = q;
    rq.n_query = 2;
    sign(&rq, &SUITE, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
    rq.n_query = 0;
    SigV4Param q1[] = {{"Param1", "value1"}};
    rq.query = q1;
    rq.n_query = 1;
    sign(&rq, &SUITE, "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb");
}

static void test_suite_get_utf8(void)
{
    SigV4Param h[] = {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}};
    SigV4Request rq = {.method = "GET",
                       .path = "/\xe1\x88\xb4",
                       .headers = h,
                       .n_headers = 2,
                       .payload_hash = SIGV4_EMPTY_SHA256,
                       .region = "us-east-1",
                       .service = "service",
                       .amz_date = "20150830T123600Z"};
    SigV4Result r;
    CHECK(sigv4_sign(&rq, &SUITE, &r) == 0);
    CHECK_EQ_STR(r.encoded_path, "/%E1%88%B4");
    CHECK_EQ_STR(r.signature, "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85");
    sigv4_result_free(&r);
}

static void test_key_encoding_and_token(void)
{
    /* S3 keys: spaces, unicode, + = & and // survive as single-encoded, '/' kept. */
    char *e = sigv4_uri_encode("a b/+=&//\xc3\xa9~", 12, true);
    CHECK_EQ_STR(e, "a%20b/%2B%3D%26//%C3%A9~");
    free(e);
    e = sigv4_uri_encode("a/b", 3, false);
    CHECK_EQ_STR(e, "a%2Fb");
    free(e);
    SigV4Param h[] = {{"host", "h"},
                      {"x-amz-date", "20150830T123600Z"},
                      {"x-amz-security-token", "TOKEN"},
                      {"X-Custom", "  a   b  c "}};
    SigV4Credentials c = {"AK", "SK", "TOKEN"};
    SigV4Request rq = {.method = "GET",
                       .path = "/b/k",
                       .headers = h,
                       .n_headers = 4,
                       .payload_hash = SIGV4_UNSIGNED,
                       .region = "eu-west-1",
                       .service = "s3",
                       .amz_date = "20150830T123600Z"};
    SigV4Result r;
    CHECK(sigv4_sign(&rq, &c, &r) == 0);
    CHECK_EQ_STR(r.signed_headers, "host;x-amz-date;x-amz-security-token;x-custom");
    CHECK(strstr(r.canonical_request, "\nx-custom:a b c\n") != NULL);
    CHECK(strstr(r.canonical_request, "\nUNSIGNED-PAYLOAD") != NULL);
    sigv4_result_free(&r);
    rq.double_encode = true;
    rq.path = "/a b";
    CHECK(sigv4_sign(&rq, &c, &r) == 0);
    CHECK(strncmp(r.canonical_request, "GET\n/a%2520b\n", 13) == 0);
    CHECK_EQ_STR(r.encoded_path, "/a%20b");
    sigv4_result_free(&r);
    rq.amz_date = "bad";
    CHECK(sigv4_sign(&rq, &c, &r) == -1);
}

static void test_xml(void)
{
    const char *doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult "
                      "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                      "<Name>b</Name><Prefix/><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>"
                      "<Contents><Key>a &amp; b &lt;c&gt; &quot;q&quot; &apos;s&apos; "
                      "&#233;&#x1F600;</Key><Size>12</Size>"
                      "<ETag>&quot;abc&quot;</ETag><LastModified>2026-11-24T02:13:18.000Z</"
                      "LastModified></Contents>"
                      "<Contents><Key><![CDATA[x</Key>y]]></Key><Size>0</Size></Contents>"
                      "<NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>";
    const char *cur = doc, *end = doc + strlen(doc);
    AwsXmlSpan sp;
    CHECK(aws_xml_next(&cur, end, "Contents", &sp));
    char *k = aws_xml_get(sp, "Key");
    CHECK_EQ_STR(k, "a & b <c> \"q\" 's' \xc3\xa9\xf0\x9f\x98\x80");
    free(k);
    char *et = aws_xml_get(sp, "ETag");
    CHECK_EQ_STR(et, "\"abc\"");
    free(et);
    CHECK(aws_xml_next(&cur, end, "Contents", &sp));
    k = aws_xml_get(sp, "Key");
    CHECK_EQ_STR(k, "x</Key>y");
    free(k);
    CHECK(!aws_xml_next(&cur, end, "Contents", &sp));
    AwsXmlSpan all = {doc, strlen(doc)};
    char *t = aws_xml_get(all, "NextContinuationToken");
    CHECK_EQ_STR(t, "tok+/=");
    free(t);
    char *p = aws_xml_get(all, "Prefix");
    CHECK_EQ_STR(p, "");
    free(p);
    CHECK(aws_xml_get(all, "Missing") == NULL);
    char *first = aws_xml_get(all, "Key"); /* the first Key anywhere */
    CHECK(first != NULL);
    free(first);
    /* KeyCount must not match a search for Key's prefix. */
    const char *d2 = "<KeyCount>3</KeyCount><Key>k</Key>";
    AwsXmlSpan s2 = {d2, strlen(d2)};
    char *k2 = aws_xml_get(s2, "Key");
    CHECK_EQ_STR(k2, "k");
    free(k2);
    CHECK(aws_xml_decode("bad &bogus; entity", 18) == NULL);
    CHECK(aws_xml_decode("&#0;", 4) == NULL);
    /* Errors and truncated documents. */
    const char *e =
        "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
    AwsXmlSpan es = {e, strlen(e)};
    char *code = aws_xml_get(es, "Code");
    CHECK_EQ_STR(code, "NoSuchKey");
    free(code);
    const char *tr = "<Error><Code>NoSuch";
    AwsXmlSpan ts = {tr, strlen(tr)};
    CHECK(aws_xml_get(ts, "Code") == NULL);
    SBuf b = {0};
    aws_xml_escape(&b, "a&<>\"'b");
    CHECK_EQ_STR(sb_str(&b), "a&amp;&lt;&gt;&quot;&apos;b");
    sb_free(&b);
}

static void test_part_sizes(void)
{
    size_t base = 5u << 20;
    CHECK_EQ_INT(s3_part_size_for(base, 1), base);
    CHECK_EQ_INT(s3_part_size_for(base, 1000), base);
    CHECK_EQ_INT(s3_part_size_for(base, 1001), 2 * base);
    double total = 0;
    for (int i = 1; i <= 10000; i++) {
        size_t s = s3_part_size_for(base, i);
        CHECK(s <= (5ULL << 30));
        total += (double)s;
    }
    CHECK(total >= 5e12);
}

TEST_MAIN(test_s3_get_object, test_s3_put_object, test_s3_lifecycle_and_list,
          test_suite_get_vanilla, test_suite_get_utf8, test_key_encoding_and_token, test_xml,
          test_part_sizes)
