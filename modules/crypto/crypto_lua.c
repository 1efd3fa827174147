/*
 * Lua binding of the crypto module: stage constructors over the C core (crypto.h) and one-shot
 * helpers for small values. Bytes of streams never enter Lua.
 *
 *   local crypto, pipe = require "crypto", require "pipe"
 *   local r = pipe.run{ pipe.file("dump.sql"), crypto.sha256{label = "plain"},
 *                       crypto.gzip{level = 6}, crypto.encrypt{passphrase_env = "KEY"},
 *                       crypto.sha256{label = "stored"}, pipe.file_sink("dump.sql.gz.enc") }
 *   print(r.plain.hex, r.stored.bytes)
 *
 * Also the host flags for `clubio-dr encrypt|decrypt` (crypto_cli.c stays free of Lua headers).
 */
#include "crypto.h"
#include "lua_api.h"

#include <string.h>

int luaopen_crypto(lua_State *L);

static int opt_int_range(lua_State *L, int idx, const char *key, int def, int lo, int hi,
                         const char *what)
{
    lua_Integer v = rt_lua_opt_integer(L, idx, key, def);
    if (v < lo || v > hi)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.option", NULL, "%s: %s must be %d..%d (got %lld)",
                    what, key, lo, hi, (long long)v);
    return (int)v;
}

/* crypto.gzip{level = 6, threads = N, block_size = 1048576, label = ...} */
static int l_gzip(lua_State *L)
{
    static const char *const allowed[] = {"level", "threads", "block_size", "label", NULL};
    rt_lua_check_options(L, 1, "crypto.gzip", allowed);
    CryptoGzipOptions o = {0};
    o.level = opt_int_range(L, 1, "level", CRYPTO_GZIP_LEVEL_DEFAULT, 1, 12, "crypto.gzip");
    o.threads = opt_int_range(L, 1, "threads", 0, 0, 256, "crypto.gzip");
    o.block_size = (size_t)opt_int_range(L, 1, "block_size", CRYPTO_GZIP_BLOCK_DEFAULT, 1, 1 << 30,
                                         "crypto.gzip");
    RtError err;
    rt_error_init(&err);
    RtFilter *f = crypto_gzip_filter(&o, &err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_gunzip(lua_State *L)
{
    static const char *const allowed[] = {"label", NULL};
    rt_lua_check_options(L, 1, "crypto.gunzip", allowed);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = crypto_gunzip_filter(&err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int cipher(lua_State *L, bool encrypt)
{
    const char *what = encrypt ? "crypto.encrypt" : "crypto.decrypt";
    static const char *const allowed[] = {"passphrase", "passphrase_env", "passphrase_file",
                                          "iter",       "label",          NULL};
    rt_lua_check_options(L, 1, what, allowed);
    int iter = opt_int_range(L, 1, "iter", CRYPTO_PBKDF2_ITER_DEFAULT, 1, 100000000, what);
    RtSecret *pass = rt_lua_opt_secret(L, 1, "passphrase", "BACKUP_ENCRYPTION_KEY", what);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = encrypt ? crypto_encrypt_filter(pass, iter, &err)
                          : crypto_decrypt_filter(pass, iter, &err); /* owns pass */
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_encrypt(lua_State *L)
{
    return cipher(L, true);
}
static int l_decrypt(lua_State *L)
{
    return cipher(L, false);
}

static int l_sha256(lua_State *L)
{
    static const char *const allowed[] = {"label", NULL};
    rt_lua_check_options(L, 1, "crypto.sha256", allowed);
    RtError err;
    rt_error_init(&err);
    RtFilter *f = crypto_sha256_filter(&err);
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

static int l_hmac_sha256(lua_State *L)
{
    static const char *const allowed[] = {"key", "key_env", "key_file", "label", NULL};
    rt_lua_check_options(L, 1, "crypto.hmac_sha256", allowed);
    RtSecret *key = rt_lua_opt_secret(L, 1, "key", NULL, "crypto.hmac_sha256");
    RtError err;
    rt_error_init(&err);
    RtFilter *f = crypto_hmac_sha256_filter(key, &err); /* owns key */
    if (!f) return rt_lua_raise(L, &err);
    rt_lua_push_filter(L, f);
    rt_lua_label_from_options(L, 1);
    return 1;
}

/* crypto.sha256_hex(s) -> 64 hex digits */
static int l_sha256_hex(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t md[32];
    char hex[65];
    RtError err;
    rt_error_init(&err);
    if (crypto_sha256(s, len, md, &err) != RT_OK) return rt_lua_raise(L, &err);
    crypto_hex(md, 32, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* crypto.hmac_sha256_hex(key, s): key is a string or a secret */
static int l_hmac_sha256_hex(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    RtSecret *key = rt_lua_to_secret(L, 1, "crypto.hmac_sha256_hex");
    uint8_t md[32];
    char hex[65];
    RtError err;
    rt_error_init(&err);
    int rc = crypto_hmac_sha256(key->data, key->len, s, len, md, &err);
    rt_secret_free(key);
    if (rc != RT_OK) return rt_lua_raise(L, &err);
    crypto_hex(md, 32, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* crypto.random_hex(n) -> 2n hex digits from n random bytes (1..1024) */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 1 || n > 1024)
        rt_lua_fail(L, RT_CLASS_USAGE, "usage.argument", NULL,
                    "crypto.random_hex: n must be 1..1024 (got %lld)", (long long)n);
    uint8_t buf[1024];
    char hex[2 * 1024 + 1];
    RtError err;
    rt_error_init(&err);
    if (crypto_random(buf, (size_t)n, &err) != RT_OK) return rt_lua_raise(L, &err);
    crypto_hex(buf, (size_t)n, hex);
    lua_pushstring(L, hex);
    return 1;
}

int luaopen_crypto(lua_State *L)
{
    static const luaL_Reg f[] = {{"gzip", l_gzip},
                                 {"gunzip", l_gunzip},
                                 {"encrypt", l_encrypt},
                                 {"decrypt", l_decrypt},
                                 {"sha256", l_sha256},
                                 {"hmac_sha256", l_hmac_sha256},
                                 {"sha256_hex", l_sha256_hex},
                                 {"hmac_sha256_hex", l_hmac_sha256_hex},
                                 {"random_hex", l_random_hex},
                                 {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
