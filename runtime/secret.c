/*
 * RtSecret — see secret.h.
 */
#include "secret.h"
#include "log.h"
#include "redact.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

RtSecret *rt_secret_from_value(const char *data, size_t len, const char *origin, RtError *err)
{
    RtSecret *s = calloc(1, sizeof *s);
    char *d = malloc(len + 1);
    if (!s || !d) {
        free(s);
        free(d);
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    memcpy(d, data, len);
    d[len] = '\0';
    s->data = d;
    s->len = len;
    snprintf(s->origin, sizeof s->origin, "%s", origin ? origin : "a secret value");
    rt_redact_register(d, len);
    if (rt_redact_short_unwarned(d, len)) {
        if (len < RT_REDACT_MIN)
            rt_warn("the secret from %s is shorter than %d characters and cannot be hidden in "
                    "messages: use a longer one",
                    s->origin, RT_REDACT_MIN);
        else
            rt_warn("the secret from %s is shorter than %d characters: messages hide it only where "
                    "it stands as a whole word; use a longer one",
                    s->origin, RT_REDACT_WHOLE_WORD);
    }
    return s;
}

RtSecret *rt_secret_from_env(const char *name, RtError *err)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        rt_error_set(err, RT_CLASS_CONFIG, "config.missing_env",
                     "environment variable %s is not set", name);
        rt_error_hint(err, "export %s=... (or give the secret through a file)", name);
        return NULL;
    }
    char origin[96];
    snprintf(origin, sizeof origin, "environment variable %s", name);
    return rt_secret_from_value(v, strlen(v), origin, err);
}

RtSecret *rt_secret_from_file(const char *path, RtError *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        rt_error_errno(err, "open", errno, "cannot read secret file %s", path);
        return NULL;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    bool too_big = n == sizeof buf && fgetc(f) != EOF;
    fclose(f);
    if (too_big) {
        OPENSSL_cleanse(buf, sizeof buf);
        rt_error_set(err, RT_CLASS_CONFIG, "config.secret_file",
                     "secret file %s is larger than 8 KiB", path);
        return NULL;
    }
    if (n && buf[n - 1] == '\n') n--;
    if (n && buf[n - 1] == '\r') n--;
    if (n == 0) {
        rt_error_set(err, RT_CLASS_CONFIG, "config.secret_file", "secret file %s is empty", path);
        return NULL;
    }
    char origin[96];
    snprintf(origin, sizeof origin, "file %.80s", path);
    RtSecret *s = rt_secret_from_value(buf, n, origin, err);
    OPENSSL_cleanse(buf, sizeof buf);
    return s;
}

RtSecret *rt_secret_dup(const RtSecret *s, RtError *err)
{
    return rt_secret_from_value(s->data, s->len, s->origin, err);
}

void rt_secret_free(RtSecret *s)
{
    if (!s) return;
    if (s->data) {
        OPENSSL_cleanse(s->data, s->len);
        free(s->data);
    }
    free(s);
}
