/*
 * Lua binding of the crypto module — a placeholder until its issue lands: require "crypto" returns
 * an empty table so scripts can be written against it.
 */
#include "lua_api.h"

int luaopen_crypto(lua_State *L);

int luaopen_crypto(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
