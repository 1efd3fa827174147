/*
 * The host flags: what the command line sets for the whole run (--dry-run, --yes, --json,
 * --no-progress, --log-level, --timeout). No Lua here, so C cores (progress.c) and the
 * Lua-free commands (crypto_cli.c) read them without reaching lua.h.
 *
 * The command-line parsers (main.c, crypto_cli.c) write rt_host_global_flags; everything else
 * reads them through rt_host_flags().
 */
#ifndef RT_FLAGS_H
#define RT_FLAGS_H

#include <stdbool.h>

typedef struct RtHostFlags {
    bool dry_run, yes, json, progress;
    int log_level; /* see log.h */
    double timeout;
} RtHostFlags;

extern RtHostFlags rt_host_global_flags;
const RtHostFlags *rt_host_flags(void);

#endif
