/*
 * A minimal C test harness: CHECK records a failure and goes on; TEST_MAIN runs the listed test
 * functions and prints "N passed, N failed" (the line CI reads), exiting 1 on any failure.
 *
 *   static void test_empty(void) { CHECK(f(0) == 0); CHECK_EQ_INT(g(), 3); }
 *   TEST_MAIN(test_empty, test_other)
 */
#ifndef TEST_HARNESS_H
#define TEST_HARNESS_H

#include <stdio.h>
#include <string.h>

static int th_checks_failed_in_test;
static int th_passed, th_failed;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
            th_checks_failed_in_test++;                                                        \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
    do {                                                                                       \
        long long th_a = (long long)(a), th_b = (long long)(b);                                \
        if (th_a != th_b) {                                                                    \
            fprintf(stderr, "  FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a,  \
                    #b, th_a, th_b);                                                           \
            th_checks_failed_in_test++;                                                        \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                     \
    do {                                                                                       \
        const char *th_a = (a), *th_b = (b);                                                   \
        if (!th_a || !th_b || strcmp(th_a, th_b) != 0) {                                       \
            fprintf(stderr, "  FAIL %s:%d: %s == %s (\"%s\" != \"%s\")\n", __FILE__, __LINE__,  \
                    #a, #b, th_a ? th_a : "(null)", th_b ? th_b : "(null)");                   \
            th_checks_failed_in_test++;                                                        \
        }                                                                                      \
    } while (0)

typedef void (*th_test_fn)(void);

static inline int th_run(const char *const *names, const th_test_fn *fns, int n)
{
    for (int i = 0; i < n; i++) {
        th_checks_failed_in_test = 0;
        fns[i]();
        if (th_checks_failed_in_test) {
            th_failed++;
            fprintf(stderr, "not ok %s\n", names[i]);
        } else {
            th_passed++;
            fprintf(stderr, "ok %s\n", names[i]);
        }
    }
    printf("%d passed, %d failed\n", th_passed, th_failed);
    return th_failed ? 1 : 0;
}

#define TH_STR2(...) #__VA_ARGS__
#define TEST_MAIN(...)                                                                         \
    int main(void)                                                                             \
    {                                                                                          \
        const th_test_fn fns[] = {__VA_ARGS__};                                                \
        char names_buf[4096];                                                                  \
        const char *names[sizeof fns / sizeof fns[0]];                                         \
        snprintf(names_buf, sizeof names_buf, "%s", TH_STR2(__VA_ARGS__));                     \
        int n = (int)(sizeof fns / sizeof fns[0]), k = 0;                                      \
        for (char *tok = strtok(names_buf, ", "); tok && k < n; tok = strtok(NULL, ", "))      \
            names[k++] = tok;                                                                  \
        while (k < n) names[k++] = "?";                                                        \
        return th_run(names, fns, n);                                                          \
    }

#endif
