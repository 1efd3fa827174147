/*
 * Progress display — see progress.h.
 */
#include "progress.h"
#include "flags.h"
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

char *rt_format_bytes(double bytes, char buf[32])
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, 32, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

void rt_progress_display_init(RtProgressDisplay *d, const char *label, int force)
{
    memset(d, 0, sizeof *d);
    snprintf(d->label, sizeof d->label, "%s", label ? label : "transfer");
    if (force >= 0)
        d->mode = force;
    else if (rt_host_flags()->json)
        d->mode = 2;
    else if (rt_host_flags()->progress && isatty(2))
        d->mode = 1;
}

void rt_progress_display_cb(void *ud, const RtProgress *p)
{
    RtProgressDisplay *d = ud;
    if (!d || d->mode == 0) return;
    double rate = p->elapsed > 0 ? p->bytes_in / p->elapsed : 0;
    if (d->mode == 2) {
        if (!p->final && p->elapsed - d->last_json < 5.0) return; /* one event per 5 s */
        d->last_json = p->elapsed;
        char fields[256];
        int n = snprintf(fields, sizeof fields,
                         "\"event\":\"progress\",\"label\":\"%s\",\"bytes_in\":%llu,"
                         "\"bytes_out\":%llu,\"rate\":%.0f,\"elapsed\":%.1f",
                         d->label, (unsigned long long)p->bytes_in,
                         (unsigned long long)p->bytes_out, rate, p->elapsed);
        if (p->total >= 0 && n > 0 && (size_t)n < sizeof fields)
            snprintf(fields + n, sizeof fields - (size_t)n, ",\"total\":%lld", (long long)p->total);
        rt_log_fields(RT_LOG_INFO, p->final ? "transfer done" : "transfer progress", fields);
        return;
    }
    char done[32], total[32], r[32];
    rt_format_bytes((double)p->bytes_in, done);
    rt_format_bytes(rate, r);
    char line[160];
    if (p->total > 0) {
        double frac = (double)p->bytes_in / (double)p->total;
        if (frac > 1) frac = 1;
        double eta = rate > 0 ? (p->total - (double)p->bytes_in) / rate : 0;
        rt_format_bytes((double)p->total, total);
        char bar[21];
        int fill = (int)(frac * 20);
        for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
        bar[20] = '\0';
        snprintf(line, sizeof line, "%s [%s] %3.0f%% %s/%s %s/s ETA %02d:%02d", d->label, bar,
                 frac * 100, done, total, r, (int)eta / 60, (int)eta % 60);
    } else {
        snprintf(line, sizeof line, "%s %s %s/s %.0fs", d->label, done, r, p->elapsed);
    }
    fprintf(stderr, "\r\033[K%s%s", line, p->final ? "\n" : "");
    fflush(stderr);
}
