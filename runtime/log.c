/*
 * Logging — see log.h. One lock around the write so lines from pipe threads never interleave.
 */
#include "log.h"
#include "json.h"
#include "redact.h"
#include "timestamp.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static RtLogLevel g_level = RT_LOG_INFO;
static bool g_json;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

void rt_log_configure(RtLogLevel level, bool json)
{
    g_level = level;
    g_json = json;
}
RtLogLevel rt_log_level(void)
{
    return g_level;
}
bool rt_log_json(void)
{
    return g_json;
}

static const char *const NAMES[] = {"debug", "info", "warn", "error", "off"};

int rt_log_level_parse(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (strcasecmp(name, NAMES[i]) == 0) return i;
    if (strcasecmp(name, "warning") == 0) return RT_LOG_WARN;
    return -1;
}

const char *rt_log_level_name(RtLogLevel level)
{
    return level >= RT_LOG_DEBUG && level <= RT_LOG_OFF ? NAMES[level] : "info";
}

/* Prints JSON fields ("a":1,"b":"x") as a=1 b=x for humans. */
static void print_fields_human(FILE *f, const char *fields)
{
    bool in_str = false, key = true;
    fputc(' ', f);
    for (const char *p = fields; *p; p++) {
        if (*p == '\\' && in_str && p[1]) {
            fputc(p[1] == 'n' ? ' ' : p[1], f);
            p++;
            continue;
        }
        if (*p == '"') {
            in_str = !in_str;
            continue;
        }
        if (!in_str && *p == ':' && key) {
            fputc('=', f);
            key = false;
            continue;
        }
        if (!in_str && *p == ',') {
            fputc(' ', f);
            key = true;
            continue;
        }
        fputc(*p, f);
    }
}

void rt_log_fields(RtLogLevel level, const char *msg, const char *fields_json)
{
    if (level < g_level || level >= RT_LOG_OFF) return;
    char ts[32];
    rt_iso8601(rt_now(), g_json, ts);
    char *m = rt_redact_dup(msg);
    char *fj = fields_json && *fields_json ? rt_redact_dup(fields_json) : NULL;
    pthread_mutex_lock(&g_mu);
    if (g_json) {
        fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, NAMES[level]);
        rt_json_fescape(stderr, m);
        fputc('"', stderr);
        if (fj) fprintf(stderr, ",%s", fj);
        fputs("}\n", stderr);
    } else {
        fprintf(stderr, "%s %-5s %s", ts, NAMES[level], m ? m : "");
        if (fj) print_fields_human(stderr, fj);
        fputc('\n', stderr);
    }
    fflush(stderr);
    pthread_mutex_unlock(&g_mu);
    free(m);
    free(fj);
}

void rt_log(RtLogLevel level, const char *fmt, ...)
{
    if (level < g_level) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rt_log_fields(level, buf, NULL);
}
