/*
 * crypto module core: known answers (SHA-256, HMAC RFC 4231, PBKDF2-HMAC-SHA256, an archive
 * written by `openssl enc`), round trips through gzip/encrypt/decrypt/gunzip at boundary sizes
 * with 1-byte (filters driven directly), 7-byte and default pipe buffers, multi-member gunzip,
 * truncation, trailing garbage, a flipped byte, a wrong passphrase (no file left behind) and cancel
 * mid-stream.
 */
#include "harness.h"
#include "io/cancel.h"
#include "io/endpoints.h"
#include "io/pipe.h"
#include "modules/crypto/crypto.h"

#include <dirent.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static RtSecret *secret(const char *s)
{
    RtError err;
    rt_error_init(&err);
    return rt_secret_from_value(s, strlen(s), "test", &err);
}

/* Text-like data that compresses, with a little noise so members differ. */
static uint8_t *sample(size_t n)
{
    static const char words[] = "insert into users values (42, 'alice', '2024-01-15 10:30:00');\n"
                                "copy public.orders (id, total) from stdin;\n";
    uint8_t *p = malloc(n ? n : 1);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (x >> 28) == 0 ? (uint8_t)('0' + ((x >> 16) % 10))
                              : (uint8_t)words[i % (sizeof words - 1)];
    }
    return p;
}

typedef struct Stage {
    enum { GZ, GUNZ, ENC, DEC, SHA } kind;
    const char *pass;
    int iter;
} Stage;

/* memory -> stages -> memory. Returns RT_OK/RT_ERR; *out is malloc'ed (caller frees). */
static size_t gz_block = 1000; /* input bytes per member of the GZ stage */

static RtFilter *make_filter(const Stage *st, RtError *err)
{
    CryptoGzipOptions go = {.level = 6, .threads = 2, .block_size = gz_block};
    switch (st->kind) {
    case GZ:
        return crypto_gzip_filter(&go, err);
    case GUNZ:
        return crypto_gunzip_filter(err);
    case ENC:
        return crypto_encrypt_filter(secret(st->pass), st->iter, err);
    case DEC:
        return crypto_decrypt_filter(secret(st->pass), st->iter, err);
    case SHA:
        return crypto_sha256_filter(err);
    }
    return NULL;
}

/* A growing byte array. */
typedef struct Acc {
    uint8_t *data;
    size_t len, cap;
} Acc;

/* Appends out's bytes to acc and empties out. */
static void drain(RtBuf *out, Acc *acc)
{
    if (acc->len + out->used > acc->cap) {
        acc->cap = 2 * (acc->len + out->used) + 64;
        acc->data = realloc(acc->data, acc->cap);
    }
    memcpy(acc->data + acc->len, out->data, out->used);
    acc->len += out->used;
    rt_buf_reset(out);
}

/* One filter over a whole input, driven on this thread as the pipe drives it: the input handed
 * `bufsize` bytes at a time (the unread rest again until consumed), an output buffer of
 * `bufsize` bytes drained whenever the filter wrote to it, then the flush until done. */
static int run_filter(RtFilter *f, const uint8_t *in, size_t n, size_t bufsize, uint8_t **out,
                      size_t *outlen, RtError *err)
{
    Acc acc = {malloc(64), 0, 64};
    *out = acc.data;
    *outlen = 0;
    if (!f->process) { /* observing: sees every byte once, passes them on */
        for (size_t off = 0; off < n; off += bufsize) {
            size_t k = n - off < bufsize ? n - off : bufsize;
            if (f->observe(f->self, in + off, k, err) != RT_OK) return RT_ERR;
        }
        if (f->observe(f->self, NULL, 0, err) != RT_OK) return RT_ERR;
        acc.data = realloc(acc.data, n + 1);
        memcpy(acc.data, in, n);
        *out = acc.data;
        *outlen = n;
        return RT_OK;
    }
    RtBuf ib, ob;
    rt_buf_alloc(&ib, bufsize);
    rt_buf_alloc(&ob, bufsize);
    int rc = RT_OK;
    size_t off = 0;
    bool done = false;
    for (;;) {
        RtBuf *ip = NULL;
        if (off < n) {
            rt_buf_reset(&ib);
            off += rt_buf_put(&ib, in + off, n - off);
            ip = &ib;
        }
        while (ip ? rt_buf_remain(ip) > 0 : !done) {
            size_t pos0 = ip ? ip->pos : 0, used0 = ob.used;
            if ((rc = f->process(f->self, ip, &ob, &done, err)) != RT_OK) goto end;
            bool progressed = (ip && ip->pos != pos0) || ob.used != used0 || done;
            if (!progressed && ob.used == 0) {
                rt_error_set(err, RT_CLASS_FAILURE, "pipe.stalled", "filter made no progress");
                rc = RT_ERR;
                goto end;
            }
            drain(&ob, &acc);
        }
        if (!ip) break;
    }
end:
    rt_buf_free(&ib);
    rt_buf_free(&ob);
    *out = acc.data;
    *outlen = acc.len;
    return rc;
}

/* With 1-byte buffers (and 1 MiB in 7-byte ones) the filters run directly, one after another on
 * this thread: through a pipe every few bytes would be a hand-off between threads (seconds of
 * futex traffic per case). The 7-byte cases of the small sizes still go through the pipe. */
static int run_direct(const uint8_t *in, size_t n, const Stage *st, int nst, size_t bufsize,
                      uint8_t **out, size_t *outlen, RtError *err)
{
    uint8_t *cur = malloc(n + 1);
    memcpy(cur, in, n);
    size_t curlen = n;
    int rc = RT_OK;
    for (int i = 0; i < nst && rc == RT_OK; i++) {
        RtFilter *f = make_filter(&st[i], err);
        uint8_t *next = NULL;
        size_t nextlen = 0;
        rc = run_filter(f, cur, curlen, bufsize, &next, &nextlen, err);
        rt_filter_free(f);
        free(cur);
        cur = next;
        curlen = nextlen;
    }
    *out = rc == RT_OK ? cur : NULL;
    *outlen = rc == RT_OK ? curlen : 0;
    if (rc != RT_OK) free(cur);
    return rc;
}

static int run_pipe(const uint8_t *in, size_t n, const Stage *st, int nst, size_t bufsize,
                    uint8_t **out, size_t *outlen, RtError *err)
{
    rt_error_init(err);
    if (bufsize == 1 || (bufsize && bufsize < 16 && n > 100000))
        return run_direct(in, n, st, nst, bufsize, out, outlen, err);
    RtPipeOptions o = {.buffer_size = bufsize};
    RtPipe *p = rt_pipe_new(&o);
    rt_pipe_set_source(p, rt_mem_source(in, n, err), NULL);
    for (int i = 0; i < nst; i++) rt_pipe_add_filter(p, make_filter(&st[i], err), NULL);
    RtSink *sink = rt_mem_sink(4 * n + 4096, err);
    rt_pipe_set_sink(p, sink, NULL);
    int rc = rt_pipe_run(p, err);
    *out = NULL;
    *outlen = 0;
    if (rc == RT_OK) {
        size_t len;
        const uint8_t *d = rt_mem_sink_data(sink, &len);
        *out = malloc(len ? len : 1);
        memcpy(*out, d, len);
        *outlen = len;
    }
    rt_pipe_free(p);
    return rc;
}

static void test_known_answers(void)
{
    RtError err;
    rt_error_init(&err);
    uint8_t md[64];
    char hex[129];
    CHECK_EQ_INT(crypto_sha256("abc", 3, md, &err), RT_OK);
    crypto_hex(md, 32, hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* RFC 4231 test cases 1 and 2 */
    uint8_t key1[20];
    memset(key1, 0x0b, sizeof key1);
    CHECK_EQ_INT(crypto_hmac_sha256(key1, 20, "Hi There", 8, md, &err), RT_OK);
    crypto_hex(md, 32, hex);
    CHECK_EQ_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    CHECK_EQ_INT(crypto_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, md, &err),
                 RT_OK);
    crypto_hex(md, 32, hex);
    CHECK_EQ_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* PBKDF2-HMAC-SHA256 ("password", "salt") for c = 1, 2, 4096 */
    static const struct {
        int c;
        const char *hex;
    } pb[] = {{1, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"},
              {2, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"},
              {4096, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"}};
    for (size_t i = 0; i < sizeof pb / sizeof pb[0]; i++) {
        CHECK_EQ_INT(
            crypto_pbkdf2_sha256("password", 8, (const uint8_t *)"salt", 4, pb[i].c, md, 32, &err),
            RT_OK);
        crypto_hex(md, 32, hex);
        CHECK_EQ_STR(hex, pb[i].hex);
    }
    CHECK_EQ_INT(crypto_pbkdf2_sha256("p", 1, (const uint8_t *)"s", 1, 0, md, 32, &err), RT_ERR);
    uint8_t r1[16], r2[16];
    CHECK_EQ_INT(crypto_random(r1, 16, &err), RT_OK);
    CHECK_EQ_INT(crypto_random(r2, 16, &err), RT_OK);
    CHECK(memcmp(r1, r2, 16) != 0);
}

/* `printf 'hello, world\n' | openssl enc -aes-256-cbc -pbkdf2 -S 0102030405060708 -pass pass:x`
 * (openssl omits the header when -S is given; we add it), and the same for an empty input with
 * -iter 1000. */
static void test_decrypt_openssl_known_answer(void)
{
    static const uint8_t hello[] = {'S',  'a',  'l',  't',  'e',  'd',  '_',  '_',
                                    1,    2,    3,    4,    5,    6,    7,    8,
                                    0xee, 0x0a, 0xef, 0x66, 0xb4, 0x6a, 0x50, 0x60,
                                    0x8d, 0xb6, 0xcd, 0x29, 0xf3, 0x87, 0xf2, 0x64};
    static const uint8_t empty[] = {'S',  'a',  'l',  't',  'e',  'd',  '_',  '_',
                                    1,    2,    3,    4,    5,    6,    7,    8,
                                    0xc1, 0x42, 0x38, 0x75, 0x5f, 0x01, 0x2c, 0xd2,
                                    0xde, 0x78, 0x08, 0x85, 0xcc, 0xc4, 0x4f, 0xc8};
    static const size_t bufs[] = {1, 7, 0};
    for (size_t b = 0; b < 3; b++) {
        RtError err;
        uint8_t *out;
        size_t len;
        Stage dec = {DEC, "x", 0};
        CHECK_EQ_INT(run_pipe(hello, sizeof hello, &dec, 1, bufs[b], &out, &len, &err), RT_OK);
        CHECK(len == 13 && memcmp(out, "hello, world\n", 13) == 0);
        free(out);
        Stage dec1000 = {DEC, "x", 1000};
        CHECK_EQ_INT(run_pipe(empty, sizeof empty, &dec1000, 1, bufs[b], &out, &len, &err), RT_OK);
        CHECK_EQ_INT(len, 0);
        free(out);
    }
}

static void test_round_trips(void)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 31, 32, 33, 1024 * 1024 + 7};
    static const size_t bufs[] = {1, 7, 0};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint8_t *in = sample(n);
        for (size_t b = 0; b < 3; b++) {
            for (int gz = 0; gz < 2; gz++) {
                RtError err;
                uint8_t *enc, *dec;
                size_t elen, dlen;
                Stage e[] = {{GZ, NULL, 0}, {ENC, "correct horse", 0}};
                Stage d[] = {{DEC, "correct horse", 0}, {GUNZ, NULL, 0}};
                int rc = run_pipe(in, n, gz ? e : e + 1, gz ? 2 : 1, bufs[b], &enc, &elen, &err);
                CHECK_EQ_INT(rc, RT_OK);
                if (rc != RT_OK) {
                    fprintf(stderr, "  encrypt size %zu buf %zu gz %d: %s\n", n, bufs[b], gz,
                            err.message);
                    continue;
                }
                CHECK(elen >= 32 && (elen - 16) % 16 == 0 && memcmp(enc, "Salted__", 8) == 0);
                if (!gz) CHECK_EQ_INT(elen, 16 + (n / 16 + 1) * 16);
                rc = run_pipe(enc, elen, d, gz ? 2 : 1, bufs[b], &dec, &dlen, &err);
                CHECK_EQ_INT(rc, RT_OK);
                if (rc != RT_OK)
                    fprintf(stderr, "  decrypt size %zu buf %zu gz %d: %s\n", n, bufs[b], gz,
                            err.message);
                bool same = rc == RT_OK && dlen == n && memcmp(dec, in, n) == 0;
                if (!same) fprintf(stderr, "  mismatch size %zu buf %zu gz %d\n", n, bufs[b], gz);
                CHECK(same);
                free(enc);
                free(dec);
            }
        }
        free(in);
    }
}

/* gzip a buffer with zlib into one member */
static size_t zlib_gzip(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    z_stream z = {0};
    deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return len;
}

static void test_gunzip_multi_member_and_errors(void)
{
    size_t n = 300000;
    uint8_t *in = sample(n);
    size_t cap = 2 * n + 1024;
    uint8_t *gz = malloc(cap + 16);
    /* zlib member + zlib member + our parallel members */
    size_t a = zlib_gzip(in, 1000, gz, cap);
    size_t b = zlib_gzip(in + 1000, 2000, gz + a, cap - a);
    RtError err;
    uint8_t *ours, *out;
    size_t olen, len;
    Stage gzs = {GZ, NULL, 0};
    CHECK_EQ_INT(run_pipe(in + 3000, n - 3000, &gzs, 1, 0, &ours, &olen, &err), RT_OK);
    memcpy(gz + a + b, ours, olen);
    free(ours);
    size_t total = a + b + olen;
    Stage gunz = {GUNZ, NULL, 0};
    static const size_t bufs[] = {1, 7, 0};
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(run_pipe(gz, total, &gunz, 1, bufs[i], &out, &len, &err), RT_OK);
        CHECK(len == n && memcmp(out, in, n) == 0);
        free(out);
    }
    /* truncated at every point of the last member's tail and inside the first header */
    static const size_t cuts[] = {1, 2, 5, 10, 17};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK_EQ_INT(run_pipe(gz, total - cuts[i], &gunz, 1, 0, &out, &len, &err), RT_ERR);
        CHECK_EQ_STR(err.code, "crypto.gzip_truncated");
        CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
        CHECK_EQ_INT(run_pipe(gz, cuts[i], &gunz, 1, 3, &out, &len, &err), RT_ERR);
        CHECK_EQ_STR(err.code, "crypto.gzip_truncated");
    }
    CHECK_EQ_INT(run_pipe(gz, 0, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_truncated");
    /* trailing garbage, and a lone first magic byte (a truncated member) */
    memcpy(gz + total, "garbage", 7);
    CHECK_EQ_INT(run_pipe(gz, total + 7, &gunz, 1, 1, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_trailing");
    gz[total] = 0;
    CHECK_EQ_INT(run_pipe(gz, total + 1, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_trailing");
    gz[total] = 0x1f;
    CHECK_EQ_INT(run_pipe(gz, total + 1, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_truncated");
    /* not gzip at all */
    CHECK_EQ_INT(run_pipe(in, 100, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.not_gzip");
    CHECK(strstr(err.hint, "passphrase is wrong") != NULL); /* the usual cause after decrypt */
    /* a flipped byte in the deflate data of the second member, and in a CRC */
    gz[a + 40] ^= 0x55;
    CHECK_EQ_INT(run_pipe(gz, total, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_corrupt");
    gz[a + 40] ^= 0x55;
    gz[a - 6] ^= 0x01; /* CRC-32 of the first member */
    CHECK_EQ_INT(run_pipe(gz, total, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_corrupt");
    CHECK(strstr(err.message, "check") != NULL);
    free(gz);
    free(in);
}

static void test_decrypt_errors(void)
{
    size_t n = 100000;
    uint8_t *in = sample(n);
    RtError err;
    uint8_t *enc, *out;
    size_t elen, len;
    Stage e = {ENC, "right", 0};
    CHECK_EQ_INT(run_pipe(in, n, &e, 1, 0, &enc, &elen, &err), RT_OK);
    Stage dec = {DEC, "right", 0};
    Stage decgz[] = {{DEC, "right", 0}, {GUNZ, NULL, 0}};
    /* truncated: inside the header, not a whole block, empty */
    CHECK_EQ_INT(run_pipe(enc, 10, &dec, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.truncated");
    CHECK_EQ_INT(run_pipe(enc, 16, &dec, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.truncated");
    CHECK_EQ_INT(run_pipe(enc, elen - 5, &dec, 1, 7, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.truncated");
    CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
    CHECK_EQ_INT(run_pipe(enc, 0, &dec, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.truncated");
    CHECK_EQ_INT(run_pipe(in, 100, &dec, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.not_encrypted");
    /* a flipped lowest bit of the last byte of the next-to-last block always breaks the
     * padding (n becomes n^1, which never matches the other padding bytes) */
    enc[elen - 17] ^= 0x01;
    CHECK_EQ_INT(run_pipe(enc, elen, &dec, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.bad_decrypt");
    CHECK_EQ_STR(err.message, "wrong passphrase or corrupt archive");
    CHECK(err.hint[0] != '\0');
    enc[elen - 17] ^= 0x01;
    free(enc);
    /* a flipped byte in the middle: CBC has no integrity, gunzip's CRC catches it */
    Stage egz[] = {{GZ, NULL, 0}, {ENC, "right", 0}};
    CHECK_EQ_INT(run_pipe(in, n, egz, 2, 0, &enc, &elen, &err), RT_OK);
    enc[elen / 2] ^= 0x20;
    CHECK_EQ_INT(run_pipe(enc, elen, decgz, 2, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
    enc[elen / 2] ^= 0x20;
    /* dropping the last whole block: gunzip sees a truncated stream (or padding fails) */
    CHECK_EQ_INT(run_pipe(enc, elen - 16, decgz, 2, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
    /* wrong passphrase: the padding check fails, except by chance (1/256) with garbage —
     * never the plaintext; over four wrong passphrases at least one must be detected */
    static const char *const wrong[] = {"wrong1", "wrong2", "wrong3", "wrong4"};
    int detected = 0;
    for (int i = 0; i < 4; i++) {
        Stage w = {DEC, wrong[i], 0};
        int rc = run_pipe(enc, elen, &w, 1, 0, &out, &len, &err);
        if (rc == RT_ERR) {
            detected++;
            CHECK_EQ_STR(err.code, "crypto.bad_decrypt");
        } else {
            CHECK(len != n || memcmp(out, in, n) != 0);
            free(out);
        }
        Stage wg[] = {{DEC, wrong[i], 0}, {GUNZ, NULL, 0}};
        CHECK_EQ_INT(run_pipe(enc, elen, wg, 2, 0, &out, &len, &err), RT_ERR);
    }
    CHECK(detected >= 1);
    /* wrong iteration count is a wrong key too */
    Stage wi = {DEC, "right", 9999};
    Stage wig[] = {{DEC, "right", 9999}, {GUNZ, NULL, 0}};
    (void)wi;
    CHECK_EQ_INT(run_pipe(enc, elen, wig, 2, 0, &out, &len, &err), RT_ERR);
    free(enc);
    free(in);
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void test_failed_decrypt_leaves_no_file(void)
{
    char dir[64] = "/tmp/clubio-test-crypto-XXXXXX";
    if (!mkdtemp(dir)) abort();
    char dst[128];
    snprintf(dst, sizeof dst, "%s/out.sql", dir);
    size_t n = 3 * 1024 * 1024;
    uint8_t *in = sample(n), *enc;
    size_t elen;
    RtError err;
    Stage egz[] = {{GZ, NULL, 0}, {ENC, "right", 0}};
    CHECK_EQ_INT(run_pipe(in, n, egz, 2, 0, &enc, &elen, &err), RT_OK);
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_mem_source(enc, elen, &err), NULL);
    rt_pipe_add_filter(p, crypto_decrypt_filter(secret("not it"), 0, &err), NULL);
    rt_pipe_add_filter(p, crypto_gunzip_filter(&err), NULL);
    rt_pipe_set_sink(p, rt_file_sink(dst, false, &err), NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_VERIFY);
    rt_pipe_free(p);
    CHECK_EQ_INT(count_dir_entries(dir), 0);
    rmdir(dir);
    free(enc);
    free(in);
}

static void test_digest_filters(void)
{
    size_t n = 1000003;
    uint8_t *in = sample(n);
    RtError err;
    rt_error_init(&err);
    RtPipeOptions o = {.buffer_size = 4093};
    RtPipe *p = rt_pipe_new(&o);
    rt_pipe_set_source(p, rt_mem_source(in, n, &err), NULL);
    rt_pipe_add_filter(p, crypto_sha256_filter(&err), "plain");
    rt_pipe_add_filter(p, crypto_hmac_sha256_filter(secret("Jefe"), &err), "mac");
    RtSink *sink = rt_mem_sink(n, &err);
    rt_pipe_set_sink(p, sink, NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_OK);
    const RtResults *r = rt_pipe_results(p);
    uint8_t md[32];
    char hex[65];
    crypto_sha256(in, n, md, &err);
    crypto_hex(md, 32, hex);
    const RtResults *plain = rt_results_get(r, "plain");
    CHECK(plain != NULL);
    if (plain) {
        CHECK_EQ_STR(rt_results_as_str(rt_results_get(plain, "hex"), NULL), hex);
        CHECK_EQ_INT(rt_results_as_int(rt_results_get(plain, "bytes")), n);
    }
    crypto_hmac_sha256("Jefe", 4, in, n, md, &err);
    crypto_hex(md, 32, hex);
    const RtResults *mac = rt_results_get(r, "mac");
    CHECK(mac != NULL);
    if (mac) CHECK_EQ_STR(rt_results_as_str(rt_results_get(mac, "hex"), NULL), hex);
    rt_pipe_free(p);
    /* empty input: the digest of nothing */
    uint8_t *out;
    size_t len;
    Stage sha = {SHA, NULL, 0};
    CHECK_EQ_INT(run_pipe(in, 0, &sha, 1, 0, &out, &len, &err), RT_OK);
    free(out);
    free(in);
}

static void test_bad_options(void)
{
    RtError err;
    rt_error_init(&err);
    CryptoGzipOptions bad = {.level = 13};
    CHECK(crypto_gzip_filter(&bad, &err) == NULL);
    CHECK_EQ_INT(err.klass, RT_CLASS_USAGE);
    rt_error_init(&err);
    CHECK(crypto_encrypt_filter(secret("x"), -1, &err) == NULL);
    CHECK_EQ_INT(err.klass, RT_CLASS_USAGE);
    rt_error_init(&err);
    CHECK(crypto_decrypt_filter(NULL, 0, &err) == NULL);
    /* a filter that never runs is destroyed cleanly (threads never started) */
    RtFilter *f = crypto_gzip_filter(NULL, &err);
    CHECK(f != NULL);
    rt_filter_free(f);
}

static void *cancel_later(void *arg)
{
    (void)arg;
    usleep(200 * 1000);
    rt_cancel(RT_CLASS_CANCELLED);
    return NULL;
}

static void test_cancel_mid_stream(void)
{
    /* an endless source: only the cancel flag stops the pipe, wherever it is */
    const char *argv[] = {"cat", "/dev/zero", NULL};
    RtProcSpec spec = {.argv = argv};
    RtError err;
    rt_error_init(&err);
    RtPipe *p = rt_pipe_new(NULL);
    rt_pipe_set_source(p, rt_child_source(&spec, &err), NULL);
    rt_pipe_add_filter(p, crypto_gzip_filter(NULL, &err), NULL);
    rt_pipe_add_filter(p, crypto_encrypt_filter(secret("x"), 1, &err), NULL);
    rt_pipe_set_sink(p, rt_mem_sink((size_t)1 << 40, &err), NULL);
    pthread_t t;
    pthread_create(&t, NULL, cancel_later, NULL);
    CHECK_EQ_INT(rt_pipe_run(p, &err), RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_CANCELLED);
    pthread_join(t, NULL);
    rt_pipe_free(p);
    rt_cancel_reset();
}

/* gunzip decompresses members of up to half its 4 MiB window with libdeflate as soon as they are
 * in, bigger ones once the window is full, and hands anything bigger to zlib mid-stream. */
static void test_gunzip_window(void)
{
    size_t n = (size_t)14 << 20, big = (size_t)6 << 20;
    uint8_t *in = malloc(n);
    uint32_t x = 2463534242u; /* xorshift: incompressible, so members are as big as blocks */
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        in[i] = (uint8_t)x;
    }
    RtError err;
    uint8_t *gz, *out;
    size_t glen, len;
    Stage gzs = {GZ, NULL, 0}, gunz = {GUNZ, NULL, 0};
    gz_block = (size_t)3 << 20; /* 3 MiB members: more than half the window */
    CHECK_EQ_INT(run_pipe(in, n, &gzs, 1, 0, &gz, &glen, &err), RT_OK);
    gz_block = 1000;
    CHECK_EQ_INT(run_pipe(gz, glen, &gunz, 1, 0, &out, &len, &err), RT_OK);
    CHECK(len == n && memcmp(out, in, n) == 0);
    free(out);
    gz[glen / 2] ^= 0x55; /* inside the third member */
    CHECK_EQ_INT(run_pipe(gz, glen, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_corrupt");
    gz[glen / 2] ^= 0x55;
    CHECK_EQ_INT(run_pipe(gz, glen - 100, &gunz, 1, 0, &out, &len, &err), RT_ERR);
    CHECK_EQ_STR(err.code, "crypto.gzip_truncated");
    /* our members, then one 6 MiB member (bigger than the window), then ours again */
    size_t cap = glen + big + 4096;
    uint8_t *mix = malloc(2 * cap);
    memcpy(mix, gz, glen);
    size_t z = zlib_gzip(in, big, mix + glen, cap);
    memcpy(mix + glen + z, gz, glen);
    CHECK_EQ_INT(run_pipe(mix, 2 * glen + z, &gunz, 1, 0, &out, &len, &err), RT_OK);
    CHECK(len == 2 * n + big && memcmp(out, in, n) == 0 && memcmp(out + n, in, big) == 0 &&
          memcmp(out + n + big, in, n) == 0);
    free(out);
    free(mix);
    free(gz);
    free(in);
}

TEST_MAIN(test_known_answers, test_decrypt_openssl_known_answer, test_round_trips,
          test_gunzip_multi_member_and_errors, test_gunzip_window, test_decrypt_errors,
          test_failed_decrypt_leaves_no_file, test_digest_filters, test_bad_options,
          test_cancel_mid_stream)
