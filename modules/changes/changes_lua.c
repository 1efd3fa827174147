/*
 * The `changes` Lua module: the change archive's capture and replay (modules/changes/README.md).
 *
 *   local changes = require "changes"
 *   local cap <close> = changes.open{url = url, slot = "clubio_changes", publication =
 * "clubio_changes"} local slot = cap:create_slot()               -- {consistent_point, snapshot}
 * (first run only) cap:start{skip_through = "0/1A2B3C0"} if cap:wait(10) then local r =
 * pipe.run{cap:segment{interval = 10}, crypto.gzip{}, ...} end cap:confirm(r.segment.end_lsn) local
 * rp <close> = changes.replayer{url = target} pipe.run{c:download{...}, crypto.decrypt{},
 * crypto.gunzip{}, rp:sink{stop_time = "…Z"}}
 */
#include "changes.h"
#include "host.h"

#include <stdint.h>
#include <string.h>

#define CAP_MT "clubio.changes.capture"
#define RP_MT  "clubio.changes.replayer"

typedef struct LCap {
    ChgCapture *c;
} LCap;

typedef struct LRp {
    ChgReplayer *r;
} LRp;

static uint64_t opt_lsn(lua_State *L, int idx, const char *key)
{
    const char *s = rt_lua_opt_string(L, idx, key, NULL);
    uint64_t v = 0;
    if (s && !chg_lsn_parse(s, &v))
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.lsn", "an LSN looks like 16/B374D848",
                    "%s: '%s' is not an LSN", key, s);
    return v;
}

static ChgCapture *check_cap(lua_State *L)
{
    LCap *lc = luaL_checkudata(L, 1, CAP_MT);
    if (!lc->c) rt_lua_fail(L, RT_CLASS_USAGE, "changes.closed", NULL, "the capture is closed");
    return lc->c;
}

/* changes.open{url=, slot=, publication=} */
static int l_open(lua_State *L)
{
    static const char *const allowed[] = {"url", "slot", "publication", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "changes.open", allowed);
    const char *url = rt_lua_opt_string(L, 1, "url", NULL);
    const char *slot = rt_lua_opt_string(L, 1, "slot", NULL);
    const char *pub = rt_lua_opt_string(L, 1, "publication", NULL);
    if (!url || !slot || !pub)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL,
                    "changes.open needs url, slot and publication");
    LCap *lc = lua_newuserdatauv(L, sizeof *lc, 0);
    lc->c = NULL;
    luaL_setmetatable(L, CAP_MT);
    RtError err;
    rt_error_init(&err);
    lc->c = chg_capture_open(url, slot, pub, &err);
    if (!lc->c) return rt_lua_raise(L, &err);
    return 1;
}

static int l_cap_close(lua_State *L)
{
    LCap *lc = luaL_checkudata(L, 1, CAP_MT);
    chg_capture_free(lc->c);
    lc->c = NULL;
    return 0;
}

static int l_create_slot(lua_State *L)
{
    ChgCapture *c = check_cap(L);
    ChgSlotInfo info;
    RtError err;
    rt_error_init(&err);
    if (chg_capture_create_slot(c, &info, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, info.consistent_point);
    lua_setfield(L, -2, "consistent_point");
    lua_pushstring(L, info.snapshot);
    lua_setfield(L, -2, "snapshot");
    return 1;
}

/* cap:start{skip_through = LSN} */
static int l_start(lua_State *L)
{
    ChgCapture *c = check_cap(L);
    static const char *const allowed[] = {"skip_through", NULL};
    rt_lua_check_options(L, 2, "capture:start", allowed);
    uint64_t skip = lua_istable(L, 2) ? opt_lsn(L, 2, "skip_through") : 0;
    RtError err;
    rt_error_init(&err);
    if (chg_capture_start(c, skip, &err) != RT_OK) return rt_lua_raise(L, &err);
    return 0;
}

/* cap:wait(seconds) -> commit LSN of the next transaction, or nil */
static int l_wait(lua_State *L)
{
    ChgCapture *c = check_cap(L);
    double secs = luaL_checknumber(L, 2);
    uint64_t lsn = 0;
    RtError err;
    rt_error_init(&err);
    if (chg_capture_wait(c, secs, &lsn, &err) != RT_OK) return rt_lua_raise(L, &err);
    if (!lsn) return 0;
    char l[24];
    chg_lsn_format(lsn, l);
    lua_pushstring(L, l);
    return 1;
}

static int l_confirm(lua_State *L)
{
    ChgCapture *c = check_cap(L);
    uint64_t lsn;
    if (!chg_lsn_parse(luaL_checkstring(L, 2), &lsn))
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.lsn", NULL, "capture:confirm: not an LSN");
    RtError err;
    rt_error_init(&err);
    if (chg_capture_confirm(c, lsn, &err) != RT_OK) return rt_lua_raise(L, &err);
    return 0;
}

/* cap:segment{interval = 10, max_bytes = 64 MiB, sequences_url =, label =} -> source */
static int l_segment(lua_State *L)
{
    ChgCapture *c = check_cap(L);
    static const char *const allowed[] = {"interval", "max_bytes", "sequences_url", "label", NULL};
    rt_lua_check_options(L, 2, "capture:segment", allowed);
    double interval = lua_istable(L, 2) ? rt_lua_opt_number(L, 2, "interval", 10) : 10;
    lua_Integer max = lua_istable(L, 2) ? rt_lua_opt_integer(L, 2, "max_bytes", 0) : 0;
    const char *seq = lua_istable(L, 2) ? rt_lua_opt_string(L, 2, "sequences_url", NULL) : NULL;
    if (interval < 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL, "capture:segment: interval < 0");
    RtError err;
    rt_error_init(&err);
    RtSource *s = chg_segment_source(c, interval, max, seq, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_push_source(L, s);
    rt_lua_label_from_options(L, 2);
    return 1;
}

/* changes.replayer{url=} */
static int l_replayer(lua_State *L)
{
    static const char *const allowed[] = {"url", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    rt_lua_check_options(L, 1, "changes.replayer", allowed);
    const char *url = rt_lua_opt_string(L, 1, "url", NULL);
    if (!url) rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL, "changes.replayer needs url");
    LRp *lr = lua_newuserdatauv(L, sizeof *lr, 0);
    lr->r = NULL;
    luaL_setmetatable(L, RP_MT);
    RtError err;
    rt_error_init(&err);
    lr->r = chg_replayer_new(url, &err);
    if (!lr->r) return rt_lua_raise(L, &err);
    return 1;
}

static ChgReplayer *check_rp(lua_State *L)
{
    LRp *lr = luaL_checkudata(L, 1, RP_MT);
    if (!lr->r) rt_lua_fail(L, RT_CLASS_USAGE, "changes.closed", NULL, "the replayer is closed");
    return lr->r;
}

static int l_rp_close(lua_State *L)
{
    LRp *lr = luaL_checkudata(L, 1, RP_MT);
    chg_replayer_release(lr->r);
    lr->r = NULL;
    return 0;
}

/* rp:sink{stop_time = ISO|nil, base_snapshot =, base_lsn =, expect_sha256 =, label =} */
static int l_sink(lua_State *L)
{
    ChgReplayer *r = check_rp(L);
    static const char *const allowed[] = {"stop_time",     "base_snapshot", "base_lsn",
                                          "expect_sha256", "label",         NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "replayer:sink", allowed);
    ChgReplayOptions o = {0};
    o.stop_time = INT64_MAX;
    const char *st = rt_lua_opt_string(L, 2, "stop_time", NULL);
    if (st && !chg_time_parse(st, &o.stop_time))
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.time", "use 2026-01-15T10:30:00Z",
                    "replayer:sink: '%s' is not a UTC time", st);
    o.base_snapshot = rt_lua_opt_string(L, 2, "base_snapshot", NULL);
    o.base_lsn = opt_lsn(L, 2, "base_lsn");
    o.expect_sha256 = rt_lua_opt_string(L, 2, "expect_sha256", NULL);
    RtError err;
    rt_error_init(&err);
    RtSink *k = chg_replay_sink(r, &o, &err);
    if (!k) return rt_lua_raise(L, &err);
    rt_lua_push_sink(L, k);
    rt_lua_label_from_options(L, 2);
    return 1;
}

static int l_rp_results(lua_State *L)
{
    ChgReplayer *r = check_rp(L);
    RtResults *res = rt_results_new();
    if (!res) return luaL_error(L, "out of memory");
    chg_replayer_results(r, res);
    rt_lua_push_results(L, res);
    rt_results_free(res);
    return 1;
}

/* changes.no_owner{label=} -> filter */
static int l_no_owner(lua_State *L)
{
    static const char *const allowed[] = {"label", NULL};
    rt_lua_check_options(L, 1, "changes.no_owner", allowed);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = chg_no_owner_filter(&err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* changes.lsn("16/B374D848") -> integer (for comparisons and differences) */
static int l_lsn(lua_State *L)
{
    uint64_t v;
    if (!chg_lsn_parse(luaL_checkstring(L, 1), &v)) return 0;
    lua_pushinteger(L, (lua_Integer)v);
    return 1;
}

static int l_lsn_text(lua_State *L)
{
    char l[24];
    chg_lsn_format((uint64_t)luaL_checkinteger(L, 1), l);
    lua_pushstring(L, l);
    return 1;
}

int luaopen_changes(lua_State *L)
{
    static const luaL_Reg cap_methods[] = {{"create_slot", l_create_slot},
                                           {"start", l_start},
                                           {"wait", l_wait},
                                           {"confirm", l_confirm},
                                           {"segment", l_segment},
                                           {"close", l_cap_close},
                                           {NULL, NULL}};
    static const luaL_Reg cap_meta[] = {
        {"__gc", l_cap_close}, {"__close", l_cap_close}, {NULL, NULL}};
    rt_lua_class(L, CAP_MT, cap_meta, cap_methods);
    lua_pop(L, 1);
    static const luaL_Reg rp_methods[] = {
        {"sink", l_sink}, {"results", l_rp_results}, {"close", l_rp_close}, {NULL, NULL}};
    static const luaL_Reg rp_meta[] = {{"__gc", l_rp_close}, {"__close", l_rp_close}, {NULL, NULL}};
    rt_lua_class(L, RP_MT, rp_meta, rp_methods);
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"open", l_open},         {"replayer", l_replayer},
                                     {"lsn", l_lsn},           {"no_owner", l_no_owner},
                                     {"lsn_text", l_lsn_text}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
