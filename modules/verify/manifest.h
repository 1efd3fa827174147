/*
 * Manifest authentication: an HMAC-SHA256 over the manifest's canonical text, under a key
 * derived from the archive passphrase with domain separation — never the encryption key itself.
 *
 *   key  = PBKDF2-HMAC-SHA256(passphrase, "clubio-dr/manifest/v1" || salt, iter, 32 bytes)
 *   hmac = HMAC-SHA256(key, text)
 *
 * The archive's own key and IV come from PBKDF2 over the 8-byte `Salted__` salt with no prefix,
 * so the two keys are independent even for the same passphrase; the manifest's salt (16 random
 * bytes) and iteration count are stored in the manifest.
 */
#ifndef VERIFY_MANIFEST_H
#define VERIFY_MANIFEST_H

#include "io/error.h"
#include "secret.h"

#include <stddef.h>
#include <stdint.h>

#define VERIFY_MANIFEST_DOMAIN "clubio-dr/manifest/v1"

/* Writes the HMAC as 64 lower-case hex digits + NUL into hex[65]. */
int verify_manifest_hmac(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], RtError *err);
/* Constant-time comparison of two strings of the same length (false when lengths differ). */
bool verify_equal_ct(const char *a, size_t alen, const char *b, size_t blen);

#endif
