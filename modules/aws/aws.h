/*
 * aws — the AWS core shared by the s3 module and the Lua `aws` module: the credential chain
 * (aws_creds.c), the SigV4 signer (sigv4.h) and one signed request to any AWS API (aws.c:
 * region, endpoint, signed headers, URL). No Lua here; the binding is aws_lua.c. The XML tag
 * extractor for AWS's answers (S3, STS) is aws_xml.h.
 *
 * Errors are RtErrors; the credential errors keep their historical codes (s3.credentials,
 * s3.no_credentials), which scripts and tests match.
 */
#ifndef AWS_H
#define AWS_H

#include "runtime/http.h"
#include "runtime/io/error.h"
#include "sigv4.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- credentials (aws_creds.c) ---- */
typedef struct AwsCreds {
    char *access_key, *secret_key, *token;
    double expires; /* epoch seconds; 0 = static */
    char source[40];
} AwsCreds;

typedef struct AwsCredsProvider AwsCredsProvider;
/* Resolves the chain now; CONFIG error when nothing provides credentials. */
AwsCredsProvider *aws_creds_new(const char *profile, const char *region, RtError *err);
void aws_creds_free(AwsCredsProvider *p);
/* Copies the current credentials, refreshing them first when they expire within 5 minutes
 * (or when force is set). Thread-safe. */
int aws_creds_get(AwsCredsProvider *p, bool force, AwsCreds *out, RtError *err);
void aws_creds_clear(AwsCreds *c); /* wipes */
const char *aws_creds_source(AwsCredsProvider *p);
/* Region from the shared config file's profile (malloc'ed or NULL). */
char *aws_config_region(const char *profile);
/* Small JSON helper for the credential endpoints: the string (or number) value of "name". */
char *aws_json_string(const char *json, const char *name);

/* ---- one signed request to an AWS API (aws.c) ---- */

/* What the caller asks for. Strings are borrowed for the life of the AwsCall. */
typedef struct AwsRequest {
    const char *service;  /* required: "ecs", "ssm", "route53", "sts" ... (lower case) */
    const char *region;   /* NULL: AWS_REGION, AWS_DEFAULT_REGION, the profile's, us-east-1 */
    const char *endpoint; /* NULL: AWS_ENDPOINT_URL_<SERVICE>, else the public endpoint */
    const char *profile;  /* NULL: the default chain */
    const char *method;   /* NULL: POST with a body, else GET */
    const char *path;     /* raw, starts with '/'; NULL: "/" */
    const SigV4Param *query;
    size_t n_query;
    const char *const *headers; /* "Name: value" lines, all signed; NULL-terminated or NULL */
    const uint8_t *body;        /* may be NULL */
    size_t body_len;
} AwsRequest;

/* A request being prepared: aws_call_resolve, then aws_call_sign, then send `http`. */
typedef struct AwsCall {
    char base[512];   /* scheme://host[:port], no trailing '/' */
    const char *host; /* inside base */
    const char *region, *sign_region, *method, *path;
    char what[160]; /* "ecs at host", for messages */
    char *region_cfg;
    AwsCredsProvider *prov;
    AwsCreds creds;
    SigV4Result sig;
    SigV4Param *hdr;
    char **names; /* copies of the user header names */
    char **lines; /* the header lines sent, NULL-terminated */
    char *url;
    RtHttpRequest http; /* method, url, headers, body: ready after aws_call_sign */
} AwsCall;

/* Checks the service, resolves region and endpoint (USAGE errors for a bad service, endpoint
 * or path). Call first, before anything slow. Reads service, region, endpoint, profile, path. */
int aws_call_resolve(AwsCall *c, const AwsRequest *rq, RtError *err);
/* Gets the credentials and signs: c->http is then ready for rt_http_do. USAGE for a header the
 * signer sets itself, CONFIG when no credentials are found. */
int aws_call_sign(AwsCall *c, const AwsRequest *rq, RtError *err);
/* Frees and wipes (credentials, signature). NULL-safe; the struct may be reused. */
void aws_call_free(AwsCall *c);

#endif
