/*
 * Lua binding of the s3 module (the only s3 file that includes Lua). See modules/s3/README.md.
 *
 *   local s3 = require "s3"
 *   local c = s3.client{region = "eu-west-1"}            -- credentials from the AWS chain
 *   c:put(bucket, "a/b.txt", "hello")
 *   pipe.run{pipe.file("dump"), c:upload{bucket = bucket, key = "dump", label = "up"}}
 *   for o in c:list{bucket = bucket, prefix = "a/"} do print(o.key, o.size) end
 *
 * The client is a "clubio.s3.client" userdata holding a reference to the C S3Client; stages
 * take their own reference, so closing the client never pulls it from under a running pipe.
 */
#include "host.h" /* RtLuaStage, rt_lua_new_stage */
#include "lua_api.h"

#include "modules/s3/s3.h"

#include <stdlib.h>
#include <string.h>

#define CLIENT_MT "clubio.s3.client"

typedef struct LClient {
    S3Client *c;
} LClient;

static S3Client *check_client(lua_State *L)
{
    LClient *lc = luaL_checkudata(L, 1, CLIENT_MT);
    if (!lc->c)
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.closed", "create a new client with s3.client{}",
                    "s3 client is closed");
    return lc->c;
}

static int client_gc(lua_State *L)
{
    LClient *lc = luaL_checkudata(L, 1, CLIENT_MT);
    s3_client_unref(lc->c);
    lc->c = NULL;
    return 0;
}

static const char *check_str_arg(lua_State *L, int idx, const char *what)
{
    if (lua_type(L, idx) != LUA_TSTRING || lua_rawlen(L, idx) == 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL, "%s must be a non-empty string", what);
    return lua_tostring(L, idx);
}

static const char *req_opt(lua_State *L, int idx, const char *key, const char *what)
{
    const char *v = rt_lua_opt_string(L, idx, key, NULL);
    if (!v || !*v)
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL, "%s needs option '%s'", what, key);
    return v;
}

/* Write options from table idx; the metadata array lives in a userdata pushed on the stack. */
static void write_opts(lua_State *L, int idx, S3WriteOptions *w)
{
    memset(w, 0, sizeof *w);
    w->sse = rt_lua_opt_string(L, idx, "sse", NULL);
    w->kms_key_id = rt_lua_opt_string(L, idx, "kms_key_id", NULL);
    w->storage_class = rt_lua_opt_string(L, idx, "storage_class", NULL);
    w->content_type = rt_lua_opt_string(L, idx, "content_type", NULL);
    if (w->sse && strcmp(w->sse, "AES256") != 0 && strcmp(w->sse, "aws:kms") != 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", "use sse = \"AES256\" or sse = \"aws:kms\"",
                    "unknown sse '%s'", w->sse);
    if (w->kms_key_id && !w->sse) w->sse = "aws:kms";
    lua_getfield(L, idx, "metadata");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
        return;
    }
    if (!lua_istable(L, -1))
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL, "metadata must be a table of strings");
    int t = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        n++;
        lua_pop(L, 1);
    }
    const char **m = lua_newuserdatauv(L, (2 * n + 1) * sizeof(char *), 0);
    size_t j = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL,
                        "metadata must map strings to strings");
        m[j++] = lua_tostring(L, -2); /* the strings stay alive in the metadata table */
        m[j++] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    m[j] = NULL;
    w->metadata = m;
    lua_remove(L, t); /* keep the userdata, drop the table reference (still held by the options) */
}

static int l_client(lua_State *L)
{
    static const char *const allowed[] = {"region",        "endpoint",     "path_style",
                                          "profile",       "max_attempts", "retry_base",
                                          "stall_timeout", "defaults",     NULL};
    rt_lua_check_options(L, 1, "s3.client", allowed);
    S3ClientOptions o = {.path_style = -1};
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "defaults");
        if (!lua_isnil(L, -1)) {
            static const char *const dk[] = {"sse", "kms_key_id", "storage_class", NULL};
            if (!lua_istable(L, -1))
                rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL,
                            "s3.client: defaults must be a table {sse, kms_key_id, storage_class}");
            int d = lua_gettop(L);
            rt_lua_check_options(L, d, "s3.client defaults", dk);
            o.defaults.sse = rt_lua_opt_string(L, d, "sse", NULL);
            o.defaults.kms_key_id = rt_lua_opt_string(L, d, "kms_key_id", NULL);
            o.defaults.storage_class = rt_lua_opt_string(L, d, "storage_class", NULL);
            if (o.defaults.sse && *o.defaults.sse && strcmp(o.defaults.sse, "AES256") != 0 &&
                strcmp(o.defaults.sse, "aws:kms") != 0)
                rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage",
                            "use sse = \"AES256\" or sse = \"aws:kms\"", "unknown sse '%s'",
                            o.defaults.sse);
        }
        /* the defaults table stays on the stack (its strings live until the client copies them) */
        o.region = rt_lua_opt_string(L, 1, "region", NULL);
        o.endpoint = rt_lua_opt_string(L, 1, "endpoint", NULL);
        o.profile = rt_lua_opt_string(L, 1, "profile", NULL);
        lua_getfield(L, 1, "path_style");
        if (!lua_isnil(L, -1)) o.path_style = lua_toboolean(L, -1) ? 1 : 0;
        lua_pop(L, 1);
        o.max_attempts = (int)rt_lua_opt_integer(L, 1, "max_attempts", 0);
        o.retry_base = rt_lua_opt_number(L, 1, "retry_base", 0);
        o.stall_timeout = rt_lua_opt_number(L, 1, "stall_timeout", 0);
    }
    LClient *lc = lua_newuserdatauv(L, sizeof *lc, 0);
    lc->c = NULL;
    luaL_setmetatable(L, CLIENT_MT);
    RtError err;
    rt_error_init(&err);
    lc->c = s3_client_new(&o, &err);
    if (!lc->c) return rt_lua_raise(L, &err);
    return 1;
}

static int l_info(lua_State *L)
{
    S3Client *c = check_client(L);
    lua_createtable(L, 0, 4);
    const S3WriteOptions *d = s3_client_defaults(c);
    lua_createtable(L, 0, 3);
    if (d->sse) {
        lua_pushstring(L, d->sse);
        lua_setfield(L, -2, "sse");
    }
    if (d->kms_key_id) {
        lua_pushstring(L, d->kms_key_id);
        lua_setfield(L, -2, "kms_key_id");
    }
    if (d->storage_class) {
        lua_pushstring(L, d->storage_class);
        lua_setfield(L, -2, "storage_class");
    }
    lua_setfield(L, -2, "defaults");
    lua_pushstring(L, s3_client_region(c));
    lua_setfield(L, -2, "region");
    lua_pushstring(L, s3_client_endpoint(c));
    lua_setfield(L, -2, "endpoint");
    lua_pushstring(L, s3_client_credentials_source(c));
    lua_setfield(L, -2, "credentials");
    return 1;
}

static int l_put(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    const char *key = check_str_arg(L, 3, "key");
    size_t len = 0;
    const char *body;
    S3WriteOptions w = {0};
    if (lua_type(L, 4) == LUA_TSTRING) {
        body = lua_tolstring(L, 4, &len);
        lua_pushnil(L);
    } else {
        static const char *const allowed[] = {
            "body", "sse", "kms_key_id", "storage_class", "content_type", "metadata", NULL};
        if (!lua_istable(L, 4))
            rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL,
                        "c:put(bucket, key, body) needs a string or an option table");
        rt_lua_check_options(L, 4, "s3 put", allowed);
        lua_getfield(L, 4, "body");
        body = lua_tolstring(L, -1, &len);
        if (!body)
            rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL,
                        "c:put needs option 'body' (a string)");
        lua_pop(L, 1);
        write_opts(L, 4, &w);
    }
    RtError err;
    rt_error_init(&err);
    char *etag = NULL;
    if (s3_put(c, bucket, key, body, len, &w, &etag, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, etag ? etag : "");
    free(etag);
    lua_setfield(L, -2, "etag");
    lua_pushinteger(L, (lua_Integer)len);
    lua_setfield(L, -2, "bytes");
    lua_pushstring(L, key);
    lua_setfield(L, -2, "key");
    return 1;
}

static int l_get(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    const char *key = check_str_arg(L, 3, "key");
    static const char *const allowed[] = {"max", NULL};
    rt_lua_check_options(L, 4, "s3 get", allowed);
    size_t max = lua_istable(L, 4) ? (size_t)rt_lua_opt_integer(L, 4, "max", 64 << 20) : (64 << 20);
    uint8_t *data;
    size_t len;
    RtError err;
    rt_error_init(&err);
    if (s3_get(c, bucket, key, max, &data, &len, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_pushlstring(L, (const char *)data,
                    len); /* may raise: free first is not possible; copy is small */
    free(data);
    return 1;
}

static void push_head(lua_State *L, const S3Head *h)
{
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, h->size);
    lua_setfield(L, -2, "size");
    lua_pushstring(L, h->etag ? h->etag : "");
    lua_setfield(L, -2, "etag");
    lua_pushnumber(L, h->last_modified);
    lua_setfield(L, -2, "last_modified");
    if (h->content_type) {
        lua_pushstring(L, h->content_type);
        lua_setfield(L, -2, "content_type");
    }
    lua_pushstring(L, h->storage_class ? h->storage_class : "STANDARD");
    lua_setfield(L, -2, "storage_class");
    if (h->sse) {
        lua_pushstring(L, h->sse);
        lua_setfield(L, -2, "sse");
    }
    if (h->kms_key_id) {
        lua_pushstring(L, h->kms_key_id);
        lua_setfield(L, -2, "kms_key_id");
    }
    lua_newtable(L);
    for (char **m = h->metadata; m && m[0] && m[1]; m += 2) {
        lua_pushstring(L, m[1]);
        lua_setfield(L, -2, m[0]);
    }
    lua_setfield(L, -2, "metadata");
}

static int l_head(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    const char *key = check_str_arg(L, 3, "key");
    S3Head h;
    bool found;
    RtError err;
    rt_error_init(&err);
    if (s3_head(c, bucket, key, &h, &found, &err) != RT_OK) return rt_lua_raise(L, &err);
    if (!found) {
        lua_pushnil(L);
        return 1;
    }
    /* Build the table in a protected way: copy into Lua, then free. A raise here (ENOMEM)
     * would leak h; Lua allocation failures are already fatal for the host. */
    push_head(L, &h);
    s3_head_free(&h);
    return 1;
}

static int l_delete(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    const char *key = check_str_arg(L, 3, "key");
    RtError err;
    rt_error_init(&err);
    if (s3_delete(c, bucket, key, &err) != RT_OK) return rt_lua_raise(L, &err);
    return 0;
}

static int l_delete_many(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t n = lua_rawlen(L, 3);
    const char **keys = lua_newuserdatauv(L, (n + 1) * sizeof(char *), 0);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", NULL, "delete_many: key %zu is not a string",
                        i + 1);
        keys[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    size_t deleted = 0;
    RtError err;
    rt_error_init(&err);
    if (s3_delete_many(c, bucket, keys, n, &deleted, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_pushinteger(L, (lua_Integer)deleted);
    return 1;
}

static int l_upload(lua_State *L)
{
    S3Client *c = check_client(L);
    static const char *const allowed[] = {
        "bucket",   "key",          "sse",       "kms_key_id",  "storage_class",
        "metadata", "content_type", "part_size", "concurrency", "label",
        NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 upload", allowed);
    S3UploadOptions o = {0};
    o.bucket = req_opt(L, 2, "bucket", "s3 upload");
    o.key = req_opt(L, 2, "key", "s3 upload");
    o.part_size = (size_t)rt_lua_opt_integer(L, 2, "part_size", 0);
    o.concurrency = (int)rt_lua_opt_integer(L, 2, "concurrency", 0);
    write_opts(L, 2, &o.write);
    const char *label = rt_lua_opt_string(L, 2, "label", NULL);
    RtLuaStage *ud = rt_lua_new_stage(L, RT_STAGE_SINK); /* closed until the sink is built */
    if (label) rt_lua_set_stage_label(L, -1, label);
    RtError err;
    rt_error_init(&err);
    RtSink *s = s3_upload_sink(c, &o, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_stage_set(ud, s, s->name);
    return 1;
}

static int l_download(lua_State *L)
{
    S3Client *c = check_client(L);
    static const char *const allowed[] = {"bucket",      "key",   "part_size",
                                          "concurrency", "label", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 download", allowed);
    S3DownloadOptions o = {0};
    o.bucket = req_opt(L, 2, "bucket", "s3 download");
    o.key = req_opt(L, 2, "key", "s3 download");
    o.part_size = (size_t)rt_lua_opt_integer(L, 2, "part_size", 0);
    o.concurrency = (int)rt_lua_opt_integer(L, 2, "concurrency", 0);
    const char *label = rt_lua_opt_string(L, 2, "label", NULL);
    /* The userdata first, closed: the source (which makes a HEAD request) is then built into it,
     * so no error from here on can leak it. */
    RtLuaStage *ud = rt_lua_new_stage(L, RT_STAGE_SOURCE);
    if (label) rt_lua_set_stage_label(L, -1, label);
    RtError err;
    rt_error_init(&err);
    RtSource *s = s3_download_source(c, &o, &err);
    if (!s) return rt_lua_raise(L, &err);
    rt_lua_stage_set(ud, s, s->name);
    return 1;
}

/* list iterator: upvalues 1 client userdata, 2 state table {bucket, prefix, delimiter, page, i,
 * token, done} */
static int list_next(lua_State *L)
{
    LClient *lc = luaL_checkudata(L, lua_upvalueindex(1), CLIENT_MT);
    int st = lua_upvalueindex(2);
    for (;;) {
        lua_getfield(L, st, "page");
        lua_Integer i = (lua_getfield(L, st, "i"), lua_tointeger(L, -1));
        lua_pop(L, 1);
        if (lua_istable(L, -1) && i < (lua_Integer)lua_rawlen(L, -1)) {
            lua_rawgeti(L, -1, i + 1);
            lua_pushinteger(L, i + 1);
            lua_setfield(L, st, "i");
            return 1;
        }
        lua_pop(L, 1);
        lua_getfield(L, st, "done");
        bool done = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (done || !lc->c) return 0;
        lua_getfield(L, st, "bucket");
        lua_getfield(L, st, "prefix");
        lua_getfield(L, st, "delimiter");
        lua_getfield(L, st, "token");
        lua_getfield(L, st, "page_size");
        S3ListPage pg;
        RtError err;
        rt_error_init(&err);
        int rc = s3_list_page(lc->c, lua_tostring(L, -5), lua_tostring(L, -4), lua_tostring(L, -3),
                              lua_tostring(L, -2), (int)lua_tointeger(L, -1), &pg, &err);
        lua_pop(L, 5);
        if (rc != RT_OK) return rt_lua_raise(L, &err);
        lua_createtable(L, (int)(pg.n + pg.n_prefixes), 0);
        for (size_t k = 0; k < pg.n; k++) {
            const S3Object *o = &pg.items[k];
            lua_createtable(L, 0, 6);
            lua_pushstring(L, o->key);
            lua_setfield(L, -2, "key");
            lua_pushinteger(L, o->size);
            lua_setfield(L, -2, "size");
            lua_pushstring(L, o->etag ? o->etag : "");
            lua_setfield(L, -2, "etag");
            lua_pushnumber(L, o->last_modified);
            lua_setfield(L, -2, "last_modified");
            lua_pushstring(L, o->last_modified_iso ? o->last_modified_iso : "");
            lua_setfield(L, -2, "last_modified_iso");
            lua_pushstring(L, o->storage_class ? o->storage_class : "STANDARD");
            lua_setfield(L, -2, "storage_class");
            lua_rawseti(L, -2, (lua_Integer)k + 1);
        }
        for (size_t k = 0; k < pg.n_prefixes; k++) {
            lua_createtable(L, 0, 2);
            lua_pushstring(L, pg.prefixes[k]);
            lua_setfield(L, -2, "prefix");
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "is_prefix");
            lua_rawseti(L, -2, (lua_Integer)(pg.n + k) + 1);
        }
        lua_setfield(L, st, "page");
        lua_pushinteger(L, 0);
        lua_setfield(L, st, "i");
        if (pg.truncated && pg.next_token)
            lua_pushstring(L, pg.next_token);
        else
            lua_pushnil(L);
        lua_setfield(L, st, "token");
        lua_pushboolean(L, !pg.truncated);
        lua_setfield(L, st, "done");
        s3_list_page_free(&pg);
    }
}

static int l_list(lua_State *L)
{
    check_client(L);
    static const char *const allowed[] = {"bucket", "prefix", "delimiter", "page_size", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 list", allowed);
    const char *bucket = req_opt(L, 2, "bucket", "s3 list");
    lua_pushvalue(L, 1);
    lua_createtable(L, 0, 8);
    lua_pushstring(L, bucket);
    lua_setfield(L, -2, "bucket");
    lua_pushstring(L, rt_lua_opt_string(L, 2, "prefix", ""));
    lua_setfield(L, -2, "prefix");
    const char *d = rt_lua_opt_string(L, 2, "delimiter", NULL);
    if (d) {
        lua_pushstring(L, d);
        lua_setfield(L, -2, "delimiter");
    }
    lua_pushinteger(L, rt_lua_opt_integer(L, 2, "page_size", 0));
    lua_setfield(L, -2, "page_size");
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "i");
    lua_pushcclosure(L, list_next, 2);
    return 1;
}

static int l_copy(lua_State *L)
{
    S3Client *c = check_client(L);
    static const char *const allowed[] = {"src_bucket",    "src_key",
                                          "dst_bucket",    "dst_key",
                                          "sse",           "kms_key_id",
                                          "storage_class", "metadata",
                                          "content_type",  "multipart_threshold",
                                          "part_size",     NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 copy", allowed);
    const char *sb = req_opt(L, 2, "src_bucket", "s3 copy"),
               *sk = req_opt(L, 2, "src_key", "s3 copy");
    const char *db = rt_lua_opt_string(L, 2, "dst_bucket", sb),
               *dk = req_opt(L, 2, "dst_key", "s3 copy");
    S3CopyOptions o = {0};
    write_opts(L, 2, &o.write);
    o.replace_metadata = o.write.metadata || o.write.content_type;
    o.multipart_threshold = rt_lua_opt_integer(L, 2, "multipart_threshold", 0);
    o.part_size = rt_lua_opt_integer(L, 2, "part_size", 0);
    S3CopyResult r;
    RtError err;
    rt_error_init(&err);
    if (s3_copy(c, sb, sk, db, dk, &o, &r, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, r.size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, r.parts);
    lua_setfield(L, -2, "parts");
    lua_pushstring(L, r.etag ? r.etag : "");
    free(r.etag);
    lua_setfield(L, -2, "etag");
    lua_pushstring(L, dk);
    lua_setfield(L, -2, "key");
    return 1;
}

static int l_sync(lua_State *L)
{
    S3Client *c = check_client(L);
    static const char *const allowed[] = {"src_bucket",    "src_prefix", "dst_bucket",
                                          "dst_prefix",    "sse",        "kms_key_id",
                                          "storage_class", "dry_run",    NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 sync", allowed);
    S3SyncOptions o = {0};
    o.src_bucket = req_opt(L, 2, "src_bucket", "s3 sync");
    o.dst_bucket = rt_lua_opt_string(L, 2, "dst_bucket", o.src_bucket);
    o.src_prefix = rt_lua_opt_string(L, 2, "src_prefix", "");
    o.dst_prefix = rt_lua_opt_string(L, 2, "dst_prefix", "");
    if (strcmp(o.src_bucket, o.dst_bucket) == 0 && strcmp(o.src_prefix, o.dst_prefix) == 0)
        rt_lua_fail(L, RT_CLASS_USAGE, "s3.usage", "give a different dst_bucket or dst_prefix",
                    "s3 sync: source and destination are the same (s3://%s/%s)", o.src_bucket,
                    o.src_prefix);
    o.dry_run =
        rt_lua_opt_boolean(L, 2, "dry_run", rt_host_flags() ? rt_host_flags()->dry_run : false);
    write_opts(L, 2, &o.write);
    o.write.metadata = NULL;
    S3SyncSummary s;
    RtError err;
    rt_error_init(&err);
    int rc = s3_sync(c, &o, &s, &err);
    if (rc != RT_OK) {
        s3_sync_summary_free(&s);
        return rt_lua_raise(L, &err);
    }
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, s.scanned);
    lua_setfield(L, -2, "scanned");
    lua_pushinteger(L, s.copied);
    lua_setfield(L, -2, "copied");
    lua_pushinteger(L, s.skipped);
    lua_setfield(L, -2, "skipped");
    lua_pushinteger(L, s.bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushboolean(L, o.dry_run);
    lua_setfield(L, -2, "dry_run");
    lua_createtable(L, (int)s.n_planned, 0);
    for (size_t i = 0; i < s.n_planned; i++) {
        lua_pushstring(L, s.planned[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "keys");
    s3_sync_summary_free(&s);
    return 1;
}

/* c:uploads{bucket =, prefix =, page_size =} -> every in-progress multipart upload under
 * prefix (all pages): {{key, upload_id, initiated, initiated_iso, storage_class}, ...} */
static int l_uploads(lua_State *L)
{
    S3Client *c = check_client(L);
    static const char *const allowed[] = {"bucket", "prefix", "page_size", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    rt_lua_check_options(L, 2, "s3 uploads", allowed);
    const char *bucket = req_opt(L, 2, "bucket", "s3 uploads");
    const char *prefix = rt_lua_opt_string(L, 2, "prefix", "");
    int page_size = (int)rt_lua_opt_integer(L, 2, "page_size", 0);
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_Integer n = 0;
    /* the markers of the next page live in Lua strings, so a raise leaks nothing */
    lua_pushnil(L); /* t+1 key marker */
    lua_pushnil(L); /* t+2 upload id marker */
    for (;;) {
        S3UploadsPage pg;
        RtError err;
        rt_error_init(&err);
        if (s3_list_uploads_page(c, bucket, prefix, lua_tostring(L, t + 1), lua_tostring(L, t + 2),
                                 page_size, &pg, &err) != RT_OK)
            return rt_lua_raise(L, &err);
        for (size_t k = 0; k < pg.n; k++) {
            const S3Upload *u = &pg.items[k];
            lua_createtable(L, 0, 5);
            lua_pushstring(L, u->key);
            lua_setfield(L, -2, "key");
            lua_pushstring(L, u->upload_id);
            lua_setfield(L, -2, "upload_id");
            lua_pushnumber(L, u->initiated);
            lua_setfield(L, -2, "initiated");
            lua_pushstring(L, u->initiated_iso ? u->initiated_iso : "");
            lua_setfield(L, -2, "initiated_iso");
            lua_pushstring(L, u->storage_class ? u->storage_class : "STANDARD");
            lua_setfield(L, -2, "storage_class");
            lua_rawseti(L, t, ++n);
        }
        bool more = pg.truncated;
        const char *km = lua_tostring(L, t + 1), *um = lua_tostring(L, t + 2);
        if (more && km && strcmp(km, pg.next_key_marker) == 0 &&
            (um ? pg.next_upload_id_marker && strcmp(um, pg.next_upload_id_marker) == 0
                : !pg.next_upload_id_marker)) {
            s3_uploads_page_free(&pg);
            return rt_lua_fail(L, RT_CLASS_FAILURE, "s3.bad_answer", NULL,
                               "s3 list uploads s3://%s/%s: the store repeats the same page",
                               bucket, prefix);
        }
        if (more) {
            lua_pushstring(L, pg.next_key_marker);
            lua_replace(L, t + 1);
            if (pg.next_upload_id_marker)
                lua_pushstring(L, pg.next_upload_id_marker);
            else
                lua_pushnil(L);
            lua_replace(L, t + 2);
        }
        s3_uploads_page_free(&pg);
        if (!more) break;
    }
    lua_settop(L, t);
    return 1;
}

/* c:abort_upload(bucket, key, upload_id) -> true (aborted) or false (already gone) */
static int l_abort_upload(lua_State *L)
{
    S3Client *c = check_client(L);
    const char *bucket = check_str_arg(L, 2, "bucket");
    const char *key = check_str_arg(L, 3, "key");
    const char *id = check_str_arg(L, 4, "upload_id");
    bool gone = false;
    RtError err;
    rt_error_init(&err);
    if (s3_abort_upload(c, bucket, key, id, &gone, &err) != RT_OK) return rt_lua_raise(L, &err);
    lua_pushboolean(L, !gone);
    return 1;
}

int luaopen_s3(lua_State *L);

int luaopen_s3(lua_State *L)
{
    static const luaL_Reg methods[] = {{"put", l_put},
                                       {"get", l_get},
                                       {"head", l_head},
                                       {"delete", l_delete},
                                       {"delete_many", l_delete_many},
                                       {"upload", l_upload},
                                       {"download", l_download},
                                       {"list", l_list},
                                       {"copy", l_copy},
                                       {"sync", l_sync},
                                       {"uploads", l_uploads},
                                       {"abort_upload", l_abort_upload},
                                       {"info", l_info},
                                       {"close", client_gc},
                                       {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", client_gc}, {"__close", client_gc}, {NULL, NULL}};
    rt_lua_class(L, CLIENT_MT, meta, methods);
    lua_pop(L, 1);
    static const luaL_Reg f[] = {{"client", l_client}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
