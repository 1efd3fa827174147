/*
 * Progress of long transfers: a one-line bar on stderr when stderr is a TTY (bytes, rate, ETA
 * when the total is known), periodic JSON progress events with --json, nothing otherwise.
 *
 *     RtProgressDisplay d;
 *     rt_progress_display_init(&d, "export");
 *     opts.progress = rt_progress_display_cb; opts.progress_ud = &d;
 */
#ifndef RT_PROGRESS_H
#define RT_PROGRESS_H

#include "io/pipe.h"

typedef struct RtProgressDisplay {
    char label[64];
    int mode; /* 0 none, 1 tty bar, 2 json events */
    double last_json;
} RtProgressDisplay;

/* mode is chosen from the host flags (--json) and isatty(stderr); force < 0 means auto,
 * 0 none, 1 bar, 2 json. */
void rt_progress_display_init(RtProgressDisplay *d, const char *label, int force);
void rt_progress_display_cb(void *ud, const RtProgress *p);
/* "1.2 GiB", "512 B" */
char *rt_format_bytes(double bytes, char buf[32]);

#endif
