/*
 * Manifest authentication — see manifest.h.
 */
#include "manifest.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

static void to_hex(const uint8_t *b, size_t n, char *hex)
{
    for (size_t i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", b[i]);
}

int verify_manifest_auth(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], char check_hex[65],
                         RtError *err)
{
    if (iter < 1 || saltlen > 64)
        return rt_error_set(err, RT_CLASS_USAGE, "verify.kdf", "invalid manifest KDF parameters");
    uint8_t dsalt[sizeof VERIFY_MANIFEST_DOMAIN + 64];
    size_t dl = sizeof VERIFY_MANIFEST_DOMAIN - 1;
    memcpy(dsalt, VERIFY_MANIFEST_DOMAIN, dl);
    memcpy(dsalt + dl, salt, saltlen);
    uint8_t key[32], mac[32], chk[32];
    unsigned int maclen = 32, chklen = 32;
    int ok = PKCS5_PBKDF2_HMAC(pass->data, (int)pass->len, dsalt, (int)(dl + saltlen), iter,
                               EVP_sha256(), sizeof key, key) == 1;
    if (ok && text)
        ok = HMAC(EVP_sha256(), key, sizeof key, text, len, mac, &maclen) != NULL && maclen == 32;
    if (ok && check_hex)
        ok = HMAC(EVP_sha256(), key, sizeof key, (const uint8_t *)VERIFY_MANIFEST_KEY_CHECK_LABEL,
                  sizeof VERIFY_MANIFEST_KEY_CHECK_LABEL - 1, chk, &chklen) != NULL &&
             chklen == 32;
    OPENSSL_cleanse(key, sizeof key);
    if (!ok)
        return rt_error_set(err, RT_CLASS_FAILURE, "verify.hmac",
                            "cannot compute the manifest HMAC");
    if (text && hex) to_hex(mac, 32, hex);
    if (check_hex) to_hex(chk, 32, check_hex);
    return RT_OK;
}

int verify_manifest_hmac(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], RtError *err)
{
    return verify_manifest_auth(pass, salt, saltlen, iter, text, len, hex, NULL, err);
}

bool verify_equal_ct(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return false;
    return CRYPTO_memcmp(a, b, alen) == 0;
}
