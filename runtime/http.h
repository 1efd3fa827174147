/*
 * RtHttp — the host's small libcurl wrapper for JSON/XML APIs and S3 (owned by the s3 module's
 * work; see modules/s3/README.md). Placeholder header: the s3 issue defines it.
 */
#ifndef RT_HTTP_H
#define RT_HTTP_H
#endif
