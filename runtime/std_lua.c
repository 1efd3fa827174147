/*
 * The host's small standard modules for scripts:
 *
 *   log     log.info("uploaded", {bytes = n})           levels, JSON with --json, redaction
 *   env     env.get("NEON_PROJECT_ID")                   raises naming the missing variable
 *   time    time.parse("2024-01-15T10:30:00Z")           ISO 8601 / YYYYMMDD, UTC, day arithmetic
 *   proc    proc.run{argv = {"pg_dump", "--version"}}    child processes, no shell; proc.lock(path)
 *   secret  secret.env("BACKUP_ENCRYPTION_KEY")          secret values that print as ***
 *   clubio  clubio.flags.dry_run, clubio.confirm(...)    host flags, errors, confirmation
 *
 * Bindings only: the C cores are log.c, timestamp.c (ISO 8601, YYYYMMDD, HTTP dates), proc.c
 * (spawning, and rt_proc_communicate for proc.run's capture), lock.c, secret.c and flags.c.
 */
#include "host.h"
#include "io/cancel.h"
#include "json.h"
#include "lock.h"
#include "log.h"
#include "proc.h"
#include "redact.h"
#include "sbuf.h"
#include "timestamp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void rt_lua_proc_spec(lua_State *L, int idx, RtProcSpec *spec, const char *what);

/* ---- log -------------------------------------------------------------------------------- */

/* Encodes the string-keyed fields of the table at 2 into the SBuf at 1 (light userdata). Run
 * under lua_pcall by log_at: a field's __tostring may raise, and the SBuf's buffer, which Lua
 * does not own, must then be freed before the error goes on. */
static int log_encode_fields(lua_State *L)
{
    SBuf *f = lua_touserdata(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t kl, vl;
            const char *k = lua_tolstring(L, -2, &kl);
            if (f->len) sb_addn(f, ",", 1);
            rt_json_quote(f, k, kl);
            sb_addn(f, ":", 1);
            int t = lua_type(L, -1);
            char num[64];
            if (t == LUA_TNUMBER && lua_isinteger(L, -1))
                sb_addn(f, num,
                        (size_t)snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1)));
            else if (t == LUA_TNUMBER)
                sb_addn(f, num, (size_t)snprintf(num, sizeof num, "%.17g", lua_tonumber(L, -1)));
            else if (t == LUA_TBOOLEAN)
                sb_addn(f, lua_toboolean(L, -1) ? "true" : "false", lua_toboolean(L, -1) ? 4 : 5);
            else {
                const char *v = luaL_tolstring(L, -1, &vl); /* __tostring may raise */
                rt_json_quote(f, v, vl);
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int log_at(lua_State *L, RtLogLevel level)
{
    if (level < rt_log_level()) return 0;
    const char *msg = luaL_tolstring(L, 1, NULL);
    if (lua_type(L, 2) != LUA_TTABLE) {
        rt_log_fields(level, msg, NULL);
        return 0;
    }
    SBuf f = {0};
    lua_pushcfunction(L, log_encode_fields);
    lua_pushlightuserdata(L, &f);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        free(f.p); /* then the field's error goes on, as before */
        return lua_error(L);
    }
    rt_log_fields(level, msg, f.oom ? NULL : f.p);
    free(f.p);
    return 0;
}

static int l_log_debug(lua_State *L)
{
    return log_at(L, RT_LOG_DEBUG);
}
static int l_log_info(lua_State *L)
{
    return log_at(L, RT_LOG_INFO);
}
static int l_log_warn(lua_State *L)
{
    return log_at(L, RT_LOG_WARN);
}
static int l_log_error(lua_State *L)
{
    return log_at(L, RT_LOG_ERROR);
}
static int l_log_redact(lua_State *L)
{
    char *r = rt_redact_dup(luaL_checkstring(L, 1));
    if (!r) return luaL_error(L, "out of memory");
    lua_pushstring(L, r);
    free(r);
    return 1;
}
static int l_log_level(lua_State *L)
{
    lua_pushstring(L, rt_log_level_name(rt_log_level()));
    return 1;
}

int luaopen_log(lua_State *L)
{
    static const luaL_Reg f[] = {{"debug", l_log_debug},
                                 {"info", l_log_info},
                                 {"warn", l_log_warn},
                                 {"error", l_log_error},
                                 {"redact", l_log_redact},
                                 {"level", l_log_level},
                                 {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}

/* ---- env -------------------------------------------------------------------------------- */

static int l_env_get(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *v = getenv(name);
    if (v && *v) {
        lua_pushstring(L, v);
        return 1;
    }
    if (lua_gettop(L) >= 2) {
        lua_settop(L, 2);
        return 1;
    }
    char hint[160];
    snprintf(hint, sizeof hint, "export %s=... (see the README's environment table)", name);
    return rt_lua_fail(L, RT_CLASS_CONFIG, "config.missing_env", hint,
                       "environment variable %s is not set", name);
}

static int l_env_has(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    lua_pushboolean(L, v && *v);
    return 1;
}

int luaopen_env(lua_State *L)
{
    static const luaL_Reg f[] = {{"get", l_env_get}, {"has", l_env_has}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}

/* ---- time ------------------------------------------------------------------------------- */

static double check_time(lua_State *L, int idx)
{
    return lua_isnoneornil(L, idx) ? rt_now() : luaL_checknumber(L, idx);
}

static void push_strftime(lua_State *L, double t, const char *fmt)
{
    time_t tt = (time_t)t;
    if ((double)tt > t) tt--;
    struct tm tm;
    gmtime_r(&tt, &tm);
    char buf[256];
    size_t n = strftime(buf, sizeof buf, fmt, &tm);
    lua_pushlstring(L, buf, n);
}

static int l_time_now(lua_State *L)
{
    lua_pushnumber(L, rt_now());
    return 1;
}

static int l_time_iso(lua_State *L)
{
    char buf[32];
    lua_pushstring(L, rt_iso8601(check_time(L, 1), lua_toboolean(L, 2), buf));
    return 1;
}

static int l_time_parse(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    double t;
    const char *why = NULL;
    if (!rt_parse_iso8601(s, &t, &why)) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid timestamp '%s': %s", s, why);
        return 2;
    }
    lua_pushnumber(L, t);
    return 1;
}

static int l_time_parse_ymd(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    double t;
    const char *why;
    if (!rt_parse_ymd(s, &t, &why)) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid date '%s': %s", s, why);
        return 2;
    }
    lua_pushnumber(L, t);
    return 1;
}

static int l_time_ymd(lua_State *L)
{
    push_strftime(L, check_time(L, 1), "%Y%m%d");
    return 1;
}

static int l_time_stamp(lua_State *L)
{
    push_strftime(L, check_time(L, 1), "%Y%m%d-%H%M%S");
    return 1;
}

static int l_time_format(lua_State *L)
{
    double t = check_time(L, 1);
    push_strftime(L, t, luaL_optstring(L, 2, "%Y-%m-%dT%H:%M:%SZ"));
    return 1;
}

static int l_time_add_days(lua_State *L)
{
    lua_pushnumber(L, luaL_checknumber(L, 1) + luaL_checknumber(L, 2) * 86400.0);
    return 1;
}

static int l_time_days_between(lua_State *L)
{
    lua_pushnumber(L, (luaL_checknumber(L, 2) - luaL_checknumber(L, 1)) / 86400.0);
    return 1;
}

static int l_time_start_of_day(lua_State *L)
{
    double t = check_time(L, 1);
    lua_pushnumber(L, (double)((long long)(t / 86400.0) * 86400LL) - (t < 0 ? 86400 : 0));
    return 1;
}

static int l_time_date(lua_State *L)
{
    double t = check_time(L, 1);
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, tm.tm_year + 1900);
    lua_setfield(L, -2, "year");
    lua_pushinteger(L, tm.tm_mon + 1);
    lua_setfield(L, -2, "month");
    lua_pushinteger(L, tm.tm_mday);
    lua_setfield(L, -2, "day");
    lua_pushinteger(L, tm.tm_hour);
    lua_setfield(L, -2, "hour");
    lua_pushinteger(L, tm.tm_min);
    lua_setfield(L, -2, "min");
    lua_pushinteger(L, tm.tm_sec);
    lua_setfield(L, -2, "sec");
    lua_pushinteger(L, tm.tm_wday); /* 0 = Sunday */
    lua_setfield(L, -2, "wday");
    lua_pushinteger(L, tm.tm_yday + 1);
    lua_setfield(L, -2, "yday");
    return 1;
}

static int l_time_monotonic(lua_State *L)
{
    lua_pushnumber(L, rt_monotonic());
    return 1;
}

static int l_time_sleep(lua_State *L)
{
    if (!rt_sleep_cancellable(luaL_checknumber(L, 1))) {
        RtError err;
        rt_error_init(&err);
        rt_cancel_error(&err);
        return rt_lua_raise(L, &err);
    }
    return 0;
}

int luaopen_time(lua_State *L)
{
    static const luaL_Reg f[] = {{"now", l_time_now},
                                 {"iso", l_time_iso},
                                 {"parse", l_time_parse},
                                 {"parse_ymd", l_time_parse_ymd},
                                 {"ymd", l_time_ymd},
                                 {"stamp", l_time_stamp},
                                 {"format", l_time_format},
                                 {"add_days", l_time_add_days},
                                 {"days_between", l_time_days_between},
                                 {"start_of_day", l_time_start_of_day},
                                 {"date", l_time_date},
                                 {"monotonic", l_time_monotonic},
                                 {"sleep", l_time_sleep},
                                 {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}

/* ---- proc ------------------------------------------------------------------------------- */

#define LOCK_MT "clubio.lock"

static int l_proc_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const allowed[] = {"argv",  "env",        "unset_env", "cwd", "stdin",
                                          "check", "max_output", "lock",      NULL};
    rt_lua_check_options(L, 1, "proc.run", allowed);
    RtProcSpec spec;
    rt_lua_proc_spec(L, 1, &spec, "proc.run");
    if (lua_getfield(L, 1, "lock") != LUA_TNIL) {
        int *fd = luaL_testudata(L, -1, LOCK_MT);
        if (!fd || *fd < 0)
            return rt_lua_fail(L, RT_CLASS_USAGE, "usage.lock", "pass lock = proc.lock(path)",
                               "proc.run: lock must be a held lock from proc.lock");
        spec.inherit_fd = *fd; /* the child holds the lock too, for as long as it lives */
    }
    lua_pop(L, 1);
    size_t in_len = 0;
    const char *in = NULL;
    if (lua_getfield(L, 1, "stdin") == LUA_TSTRING) in = lua_tolstring(L, -1, &in_len);
    lua_pop(L, 1); /* the string stays referenced by the option table */
    bool check = rt_lua_opt_boolean(L, 1, "check", false);
    lua_Integer limit = rt_lua_opt_integer(L, 1, "max_output", 64 * 1024 * 1024);
    luaL_argcheck(L, limit > 0, 1, "proc.run: max_output must be positive");
    RtError err;
    rt_error_init(&err);
    RtProc p;
    if (rt_proc_spawn(&spec, RT_PROC_STDIN | RT_PROC_STDOUT | RT_PROC_STDERR, &p, &err) != RT_OK)
        return rt_lua_raise(L, &err);
    RtProcCapture out = {.limit = (size_t)limit}, errc = {.limit = (size_t)limit};
    int status = rt_proc_communicate(&p, in, in_len, &out, &errc);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, out.p ? out.p : "", out.len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, errc.p ? errc.p : "", errc.len);
    lua_setfield(L, -2, "stderr");
    lua_pushboolean(L, out.truncated || errc.truncated || out.oom || errc.oom);
    lua_setfield(L, -2, "truncated");
    sb_free(&out);
    sb_free(&errc);
    if (rt_cancelled()) {
        rt_cancel_error(&err);
        return rt_lua_raise(L, &err);
    }
    if (check && status != 0) {
        lua_getfield(L, -1, "stderr");
        const char *e = lua_tostring(L, -1);
        size_t el = strlen(e);
        while (el && (e[el - 1] == '\n' || e[el - 1] == ' ')) el--;
        const char *last = e + el;
        while (last > e && last[-1] != '\n') last--;
        return rt_lua_fail(L, RT_CLASS_FAILURE, "proc.exit", NULL, "%s exited with status %d%s%.*s",
                           spec.argv[0], status, el ? ": " : "", (int)(e + el - last), last);
    }
    return 1;
}

/* proc.lock(path [, {wait = seconds}]) -> a held lock, or nil and "held" when another process
 * holds it past the wait. The wait ends early on a cancel (the cancel error is raised). The lock
 * is released by lock:release(), a to-be-closed variable, or garbage collection; a child given
 * it (proc.run{lock = l}) keeps holding it until it exits. */
static int l_proc_lock(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    double wait = 0;
    if (lua_istable(L, 2)) {
        static const char *const allowed[] = {"wait", NULL};
        rt_lua_check_options(L, 2, "proc.lock", allowed);
        wait = rt_lua_opt_number(L, 2, "wait", 0);
    }
    int *ud = lua_newuserdatauv(L, sizeof(int), 0);
    *ud = -1;
    luaL_setmetatable(L, LOCK_MT);
    RtError err;
    rt_error_init(&err);
    int fd;
    int r = rt_lock_take(path, wait, &fd, &err);
    if (r == RT_ERR) return rt_lua_raise(L, &err);
    if (r == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "held");
        return 2;
    }
    *ud = fd;
    return 1;
}

/* proc.spawn{argv, env, unset_env, cwd, lock} -> a child handle, without waiting: stdin is
 * /dev/null, stdout and stderr are ours (a service's log goes where the caller's goes). The
 * child leads its own process group. child:poll() -> status or nil while it runs;
 * child:wait(seconds) -> status, or nil when the seconds pass or a cancel (signal, --timeout)
 * arrives first: the child is then left running, for the caller to stop with
 * child:terminate([grace]) (SIGTERM to its group, SIGKILL after grace seconds, default 5; returns
 * the status); child:kill(sig); child:pid(). Garbage collection or a to-be-closed variable
 * terminates a child still running, so a handle never leaks one. */
#define CHILD_MT "clubio.child"

typedef struct Child {
    RtProc p;
    int status; /* once reaped; -1 before */
} Child;

static Child *check_child(lua_State *L)
{
    return luaL_checkudata(L, 1, CHILD_MT);
}

static void child_reap(Child *c)
{
    if (c->p.pid <= 0) return;
    int st = rt_proc_poll(&c->p);
    if (st != RT_PROC_RUNNING) c->status = st;
}

static int push_status(lua_State *L, Child *c)
{
    if (c->p.pid > 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, c->status);
    return 1;
}

static int l_proc_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const allowed[] = {"argv", "env", "unset_env", "cwd", "lock", NULL};
    rt_lua_check_options(L, 1, "proc.spawn", allowed);
    RtProcSpec spec;
    rt_lua_proc_spec(L, 1, &spec, "proc.spawn");
    if (lua_getfield(L, 1, "lock") != LUA_TNIL) {
        int *fd = luaL_testudata(L, -1, LOCK_MT);
        if (!fd || *fd < 0)
            return rt_lua_fail(L, RT_CLASS_USAGE, "usage.lock", "pass lock = proc.lock(path)",
                               "proc.spawn: lock must be a held lock from proc.lock");
        spec.inherit_fd = *fd;
    }
    lua_pop(L, 1);
    /* the handle exists (closed) before the child does: a raise in between leaks nothing */
    Child *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->p = (RtProc){.pid = -1, .in_fd = -1, .out_fd = -1, .err_fd = -1};
    c->status = -1;
    luaL_setmetatable(L, CHILD_MT);
    RtError err;
    rt_error_init(&err);
    if (rt_proc_spawn(&spec, 0, &c->p, &err) != RT_OK) return rt_lua_raise(L, &err);
    return 1;
}

static int child_poll(lua_State *L)
{
    Child *c = check_child(L);
    child_reap(c);
    return push_status(L, c);
}

static int child_wait(lua_State *L)
{
    Child *c = check_child(L);
    double limit = luaL_optnumber(L, 2, -1), start = rt_monotonic();
    int ms = 1;
    for (;;) {
        child_reap(c);
        if (c->p.pid <= 0 || rt_cancelled()) break;
        if (limit >= 0 && rt_monotonic() - start >= limit) break;
        struct timespec ts = {0, (long)ms * 1000000L};
        nanosleep(&ts, NULL);
        if (ms < 50) ms *= 2;
    }
    return push_status(L, c);
}

static int child_terminate(lua_State *L)
{
    Child *c = check_child(L);
    double grace = luaL_optnumber(L, 2, RT_PROC_GRACE);
    if (c->p.pid > 0) c->status = rt_proc_terminate(&c->p, grace);
    return push_status(L, c);
}

static int child_kill(lua_State *L)
{
    Child *c = check_child(L);
    int sig = (int)luaL_checkinteger(L, 2);
    child_reap(c);
    rt_proc_kill(&c->p, sig);
    return 0;
}

static int child_pid(lua_State *L)
{
    Child *c = check_child(L);
    child_reap(c);
    if (c->p.pid > 0)
        lua_pushinteger(L, c->p.pid);
    else
        lua_pushnil(L);
    return 1;
}

static int child_gc(lua_State *L)
{
    Child *c = check_child(L);
    if (c->p.pid > 0) c->status = rt_proc_terminate(&c->p, RT_PROC_GRACE);
    return 0;
}

static int lock_release(lua_State *L)
{
    int *fd = luaL_checkudata(L, 1, LOCK_MT);
    rt_lock_release(*fd);
    *fd = -1;
    return 0;
}

static int lock_tostring(lua_State *L)
{
    int *fd = luaL_checkudata(L, 1, LOCK_MT);
    lua_pushstring(L, *fd >= 0 ? "lock (held)" : "lock (released)");
    return 1;
}

int luaopen_proc(lua_State *L)
{
    static const luaL_Reg lock_meta[] = {{"__gc", lock_release},
                                         {"__close", lock_release},
                                         {"__tostring", lock_tostring},
                                         {NULL, NULL}};
    static const luaL_Reg lock_methods[] = {{"release", lock_release}, {NULL, NULL}};
    rt_lua_class(L, LOCK_MT, lock_meta, lock_methods);
    lua_pop(L, 1);
    static const luaL_Reg child_meta[] = {{"__gc", child_gc}, {"__close", child_gc}, {NULL, NULL}};
    static const luaL_Reg child_methods[] = {
        {"poll", child_poll}, {"wait", child_wait}, {"terminate", child_terminate},
        {"kill", child_kill}, {"pid", child_pid},   {NULL, NULL}};
    rt_lua_class(L, CHILD_MT, child_meta, child_methods);
    lua_pop(L, 1);
    static const luaL_Reg f[] = {
        {"run", l_proc_run}, {"lock", l_proc_lock}, {"spawn", l_proc_spawn}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}

/* ---- secret ----------------------------------------------------------------------------- */

static int secret_gc(lua_State *L)
{
    RtSecret **ud = luaL_checkudata(L, 1, RT_SECRET_MT);
    rt_secret_free(*ud);
    *ud = NULL;
    return 0;
}

static int secret_tostring(lua_State *L)
{
    RtSecret **ud = luaL_checkudata(L, 1, RT_SECRET_MT);
    lua_pushfstring(L, "secret(%s)", *ud ? (*ud)->origin : "wiped");
    return 1;
}

static int secret_reveal(lua_State *L)
{
    RtSecret **ud = luaL_checkudata(L, 1, RT_SECRET_MT);
    if (!*ud) return rt_lua_fail(L, RT_CLASS_USAGE, "usage.secret", NULL, "secret was wiped");
    lua_pushlstring(L, (*ud)->data, (*ud)->len);
    return 1;
}

static void push_secret(lua_State *L, RtSecret *s)
{
    RtSecret **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = s;
    static const luaL_Reg m[] = {
        {"__gc", secret_gc},       {"__close", secret_gc}, {"__tostring", secret_tostring},
        {"reveal", secret_reveal}, {"wipe", secret_gc},    {NULL, NULL}};
    rt_lua_class(L, RT_SECRET_MT, m, m); /* its own __index */
    lua_setmetatable(L, -2);
}

static int l_secret_env(lua_State *L)
{
    RtError err;
    rt_error_init(&err);
    RtSecret *s = rt_secret_from_env(luaL_checkstring(L, 1), &err);
    if (!s) return rt_lua_raise(L, &err);
    push_secret(L, s);
    return 1;
}

static int l_secret_file(lua_State *L)
{
    RtError err;
    rt_error_init(&err);
    RtSecret *s = rt_secret_from_file(luaL_checkstring(L, 1), &err);
    if (!s) return rt_lua_raise(L, &err);
    push_secret(L, s);
    return 1;
}

static int l_secret_value(lua_State *L)
{
    push_secret(L, rt_lua_to_secret(L, 1, "secret.value"));
    return 1;
}

int luaopen_secret(lua_State *L)
{
    static const luaL_Reg f[] = {
        {"env", l_secret_env}, {"file", l_secret_file}, {"value", l_secret_value}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}

/* ---- clubio ----------------------------------------------------------------------------- */

static void error_from_table(lua_State *L, int idx, RtError *err)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    static const char *const allowed[] = {"message", "code", "hint", "class", "retryable", NULL};
    rt_lua_check_options(L, idx, "clubio.error", allowed);
    const char *klass = rt_lua_opt_string(L, idx, "class", "failure");
    static const RtErrorClass all[] = {RT_CLASS_FAILURE,  RT_CLASS_USAGE,    RT_CLASS_CONFIG,
                                       RT_CLASS_VERIFY,   RT_CLASS_DECLINED, RT_CLASS_TIMEOUT,
                                       RT_CLASS_CANCELLED};
    RtErrorClass k = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(rt_error_class_name(all[i]), klass) == 0) k = all[i];
    if (!k)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.error_class",
                    "one of failure, usage, config, verify, declined, timeout, cancelled",
                    "unknown error class '%s'", klass);
    rt_error_init(err);
    rt_error_set(err, k, rt_lua_opt_string(L, idx, "code", "script.error"), "%s",
                 rt_lua_opt_string(L, idx, "message", "error"));
    const char *hint = rt_lua_opt_string(L, idx, "hint", NULL);
    if (hint) rt_error_hint(err, "%s", hint);
    err->retryable = rt_lua_opt_boolean(L, idx, "retryable", false);
}

static int l_clubio_error(lua_State *L)
{
    RtError err;
    error_from_table(L, 1, &err);
    rt_lua_push_error(L, &err);
    return 1;
}

static int l_clubio_fail(lua_State *L)
{
    RtError err;
    error_from_table(L, 1, &err);
    return rt_lua_raise(L, &err);
}

static int l_clubio_is_error(lua_State *L)
{
    bool is = false;
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, RT_ERROR_MT);
        is = lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, is);
    return 1;
}

static int l_clubio_cancelled(lua_State *L)
{
    lua_pushboolean(L, rt_cancelled());
    return 1;
}

/* confirm(prompt): true with --yes; asks on a terminal; refuses (raises) when nobody can answer,
 * instead of hanging a scheduled job on a prompt. */
static int l_clubio_confirm(lua_State *L)
{
    const char *prompt = luaL_checkstring(L, 1);
    if (rt_host_global_flags.yes) {
        rt_log(RT_LOG_INFO, "%s: confirmed by --yes", prompt);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!isatty(0))
        return rt_lua_fail(L, RT_CLASS_DECLINED, "declined.needs_yes",
                           "re-run with --yes to confirm in a non-interactive run",
                           "%s: refusing without confirmation (stdin is not a terminal)", prompt);
    fprintf(stderr, "%s [y/N] ", prompt);
    fflush(stderr);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, line[0] == 'y' || line[0] == 'Y');
    return 1;
}

static int l_clubio_hostname(lua_State *L)
{
    char h[256];
    if (gethostname(h, sizeof h) != 0) snprintf(h, sizeof h, "unknown");
    h[sizeof h - 1] = '\0';
    lua_pushstring(L, h);
    return 1;
}

/* exit_error(): the message of the error that is ending the script, for finalizers that run
 * while the state closes (nil while the script runs, and after a normal end). */
static int l_clubio_exit_error(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, RT_EXIT_ERROR_KEY);
    return 1;
}

int luaopen_clubio(lua_State *L)
{
    static const luaL_Reg f[] = {{"error", l_clubio_error},
                                 {"fail", l_clubio_fail},
                                 {"is_error", l_clubio_is_error},
                                 {"cancelled", l_clubio_cancelled},
                                 {"confirm", l_clubio_confirm},
                                 {"hostname", l_clubio_hostname},
                                 {"exit_error", l_clubio_exit_error},
                                 {"shielded", rt_host_shielded},
                                 {NULL, NULL}};
    luaL_newlib(L, f);
    lua_pushliteral(L, CLUBIO_DR_VERSION);
    lua_setfield(L, -2, "version");
    const RtHostFlags *fl = &rt_host_global_flags;
    lua_createtable(L, 0, 6);
    lua_pushboolean(L, fl->dry_run);
    lua_setfield(L, -2, "dry_run");
    lua_pushboolean(L, fl->yes);
    lua_setfield(L, -2, "yes");
    lua_pushboolean(L, fl->json);
    lua_setfield(L, -2, "json");
    lua_pushstring(L, rt_log_level_name((RtLogLevel)fl->log_level));
    lua_setfield(L, -2, "log_level");
    if (fl->timeout > 0)
        lua_pushnumber(L, fl->timeout);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, "timeout");
    lua_setfield(L, -2, "flags");
    lua_pushboolean(L, isatty(0) && isatty(2));
    lua_setfield(L, -2, "interactive");
    return 1;
}
