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

int luaopen_http(lua_State *L);

#endif
