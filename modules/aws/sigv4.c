/*
 * AWS Signature Version 4 signing (see sigv4.h): canonical request, string to sign, signing key
 * derivation and signature with OpenSSL's HMAC-SHA256.
 */
#include "sigv4.h"

#include "modules/crypto/crypto.h"
#include "runtime/sbuf.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void sigv4_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    crypto_hex(md, sizeof md, out);
}

void sigv4_amz_date(time_t t, char out[17])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

char *sigv4_uri_encode(const char *s, size_t len, bool keep_slash)
{
    static const char h[] = "0123456789ABCDEF";
    char *out = malloc(len * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = h[c >> 4];
            out[o++] = h[c & 15];
        }
    }
    out[o] = 0;
    return out;
}

typedef struct KV {
    char *k, *v;
} KV;

static int kv_cmp(const void *a, const void *b)
{
    const KV *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

static void kv_free(KV *kv, size_t n)
{
    if (!kv) return;
    for (size_t i = 0; i < n; i++) {
        free(kv[i].k);
        free(kv[i].v);
    }
    free(kv);
}

/* Lower-cases the name; trims the value and collapses runs of spaces (SigV4 "Trimall"). */
static char *canon_header_value(const char *v)
{
    size_t n = strlen(v);
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t j = 0;
    bool space = false;
    while (*v == ' ' || *v == '\t') v++;
    for (; *v; v++) {
        if (*v == ' ' || *v == '\t') {
            space = true;
            continue;
        }
        if (space && j) o[j++] = ' ';
        space = false;
        o[j++] = *v;
    }
    o[j] = 0;
    return o;
}

static void hmac(const void *key, size_t klen, const void *msg, size_t mlen, unsigned char out[32])
{
    unsigned int olen = 32;
    HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen);
}

void sigv4_result_free(SigV4Result *r)
{
    free(r->canonical_request);
    free(r->string_to_sign);
    free(r->signed_headers);
    free(r->canonical_query);
    free(r->encoded_path);
    if (r->authorization) OPENSSL_cleanse(r->authorization, strlen(r->authorization));
    free(r->authorization);
    OPENSSL_cleanse(r->signature, sizeof r->signature);
    memset(r, 0, sizeof *r);
}

int sigv4_sign(const SigV4Request *rq, const SigV4Credentials *cr, SigV4Result *out)
{
    memset(out, 0, sizeof *out);
    if (!rq->method || !rq->path || !rq->region || !rq->service || !rq->amz_date ||
        strlen(rq->amz_date) != 16 || !rq->payload_hash || !cr->access_key || !cr->secret_key)
        return -1;
    int rc = -1;
    KV *q = NULL, *h = NULL;
    size_t nq = 0, nh = 0;
    SBuf cq = {0}, sh = {0}, creq = {0}, sts = {0}, auth = {0};
    char *cpath = NULL;

    /* Canonical URI. */
    out->encoded_path = sigv4_uri_encode(rq->path, strlen(rq->path), true);
    if (!out->encoded_path) goto done;
    cpath = rq->double_encode ? sigv4_uri_encode(out->encoded_path, strlen(out->encoded_path), true)
                              : strdup(out->encoded_path);
    if (!cpath) goto done;

    /* Canonical query: encode names and values, sort by name then value. */
    if (rq->n_query) {
        q = calloc(rq->n_query, sizeof *q);
        if (!q) goto done;
        for (; nq < rq->n_query; nq++) {
            const char *v = rq->query[nq].value ? rq->query[nq].value : "";
            q[nq].k = sigv4_uri_encode(rq->query[nq].name, strlen(rq->query[nq].name), false);
            q[nq].v = sigv4_uri_encode(v, strlen(v), false);
            if (!q[nq].k || !q[nq].v) {
                nq++;
                goto done;
            }
        }
        qsort(q, nq, sizeof *q, kv_cmp);
    }
    for (size_t i = 0; i < nq; i++) {
        if (i) sb_addc(&cq, '&');
        sb_add(&cq, q[i].k);
        sb_addc(&cq, '=');
        sb_add(&cq, q[i].v);
    }

    /* Canonical headers. */
    if (rq->n_headers) {
        h = calloc(rq->n_headers, sizeof *h);
        if (!h) goto done;
        for (; nh < rq->n_headers; nh++) {
            h[nh].k = strdup(rq->headers[nh].name);
            h[nh].v = canon_header_value(rq->headers[nh].value ? rq->headers[nh].value : "");
            if (!h[nh].k || !h[nh].v) {
                nh++;
                goto done;
            }
            for (char *p = h[nh].k; *p; p++) *p = (char)tolower((unsigned char)*p);
        }
        qsort(h, nh, sizeof *h, kv_cmp);
    }

    sb_add(&creq, rq->method);
    sb_addc(&creq, '\n');
    sb_add(&creq, cpath);
    sb_addc(&creq, '\n');
    sb_add(&creq, cq.p ? cq.p : "");
    sb_addc(&creq, '\n');
    for (size_t i = 0; i < nh; i++) {
        /* Repeated names are joined with commas on one line, in the order given. */
        if (i && strcmp(h[i].k, h[i - 1].k) == 0) {
            creq.len--; /* drop the newline */
            sb_addc(&creq, ',');
            sb_add(&creq, h[i].v);
            sb_addc(&creq, '\n');
            continue;
        }
        sb_add(&creq, h[i].k);
        sb_addc(&creq, ':');
        sb_add(&creq, h[i].v);
        sb_addc(&creq, '\n');
        if (sh.len) sb_addc(&sh, ';');
        sb_add(&sh, h[i].k);
    }
    sb_addc(&creq, '\n');
    sb_add(&creq, sh.p ? sh.p : "");
    sb_addc(&creq, '\n');
    sb_add(&creq, rq->payload_hash);

    char date[9];
    memcpy(date, rq->amz_date, 8);
    date[8] = 0;
    char creq_hash[65];
    if (creq.oom) goto done;
    sigv4_sha256_hex(creq.p, creq.len, creq_hash);
    sb_addf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", rq->amz_date, date, rq->region,
            rq->service, creq_hash);
    if (sts.oom) goto done;

    /* Signing key: HMAC chain over date, region, service, "aws4_request". */
    size_t sl = strlen(cr->secret_key);
    char *k0 = malloc(sl + 5);
    if (!k0) goto done;
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, cr->secret_key, sl + 1);
    unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
    hmac(k0, sl + 4, date, 8, k1);
    OPENSSL_cleanse(k0, sl + 4);
    free(k0);
    hmac(k1, 32, rq->region, strlen(rq->region), k2);
    hmac(k2, 32, rq->service, strlen(rq->service), k3);
    hmac(k3, 32, "aws4_request", 12, k4);
    hmac(k4, 32, sts.p, sts.len, sig);
    crypto_hex(sig, 32, out->signature);
    OPENSSL_cleanse(k1, 32);
    OPENSSL_cleanse(k2, 32);
    OPENSSL_cleanse(k3, 32);
    OPENSSL_cleanse(k4, 32);

    sb_addf(&auth,
            "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
            cr->access_key, date, rq->region, rq->service, sh.p ? sh.p : "", out->signature);
    if (auth.oom || cq.oom || sh.oom) goto done;
    out->canonical_query = sb_take(&cq);
    out->signed_headers = sb_take(&sh);
    out->canonical_request = sb_take(&creq);
    out->string_to_sign = sb_take(&sts);
    out->authorization = sb_take(&auth);
    if (out->canonical_query && out->signed_headers && out->canonical_request &&
        out->string_to_sign && out->authorization)
        rc = 0;
done:
    kv_free(q, nq);
    kv_free(h, nh);
    free(cpath);
    sb_free(&cq);
    sb_free(&sh);
    sb_free(&creq);
    sb_free(&sts);
    sb_free(&auth);
    if (rc != 0) sigv4_result_free(out);
    return rc;
}
