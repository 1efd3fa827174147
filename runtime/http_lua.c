/*
 * The Lua `http` module: one small HTTP request for webhooks and JSON APIs (alerts, health
 * checks), over the host's libcurl wrapper (http.h).
 *
 *     local r = http.request{method = "POST", url = secret.env("SLACK_WEBHOOK_URL"),
 *                            headers = {["Content-Type"] = "application/json"},
 *                            body = cjson.encode{text = "backup failed"}, timeout = 10}
 *     if r.status ~= 200 then ... end   -- r.body, r.headers["content-type"]
 *
 * Any HTTP status returns normally; transport failures (refused, reset, timed out, TLS) raise a
 * structured, retryable error. The URL may be a secret (a Slack webhook URL is a credential):
 * then errors and logs name only its scheme and host. Bodies are held in memory (capped at
 * `max_body`, default 1 MiB): this is for API calls, never for the bytes of a backup.
 */
#include "http_lua.h"

#include "http.h"
#include "lua_api.h"
#include "secret.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rt_lua_http_headers(lua_State *L, int opt_idx, const char *what, char ***out)
{
    *out = NULL;
    lua_getfield(L, opt_idx, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", "give headers as {[\"Name\"] = \"value\"}",
                    "%s: headers must be a table", what);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        n++;
        lua_pop(L, 1);
    }
    char **h = calloc(n + 1, sizeof *h);
    if (!h) rt_lua_fail(L, RT_CLASS_FAILURE, RT_CODE_NOMEM, NULL, "%s: out of memory", what);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
            rt_lua_http_headers_free(h);
            rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", "give headers as {[\"Name\"] = \"value\"}",
                        "%s: header names and values must be strings", what);
        }
        const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
        if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n")) {
            rt_lua_http_headers_free(h);
            rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", NULL,
                        "%s: header %s has a line break or colon in it", what, k);
        }
        size_t len = strlen(k) + strlen(v) + 3;
        h[i] = malloc(len);
        if (!h[i]) {
            rt_lua_http_headers_free(h);
            rt_lua_fail(L, RT_CLASS_FAILURE, RT_CODE_NOMEM, NULL, "%s: out of memory", what);
        }
        snprintf(h[i], len, "%s: %s", k, v);
        i++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *out = h;
    return (int)n;
}

void rt_lua_http_headers_free(char **h)
{
    if (!h) return;
    for (char **p = h; *p; p++) free(*p);
    free(h);
}

void rt_lua_http_push_response(lua_State *L, const RtHttpResponse *rs)
{
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, rs->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, rs->body ? (const char *)rs->body : "", rs->body ? rs->body_len : 0);
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, rs->body_truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushnumber(L, rs->seconds);
    lua_setfield(L, -2, "seconds");
    lua_createtable(L, 0, (int)rs->n_headers);
    for (size_t i = 0; i < rs->n_headers; i++) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (const char *p = rs->headers[i].name; *p; p++)
            luaL_addchar(&b, (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p));
        luaL_pushresult(&b);
        lua_pushstring(L, rs->headers[i].value ? rs->headers[i].value : "");
        lua_settable(L, -3);
    }
    lua_setfield(L, -2, "headers");
}

int rt_lua_http_perform(lua_State *L, RtHttp **h, const RtHttpRequest *rq, RtHttpResponse *rs,
                        double timeout, const char *what)
{
    RtHttpOptions ho = {.connect_timeout = timeout < 10 ? timeout : 10,
                        .stall_timeout = timeout,
                        .total_timeout = timeout};
    *h = rt_http_new(&ho);
    if (!*h) return rt_lua_fail(L, RT_CLASS_FAILURE, "http.init", NULL, "libcurl init failed");
    RtError err;
    rt_error_init(&err);
    if (rt_http_do(*h, rq, rs, what, &err) != RT_OK) return rt_lua_raise(L, &err);
    rt_lua_http_push_response(L, rs);
    return 1;
}

typedef struct HttpCall {
    RtHttp *h;
    RtHttpResponse rs;
    char **headers;
    RtSecret *url_secret;
} HttpCall;

static int call_gc(lua_State *L)
{
    HttpCall *c = lua_touserdata(L, 1);
    rt_http_response_free(&c->rs);
    rt_http_free(c->h);
    rt_lua_http_headers_free(c->headers);
    rt_secret_free(c->url_secret);
    memset(c, 0, sizeof *c);
    return 0;
}

/* "https://hooks.example.com/services/..." -> "https://hooks.example.com" */
static void scheme_host(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    size_t pre = (size_t)(p - url);
    snprintf(out, cap, "%.*s%.*s", (int)pre, url, (int)n, p);
}

static int l_request(lua_State *L)
{
    static const char *const allowed[] = {"method",  "url",      "headers", "body",
                                          "timeout", "max_body", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "http.request", allowed);
    lua_settop(L, 1);

    /* Everything that must be freed lives in a userdata with __gc/__close, so a raise anywhere
     * below leaks nothing. */
    HttpCall *c = lua_newuserdatauv(L, sizeof *c, 0); /* index 2 */
    memset(c, 0, sizeof *c);
    rt_http_response_init(&c->rs);
    static const luaL_Reg meta[] = {{"__gc", call_gc}, {NULL, NULL}};
    rt_lua_class(L, "clubio.http_call", meta, NULL);
    lua_setmetatable(L, -2);

    lua_getfield(L, 1, "url");
    const char *url;
    char what[300];
    if (lua_type(L, -1) == LUA_TSTRING) {
        url = lua_tostring(L, -1);
        scheme_host(url, what, sizeof what);
        lua_pop(L, 1);
    } else if (lua_isnil(L, -1)) {
        return rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", "give url = \"https://...\"",
                           "http.request: url is required");
    } else {
        c->url_secret = rt_lua_to_secret(L, lua_gettop(L), "http.request url");
        lua_pop(L, 1);
        url = c->url_secret->data;
        scheme_host(url, what, sizeof what);
    }
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", "use an http:// or https:// URL",
                           "http.request: %s is not an http(s) URL", what);

    const char *method = rt_lua_opt_string(L, 1, "method", NULL);
    size_t body_len = 0;
    lua_getfield(L, 1, "body");
    const char *body = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &body_len);
    /* the body string stays referenced from the option table */
    lua_pop(L, 1);
    if (!method) method = body ? "POST" : "GET";
    double timeout = rt_lua_opt_number(L, 1, "timeout", 30);
    lua_Integer max_body = rt_lua_opt_integer(L, 1, "max_body", 1 << 20);
    if (timeout <= 0 || max_body <= 0)
        return rt_lua_fail(L, RT_CLASS_USAGE, "http.usage", NULL,
                           "http.request: timeout and max_body must be positive");
    rt_lua_http_headers(L, 1, "http.request", &c->headers);

    RtHttpRequest rq = {.method = method,
                        .url = url,
                        .headers = (const char *const *)c->headers,
                        .body = (const uint8_t *)body,
                        .body_len = body_len,
                        .max_body = (size_t)max_body};
    return rt_lua_http_perform(L, &c->h, &rq, &c->rs, timeout, what);
}

int luaopen_http(lua_State *L)
{
    static const luaL_Reg f[] = {{"request", l_request}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
