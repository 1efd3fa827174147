/*
 * Internals shared by the s3 core files: the signed request with retries, and the error
 * mapping (the credential provider and the signer are the aws module's, modules/aws). Not
 * part of the module's API.
 */
#ifndef S3_INTERNAL_H
#define S3_INTERNAL_H

#include "modules/aws/aws.h"
#include "modules/aws/sigv4.h"
#include "runtime/retry.h"
#include "runtime/sbuf.h"
#include "s3.h"

#include <pthread.h>

/* ---- client and requests (s3.c) ---- */
struct S3Client {
    pthread_mutex_t mu;
    int refs;
    char *region;
    char *scheme;    /* "https" */
    char *hostport;  /* "s3.us-east-1.amazonaws.com" or "127.0.0.1:4569" */
    char *base_path; /* "" or "/prefix" of a custom endpoint */
    char *endpoint;
    bool path_style;
    bool custom_endpoint;
    RtRetry retry; /* attempts per request / per part, and the backoff between them */
    double stall_timeout;
    AwsCredsProvider *creds;
    RtHttp *http; /* for calls made from the client's owner thread (guarded by mu_http) */
    pthread_mutex_t mu_http;
    char *def_sse, *def_kms, *def_sclass; /* the object settings (owned) */
    S3WriteOptions defaults;              /* pointing at them */
};

/* A call's write options with the client's object settings filled in where the call gives none
 * ("" in the call: none at all). Strings stay owned by the call and the client. */
void s3_write_resolve(const S3Client *c, const S3WriteOptions *w, S3WriteOptions *out);

typedef struct S3Req {
    const char *op; /* "put", "get", "head", "list", ... for messages */
    const char *method;
    const char *bucket;
    const char *key; /* NULL for bucket-level requests */
    const SigV4Param *query;
    size_t n_query;
    const char *const *headers; /* extra "name: value" lines (signed) */
    const uint8_t *body;
    size_t body_len;
    RtHttpBodyFn on_body; /* streamed response body (2xx) */
    void *on_body_ud;
    void (*on_attempt)(void *ud); /* called before each attempt (reset stream state) */
    size_t max_body;
    bool ok_404;        /* a 404 is an answer, not an error (head) */
    bool error_in_200;  /* S3 may answer 200 with an <Error> body (Complete, Copy) */
    const char *object; /* what to name in errors, default s3://bucket/key */
    bool ignore_cancel; /* cleanup (AbortMultipartUpload) still runs after a cancel */
} S3Req;

/* Signs, sends and retries. RT_OK with resp->status 2xx (or 404 with ok_404). */
int s3_do(S3Client *c, RtHttp *h, const S3Req *rq, RtHttpResponse *resp, RtError *err);
/* Runs with the client's shared connection. */
int s3_do_shared(S3Client *c, const S3Req *rq, RtHttpResponse *resp, RtError *err);
RtHttp *s3_http_new(S3Client *c);
/* Appends x-amz-server-side-encryption etc. "name: value" lines to a NULL-terminated list
 * builder (strings malloc'ed into `own`). */
typedef struct S3Headers {
    char *v[64];
    size_t n;
} S3Headers;
void s3_headers_add(S3Headers *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s3_headers_write_opts(S3Headers *h, const S3WriteOptions *w, bool with_meta);
void s3_headers_free(S3Headers *h);
const char *const *s3_headers_list(S3Headers *h);
/* Content-MD5 (base64) and hex MD5 of data. */
void s3_md5(const void *data, size_t len, unsigned char md[16]);
void s3_md5_b64(const unsigned char md[16], char out[25]);
/* ETag without its quotes (malloc'ed). */
char *s3_etag_clean(const char *etag);
char *s3_object_name(const char *bucket, const char *key); /* "s3://bucket/key" malloc'ed */

#endif
