/*
 * Manifest authentication — see manifest.h.
 */
#include "manifest.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

int verify_manifest_hmac(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], RtError *err)
{
    if (iter < 1 || saltlen > 64)
        return rt_error_set(err, RT_CLASS_USAGE, "verify.kdf", "invalid manifest KDF parameters");
    uint8_t dsalt[sizeof VERIFY_MANIFEST_DOMAIN + 64];
    size_t dl = sizeof VERIFY_MANIFEST_DOMAIN - 1;
    memcpy(dsalt, VERIFY_MANIFEST_DOMAIN, dl);
    memcpy(dsalt + dl, salt, saltlen);
    uint8_t key[32], mac[32];
    unsigned int maclen = 0;
    int ok = PKCS5_PBKDF2_HMAC(pass->data, (int)pass->len, dsalt, (int)(dl + saltlen), iter,
                               EVP_sha256(), sizeof key, key) == 1 &&
             HMAC(EVP_sha256(), key, sizeof key, text, len, mac, &maclen) != NULL && maclen == 32;
    OPENSSL_cleanse(key, sizeof key);
    if (!ok)
        return rt_error_set(err, RT_CLASS_FAILURE, "verify.hmac",
                            "cannot compute the manifest HMAC");
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    return RT_OK;
}

bool verify_equal_ct(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return false;
    return CRYPTO_memcmp(a, b, alen) == 0;
}
