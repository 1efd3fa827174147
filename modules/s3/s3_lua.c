/*
 * Lua binding of the s3 module — a placeholder until its issue lands: require "s3" returns
 * an empty table so scripts can be written against it.
 */
#include "lua_api.h"

int luaopen_s3(lua_State *L);

int luaopen_s3(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
