/*
 * Lua binding of the pgdump module (the core is pg_*.c; see pgdump.h and README.md).
 *
 *   local pgdump = require "pgdump"
 *   local r = pipe.run{pgdump.dump{url = url, jobs = 2}, pipe.file_sink("db.sql")}
 *   print(r.pgdump.tables["public.users"].rows)
 *   pipe.run{pipe.file("db.sql"), pgdump.restore{url = target, jobs = 2}}
 *   local db <close> = pgdump.connect(url)
 *   for _, row in ipairs(db:query("SELECT id, name FROM users WHERE id > $1", {10})) do ... end
 *   local o = pgdump.conninfo_parse(url)  -- {host = ..., dbname = ..., sslmode = ...}, by libpq
 */
#include "io/cancel.h"
#include "lua_api.h"
#include "pgdump.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

int luaopen_pgdump(lua_State *L);

#define CONN_MT "clubio.pgdump.conn"

static const char *need_url(lua_State *L, int idx, const char *what)
{
    const char *url = rt_lua_opt_string(L, idx, "url", NULL);
    if (!url || !*url)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.url",
                    "pass url = \"postgresql://user:password@host:5432/dbname\"",
                    "%s needs a database url", what);
    return url;
}

static int jobs_opt(lua_State *L, int idx, const char *what)
{
    lua_Integer jobs = rt_lua_opt_integer(L, idx, "jobs", 2);
    if (jobs < 1 || jobs > 64)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.jobs", "use 1 to 64 connections",
                    "%s: jobs = %lld "
                    "is out of range",
                    what, (long long)jobs);
    return (int)jobs;
}

/* pgdump.dump{url=, jobs=2, label=, pg_dump=, large_objects="refuse"|"include"|"skip",
 * split_bytes=, row_digests=false, snapshot=} */
static int l_dump(lua_State *L)
{
    static const char *const allowed[] = {"url",         "jobs",          "label",
                                          "pg_dump",     "large_objects", "split_bytes",
                                          "row_digests", "snapshot",      NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "pgdump.dump", allowed);
    PgDumpOptions o = {0};
    o.url = need_url(L, 1, "pgdump.dump");
    o.jobs = jobs_opt(L, 1, "pgdump.dump");
    o.pg_dump = rt_lua_opt_string(L, 1, "pg_dump", NULL);
    o.split_bytes = rt_lua_opt_integer(L, 1, "split_bytes", 0);
    o.row_digests = rt_lua_opt_boolean(L, 1, "row_digests", false);
    o.snapshot = rt_lua_opt_string(L, 1, "snapshot", NULL);
    const char *lo = rt_lua_opt_string(L, 1, "large_objects", "refuse");
    if (!strcmp(lo, "skip"))
        o.large_objects = PG_LO_SKIP;
    else if (!strcmp(lo, "include"))
        o.large_objects = PG_LO_INCLUDE;
    else if (strcmp(lo, "refuse") != 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.large_objects",
                    "use \"refuse\", \"include\" or \"skip\"",
                    "pgdump.dump: unknown large_objects = \"%s\"", lo);
    RtError err;
    rt_error_init(&err);
    RtSource *s = pgdump_dump_source(&o, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* pgdump.restore{url=, jobs=2, clean=false, label=, chunk_bytes=, digests=false,
 * set_digests=false} */
static int l_restore(lua_State *L)
{
    static const char *const allowed[] = {"url",         "jobs",    "clean",       "label",
                                          "chunk_bytes", "digests", "set_digests", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "pgdump.restore", allowed);
    PgRestoreOptions o = {0};
    o.url = need_url(L, 1, "pgdump.restore");
    o.jobs = jobs_opt(L, 1, "pgdump.restore");
    o.clean = rt_lua_opt_boolean(L, 1, "clean", false);
    o.chunk_bytes = rt_lua_opt_integer(L, 1, "chunk_bytes", 0);
    o.digests = rt_lua_opt_boolean(L, 1, "digests", false);
    o.set_digests = rt_lua_opt_boolean(L, 1, "set_digests", false);
    RtError err;
    rt_error_init(&err);
    RtSink *k = pgdump_restore_sink(&o, &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* ---- connections ------------------------------------------------------------------------ */

typedef struct LConn {
    PGconn *c;
    char what[256];
} LConn;

static LConn *check_conn(lua_State *L)
{
    LConn *lc = luaL_checkudata(L, 1, CONN_MT);
    if (!lc->c)
        rt_lua_fail(L, RT_CLASS_USAGE, "pgdump.closed", NULL, "the connection to %s is closed",
                    lc->what);
    return lc;
}

static int l_connect(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    LConn *lc = lua_newuserdatauv(L, sizeof *lc, 0); /* created closed: nothing to leak */
    lc->c = NULL;
    pgdump_describe(url, lc->what, sizeof lc->what);
    luaL_setmetatable(L, CONN_MT);
    RtError err;
    rt_error_init(&err);
    lc->c = pgdump_connect(url, "clubio-dr", &err);
    if (!lc->c) return rt_lua_raise(L, &err);
    return 1;
}

static int l_close(lua_State *L)
{
    LConn *lc = luaL_checkudata(L, 1, CONN_MT);
    if (lc->c) PQfinish(lc->c);
    lc->c = NULL;
    return 0;
}

/* Typed values for the common scalar types; everything else stays a string. */
static void push_value(lua_State *L, const PGresult *r, int row, int col, bool typed)
{
    if (PQgetisnull(r, row, col)) {
        lua_pushnil(L);
        return;
    }
    const char *v = PQgetvalue(r, row, col);
    if (typed) {
        switch (PQftype(r, col)) {
        case 16: /* bool */
            lua_pushboolean(L, v[0] == 't');
            return;
        case 20:
        case 21:
        case 23:
        case 26: /* int8, int2, int4, oid */
            lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
            return;
        case 700:
        case 701: /* float4, float8 */
            lua_pushnumber(L, strtod(v, NULL));
            return;
        }
    }
    lua_pushlstring(L, v, (size_t)PQgetlength(r, row, col));
}

/* conn:query(sql [, params [, {typed = true}]]) -> rows, affected */
static int l_query(lua_State *L)
{
    LConn *lc = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    bool typed = false;
    if (lua_istable(L, 4)) {
        static const char *const allowed[] = {"typed", NULL};
        rt_lua_check_options(L, 4, "conn:query", allowed);
        typed = rt_lua_opt_boolean(L, 4, "typed", false);
    }
    int n = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "n");
        n = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (int)luaL_len(L, 3);
        lua_pop(L, 1);
    }
    if (n > 1000) rt_lua_fail(L, RT_CLASS_USAGE, "usage.params", NULL, "too many parameters");
    const char **vals = lua_newuserdatauv(L, sizeof *vals * (size_t)(n + 1), 0);
    int anchor = lua_gettop(L);
    lua_createtable(L, n, 0); /* keeps converted strings alive */
    for (int i = 0; i < n; i++) {
        lua_geti(L, 3, i + 1);
        if (lua_isnil(L, -1)) {
            vals[i] = NULL;
        } else if (lua_isboolean(L, -1)) {
            vals[i] = lua_toboolean(L, -1) ? "true" : "false";
        } else if (lua_isstring(L, -1)) {
            lua_pushvalue(L, -1);
            vals[i] = lua_tostring(L, -1);
            lua_rawseti(L, anchor + 1, i + 1);
        } else {
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.params", NULL,
                        "conn:query: parameter %d is a %s (use strings, numbers, booleans)", i + 1,
                        luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    /* without parameters, several statements may be sent at once (simple query protocol) */
    bool cancelled = false;
    PGresult *r = pgdump_exec_cancellable(lc->c, sql, n, vals, &cancelled);
    if (cancelled) {
        PQclear(r);
        RtError err;
        rt_error_init(&err);
        rt_cancel_error(&err);
        return rt_lua_raise(L, &err);
    }
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && st != PGRES_EMPTY_QUERY) {
        PQclear(r);
        RtError err;
        rt_error_init(&err);
        char w[320];
        snprintf(w, sizeof w, "query on %s failed", lc->what);
        pgdump_conn_error(lc->c, &err, "pgdump.query", w);
        return rt_lua_raise(L, &err);
    }
    int rows = st == PGRES_TUPLES_OK ? PQntuples(r) : 0, cols = PQnfields(r);
    lua_createtable(L, rows, 0);
    for (int i = 0; i < rows; i++) {
        lua_createtable(L, 0, cols);
        for (int k = 0; k < cols; k++) {
            push_value(L, r, i, k, typed);
            lua_setfield(L, -2, PQfname(r, k));
        }
        lua_rawseti(L, -2, i + 1);
    }
    const char *affected = PQcmdTuples(r);
    if (*affected)
        lua_pushinteger(L, (lua_Integer)strtoll(affected, NULL, 10));
    else
        lua_pushinteger(L, rows);
    PQclear(r);
    return 2;
}

/* conn:table_digest("public.users") -> {rows, bytes, sha256, set_sha256} */
static int l_table_digest(lua_State *L)
{
    LConn *lc = check_conn(L);
    const char *table = luaL_checkstring(L, 2);
    PgTableDigest d;
    RtError err;
    rt_error_init(&err);
    if (pgdump_table_digest(lc->c, table, &d, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, d.rows);
    lua_setfield(L, -2, "rows");
    lua_pushinteger(L, d.bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushstring(L, d.sha256);
    lua_setfield(L, -2, "sha256");
    lua_pushstring(L, d.set_sha256);
    lua_setfield(L, -2, "set_sha256");
    return 1;
}

/* pgdump.table_digests(url, {"public.a", ...}, {jobs = 2}) -> {["public.a"] = {rows, bytes,
 * sha256, set_sha256}, ...}: conn:table_digest of each table, over `jobs` connections. */
static int l_table_digests(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int jobs = 2;
    if (!lua_isnoneornil(L, 3)) {
        static const char *const allowed[] = {"jobs", NULL};
        luaL_checktype(L, 3, LUA_TTABLE);
        rt_lua_check_options(L, 3, "pgdump.table_digests", allowed);
        jobs = jobs_opt(L, 3, "pgdump.table_digests");
    }
    size_t n = (size_t)luaL_len(L, 2);
    /* the names and the results live in userdata, so a raise frees them */
    const char **names = lua_newuserdatauv(L, (n ? n : 1) * sizeof *names, 0);
    PgTableDigest *d = lua_newuserdatauv(L, (n ? n : 1) * sizeof *d, 0);
    for (size_t i = 0; i < n; i++) {
        lua_geti(L, 2, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.tables", "pass a list of table names",
                        "pgdump.table_digests: entry %d is not a table name", (int)i + 1);
        names[i] = lua_tostring(L, -1); /* kept alive by the list argument */
        lua_pop(L, 1);
    }
    RtError err;
    rt_error_init(&err);
    if (pgdump_table_digests(url, names, n, jobs, d, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, d[i].rows);
        lua_setfield(L, -2, "rows");
        lua_pushinteger(L, d[i].bytes);
        lua_setfield(L, -2, "bytes");
        lua_pushstring(L, d[i].sha256);
        lua_setfield(L, -2, "sha256");
        lua_pushstring(L, d[i].set_sha256);
        lua_setfield(L, -2, "set_sha256");
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

static int l_tostring(lua_State *L)
{
    LConn *lc = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "pgdump connection to %s%s", lc->what, lc->c ? "" : " (closed)");
    return 1;
}

/* pgdump.conninfo_parse(s) -> {keyword = value} for the options a postgres URL or keyword/value
 * string sets (libpq's own parser, PQconninfoParse: percent-decoding, IPv6 hosts, parameters;
 * no defaults filled in). A malformed string is a usage error; libpq's quotes of the input are
 * left out of it, as they may hold a password. */
static int l_conninfo_parse(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(s, &msg);
    if (!opts) {
        char why[256] = "out of memory";
        if (msg) {
            size_t n = 0;
            bool quoted = false;
            for (const char *p = msg; *p && *p != '\n' && n + 6 < sizeof why; p++) {
                if (*p == '"' && (quoted = !quoted))
                    n += (size_t)snprintf(why + n, sizeof why - n, "\"...");
                else if (!quoted)
                    why[n++] = *p;
            }
            why[n] = 0;
            PQfreemem(msg);
        }
        return rt_lua_fail(L, RT_CLASS_USAGE, "usage.url",
                           "use postgresql://user:password@host:port/database?sslmode=...",
                           "not a valid connection URL: %s", why);
    }
    lua_newtable(L);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val) continue;
        lua_pushstring(L, o->val);
        lua_setfield(L, -2, o->keyword);
    }
    PQconninfoFree(opts);
    return 1;
}

int luaopen_pgdump(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"query", l_query}, {"table_digest", l_table_digest}, {"close", l_close}, {NULL, NULL}};
    static const luaL_Reg meta[] = {
        {"__gc", l_close}, {"__close", l_close}, {"__tostring", l_tostring}, {NULL, NULL}};
    luaL_newmetatable(L, CONN_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"dump", l_dump},
                                     {"restore", l_restore},
                                     {"connect", l_connect},
                                     {"conninfo_parse", l_conninfo_parse},
                                     {"table_digests", l_table_digests},
                                     {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
