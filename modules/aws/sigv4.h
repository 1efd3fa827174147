/*
 * AWS Signature Version 4 — a reusable C core for S3 and the other AWS APIs (STS, SSM, ECS,
 * Route53) that clubio-dr calls.
 *
 * The caller lists every header it will send that must be signed (at least `host` and
 * `x-amz-date`; for S3 also `x-amz-content-sha256`, and `x-amz-security-token` with temporary
 * credentials); the signer builds the canonical request (method, canonical URI, canonical query,
 * canonical headers, signed headers, payload hash), the string to sign and the signature, and
 * returns the Authorization header value plus the encoded query string to put in the URL, so the
 * URL and the signature never disagree about encoding.
 *
 * Paths and query parameters are given *raw* (not percent-encoded): "/bucket/my key+1=2".
 * Encoding follows RFC 3986 with the unreserved set A-Z a-z 0-9 - _ . ~ and UTF-8 bytes as %XX.
 * S3 takes the path encoded once, '/' kept, no "//" squashing (`double_encode` false); the other
 * services want the canonical path encoded twice (`double_encode` true).
 *
 *     SigV4Param hdr[] = {{"host", "examplebucket.s3.amazonaws.com"}, {"x-amz-date", date}, ...};
 *     SigV4Request rq = {.method = "GET", .path = "/test.txt", .headers = hdr, .n_headers = 4,
 *                        .payload_hash = SIGV4_EMPTY_SHA256, .region = "us-east-1",
 *                        .service = "s3", .amz_date = date};
 *     SigV4Result out;
 *     if (sigv4_sign(&rq, &creds, &out) == 0) add_header("Authorization", out.authorization);
 *     sigv4_result_free(&out);
 *
 * Nothing here logs; the result holds the signature, which callers must never print.
 */
#ifndef AWS_SIGV4_H
#define AWS_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SIGV4_UNSIGNED     "UNSIGNED-PAYLOAD"

typedef struct SigV4Credentials {
    const char *access_key;
    const char *secret_key;
    const char *session_token; /* may be NULL; the caller sends and signs x-amz-security-token */
} SigV4Credentials;

typedef struct SigV4Param {
    const char *name;
    const char *value; /* NULL is the same as "" (e.g. "?uploads" -> name "uploads") */
} SigV4Param;

typedef struct SigV4Request {
    const char *method;
    const char *path; /* raw, starts with '/' */
    bool double_encode;
    const SigV4Param *query;
    size_t n_query;
    const SigV4Param *headers; /* names in any case; values are trimmed, inner spaces collapsed */
    size_t n_headers;
    const char *payload_hash; /* lower-case hex SHA-256 of the body, or SIGV4_UNSIGNED */
    const char *region;
    const char *service;
    const char *amz_date; /* "YYYYMMDDTHHMMSSZ", the same value as the x-amz-date header */
} SigV4Request;

typedef struct SigV4Result {
    char *canonical_request;
    char *string_to_sign;
    char *signed_headers;
    char *canonical_query; /* also what goes after '?' in the URL ("" when none) */
    char *encoded_path;    /* the path as it goes in the URL (encoded once) */
    char *authorization;   /* the Authorization header value */
    char signature[65];
} SigV4Result;

/* Returns 0, or -1 on out-of-memory / missing fields (the result is then empty). */
int sigv4_sign(const SigV4Request *req, const SigV4Credentials *creds, SigV4Result *out);
void sigv4_result_free(SigV4Result *r); /* wipes the signature too */

/* "YYYYMMDDTHHMMSSZ" for t (UTC). */
void sigv4_amz_date(time_t t, char out[17]);
/* Lower-case hex SHA-256 of data. */
void sigv4_sha256_hex(const void *data, size_t len, char out[65]);
/* Percent-encodes s into a malloc'ed string (NULL on ENOMEM); '/' kept when keep_slash. */
char *sigv4_uri_encode(const char *s, size_t len, bool keep_slash);

#endif
