/*
 * clubio-dr — command line entry point.
 *
 *   clubio-dr [flags] run NAME|PATH [args...]   run a script or runbook
 *   clubio-dr [flags] list [--json]             list scripts and runbooks
 *   clubio-dr [flags] schedule [--list|--once|--run JOB]   the job scheduler (scripts/schedule.lua)
 *   clubio-dr [flags] metrics [--write [DIR]]   Prometheus metrics (scripts/metrics.lua)
 *   clubio-dr [flags] -e CODE                   run a Lua chunk, print what it returns
 *   clubio-dr encrypt|decrypt [options]         openssl-compatible archive encryption
 *   clubio-dr help [COMMAND] | --help | --version
 *
 * Host flags (before the command, or after the script name for `run`, until `--`):
 *   --dry-run  --yes|-y  --json  --log-level LEVEL  --timeout SECONDS  --no-progress
 */
#include "commands.h"
#include "host.h"
#include "io/cancel.h"
#include "log.h"
#include "redact.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: clubio-dr [flags] COMMAND [args]\n"
    "\n"
    "Backup and disaster recovery for PostgreSQL on Neon, with archives in S3.\n"
    "\n"
    "commands:\n"
    "  run NAME|PATH [args...]  run a script or runbook (see `clubio-dr list`)\n"
    "  list [--json]            list scripts and runbooks with their description and schedule\n"
    "  schedule [--list|--once] run scheduled jobs as a service, list them, or run due ones\n"
    "  metrics [--write [DIR]]  Prometheus metrics of the scheduled jobs (node-exporter textfile)\n"
    "  -e CODE                  run a Lua chunk and print what it returns\n"
    "  encrypt [options]        encrypt (and gzip) a stream in the openssl enc format\n"
    "  decrypt [options]        decrypt (and gunzip) an archive\n"
    "  help [COMMAND]           show help for a command\n"
    "  --version                print the version\n"
    "\n"
    "flags (every script understands them):\n"
    "  --dry-run                print what would be done; change nothing\n"
    "  --yes, -y                confirm destructive steps without asking\n"
    "  --json                   JSON log lines on stderr, JSON results and errors on stdout\n"
    "  --log-level LEVEL        debug, info, warn or error (default info; debug adds tracebacks)\n"
    "  --timeout SECONDS        cancel the run after SECONDS (exit status 124)\n"
    "  --no-progress            no progress bar on a terminal\n"
    "\n"
    "environment:\n"
    "  CLUBIO_DR_PATH           folders searched for scripts before the built-in ones (a:b:c)\n"
    "\n"
    "exit status: 0 ok, 1 failure, 2 usage, 3 configuration, 4 verification failed,\n"
    "             5 declined, 124 timeout, 130 cancelled\n";

static const char HELP_RUN[] =
    "usage: clubio-dr [flags] run NAME|PATH [args...] [flags] [-- args...]\n"
    "\n"
    "Runs scripts/NAME.lua or runbooks/NAME.lua (folders in CLUBIO_DR_PATH first) or a .lua path.\n"
    "Arguments reach the script as `...` and in the table `arg` (arg[0] is the script path).\n"
    "Host flags may also follow NAME; everything after `--` goes to the script untouched.\n";

static const char HELP_LIST[] =
    "usage: clubio-dr list [--json]\n"
    "\n"
    "Lists scripts and runbooks: name, kind, schedule and the one-line description taken from\n"
    "the first comment line of each file (`-- schedule: CRON` declares a schedule).\n";

static const char HELP_EVAL[] =
    "usage: clubio-dr -e CODE\n"
    "\n"
    "Runs CODE as a Lua chunk in the host (all modules available through require) and prints\n"
    "each value it returns (tables as JSON). `clubio-dr -e '1+1'` prints 2.\n";

static void usage_error(const char *fmt, const char *arg)
{
    RtError err;
    rt_error_init(&err);
    rt_error_set(&err, RT_CLASS_USAGE, RT_CODE_USAGE, fmt, arg);
    rt_error_hint(&err, "see clubio-dr --help");
    exit(rt_report_error(&err));
}

/* Parses one host flag at argv[*i]; returns true if it was one. */
static bool parse_flag(int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    RtHostFlags *f = &rt_host_global_flags;
    if (strcmp(a, "--dry-run") == 0)
        f->dry_run = true;
    else if (strcmp(a, "--yes") == 0 || strcmp(a, "-y") == 0)
        f->yes = true;
    else if (strcmp(a, "--json") == 0)
        f->json = true;
    else if (strcmp(a, "--no-progress") == 0)
        f->progress = false;
    else if (strcmp(a, "--log-level") == 0 || strncmp(a, "--log-level=", 12) == 0) {
        const char *v = a[11] == '=' ? a + 12 : (*i + 1 < argc ? argv[++*i] : NULL);
        if (!v) usage_error("--log-level needs a value (%s)", "debug, info, warn, error");
        int lvl = rt_log_level_parse(v);
        if (lvl < 0) usage_error("unknown log level '%s' (use debug, info, warn or error)", v);
        f->log_level = lvl;
    } else if (strcmp(a, "--timeout") == 0 || strncmp(a, "--timeout=", 10) == 0) {
        const char *v = a[9] == '=' ? a + 10 : (*i + 1 < argc ? argv[++*i] : NULL);
        if (!v) usage_error("--timeout needs a number of seconds%s", "");
        char *end;
        double t = strtod(v, &end);
        if (*end || t <= 0) usage_error("--timeout '%s' is not a positive number of seconds", v);
        f->timeout = t;
    } else
        return false;
    return true;
}

#define ABORT_GRACE      10
#define ABORT_GRACE_TEXT "10"

static void on_signal(int sig)
{
    static volatile sig_atomic_t count;
    if (sig == SIGALRM) {
        if (count > 1) _exit(130); /* the abort's time after a second signal is up */
        rt_cancel(RT_CLASS_TIMEOUT);
        return;
    }
    if (++count == 2) {
        /* A second Ctrl-C/SIGTERM shortens the waits but does not skip the cleanup: exiting here
         * would leave a multipart upload in progress (billed until a lifecycle rule removes it)
         * and a partial file. The aborts get ABORT_GRACE seconds, then we exit regardless. */
        static const char msg[] =
            "clubio-dr: stopping: aborting what was started (at most " ABORT_GRACE_TEXT " s)\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        rt_cancel_hurry();
        alarm(ABORT_GRACE); /* replaces the --timeout timer: the run is already cancelled */
    }
    rt_cancel(RT_CLASS_CANCELLED);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a closed reader gives EPIPE, reported as an error */
}

static void start_timeout(void)
{
    double t = rt_host_global_flags.timeout;
    if (t <= 0) return;
    struct itimerval it = {{0, 0}, {(time_t)t, (suseconds_t)((t - (time_t)t) * 1e6)}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* A script's help is its header: the leading `--` comment lines (a `#!` line is skipped), without
 * the comment markers. Printing it runs nothing, so `run NAME --help` is always safe. */
static int print_script_help(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        RtError err;
        rt_error_init(&err);
        rt_error_set(&err, RT_CLASS_FAILURE, "io.open", "cannot read script '%s'", path);
        return rt_report_error(&err);
    }
    char line[1024];
    bool any = false, first = true;
    while (fgets(line, sizeof line, f)) {
        if (first && line[0] == '#' && line[1] == '!') {
            first = false;
            continue;
        }
        first = false;
        if (strncmp(line, "--", 2) != 0) break;
        const char *t = line + 2;
        if (*t == ' ') t++;
        fputs(t, stdout);
        if (!strchr(t, '\n')) fputc('\n', stdout); /* a line longer than the buffer, cut */
        any = true;
    }
    fclose(f);
    if (!any) printf("%s: no description (the script has no header comment)\n", path);
    return 0;
}

static int cmd_help(const char *topic)
{
    if (!topic)
        fputs(USAGE, stdout);
    else if (strcmp(topic, "run") == 0)
        fputs(HELP_RUN, stdout);
    else if (strcmp(topic, "list") == 0)
        fputs(HELP_LIST, stdout);
    else if (strcmp(topic, "-e") == 0 || strcmp(topic, "eval") == 0)
        fputs(HELP_EVAL, stdout);
    else if (strcmp(topic, "encrypt") == 0 || strcmp(topic, "decrypt") == 0) {
        char *av[] = {(char *)topic, "--help", NULL};
        return strcmp(topic, "encrypt") == 0 ? crypto_cli_encrypt(2, av)
                                             : crypto_cli_decrypt(2, av);
    } else {
        /* any script or runbook: `help backup-database` is `run backup-database --help` */
        char *path = rt_host_find_script(topic);
        if (!path)
            usage_error("no command, script or runbook named '%s' (see clubio-dr --help and "
                        "clubio-dr list)",
                        topic);
        int rc = print_script_help(path);
        free(path);
        return rc;
    }
    return 0;
}

int main(int argc, char **argv)
{
    install_signals();
    rt_redact_register_env();
    int i = 1;
    while (i < argc && argv[i][0] == '-' && strcmp(argv[i], "-e") != 0 &&
           parse_flag(argc, argv, &i))
        i++;
    rt_log_configure((RtLogLevel)rt_host_global_flags.log_level, rt_host_global_flags.json);
    if (i >= argc) {
        fputs(USAGE, stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) return cmd_help(NULL);
    if (strcmp(cmd, "help") == 0) {
        if (i + 1 < argc)
            usage_error("help takes one command or script name, not '%s'", argv[i + 1]);
        return cmd_help(i < argc ? argv[i] : NULL);
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("clubio-dr %s\n", CLUBIO_DR_VERSION);
        return 0;
    }
    if (strcmp(cmd, "encrypt") == 0) return crypto_cli_encrypt(argc - i + 1, argv + i - 1);
    if (strcmp(cmd, "decrypt") == 0) return crypto_cli_decrypt(argc - i + 1, argv + i - 1);
    if (strcmp(cmd, "list") == 0) {
        bool json = rt_host_global_flags.json;
        for (; i < argc; i++) {
            if (strcmp(argv[i], "--json") == 0)
                json = true;
            else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
                return cmd_help("list");
            else
                usage_error("list: unexpected argument '%s'", argv[i]);
        }
        return rt_host_list(json);
    }
    if (strcmp(cmd, "-e") == 0) {
        if (i >= argc) usage_error("-e needs a chunk of Lua code%s", "");
        const char *code = argv[i++];
        for (; i < argc; i++)
            if (!parse_flag(argc, argv, &i)) usage_error("-e: unexpected argument '%s'", argv[i]);
        rt_log_configure((RtLogLevel)rt_host_global_flags.log_level, rt_host_global_flags.json);
        lua_State *L = rt_host_new();
        if (!L) return 1;
        start_timeout();
        int rc = rt_host_eval(L, code);
        lua_close(L);
        return rc;
    }
    /* `schedule` and `metrics` are the scripts of the same name: `clubio-dr schedule --list` is
     * `clubio-dr run schedule --list` (a site may override them through CLUBIO_DR_PATH). */
    bool script_cmd = strcmp(cmd, "schedule") == 0 || strcmp(cmd, "metrics") == 0;
    if (strcmp(cmd, "run") == 0 || script_cmd) {
        if (!script_cmd) {
            if (i >= argc)
                usage_error("run needs a script name or path%s", " (see clubio-dr list)");
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
                return cmd_help("run");
        }
        const char *name = script_cmd ? cmd : argv[i++];
        /* host flags after NAME are ours, other arguments the script's. `--` ends the flags and
         * is passed on, so the script's parser (clubio.args) knows that what follows are not
         * options either. -h/--help before it prints the script's help and runs nothing. */
        char **sargv = calloc((size_t)argc + 1, sizeof *sargv);
        int sargc = 0;
        bool flags_done = false, help = false;
        for (; i < argc; i++) {
            if (!flags_done && strcmp(argv[i], "--") == 0) {
                flags_done = true;
                sargv[sargc++] = argv[i];
            } else if (!flags_done &&
                       (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0))
                help = true;
            else if (flags_done || !parse_flag(argc, argv, &i))
                sargv[sargc++] = argv[i];
        }
        rt_log_configure((RtLogLevel)rt_host_global_flags.log_level, rt_host_global_flags.json);
        char *path = rt_host_find_script(name);
        if (!path) {
            free(sargv);
            RtError err;
            rt_error_init(&err);
            rt_error_set(&err, RT_CLASS_USAGE, "usage.no_script", "no script or runbook named '%s'",
                         name);
            rt_error_hint(&err,
                          "run `clubio-dr list` to see what exists, or give a path to a .lua file");
            return rt_report_error(&err);
        }
        if (help) {
            int rc = print_script_help(path);
            free(path);
            free(sargv);
            return rc;
        }
        lua_State *L = rt_host_new();
        if (!L) return 1;
        start_timeout();
        int rc = rt_host_run_script(L, path, sargc, sargv);
        lua_close(L);
        free(path);
        free(sargv);
        return rc;
    }
    usage_error("unknown command '%s'", cmd);
    return 2;
}
