/*
 * Helpers shared by the Lua bindings that make one HTTP request from an option table and
 * return {status, body, headers, seconds, truncated}: the `http` module and `aws.request`.
 */
#ifndef RT_HTTP_LUA_H
#define RT_HTTP_LUA_H

#include "http.h"

#include <lua.h>

/* Reads option table opt_idx's `headers` ({Name = value}) into a NULL-terminated array of
 * malloc'ed "Name: value" lines (*out, NULL when absent); raises on bad input. Returns the count.
 */
int rt_lua_http_headers(lua_State *L, int opt_idx, const char *what, char ***out);
void rt_lua_http_headers_free(char **h); /* NULL-safe */
/* Pushes {status, body, truncated, seconds, headers = {lower-cased name = value}}. */
void rt_lua_http_push_response(lua_State *L, const RtHttpResponse *rs);
/* Runs one request of a binding: makes *h (owned by the caller's userdata, freed by its __gc)
 * with `timeout` as connect (at most 10 s), stall and total limit, runs rq into *rs, raises on a
 * transport failure, else pushes the response table. Returns 1 (values pushed). */
int rt_lua_http_perform(lua_State *L, RtHttp **h, const RtHttpRequest *rq, RtHttpResponse *rs,
                        double timeout, const char *what);

int luaopen_http(lua_State *L);

#endif
