/*
 * Lua binding of the neon module — a placeholder until its issue lands: require "neon" returns
 * an empty table so scripts can be written against it.
 */
#include "lua_api.h"

int luaopen_neon(lua_State *L);

int luaopen_neon(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
