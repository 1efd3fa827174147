/*
 * The host's C API for native module bindings (<module>_lua.c files — the only files that
 * include lua.h). Everything here may raise (longjmp) unless it says otherwise.
 *
 * Stages: a module's core builds an RtSource/RtFilter/RtSink; the binding hands it to Lua with
 * rt_lua_push_*(), which takes ownership (also if it raises). In Lua the stage is an opaque
 * "clubio.stage" userdata that pipe.run{...} consumes; a stage can be used in one pipe only.
 *
 * Errors: rt_lua_raise() turns an RtError into the structured Lua error
 * { class, code, message, hint, retryable } (metatable "clubio.error", tostring gives the
 * message). Free C resources *before* raising.
 *
 * Options: rt_lua_check_options() rejects unknown keys in an option table ("unknown option
 * 'levle' for crypto.gzip"), so a typo in a runbook is an error, not a silent default.
 */
#ifndef RT_LUA_API_H
#define RT_LUA_API_H

#include "flags.h" /* the host flags visible to modules, rt_host_flags() */
#include "io/stage.h"
#include "secret.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>

/* may raise */
void rt_lua_push_source(lua_State *L, RtSource *s);
void rt_lua_push_filter(lua_State *L, RtFilter *f);
void rt_lua_push_sink(lua_State *L, RtSink *s);
/* Sets the label under which pipe.run reports the stage's results (the stage at idx). Modules
 * call it with their `label` option. */
void rt_lua_set_stage_label(lua_State *L, int idx, const char *label);
/* Labels the stage on top of the stack with the `label` key of option table opt_idx, if any
 * (opt_idx may be absent or nil). */
void rt_lua_label_from_options(lua_State *L, int opt_idx);
/* Pushes a results tree as a Lua table. */
void rt_lua_push_results(lua_State *L, const RtResults *r);

/* Raising errors. */
int rt_lua_raise(lua_State *L, const RtError *err); /* never returns */
int rt_lua_fail(lua_State *L, RtErrorClass klass, const char *code, const char *hint,
                const char *fmt, ...) __attribute__((format(printf, 5, 6))); /* never returns */
/* Pushes (does not raise) a structured error object. */
void rt_lua_push_error(lua_State *L, const RtError *err);

/* Class metatables (liolib.c's createmeta): pushes the metatable `name`, building it the first
 * time: `meta` are its metamethods (__gc, __close, __tostring...; __name is `name`), and
 * `methods`, if not NULL, become its __index table; `methods == meta` makes the metatable its own
 * __index. Leaves the metatable on the stack, as luaL_newmetatable does. */
void rt_lua_class(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);

/* Option tables. `allowed` is NULL-terminated. idx may be absent/nil (then nothing to check).
 * `what` names the function for the message, e.g. "crypto.gzip". */
void rt_lua_check_options(lua_State *L, int idx, const char *what, const char *const allowed[]);
const char *rt_lua_opt_string(lua_State *L, int idx, const char *key, const char *def);
lua_Integer rt_lua_opt_integer(lua_State *L, int idx, const char *key, lua_Integer def);
lua_Number rt_lua_opt_number(lua_State *L, int idx, const char *key, lua_Number def);
bool rt_lua_opt_boolean(lua_State *L, int idx, const char *key, bool def);

/* Secrets: accepts a "clubio.secret" userdata (from secret.env/file/value) or a plain string
 * (registered for redaction). Returns a new RtSecret the caller frees with rt_secret_free. */
RtSecret *rt_lua_to_secret(lua_State *L, int idx, const char *what);
/* Reads a secret from option table idx: key (secret or string), key_env (env var name) or
 * key_file (path); `default_env` is used when none is given (may be NULL -> error). */
RtSecret *rt_lua_opt_secret(lua_State *L, int idx, const char *key, const char *default_env,
                            const char *what);

#endif
