/*
 * The Lua `aws` module: one SigV4-signed request to an AWS JSON or XML API (ECS, SSM, Route53,
 * STS ...), with the same credential chain and signer as the s3 module. The work is aws.c's
 * (region, endpoint, credentials, signing; see aws.h); this binding reads the options and runs
 * the request through the http binding's helper.
 *
 *     local r = aws.request{service = "ecs", method = "POST", path = "/",
 *                           headers = {["X-Amz-Target"] =
 *                                        "AmazonEC2ContainerServiceV20141113.UpdateService",
 *                                      ["Content-Type"] = "application/x-amz-json-1.1"},
 *                           body = cjson.encode{cluster = "c", service = "s",
 *                                               taskDefinition = "t:3"}}
 *     if r.status ~= 200 then ... end
 *
 * Any HTTP status returns normally ({status, body, headers}); transport failures raise a
 * retryable error. The signature and credentials never reach a log line.
 */
#include "aws.h"
#include "http_lua.h"
#include "lua_api.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define AWS_CALL_MT "clubio.aws_call"

int luaopen_aws(lua_State *L);

/* What one aws.request owns while it runs; freed by __gc whether it returns or raises. */
typedef struct AwsLuaCall {
    AwsCall call;
    SigV4Param *query;
    char **user_headers;
    RtHttp *h;
    RtHttpResponse rs;
} AwsLuaCall;

static int call_gc(lua_State *L)
{
    AwsLuaCall *c = lua_touserdata(L, 1);
    aws_call_free(&c->call);
    free(c->query);
    rt_lua_http_headers_free(c->user_headers);
    rt_http_response_free(&c->rs);
    rt_http_free(c->h);
    memset(c, 0, sizeof *c);
    return 0;
}

static int l_request(lua_State *L)
{
    static const char *const allowed[] = {"service", "region",  "endpoint", "method",
                                          "path",    "query",   "headers",  "body",
                                          "timeout", "profile", "max_body", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "aws.request", allowed);
    lua_settop(L, 1);
    AwsLuaCall *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    rt_http_response_init(&c->rs);
    static const luaL_Reg meta[] = {{"__gc", call_gc}, {NULL, NULL}};
    rt_lua_class(L, AWS_CALL_MT, meta, NULL);
    lua_setmetatable(L, -2);

    /* option strings stay alive in the option table */
    AwsRequest rq = {.service = rt_lua_opt_string(L, 1, "service", NULL),
                     .profile = rt_lua_opt_string(L, 1, "profile", NULL),
                     .region = rt_lua_opt_string(L, 1, "region", NULL),
                     .endpoint = rt_lua_opt_string(L, 1, "endpoint", NULL),
                     .method = rt_lua_opt_string(L, 1, "method", NULL),
                     .path = rt_lua_opt_string(L, 1, "path", NULL)};
    RtError err;
    rt_error_init(&err);
    if (aws_call_resolve(&c->call, &rq, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1)) rq.body = (const uint8_t *)luaL_checklstring(L, -1, &rq.body_len);
    lua_pop(L, 1); /* still referenced by the option table */
    double timeout = rt_lua_opt_number(L, 1, "timeout", 30);
    lua_Integer max_body = rt_lua_opt_integer(L, 1, "max_body", 4 << 20);
    if (timeout <= 0 || max_body <= 0)
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                           "aws.request: timeout and max_body must be positive");

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
        if (!c->query)
            return rt_lua_fail(L, RT_CLASS_FAILURE, RT_CODE_NOMEM, NULL, "out of memory");
        rq.query = c->query;
        lua_pushnil(L);
        while (lua_next(L, qi)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", "write numbers as strings",
                                   "aws.request: query must map strings to strings");
            c->query[rq.n_query].name = lua_tostring(L, -2);
            c->query[rq.n_query].value = lua_tostring(L, -1);
            rq.n_query++;
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, qi)) {
        return rt_lua_fail(L, RT_CLASS_USAGE, "aws.usage", NULL,
                           "aws.request: query must be a table");
    }

    rt_lua_http_headers(L, 1, "aws.request", &c->user_headers);
    rq.headers = (const char *const *)c->user_headers;
    if (aws_call_sign(&c->call, &rq, &err) != RT_OK) return rt_lua_raise(L, &err);
    c->call.http.max_body = (size_t)max_body;
    return rt_lua_http_perform(L, &c->h, &c->call.http, &c->rs, timeout, c->call.what);
}

int luaopen_aws(lua_State *L)
{
    static const luaL_Reg f[] = {{"request", l_request}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
