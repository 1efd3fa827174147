/*
 * RtSecret — a secret value (passphrase, key, password) held in locked-down memory.
 *
 * Secrets come from an environment variable, a file or a value handed over by a script; they
 * never come from argv. Creating one registers it with the redactor (redact.h), so it is
 * replaced by "***" in every log line and error message. rt_secret_free() wipes the bytes
 * (OPENSSL_cleanse) before freeing them.
 */
#ifndef RT_SECRET_H
#define RT_SECRET_H

#include "io/error.h"
#include <stddef.h>

typedef struct RtSecret {
    char *data; /* NUL-terminated */
    size_t len;
    char origin[96]; /* "environment variable BACKUP_ENCRYPTION_KEY", "file /etc/x" — no value */
} RtSecret;

RtSecret *rt_secret_from_env(const char *name, RtError *err);  /* missing/empty: CONFIG error */
RtSecret *rt_secret_from_file(const char *path, RtError *err); /* one trailing newline dropped */
RtSecret *rt_secret_from_value(const char *data, size_t len, const char *origin, RtError *err);
RtSecret *rt_secret_dup(const RtSecret *s, RtError *err);
void rt_secret_free(RtSecret *s); /* wipes; NULL-safe */

#endif
