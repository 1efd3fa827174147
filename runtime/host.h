/*
 * The Lua host: builds the Lua state (standard libraries, strict globals, preloaded native
 * modules, search paths), finds and runs scripts, evaluates -e chunks, lists scripts, and turns
 * errors into the host's output and exit statuses. Internal to runtime/.
 */
#ifndef RT_HOST_H
#define RT_HOST_H

#include "lua_api.h"

#define RT_STAGE_MT  "clubio.stage"
#define RT_SECRET_MT "clubio.secret"
#define RT_ERROR_MT  "clubio.error"
/* registry field: the message of the error that ended the script (set before lua_close) */
#define RT_EXIT_ERROR_KEY "clubio.exit_error"

enum { RT_STAGE_SOURCE = 0, RT_STAGE_FILTER = 1, RT_STAGE_SINK = 2 };

typedef struct RtLuaStage {
    int kind;
    void *obj; /* RtSource/RtFilter/RtSink; NULL once a pipe took it */
    char name[32];
    char label[64];
} RtLuaStage;

RtLuaStage *rt_lua_check_stage(lua_State *L, int idx);
/* liolib's order: push a closed stage userdata of `kind` (RT_STAGE_*) first, then build the C
 * stage and hand it over with rt_lua_stage_set. An error raised in between (a memory error, a
 * failed request) leaves a closed userdata for the collector, never a leaked stage. */
RtLuaStage *rt_lua_new_stage(lua_State *L, int kind);
void rt_lua_stage_set(RtLuaStage *s, void *obj, const char *name);
void rt_host_set_error_mt(lua_State *L, int idx);

lua_State *rt_host_new(void);
/* clubio.shielded(fn, ...): fn with the cancel hook off (see host.c). */
int rt_host_shielded(lua_State *L);
/* Runs a script file with arguments; returns the process exit status. */
int rt_host_run_script(lua_State *L, const char *path, int argc, char **argv);
/* Runs a chunk and prints its results; returns the exit status. */
int rt_host_eval(lua_State *L, const char *code);
/* Resolves NAME (or a path) to a script file; NULL if none. Result is malloc'ed. */
char *rt_host_find_script(const char *name);
/* Prints the scripts and runbooks (text or JSON). */
int rt_host_list(bool json);
/* The folders searched for scripts, in order (NULL-terminated, static storage). */
const char *const *rt_host_roots(void);

/* Module openers (preloaded). */
int luaopen_pipe(lua_State *L);
int luaopen_log(lua_State *L);
int luaopen_env(lua_State *L);
int luaopen_time(lua_State *L);
int luaopen_proc(lua_State *L);
int luaopen_secret(lua_State *L);
int luaopen_clubio(lua_State *L);
int luaopen_crypto(lua_State *L);
int luaopen_s3(lua_State *L);
int luaopen_pgdump(lua_State *L);
int luaopen_neon(lua_State *L);
int luaopen_verify(lua_State *L);
int luaopen_http(lua_State *L);
int luaopen_aws(lua_State *L);
int luaopen_changes(lua_State *L);
int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

#endif
