/*
 * S3Client core: endpoint and addressing, signed requests with retries, error mapping, and the
 * request/response operations (put, head, get, list, delete, delete-many, copy, sync). The
 * streaming stages live in s3_upload.c and s3_download.c.
 */
#include "modules/aws/aws_xml.h"
#include "s3_internal.h"

#include "runtime/io/cancel.h"
#include "runtime/log.h"
#include "runtime/timestamp.h"

#include <ctype.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/md5.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GiB (1024LL * 1024 * 1024)
#define MiB (1024LL * 1024)

/* ---- small helpers ---- */

void s3_md5(const void *data, size_t len, unsigned char md[16])
{
    unsigned int n = 16;
    EVP_Digest(data, len, md, &n, EVP_md5(), NULL);
}

void s3_md5_b64(const unsigned char md[16], char out[25])
{
    EVP_EncodeBlock((unsigned char *)out, md, 16);
}

char *s3_etag_clean(const char *etag)
{
    if (!etag) return NULL;
    size_t n = strlen(etag);
    if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') return strndup(etag + 1, n - 2);
    if (n >= 12 && strncmp(etag, "&quot;", 6) == 0) return strndup(etag + 6, n - 12);
    return strdup(etag);
}

char *s3_object_name(const char *bucket, const char *key)
{
    SBuf b = {0};
    sb_addf(&b, "s3://%s/%s", bucket ? bucket : "", key ? key : "");
    return sb_take(&b);
}

void s3_headers_add(S3Headers *h, const char *fmt, ...)
{
    if (h->n + 1 >= sizeof h->v / sizeof h->v[0]) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) >= 0) h->v[h->n++] = s;
    va_end(ap);
    h->v[h->n] = NULL;
}

void s3_headers_write_opts(S3Headers *h, const S3WriteOptions *w, bool with_meta)
{
    if (!w) return;
    if (w->sse) s3_headers_add(h, "x-amz-server-side-encryption: %s", w->sse);
    if (w->kms_key_id)
        s3_headers_add(h, "x-amz-server-side-encryption-aws-kms-key-id: %s", w->kms_key_id);
    if (w->storage_class) s3_headers_add(h, "x-amz-storage-class: %s", w->storage_class);
    if (with_meta && w->content_type) s3_headers_add(h, "Content-Type: %s", w->content_type);
    if (with_meta && w->metadata)
        for (const char *const *m = w->metadata; m[0] && m[1]; m += 2)
            s3_headers_add(h, "x-amz-meta-%s: %s", m[0], m[1]);
}

void s3_headers_free(S3Headers *h)
{
    for (size_t i = 0; i < h->n; i++) free(h->v[i]);
    h->n = 0;
    h->v[0] = NULL;
}

const char *const *s3_headers_list(S3Headers *h)
{
    h->v[h->n] = NULL;
    return (const char *const *)h->v;
}

size_t s3_part_size_for(size_t base, int part_number)
{
    int tier = (part_number - 1) / 1000;
    unsigned long long s = (unsigned long long)base << (tier > 20 ? 20 : tier);
    if (s > 5ULL * GiB) s = 5ULL * GiB;
    return (size_t)s;
}

/* ---- client ---- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

S3Client *s3_client_new(const S3ClientOptions *o, RtError *err)
{
    S3ClientOptions d = {.path_style = -1};
    if (!o) o = &d;
    S3Client *c = calloc(1, sizeof *c);
    if (!c) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->mu_http, NULL);
    c->refs = 1;
    const char *profile = o->profile ? o->profile : env_nonempty("AWS_PROFILE");
    char *cfg_region = NULL;
    const char *region = o->region ? o->region : env_nonempty("AWS_REGION");
    if (!region) region = env_nonempty("AWS_DEFAULT_REGION");
    if (!region) region = cfg_region = aws_config_region(profile);
    if (!region) region = "us-east-1";
    c->region = strdup(region);
    free(cfg_region);
    const char *ep = o->endpoint ? o->endpoint : env_nonempty("AWS_ENDPOINT_URL_S3");
    if (!ep) ep = env_nonempty("AWS_ENDPOINT_URL");
    SBuf e = {0};
    if (ep)
        sb_add(&e, ep);
    else
        sb_addf(&e, "https://s3.%s.amazonaws.com", c->region);
    c->custom_endpoint = ep != NULL;
    c->endpoint = sb_take(&e);
    c->retry = (RtRetry){.max_attempts = o->max_attempts > 0 ? o->max_attempts : 6,
                         .base = o->retry_base > 0 ? o->retry_base : 0.25,
                         .max = 20};
    c->stall_timeout = o->stall_timeout > 0 ? o->stall_timeout : 60;
    if (!c->region || !c->endpoint) goto oom;
    /* Split the endpoint into scheme, host[:port] and base path. */
    const char *p = strstr(c->endpoint, "://");
    if (!p || p == c->endpoint) {
        /* The endpoint comes from the environment (AWS_ENDPOINT_URL...) or a script's option:
         * a configuration problem, not a command-line one. */
        rt_error_set(err, RT_CLASS_CONFIG, "s3.endpoint", "invalid s3 endpoint '%s'", c->endpoint);
        rt_error_hint(
            err, "give a URL like https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000");
        s3_client_unref(c);
        return NULL;
    }
    c->scheme = strndup(c->endpoint, (size_t)(p - c->endpoint));
    p += 3;
    size_t hl = strcspn(p, "/?");
    c->hostport = strndup(p, hl);
    const char *bp = p + hl;
    size_t bl = strcspn(bp, "?");
    while (bl && bp[bl - 1] == '/') bl--;
    c->base_path = strndup(bp, bl);
    if (!c->scheme || !c->hostport || !c->base_path) goto oom;
    for (char *s = c->scheme; *s; s++) *s = (char)tolower((unsigned char)*s);
    if (strcmp(c->scheme, "http") && strcmp(c->scheme, "https")) {
        rt_error_set(err, RT_CLASS_CONFIG, "s3.endpoint",
                     "invalid s3 endpoint '%s': scheme must be http or https", c->endpoint);
        s3_client_unref(c);
        return NULL;
    }
    c->path_style = o->path_style >= 0 ? o->path_style != 0 : c->custom_endpoint;
    c->def_sse = o->defaults.sse && *o->defaults.sse ? strdup(o->defaults.sse) : NULL;
    c->def_kms =
        o->defaults.kms_key_id && *o->defaults.kms_key_id ? strdup(o->defaults.kms_key_id) : NULL;
    c->def_sclass = o->defaults.storage_class && *o->defaults.storage_class
                        ? strdup(o->defaults.storage_class)
                        : NULL;
    if (c->def_kms && !c->def_sse) c->def_sse = strdup("aws:kms");
    if ((o->defaults.sse && *o->defaults.sse && !c->def_sse) ||
        (o->defaults.kms_key_id && *o->defaults.kms_key_id && !c->def_kms) ||
        (o->defaults.storage_class && *o->defaults.storage_class && !c->def_sclass))
        goto oom;
    c->defaults = (S3WriteOptions){
        .sse = c->def_sse, .kms_key_id = c->def_kms, .storage_class = c->def_sclass};
    c->creds = aws_creds_new(o->profile, c->region, err);
    if (!c->creds) {
        s3_client_unref(c);
        return NULL;
    }
    c->http = s3_http_new(c);
    if (!c->http) goto oom;
    return c;
oom:
    rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    s3_client_unref(c);
    return NULL;
}

RtHttp *s3_http_new(S3Client *c)
{
    return rt_http_new(&(RtHttpOptions){.stall_timeout = c->stall_timeout});
}

S3Client *s3_client_ref(S3Client *c)
{
    pthread_mutex_lock(&c->mu);
    c->refs++;
    pthread_mutex_unlock(&c->mu);
    return c;
}

void s3_client_unref(S3Client *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left > 0) return;
    aws_creds_free(c->creds);
    rt_http_free(c->http);
    free(c->region);
    free(c->scheme);
    free(c->hostport);
    free(c->base_path);
    free(c->endpoint);
    free(c->def_sse);
    free(c->def_kms);
    free(c->def_sclass);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->mu_http);
    free(c);
}

const char *s3_client_region(const S3Client *c)
{
    return c->region;
}
const char *s3_client_endpoint(const S3Client *c)
{
    return c->endpoint;
}
const char *s3_client_credentials_source(S3Client *c)
{
    return aws_creds_source(c->creds);
}

const S3WriteOptions *s3_client_defaults(const S3Client *c)
{
    return &c->defaults;
}

static const char *none_if_empty(const char *s)
{
    return s && *s ? s : NULL;
}

void s3_write_resolve(const S3Client *c, const S3WriteOptions *w, S3WriteOptions *out)
{
    static const S3WriteOptions none = {0};
    if (!w) w = &none;
    *out = *w;
    out->sse = none_if_empty(w->sse ? w->sse : c->defaults.sse);
    /* The default key goes with aws:kms only: a call asking for AES256 gets no key id. */
    const char *kms = w->kms_key_id;
    if (!kms && out->sse && strcmp(out->sse, "aws:kms") == 0) kms = c->defaults.kms_key_id;
    out->kms_key_id = none_if_empty(kms);
    out->storage_class =
        none_if_empty(w->storage_class ? w->storage_class : c->defaults.storage_class);
}

/* ---- requests ---- */

typedef struct ErrInfo {
    const char *code_rt;
    const char *what;
    RtErrorClass klass;
    bool retry;
} ErrInfo;

static ErrInfo classify(const char *code, long status)
{
    static const struct {
        const char *s3;
        ErrInfo i;
    } map[] = {
        {"NoSuchKey", {"s3.no_such_key", "no such key", RT_CLASS_FAILURE, false}},
        {"NoSuchBucket", {"s3.no_such_bucket", "no such bucket", RT_CLASS_CONFIG, false}},
        {"AccessDenied", {"s3.access_denied", "access denied", RT_CLASS_CONFIG, false}},
        {"AllAccessDisabled", {"s3.access_denied", "access disabled", RT_CLASS_CONFIG, false}},
        {"InvalidAccessKeyId",
         {"s3.invalid_access_key", "unknown access key id", RT_CLASS_CONFIG, false}},
        {"SignatureDoesNotMatch",
         {"s3.signature_mismatch", "signature does not match", RT_CLASS_CONFIG, false}},
        {"RequestTimeTooSkewed",
         {"s3.clock_skew", "request time too skewed", RT_CLASS_CONFIG, false}},
        {"ExpiredToken", {"s3.expired_token", "credentials expired", RT_CLASS_CONFIG, true}},
        {"InvalidToken", {"s3.invalid_token", "invalid session token", RT_CLASS_CONFIG, false}},
        {"NoSuchUpload",
         {"s3.no_such_upload", "no such multipart upload", RT_CLASS_FAILURE, false}},
        {"InvalidPart", {"s3.invalid_part", "invalid part", RT_CLASS_FAILURE, false}},
        {"InvalidPartOrder", {"s3.invalid_part", "invalid part order", RT_CLASS_FAILURE, false}},
        {"EntityTooSmall", {"s3.entity_too_small", "part too small", RT_CLASS_FAILURE, false}},
        {"EntityTooLarge", {"s3.entity_too_large", "object too large", RT_CLASS_FAILURE, false}},
        {"BadDigest", {"s3.bad_digest", "content md5 mismatch", RT_CLASS_FAILURE, true}},
        {"InvalidDigest", {"s3.bad_digest", "invalid content md5", RT_CLASS_FAILURE, true}},
        {"IncompleteBody", {"s3.incomplete_body", "incomplete body", RT_CLASS_FAILURE, true}},
        {"PreconditionFailed",
         {"s3.changed", "the object changed while it was read", RT_CLASS_FAILURE, false}},
        {"InvalidRange", {"s3.invalid_range", "invalid range", RT_CLASS_FAILURE, false}},
        /* The store's answers are never "usage" (exit 2, a mistake on the command line): a
         * name or class the store refuses comes from the configuration, the rest is a failed
         * request. */
        {"InvalidBucketName", {"s3.invalid_bucket", "invalid bucket name", RT_CLASS_CONFIG, false}},
        {"KeyTooLongError", {"s3.key_too_long", "key too long", RT_CLASS_FAILURE, false}},
        {"InvalidStorageClass",
         {"s3.invalid_storage_class", "invalid storage class", RT_CLASS_CONFIG, false}},
        {"InvalidEncryptionAlgorithmError",
         {"s3.invalid_sse", "invalid server-side encryption", RT_CLASS_CONFIG, false}},
        {"KMS.DisabledException", {"s3.kms", "kms key disabled", RT_CLASS_CONFIG, false}},
        {"KMS.KMSInvalidStateException", {"s3.kms", "kms key not usable", RT_CLASS_CONFIG, false}},
        {"InvalidArgument", {"s3.invalid_argument", "invalid argument", RT_CLASS_FAILURE, false}},
        {"InvalidRequest", {"s3.invalid_request", "invalid request", RT_CLASS_FAILURE, false}},
        {"MalformedXML", {"s3.malformed_xml", "malformed xml", RT_CLASS_FAILURE, false}},
        {"NotImplemented",
         {"s3.not_implemented", "not implemented by this store", RT_CLASS_FAILURE, false}},
        {"MethodNotAllowed",
         {"s3.not_implemented", "method not allowed by this store", RT_CLASS_FAILURE, false}},
        {"KMS.NotFoundException", {"s3.kms", "kms key not found", RT_CLASS_CONFIG, false}},
        {"SlowDown", {"s3.slow_down", "slow down", RT_CLASS_FAILURE, true}},
        {"RequestTimeout", {"s3.timeout", "request timeout", RT_CLASS_FAILURE, true}},
        {"InternalError", {"s3.internal", "internal error", RT_CLASS_FAILURE, true}},
        {"ServiceUnavailable", {"s3.unavailable", "service unavailable", RT_CLASS_FAILURE, true}},
        {"OperationAborted", {"s3.conflict", "conflicting operation", RT_CLASS_FAILURE, true}},
    };
    if (code)
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcmp(code, map[i].s3) == 0) return map[i].i;
    if (status == 404 && !code)
        return (ErrInfo){"s3.not_found", "not found", RT_CLASS_FAILURE, false};
    if (status == 403 && !code)
        return (ErrInfo){"s3.access_denied", "access denied", RT_CLASS_CONFIG, false};
    if (status == 500 || status == 502 || status == 503 || status == 504 || status == 429)
        return (ErrInfo){"s3.unavailable", "server error", RT_CLASS_FAILURE, true};
    return (ErrInfo){"s3.error", "request failed", RT_CLASS_FAILURE, status >= 500};
}

static void set_s3_error(S3Client *c, const S3Req *rq, const char *obj, long status,
                         const char *code, const char *msg, double offset, RtError *err)
{
    ErrInfo i = classify(code, status);
    rt_error_set(err, i.klass, i.code_rt, "s3 %s %s: %s (http %ld%s%s%s%s)", rq->op, obj, i.what,
                 status, code ? " " : "", code ? code : "", msg && *msg ? ": " : "",
                 msg && *msg ? msg : "");
    err->retryable = i.retry;
    const char *src = aws_creds_source(c->creds);
    if (strcmp(i.code_rt, "s3.no_such_key") == 0 || strcmp(i.code_rt, "s3.not_found") == 0)
        rt_error_hint(err,
                      "check the key; list what exists with c:list{bucket = \"%s\", prefix = ...}",
                      rq->bucket);
    else if (strcmp(i.code_rt, "s3.no_such_bucket") == 0)
        rt_error_hint(err, "check the bucket name '%s', the endpoint %s and the region %s",
                      rq->bucket, c->endpoint, c->region);
    else if (strcmp(i.code_rt, "s3.access_denied") == 0)
        rt_error_hint(
            err,
            "the credentials from %s are not allowed to %s %s; check the IAM policy, the bucket "
            "policy and any KMS key policy",
            src, rq->op, obj);
    else if (strcmp(i.code_rt, "s3.invalid_access_key") == 0)
        rt_error_hint(
            err, "the access key id from %s is unknown to %s; check the account and the endpoint",
            src, c->endpoint);
    else if (strcmp(i.code_rt, "s3.signature_mismatch") == 0)
        rt_error_hint(
            err,
            "the secret key from %s does not match its access key id (stray whitespace? wrong "
            "pair?), or a proxy rewrote the request",
            src);
    else if (strcmp(i.code_rt, "s3.clock_skew") == 0)
        rt_error_hint(
            err, "this machine's clock is %+.0f s off the server's; fix time sync (chrony/ntpd)",
            -offset);
    else if (strcmp(i.code_rt, "s3.expired_token") == 0)
        rt_error_hint(err, "the temporary credentials from %s expired and could not be refreshed",
                      src);
    else if (i.retry)
        rt_error_hint(err, "the store kept failing after %d attempts; retry later",
                      c->retry.max_attempts);
}

/* Builds the URL path and host for bucket/key under the addressing style. */
static void address(S3Client *c, const char *bucket, const char *key, SBuf *host, SBuf *path)
{
    bool vhost = !c->path_style && bucket && !strchr(bucket, '.');
    if (vhost) {
        sb_addf(host, "%s.%s", bucket, c->hostport);
        sb_add(path, c->base_path);
        sb_addc(path, '/');
        if (key) sb_add(path, key);
    } else {
        sb_add(host, c->hostport);
        sb_add(path, c->base_path);
        if (bucket) {
            sb_addc(path, '/');
            sb_add(path, bucket);
        }
        if (key) {
            sb_addc(path, '/');
            sb_add(path, key);
        } else if (!bucket)
            sb_addc(path, '/');
    }
}

static int do_once(S3Client *c, RtHttp *h, const S3Req *rq, const AwsCreds *cr,
                   RtHttpResponse *resp, RtError *err)
{
    char payload[65], amz_date[17];
    if (rq->body_len)
        sigv4_sha256_hex(rq->body, rq->body_len, payload);
    else
        strcpy(payload, SIGV4_EMPTY_SHA256);
    sigv4_amz_date(time(NULL), amz_date);
    SBuf host = {0}, path = {0}, url = {0};
    address(c, rq->bucket, rq->key, &host, &path);
    SigV4Param hv[72];
    size_t nh = 0;
    hv[nh++] = (SigV4Param){"host", host.p};
    hv[nh++] = (SigV4Param){"x-amz-date", amz_date};
    hv[nh++] = (SigV4Param){"x-amz-content-sha256", payload};
    if (cr->token) hv[nh++] = (SigV4Param){"x-amz-security-token", cr->token};
    /* Extra headers "Name: value" are split in a scratch copy. */
    char *scratch[64];
    size_t ns = 0;
    if (rq->headers)
        for (const char *const *p = rq->headers; *p && ns < 64 && nh < 70; p++) {
            char *s = strdup(*p);
            if (!s) continue;
            scratch[ns++] = s;
            char *colon = strchr(s, ':');
            if (!colon) continue;
            *colon = 0;
            char *v = colon + 1;
            while (*v == ' ') v++;
            hv[nh++] = (SigV4Param){s, v};
        }
    SigV4Request sr = {.method = rq->method,
                       .path = path.p ? path.p : "/",
                       .query = rq->query,
                       .n_query = rq->n_query,
                       .headers = hv,
                       .n_headers = nh,
                       .payload_hash = payload,
                       .region = c->region,
                       .service = "s3",
                       .amz_date = amz_date};
    SigV4Credentials sc = {cr->access_key, cr->secret_key, cr->token};
    SigV4Result sig;
    int rc;
    if (host.oom || path.oom || sigv4_sign(&sr, &sc, &sig) != 0) {
        rc = rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory signing a request");
        goto out;
    }
    sb_addf(&url, "%s://%s%s%s%s", c->scheme, host.p, sig.encoded_path,
            sig.canonical_query[0] ? "?" : "", sig.canonical_query);
    S3Headers lines = {0};
    s3_headers_add(&lines, "Host: %s", host.p);
    s3_headers_add(&lines, "x-amz-date: %s", amz_date);
    s3_headers_add(&lines, "x-amz-content-sha256: %s", payload);
    if (cr->token) s3_headers_add(&lines, "x-amz-security-token: %s", cr->token);
    if (rq->headers)
        for (const char *const *p = rq->headers; *p; p++) s3_headers_add(&lines, "%s", *p);
    s3_headers_add(&lines, "Authorization: %s", sig.authorization);
    RtHttpRequest hr = {.method = rq->method,
                        .url = url.p,
                        .headers = s3_headers_list(&lines),
                        .body = rq->body,
                        .body_len = rq->body_len,
                        .max_body = rq->max_body ? rq->max_body : (1 << 20),
                        .on_body = rq->on_body,
                        .on_body_ud = rq->on_body_ud,
                        .ignore_cancel = rq->ignore_cancel};
    char *obj = rq->object ? NULL : s3_object_name(rq->bucket, rq->key);
    rc = url.oom ? rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory")
                 : rt_http_do(h, &hr, resp, rq->object ? rq->object : obj, err);
    free(obj);
    /* Wipe the Authorization and token lines. */
    for (size_t i = 0; i < lines.n; i++) {
        if (strncmp(lines.v[i], "Authorization", 13) == 0 ||
            strncmp(lines.v[i], "x-amz-security-token", 20) == 0)
            memset(lines.v[i], 0, strlen(lines.v[i]));
    }
    s3_headers_free(&lines);
    sigv4_result_free(&sig);
out:
    for (size_t i = 0; i < ns; i++) free(scratch[i]);
    sb_free(&host);
    sb_free(&path);
    sb_free(&url);
    return rc;
}

int s3_do(S3Client *c, RtHttp *h, const S3Req *rq, RtHttpResponse *resp, RtError *err)
{
    char *obj = rq->object                ? strdup(rq->object)
                : (rq->key || rq->bucket) ? s3_object_name(rq->bucket, rq->key)
                                          : strdup("s3");
    if (!obj) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    bool force_creds = false;
    int rc = RT_ERR;
    for (int attempt = 1;; attempt++) {
        if (rt_cancelled() && !rq->ignore_cancel) {
            rc = rt_cancel_error(err);
            break;
        }
        AwsCreds cr;
        if (aws_creds_get(c->creds, force_creds, &cr, err) != RT_OK) break;
        force_creds = false;
        if (rq->on_attempt) rq->on_attempt(rq->on_body_ud);
        RtError e;
        rt_error_init(&e);
        rc = do_once(c, h, rq, &cr, resp, &e);
        aws_creds_clear(&cr);
        bool retry = false;
        if (rc != RT_OK) {
            if (e.klass == RT_CLASS_CANCELLED || e.klass == RT_CLASS_TIMEOUT || !e.retryable) {
                rt_error_copy(err, &e);
                break;
            }
            retry = true;
        } else {
            bool is_err = resp->status >= 300 && !(rq->ok_404 && resp->status == 404);
            char *code = NULL, *msg = NULL;
            if (!is_err && rq->error_in_200 && resp->body &&
                strstr((const char *)resp->body, "<Error>")) {
                is_err = true;
                resp->status = 500; /* an error inside a 200: treat like a server error */
            }
            if (!is_err) break;
            if (resp->body && resp->body_len) {
                AwsXmlSpan all = {(const char *)resp->body, resp->body_len};
                const char *cur = all.p;
                AwsXmlSpan errs;
                if (aws_xml_next(&cur, all.p + all.len, "Error", &errs)) {
                    code = aws_xml_get(errs, "Code");
                    msg = aws_xml_get(errs, "Message");
                }
            }
            ErrInfo ei = classify(code, resp->status);
            double offset = resp->server_date > 0 ? resp->server_date - rt_now() : 0;
            if (code && strcmp(code, "ExpiredToken") == 0) force_creds = true;
            rc = RT_ERR;
            if (ei.retry && attempt < c->retry.max_attempts) {
                rt_error_set(&e, RT_CLASS_FAILURE, "s3.retry", "s3 %s %s: http %ld%s%s", rq->op,
                             obj, resp->status, code ? " " : "", code ? code : "");
                retry = true;
            } else {
                set_s3_error(c, rq, obj, resp->status, code, msg, offset, err);
            }
            free(code);
            free(msg);
            if (!retry) break;
        }
        if (retry) {
            if (attempt >= c->retry.max_attempts) {
                rt_error_copy(err, &e);
                rt_error_hint(err, "gave up after %d attempts; check the network and the store",
                              attempt);
                rc = RT_ERR;
                break;
            }
            rt_info("%s; retry %d of %d", e.message, attempt, c->retry.max_attempts - 1);
            if (!rt_retry_sleep(&c->retry, attempt) && !rq->ignore_cancel) {
                rc = rt_cancel_error(err);
                break;
            }
        }
    }
    free(obj);
    return rc;
}

int s3_do_shared(S3Client *c, const S3Req *rq, RtHttpResponse *resp, RtError *err)
{
    pthread_mutex_lock(&c->mu_http);
    int rc = s3_do(c, c->http, rq, resp, err);
    pthread_mutex_unlock(&c->mu_http);
    return rc;
}

/* ---- operations ---- */

static int nomem(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
}

int s3_put(S3Client *c, const char *bucket, const char *key, const void *data, size_t len,
           const S3WriteOptions *w, char **etag_out, RtError *err)
{
    unsigned char md[16];
    char b64[25];
    s3_md5(data, len, md);
    s3_md5_b64(md, b64);
    S3Headers h = {0};
    S3WriteOptions rw;
    s3_write_resolve(c, w, &rw);
    s3_headers_write_opts(&h, &rw, true);
    s3_headers_add(&h, "Content-MD5: %s", b64);
    S3Req rq = {.op = "put",
                .method = "PUT",
                .bucket = bucket,
                .key = key,
                .headers = s3_headers_list(&h),
                .body = data,
                .body_len = len};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(c, &rq, &r, err);
    if (rc == RT_OK && etag_out) *etag_out = s3_etag_clean(rt_http_header(&r, "ETag"));
    rt_http_response_free(&r);
    s3_headers_free(&h);
    return rc;
}

void s3_head_free(S3Head *h)
{
    free(h->etag);
    free(h->content_type);
    free(h->storage_class);
    free(h->sse);
    free(h->kms_key_id);
    if (h->metadata)
        for (char **m = h->metadata; *m; m++) free(*m);
    free(h->metadata);
    memset(h, 0, sizeof *h);
}

static int head_with(S3Client *c, RtHttp *http, const char *bucket, const char *key, S3Head *out,
                     bool *found, RtError *err)
{
    memset(out, 0, sizeof *out);
    *found = false;
    S3Req rq = {.op = "head", .method = "HEAD", .bucket = bucket, .key = key, .ok_404 = true};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = http ? s3_do(c, http, &rq, &r, err) : s3_do_shared(c, &rq, &r, err);
    if (rc == RT_OK && r.status != 404) {
        *found = true;
        const char *v = rt_http_header(&r, "Content-Length");
        out->size = v ? strtoll(v, NULL, 10) : 0;
        out->etag = s3_etag_clean(rt_http_header(&r, "ETag"));
        v = rt_http_header(&r, "Last-Modified");
        out->last_modified = v ? rt_http_parse_date(v) : 0;
        out->content_type = xstrdup(rt_http_header(&r, "Content-Type"));
        out->storage_class = xstrdup(rt_http_header(&r, "x-amz-storage-class"));
        out->sse = xstrdup(rt_http_header(&r, "x-amz-server-side-encryption"));
        out->kms_key_id =
            xstrdup(rt_http_header(&r, "x-amz-server-side-encryption-aws-kms-key-id"));
        size_t nm = 0;
        for (size_t i = 0; i < r.n_headers; i++)
            if (strncasecmp(r.headers[i].name, "x-amz-meta-", 11) == 0) nm++;
        out->metadata = calloc(2 * nm + 1, sizeof(char *));
        if (!out->metadata)
            rc = nomem(err);
        else {
            size_t j = 0;
            for (size_t i = 0; i < r.n_headers; i++)
                if (strncasecmp(r.headers[i].name, "x-amz-meta-", 11) == 0) {
                    char *n = strdup(r.headers[i].name + 11);
                    for (char *p = n; p && *p; p++) *p = (char)tolower((unsigned char)*p);
                    out->metadata[j++] = n;
                    out->metadata[j++] = strdup(r.headers[i].value);
                }
        }
    }
    rt_http_response_free(&r);
    if (rc != RT_OK) s3_head_free(out);
    return rc;
}

int s3_head(S3Client *c, const char *bucket, const char *key, S3Head *out, bool *found,
            RtError *err)
{
    return head_with(c, NULL, bucket, key, out, found, err);
}

int s3_get(S3Client *c, const char *bucket, const char *key, size_t max, uint8_t **data,
           size_t *len, RtError *err)
{
    *data = NULL;
    *len = 0;
    S3Req rq = {.op = "get", .method = "GET", .bucket = bucket, .key = key, .max_body = max + 1};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(c, &rq, &r, err);
    if (rc == RT_OK) {
        if (r.body_truncated || r.body_len > max) {
            char *o = s3_object_name(bucket, key);
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.too_large",
                              "s3 get %s: object larger than %zu bytes", o, max);
            rt_error_hint(err, "stream it with c:download{...} into pipe.run");
            free(o);
        } else {
            *data = r.body ? r.body : (uint8_t *)calloc(1, 1);
            *len = r.body_len;
            r.body = NULL;
            if (!*data) rc = nomem(err);
        }
    }
    rt_http_response_free(&r);
    return rc;
}

void s3_list_page_free(S3ListPage *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->items[i].key);
        free(p->items[i].etag);
        free(p->items[i].last_modified_iso);
        free(p->items[i].storage_class);
    }
    free(p->items);
    for (size_t i = 0; i < p->n_prefixes; i++) free(p->prefixes[i]);
    free(p->prefixes);
    free(p->next_token);
    memset(p, 0, sizeof *p);
}

int s3_list_page(S3Client *c, const char *bucket, const char *prefix, const char *delimiter,
                 const char *token, int max_keys, S3ListPage *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    SigV4Param q[6];
    size_t nq = 0;
    char mk[16];
    q[nq++] = (SigV4Param){"list-type", "2"};
    if (prefix && *prefix) q[nq++] = (SigV4Param){"prefix", prefix};
    if (delimiter && *delimiter) q[nq++] = (SigV4Param){"delimiter", delimiter};
    if (token) q[nq++] = (SigV4Param){"continuation-token", token};
    if (max_keys > 0) {
        snprintf(mk, sizeof mk, "%d", max_keys);
        q[nq++] = (SigV4Param){"max-keys", mk};
    }
    SBuf o = {0};
    sb_addf(&o, "s3://%s/%s", bucket, prefix ? prefix : "");
    S3Req rq = {.op = "list",
                .method = "GET",
                .bucket = bucket,
                .query = q,
                .n_query = nq,
                .max_body = 64 << 20,
                .object = o.p};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(c, &rq, &r, err);
    if (rc == RT_OK) {
        const char *p = (const char *)(r.body ? r.body : (uint8_t *)""), *end = p + r.body_len;
        if (r.body_truncated) {
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 list %s: answer too large", o.p);
            goto done;
        }
        size_t cap = 0;
        AwsXmlSpan it;
        const char *cur = p;
        while (aws_xml_next(&cur, end, "Contents", &it)) {
            if (out->n == cap) {
                cap = cap ? cap * 2 : 64;
                S3Object *ni = realloc(out->items, cap * sizeof *ni);
                if (!ni) {
                    rc = nomem(err);
                    goto done;
                }
                out->items = ni;
            }
            S3Object *ob = &out->items[out->n];
            memset(ob, 0, sizeof *ob);
            ob->key = aws_xml_get(it, "Key");
            if (!ob->key) {
                rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                                  "s3 list %s: an entry without a key", o.p);
                goto done;
            }
            out->n++;
            char *s = aws_xml_get(it, "Size");
            ob->size = s ? strtoll(s, NULL, 10) : 0;
            free(s);
            char *et = aws_xml_get(it, "ETag");
            ob->etag = s3_etag_clean(et);
            free(et);
            ob->last_modified_iso = aws_xml_get(it, "LastModified");
            ob->last_modified = rt_iso8601_epoch(ob->last_modified_iso);
            ob->storage_class = aws_xml_get(it, "StorageClass");
        }
        cur = p;
        AwsXmlSpan cp;
        while (aws_xml_next(&cur, end, "CommonPrefixes", &cp)) {
            char **np = realloc(out->prefixes, (out->n_prefixes + 1) * sizeof *np);
            if (!np) {
                rc = nomem(err);
                goto done;
            }
            out->prefixes = np;
            np[out->n_prefixes] = aws_xml_get(cp, "Prefix");
            if (np[out->n_prefixes]) out->n_prefixes++;
        }
        AwsXmlSpan all = {p, r.body_len};
        char *tr = aws_xml_get(all, "IsTruncated");
        out->truncated = tr && strcmp(tr, "true") == 0;
        free(tr);
        out->next_token = aws_xml_get(all, "NextContinuationToken");
        if (out->truncated && !out->next_token)
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 list %s: truncated listing without a continuation token", o.p);
    }
done:
    if (rc != RT_OK) s3_list_page_free(out);
    rt_http_response_free(&r);
    sb_free(&o);
    return rc;
}

int s3_delete(S3Client *c, const char *bucket, const char *key, RtError *err)
{
    S3Req rq = {.op = "delete", .method = "DELETE", .bucket = bucket, .key = key};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = s3_do_shared(c, &rq, &r, err);
    rt_http_response_free(&r);
    return rc;
}

int s3_delete_many(S3Client *c, const char *bucket, const char *const *keys, size_t n,
                   size_t *deleted, RtError *err)
{
    *deleted = 0;
    for (size_t off = 0; off < n; off += 1000) {
        size_t m = n - off < 1000 ? n - off : 1000;
        SBuf b = {0};
        sb_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete><Quiet>true</Quiet>");
        for (size_t i = 0; i < m; i++) {
            sb_add(&b, "<Object><Key>");
            aws_xml_escape(&b, keys[off + i]);
            sb_add(&b, "</Key></Object>");
        }
        sb_add(&b, "</Delete>");
        if (b.oom) return nomem(err);
        unsigned char md[16];
        char b64[25];
        s3_md5(b.p, b.len, md);
        s3_md5_b64(md, b64);
        S3Headers h = {0};
        s3_headers_add(&h, "Content-MD5: %s", b64);
        s3_headers_add(&h, "Content-Type: application/xml");
        SigV4Param q[] = {{"delete", ""}};
        SBuf o = {0};
        sb_addf(&o, "s3://%s (%zu keys)", bucket, m);
        S3Req rq = {.op = "delete-many",
                    .method = "POST",
                    .bucket = bucket,
                    .query = q,
                    .n_query = 1,
                    .headers = s3_headers_list(&h),
                    .body = (const uint8_t *)b.p,
                    .body_len = b.len,
                    .object = o.p,
                    .max_body = 16 << 20};
        RtHttpResponse r;
        rt_http_response_init(&r);
        int rc = s3_do_shared(c, &rq, &r, err);
        if (rc == RT_OK && r.body) {
            AwsXmlSpan e;
            const char *cur = (const char *)r.body;
            if (aws_xml_next(&cur, cur + r.body_len, "Error", &e)) {
                char *k = aws_xml_get(e, "Key"), *code = aws_xml_get(e, "Code"),
                     *msg = aws_xml_get(e, "Message");
                ErrInfo ei = classify(code, 0);
                rc = rt_error_set(err, ei.klass, ei.code_rt, "s3 delete s3://%s/%s: %s (%s%s%s)",
                                  bucket, k ? k : "?", ei.what, code ? code : "", msg ? ": " : "",
                                  msg ? msg : "");
                rt_error_hint(
                    err, "the other keys of the batch were deleted; check permissions on that key");
                free(k);
                free(code);
                free(msg);
            }
        }
        if (rc == RT_OK) *deleted += m;
        rt_http_response_free(&r);
        s3_headers_free(&h);
        sb_free(&b);
        sb_free(&o);
        if (rc != RT_OK) return rc;
    }
    return RT_OK;
}

/* ---- copy ---- */

static char *copy_source(const char *bucket, const char *key)
{
    SBuf s = {0};
    sb_addf(&s, "%s/%s", bucket, key);
    if (s.oom) return NULL;
    char *enc = sigv4_uri_encode(s.p, s.len, true);
    sb_free(&s);
    return enc;
}

static int xml_answer(const RtHttpResponse *r, const char *root, const char *field, char **out)
{
    *out = NULL;
    if (!r->body) return RT_ERR;
    const char *cur = (const char *)r->body;
    AwsXmlSpan sp;
    if (!aws_xml_next(&cur, cur + r->body_len, root, &sp)) return RT_ERR;
    *out = aws_xml_get(sp, field);
    return *out ? RT_OK : RT_ERR;
}

int s3_copy(S3Client *c, const char *sb, const char *sk, const char *db, const char *dk,
            const S3CopyOptions *o, S3CopyResult *res, RtError *err)
{
    memset(res, 0, sizeof *res);
    S3CopyOptions d = {0};
    if (!o) o = &d;
    int64_t threshold = o->multipart_threshold > 0 ? o->multipart_threshold : 5 * GiB;
    int64_t part = o->part_size > 0 ? o->part_size : 512 * MiB;
    S3Head hd;
    bool found;
    char *src_name = s3_object_name(sb, sk), *dst_name = s3_object_name(db, dk);
    char *cs = copy_source(sb, sk);
    int rc = RT_ERR;
    if (!src_name || !dst_name || !cs) {
        rc = nomem(err);
        goto out;
    }
    if (s3_head(c, sb, sk, &hd, &found, err) != RT_OK) goto out;
    if (!found) {
        rt_error_set(err, RT_CLASS_FAILURE, "s3.no_such_key", "s3 copy %s: no such key", src_name);
        rt_error_hint(err, "check the source key; list what exists with c:list{bucket = \"%s\"}",
                      sb);
        goto out;
    }
    res->size = hd.size;
    S3Headers h = {0};
    if (hd.size <= threshold) {
        s3_headers_add(&h, "x-amz-copy-source: %s", cs);
        s3_headers_add(&h, "x-amz-copy-source-if-match: \"%s\"", hd.etag ? hd.etag : "");
        s3_headers_add(&h, "x-amz-metadata-directive: %s",
                       o->replace_metadata ? "REPLACE" : "COPY");
        S3WriteOptions rw;
        s3_write_resolve(c, &o->write, &rw);
        s3_headers_write_opts(&h, &rw, o->replace_metadata);
        S3Req rq = {.op = "copy",
                    .method = "PUT",
                    .bucket = db,
                    .key = dk,
                    .headers = s3_headers_list(&h),
                    .error_in_200 = true,
                    .object = dst_name};
        RtHttpResponse r;
        rt_http_response_init(&r);
        rc = s3_do_shared(c, &rq, &r, err);
        if (rc == RT_OK) {
            char *et = NULL;
            xml_answer(&r, "CopyObjectResult", "ETag", &et);
            res->etag = s3_etag_clean(et);
            free(et);
        }
        rt_http_response_free(&r);
        s3_headers_free(&h);
        s3_head_free(&hd);
        goto out;
    }
    /* Multipart copy: metadata and content type of the source are carried over explicitly. */
    S3WriteOptions w;
    s3_write_resolve(c, &o->write, &w);
    if (!o->replace_metadata) {
        w.content_type = hd.content_type;
        w.metadata = (const char *const *)hd.metadata;
    }
    s3_headers_write_opts(&h, &w, true);
    SigV4Param qi[] = {{"uploads", ""}};
    S3Req rq = {.op = "copy",
                .method = "POST",
                .bucket = db,
                .key = dk,
                .query = qi,
                .n_query = 1,
                .headers = s3_headers_list(&h),
                .object = dst_name};
    RtHttpResponse r;
    rt_http_response_init(&r);
    char *upload_id = NULL;
    rc = s3_do_shared(c, &rq, &r, err);
    s3_headers_free(&h);
    if (rc == RT_OK &&
        xml_answer(&r, "InitiateMultipartUploadResult", "UploadId", &upload_id) != RT_OK)
        rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                          "s3 copy %s: no upload id in the answer", dst_name);
    SBuf done = {0};
    sb_add(&done, "<CompleteMultipartUpload>");
    int n = 0;
    for (int64_t off = 0; rc == RT_OK && off < hd.size; off += part) {
        int64_t last = off + part < hd.size ? off + part - 1 : hd.size - 1;
        n++;
        char pn[16];
        snprintf(pn, sizeof pn, "%d", n);
        SigV4Param q[] = {{"partNumber", pn}, {"uploadId", upload_id}};
        S3Headers ph = {0};
        s3_headers_add(&ph, "x-amz-copy-source: %s", cs);
        s3_headers_add(&ph, "x-amz-copy-source-range: bytes=%lld-%lld", (long long)off,
                       (long long)last);
        s3_headers_add(&ph, "x-amz-copy-source-if-match: \"%s\"", hd.etag ? hd.etag : "");
        S3Req pr = {.op = "copy part",
                    .method = "PUT",
                    .bucket = db,
                    .key = dk,
                    .query = q,
                    .n_query = 2,
                    .headers = s3_headers_list(&ph),
                    .error_in_200 = true,
                    .object = dst_name};
        rc = s3_do_shared(c, &pr, &r, err);
        char *et = NULL;
        if (rc == RT_OK && xml_answer(&r, "CopyPartResult", "ETag", &et) != RT_OK)
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 copy %s: part %d has no etag", dst_name, n);
        if (rc == RT_OK) {
            char *clean = s3_etag_clean(et);
            sb_addf(&done, "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>", n,
                    clean ? clean : "");
            free(clean);
        }
        free(et);
        s3_headers_free(&ph);
    }
    sb_add(&done, "</CompleteMultipartUpload>");
    if (rc == RT_OK) {
        SigV4Param q[] = {{"uploadId", upload_id}};
        S3Req cr = {.op = "copy",
                    .method = "POST",
                    .bucket = db,
                    .key = dk,
                    .query = q,
                    .n_query = 1,
                    .body = (const uint8_t *)done.p,
                    .body_len = done.len,
                    .error_in_200 = true,
                    .object = dst_name};
        rc = s3_do_shared(c, &cr, &r, err);
        char *et = NULL;
        if (rc == RT_OK) xml_answer(&r, "CompleteMultipartUploadResult", "ETag", &et);
        res->etag = s3_etag_clean(et);
        free(et);
        res->parts = n;
    }
    if (rc != RT_OK && upload_id) {
        SigV4Param q[] = {{"uploadId", upload_id}};
        S3Req ar = {.op = "abort upload",
                    .method = "DELETE",
                    .bucket = db,
                    .key = dk,
                    .query = q,
                    .n_query = 1,
                    .object = dst_name};
        RtError ae;
        rt_error_init(&ae);
        if (s3_do_shared(c, &ar, &r, &ae) != RT_OK)
            rt_warn("could not abort the multipart copy to %s: %s", dst_name, ae.message);
    }
    sb_free(&done);
    free(upload_id);
    rt_http_response_free(&r);
    s3_head_free(&hd);
out:
    free(src_name);
    free(dst_name);
    free(cs);
    return rc;
}

/* ---- sync ---- */

typedef struct Listing {
    S3Object *v;
    size_t n, cap;
} Listing;

static int list_all(S3Client *c, const char *bucket, const char *prefix, Listing *l, RtError *err)
{
    char *token = NULL;
    for (;;) {
        S3ListPage pg;
        if (s3_list_page(c, bucket, prefix, NULL, token, 0, &pg, err) != RT_OK) {
            free(token);
            return RT_ERR;
        }
        free(token);
        token = NULL;
        if (l->n + pg.n > l->cap) {
            size_t nc = l->cap ? l->cap : 256;
            while (nc < l->n + pg.n) nc *= 2;
            S3Object *nv = realloc(l->v, nc * sizeof *nv);
            if (!nv) {
                s3_list_page_free(&pg);
                return nomem(err);
            }
            l->v = nv;
            l->cap = nc;
        }
        if (pg.n) memcpy(l->v + l->n, pg.items, pg.n * sizeof *pg.items);
        l->n += pg.n;
        pg.n = 0;
        bool more = pg.truncated;
        token = pg.next_token;
        pg.next_token = NULL;
        s3_list_page_free(&pg);
        if (!more) break;
        if (rt_cancelled()) {
            free(token);
            return rt_cancel_error(err);
        }
    }
    free(token);
    return RT_OK;
}

static void listing_free(Listing *l)
{
    S3ListPage pg = {.items = l->v, .n = l->n};
    s3_list_page_free(&pg);
    memset(l, 0, sizeof *l);
}

static size_t g_sync_strip; /* qsort has no context argument; sync sorts under a lock */
static pthread_mutex_t g_sync_mu = PTHREAD_MUTEX_INITIALIZER;
static int obj_cmp(const void *a, const void *b)
{
    const S3Object *x = a, *y = b;
    return strcmp(x->key + g_sync_strip, y->key + g_sync_strip);
}

static void sort_listing(Listing *l, size_t strip)
{
    pthread_mutex_lock(&g_sync_mu);
    g_sync_strip = strip;
    if (l->n) qsort(l->v, l->n, sizeof *l->v, obj_cmp);
    pthread_mutex_unlock(&g_sync_mu);
}

void s3_sync_summary_free(S3SyncSummary *s)
{
    for (size_t i = 0; i < s->n_planned; i++) free(s->planned[i]);
    free(s->planned);
    memset(s, 0, sizeof *s);
}

int s3_sync(S3Client *c, const S3SyncOptions *o, S3SyncSummary *sum, RtError *err)
{
    memset(sum, 0, sizeof *sum);
    const char *sp = o->src_prefix ? o->src_prefix : "", *dp = o->dst_prefix ? o->dst_prefix : "";
    Listing src = {0}, dst = {0};
    int rc = list_all(c, o->src_bucket, sp, &src, err);
    if (rc == RT_OK) rc = list_all(c, o->dst_bucket, dp, &dst, err);
    if (rc != RT_OK) goto out;
    size_t spl = strlen(sp), dpl = strlen(dp);
    sort_listing(&src, spl);
    sort_listing(&dst, dpl);
    sum->planned = calloc(src.n + 1, sizeof(char *));
    if (!sum->planned) {
        rc = nomem(err);
        goto out;
    }
    size_t j = 0;
    for (size_t i = 0; i < src.n && rc == RT_OK; i++) {
        const S3Object *s = &src.v[i];
        const char *rel = s->key + spl;
        /* "Folder" marker objects are synced like any other key, as aws s3 sync does not; skip
         * them. */
        if (!*rel || (s->size == 0 && rel[strlen(rel) - 1] == '/')) continue;
        sum->scanned++;
        while (j < dst.n && strcmp(dst.v[j].key + dpl, rel) < 0) j++;
        const S3Object *d = j < dst.n && strcmp(dst.v[j].key + dpl, rel) == 0 ? &dst.v[j] : NULL;
        /* Like aws s3 sync: copy what is missing, has another size, or is newer at the source;
         * an equal ETag (same bytes, same part layout) is never copied again. */
        bool need = !d || d->size != s->size ||
                    (!(s->etag && d->etag && strcmp(s->etag, d->etag) == 0) &&
                     s->last_modified > d->last_modified);
        if (!need) {
            sum->skipped++;
            continue;
        }
        SBuf dk = {0};
        sb_add(&dk, dp);
        sb_add(&dk, rel);
        if (dk.oom) {
            rc = nomem(err);
            break;
        }
        if (!o->dry_run) {
            S3CopyOptions co = {.write = o->write};
            S3CopyResult cr;
            rc = s3_copy(c, o->src_bucket, s->key, o->dst_bucket, dk.p, &co, &cr, err);
            free(cr.etag);
            if (rc != RT_OK) {
                sb_free(&dk);
                break;
            }
            rt_info("sync: copied s3://%s/%s to s3://%s/%s", o->src_bucket, s->key, o->dst_bucket,
                    dk.p);
        }
        sum->copied++;
        sum->bytes += s->size;
        sum->planned[sum->n_planned++] = sb_take(&dk);
        if (rt_cancelled()) rc = rt_cancel_error(err);
    }
out:
    listing_free(&src);
    listing_free(&dst);
    if (rc != RT_OK) {
        /* Keep the partial counts: the caller reports how far the sync got. */
    }
    return rc;
}

/* ---- in-progress multipart uploads ---- */

void s3_uploads_page_free(S3UploadsPage *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->items[i].key);
        free(p->items[i].upload_id);
        free(p->items[i].initiated_iso);
        free(p->items[i].storage_class);
    }
    free(p->items);
    free(p->next_key_marker);
    free(p->next_upload_id_marker);
    memset(p, 0, sizeof *p);
}

int s3_list_uploads_page(S3Client *c, const char *bucket, const char *prefix,
                         const char *key_marker, const char *upload_id_marker, int max_uploads,
                         S3UploadsPage *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    SigV4Param q[5];
    size_t nq = 0;
    char mu[16];
    q[nq++] = (SigV4Param){"uploads", ""};
    if (prefix && *prefix) q[nq++] = (SigV4Param){"prefix", prefix};
    if (key_marker && *key_marker) q[nq++] = (SigV4Param){"key-marker", key_marker};
    if (upload_id_marker && *upload_id_marker)
        q[nq++] = (SigV4Param){"upload-id-marker", upload_id_marker};
    if (max_uploads > 0) {
        snprintf(mu, sizeof mu, "%d", max_uploads);
        q[nq++] = (SigV4Param){"max-uploads", mu};
    }
    SBuf o = {0};
    sb_addf(&o, "s3://%s/%s", bucket, prefix ? prefix : "");
    S3Req rq = {.op = "list uploads",
                .method = "GET",
                .bucket = bucket,
                .query = q,
                .n_query = nq,
                .max_body = 64 << 20,
                .object = o.p};
    RtHttpResponse r;
    rt_http_response_init(&r);
    int rc = o.oom ? nomem(err) : s3_do_shared(c, &rq, &r, err);
    if (rc == RT_OK) {
        const char *p = (const char *)(r.body ? r.body : (uint8_t *)""), *end = p + r.body_len;
        AwsXmlSpan root;
        const char *cur = p;
        if (r.body_truncated || !aws_xml_next(&cur, end, "ListMultipartUploadsResult", &root)) {
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 list uploads %s: not a ListMultipartUploads answer", o.p);
            goto done;
        }
        size_t cap = 0;
        AwsXmlSpan it;
        cur = root.p;
        while (aws_xml_next(&cur, root.p + root.len, "Upload", &it)) {
            if (out->n == cap) {
                cap = cap ? cap * 2 : 64;
                S3Upload *ni = realloc(out->items, cap * sizeof *ni);
                if (!ni) {
                    rc = nomem(err);
                    goto done;
                }
                out->items = ni;
            }
            S3Upload *u = &out->items[out->n];
            memset(u, 0, sizeof *u);
            out->n++;
            u->key = aws_xml_get(it, "Key");
            u->upload_id = aws_xml_get(it, "UploadId");
            if (!u->key || !u->upload_id) {
                rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                                  "s3 list uploads %s: an entry without a key or upload id", o.p);
                goto done;
            }
            u->initiated_iso = aws_xml_get(it, "Initiated");
            u->initiated = u->initiated_iso ? rt_iso8601_epoch(u->initiated_iso) : 0;
            u->storage_class = aws_xml_get(it, "StorageClass");
        }
        char *tr = aws_xml_get(root, "IsTruncated");
        out->truncated = tr && strcmp(tr, "true") == 0;
        free(tr);
        out->next_key_marker = aws_xml_get(root, "NextKeyMarker");
        out->next_upload_id_marker = aws_xml_get(root, "NextUploadIdMarker");
        if (out->truncated && (!out->next_key_marker || !*out->next_key_marker))
            rc = rt_error_set(err, RT_CLASS_FAILURE, "s3.bad_answer",
                              "s3 list uploads %s: truncated listing without a next marker", o.p);
    }
done:
    if (rc != RT_OK) s3_uploads_page_free(out);
    rt_http_response_free(&r);
    sb_free(&o);
    return rc;
}

int s3_abort_upload(S3Client *c, const char *bucket, const char *key, const char *upload_id,
                    bool *gone, RtError *err)
{
    *gone = false;
    SigV4Param q[] = {{"uploadId", upload_id}};
    S3Req rq = {.op = "abort upload",
                .method = "DELETE",
                .bucket = bucket,
                .key = key,
                .query = q,
                .n_query = 1};
    RtHttpResponse r;
    rt_http_response_init(&r);
    RtError e;
    rt_error_init(&e);
    int rc = s3_do_shared(c, &rq, &r, &e);
    rt_http_response_free(&r);
    if (rc != RT_OK && strcmp(e.code, "s3.no_such_upload") == 0) {
        *gone = true; /* completed or aborted meanwhile: nothing left to abort */
        return RT_OK;
    }
    if (rc != RT_OK) rt_error_copy(err, &e);
    return rc;
}
