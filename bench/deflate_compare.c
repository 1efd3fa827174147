/*
 * Measures the compress side of crypto.gzip: zlib against libdeflate on one core, same data,
 * same 1 MiB blocks as the filter (one gzip member each), plus zlib as one stream (what
 * `gzip -6` does). Prints seconds, MB/s and size per engine and level.
 *
 *   deflate_compare FILE [LEVEL...]      (default level 6)
 */
#include <libdeflate.h>
#include <zlib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK (1024 * 1024)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t zlib_member(const unsigned char *in, size_t n, unsigned char *out, size_t cap,
                          int level)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? len : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: deflate_compare FILE [LEVEL...]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)size + 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) return 1;
    fclose(f);
    size_t cap = compressBound(BLOCK) + 64;
    unsigned char *out = malloc(cap);
    int nlevels = argc > 2 ? argc - 2 : 1;
    printf("%-28s %5s %8s %8s %12s %7s\n", "engine", "level", "seconds", "MB/s", "bytes", "ratio");
    for (int li = 0; li < nlevels; li++) {
        int level = argc > 2 ? atoi(argv[2 + li]) : 6;
        for (int engine = 0; engine < 3; engine++) {
            double t0 = now();
            size_t total = 0;
            if (engine == 0) { /* zlib, one stream like gzip -6 */
                z_stream z;
                memset(&z, 0, sizeof z);
                deflateInit2(&z, level > 9 ? 9 : level, Z_DEFLATED, 16 + MAX_WBITS, 8,
                             Z_DEFAULT_STRATEGY);
                z.next_in = data;
                z.avail_in = (uInt)size;
                int rc;
                do {
                    z.next_out = out;
                    z.avail_out = (uInt)cap;
                    rc = deflate(&z, Z_FINISH);
                    total += cap - z.avail_out;
                } while (rc == Z_OK || rc == Z_BUF_ERROR);
                deflateEnd(&z);
            } else if (engine == 1) { /* zlib, 1 MiB members */
                for (long off = 0; off < size; off += BLOCK) {
                    size_t n = (size_t)(size - off) < BLOCK ? (size_t)(size - off) : BLOCK;
                    total += zlib_member(data + off, n, out, cap, level > 9 ? 9 : level);
                }
            } else { /* libdeflate, 1 MiB members */
                struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
                for (long off = 0; off < size; off += BLOCK) {
                    size_t n = (size_t)(size - off) < BLOCK ? (size_t)(size - off) : BLOCK;
                    total += libdeflate_gzip_compress(c, data + off, n, out, cap);
                }
                libdeflate_free_compressor(c);
            }
            double dt = now() - t0;
            static const char *const names[] = {
                "zlib (one stream, as gzip)", "zlib (1 MiB members)", "libdeflate (1 MiB members)"};
            if (engine == 0 && level > 9) continue;
            printf("%-28s %5d %8.2f %8.1f %12zu %7.3f\n", names[engine], level, dt,
                   (double)size / dt / 1e6, total, (double)size / (double)total);
            fflush(stdout);
        }
    }
    free(out);
    free(data);
    return 0;
}
