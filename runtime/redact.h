/*
 * Redaction of secrets in text that leaves the process (log lines, error messages, journals).
 *
 * Replaced by "***": every registered secret value (and the forms of a URL that is one)
 * (rt_redact_register; a short one only as a whole word, see RT_REDACT_WHOLE_WORD), the password
 * inside postgres:// and postgresql:// URLs (and any scheme://user:password@host URL), values of
 * AWS secret keys / session tokens / Neon API keys / passwords in "NAME=value" or JSON
 * "name": "value" form, and Bearer tokens. Thread-safe.
 */
#ifndef RT_REDACT_H
#define RT_REDACT_H

#include <stdbool.h>
#include <stddef.h>

/* Values shorter than this are replaced only where they stand as a whole word: not inside a
 * longer word (letters, digits, '_' and non-ASCII bytes make a word), so that a short secret
 * does not turn "check NEON_API_KEY" into "check NEON_***_KEY". Still never printed alone. */
#define RT_REDACT_WHOLE_WORD 8
/* Shorter values are not registered at all (they would mask ordinary words everywhere). */
#define RT_REDACT_MIN 4

/* Registers a value to redact (copied; values shorter than RT_REDACT_MIN bytes are ignored). An
 * http(s) URL brings the forms it is printed in: user:password and the password, the URL without
 * its query, its path and path segments of 16 characters or more, the query string and each
 * parameter's value; never the host alone. */
void rt_redact_register(const char *value, size_t len);
/* True once per registered value shorter than RT_REDACT_WHOLE_WORD (or once per call for one
 * too short to register): the caller, which knows where the value comes from, warns then. */
bool rt_redact_short_unwarned(const char *value, size_t len);
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
