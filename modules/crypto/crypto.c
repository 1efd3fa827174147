/*
 * AES-256-CBC in the `openssl enc -aes-256-cbc -salt -pbkdf2` format, SHA-256 and HMAC-SHA256
 * observing filters, and the one-shot helpers — see crypto.h. Gzip lives in gzip.c.
 *
 * Format: "Salted__" | salt[8] | AES-256-CBC(plain || PKCS#7 padding), key|iv =
 * PBKDF2-HMAC-SHA256(passphrase, salt, iter, 48 bytes). openssl writes the header even for an
 * empty input, and the ciphertext is always at least one block.
 *
 * Both cipher filters write straight into the pipe's output buffer when it has room for what
 * EVP may produce (input + one block), and otherwise through a small stash, so 1-byte output
 * buffers work. EVP_DecryptUpdate keeps the last block back until EVP_DecryptFinal, which is
 * what we want: no unpadded plaintext is passed on as if it were the end.
 */
#include "crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define SALT_MAGIC "Salted__"
#define HEADER_LEN 16
#define KEY_LEN    32
#define IV_LEN     16
#define STASH_IN   (64 * 1024)
#define CHUNK_MAX  (1 << 30)

static int nomem(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
}

static int openssl_fail(RtError *err, const char *what)
{
    return rt_error_set(err, RT_CLASS_FAILURE, "crypto.openssl", "%s failed in openssl", what);
}

void crypto_hex(const uint8_t *data, size_t len, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        hex[2 * i] = digits[data[i] >> 4];
        hex[2 * i + 1] = digits[data[i] & 15];
    }
    hex[2 * len] = '\0';
}

int crypto_sha256(const void *data, size_t len, uint8_t out[32], RtError *err)
{
    unsigned int n = 0;
    if (!EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) || n != 32)
        return openssl_fail(err, "sha-256");
    return RT_OK;
}

int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       uint8_t out[32], RtError *err)
{
    size_t n = 0;
    static const uint8_t empty[1];
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, keylen ? key : empty, keylen,
                   len ? data : empty, len, out, 32, &n) ||
        n != 32)
        return openssl_fail(err, "hmac-sha256");
    return RT_OK;
}

int crypto_pbkdf2_sha256(const char *pass, size_t passlen, const uint8_t *salt, size_t saltlen,
                         int iter, uint8_t *out, size_t outlen, RtError *err)
{
    if (iter < 1)
        return rt_error_set(err, RT_CLASS_USAGE, "usage.option",
                            "pbkdf2: iteration count must be at least 1");
    if (passlen > INT_MAX || saltlen > INT_MAX || outlen > INT_MAX)
        return rt_error_set(err, RT_CLASS_USAGE, "usage.option", "pbkdf2: argument too long");
    if (!PKCS5_PBKDF2_HMAC(pass, (int)passlen, salt, (int)saltlen, iter, EVP_sha256(), (int)outlen,
                           out))
        return openssl_fail(err, "pbkdf2");
    return RT_OK;
}

int crypto_random(uint8_t *out, size_t n, RtError *err)
{
    if (n > INT_MAX || RAND_bytes(out, (int)n) != 1)
        return rt_error_set(err, RT_CLASS_FAILURE, "crypto.random",
                            "could not get random bytes from openssl");
    return RT_OK;
}

/* ---- AES-256-CBC, openssl enc format ------------------------------------------------------ */

typedef struct Cipher {
    bool encrypt;
    int iter;
    RtSecret *pass; /* until the key is derived */
    EVP_CIPHER_CTX *ctx;
    bool keyed;
    uint8_t header[HEADER_LEN];
    size_t header_pos; /* bytes of the header written (encrypt) or read (decrypt) */
    uint8_t stash[STASH_IN + 2 * 16];
    size_t stash_pos, stash_len;
    bool finaled;
    uint64_t cipher_bytes; /* ciphertext after the header, read (decrypt) */
} Cipher;

static void cipher_destroy(void *self)
{
    Cipher *c = self;
    if (!c) return;
    rt_secret_free(c->pass);
    EVP_CIPHER_CTX_free(c->ctx);   /* cleanses the key schedule */
    OPENSSL_cleanse(c, sizeof *c); /* the stash held plaintext */
    free(c);
}

/* Derives key and IV from the passphrase and the salt in header[8..16), then drops the
 * passphrase: from here on only the cipher context holds key material. */
static int cipher_key(Cipher *c, RtError *err)
{
    uint8_t kiv[KEY_LEN + IV_LEN];
    int rc = crypto_pbkdf2_sha256(c->pass->data, c->pass->len, c->header + 8, 8, c->iter, kiv,
                                  sizeof kiv, err);
    if (rc == RT_OK &&
        !EVP_CipherInit_ex(c->ctx, EVP_aes_256_cbc(), NULL, kiv, kiv + KEY_LEN, c->encrypt ? 1 : 0))
        rc = openssl_fail(err, "aes-256-cbc init");
    OPENSSL_cleanse(kiv, sizeof kiv);
    rt_secret_free(c->pass);
    c->pass = NULL;
    c->keyed = rc == RT_OK;
    return rc;
}

static void drain_stash(Cipher *c, RtBuf *out)
{
    size_t n = c->stash_len - c->stash_pos;
    if (n > rt_buf_space(out)) n = rt_buf_space(out);
    memcpy(rt_buf_wptr(out), c->stash + c->stash_pos, n);
    out->used += n;
    c->stash_pos += n;
    if (c->stash_pos == c->stash_len) c->stash_pos = c->stash_len = 0;
}

static int bad_decrypt(RtError *err)
{
    rt_error_set(err, RT_CLASS_VERIFY, "crypto.bad_decrypt", "wrong passphrase or corrupt archive");
    rt_error_hint(err, "check the passphrase (BACKUP_ENCRYPTION_KEY, --pass-env or --pass-file) "
                       "and the iteration count (--iter, default 10000); if both are right the "
                       "archive is damaged: verify it against its manifest");
    return RT_ERR;
}

static int truncated(RtError *err, const char *what)
{
    rt_error_set(err, RT_CLASS_VERIFY, "crypto.truncated", "archive is truncated: %s", what);
    rt_error_hint(err, "the archive was cut short (an interrupted copy or upload?): fetch it again "
                       "and compare its size and sha-256 with the manifest");
    return RT_ERR;
}

/* Feeds the rest of `in` through the cipher into out (directly) or the stash (small out). */
static int cipher_update(Cipher *c, RtBuf *in, RtBuf *out, RtError *err)
{
    while (rt_buf_remain(in) > 0 && c->stash_len == 0) {
        size_t take = rt_buf_remain(in), space = rt_buf_space(out);
        int n = 0;
        if (space >= 64) { /* EVP writes at most input + one block */
            if (take > space - 32) take = space - 32;
            if (take > CHUNK_MAX) take = CHUNK_MAX;
            if (!EVP_CipherUpdate(c->ctx, rt_buf_wptr(out), &n, rt_buf_rptr(in), (int)take))
                return c->encrypt ? openssl_fail(err, "aes-256-cbc") : bad_decrypt(err);
            out->used += (size_t)n;
        } else {
            if (take > STASH_IN) take = STASH_IN;
            if (!EVP_CipherUpdate(c->ctx, c->stash, &n, rt_buf_rptr(in), (int)take))
                return c->encrypt ? openssl_fail(err, "aes-256-cbc") : bad_decrypt(err);
            c->stash_len = (size_t)n;
            c->stash_pos = 0;
            drain_stash(c, out);
        }
        in->pos += take;
        c->cipher_bytes += take;
        if (rt_buf_space(out) == 0) break;
    }
    return RT_OK;
}

static int cipher_final(Cipher *c, RtBuf *out, bool *done, RtError *err)
{
    if (!c->finaled) {
        int n = 0;
        if (!EVP_CipherFinal_ex(c->ctx, c->stash, &n))
            return c->encrypt ? openssl_fail(err, "aes-256-cbc final") : bad_decrypt(err);
        c->finaled = true;
        c->stash_len = (size_t)n;
        c->stash_pos = 0;
        drain_stash(c, out);
    }
    *done = c->stash_len == 0;
    return RT_OK;
}

static int encrypt_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    Cipher *c = self;
    if (c->header_pos < HEADER_LEN) {
        c->header_pos += rt_buf_put(out, c->header + c->header_pos, HEADER_LEN - c->header_pos);
        if (c->header_pos < HEADER_LEN) return RT_OK;
    }
    if (c->stash_len) drain_stash(c, out);
    if (c->stash_len) return RT_OK;
    if (!in) return cipher_final(c, out, done, err);
    return cipher_update(c, in, out, err);
}

static int decrypt_process(void *self, RtBuf *in, RtBuf *out, bool *done, RtError *err)
{
    Cipher *c = self;
    if (!c->keyed) {
        if (!in) {
            if (c->header_pos == 0)
                return truncated(err, "the input is empty (an openssl enc archive has at least "
                                      "32 bytes)");
            return truncated(err, "it ends inside the 16-byte \"Salted__\" header");
        }
        while (c->header_pos < HEADER_LEN && rt_buf_remain(in)) {
            uint8_t b = in->data[in->pos++];
            if (c->header_pos < 8 && b != (uint8_t)SALT_MAGIC[c->header_pos]) {
                rt_error_set(err, RT_CLASS_VERIFY, "crypto.not_encrypted",
                             "input is not an openssl enc archive: it does not start with "
                             "\"Salted__\"");
                rt_error_hint(err, "archives are written by `clubio-dr encrypt` or `openssl enc "
                                   "-aes-256-cbc -salt -pbkdf2`; is this file already decrypted?");
                return RT_ERR;
            }
            c->header[c->header_pos++] = b;
        }
        if (c->header_pos < HEADER_LEN) return RT_OK;
        if (cipher_key(c, err) != RT_OK) return RT_ERR;
    }
    if (c->stash_len) drain_stash(c, out);
    if (c->stash_len) return RT_OK;
    if (in) return cipher_update(c, in, out, err);
    if (c->cipher_bytes == 0 || c->cipher_bytes % 16 != 0) {
        char what[128];
        snprintf(what, sizeof what,
                 "%llu bytes of ciphertext is not a whole number of 16-byte blocks",
                 (unsigned long long)c->cipher_bytes);
        return truncated(err, what);
    }
    return cipher_final(c, out, done, err);
}

static void cipher_results(void *self, RtResults *res)
{
    Cipher *c = self;
    rt_results_str(res, "cipher", "aes-256-cbc");
    rt_results_str(res, "kdf", "pbkdf2-hmac-sha256");
    rt_results_int(res, "iter", c->iter);
}

static const RtFilterOps encrypt_filter_ops = {.name = "encrypt",
                                               .process = encrypt_process,
                                               .results = cipher_results,
                                               .destroy = cipher_destroy};
static const RtFilterOps decrypt_filter_ops = {.name = "decrypt",
                                               .process = decrypt_process,
                                               .results = cipher_results,
                                               .destroy = cipher_destroy};

static RtFilter *cipher_new(RtSecret *pass, int iter, bool encrypt, RtError *err)
{
    if (!pass) {
        rt_error_set(err, RT_CLASS_USAGE, "usage.secret", "%s needs a passphrase",
                     encrypt ? "encrypt" : "decrypt");
        return NULL;
    }
    if (iter == 0) iter = CRYPTO_PBKDF2_ITER_DEFAULT;
    if (iter < 1) {
        rt_secret_free(pass);
        rt_error_set(err, RT_CLASS_USAGE, "usage.option",
                     "iteration count must be at least 1 (got %d)", iter);
        return NULL;
    }
    RtFilter *f = rt_filter_new();
    Cipher *c = calloc(1, sizeof *c);
    if (!f || !c || !(c->ctx = EVP_CIPHER_CTX_new())) {
        rt_secret_free(pass);
        free(f);
        free(c);
        nomem(err);
        return NULL;
    }
    c->encrypt = encrypt;
    c->iter = iter;
    c->pass = pass;
    if (encrypt) {
        memcpy(c->header, SALT_MAGIC, 8);
        if (crypto_random(c->header + 8, 8, err) != RT_OK || cipher_key(c, err) != RT_OK) {
            cipher_destroy(c);
            free(f);
            return NULL;
        }
    }
    rt_filter_init(f, encrypt ? &encrypt_filter_ops : &decrypt_filter_ops, c);
    return f;
}

RtFilter *crypto_encrypt_filter(RtSecret *pass, int iter, RtError *err)
{
    return cipher_new(pass, iter, true, err);
}

RtFilter *crypto_decrypt_filter(RtSecret *pass, int iter, RtError *err)
{
    return cipher_new(pass, iter, false, err);
}

/* ---- observing filters: sha256, hmac_sha256 ----------------------------------------------- */

typedef struct Digest {
    EVP_MD_CTX *md;   /* sha256 */
    EVP_MAC_CTX *mac; /* hmac_sha256 */
    uint64_t bytes;
    char hex[65];
} Digest;

static int digest_observe(void *self, const uint8_t *data, size_t len, RtError *err)
{
    Digest *d = self;
    if (data) {
        d->bytes += len;
        if (d->md ? !EVP_DigestUpdate(d->md, data, len) : !EVP_MAC_update(d->mac, data, len))
            return openssl_fail(err, d->md ? "sha-256" : "hmac-sha256");
        return RT_OK;
    }
    uint8_t out[32];
    unsigned int n = 0;
    size_t m = 0;
    if (d->md ? !EVP_DigestFinal_ex(d->md, out, &n) : !EVP_MAC_final(d->mac, out, &m, sizeof out))
        return openssl_fail(err, d->md ? "sha-256" : "hmac-sha256");
    crypto_hex(out, 32, d->hex);
    return RT_OK;
}

static void digest_results(void *self, RtResults *res)
{
    Digest *d = self;
    rt_results_str(res, "hex", d->hex);
    rt_results_int(res, "bytes", (int64_t)d->bytes);
}

static void digest_destroy(void *self)
{
    Digest *d = self;
    if (!d) return;
    EVP_MD_CTX_free(d->md);
    EVP_MAC_CTX_free(d->mac); /* cleanses the key */
    OPENSSL_cleanse(d, sizeof *d);
    free(d);
}

static const RtFilterOps sha256_filter_ops = {.name = "sha256",
                                              .observe = digest_observe,
                                              .results = digest_results,
                                              .destroy = digest_destroy};

RtFilter *crypto_sha256_filter(RtError *err)
{
    RtFilter *f = rt_filter_new();
    Digest *d = calloc(1, sizeof *d);
    if (!f || !d || !(d->md = EVP_MD_CTX_new())) {
        free(f);
        digest_destroy(d);
        nomem(err);
        return NULL;
    }
    if (!EVP_DigestInit_ex(d->md, EVP_sha256(), NULL)) {
        free(f);
        digest_destroy(d);
        openssl_fail(err, "sha-256 init");
        return NULL;
    }
    rt_filter_init(f, &sha256_filter_ops, d);
    return f;
}

static const RtFilterOps hmac_sha256_filter_ops = {.name = "hmac_sha256",
                                                   .observe = digest_observe,
                                                   .results = digest_results,
                                                   .destroy = digest_destroy};

RtFilter *crypto_hmac_sha256_filter(RtSecret *key, RtError *err)
{
    if (!key) {
        rt_error_set(err, RT_CLASS_USAGE, "usage.secret", "hmac_sha256 needs a key");
        return NULL;
    }
    RtFilter *f = rt_filter_new();
    Digest *d = calloc(1, sizeof *d);
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!f || !d || !mac || !(d->mac = EVP_MAC_CTX_new(mac))) {
        EVP_MAC_free(mac);
        rt_secret_free(key);
        free(f);
        digest_destroy(d);
        nomem(err);
        return NULL;
    }
    EVP_MAC_free(mac); /* the context keeps its own reference */
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    static const uint8_t empty[1];
    int ok = EVP_MAC_init(d->mac, key->len ? (const uint8_t *)key->data : empty, key->len, params);
    rt_secret_free(key);
    if (!ok) {
        free(f);
        digest_destroy(d);
        openssl_fail(err, "hmac-sha256 init");
        return NULL;
    }
    rt_filter_init(f, &hmac_sha256_filter_ops, d);
    return f;
}
