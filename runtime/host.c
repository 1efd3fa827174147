/*
 * The Lua host — see host.h.
 *
 * Everything a script does runs inside one lua_pcall with a message handler (as lua.c does);
 * that is where errors become the host's output: "clubio-dr: <message>" and "HINT: <hint>" on
 * stderr (traceback with --log-level debug), or a JSON error object on stdout with --json, and a
 * stable exit status per error class.
 */
#include "host.h"
#include "commands.h"
#include "io/cancel.h"
#include "json.h"
#include "log.h"
#include "redact.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lualib.h>

static const char TRACEBACK_KEY = 't'; /* registry key: address of a static char */

/* ---- search roots ----------------------------------------------------------------------- */

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The project's own root: the install prefix's share/clubio-dr next to the binary, else the
 * source tree the binary was built from, else the configured data dir. */
static const char *data_root(void)
{
    static char root[PATH_MAX];
    if (root[0]) return root;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char cand[PATH_MAX + 64];
            snprintf(cand, sizeof cand, "%s/../share/clubio-dr/scripts", exe);
            if (is_dir(cand)) {
                snprintf(root, sizeof root, "%s/../share/clubio-dr", exe);
                return root;
            }
        }
    }
    if (is_dir(CLUBIO_DR_SOURCE_DIR "/scripts"))
        snprintf(root, sizeof root, "%s", CLUBIO_DR_SOURCE_DIR);
    else
        snprintf(root, sizeof root, "%s", CLUBIO_DR_DATADIR);
    return root;
}

const char *const *rt_host_roots(void)
{
    static char *roots[34];
    static bool done;
    if (done) return (const char *const *)roots;
    int n = 0;
    const char *env = getenv("CLUBIO_DR_PATH");
    if (env && *env) {
        char *copy = strdup(env), *save = NULL;
        for (char *tok = copy ? strtok_r(copy, ":", &save) : NULL; tok && n < 32;
             tok = strtok_r(NULL, ":", &save))
            if (*tok) roots[n++] = strdup(tok);
        free(copy);
    }
    roots[n++] = strdup(data_root());
    roots[n] = NULL;
    done = true;
    return (const char *const *)roots;
}

char *rt_host_find_script(const char *name)
{
    if (strchr(name, '/') || (strlen(name) > 4 && strcmp(name + strlen(name) - 4, ".lua") == 0))
        return is_file(name) ? strdup(name) : NULL;
    static const char *const subdirs[] = {"", "scripts/", "runbooks/", NULL};
    for (const char *const *r = rt_host_roots(); *r; r++)
        for (int i = 0; subdirs[i]; i++) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s%s.lua", *r, subdirs[i], name);
            if (is_file(p)) return strdup(p);
        }
    return NULL;
}

/* ---- strict globals --------------------------------------------------------------------- */

static int strict_index(lua_State *L)
{
    const char *name = lua_tostring(L, 2);
    luaL_where(L, 2);
    return luaL_error(L, "%sundefined global '%s' (declare it local, or use declare())",
                      lua_tostring(L, -1), name ? name : "?");
}

static int strict_newindex(lua_State *L)
{
    const char *name = lua_tostring(L, 2);
    luaL_where(L, 2);
    return luaL_error(L, "%sassignment to undeclared global '%s' (use local, or declare())",
                      lua_tostring(L, -1), name ? name : "?");
}

/* declare(name, value): the one way to create a global on purpose. */
static int l_declare(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_rawset(L, 1);
    return 0;
}

static void install_strict(lua_State *L)
{
    lua_pushglobaltable(L);
    lua_pushglobaltable(L);
    lua_pushcclosure(L, l_declare, 1);
    lua_setfield(L, -2, "declare");
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, strict_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, strict_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
}

/* ---- cancel hook ------------------------------------------------------------------------ */

static void cancel_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (!rt_cancelled()) return;
    RtError err;
    rt_error_init(&err);
    rt_cancel_error(&err);
    /* From now on the hook fires at every instruction: a pcall may catch this raise, but the
     * first instruction after it raises again, so the cancel always reaches the top. */
    lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1);
    rt_lua_raise(L, &err);
}

/* clubio.shielded(fn, ...): fn(...) with the cancel hook off, for cleanup that must run to its
 * end after a signal (stop a child, record the outcome, release a lock); its waits must be
 * cancellable in C (time.sleep, child:wait). Returns fn's results or raises its error; a cancel
 * that came meanwhile is raised at the first instruction after it. */
int rt_host_shielded(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_Hook hook = lua_gethook(L);
    int mask = lua_gethookmask(L), count = lua_gethookcount(L);
    lua_sethook(L, NULL, 0, 0);
    int rc = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (hook == cancel_hook && rt_cancelled())
        lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1);
    else
        lua_sethook(L, hook, mask, count);
    if (rc != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

/* ---- errors ----------------------------------------------------------------------------- */

static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "message");
    if (!lua_isstring(L, -1)) lua_pushliteral(L, "error");
    return 1;
}

void rt_host_set_error_mt(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    static const luaL_Reg meta[] = {{"__tostring", error_tostring}, {NULL, NULL}};
    rt_lua_class(L, RT_ERROR_MT, meta, NULL);
    lua_setmetatable(L, idx);
}

static int msgh(lua_State *L)
{
    const char *msg = lua_isstring(L, 1) ? lua_tostring(L, 1) : NULL;
    luaL_traceback(L, L, msg, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
    lua_settop(L, 1);
    return 1;
}

int rt_report_error(const RtError *err)
{
    char msg[sizeof err->message], hint[sizeof err->hint];
    rt_redact(err->message, msg, sizeof msg);
    rt_redact(err->hint, hint, sizeof hint);
    if (rt_host_global_flags.json) {
        fputs("{\"ok\":false,\"error\":{\"class\":", stdout);
        rt_json_fquote(stdout, rt_error_class_name(err->klass));
        fputs(",\"code\":", stdout);
        rt_json_fquote(stdout, err->code);
        fputs(",\"message\":", stdout);
        rt_json_fquote(stdout, msg);
        if (hint[0]) {
            fputs(",\"hint\":", stdout);
            rt_json_fquote(stdout, hint);
        }
        fprintf(stdout, ",\"retryable\":%s,\"exit\":%d}}\n", err->retryable ? "true" : "false",
                rt_error_exit_status(err->klass));
        fflush(stdout);
    } else {
        fprintf(stderr, "clubio-dr: %s\n", msg);
        if (hint[0]) fprintf(stderr, "HINT: %s\n", hint);
    }
    return rt_error_exit_status(err->klass);
}

static RtErrorClass class_from_name(const char *name)
{
    static const RtErrorClass all[] = {RT_CLASS_FAILURE,  RT_CLASS_USAGE,    RT_CLASS_CONFIG,
                                       RT_CLASS_VERIFY,   RT_CLASS_DECLINED, RT_CLASS_TIMEOUT,
                                       RT_CLASS_CANCELLED};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(rt_error_class_name(all[i]), name) == 0) return all[i];
    return RT_CLASS_FAILURE;
}

/* Turns the error value on top of the stack into an RtError. */
static void error_from_lua(lua_State *L, int idx, RtError *err)
{
    rt_error_init(err);
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_getfield(L, idx, "message");
        lua_getfield(L, idx, "class");
        lua_getfield(L, idx, "code");
        lua_getfield(L, idx, "hint");
        lua_getfield(L, idx, "retryable");
        rt_error_set(err, class_from_name(lua_tostring(L, -4)),
                     lua_isstring(L, -3) ? lua_tostring(L, -3) : "script.error", "%s",
                     lua_isstring(L, -5) ? lua_tostring(L, -5) : "error object without a message");
        if (lua_isstring(L, -2)) rt_error_hint(err, "%s", lua_tostring(L, -2));
        err->retryable = lua_toboolean(L, -1);
        lua_pop(L, 5);
    } else {
        const char *m = lua_tostring(L, idx);
        rt_error_set(err, RT_CLASS_FAILURE, "script.error", "%s",
                     m ? m : "script raised a non-string error");
    }
}

static int report_lua_error(lua_State *L)
{
    RtError err;
    error_from_lua(L, -1, &err);
    /* kept for finalizers that run at lua_close: a job that never finished records the error
     * that stopped it (clubio.exit_error()), not only that it stopped */
    lua_pushstring(L, err.message);
    lua_setfield(L, LUA_REGISTRYINDEX, RT_EXIT_ERROR_KEY);
    if (rt_host_global_flags.log_level <= RT_LOG_DEBUG) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
        if (lua_isstring(L, -1)) {
            char *tb = rt_redact_dup(lua_tostring(L, -1));
            fprintf(stderr, "%s\n", tb ? tb : "");
            free(tb);
        }
        lua_pop(L, 1);
    }
    return rt_report_error(&err);
}

/* ---- state ------------------------------------------------------------------------------ */

static void set_package_path(lua_State *L)
{
    lua_getglobal(L, "package");
    int pkg = lua_gettop(L);
    int parts = 0;
    for (const char *const *r = rt_host_roots(); *r; r++) {
        lua_pushfstring(L, "%s/scripts/lib/?.lua;%s/lib/?.lua;", *r, *r);
        parts++;
    }
    lua_getfield(L, pkg, "path");
    lua_concat(L, parts + 1);
    lua_setfield(L, pkg, "path");
    lua_pop(L, 1);
}

lua_State *rt_host_new(void)
{
    lua_State *L = luaL_newstate();
    if (!L) return NULL;
    luaL_openlibs(L);
    /* Lua seeds math.random from the clock and an address, which two processes started in the
     * same second (under ASan, with fixed addresses) can share: scripts name branches, run ids
     * and temporary objects with it, so seed it from the kernel instead. */
    {
        lua_Integer seed[2] = {0, 0};
        if (getrandom(seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed) {
            lua_getglobal(L, "math");
            lua_getfield(L, -1, "randomseed");
            lua_pushinteger(L, seed[0]);
            lua_pushinteger(L, seed[1]);
            lua_call(L, 2, 0);
            lua_pop(L, 1);
        }
    }
    static const luaL_Reg preload[] = {{"pipe", luaopen_pipe},
                                       {"log", luaopen_log},
                                       {"env", luaopen_env},
                                       {"time", luaopen_time},
                                       {"proc", luaopen_proc},
                                       {"secret", luaopen_secret},
                                       {"clubio", luaopen_clubio},
                                       {"crypto", luaopen_crypto},
                                       {"s3", luaopen_s3},
                                       {"pgdump", luaopen_pgdump},
                                       {"neon", luaopen_neon},
                                       {"verify", luaopen_verify},
                                       {"http", luaopen_http},
                                       {"aws", luaopen_aws},
                                       {"changes", luaopen_changes},
                                       {"cjson", luaopen_cjson},
                                       {"cjson.safe", luaopen_cjson_safe},
                                       {NULL, NULL}};
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    luaL_setfuncs(L, preload, 0);
    lua_pop(L, 1);
    set_package_path(L);
    lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1000);
    install_strict(L);
    return L;
}

static int run_protected(lua_State *L, int nargs, int nres)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msgh);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nres, base);
    lua_remove(L, base);
    return rc;
}

int rt_host_run_script(lua_State *L, const char *path, int argc, char **argv)
{
    /* arg = { [0] = path, ... } as in lua.c; rawset because strict globals refuse a set */
    lua_pushglobaltable(L);
    lua_pushliteral(L, "arg");
    lua_createtable(L, argc, 1);
    lua_pushstring(L, path);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_rawset(L, -3);
    lua_pop(L, 1);

    if (luaL_loadfile(L, path) != LUA_OK) return report_lua_error(L);
    for (int i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
    if (run_protected(L, argc, 1) != LUA_OK) return report_lua_error(L);
    /* A script may return a number (exit status) or false (failure); anything else is success. */
    int status = 0;
    if (lua_isinteger(L, -1))
        status = (int)lua_tointeger(L, -1);
    else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1))
        status = 1;
    lua_pop(L, 1);
    return status;
}

static void print_value(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TTABLE && !luaL_getmetafield(L, idx, "__tostring")) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "cjson.safe");
        lua_call(L, 1, 1);
        lua_getfield(L, -1, "encode");
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        if (lua_isstring(L, -1)) {
            puts(lua_tostring(L, -1));
            lua_pop(L, 2);
            return;
        }
        lua_pop(L, 2);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_pop(L, 1);
    }
    puts(luaL_tolstring(L, idx, NULL));
    lua_pop(L, 1);
}

int rt_host_eval(lua_State *L, const char *code)
{
    /* like lua.c: try "return <code>" first so that `-e '1+1'` prints 2 too */
    size_t n = strlen(code) + 8;
    char *ret = malloc(n);
    if (!ret) return 1;
    snprintf(ret, n, "return %s", code);
    int rc = luaL_loadbuffer(L, ret, strlen(ret), "=(command line)");
    free(ret);
    if (rc != LUA_OK) {
        lua_pop(L, 1);
        if (luaL_loadbuffer(L, code, strlen(code), "=(command line)") != LUA_OK)
            return report_lua_error(L);
    }
    int base = lua_gettop(L) - 1;
    if (run_protected(L, 0, LUA_MULTRET) != LUA_OK) return report_lua_error(L);
    int top = lua_gettop(L);
    for (int i = base + 1; i <= top; i++) print_value(L, i);
    lua_settop(L, base);
    fflush(stdout);
    return 0;
}

/* ---- list ------------------------------------------------------------------------------- */

typedef struct ScriptInfo {
    char name[128];
    char kind[16];
    char path[PATH_MAX];
    char description[256];
    char schedule[64];
} ScriptInfo;

static void read_header(ScriptInfo *s)
{
    FILE *f = fopen(s->path, "r");
    if (!f) return;
    char line[512];
    bool first = true;
    while (fgets(line, sizeof line, f)) {
        if (first && line[0] == '#') {
            first = false;
            continue;
        }
        first = false;
        if (strncmp(line, "--", 2) != 0) break;
        char *t = line;
        while (*t == '-') t++;
        while (*t == ' ' || *t == '\t') t++;
        t[strcspn(t, "\r\n")] = '\0';
        if (strncmp(t, "schedule:", 9) == 0) {
            t += 9;
            while (*t == ' ') t++;
            snprintf(s->schedule, sizeof s->schedule, "%s", t);
        } else if (!s->description[0] && *t) {
            snprintf(s->description, sizeof s->description, "%s", t);
        }
    }
    fclose(f);
}

static int cmp_info(const void *a, const void *b)
{
    const ScriptInfo *x = a, *y = b;
    int k = strcmp(x->kind, y->kind);
    return k ? -k : strcmp(x->name, y->name); /* scripts before runbooks */
}

int rt_host_list(bool json)
{
    ScriptInfo *items = NULL;
    size_t n = 0, cap = 0;
    /* same places as rt_host_find_script: a root itself (a site's folder), scripts/, runbooks/ */
    static const char *const subdirs[] = {"", "/scripts", "/runbooks"};
    for (const char *const *r = rt_host_roots(); *r; r++)
        for (int d = 0; d < 3; d++) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s%s", *r, subdirs[d]);
            DIR *dh = opendir(dir);
            if (!dh) continue;
            struct dirent *e;
            while ((e = readdir(dh))) {
                size_t len = strlen(e->d_name);
                if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0 || e->d_name[0] == '.')
                    continue;
                char name[128];
                snprintf(name, sizeof name, "%.*s", (int)(len - 4), e->d_name);
                bool shadowed = false; /* an earlier root (CLUBIO_DR_PATH) overrides */
                for (size_t i = 0; i < n && !shadowed; i++)
                    shadowed = strcmp(items[i].name, name) == 0;
                if (shadowed) continue;
                if (n == cap) {
                    cap = cap ? cap * 2 : 32;
                    ScriptInfo *ni = realloc(items, cap * sizeof *ni);
                    if (!ni) break;
                    items = ni;
                }
                ScriptInfo *s = &items[n++];
                memset(s, 0, sizeof *s);
                snprintf(s->name, sizeof s->name, "%s", name);
                snprintf(s->kind, sizeof s->kind, "%s", d == 2 ? "runbook" : "script");
                snprintf(s->path, sizeof s->path, "%s/%s", dir, e->d_name);
                read_header(s);
            }
            closedir(dh);
        }
    if (n) qsort(items, n, sizeof *items, cmp_info);
    if (json) {
        fputs("[", stdout);
        for (size_t i = 0; i < n; i++) {
            fputs(i ? ",\n {\"name\":" : "{\"name\":", stdout);
            rt_json_fquote(stdout, items[i].name);
            fputs(",\"kind\":", stdout);
            rt_json_fquote(stdout, items[i].kind);
            fputs(",\"description\":", stdout);
            rt_json_fquote(stdout, items[i].description);
            fputs(",\"schedule\":", stdout);
            if (items[i].schedule[0])
                rt_json_fquote(stdout, items[i].schedule);
            else
                fputs("null", stdout);
            fputs(",\"path\":", stdout);
            rt_json_fquote(stdout, items[i].path);
            fputs("}", stdout);
        }
        fputs("]\n", stdout);
    } else if (n == 0) {
        fprintf(stderr, "no scripts found (searched %s)\n", data_root());
    } else {
        int w = 4;
        for (size_t i = 0; i < n; i++)
            if ((int)strlen(items[i].name) > w) w = (int)strlen(items[i].name);
        printf("%-*s  %-8s  %-16s  %s\n", w, "NAME", "KIND", "SCHEDULE", "DESCRIPTION");
        for (size_t i = 0; i < n; i++)
            printf("%-*s  %-8s  %-16s  %s\n", w, items[i].name, items[i].kind,
                   items[i].schedule[0] ? items[i].schedule : "-", items[i].description);
    }
    free(items);
    return 0;
}
