/*
 * Allocation failure, swept: this test binary is linked with -Wl,--wrap for malloc, calloc and
 * realloc (tests/CMakeLists.txt), so every allocation made by the runtime and the modules (the
 * static clubio_rt library) goes through the wrappers below; allocations inside shared libraries
 * (libc, OpenSSL, libdeflate) do not. For N = 1, 2, ... the Nth allocation fails, and the
 * operation must then fail cleanly with an error (not crash, not hang, not report success); under
 * the ASan build (CLUBIO_SANITIZE) a leak on any failure path fails the run at exit. The sweep
 * ends at the first N that the operation no longer reaches.
 */
#include "harness.h"
#include "io/endpoints.h"
#include "io/pipe.h"
#include "io/stage.h"
#include "json.h"
#include "lua_api.h"
#include "modules/crypto/crypto.h"
#include "sbuf.h"
#include "secret.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

static atomic_long fail_at; /* the allocation to fail, counted from 1; 0: none */
static atomic_long allocs;  /* allocations since the count was armed */
static atomic_bool fired;   /* the failure happened */

static bool should_fail(void)
{
    long at = atomic_load(&fail_at);
    if (!at) return false;
    if (atomic_fetch_add(&allocs, 1) + 1 != at) return false;
    atomic_store(&fired, true);
    return true;
}

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __real_realloc(p, n);
}

static void arm(long n)
{
    atomic_store(&allocs, 0);
    atomic_store(&fired, false);
    atomic_store(&fail_at, n);
}

static void disarm(void)
{
    atomic_store(&fail_at, 0);
}

static uint8_t input[200000];

/* memory -> sha256 -> gzip -> count -> memory; returns RT_OK or RT_ERR with err set. */
static int run_pipe(RtError *err, char digest[65])
{
    RtPipeOptions po = {.buffer_size = 4096};
    RtPipe *p = rt_pipe_new(&po);
    if (!p) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    CryptoGzipOptions gz = {.level = 1, .threads = 2, .block_size = 65536};
    int rc = rt_pipe_set_source(p, rt_mem_source(input, sizeof input, err), "in");
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, crypto_sha256_filter(err), "plain");
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, crypto_gzip_filter(&gz, err), NULL);
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, rt_count_filter(err), NULL);
    if (rc == RT_OK) rc = rt_pipe_set_sink(p, rt_mem_sink(1 << 20, err), "out");
    if (rc == RT_OK) rc = rt_pipe_run(p, err);
    if (rc == RT_OK) {
        const RtResults *h = rt_results_get(rt_results_get(rt_pipe_results(p), "plain"), "hex");
        snprintf(digest, 65, "%s", h ? rt_results_as_str(h, NULL) : "");
    }
    rt_pipe_free(p);
    if (rc != RT_OK && !err->set) rt_error_set(err, RT_CLASS_FAILURE, "test.unset", "no error");
    return rc;
}

static void test_pipe_sweep(void)
{
    for (size_t i = 0; i < sizeof input; i++) input[i] = (uint8_t)((i * 2654435761u) >> 13);
    char want[65] = "", got[65];
    RtError err;
    rt_error_init(&err);
    CHECK(run_pipe(&err, want) == RT_OK);
    CHECK(strlen(want) == 64);
    int failures = 0, nomem = 0;
    for (long n = 1; n < 5000; n++) {
        rt_error_init(&err);
        got[0] = 0;
        arm(n);
        int rc = run_pipe(&err, got);
        disarm();
        if (!atomic_load(&fired)) { /* the run made fewer than n allocations: the sweep is done */
            CHECK(rc == RT_OK);
            CHECK_EQ_STR(got, want);
            break;
        }
        if (rc == RT_OK) {
            CHECK_EQ_STR(got, want); /* a failure that was absorbed must not change the bytes */
        } else {
            failures++;
            CHECK(err.message[0] != 0);
            if (strcmp(err.code, RT_CODE_NOMEM) == 0) nomem++;
        }
    }
    fprintf(stderr, "  pipe: %d failed runs, %d of them \"nomem\"\n", failures, nomem);
    CHECK(failures > 0);
}

/* memory -> gzip -> encrypt -> decrypt -> gunzip -> sha256 -> memory: the round trip. */
static int run_round_trip(RtError *err, char digest[65])
{
    RtPipeOptions po = {.buffer_size = 8192};
    RtPipe *p = rt_pipe_new(&po);
    if (!p) return rt_error_set(err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
    CryptoGzipOptions gz = {.level = 1, .threads = 1};
    RtSecret *k1 = rt_secret_from_value("failalloc-passphrase", 20, "test", err);
    RtSecret *k2 = k1 ? rt_secret_from_value("failalloc-passphrase", 20, "test", err) : NULL;
    int rc = rt_pipe_set_source(p, rt_mem_source(input, sizeof input, err), "in");
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, crypto_gzip_filter(&gz, err), NULL);
    if (rc == RT_OK)
        rc = rt_pipe_add_filter(p, crypto_encrypt_filter(k1, 1000, err), NULL);
    else
        rt_secret_free(k1);
    if (rc == RT_OK)
        rc = rt_pipe_add_filter(p, crypto_decrypt_filter(k2, 1000, err), NULL);
    else
        rt_secret_free(k2);
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, crypto_gunzip_filter(err), NULL);
    if (rc == RT_OK) rc = rt_pipe_add_filter(p, crypto_sha256_filter(err), "plain");
    if (rc == RT_OK) rc = rt_pipe_set_sink(p, rt_mem_sink(1 << 20, err), "out");
    if (rc == RT_OK) rc = rt_pipe_run(p, err);
    if (rc == RT_OK) {
        const RtResults *h = rt_results_get(rt_results_get(rt_pipe_results(p), "plain"), "hex");
        snprintf(digest, 65, "%s", h ? rt_results_as_str(h, NULL) : "");
    }
    rt_pipe_free(p);
    if (rc != RT_OK && !err->set) rt_error_set(err, RT_CLASS_FAILURE, "test.unset", "no error");
    return rc;
}

static void test_round_trip_sweep(void)
{
    char want[65] = "", got[65];
    RtError err;
    rt_error_init(&err);
    CHECK(run_pipe(&err, want) == RT_OK); /* the sha256 of the plain input */
    int failures = 0;
    for (long n = 1; n < 5000; n++) {
        rt_error_init(&err);
        got[0] = 0;
        arm(n);
        int rc = run_round_trip(&err, got);
        disarm();
        if (!atomic_load(&fired)) {
            CHECK(rc == RT_OK);
            CHECK_EQ_STR(got, want);
            break;
        }
        if (rc == RT_OK)
            CHECK_EQ_STR(got, want);
        else {
            failures++;
            CHECK(err.message[0] != 0);
        }
    }
    fprintf(stderr, "  round trip: %d failed runs\n", failures);
    CHECK(failures > 0);
}

static void test_sbuf_and_json_sweep(void)
{
    for (long n = 1; n < 100; n++) {
        SBuf b = {0};
        arm(n);
        for (int i = 0; i < 50; i++) rt_json_quote(&b, "a \"quoted\"\tline\n", 16);
        disarm();
        bool f = atomic_load(&fired);
        CHECK(f == b.oom); /* a failed allocation is never silent */
        CHECK(f || b.len == 50 * 22);
        CHECK(!f || sb_str(&b) == NULL); /* the result of a failed build is not handed out */
        sb_free(&b);
        if (!f) break;
    }
}

/* ---- a stage handed to Lua when Lua's own allocator fails --------------------------------- */

static long lua_fail_at, lua_allocs;

static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (lua_fail_at && ++lua_allocs >= lua_fail_at) return NULL; /* Lua retries after a GC */
    return realloc(ptr, nsize);
}

static int sink_aborts, sink_destroys;
static int fake_write(void *self, const uint8_t *d, size_t n, RtError *err)
{
    (void)self, (void)d, (void)n, (void)err;
    return RT_OK;
}
static int fake_finish(void *self, RtError *err)
{
    (void)self, (void)err;
    return RT_OK;
}
static void fake_abort(void *self)
{
    (void)self;
    sink_aborts++;
}
static void fake_destroy(void *self)
{
    (void)self;
    sink_destroys++;
}
static const RtSinkOps fake_sink_ops = {.name = "fake",
                                        .write = fake_write,
                                        .finish = fake_finish,
                                        .abort = fake_abort,
                                        .destroy = fake_destroy};

static int push_fake_sink(lua_State *L)
{
    RtSink *k = rt_sink_new();
    if (!k) return luaL_error(L, "out of memory");
    rt_sink_init(k, &fake_sink_ops, NULL);
    lua_fail_at = lua_allocs + 1; /* from here on Lua allocations fail: the stage userdata first */
    rt_lua_push_sink(L, k);
    return 1;
}

static void test_push_stage_out_of_memory(void)
{
    lua_State *L = lua_newstate(lua_alloc, NULL);
    CHECK(L != NULL);
    lua_pushcfunction(L, push_fake_sink);
    int rc = lua_pcall(L, 0, 1, 0);
    lua_fail_at = 0;
    CHECK_EQ_INT(rc, LUA_ERRMEM);
    CHECK_EQ_INT(sink_aborts, 1);   /* a sink that never ran is aborted... */
    CHECK_EQ_INT(sink_destroys, 1); /* ...and freed, not leaked */
    lua_close(L);
    CHECK_EQ_INT(sink_destroys, 1); /* and only once */
}

TEST_MAIN(test_push_stage_out_of_memory, test_pipe_sweep, test_round_trip_sweep,
          test_sbuf_and_json_sweep)
