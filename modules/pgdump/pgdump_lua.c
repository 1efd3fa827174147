/*
 * Lua binding of the pgdump module — a placeholder until its issue lands: require "pgdump" returns
 * an empty table so scripts can be written against it.
 */
#include "lua_api.h"

int luaopen_pgdump(lua_State *L);

int luaopen_pgdump(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
