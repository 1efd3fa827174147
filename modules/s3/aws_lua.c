/*
 * The Lua `aws` module: one SigV4-signed request to an AWS JSON or XML API (ECS, SSM, Route53,
 * STS ...), with the same credential chain and signer as the s3 module.
 *
 *     local r = aws.request{service = "ecs", method = "POST", path = "/",
 *                           headers = {["X-Amz-Target"] =
 * "AmazonEC2ContainerServiceV20141113.UpdateService",
 *                                      ["Content-Type"] = "application/x-amz-json-1.1"},
 *                           body = cjson.encode{cluster = "c", service = "s", taskDefinition =
 * "t:3"}} if r.status ~= 200 then ... end
 *
 * Region: the `region` option, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1.
 * Endpoint: the `endpoint` option, AWS_ENDPOINT_URL_<SERVICE> (the AWS SDKs' variable, e.g.
 * AWS_ENDPOINT_URL_ECS, AWS_ENDPOINT_URL_ROUTE_53), else the public endpoint
 * https://<service>.<region>.amazonaws.com (Route53 is global: route53.amazonaws.com, signed for
 * us-east-1). The general AWS_ENDPOINT_URL is deliberately not used: in this project it points
 * at the S3 server.
 *
 * Every header given is signed, with host, x-amz-date and (temporary credentials)
 * x-amz-security-token. Any HTTP status returns normally ({status, body, headers}); transport
 * failures raise a retryable error. The signature and credentials never reach a log line.
 */
#include "host.h"
#include "http_lua.h"
#include "lua_api.h"
#include "s3_internal.h"
#include "sigv4.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct AwsCall {
    S3CredsProvider *prov;
    S3Creds creds;
    SigV4Result sig;
    SigV4Param *query;
    size_t n_query;
    SigV4Param *hdr;
    char **user_headers;
    char **lines;
    char *url;
    char *region_cfg;
    RtHttp *h;
    RtHttpResponse rs;
} AwsCall;

static int call_gc(lua_State *L)
{
    AwsCall *c = lua_touserdata(L, 1);
    s3_creds_free(c->prov);
    s3_creds_clear(&c->creds);
    sigv4_result_free(&c->sig);
    free(c->query);
    free(c->hdr);
    rt_lua_http_headers_free(c->user_headers);
    rt_lua_http_headers_free(c->lines);
    free(c->url);
    free(c->region_cfg);
    rt_http_response_free(&c->rs);
    rt_http_free(c->h);
    memset(c, 0, sizeof *c);
    return 0;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static void push_line(lua_State *L, char **lines, size_t *n, const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 3;
    lines[*n] = malloc(len);
    if (!lines[*n]) rt_lua_fail(L, RT_CLASS_FAILURE, "aws.oom", NULL, "aws.request: out of memory");
    snprintf(lines[*n], len, "%s: %s", name, value);
    (*n)++;
}

static int l_request(lua_State *L)
{
    static const char *const allowed[] = {"service", "region",  "endpoint", "method",
                                          "path",    "query",   "headers",  "body",
                                          "timeout", "profile", "max_body", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "aws.request", allowed);
    lua_settop(L, 1);
    AwsCall *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    rt_http_response_init(&c->rs);
    if (luaL_newmetatable(L, "clubio.aws_call")) {
        lua_pushcfunction(L, call_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);

    const char *service = rt_lua_opt_string(L, 1, "service", NULL);
    if (!service || !*service)
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage",
                           "give service = \"ecs\" (or ssm, route53...)",
                           "aws.request: service is required");
    for (const char *p = service; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
            return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                               "aws.request: service %s must be a lower-case AWS service name",
                               service);
    bool global = strcmp(service, "route53") == 0;
    const char *profile = rt_lua_opt_string(L, 1, "profile", NULL);
    const char *region = rt_lua_opt_string(L, 1, "region", NULL);
    if (!region) region = env_nonempty("AWS_REGION");
    if (!region) region = env_nonempty("AWS_DEFAULT_REGION");
    if (!region) region = c->region_cfg = s3_config_region(profile);
    if (!region) region = "us-east-1";
    const char *sign_region = global ? "us-east-1" : region;

    /* the endpoint */
    char envname[96], base[512];
    const char *endpoint = rt_lua_opt_string(L, 1, "endpoint", NULL);
    if (!endpoint) {
        snprintf(envname, sizeof envname, "AWS_ENDPOINT_URL_%s", global ? "ROUTE_53" : service);
        for (char *p = envname; *p; p++) *p = (*p == '-') ? '_' : (char)toupper((unsigned char)*p);
        endpoint = env_nonempty(envname);
    }
    if (endpoint)
        snprintf(base, sizeof base, "%s", endpoint);
    else if (global)
        snprintf(base, sizeof base, "https://route53.amazonaws.com");
    else
        snprintf(base, sizeof base, "https://%s.%s.amazonaws.com", service, region);
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/') base[--bl] = 0;
    const char *hs = strstr(base, "://");
    if (!hs || (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) || !hs[3] ||
        strchr(hs + 3, '/'))
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage",
                           "give the endpoint as scheme://host[:port], without a path",
                           "aws.request: endpoint %s is not a URL like https://host[:port]", base);
    const char *host = hs + 3;

    const char *method = rt_lua_opt_string(L, 1, "method", NULL);
    const char *path = rt_lua_opt_string(L, 1, "path", "/");
    if (path[0] != '/')
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                           "aws.request: path %s must start with /", path);
    size_t body_len = 0;
    lua_getfield(L, 1, "body");
    const char *body = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &body_len);
    lua_pop(L, 1); /* still referenced by the option table */
    if (!method) method = body ? "POST" : "GET";
    double timeout = rt_lua_opt_number(L, 1, "timeout", 30);
    lua_Integer max_body = rt_lua_opt_integer(L, 1, "max_body", 4 << 20);
    if (timeout <= 0 || max_body <= 0)
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                           "aws.request: timeout and max_body must be positive");

    /* query parameters: strings stay alive in the option table */
    lua_getfield(L, 1, "query");
    int qi = lua_gettop(L);
    if (lua_istable(L, qi)) {
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, qi)) {
            n++;
            lua_pop(L, 1);
        }
        c->query = calloc(n ? n : 1, sizeof *c->query);
        if (!c->query) return rt_lua_fail(L, RT_CLASS_FAILURE, "aws.oom", NULL, "out of memory");
        lua_pushnil(L);
        while (lua_next(L, qi)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", "write numbers as strings",
                                   "aws.request: query must map strings to strings");
            c->query[c->n_query].name = lua_tostring(L, -2);
            c->query[c->n_query].value = lua_tostring(L, -1);
            c->n_query++;
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, qi)) {
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                           "aws.request: query must be a table");
    }

    int n_user = rt_lua_http_headers(L, 1, "aws.request", &c->user_headers);

    /* credentials */
    RtError err;
    rt_error_init(&err);
    c->prov = s3_creds_new(profile, region, &err);
    if (!c->prov || s3_creds_get(c->prov, false, &c->creds, &err) != RT_OK)
        return rt_lua_raise(L, &err);

    char amz_date[17], payload[65];
    sigv4_amz_date(time(NULL), amz_date);
    sigv4_sha256_hex(body ? body : "", body_len, payload);

    /* signed headers: host, x-amz-date, token, and every user header */
    c->hdr = calloc((size_t)n_user + 3, sizeof *c->hdr);
    c->lines = calloc((size_t)n_user + 3, sizeof *c->lines);
    if (!c->hdr || !c->lines)
        return rt_lua_fail(L, RT_CLASS_FAILURE, "aws.oom", NULL, "out of memory");
    size_t nh = 0, nl = 0;
    c->hdr[nh++] = (SigV4Param){"host", host};
    c->hdr[nh++] = (SigV4Param){"x-amz-date", amz_date};
    push_line(L, c->lines, &nl, "X-Amz-Date", amz_date);
    if (c->creds.token) {
        c->hdr[nh++] = (SigV4Param){"x-amz-security-token", c->creds.token};
        push_line(L, c->lines, &nl, "X-Amz-Security-Token", c->creds.token);
    }
    for (int i = 0; i < n_user; i++) {
        char *line = c->user_headers[i];
        char *colon = strchr(line, ':'); /* "Name: value" built by rt_lua_http_headers */
        *colon = 0;
        const char *name = line, *value = colon + 2;
        if (!strcasecmp(name, "host") || !strcasecmp(name, "x-amz-date") ||
            !strcasecmp(name, "authorization"))
            return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                               "aws.request: header %s is set by the signer", name);
        c->hdr[nh++] = (SigV4Param){name, value};
        push_line(L, c->lines, &nl, name, value);
    }
    SigV4Request rq = {.method = method,
                       .path = path,
                       .double_encode = true,
                       .query = c->query,
                       .n_query = c->n_query,
                       .headers = c->hdr,
                       .n_headers = nh,
                       .payload_hash = payload,
                       .region = sign_region,
                       .service = service,
                       .amz_date = amz_date};
    SigV4Credentials cr = {c->creds.access_key, c->creds.secret_key, c->creds.token};
    if (sigv4_sign(&rq, &cr, &c->sig) != 0)
        return rt_lua_fail(L, RT_CLASS_FAILURE, "aws.sign", NULL, "aws.request: signing failed");
    push_line(L, c->lines, &nl, "Authorization", c->sig.authorization);
    c->lines[nl] = NULL;

    size_t ul = strlen(base) + strlen(c->sig.encoded_path) + strlen(c->sig.canonical_query) + 2;
    c->url = malloc(ul);
    if (!c->url) return rt_lua_fail(L, RT_CLASS_FAILURE, "aws.oom", NULL, "out of memory");
    snprintf(c->url, ul, "%s%s%s%s", base, c->sig.encoded_path,
             c->sig.canonical_query[0] ? "?" : "", c->sig.canonical_query);

    RtHttpRequest hr = {.method = method,
                        .url = c->url,
                        .headers = (const char *const *)c->lines,
                        .body = (const uint8_t *)body,
                        .body_len = body_len,
                        .max_body = (size_t)max_body};
    char what[160];
    snprintf(what, sizeof what, "%s at %s", service, host);
    return rt_lua_http_perform(L, &c->h, &hr, &c->rs, timeout, what);
}

int luaopen_aws(lua_State *L)
{
    static const luaL_Reg f[] = {{"request", l_request}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
