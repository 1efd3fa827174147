/*
 * Lua binding of the verify module: the C primitives (a SQL scan that recomputes per-table row
 * counts and digests from a dump stream, the manifest HMAC), then the Lua half of the module
 * (scripts/lib/clubio/verify_ext.lua: manifests, archive verification, restore tests,
 * freshness) added to the same table.
 *
 *   local r = pipe.run{c:download{...}, crypto.decrypt{}, crypto.gunzip{}, verify.sql_scan()}
 *   r.sqlscan.tables["public.users"].rows
 */
#include "history.h"
#include "io/cancel.h"
#include "log.h"
#include "lua_api.h"
#include "manifest.h"
#include "sqlscan.h"

#include <stdlib.h>
#include <string.h>

int luaopen_verify(lua_State *L);

static const char *const SCAN_OPTIONS[] = {"label", "row_digests", NULL};

/* verify.sql_scan{label=, row_digests=false} -> sink */
static int l_sql_scan(lua_State *L)
{
    rt_lua_check_options(L, 1, "verify.sql_scan", SCAN_OPTIONS);
    RtError err;
    rt_error_init(&err);
    RtSink *k = sqlscan_sink(rt_lua_opt_boolean(L, 1, "row_digests", false), &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* verify.sql_scan_filter{label=, row_digests=false} -> observing filter */
static int l_sql_scan_filter(lua_State *L)
{
    rt_lua_check_options(L, 1, "verify.sql_scan_filter", SCAN_OPTIONS);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = sqlscan_filter(rt_lua_opt_boolean(L, 1, "row_digests", false), &err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* verify.manifest_hmac{text=, salt=HEX, iter=N, passphrase= | passphrase_env= | passphrase_file=}
 * -> hmac, key_check (64 hex digits each; hmac is nil without text). The passphrase defaults
 * to BACKUP_ENCRYPTION_KEY. One key derivation gives both (see manifest.h). */
static int l_manifest_hmac(lua_State *L)
{
    static const char *const allowed[] = {
        "text", "salt", "iter", "passphrase", "passphrase_env", "passphrase_file", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "verify.manifest_hmac", allowed);
    lua_getfield(L, 1, "text");
    size_t len = 0;
    const char *text = lua_tolstring(L, -1, &len);
    if (!text && !lua_isnil(L, -1))
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                    "verify.manifest_hmac: text must be a string");
    const char *salt_hex = rt_lua_opt_string(L, 1, "salt", NULL);
    size_t sl = salt_hex ? strlen(salt_hex) : 0;
    uint8_t salt[64];
    if (!salt_hex || sl % 2 || sl / 2 > sizeof salt)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                    "verify.manifest_hmac: salt must be hex, at most 64 bytes");
    for (size_t i = 0; i < sl / 2; i++) {
        int hi = hexval(salt_hex[2 * i]), lo = hexval(salt_hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                        "verify.manifest_hmac: salt is not hex");
        salt[i] = (uint8_t)(hi * 16 + lo);
    }
    lua_Integer iter = rt_lua_opt_integer(L, 1, "iter", 10000);
    if (iter < 1 || iter > 10000000)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                    "verify.manifest_hmac: iter out of range");
    RtSecret *pass =
        rt_lua_opt_secret(L, 1, "passphrase", "BACKUP_ENCRYPTION_KEY", "verify.manifest_hmac");
    char hex[65], check[65];
    RtError err;
    rt_error_init(&err);
    int rc = verify_manifest_auth(pass, salt, sl / 2, (int)iter, text, len, hex, check, &err);
    rt_secret_free(pass);
    if (rc != RT_OK) return rt_lua_raise(L, &err);
    if (text)
        lua_pushstring(L, hex);
    else
        lua_pushnil(L);
    lua_pushstring(L, check);
    return 2;
}

/* verify.equal(a, b): constant-time string comparison (for digests and HMACs). */
static int l_equal(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al), *b = luaL_checklstring(L, 2, &bl);
    lua_pushboolean(L, verify_equal_ct(a, al, b, bl));
    return 1;
}

/* verify.protect(body, cleanup): runs body(); then, whatever happened, cleanup(ok, result_or_err);
 * then returns body's result or raises its error. Cleanup runs even when the run was cancelled
 * (SIGINT, --timeout): the host's cancel hook would raise at the first Lua instruction of the
 * cleanup, so the cancel flag is held back while it runs and set again afterwards — the cancel
 * still reaches the top right after. This is how a restore test always removes its scratch
 * database or branch. A second Ctrl-C still exits at once (the host's _exit). If cleanup
 * itself fails, its error is raised when the body succeeded, else logged. */
static int l_protect(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_pushvalue(L, 1);
    int body_rc = lua_pcall(L, 0, 1, 0); /* [3] = result or error */
    RtErrorClass held = RT_CLASS_CANCELLED;
    bool was_cancelled = rt_cancelled();
    if (was_cancelled) {
        RtError e;
        rt_error_init(&e);
        rt_cancel_error(&e);
        held = e.klass;
        rt_cancel_reset();
    }
    lua_pushvalue(L, 2);
    lua_pushboolean(L, body_rc == LUA_OK);
    lua_pushvalue(L, 3);
    int clean_rc = lua_pcall(L, 2, 0, 0); /* [4] = cleanup's error, if any */
    if (was_cancelled) rt_cancel(held);
    if (body_rc != LUA_OK) {
        if (clean_rc != LUA_OK) {
            const char *m = luaL_tolstring(L, 4, NULL);
            rt_warn("verify: cleanup failed too: %s", m);
            lua_pop(L, 1);
        }
        lua_pushvalue(L, 3);
        return lua_error(L);
    }
    if (clean_rc != LUA_OK) return lua_error(L);
    lua_pushvalue(L, 3);
    return 1;
}

/* verify.append_line(path, text): one write(2) on an O_APPEND file (the history); raises. */
static int l_append_line(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    RtError err;
    rt_error_init(&err);
    if (verify_append_line(path, text, len, &err) != RT_OK) return rt_lua_raise(L, &err);
    return 0;
}

int luaopen_verify(lua_State *L)
{
    static const luaL_Reg f[] = {{"sql_scan", l_sql_scan},
                                 {"sql_scan_filter", l_sql_scan_filter},
                                 {"manifest_hmac", l_manifest_hmac},
                                 {"equal", l_equal},
                                 {"protect", l_protect},
                                 {"append_line", l_append_line},
                                 {NULL, NULL}};
    luaL_newlib(L, f);
    /* The Lua half extends the same table: require("clubio.verify_ext")(M). */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "clubio.verify_ext");
    lua_call(L, 1, 1);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 0);
    return 1;
}
