/*
 * S3Client — the C core of the s3 module: an S3 client (AWS S3 and S3-compatible stores) with
 * SigV4 signing and the AWS credential chain (the aws module, modules/aws), retries with jittered
 * exponential backoff, and structured errors naming s3://bucket/key with a hint.
 *
 * The client is reference-counted and thread-safe: stages (the streaming multipart upload sink
 * and the parallel ranged download source) keep a reference and run requests from their worker
 * threads, each with its own connection (RtHttp).
 *
 *     S3Client *c = s3_client_new(&(S3ClientOptions){.region = NULL}, &err); // env + chain
 *     RtSink *up = s3_upload_sink(c, &(S3UploadOptions){.bucket = "b", .key = "k"}, &err);
 *     ... rt_pipe_set_sink(p, up, "upload") ...
 *     s3_client_unref(c);
 *
 * Cores never raise; every function returns RT_OK / RT_ERR with an RtError.
 */
#ifndef S3_S3_H
#define S3_S3_H

#include "runtime/http.h"
#include "runtime/io/stage.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct S3Client S3Client;

/* Headers of objects written by put/upload/copy. NULL fields are not sent. */
typedef struct S3WriteOptions {
    const char *sse;           /* "AES256" or "aws:kms" */
    const char *kms_key_id;    /* with aws:kms */
    const char *storage_class; /* STANDARD, STANDARD_IA, GLACIER_IR, ... */
    const char *content_type;
    const char *const *metadata; /* name, value, name, value, ..., NULL (x-amz-meta-<name>) */
} S3WriteOptions;

typedef struct S3ClientOptions {
    const char *region;   /* default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, us-east-1 */
    const char *endpoint; /* default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS's */
    int path_style;       /* 1 yes, 0 no, -1 auto (path style for custom endpoints) */
    const char *profile;  /* default: AWS_PROFILE, "default" */
    int max_attempts;     /* per request / per part; default 6 */
    double retry_base;    /* first backoff in seconds; default 0.25 */
    double stall_timeout; /* seconds without progress before a transfer is retried; default 60 */
    /* Object settings applied to every object this client writes (put, upload, copy, sync)
     * unless the call gives its own: sse, kms_key_id, storage_class (other fields ignored).
     * A call's "" means "not this one" (e.g. storage_class = "" sends no storage class). */
    S3WriteOptions defaults;
} S3ClientOptions;

S3Client *s3_client_new(const S3ClientOptions *opts, RtError *err);
S3Client *s3_client_ref(S3Client *c);
void s3_client_unref(S3Client *c); /* NULL-safe */
const char *s3_client_region(const S3Client *c);
const char *s3_client_endpoint(const S3Client *c);
/* Where the credentials came from: "environment", "shared-credentials-file", "config-file",
 * "web-identity", "container", "imds". */
const char *s3_client_credentials_source(S3Client *c);

/* The client's object settings (its defaults; fields may be NULL). */
const S3WriteOptions *s3_client_defaults(const S3Client *c);

typedef struct S3Head {
    int64_t size;
    char *etag; /* with its quotes removed */
    double last_modified;
    char *content_type;
    char *storage_class; /* NULL means STANDARD */
    char *sse;
    char *kms_key_id;
    char **metadata; /* name, value, ..., NULL (names without x-amz-meta-) */
} S3Head;
void s3_head_free(S3Head *h);

typedef struct S3Object {
    char *key;
    int64_t size;
    char *etag;
    double last_modified;
    char *last_modified_iso;
    char *storage_class;
} S3Object;

typedef struct S3ListPage {
    S3Object *items;
    size_t n;
    char **prefixes; /* common prefixes when a delimiter was given */
    size_t n_prefixes;
    bool truncated;
    char *next_token;
} S3ListPage;
void s3_list_page_free(S3ListPage *p);

/* Small objects from memory (single PUT, up to 5 GiB). etag_out may be NULL. */
int s3_put(S3Client *c, const char *bucket, const char *key, const void *data, size_t len,
           const S3WriteOptions *w, char **etag_out, RtError *err);
/* *found is false (and RT_OK) when the object does not exist. */
int s3_head(S3Client *c, const char *bucket, const char *key, S3Head *out, bool *found,
            RtError *err);
/* Whole small object into memory (fails beyond max bytes). */
int s3_get(S3Client *c, const char *bucket, const char *key, size_t max, uint8_t **data,
           size_t *len, RtError *err);
/* One ListObjectsV2 page. token/delimiter/start_after may be NULL; max_keys 0 = server default. */
int s3_list_page(S3Client *c, const char *bucket, const char *prefix, const char *delimiter,
                 const char *token, int max_keys, S3ListPage *out, RtError *err);
int s3_delete(S3Client *c, const char *bucket, const char *key, RtError *err);
/* DeleteObjects in batches of 1000; any per-key failure is an error naming that key. */
int s3_delete_many(S3Client *c, const char *bucket, const char *const *keys, size_t n,
                   size_t *deleted, RtError *err);

/* In-progress multipart uploads (ListMultipartUploads), one page. */
typedef struct S3Upload {
    char *key;
    char *upload_id;
    double initiated; /* epoch seconds */
    char *initiated_iso;
    char *storage_class;
} S3Upload;
typedef struct S3UploadsPage {
    S3Upload *items;
    size_t n;
    bool truncated;
    char *next_key_marker, *next_upload_id_marker;
} S3UploadsPage;
void s3_uploads_page_free(S3UploadsPage *p);
/* One page of the uploads under prefix, from (key_marker, upload_id_marker) on (NULL: from the
 * start); max_uploads 0 = server default (1000). */
int s3_list_uploads_page(S3Client *c, const char *bucket, const char *prefix,
                         const char *key_marker, const char *upload_id_marker, int max_uploads,
                         S3UploadsPage *out, RtError *err);
/* AbortMultipartUpload; an upload that is already gone (NoSuchUpload) is *gone = true, RT_OK. */
int s3_abort_upload(S3Client *c, const char *bucket, const char *key, const char *upload_id,
                    bool *gone, RtError *err);

typedef struct S3CopyOptions {
    S3WriteOptions write;
    bool replace_metadata;       /* use write.metadata/content_type instead of the source's */
    int64_t multipart_threshold; /* default 5 GiB (the single-copy limit) */
    int64_t part_size;           /* default 512 MiB */
} S3CopyOptions;
typedef struct S3CopyResult {
    int64_t size;
    int parts; /* 0 for a single CopyObject */
    char *etag;
} S3CopyResult;
int s3_copy(S3Client *c, const char *src_bucket, const char *src_key, const char *dst_bucket,
            const char *dst_key, const S3CopyOptions *o, S3CopyResult *res, RtError *err);

typedef struct S3SyncOptions {
    const char *src_bucket, *src_prefix, *dst_bucket, *dst_prefix;
    S3WriteOptions write;
    bool dry_run;
} S3SyncOptions;
typedef struct S3SyncSummary {
    int64_t scanned, copied, skipped, bytes;
    char **planned; /* destination keys copied (or that would be, with dry_run); NULL-terminated */
    size_t n_planned;
} S3SyncSummary;
int s3_sync(S3Client *c, const S3SyncOptions *o, S3SyncSummary *sum, RtError *err);
void s3_sync_summary_free(S3SyncSummary *s);

typedef struct S3UploadOptions {
    const char *bucket, *key;
    S3WriteOptions write;
    size_t part_size; /* first part size; default 8 MiB; minimum 5 MiB; grows every 1000 parts */
    int concurrency;  /* parts in flight; default 4 */
} S3UploadOptions;
/* A sink that streams to s3://bucket/key: a single PUT when the stream fits in one part, else
 * a multipart upload with parallel parts; abort (or any failure) aborts the multipart upload. */
RtSink *s3_upload_sink(S3Client *c, const S3UploadOptions *o, RtError *err);

typedef struct S3DownloadOptions {
    const char *bucket, *key;
    size_t part_size; /* range size; default 8 MiB */
    int concurrency;  /* ranges in flight; default 4 */
} S3DownloadOptions;
/* A source reading s3://bucket/key with parallel ranged GETs delivered in order. The object is
 * HEADed first (size hint; missing object = error) and every range is pinned to its ETag. */
RtSource *s3_download_source(S3Client *c, const S3DownloadOptions *o, RtError *err);

/* Part size for part number n (1-based) when the first parts are `base` bytes: doubles every
 * 1000 parts so that 10,000 parts reach more than 5 TB from a 5 MiB start; capped at 5 GiB. */
size_t s3_part_size_for(size_t base, int part_number);

#endif
