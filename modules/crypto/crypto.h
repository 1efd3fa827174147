/*
 * The crypto module's C core: the filters of the archive format and small one-shot helpers.
 *
 * The archive is `gzip | openssl enc -aes-256-cbc -salt -pbkdf2`, so stock tools always open
 * our archives and we open theirs:
 *
 *   gzip     crypto_gzip_filter: 1 MiB blocks compressed in parallel (libdeflate, one
 *            compressor per worker thread), each block a complete gzip member, emitted in order;
 *            `gunzip`/`zcat`/`pigz -d` read concatenated members as one stream.
 *   gunzip   crypto_gunzip_filter: one or more members (gzip's, pigz's, ours); members up to
 *            a 4 MiB window (ours) whole with libdeflate, bigger ones with zlib's streaming
 *            inflate; checks each member's CRC-32 and length; truncation and anything after the
 *            last member that is not another member ("trailing garbage") are errors.
 *   encrypt  crypto_encrypt_filter: "Salted__" + 8 random salt bytes, then AES-256-CBC with
 *            PKCS#7 padding; key and IV = PBKDF2-HMAC-SHA256(passphrase, salt, iter) -> 32+16.
 *   decrypt  crypto_decrypt_filter: the reverse; the last block is held back until EOF and a
 *            bad padding (wrong passphrase — CBC has no integrity) is "wrong passphrase or
 *            corrupt archive".
 *   sha256, hmac_sha256   observing filters; results { hex = "...", bytes = N }.
 *
 * Nothing here includes lua.h or raises: constructors return NULL and fill an RtError, filters
 * return RT_OK/RT_ERR. Filters take ownership of the RtSecret they are given (also on failure)
 * and wipe it, and every derived key, when destroyed.
 */
#ifndef CLUBIO_CRYPTO_H
#define CLUBIO_CRYPTO_H

#include "io/stage.h"
#include "secret.h"

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_PBKDF2_ITER_DEFAULT 10000 /* openssl enc -pbkdf2's default */
/* libdeflate level 6 (lazy matching): the lowest level whose archives are no larger than
 * `gzip -6`'s on every dump shape of bench/compress_levels.py (text-heavy 0.998, numeric 0.942,
 * JSON 0.962, bytea 0.891, mixed 0.961), at 30-50% of the CPU of `gzip -6 | openssl enc`.
 * Level 4 is a quarter cheaper but 1.9% larger on text-heavy and 1.7% on JSON data; level 5
 * still 0.6% larger on text (modules/crypto/README.md). */
#define CRYPTO_GZIP_LEVEL_DEFAULT 6
#define CRYPTO_GZIP_BLOCK_DEFAULT (1024 * 1024)

typedef struct CryptoGzipOptions {
    int level;         /* 1..12 (libdeflate levels; 1..9 roughly as gzip's); 0 = 6 */
    int threads;       /* worker threads; 0 = online CPUs, at most 16 */
    size_t block_size; /* bytes of input per gzip member; 0 = 1 MiB */
} CryptoGzipOptions;

RtFilter *crypto_gzip_filter(const CryptoGzipOptions *opts, RtError *err);
RtFilter *crypto_gunzip_filter(RtError *err);

/* `iter` >= 1 (0 = 10000). The filter owns `pass` from here on, even when NULL is returned. */
RtFilter *crypto_encrypt_filter(RtSecret *pass, int iter, RtError *err);
RtFilter *crypto_decrypt_filter(RtSecret *pass, int iter, RtError *err);

RtFilter *crypto_sha256_filter(RtError *err);
/* The filter owns `key`. */
RtFilter *crypto_hmac_sha256_filter(RtSecret *key, RtError *err);

/* One-shot helpers (also used by the verify module). All return RT_OK or RT_ERR. */
int crypto_sha256(const void *data, size_t len, uint8_t out[32], RtError *err);
int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       uint8_t out[32], RtError *err);
int crypto_pbkdf2_sha256(const char *pass, size_t passlen, const uint8_t *salt, size_t saltlen,
                         int iter, uint8_t *out, size_t outlen, RtError *err);
int crypto_random(uint8_t *out, size_t n, RtError *err);
/* Lower-case hex of len bytes into hex (2*len+1 bytes, NUL-terminated). */
void crypto_hex(const uint8_t *data, size_t len, char *hex);

#endif
