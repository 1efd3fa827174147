/*
 * The `pipe` Lua module: builds and runs pipes of C stages, and the runtime's own endpoints.
 *
 *   local pipe = require "pipe"
 *   local r = pipe.run{ pipe.file("dump.sql"), crypto.sha256{label = "plain"},
 *                       crypto.gzip{}, pipe.file_sink("dump.sql.gz") }
 *   print(r.bytes_in, r.plain.hex, r.file.bytes)
 *
 * Bytes never enter Lua: pipe.run hands the stages to the C pipe (runtime/io/pipe.c) and only
 * the results come back. Each stage can be used once.
 *
 *   local sp = pipe.spool{limit = 64 << 20}            -- bytes held in C between two pipes
 *   local bg = pipe.start{ c:download{...}, crypto.decrypt{}, sp:sink() }   -- runs meanwhile
 *   ...                                                -- other work
 *   local r = bg:wait()                                -- its results, or its error raised
 *   pipe.run{ sp:source(), pgdump.restore{...} }
 *   -- bg:stop() (or leaving a <close> scope) stops a pipe still running: its sink aborts.
 */
#include "host.h"
#include "io/endpoints.h"
#include "io/pipe.h"
#include "proc.h"
#include "progress.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- process specs from Lua tables (shared with proc_lua in std_lua.c) ------------------- */

/* Reads {argv = {...}, env = {K = V}, unset_env = {...}, cwd = ...} at idx into spec. Pushes one
 * anchor value that keeps the strings alive; the caller pops it when done with spec. */
void rt_lua_proc_spec(lua_State *L, int idx, RtProcSpec *spec, const char *what);
void rt_lua_proc_spec(lua_State *L, int idx, RtProcSpec *spec, const char *what)
{
    idx = lua_absindex(L, idx);
    memset(spec, 0, sizeof *spec);
    lua_createtable(L, 4, 0); /* anchor */
    int anchor = lua_gettop(L);
    if (lua_getfield(L, idx, "argv") != LUA_TTABLE)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.argv", "pass argv = {\"program\", \"arg\", ...}",
                    "%s needs an argv array", what);
    lua_Integer n = luaL_len(L, -1);
    if (n < 1) rt_lua_fail(L, RT_CLASS_USAGE, "usage.argv", NULL, "%s: argv is empty", what);
    const char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
    lua_rawseti(L, anchor, 1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (!lua_isstring(L, -1))
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.argv", NULL, "%s: argv[%d] is not a string", what,
                        (int)i);
        argv[i - 1] = lua_tostring(L, -1);
        lua_rawseti(L, anchor, 10 + (int)i); /* keep the string (a number became a string) */
    }
    argv[n] = NULL;
    lua_pop(L, 1);
    spec->argv = argv;

    if (lua_getfield(L, idx, "env") == LUA_TTABLE) {
        int count = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            count++;
            lua_pop(L, 1);
        }
        const char **env = lua_newuserdatauv(L, (size_t)(count + 1) * sizeof *env, 0);
        lua_rawseti(L, anchor, 2);
        int k = 0;
        lua_createtable(L, count, 0);
        lua_rawseti(L, anchor, 3);
        lua_rawgeti(L, anchor, 3);
        int strs = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
                rt_lua_fail(L, RT_CLASS_USAGE, "usage.env", NULL,
                            "%s: env must map names to strings", what);
            lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
            env[k++] = lua_tostring(L, -1);
            lua_rawseti(L, strs, k);
            lua_pop(L, 1);
        }
        env[k] = NULL;
        spec->env_set = env;
        lua_pop(L, 1);
    } else if (!lua_isnil(L, -1)) {
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.env", NULL, "%s: env must be a table", what);
    }
    lua_pop(L, 1);

    if (lua_getfield(L, idx, "unset_env") == LUA_TTABLE) {
        lua_Integer m = luaL_len(L, -1);
        const char **un = lua_newuserdatauv(L, (size_t)(m + 1) * sizeof *un, 0);
        lua_rawseti(L, anchor, 4);
        for (lua_Integer i = 1; i <= m; i++) {
            lua_rawgeti(L, -1, i);
            un[i - 1] = luaL_checkstring(L, -1);
            lua_rawseti(L, anchor, 1000 + (int)i);
        }
        un[m] = NULL;
        spec->env_unset = un;
    }
    lua_pop(L, 1);
    spec->cwd = rt_lua_opt_string(L, idx, "cwd", NULL);
}

/* ---- constructors ----------------------------------------------------------------------- */

static const char *const LABEL_ONLY[] = {"label", NULL};

static int l_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    rt_lua_check_options(L, 2, "pipe.file", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSource *s = rt_file_source(path, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 2);
    return 1;
}

static int l_stdin(lua_State *L)
{
    rt_lua_check_options(L, 1, "pipe.stdin", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSource *s = rt_fd_source(0, "stdin", &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_string(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    rt_lua_check_options(L, 2, "pipe.string", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSource *s = rt_mem_source(data, len, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 2);
    return 1;
}

static int l_file_sink(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    static const char *const allowed[] = {"label", "overwrite", NULL};
    rt_lua_check_options(L, 2, "pipe.file_sink", allowed);
    bool overwrite = rt_lua_opt_boolean(L, 2, "overwrite", false);
    RtError err;
    rt_error_init(&err);
    RtSink *k = rt_file_sink(path, overwrite, &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 2);
    return 1;
}

/* pipe.write_file(path, data [, {overwrite = true}]) -> path: the file sink without a pipe, for
 * small files written whole (a 0600 temp file beside path, fsync, rename; nothing on failure). */
static int l_write_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    static const char *const allowed[] = {"overwrite", NULL};
    rt_lua_check_options(L, 3, "pipe.write_file", allowed);
    RtError err;
    rt_error_init(&err);
    if (rt_write_file(path, data, len, rt_lua_opt_boolean(L, 3, "overwrite", false), &err) != RT_OK)
        return rt_lua_raise(L, &err);
    lua_pushvalue(L, 1);
    return 1;
}

static int l_stdout(lua_State *L)
{
    rt_lua_check_options(L, 1, "pipe.stdout", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSink *k = rt_fd_sink(1, "stdout", &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_buffer(lua_State *L)
{
    static const char *const allowed[] = {"label", "limit", NULL};
    rt_lua_check_options(L, 1, "pipe.buffer", allowed);
    lua_Integer limit = rt_lua_opt_integer(L, 1, "limit", 64 * 1024 * 1024);
    if (limit < 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL, "pipe.buffer: limit must be >= 0");
    RtError err;
    rt_error_init(&err);
    RtSink *k = rt_mem_sink((size_t)limit, &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_count(lua_State *L)
{
    rt_lua_check_options(L, 1, "pipe.count", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = rt_count_filter(&err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static const char *const CMD_OPTS[] = {"argv", "env", "unset_env", "cwd", "label", "quiet", NULL};

static int l_command(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "pipe.command", CMD_OPTS);
    RtProcSpec spec;
    rt_lua_proc_spec(L, 1, &spec, "pipe.command");
    RtError err;
    rt_error_init(&err);
    RtSource *s = rt_child_source(&spec, &err);
    if (!s) return rt_lua_raise(L, &err);
    lua_pop(L, 1); /* anchor */
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_command_sink(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "pipe.command_sink", CMD_OPTS);
    RtProcSpec spec;
    rt_lua_proc_spec(L, 1, &spec, "pipe.command_sink");
    bool quiet = rt_lua_opt_boolean(L, 1, "quiet", false);
    RtError err;
    rt_error_init(&err);
    RtSink *k = rt_child_sink(&spec, quiet, &err);
    if (!k) return rt_lua_raise(L, &err);
    lua_pop(L, 1);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* ---- run -------------------------------------------------------------------------------- */

/* Builds the pipe of the stage list at index 1 (checked before any stage is taken). */
static RtPipe *build_pipe(lua_State *L, const char *what, RtProgressDisplay *disp)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const allowed[] = {"buffer_size", "queue_depth", "progress", NULL};
    static const char *const allowed_bg[] = {"buffer_size", "queue_depth", NULL};
    rt_lua_check_options(L, 1, what, disp ? allowed : allowed_bg);
    lua_Integer n = luaL_len(L, 1);
    if (n < 2)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", "pipe.run{ source, filter..., sink }",
                    "%s needs at least a source and a sink", what);
    /* Check everything before taking ownership of anything. */
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        RtLuaStage *s = luaL_testudata(L, -1, RT_STAGE_MT);
        if (!s)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", NULL, "%s: item %d is a %s, not a stage",
                        what, (int)i, luaL_typename(L, -1));
        if (!s->obj)
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", "create a new stage for each pipe",
                        "%s: stage %d (%s) was already used", what, (int)i, s->name);
        int want = i == 1 ? RT_STAGE_SOURCE : i == n ? RT_STAGE_SINK : RT_STAGE_FILTER;
        if (s->kind != want) {
            static const char *const k[] = {"a source", "a filter", "a sink"};
            rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", "pipe.run{ source, filter..., sink }",
                        "%s: stage %d (%s) is %s, expected %s", what, (int)i, s->name, k[s->kind],
                        k[want]);
        }
        lua_pop(L, 1);
    }
    RtPipeOptions opts = {0};
    lua_Integer bs = rt_lua_opt_integer(L, 1, "buffer_size", 0);
    lua_Integer qd = rt_lua_opt_integer(L, 1, "queue_depth", 0);
    if (bs < 0 || bs > (lua_Integer)1 << 30 || qd < 0 || qd > 1024)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                    "%s: buffer_size or queue_depth out of range", what);
    opts.buffer_size = (size_t)bs;
    opts.queue_depth = (int)qd;
    if (disp) {
        int pt = lua_getfield(L, 1, "progress");
        const char *plabel = pt == LUA_TSTRING ? lua_tostring(L, -1) : "transfer";
        rt_progress_display_init(disp, plabel,
                                 pt == LUA_TBOOLEAN && !lua_toboolean(L, -1) ? 0 : -1);
        lua_pop(L, 1);
        if (disp->mode) {
            opts.progress = rt_progress_display_cb;
            opts.progress_ud = disp;
        }
    }
    RtPipe *p = rt_pipe_new(&opts);
    if (!p) rt_lua_fail(L, RT_CLASS_FAILURE, RT_CODE_NOMEM, NULL, "out of memory");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        RtLuaStage *s = lua_touserdata(L, -1);
        void *obj = s->obj;
        s->obj = NULL; /* the pipe owns it now */
        const char *label = s->label[0] ? s->label : NULL;
        if (s->kind == RT_STAGE_SOURCE)
            rt_pipe_set_source(p, obj, label);
        else if (s->kind == RT_STAGE_FILTER)
            rt_pipe_add_filter(p, obj, label);
        else
            rt_pipe_set_sink(p, obj, label);
        lua_pop(L, 1);
    }
    return p;
}

static int l_run(lua_State *L)
{
    RtProgressDisplay disp;
    RtPipe *p = build_pipe(L, "pipe.run", &disp);
    RtError err;
    rt_error_init(&err);
    int rc = rt_pipe_run(p, &err); /* no Lua calls happen while this runs */
    if (rc != RT_OK) {
        rt_pipe_free(p);
        return rt_lua_raise(L, &err);
    }
    /* (an out-of-memory raise while pushing would leak the pipe; the process is ending then) */
    rt_lua_push_results(L, rt_pipe_results(p));
    rt_pipe_free(p);
    return 1;
}

/* ---- pipes in the background: pipe.start{...} -> running; running:wait() -> results ------- */

#define RUNNING_MT "clubio.pipe_running"

typedef struct Running {
    RtPipe *p;
} Running;

static int l_start(lua_State *L)
{
    Running *r = lua_newuserdatauv(L, sizeof *r, 0);
    r->p = NULL;
    luaL_setmetatable(L, RUNNING_MT);
    r->p = build_pipe(L, "pipe.start", NULL);
    RtError err;
    rt_error_init(&err);
    if (rt_pipe_start(r->p, &err) != RT_OK) {
        rt_pipe_free(r->p);
        r->p = NULL;
        return rt_lua_raise(L, &err);
    }
    return 1;
}

static int running_wait(lua_State *L)
{
    Running *r = luaL_checkudata(L, 1, RUNNING_MT);
    if (!r->p)
        return rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", NULL,
                           "pipe.start: this pipe was already waited for or stopped");
    RtError err;
    rt_error_init(&err);
    int rc = rt_pipe_wait(r->p, &err);
    if (rc != RT_OK) {
        rt_pipe_free(r->p);
        r->p = NULL;
        return rt_lua_raise(L, &err);
    }
    rt_lua_push_results(L, rt_pipe_results(r->p));
    rt_pipe_free(r->p);
    r->p = NULL;
    return 1;
}

/* Stops the pipe if it still runs and waits for its threads: nothing runs on after this. */
static int running_stop(lua_State *L)
{
    Running *r = luaL_checkudata(L, 1, RUNNING_MT);
    if (r->p) {
        rt_pipe_stop(r->p);
        rt_pipe_free(r->p); /* joins */
        r->p = NULL;
    }
    return 0;
}

/* ---- spools: bytes held in C between two pipes ------------------------------------------ */

#define SPOOL_MT "clubio.pipe_spool"

typedef struct SpoolUd {
    RtSpool *s;
} SpoolUd;

static int l_spool(lua_State *L)
{
    static const char *const allowed[] = {"limit", NULL};
    rt_lua_check_options(L, 1, "pipe.spool", allowed);
    lua_Integer limit = rt_lua_opt_integer(L, 1, "limit", 256 * 1024 * 1024);
    if (limit <= 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL, "pipe.spool: limit must be > 0");
    SpoolUd *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    luaL_setmetatable(L, SPOOL_MT);
    if (!(u->s = rt_spool_new((size_t)limit)))
        rt_lua_fail(L, RT_CLASS_FAILURE, RT_CODE_NOMEM, NULL, "out of memory");
    return 1;
}

static SpoolUd *check_spool(lua_State *L)
{
    SpoolUd *u = luaL_checkudata(L, 1, SPOOL_MT);
    if (!u->s) rt_lua_fail(L, RT_CLASS_USAGE, "usage.pipe", NULL, "the spool was released");
    return u;
}

static int spool_sink(lua_State *L)
{
    SpoolUd *u = check_spool(L);
    rt_lua_check_options(L, 2, "spool:sink", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSink *k = rt_spool_sink(u->s, &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 2);
    return 1;
}

static int spool_source(lua_State *L)
{
    SpoolUd *u = check_spool(L);
    rt_lua_check_options(L, 2, "spool:source", LABEL_ONLY);
    RtError err;
    rt_error_init(&err);
    RtSource *s = rt_spool_source(u->s, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 2);
    return 1;
}

static int spool_bytes(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)rt_spool_bytes(check_spool(L)->s));
    return 1;
}

static int spool_release(lua_State *L)
{
    SpoolUd *u = luaL_checkudata(L, 1, SPOOL_MT);
    rt_spool_release(u->s);
    u->s = NULL;
    return 0;
}

int luaopen_pipe(lua_State *L)
{
    static const luaL_Reg f[] = {{"run", l_run},
                                 {"file", l_file},
                                 {"stdin", l_stdin},
                                 {"string", l_string},
                                 {"file_sink", l_file_sink},
                                 {"write_file", l_write_file},
                                 {"stdout", l_stdout},
                                 {"buffer", l_buffer},
                                 {"count", l_count},
                                 {"command", l_command},
                                 {"command_sink", l_command_sink},
                                 {"start", l_start},
                                 {"spool", l_spool},
                                 {NULL, NULL}};
    static const luaL_Reg running_meta[] = {
        {"__gc", running_stop}, {"__close", running_stop}, {NULL, NULL}};
    static const luaL_Reg running_methods[] = {
        {"wait", running_wait}, {"stop", running_stop}, {NULL, NULL}};
    rt_lua_class(L, RUNNING_MT, running_meta, running_methods);
    lua_pop(L, 1);
    static const luaL_Reg spool_meta[] = {
        {"__gc", spool_release}, {"__close", spool_release}, {NULL, NULL}};
    static const luaL_Reg spool_methods[] = {
        {"sink", spool_sink}, {"source", spool_source}, {"bytes", spool_bytes}, {NULL, NULL}};
    rt_lua_class(L, SPOOL_MT, spool_meta, spool_methods);
    lua_pop(L, 1);
    luaL_newlib(L, f);
    return 1;
}
