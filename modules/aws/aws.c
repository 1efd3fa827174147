/*
 * One SigV4-signed request to an AWS JSON or XML API — see aws.h.
 *
 * Region: the request's, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1.
 * Endpoint: the request's, AWS_ENDPOINT_URL_<SERVICE> (the AWS SDKs' variable, e.g.
 * AWS_ENDPOINT_URL_ECS, AWS_ENDPOINT_URL_ROUTE_53), else the public endpoint
 * https://<service>.<region>.amazonaws.com (Route53 is global: route53.amazonaws.com, signed for
 * us-east-1). The general AWS_ENDPOINT_URL is deliberately not used: in this project it points
 * at the S3 server.
 *
 * Every header given is signed, with host, x-amz-date and (temporary credentials)
 * x-amz-security-token. The signature and credentials never reach a message.
 */
#include "aws.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int usage(RtError *err, const char *hint, const char *fmt, const char *arg)
{
    rt_error_set(err, RT_CLASS_USAGE, "aws.usage", fmt, arg);
    if (hint) rt_error_hint(err, "%s", hint);
    return RT_ERR;
}

static int oom(RtError *err)
{
    return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "aws.request: out of memory");
}

int aws_call_resolve(AwsCall *c, const AwsRequest *rq, RtError *err)
{
    const char *service = rq->service;
    if (!service || !*service)
        return usage(err, "give service = \"ecs\" (or ssm, route53...)",
                     "aws.request: service is required%s", "");
    for (const char *p = service; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
            return usage(err, NULL, "aws.request: service %s must be a lower-case AWS service name",
                         service);
    bool global = strcmp(service, "route53") == 0;
    const char *region = rq->region;
    if (!region) region = env_nonempty("AWS_REGION");
    if (!region) region = env_nonempty("AWS_DEFAULT_REGION");
    if (!region) region = c->region_cfg = aws_config_region(rq->profile);
    if (!region) region = "us-east-1";
    c->region = region;
    c->sign_region = global ? "us-east-1" : region;

    char envname[96];
    const char *endpoint = rq->endpoint;
    if (!endpoint) {
        snprintf(envname, sizeof envname, "AWS_ENDPOINT_URL_%s", global ? "ROUTE_53" : service);
        for (char *p = envname; *p; p++) *p = (*p == '-') ? '_' : (char)toupper((unsigned char)*p);
        endpoint = env_nonempty(envname);
    }
    if (endpoint)
        snprintf(c->base, sizeof c->base, "%s", endpoint);
    else if (global)
        snprintf(c->base, sizeof c->base, "https://route53.amazonaws.com");
    else
        snprintf(c->base, sizeof c->base, "https://%s.%s.amazonaws.com", service, region);
    size_t bl = strlen(c->base);
    while (bl && c->base[bl - 1] == '/') c->base[--bl] = 0;
    const char *hs = strstr(c->base, "://");
    if (!hs || (strncmp(c->base, "http://", 7) != 0 && strncmp(c->base, "https://", 8) != 0) ||
        !hs[3] || strchr(hs + 3, '/'))
        return usage(err, "give the endpoint as scheme://host[:port], without a path",
                     "aws.request: endpoint %s is not a URL like https://host[:port]", c->base);
    c->host = hs + 3;

    c->path = rq->path ? rq->path : "/";
    if (c->path[0] != '/')
        return usage(err, NULL, "aws.request: path %s must start with /", c->path);
    snprintf(c->what, sizeof c->what, "%s at %s", service, c->host);
    return RT_OK;
}

static bool add_line(AwsCall *c, size_t *n, const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 3;
    if (!(c->lines[*n] = malloc(len))) return false;
    snprintf(c->lines[*n], len, "%s: %s", name, value);
    (*n)++;
    return true;
}

int aws_call_sign(AwsCall *c, const AwsRequest *rq, RtError *err)
{
    c->method = rq->method ? rq->method : rq->body ? "POST" : "GET";
    size_t n_user = 0;
    while (rq->headers && rq->headers[n_user]) n_user++;

    c->prov = aws_creds_new(rq->profile, c->region, err);
    if (!c->prov || aws_creds_get(c->prov, false, &c->creds, err) != RT_OK) return RT_ERR;

    char amz_date[17], payload[65];
    sigv4_amz_date(time(NULL), amz_date);
    sigv4_sha256_hex(rq->body ? (const void *)rq->body : "", rq->body_len, payload);

    /* signed headers: host, x-amz-date, token, and every user header */
    c->hdr = calloc(n_user + 3, sizeof *c->hdr);
    c->lines = calloc(n_user + 3, sizeof *c->lines);
    c->names = calloc(n_user + 1, sizeof *c->names);
    if (!c->hdr || !c->lines || !c->names) return oom(err);
    size_t nh = 0, nl = 0;
    c->hdr[nh++] = (SigV4Param){"host", c->host};
    c->hdr[nh++] = (SigV4Param){"x-amz-date", amz_date};
    if (!add_line(c, &nl, "X-Amz-Date", amz_date)) return oom(err);
    if (c->creds.token) {
        c->hdr[nh++] = (SigV4Param){"x-amz-security-token", c->creds.token};
        if (!add_line(c, &nl, "X-Amz-Security-Token", c->creds.token)) return oom(err);
    }
    for (size_t i = 0; i < n_user; i++) {
        const char *line = rq->headers[i];
        const char *colon = strchr(line, ':'); /* "Name: value" */
        if (!colon) return usage(err, NULL, "aws.request: header line %s has no ':'", line);
        if (!(c->names[i] = strndup(line, (size_t)(colon - line)))) return oom(err);
        const char *name = c->names[i], *value = colon + 1;
        if (*value == ' ') value++;
        if (!strcasecmp(name, "host") || !strcasecmp(name, "x-amz-date") ||
            !strcasecmp(name, "authorization"))
            return usage(err, NULL, "aws.request: header %s is set by the signer", name);
        c->hdr[nh++] = (SigV4Param){name, value};
        if (!add_line(c, &nl, name, value)) return oom(err);
    }
    SigV4Request sr = {.method = c->method,
                       .path = c->path,
                       .double_encode = true,
                       .query = rq->query,
                       .n_query = rq->n_query,
                       .headers = c->hdr,
                       .n_headers = nh,
                       .payload_hash = payload,
                       .region = c->sign_region,
                       .service = rq->service,
                       .amz_date = amz_date};
    SigV4Credentials cr = {c->creds.access_key, c->creds.secret_key, c->creds.token};
    if (sigv4_sign(&sr, &cr, &c->sig) != 0)
        return rt_error_set(err, RT_CLASS_FAILURE, "aws.sign", "aws.request: signing failed");
    if (!add_line(c, &nl, "Authorization", c->sig.authorization)) return oom(err);
    c->lines[nl] = NULL;

    size_t ul = strlen(c->base) + strlen(c->sig.encoded_path) + strlen(c->sig.canonical_query) + 2;
    if (!(c->url = malloc(ul))) return oom(err);
    snprintf(c->url, ul, "%s%s%s%s", c->base, c->sig.encoded_path,
             c->sig.canonical_query[0] ? "?" : "", c->sig.canonical_query);
    c->http = (RtHttpRequest){.method = c->method,
                              .url = c->url,
                              .headers = (const char *const *)c->lines,
                              .body = rq->body,
                              .body_len = rq->body_len};
    return RT_OK;
}

void aws_call_free(AwsCall *c)
{
    if (!c) return;
    aws_creds_free(c->prov);
    aws_creds_clear(&c->creds);
    sigv4_result_free(&c->sig);
    free(c->hdr);
    for (size_t i = 0; c->names && c->names[i]; i++) free(c->names[i]);
    free(c->names);
    for (size_t i = 0; c->lines && c->lines[i]; i++) free(c->lines[i]);
    free(c->lines);
    free(c->url);
    free(c->region_cfg);
    memset(c, 0, sizeof *c);
}
