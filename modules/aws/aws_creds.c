/*
 * The AWS credential chain, in the order botocore (the aws CLI) walks it:
 *   1. environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
 *   2. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN through STS
 *      AssumeRoleWithWebIdentity (endpoint AWS_ENDPOINT_URL_STS or sts.<region>.amazonaws.com)
 *   3. shared credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials), profile
 *      AWS_PROFILE or "default"
 *   4. shared config file (AWS_CONFIG_FILE, ~/.aws/config), [profile NAME] / [default]
 *   5. container credentials: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI, with
 *      AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)
 *   6. EC2 instance metadata (IMDSv2 token, then the role's credentials); endpoint
 *      AWS_EC2_METADATA_SERVICE_ENDPOINT; skipped when AWS_EC2_METADATA_DISABLED=true
 * Temporary credentials are refreshed from the same source 5 minutes before they expire.
 * Every secret is registered with the redactor as soon as it is read.
 */
#include "aws.h"
#include "aws_xml.h"

#include "runtime/log.h"
#include "runtime/redact.h"
#include "runtime/secret.h"
#include "runtime/timestamp.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef enum { SRC_ENV, SRC_WEB, SRC_CREDFILE, SRC_CONFIG, SRC_CONTAINER, SRC_IMDS } SrcKind;

struct AwsCredsProvider {
    pthread_mutex_t mu;
    SrcKind kind;
    char *profile;
    char *region;
    AwsCreds cur;
};

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void wipe_free(char *s)
{
    if (!s) return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

void aws_creds_clear(AwsCreds *c)
{
    wipe_free(c->access_key);
    wipe_free(c->secret_key);
    wipe_free(c->token);
    memset(c, 0, sizeof *c);
}

static void register_secrets(const AwsCreds *c)
{
    if (c->secret_key) rt_redact_register(c->secret_key, strlen(c->secret_key));
    if (c->token) rt_redact_register(c->token, strlen(c->token));
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

char *aws_json_string(const char *json, const char *name)
{
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\"", name);
    const char *p = strstr(json, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (isspace((unsigned char)*p)) p++;
    if (*p != ':') return NULL;
    p++;
    while (isspace((unsigned char)*p)) p++;
    SBuf b = {0};
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && p[1]) {
                p++;
                char c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'r' ? '\r' : *p;
                if (*p == 'u') { /* credentials are ASCII; keep the escape verbatim */
                    sb_add(&b, "\\u");
                    continue;
                }
                sb_addc(&b, c);
            } else
                sb_addc(&b, *p);
        }
        if (*p != '"') {
            sb_free(&b);
            return NULL;
        }
    } else {
        while (*p && *p != ',' && *p != '}' && !isspace((unsigned char)*p)) sb_addc(&b, *p++);
    }
    return sb_take(&b);
}

/* ---- shared files ---- */

static char *home_path(const char *env, const char *rel)
{
    const char *v = env_nonempty(env);
    if (v) return strdup(v);
    const char *home = getenv("HOME");
    if (!home) return NULL;
    SBuf b = {0};
    sb_addf(&b, "%s/%s", home, rel);
    return sb_take(&b);
}

/* Value of `key` in section `section` of an INI file (malloc'ed, NULL if absent). */
static char *ini_get(const char *path, const char *section, const char *key)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return NULL;
    char line[4096];
    bool in = false;
    char *val = NULL;
    while (!val && fgets(line, sizeof line, f)) {
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
        if (*s == '#' || *s == ';' || !*s) continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close) continue;
            *close = 0;
            char *name = s + 1;
            while (isspace((unsigned char)*name)) name++;
            char *ne = name + strlen(name);
            while (ne > name && isspace((unsigned char)ne[-1])) *--ne = 0;
            in = strcmp(name, section) == 0;
            continue;
        }
        if (!in) continue;
        char *eq = strchr(s, '=');
        if (!eq) continue;
        char *k = s, *ke = eq;
        while (ke > k && isspace((unsigned char)ke[-1])) ke--;
        *ke = 0;
        char *v = eq + 1;
        while (isspace((unsigned char)*v)) v++;
        if (strcmp(k, key) == 0) val = strdup(v);
    }
    OPENSSL_cleanse(line, sizeof line);
    fclose(f);
    return val;
}

static char *config_section(const char *profile)
{
    SBuf b = {0};
    if (strcmp(profile, "default") == 0)
        sb_add(&b, "default");
    else
        sb_addf(&b, "profile %s", profile);
    return sb_take(&b);
}

char *aws_config_region(const char *profile)
{
    char *path = home_path("AWS_CONFIG_FILE", ".aws/config");
    char *sec = config_section(profile ? profile : "default");
    char *r = sec ? ini_get(path, sec, "region") : NULL;
    free(path);
    free(sec);
    return r;
}

static bool from_file(const char *path, const char *section, AwsCreds *out)
{
    char *ak = ini_get(path, section, "aws_access_key_id");
    char *sk = ini_get(path, section, "aws_secret_access_key");
    if (!ak || !sk || !*ak || !*sk) {
        wipe_free(ak);
        wipe_free(sk);
        return false;
    }
    out->access_key = ak;
    out->secret_key = sk;
    out->token = ini_get(path, section, "aws_session_token");
    if (out->token && !*out->token) {
        free(out->token);
        out->token = NULL;
    }
    return true;
}

/* ---- HTTP sources ---- */

static int http_get_text(const char *method, const char *url, const char *const *hdrs,
                         const char *body, double timeout, const char *what, char **text,
                         long *status, RtError *err)
{
    RtHttp *h = rt_http_new(&(RtHttpOptions){.connect_timeout = timeout, .stall_timeout = 10});
    if (!h) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    RtHttpResponse r;
    rt_http_response_init(&r);
    RtHttpRequest rq = {.method = method,
                        .url = url,
                        .headers = hdrs,
                        .body = (const uint8_t *)body,
                        .body_len = body ? strlen(body) : 0,
                        .max_body = 64 << 10,
                        .total_timeout = timeout * 5};
    int rc = rt_http_do(h, &rq, &r, what, err);
    if (rc == RT_OK) {
        *status = r.status;
        *text = strdup(r.body ? (const char *)r.body : "");
        if (!*text) rc = rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    if (r.body) OPENSSL_cleanse(r.body, r.body_len);
    rt_http_response_free(&r);
    rt_http_free(h);
    return rc;
}

static int creds_from_json(const char *json, const char *what, AwsCreds *out, RtError *err)
{
    out->access_key = aws_json_string(json, "AccessKeyId");
    out->secret_key = aws_json_string(json, "SecretAccessKey");
    out->token = aws_json_string(json, "Token");
    char *exp = aws_json_string(json, "Expiration");
    out->expires = rt_iso8601_epoch(exp);
    free(exp);
    if (!out->access_key || !out->secret_key) {
        aws_creds_clear(out);
        return rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                            "the answer of %s holds no credentials", what);
    }
    register_secrets(out);
    return RT_OK;
}

static int fetch_web_identity(const char *region, AwsCreds *out, RtError *err)
{
    const char *file = env_nonempty("AWS_WEB_IDENTITY_TOKEN_FILE");
    const char *role = env_nonempty("AWS_ROLE_ARN");
    RtSecret *tok = rt_secret_from_file(file, err); /* registers the token for redaction */
    if (!tok) return RT_ERR;
    const char *session = env_nonempty("AWS_ROLE_SESSION_NAME");
    char sess_default[64];
    if (!session) {
        snprintf(sess_default, sizeof sess_default, "clubio-dr-%ld", (long)time(NULL));
        session = sess_default;
    }
    SBuf url = {0}, body = {0};
    const char *ep = env_nonempty("AWS_ENDPOINT_URL_STS");
    if (ep)
        sb_add(&url, ep);
    else
        sb_addf(&url, "https://sts.%s.amazonaws.com", region);
    if (url.len && url.p[url.len - 1] == '/') url.p[--url.len] = 0;
    sb_add(&url, "/");
    char *r = sigv4_uri_encode(role, strlen(role), false);
    char *s = sigv4_uri_encode(session, strlen(session), false);
    char *t = sigv4_uri_encode(tok->data, tok->len, false);
    if (r && s && t)
        sb_addf(&body,
                "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=%s&RoleSessionName=%s&"
                "WebIdentityToken=%s",
                r, s, t);
    free(r);
    free(s);
    wipe_free(t);
    rt_secret_free(tok);
    const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded",
                          "Accept: application/xml", NULL};
    char *text = NULL;
    long status = 0;
    int rc = (url.oom || body.oom)
                 ? rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory")
                 : http_get_text("POST", url.p, hdrs, body.p, 5, "sts AssumeRoleWithWebIdentity",
                                 &text, &status, err);
    if (body.p) OPENSSL_cleanse(body.p, body.len);
    sb_free(&body);
    if (rc == RT_OK) {
        AwsXmlSpan all = {text, strlen(text)};
        if (status != 200) {
            char *code = aws_xml_get(all, "Code");
            rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                         "sts AssumeRoleWithWebIdentity for role %s failed: http %ld %s", role,
                         status, code ? code : "");
            rt_error_hint(err, "check AWS_ROLE_ARN, the role's trust policy and the token in "
                               "AWS_WEB_IDENTITY_TOKEN_FILE");
            free(code);
            rc = RT_ERR;
        } else {
            out->access_key = aws_xml_get(all, "AccessKeyId");
            out->secret_key = aws_xml_get(all, "SecretAccessKey");
            out->token = aws_xml_get(all, "SessionToken");
            char *exp = aws_xml_get(all, "Expiration");
            out->expires = rt_iso8601_epoch(exp);
            free(exp);
            if (!out->access_key || !out->secret_key) {
                aws_creds_clear(out);
                rc = rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                                  "sts answered without credentials for role %s", role);
            } else
                register_secrets(out);
        }
        OPENSSL_cleanse(text, strlen(text));
    }
    free(text);
    sb_free(&url);
    return rc;
}

static int fetch_container(AwsCreds *out, RtError *err)
{
    SBuf url = {0}, auth = {0};
    const char *rel = env_nonempty("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    if (rel)
        sb_addf(&url, "http://169.254.170.2%s", rel);
    else
        sb_add(&url, env_nonempty("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
    const char *tok = env_nonempty("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    const char *tokfile = env_nonempty("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    RtSecret *ts = NULL;
    if (tokfile) {
        ts = rt_secret_from_file(tokfile, err);
        if (!ts) {
            sb_free(&url);
            return RT_ERR;
        }
        tok = ts->data;
    } else if (tok)
        rt_redact_register(tok, strlen(tok));
    if (tok) sb_addf(&auth, "Authorization: %s", tok);
    const char *hdrs[] = {auth.p ? auth.p : "Accept: application/json", NULL};
    char *text = NULL;
    long status = 0;
    int rc = http_get_text("GET", url.p ? url.p : "", hdrs, NULL, 2,
                           "container credentials endpoint", &text, &status, err);
    if (auth.p) OPENSSL_cleanse(auth.p, auth.len);
    sb_free(&auth);
    rt_secret_free(ts);
    if (rc == RT_OK && status != 200)
        rc = rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                          "the container credentials endpoint answered http %ld", status);
    if (rc == RT_OK) rc = creds_from_json(text, "the container credentials endpoint", out, err);
    if (text) OPENSSL_cleanse(text, strlen(text));
    free(text);
    sb_free(&url);
    return rc;
}

static int fetch_imds(AwsCreds *out, RtError *err)
{
    const char *ep = env_nonempty("AWS_EC2_METADATA_SERVICE_ENDPOINT");
    if (!ep) ep = "http://169.254.169.254";
    size_t el = strlen(ep);
    while (el && ep[el - 1] == '/') el--;
    SBuf u = {0};
    char *tok = NULL, *role = NULL, *json = NULL;
    long st = 0;
    int rc;
    sb_addf(&u, "%.*s/latest/api/token", (int)el, ep);
    const char *h1[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21600", NULL};
    rc = http_get_text("PUT", u.p, h1, "", 1, "instance metadata", &tok, &st, err);
    if (rc == RT_OK && st != 200)
        rc = rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                          "instance metadata token request answered http %ld", st);
    if (rc == RT_OK) {
        rt_redact_register(tok, strlen(tok));
        SBuf th = {0};
        sb_addf(&th, "X-aws-ec2-metadata-token: %s", tok);
        const char *h2[] = {th.p, NULL};
        u.len = 0;
        sb_addf(&u, "%.*s/latest/meta-data/iam/security-credentials/", (int)el, ep);
        rc = http_get_text("GET", u.p, h2, NULL, 1, "instance metadata", &role, &st, err);
        if (rc == RT_OK && (st != 200 || !*role))
            rc = rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                              "this instance has no IAM role (http %ld)", st);
        if (rc == RT_OK) {
            char *nl = strchr(role, '\n');
            if (nl) *nl = 0;
            u.len = 0;
            sb_addf(&u, "%.*s/latest/meta-data/iam/security-credentials/%s", (int)el, ep, role);
            rc = http_get_text("GET", u.p, h2, NULL, 1, "instance metadata", &json, &st, err);
            if (rc == RT_OK && st != 200)
                rc = rt_error_set(err, RT_CLASS_CONFIG, "s3.credentials",
                                  "instance metadata credentials answered http %ld", st);
            if (rc == RT_OK) rc = creds_from_json(json, "instance metadata", out, err);
        }
        OPENSSL_cleanse(th.p, th.len);
        sb_free(&th);
    }
    wipe_free(tok);
    free(role);
    wipe_free(json);
    sb_free(&u);
    return rc;
}

static const char *kind_name(SrcKind k)
{
    switch (k) {
    case SRC_ENV:
        return "environment";
    case SRC_WEB:
        return "web-identity";
    case SRC_CREDFILE:
        return "shared-credentials-file";
    case SRC_CONFIG:
        return "config-file";
    case SRC_CONTAINER:
        return "container";
    case SRC_IMDS:
        return "imds";
    }
    return "?";
}

static int fetch(AwsCredsProvider *p, SrcKind k, AwsCreds *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    int rc = RT_ERR;
    switch (k) {
    case SRC_ENV: {
        const char *ak = env_nonempty("AWS_ACCESS_KEY_ID"),
                   *sk = env_nonempty("AWS_SECRET_ACCESS_KEY");
        if (!ak || !sk) return RT_ERR;
        out->access_key = xstrdup(ak);
        out->secret_key = xstrdup(sk);
        out->token = xstrdup(env_nonempty("AWS_SESSION_TOKEN"));
        rc = RT_OK;
        break;
    }
    case SRC_WEB:
        rc = fetch_web_identity(p->region, out, err);
        break;
    case SRC_CREDFILE: {
        char *path = home_path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
        rc = from_file(path, p->profile, out) ? RT_OK : RT_ERR;
        free(path);
        break;
    }
    case SRC_CONFIG: {
        char *path = home_path("AWS_CONFIG_FILE", ".aws/config");
        char *sec = config_section(p->profile);
        rc = sec && from_file(path, sec, out) ? RT_OK : RT_ERR;
        free(sec);
        free(path);
        break;
    }
    case SRC_CONTAINER:
        rc = fetch_container(out, err);
        break;
    case SRC_IMDS:
        rc = fetch_imds(out, err);
        break;
    }
    if (rc == RT_OK) {
        snprintf(out->source, sizeof out->source, "%s", kind_name(k));
        register_secrets(out);
        if (out->expires > 0)
            rt_debug("s3 credentials from %s expire in %.0f s", out->source,
                     out->expires - rt_now());
    }
    return rc;
}

AwsCredsProvider *aws_creds_new(const char *profile, const char *region, RtError *err)
{
    AwsCredsProvider *p = calloc(1, sizeof *p);
    if (!p) {
        rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    /* Like botocore: a profile given explicitly (the client's `profile` option, the CLI's
     * --profile) skips the environment keys; AWS_PROFILE only picks the shared-file profile. */
    const bool profile_explicit = profile != NULL;
    if (!profile) profile = env_nonempty("AWS_PROFILE");
    p->profile = strdup(profile ? profile : "default");
    p->region = strdup(region ? region : "us-east-1");
    SrcKind order[6];
    int n = 0;
    if (!profile_explicit) order[n++] = SRC_ENV;
    if (env_nonempty("AWS_WEB_IDENTITY_TOKEN_FILE") && env_nonempty("AWS_ROLE_ARN"))
        order[n++] = SRC_WEB;
    order[n++] = SRC_CREDFILE;
    order[n++] = SRC_CONFIG;
    if (env_nonempty("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") ||
        env_nonempty("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        order[n++] = SRC_CONTAINER;
    const char *dis = getenv("AWS_EC2_METADATA_DISABLED");
    if (!(dis && strcasecmp(dis, "true") == 0)) order[n++] = SRC_IMDS;
    RtError last;
    rt_error_init(&last);
    for (int i = 0; i < n; i++) {
        RtError e;
        rt_error_init(&e);
        if (fetch(p, order[i], &p->cur, &e) == RT_OK) {
            p->kind = order[i];
            return p;
        }
        if (e.set && (order[i] == SRC_WEB || order[i] == SRC_CONTAINER)) {
            /* A configured source that fails is the answer, not a reason to fall through. */
            rt_error_copy(err, &e);
            aws_creds_free(p);
            return NULL;
        }
        if (e.set) rt_error_copy(&last, &e);
    }
    rt_error_set(err, RT_CLASS_CONFIG, "s3.no_credentials", "no AWS credentials found (profile %s)",
                 p->profile);
    rt_error_hint(
        err,
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials, "
        "or run with an IAM role%s%s",
        last.set ? "; instance metadata: " : "", last.set ? last.message : "");
    aws_creds_free(p);
    return NULL;
}

void aws_creds_free(AwsCredsProvider *p)
{
    if (!p) return;
    aws_creds_clear(&p->cur);
    free(p->profile);
    free(p->region);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

const char *aws_creds_source(AwsCredsProvider *p)
{
    return kind_name(p->kind);
}

int aws_creds_get(AwsCredsProvider *p, bool force, AwsCreds *out, RtError *err)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&p->mu);
    double now = rt_now();
    if ((force && p->kind != SRC_ENV) || (p->cur.expires > 0 && p->cur.expires - now < 300)) {
        AwsCreds fresh;
        RtError e;
        rt_error_init(&e);
        if (fetch(p, p->kind, &fresh, &e) == RT_OK) {
            aws_creds_clear(&p->cur);
            p->cur = fresh;
        } else if (p->cur.expires > 0 && p->cur.expires <= now) {
            pthread_mutex_unlock(&p->mu);
            if (!e.set)
                rt_error_set(&e, RT_CLASS_CONFIG, "s3.credentials",
                             "the %s credentials expired and could not be refreshed",
                             kind_name(p->kind));
            rt_error_copy(err, &e);
            return RT_ERR;
        } else {
            rt_warn("could not refresh the %s credentials (%s); using the current ones",
                    kind_name(p->kind), e.set ? e.message : "no answer");
        }
    }
    out->access_key = xstrdup(p->cur.access_key);
    out->secret_key = xstrdup(p->cur.secret_key);
    out->token = xstrdup(p->cur.token);
    out->expires = p->cur.expires;
    memcpy(out->source, p->cur.source, sizeof out->source);
    pthread_mutex_unlock(&p->mu);
    if (!out->access_key || !out->secret_key) {
        aws_creds_clear(out);
        return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    }
    return RT_OK;
}
