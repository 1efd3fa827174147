/*
 * Lua binding of the verify module — a placeholder until its issue lands: require "verify" returns
 * an empty table so scripts can be written against it.
 */
#include "lua_api.h"

int luaopen_verify(lua_State *L);

int luaopen_verify(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
