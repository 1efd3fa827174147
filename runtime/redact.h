/*
 * Redaction of secrets in text that leaves the process (log lines, error messages, journals).
 *
 * Replaced by "***": every registered secret value (rt_redact_register), the password inside
 * postgres:// and postgresql:// URLs (and any scheme://user:password@host URL), values of
 * AWS secret keys / session tokens / Neon API keys / passwords in "NAME=value" or JSON
 * "name": "value" form, and Bearer tokens. Thread-safe.
 */
#ifndef RT_REDACT_H
#define RT_REDACT_H

#include <stddef.h>

/* Registers a value to redact (copied; values shorter than 4 bytes are ignored). */
void rt_redact_register(const char *value, size_t len);
/* Registers the values of the environment variables that hold secrets (AWS_SECRET_ACCESS_KEY,
 * AWS_SESSION_TOKEN, NEON_API_KEY, BACKUP_ENCRYPTION_KEY, PGPASSWORD, ...). */
void rt_redact_register_env(void);
void rt_redact_forget_all(void);
/* Writes the redacted form of `in` into out (always NUL-terminated, truncated to cap-1).
 * Returns out. */
char *rt_redact(const char *in, char *out, size_t cap);
/* Returns a malloc'ed redacted copy (NULL on ENOMEM). */
char *rt_redact_dup(const char *in);

#endif
