/*
 * Timestamps, in one place: ISO 8601 parsing and formatting (UTC), YYYYMMDD dates, and HTTP
 * dates (through libcurl's curl_getdate). Seconds since the epoch as a double throughout. No
 * Lua here; the `time` module (std_lua.c) and the protocol code (s3, http, neon) use it.
 */
#ifndef RT_TIMESTAMP_H
#define RT_TIMESTAMP_H

#include <stdbool.h>

/* The wall clock: seconds since the epoch. */
double rt_now(void);
/* The one monotonic clock (CLOCK_MONOTONIC), in seconds: for durations, deadlines and intervals. */
double rt_monotonic(void);

/* Parses ISO 8601: YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|(+|-)HH[:]MM]. No zone means UTC.
 * Returns false with a one-line reason in *why (static storage). */
bool rt_parse_iso8601(const char *s, double *out, const char **why);
/* The same for protocol fields (S3 LastModified, credential Expiration): 0 when s is NULL or
 * not a timestamp. */
double rt_iso8601_epoch(const char *s);
/* Parses YYYYMMDD (UTC midnight). Returns false with a reason in *why. */
bool rt_parse_ymd(const char *s, double *out, const char **why);
/* Formats a UTC timestamp "YYYY-MM-DDTHH:MM:SSZ" (or with .mmm if millis) into buf[32]. */
char *rt_iso8601(double epoch, bool millis, char buf[32]);
/* An HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT", or the RFC 850 and asctime forms), through
 * curl_getdate; 0 if unparseable. */
double rt_http_parse_date(const char *s);

#endif
