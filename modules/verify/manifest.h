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
 *
 * The key check tells a wrong passphrase from an altered manifest:
 *
 *   key_check = HMAC-SHA256(key, "clubio-dr/manifest/key-check/v1")
 *
 * It depends on the passphrase only (through the same PBKDF2), not on the manifest's text: when
 * it matches and the HMAC does not, the passphrase is right and the text was changed. It gives a
 * guesser nothing the HMAC does not already give (each guess still costs the PBKDF2).
 */
#ifndef VERIFY_MANIFEST_H
#define VERIFY_MANIFEST_H

#include "io/error.h"
#include "secret.h"

#include <stddef.h>
#include <stdint.h>

#define VERIFY_MANIFEST_DOMAIN "clubio-dr/manifest/v1"

#define VERIFY_MANIFEST_KEY_CHECK_LABEL "clubio-dr/manifest/key-check/v1"

/* Writes the HMAC as 64 lower-case hex digits + NUL into hex[65]. */
int verify_manifest_hmac(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], RtError *err);
/* One key derivation, both values: the HMAC of text (skipped when text is NULL; hex may then be
 * NULL) and the key check, each as 64 hex digits + NUL. */
int verify_manifest_auth(const RtSecret *pass, const uint8_t *salt, size_t saltlen, int iter,
                         const void *text, size_t len, char hex[65], char check_hex[65],
                         RtError *err);
/* Constant-time comparison of two strings of the same length (false when lengths differ). */
bool verify_equal_ct(const char *a, size_t alen, const char *b, size_t blen);

#endif
