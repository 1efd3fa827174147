/*
 * The verification history's local file: one record per line, appended with a single write(2)
 * on an O_APPEND descriptor, so that concurrent writers on one machine (a scheduled restore test
 * and an on-call engineer's verify-export) interleave whole lines, never pieces of them. stdio
 * would split a long line into buffer-sized writes.
 */
#ifndef VERIFY_HISTORY_H
#define VERIFY_HISTORY_H

#include "io/error.h"

#include <stddef.h>

/* Appends len bytes (one line, "\n" included) to path, creating the file (mode 0640) and its
 * missing parent folders (0750). */
int verify_append_line(const char *path, const char *line, size_t len, RtError *err);

#endif
