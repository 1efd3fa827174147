/*
 * `clubio-dr encrypt` / `clubio-dr decrypt` — the operator commands over the crypto filters.
 *
 *   clubio-dr encrypt [-i IN] [-o OUT] [--gzip]     (stdin/stdout by default)
 *   clubio-dr decrypt [-i IN] [-o OUT] [--gunzip]
 *
 * The passphrase comes from BACKUP_ENCRYPTION_KEY, --pass-env NAME or --pass-file PATH — never
 * from argv. `-o` writes through the atomic file sink: on any error (wrong passphrase,
 * truncation) the temporary file is removed and nothing appears under the final name. The
 * by-hand restore is `clubio-dr decrypt --gunzip -i x.sql.gz.enc | psql`.
 *
 * No Lua here: the host flags come from flags.h (Lua-free).
 */
#include "commands.h"
#include "crypto.h"
#include "flags.h"
#include "io/endpoints.h"
#include "io/pipe.h"
#include "json.h"
#include "progress.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char HELP_ENCRYPT[] =
    "usage: clubio-dr encrypt [-i IN] [-o OUT] [--gzip] [options]\n"
    "\n"
    "Encrypts IN (default stdin) to OUT (default stdout) in the format of\n"
    "`openssl enc -aes-256-cbc -salt -pbkdf2` (with --gzip: `gzip | openssl enc ...`),\n"
    "so stock tools can always open the result:\n"
    "  openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in X | gunzip\n"
    "\n"
    "options:\n"
    "  -i, --input PATH      read PATH ('-' = stdin)\n"
    "  -o, --output PATH     write PATH atomically ('-' = stdout); refuses an existing file\n"
    "                        (a device or FIFO, e.g. /dev/null, is written in place)\n"
    "  --force               overwrite an existing output file\n"
    "  --gzip                gzip-compress before encrypting (parallel, multi-member)\n"
    "  --level N             gzip level 1..12 (default 6; 10-12 are slow)\n"
    "  --threads N           gzip worker threads (default: online CPUs)\n"
    "  --iter N              PBKDF2 iterations (default 10000, openssl's default)\n"
    "  --pass-env NAME       passphrase from environment variable NAME\n"
    "                        (default BACKUP_ENCRYPTION_KEY)\n"
    "  --pass-file PATH      passphrase from the first line of PATH\n"
    "  --json                print a JSON result (sizes, sha256 of the output) when -o is a file\n"
    "  --no-progress         no progress bar on a terminal\n"
    "\n"
    "The passphrase is never taken from the command line.\n";

static const char HELP_DECRYPT[] =
    "usage: clubio-dr decrypt [-i IN] [-o OUT] [--gunzip] [options]\n"
    "\n"
    "Decrypts an archive in the `openssl enc -aes-256-cbc -salt -pbkdf2` format from IN\n"
    "(default stdin) to OUT (default stdout); with --gunzip also decompresses it. The by-hand\n"
    "restore of an export:\n"
    "  clubio-dr decrypt --gunzip -i clubio-db-YYYYMMDD-HHMMSS.sql.gz.enc | psql "
    "\"$DATABASE_URL\"\n"
    "A wrong passphrase or a damaged archive fails with a non-zero status, and with -o no output\n"
    "file is left behind.\n"
    "\n"
    "options:\n"
    "  -i, --input PATH      read PATH ('-' = stdin)\n"
    "  -o, --output PATH     write PATH atomically ('-' = stdout); refuses an existing file\n"
    "                        (a device or FIFO, e.g. /dev/null, is written in place)\n"
    "  --force               overwrite an existing output file\n"
    "  --gunzip              gunzip after decrypting (checks every member's CRC and length)\n"
    "  --iter N              PBKDF2 iterations used when encrypting (default 10000)\n"
    "  --pass-env NAME       passphrase from environment variable NAME\n"
    "                        (default BACKUP_ENCRYPTION_KEY)\n"
    "  --pass-file PATH      passphrase from the first line of PATH\n"
    "  --json                print a JSON result (sizes, sha256 of the output) when -o is a file\n"
    "  --no-progress         no progress bar on a terminal\n";

typedef struct CliArgs {
    const char *in, *out, *pass_env, *pass_file;
    bool gzip, force, help;
    int iter, threads, level;
} CliArgs;

static int usage(RtError *err, const char *cmd, const char *fmt, const char *arg)
{
    rt_error_set(err, RT_CLASS_USAGE, RT_CODE_USAGE, fmt, arg);
    rt_error_hint(err, "see clubio-dr %s --help", cmd);
    return RT_ERR;
}

/* "--name VALUE" or "--name=VALUE"; returns the value or NULL if argv[*i] is not --name. */
static const char *opt_value(int argc, char **argv, int *i, const char *s, const char *l,
                             bool *missing)
{
    const char *a = argv[*i];
    size_t n = strlen(l);
    if ((s && strcmp(a, s) == 0) || strcmp(a, l) == 0) {
        if (*i + 1 >= argc) {
            *missing = true;
            return NULL;
        }
        return argv[++*i];
    }
    if (strncmp(a, l, n) == 0 && a[n] == '=') return a + n + 1;
    return NULL;
}

static int parse_int(const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return RT_ERR;
    *out = (int)x;
    return RT_OK;
}

static int parse_args(int argc, char **argv, bool encrypt, CliArgs *a, RtError *err)
{
    const char *cmd = encrypt ? "encrypt" : "decrypt";
    bool json = rt_host_flags()->json, progress = rt_host_flags()->progress;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        bool missing = false;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
            a->help = true;
        else if (strcmp(arg, "--force") == 0)
            a->force = true;
        else if (strcmp(arg, "--json") == 0)
            json = true;
        else if (strcmp(arg, "--no-progress") == 0)
            progress = false;
        else if (strcmp(arg, encrypt ? "--gzip" : "--gunzip") == 0)
            a->gzip = true;
        else if ((v = opt_value(argc, argv, &i, "-i", "--input", &missing)))
            a->in = v;
        else if ((v = opt_value(argc, argv, &i, "-o", "--output", &missing)))
            a->out = v;
        else if ((v = opt_value(argc, argv, &i, NULL, "--pass-env", &missing)))
            a->pass_env = v;
        else if ((v = opt_value(argc, argv, &i, NULL, "--pass-file", &missing)))
            a->pass_file = v;
        else if ((v = opt_value(argc, argv, &i, NULL, "--iter", &missing))) {
            if (parse_int(v, 1, 100000000, &a->iter) != RT_OK)
                return usage(err, cmd, "--iter '%s' is not a count from 1 to 100000000", v);
        } else if (encrypt && (v = opt_value(argc, argv, &i, NULL, "--threads", &missing))) {
            if (parse_int(v, 1, 256, &a->threads) != RT_OK)
                return usage(err, cmd, "--threads '%s' is not a number from 1 to 256", v);
        } else if (encrypt && (v = opt_value(argc, argv, &i, NULL, "--level", &missing))) {
            if (parse_int(v, 1, 12, &a->level) != RT_OK)
                return usage(err, cmd, "--level '%s' is not a level from 1 to 12", v);
        } else if (missing)
            return usage(err, cmd, "%s needs a value", arg);
        else if (strncmp(arg, "--pass", 6) == 0 && strncmp(arg, "--pass-", 7) != 0)
            return usage(err, cmd,
                         "%s: passphrases are never taken from the command line; use "
                         "BACKUP_ENCRYPTION_KEY, --pass-env NAME or --pass-file PATH",
                         arg);
        else
            return usage(err, cmd, "unexpected argument '%s'", arg);
        if (missing) return usage(err, cmd, "%s needs a value", arg);
    }
    if (a->pass_env && a->pass_file)
        return usage(err, cmd, "give only one of --pass-env and --pass-file%s", "");
    rt_host_global_flags.json = json;
    rt_host_global_flags.progress = progress;
    return RT_OK;
}

static bool is_std(const char *path)
{
    return !path || strcmp(path, "-") == 0;
}

static int64_t res_int(const RtResults *r, const char *table, const char *key)
{
    const RtResults *t = table ? rt_results_get(r, table) : r;
    const RtResults *v = t ? rt_results_get(t, key) : NULL;
    return v ? rt_results_as_int(v) : -1;
}

static int run(int argc, char **argv, bool encrypt)
{
    const char *cmd = encrypt ? "encrypt" : "decrypt";
    CliArgs a = {0};
    RtError err;
    rt_error_init(&err);
    if (parse_args(argc, argv, encrypt, &a, &err) != RT_OK) return rt_report_error(&err);
    if (a.help) {
        fputs(encrypt ? HELP_ENCRYPT : HELP_DECRYPT, stdout);
        return 0;
    }
    bool to_stdout = is_std(a.out);
    if (to_stdout && (encrypt || !a.gzip) && isatty(1)) {
        rt_error_set(&err, RT_CLASS_USAGE, "usage.tty", "refusing to write binary %s to a terminal",
                     encrypt ? "ciphertext" : "data");
        rt_error_hint(&err, "redirect the output or give -o FILE");
        return rt_report_error(&err);
    }
    bool json = rt_host_flags()->json;

    RtSecret *pass =
        a.pass_file ? rt_secret_from_file(a.pass_file, &err)
                    : rt_secret_from_env(a.pass_env ? a.pass_env : "BACKUP_ENCRYPTION_KEY", &err);
    if (!pass) {
        rt_error_hint(&err, "set BACKUP_ENCRYPTION_KEY, or use --pass-env NAME or --pass-file "
                            "PATH");
        return rt_report_error(&err);
    }
    RtSource *src = is_std(a.in) ? rt_fd_source(0, "stdin", &err) : rt_file_source(a.in, &err);
    if (!src) {
        rt_secret_free(pass);
        return rt_report_error(&err);
    }
    RtSink *sink = to_stdout ? rt_fd_sink(1, "stdout", &err) : rt_file_sink(a.out, a.force, &err);
    if (!sink) {
        rt_secret_free(pass);
        rt_source_free(src);
        if (strcmp(err.code, "io.exists") == 0) rt_error_hint(&err, "use --force to replace it");
        return rt_report_error(&err);
    }

    RtProgressDisplay disp;
    rt_progress_display_init(&disp, cmd, -1);
    RtPipeOptions opts = {0};
    if (disp.mode) {
        opts.progress = rt_progress_display_cb;
        opts.progress_ud = &disp;
    }
    RtPipe *p = rt_pipe_new(&opts);
    if (!p) {
        rt_secret_free(pass);
        rt_source_free(src);
        rt_sink_free(sink);
        rt_error_set(&err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        return rt_report_error(&err);
    }
    /* From here the pipe owns every stage; a constructor that fails leaves err set and the
     * pipe is freed unrun, which destroys what it was given (the sink aborts nothing yet). */
    rt_pipe_set_source(p, src, "input");
    RtFilter *f;
    bool ok = true;
    if (encrypt) {
        if (a.gzip) {
            CryptoGzipOptions go = {.level = a.level, .threads = a.threads};
            ok = (f = crypto_gzip_filter(&go, &err)) && rt_pipe_add_filter(p, f, NULL) == RT_OK;
        }
        if (ok)
            ok = (f = crypto_encrypt_filter(pass, a.iter, &err)) &&
                 rt_pipe_add_filter(p, f, NULL) == RT_OK;
        else
            rt_secret_free(pass);
    } else {
        ok = (f = crypto_decrypt_filter(pass, a.iter, &err)) &&
             rt_pipe_add_filter(p, f, NULL) == RT_OK;
        if (ok && a.gzip)
            ok = (f = crypto_gunzip_filter(&err)) && rt_pipe_add_filter(p, f, NULL) == RT_OK;
    }
    pass = NULL; /* owned by the filter (or freed) */
    bool report = json && !to_stdout;
    if (ok && report)
        ok = (f = crypto_sha256_filter(&err)) && rt_pipe_add_filter(p, f, "output") == RT_OK;
    if (ok)
        ok = rt_pipe_set_sink(p, sink, "file") == RT_OK;
    else
        rt_sink_free(sink);
    if (!ok) {
        if (!err.set) rt_error_set(&err, RT_CLASS_FAILURE, RT_CODE_NOMEM, "out of memory");
        rt_pipe_free(p);
        return rt_report_error(&err);
    }
    if (rt_pipe_run(p, &err) != RT_OK) {
        rt_pipe_free(p);
        /* Decrypted bytes that are not gzip at all almost always mean the wrong key (the
         * padding check comes only at the end, after gunzip has already seen garbage). */
        if (!encrypt && a.gzip && strcmp(err.code, "crypto.not_gzip") == 0) {
            RtError e2;
            rt_error_init(&e2);
            rt_error_set(&e2, RT_CLASS_VERIFY, "crypto.bad_decrypt",
                         "wrong passphrase or corrupt archive");
            rt_error_hint(&e2, "check the passphrase (BACKUP_ENCRYPTION_KEY, --pass-env or "
                               "--pass-file) and the iteration count (--iter, default 10000); "
                               "if both are right the archive is damaged: verify it against its "
                               "manifest");
            return rt_report_error(&e2);
        }
        return rt_report_error(&err);
    }
    if (report) {
        const RtResults *r = rt_pipe_results(p);
        const RtResults *out = rt_results_get(r, "output");
        const RtResults *hex = out ? rt_results_get(out, "hex") : NULL;
        printf("{\"ok\":true,\"command\":\"%s\",\"input\":", cmd);
        rt_json_fquote(stdout, is_std(a.in) ? "-" : a.in);
        printf(",\"output\":");
        rt_json_fquote(stdout, a.out);
        printf(",\"bytes_in\":%lld,\"bytes_out\":%lld,\"sha256\":",
               (long long)res_int(r, NULL, "bytes_in"), (long long)res_int(r, NULL, "bytes_out"));
        rt_json_fquote(stdout, hex ? rt_results_as_str(hex, NULL) : "");
        printf(",\"gzip\":%s,\"iter\":%d,\"seconds\":%.3f}\n", a.gzip ? "true" : "false",
               a.iter ? a.iter : CRYPTO_PBKDF2_ITER_DEFAULT,
               rt_results_get(r, "seconds") ? rt_results_as_num(rt_results_get(r, "seconds"))
                                            : 0.0);
        fflush(stdout);
    }
    rt_pipe_free(p);
    return 0;
}

int crypto_cli_encrypt(int argc, char **argv)
{
    return run(argc, argv, true);
}

int crypto_cli_decrypt(int argc, char **argv)
{
    return run(argc, argv, false);
}
