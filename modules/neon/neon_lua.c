/*
 * Lua binding of the neon module: `neon.client{api_key=, host=, project_id=, timeout=}`.
 *
 * The HTTP core (neon.c: one call with Neon's retry rules) is exposed to an embedded Lua chunk
 * (neon_client.lua, embedded as neon_client_lua.h) that implements the client's operations on
 * top of it: names, pagination, waiting for operations, errors. This file owns the client
 * userdata ("clubio.neon") and turns core errors into structured Lua errors.
 */
#include "io/cancel.h"
#include "lua_api.h"
#include "neon.h"
#include "redact.h"

#include <stdlib.h>
#include <string.h>

#include "neon_client_lua.h"

#define NEON_MT "clubio.neon"

int luaopen_neon(lua_State *L);

typedef struct LNeon {
    NeonClient *c;
    double timeout;
} LNeon;

static LNeon *check_client(lua_State *L, int idx)
{
    LNeon *n = luaL_checkudata(L, idx, NEON_MT);
    if (!n->c) luaL_error(L, "neon client is closed");
    return n;
}

static int client_gc(lua_State *L)
{
    LNeon *n = luaL_checkudata(L, 1, NEON_MT);
    neon_client_free(n->c);
    n->c = NULL;
    return 0;
}

/* C.new(opts) -> handle, host, project_id */
static int l_new(lua_State *L)
{
    static const char *const allowed[] = {
        "api_key", "api_key_env", "api_key_file", "host", "project_id", "timeout", NULL};
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "neon.client", allowed);
    const char *host = rt_lua_opt_string(L, 1, "host", NULL);
    if (!host) host = getenv("NEON_API_HOST");
    if (!host || !*host) host = "https://console.neon.tech/api/v2";
    const char *project = rt_lua_opt_string(L, 1, "project_id", NULL);
    if (!project) project = getenv("NEON_PROJECT_ID");
    if (!project || !*project)
        rt_lua_fail(L, RT_CLASS_CONFIG, "neon.project_id",
                    "set NEON_PROJECT_ID or pass neon.client{project_id = ...}",
                    "no neon project id given");
    /* NEON_API_TIMEOUT lets a cron job or a runbook bound every call without editing scripts. */
    const char *te = getenv("NEON_API_TIMEOUT");
    double timeout = rt_lua_opt_number(L, 1, "timeout", te && *te ? strtod(te, NULL) : 600);
    if (timeout <= 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.neon_timeout", NULL,
                    "neon.client: timeout (or NEON_API_TIMEOUT) must be positive seconds");
    /* Userdata first (closed), then the resources: a raise in between leaks nothing. */
    LNeon *n = lua_newuserdatauv(L, sizeof *n, 0);
    n->c = NULL;
    n->timeout = timeout;
    luaL_setmetatable(L, NEON_MT);
    RtSecret *key = rt_lua_opt_secret(L, 1, "api_key", "NEON_API_KEY", "neon.client");
    RtError err;
    rt_error_init(&err);
    NeonOptions o = {.host = host, .key = key, .timeout = timeout};
    n->c = neon_client_new(&o, &err);
    rt_secret_free(key);
    if (!n->c) return rt_lua_raise(L, &err);
    lua_pushstring(L, neon_client_host(n->c));
    lua_pushstring(L, project);
    return 3;
}

/* C.request(handle, method, path, body|nil, what, accept) -> status, body */
static int l_request(lua_State *L)
{
    LNeon *n = check_client(L, 1);
    const char *method = luaL_checkstring(L, 2);
    const char *path = luaL_checkstring(L, 3);
    const char *body = luaL_optstring(L, 4, NULL);
    const char *what = luaL_optstring(L, 5, NULL);
    long accept = (long)luaL_optinteger(L, 6, 0);
    NeonResponse r;
    RtError err;
    rt_error_init(&err);
    if (neon_request(n->c, method, path, body, what, accept, &r, &err) != RT_OK) {
        neon_response_free(&r);
        return rt_lua_raise(L, &err);
    }
    lua_pushinteger(L, r.status);
    lua_pushlstring(L, r.body, r.len);
    neon_response_free(&r);
    return 2;
}

static int l_timeout(lua_State *L)
{
    lua_pushnumber(L, check_client(L, 1)->timeout);
    return 1;
}

static RtErrorClass class_of(const char *s)
{
    if (strcmp(s, "usage") == 0) return RT_CLASS_USAGE;
    if (strcmp(s, "config") == 0) return RT_CLASS_CONFIG;
    if (strcmp(s, "timeout") == 0) return RT_CLASS_TIMEOUT;
    return RT_CLASS_FAILURE;
}

/* C.fail(class, code, hint, message) — never returns */
static int l_fail(lua_State *L)
{
    RtError err;
    rt_error_init(&err);
    rt_error_set(&err, class_of(luaL_checkstring(L, 1)), luaL_checkstring(L, 2), "%s",
                 luaL_checkstring(L, 4));
    const char *hint = luaL_optstring(L, 3, "");
    if (*hint) rt_error_hint(&err, "%s", hint);
    return rt_lua_raise(L, &err);
}

/* C.check(opts, what, {allowed...}) */
static int l_check(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) return 0;
    if (!lua_istable(L, 1))
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.options", NULL, "%s: option table expected, got %s",
                    luaL_checkstring(L, 2), luaL_typename(L, 1));
    luaL_checktype(L, 3, LUA_TTABLE);
    const char *allowed[16];
    int k = 0;
    for (lua_Integer i = 1; k < 15; i++) {
        if (lua_rawgeti(L, 3, i) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        allowed[k++] = lua_tostring(L, -1); /* stays valid: the table holds the string */
        lua_pop(L, 1);
    }
    allowed[k] = NULL;
    rt_lua_check_options(L, 1, luaL_checkstring(L, 2), allowed);
    return 0;
}

/* C.secret_uri(uri) -> uri, with the URI and its password registered for redaction. */
static int l_secret_uri(lua_State *L)
{
    size_t len;
    const char *uri = luaL_checklstring(L, 1, &len);
    rt_redact_register(uri, len);
    const char *at = strchr(uri, '@');
    const char *scheme = strstr(uri, "://");
    if (at && scheme && scheme < at) {
        const char *colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
        if (colon && at > colon + 1) rt_redact_register(colon + 1, (size_t)(at - colon - 1));
    }
    lua_settop(L, 1);
    return 1;
}

int luaopen_neon(lua_State *L)
{
    static const luaL_Reg meta[] = {{"__gc", client_gc}, {"__close", client_gc}, {NULL, NULL}};
    rt_lua_class(L, NEON_MT, meta, NULL);
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, neon_client_lua, sizeof neon_client_lua - 1, "=neon_client.lua", "t") !=
        LUA_OK)
        return lua_error(L);
    static const luaL_Reg c[] = {
        {"new", l_new},   {"request", l_request}, {"timeout", l_timeout},
        {"fail", l_fail}, {"check", l_check},     {"secret_uri", l_secret_uri},
        {NULL, NULL}};
    luaL_newlib(L, c);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_call(L, 2, 1); /* the chunk returns the module table */
    return 1;
}
