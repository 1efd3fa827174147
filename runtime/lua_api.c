/*
 * The binding API for native modules — see lua_api.h.
 *
 * A stage in Lua is a "clubio.stage" userdata that owns its C stage until pipe.run takes it.
 * __gc and __close are the same idempotent function (as liolib's file handles), so a stage
 * that never reaches a pipe is destroyed — and a sink aborted — when it is collected.
 */
#include "lua_api.h"
#include "host.h"
#include "redact.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- stages ----------------------------------------------------------------------------- */

/* Frees a stage that never reached a pipe; a sink is aborted first (it never ran: leave nothing
 * behind). */
static void stage_obj_free(int kind, void *obj)
{
    if (!obj) return;
    if (kind == RT_STAGE_SOURCE)
        rt_source_free(obj);
    else if (kind == RT_STAGE_FILTER)
        rt_filter_free(obj);
    else {
        RtSink *k = obj;
        k->abort(k->self);
        rt_sink_free(k);
    }
}

static int stage_gc(lua_State *L)
{
    RtLuaStage *s = luaL_checkudata(L, 1, RT_STAGE_MT);
    stage_obj_free(s->kind, s->obj);
    s->obj = NULL;
    return 0;
}

static int stage_tostring(lua_State *L)
{
    RtLuaStage *s = luaL_checkudata(L, 1, RT_STAGE_MT);
    static const char *const kinds[] = {"source", "filter", "sink"};
    lua_pushfstring(L, "%s(%s%s)", kinds[s->kind], s->label[0] ? s->label : s->name,
                    s->obj ? "" : ", used");
    return 1;
}

RtLuaStage *rt_lua_new_stage(lua_State *L, int kind)
{
    RtLuaStage *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->kind = kind;
    snprintf(s->name, sizeof s->name, "stage");
    static const luaL_Reg m[] = {
        {"__gc", stage_gc}, {"__close", stage_gc}, {"__tostring", stage_tostring}, {NULL, NULL}};
    rt_lua_class(L, RT_STAGE_MT, m, NULL);
    lua_setmetatable(L, -2);
    return s;
}

void rt_lua_stage_set(RtLuaStage *s, void *obj, const char *name)
{
    s->obj = obj;
    snprintf(s->name, sizeof s->name, "%s", name ? name : "stage");
}

static int new_closed_stage(lua_State *L)
{
    rt_lua_new_stage(L, (int)lua_tointeger(L, 1));
    return 1;
}

/* The stage exists already, so the userdata is made under lua_pcall: if that raises (out of
 * memory), the stage is freed (a sink aborted) before the error goes on, never leaked. Bindings
 * that can build the stage afterwards use rt_lua_new_stage first instead. */
static void push_stage(lua_State *L, int kind, void *obj, const char *name)
{
    lua_pushcfunction(L, new_closed_stage); /* neither push allocates */
    lua_pushinteger(L, kind);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        stage_obj_free(kind, obj);
        lua_error(L);
    }
    rt_lua_stage_set(lua_touserdata(L, -1), obj, name);
}

void rt_lua_push_source(lua_State *L, RtSource *s)
{
    if (!s) luaL_error(L, "internal error: NULL source");
    push_stage(L, RT_STAGE_SOURCE, s, s->name);
}

void rt_lua_push_filter(lua_State *L, RtFilter *f)
{
    if (!f) luaL_error(L, "internal error: NULL filter");
    push_stage(L, RT_STAGE_FILTER, f, f->name);
}

void rt_lua_push_sink(lua_State *L, RtSink *k)
{
    if (!k) luaL_error(L, "internal error: NULL sink");
    push_stage(L, RT_STAGE_SINK, k, k->name);
}

void rt_lua_set_stage_label(lua_State *L, int idx, const char *label)
{
    RtLuaStage *s = luaL_checkudata(L, idx, RT_STAGE_MT);
    if (label) snprintf(s->label, sizeof s->label, "%s", label);
}

void rt_lua_label_from_options(lua_State *L, int opt_idx)
{
    const char *label = rt_lua_opt_string(L, opt_idx, "label", NULL);
    if (label) rt_lua_set_stage_label(L, -1, label);
}

RtLuaStage *rt_lua_check_stage(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, RT_STAGE_MT);
}

void rt_lua_push_results(lua_State *L, const RtResults *r)
{
    luaL_checkstack(L, 4, "results too deep");
    size_t n = rt_results_count(r);
    RtValueType type = rt_results_type(r);
    lua_createtable(L, type == RT_VALUE_ARRAY ? (int)n : 0, type == RT_VALUE_TABLE ? (int)n : 0);
    for (size_t i = 0; i < n; i++) {
        const char *key;
        RtValueType t;
        const RtResults *v = rt_results_at(r, i, &key, &t);
        switch (t) {
        case RT_VALUE_INT:
            lua_pushinteger(L, (lua_Integer)rt_results_as_int(v));
            break;
        case RT_VALUE_NUM:
            lua_pushnumber(L, rt_results_as_num(v));
            break;
        case RT_VALUE_BOOL:
            lua_pushboolean(L, rt_results_as_bool(v));
            break;
        case RT_VALUE_STR: {
            size_t len;
            const char *s = rt_results_as_str(v, &len);
            lua_pushlstring(L, s, len);
            break;
        }
        default:
            rt_lua_push_results(L, v);
            break;
        }
        if (type == RT_VALUE_ARRAY || !key)
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        else
            lua_setfield(L, -2, key);
    }
}

/* ---- errors ----------------------------------------------------------------------------- */

void rt_lua_push_error(lua_State *L, const RtError *err)
{
    lua_createtable(L, 0, 6);
    lua_pushstring(L, rt_error_class_name(err->klass));
    lua_setfield(L, -2, "class");
    lua_pushstring(L, err->code[0] ? err->code : "error");
    lua_setfield(L, -2, "code");
    lua_pushstring(L, err->message[0] ? err->message : "unknown error");
    lua_setfield(L, -2, "message");
    if (err->hint[0]) {
        lua_pushstring(L, err->hint);
        lua_setfield(L, -2, "hint");
    }
    lua_pushboolean(L, err->retryable);
    lua_setfield(L, -2, "retryable");
    rt_host_set_error_mt(L, -1);
}

int rt_lua_raise(lua_State *L, const RtError *err)
{
    rt_lua_push_error(L, err);
    return lua_error(L);
}

int rt_lua_fail(lua_State *L, RtErrorClass klass, const char *code, const char *hint,
                const char *fmt, ...)
{
    RtError err;
    rt_error_init(&err);
    va_list ap;
    va_start(ap, fmt);
    rt_error_setv(&err, klass, code, fmt, ap);
    va_end(ap);
    if (hint) rt_error_hint(&err, "%s", hint);
    return rt_lua_raise(L, &err);
}

/* ---- classes ---------------------------------------------------------------------------- */

void rt_lua_class(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods)
{
    if (!luaL_newmetatable(L, name)) return;
    luaL_setfuncs(L, meta, 0);
    if (methods == meta) {
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    } else if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
}

/* ---- options ---------------------------------------------------------------------------- */

void rt_lua_check_options(lua_State *L, int idx, const char *what, const char *const allowed[])
{
    if (lua_isnoneornil(L, idx)) return;
    if (lua_type(L, idx) != LUA_TTABLE)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.options", NULL, "%s expects an option table, got %s",
                    what, luaL_typename(L, idx));
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) continue; /* array part: the caller checks it */
        const char *k = lua_tostring(L, -1);
        bool ok = false;
        for (int i = 0; allowed[i] && !ok; i++) ok = strcmp(allowed[i], k) == 0;
        if (!ok) {
            char list[512] = "";
            for (int i = 0; allowed[i]; i++) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", allowed[i]);
            }
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.unknown_option", list[0] ? list : NULL,
                        "unknown option '%s' for %s", k, what);
        }
    }
}

static int opt_field(lua_State *L, int idx, const char *key)
{
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    return lua_getfield(L, idx, key);
}

static void opt_type_error(lua_State *L, const char *key, const char *want)
{
    rt_lua_fail(L, RT_CLASS_USAGE, "usage.option_type", NULL, "option '%s' must be %s, got %s", key,
                want, luaL_typename(L, -1));
}

const char *rt_lua_opt_string(lua_State *L, int idx, const char *key, const char *def)
{
    int t = opt_field(L, idx, key);
    const char *v = def;
    if (t == LUA_TSTRING || t == LUA_TNUMBER)
        v = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        opt_type_error(L, key, "a string");
    lua_pop(L, 1); /* the string stays alive: it is referenced by the option table */
    return v;
}

lua_Integer rt_lua_opt_integer(lua_State *L, int idx, const char *key, lua_Integer def)
{
    int t = opt_field(L, idx, key);
    lua_Integer v = def;
    if (t == LUA_TNUMBER && lua_isinteger(L, -1))
        v = lua_tointeger(L, -1);
    else if (t == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, -1);
        if (!lua_numbertointeger(n, &v)) opt_type_error(L, key, "an integer");
    } else if (t != LUA_TNIL)
        opt_type_error(L, key, "an integer");
    lua_pop(L, 1);
    return v;
}

lua_Number rt_lua_opt_number(lua_State *L, int idx, const char *key, lua_Number def)
{
    int t = opt_field(L, idx, key);
    lua_Number v = def;
    if (t == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    else if (t != LUA_TNIL)
        opt_type_error(L, key, "a number");
    lua_pop(L, 1);
    return v;
}

bool rt_lua_opt_boolean(lua_State *L, int idx, const char *key, bool def)
{
    int t = opt_field(L, idx, key);
    bool v = def;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        opt_type_error(L, key, "a boolean");
    lua_pop(L, 1);
    return v;
}

/* ---- secrets ---------------------------------------------------------------------------- */

RtSecret *rt_lua_to_secret(lua_State *L, int idx, const char *what)
{
    RtError err;
    rt_error_init(&err);
    RtSecret *s = NULL;
    RtSecret **ud = luaL_testudata(L, idx, RT_SECRET_MT);
    if (ud) {
        if (!*ud)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL, "%s: secret was wiped", what);
        s = rt_secret_dup(*ud, &err);
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        if (len == 0)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL, "%s: secret is empty", what);
        s = rt_secret_from_value(v, len, "a value given by the script", &err);
    } else {
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL,
                    "%s: expected a secret or a string, got %s", what, luaL_typename(L, idx));
    }
    if (!s) rt_lua_raise(L, &err);
    return s;
}

RtSecret *rt_lua_opt_secret(lua_State *L, int idx, const char *key, const char *default_env,
                            const char *what)
{
    char k_env[64], k_file[64];
    snprintf(k_env, sizeof k_env, "%s_env", key);
    snprintf(k_file, sizeof k_file, "%s_file", key);
    RtError err;
    rt_error_init(&err);
    RtSecret *s = NULL;
    int given = 0;
    if (opt_field(L, idx, key) != LUA_TNIL) given++;
    lua_pop(L, 1);
    const char *env = rt_lua_opt_string(L, idx, k_env, NULL);
    const char *file = rt_lua_opt_string(L, idx, k_file, NULL);
    given += (env != NULL) + (file != NULL);
    if (given > 1)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL, "%s: give only one of %s, %s, %s",
                    what, key, k_env, k_file);
    if (opt_field(L, idx, key) != LUA_TNIL) {
        s = rt_lua_to_secret(L, -1, what);
        lua_pop(L, 1);
        return s;
    }
    lua_pop(L, 1);
    if (file)
        s = rt_secret_from_file(file, &err);
    else if (env || default_env)
        s = rt_secret_from_env(env ? env : default_env, &err);
    else
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL, "%s: option '%s' is required", what,
                    key);
    if (!s) rt_lua_raise(L, &err);
    return s;
}
