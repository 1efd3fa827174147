/*
 * Redaction — see redact.h. Two passes over the text: registered secret values are replaced
 * wherever they occur (short ones where they stand as a whole word); then patterns that carry
 * secrets by their shape (URL passwords, name=value pairs with secret-looking names, Bearer tokens,
 * Neon "napi_" keys) are masked.
 */
#include "redact.h"

#include <ctype.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#define MAX_SECRETS 256
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_secrets[MAX_SECRETS];
static size_t g_secret_len[MAX_SECRETS];
static bool g_warned[MAX_SECRETS];
static int g_n;

static void register_one(const char *value, size_t len)
{
    if (!value || len < RT_REDACT_MIN) return;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < g_n; i++)
        if (g_secret_len[i] == len && memcmp(g_secrets[i], value, len) == 0) goto out;
    if (g_n < MAX_SECRETS) {
        char *copy = malloc(len + 1);
        if (copy) {
            memcpy(copy, value, len);
            copy[len] = '\0';
            g_secrets[g_n] = copy;
            g_warned[g_n] = false;
            g_secret_len[g_n++] = len;
        }
    }
out:
    pthread_mutex_unlock(&g_mu);
}

/* The forms in which an http(s) URL that is a secret gets printed, registered with it: a webhook's
 * secret may be its query (?code=...), its path (Slack's /services/T/B/XXXX) or its user:password,
 * and messages print a URL without its query (http.c's debug lines), a host with its userinfo, a
 * query alone. The host alone is never registered: it is not secret, and masking it would damage
 * ordinary messages. */
static void register_url_forms(const char *u, size_t n)
{
    size_t s = n > 7 && strncasecmp(u, "http://", 7) == 0    ? 7
               : n > 8 && strncasecmp(u, "https://", 8) == 0 ? 8
                                                             : 0;
    if (!s) return;
    size_t auth_end = s;
    while (auth_end < n && u[auth_end] != '/' && u[auth_end] != '?' && u[auth_end] != '#')
        auth_end++;
    const char *at = NULL;
    for (size_t k = s; k < auth_end; k++)
        if (u[k] == '@') at = u + k;
    if (at) {
        /* user:password, and the password alone */
        register_one(u + s, (size_t)(at - (u + s)));
        const char *colon = memchr(u + s, ':', (size_t)(at - (u + s)));
        if (colon) register_one(colon + 1, (size_t)(at - colon - 1));
    }
    size_t path_end = auth_end;
    while (path_end < n && u[path_end] != '?' && u[path_end] != '#') path_end++;
    if (path_end - auth_end > 1) {
        /* a path beyond "/": the URL without its query, the path, and its long segments (a
         * token such as Slack's last segment, printed alone) */
        if (path_end < n) register_one(u, path_end);
        register_one(u + auth_end, path_end - auth_end);
        for (size_t k = auth_end + 1; k < path_end;) {
            size_t e = k;
            while (e < path_end && u[e] != '/') e++;
            if (e - k >= 16) register_one(u + k, e - k);
            k = e + 1;
        }
    }
    if (path_end < n && u[path_end] == '?') {
        /* the query string, and each parameter's value */
        size_t q_end = path_end + 1;
        while (q_end < n && u[q_end] != '#') q_end++;
        register_one(u + path_end + 1, q_end - path_end - 1);
        for (size_t k = path_end + 1; k < q_end;) {
            size_t e = k;
            while (e < q_end && u[e] != '&') e++;
            const char *eq = memchr(u + k, '=', e - k);
            if (eq) register_one(eq + 1, (size_t)(u + e - eq - 1));
            k = e + 1;
        }
    }
}

void rt_redact_register(const char *value, size_t len)
{
    register_one(value, len);
    if (value) register_url_forms(value, len);
}

bool rt_redact_short_unwarned(const char *value, size_t len)
{
    if (!value || len >= RT_REDACT_WHOLE_WORD) return false;
    if (len < RT_REDACT_MIN) return true;
    bool first = false;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < g_n; i++)
        if (g_secret_len[i] == len && memcmp(g_secrets[i], value, len) == 0) {
            first = !g_warned[i];
            g_warned[i] = true;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    return first;
}

static const char *const SECRET_ENV[] = {
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "NEON_API_KEY",
    "BACKUP_ENCRYPTION_KEY", "PGPASSWORD",        "SLACK_WEBHOOK_URL",
    "ALERT_WEBHOOK_URL",     "DR_WEBHOOK_URL",    NULL};

void rt_redact_register_env(void)
{
    for (int i = 0; SECRET_ENV[i]; i++) {
        const char *v = getenv(SECRET_ENV[i]);
        if (v) rt_redact_register(v, strlen(v));
    }
}

void rt_redact_forget_all(void)
{
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < g_n; i++) {
        OPENSSL_cleanse(g_secrets[i], g_secret_len[i]);
        free(g_secrets[i]);
    }
    g_n = 0;
    pthread_mutex_unlock(&g_mu);
}

/* ---- a bounded output writer ------------------------------------------------------------ */

typedef struct Out {
    char *p;
    size_t len, cap;
} Out;

static void put(Out *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n && o->len + 1 < o->cap; i++) o->p[o->len++] = s[i];
    o->p[o->len] = '\0';
}

static const char MASK[] = "***";

/* Names whose value is a secret when written name=value / name: value / "name":"value". */
static bool secret_name(const char *name, size_t n)
{
    static const char *const words[] = {"password",   "passwd",         "secret", "token",
                                        "passphrase", "api_key",        "apikey", "api-key",
                                        "signature",  "encryption_key", NULL};
    for (int w = 0; words[w]; w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= n; i++)
            if (strncasecmp(name + i, words[w], wl) == 0) return true;
    }
    return false;
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.';
}
static bool is_value_end(char c)
{
    return c == '\0' || isspace((unsigned char)c) || c == '"' || c == '\'' || c == '&' ||
           c == ',' || c == ';' || c == '}' || c == ')';
}

static void pattern_pass(const char *in, Out *o)
{
    size_t n = strlen(in);
    size_t i = 0;
    while (i < n) {
        /* scheme://user:password@host */
        if (in[i] == ':' && i + 2 < n && in[i + 1] == '/' && in[i + 2] == '/') {
            size_t start = i + 3, end = start;
            while (end < n && !isspace((unsigned char)in[end]) && in[end] != '"' && in[end] != '\'')
                end++;
            size_t at = 0;
            bool found_at = false;
            for (size_t k = start; k < end; k++)
                if (in[k] == '@') {
                    at = k;
                    found_at = true;
                }
            if (found_at) {
                const char *colon = memchr(in + start, ':', at - start);
                if (colon) {
                    size_t c = (size_t)(colon - in);
                    put(o, in + i, c + 1 - i);
                    put(o, MASK, 3);
                    i = at;
                    continue;
                }
            }
            put(o, in + i, 3);
            i += 3;
            continue;
        }
        /* Bearer tokens */
        if ((i == 0 || !is_name_char(in[i - 1])) && strncasecmp(in + i, "bearer ", 7) == 0) {
            put(o, in + i, 7);
            i += 7;
            size_t k = i;
            while (k < n && !is_value_end(in[k])) k++;
            if (k > i) put(o, MASK, 3);
            i = k;
            continue;
        }
        /* Neon API keys */
        if ((i == 0 || !is_name_char(in[i - 1])) && strncmp(in + i, "napi_", 5) == 0) {
            size_t k = i + 5;
            while (k < n && isalnum((unsigned char)in[k])) k++;
            if (k - i > 12) {
                put(o, MASK, 3);
                i = k;
                continue;
            }
        }
        /* name=value, name: value, "name": "value" */
        if (is_name_char(in[i]) && (i == 0 || !is_name_char(in[i - 1]))) {
            size_t k = i;
            while (k < n && is_name_char(in[k])) k++;
            size_t name_end = k;
            size_t v = k;
            if (v < n && in[v] == '"') v++; /* closing quote of a JSON key */
            while (v < n && in[v] == ' ') v++;
            bool sep = v < n && (in[v] == '=' || in[v] == ':');
            if (sep && secret_name(in + i, name_end - i)) {
                v++;
                while (v < n && in[v] == ' ') v++;
                bool quoted = v < n && (in[v] == '"' || in[v] == '\'');
                char q = quoted ? in[v] : 0;
                size_t vs = quoted ? v + 1 : v, ve = vs;
                if (quoted) {
                    while (ve < n && in[ve] != q) {
                        if (in[ve] == '\\' && ve + 1 < n) ve++;
                        ve++;
                    }
                } else {
                    while (ve < n && !is_value_end(in[ve])) ve++;
                }
                if (ve > vs) {
                    put(o, in + i, vs - i);
                    put(o, MASK, 3);
                    i = ve;
                    continue;
                }
            }
            put(o, in + i, name_end - i);
            i = name_end;
            continue;
        }
        put(o, in + i, 1);
        i++;
    }
}

/* A byte of a word, for a short secret's whole-word match: letters, digits, '_' (identifiers
 * such as NEON_API_KEY are one word) and any byte of a non-ASCII UTF-8 character. */
static bool word_char(char c)
{
    unsigned char u = (unsigned char)c;
    return isalnum(u) || u == '_' || u >= 0x80;
}

char *rt_redact(const char *in, char *out, size_t cap)
{
    if (!out || cap == 0) return out;
    out[0] = '\0';
    if (!in) return out;
    /* pass 1: registered values (the longest match at each place; a short one only as a whole
     * word), into a temporary buffer */
    size_t n = strlen(in);
    char *tmp = malloc(n * 2 + 4);
    if (!tmp) { /* cannot allocate: do not risk printing a secret */
        snprintf(out, cap, "%s", "(message withheld: out of memory)");
        return out;
    }
    Out t = {tmp, 0, n * 2 + 4};
    tmp[0] = '\0';
    pthread_mutex_lock(&g_mu);
    size_t i = 0;
    while (i < n) {
        int hit = -1;
        for (int s = 0; s < g_n; s++)
            if (g_secret_len[s] <= n - i && memcmp(in + i, g_secrets[s], g_secret_len[s]) == 0 &&
                (hit < 0 || g_secret_len[s] > g_secret_len[hit]) &&
                (g_secret_len[s] >= RT_REDACT_WHOLE_WORD ||
                 ((i == 0 || !word_char(in[i - 1])) &&
                  (i + g_secret_len[s] == n || !word_char(in[i + g_secret_len[s]])))))
                hit = s;
        if (hit >= 0) {
            put(&t, MASK, 3);
            i += g_secret_len[hit];
        } else {
            put(&t, in + i, 1);
            i++;
        }
    }
    pthread_mutex_unlock(&g_mu);
    Out o = {out, 0, cap};
    pattern_pass(tmp, &o);
    OPENSSL_cleanse(tmp, t.cap);
    free(tmp);
    return out;
}

char *rt_redact_dup(const char *in)
{
    size_t cap = (in ? strlen(in) : 0) * 2 + 16; /* "***" may outgrow a short secret */
    char *out = malloc(cap);
    if (out) rt_redact(in, out, cap);
    return out;
}
