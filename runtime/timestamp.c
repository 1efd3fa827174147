/*
 * Timestamps — see timestamp.h.
 */
#include "timestamp.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}
static int days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && leap(y) ? 29 : d[m - 1];
}

/* The value of n decimal digits at s, or -1 if one of them is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

bool rt_parse_iso8601(const char *s, double *out, const char **why)
{
    size_t n = strlen(s);
    int Y, M, D, h = 0, mi = 0, sec = 0;
    double frac = 0;
    long off = 0;
    if (n < 10 || s[4] != '-' || s[7] != '-' || (Y = digits(s, 4)) < 0 ||
        (M = digits(s + 5, 2)) < 0 || (D = digits(s + 8, 2)) < 0) {
        *why = "expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ";
        return false;
    }
    const char *p = s + 10;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (strlen(p) < 5 || p[2] != ':' || (h = digits(p, 2)) < 0 || (mi = digits(p + 3, 2)) < 0) {
            *why = "expected a time as HH:MM or HH:MM:SS";
            return false;
        }
        p += 5;
        if (*p == ':') {
            if ((sec = digits(p + 1, 2)) < 0) {
                *why = "expected seconds as SS";
                return false;
            }
            p += 3;
            if (*p == '.' || *p == ',') {
                p++;
                double scale = 0.1;
                if (*p < '0' || *p > '9') {
                    *why = "expected digits after the decimal point";
                    return false;
                }
                while (*p >= '0' && *p <= '9') {
                    frac += (*p - '0') * scale;
                    scale /= 10;
                    p++;
                }
            }
        }
        if (*p == 'Z' || *p == 'z')
            p++;
        else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1;
            int oh = digits(p + 1, 2), om;
            const char *q = p + 3;
            if (oh >= 0 && *q == ':') q++;
            om = oh >= 0 ? digits(q, 2) : -1;
            if (oh < 0 || om < 0 || oh > 14 || om > 59) {
                *why = "bad UTC offset (expected +HH:MM)";
                return false;
            }
            off = sign * (oh * 3600L + om * 60L);
            p = q + 2;
        }
    }
    if (*p) {
        *why = "unexpected text after the timestamp";
        return false;
    }
    if (M < 1 || M > 12 || D < 1 || D > days_in_month(Y, M) || h > 23 || mi > 59 || sec > 60) {
        *why = "date or time out of range";
        return false;
    }
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    *out = (double)timegm(&tm) - (double)off + frac;
    return true;
}

double rt_iso8601_epoch(const char *s)
{
    double t;
    const char *why;
    return s && rt_parse_iso8601(s, &t, &why) ? t : 0;
}

bool rt_parse_ymd(const char *s, double *out, const char **why)
{
    if (strlen(s) != 8 || digits(s, 8) < 0) {
        *why = "expected YYYYMMDD";
        return false;
    }
    char iso[16];
    snprintf(iso, sizeof iso, "%.4s-%.2s-%.2s", s, s + 4, s + 6);
    return rt_parse_iso8601(iso, out, why);
}

char *rt_iso8601(double epoch, bool millis, char buf[32])
{
    time_t t = (time_t)epoch;
    if ((double)t > epoch) t--; /* floor for negative fractions */
    struct tm tm;
    gmtime_r(&t, &tm);
    if (millis) {
        /* floor to the millisecond, with half a microsecond of slack: a time given as
         * ".606" is stored as .60599999… in a double and must print as .606 again */
        int ms = (int)((epoch - (double)t) * 1000 + 5e-4);
        if (ms > 999) ms = 999;
        snprintf(buf, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    } else {
        strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    return buf;
}

double rt_http_parse_date(const char *s)
{
    time_t t = s ? curl_getdate(s, NULL) : -1;
    return t < 0 ? 0 : (double)t;
}

double rt_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

double rt_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
