/*
 * RtResults — what a pipe stage reports when the pipe has finished (sizes, digests, row counts).
 *
 * A small tree of named values built in C without Lua; the Lua binding turns it into a table.
 * A node is a table (string keys) or an array (1-based, values appended). Keys and strings are
 * copied. Allocation failures are remembered and reported once by rt_results_failed(), so
 * stages can fill results without checking every call.
 *
 *     RtResults *t = rt_results_table(res, "users");     -- res.users = {}
 *     rt_results_int(t, "rows", 1200);                   -- res.users.rows = 1200
 *     rt_results_str(t, "sha256", hex);
 */
#ifndef RT_IO_RESULTS_H
#define RT_IO_RESULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct RtResults RtResults;

typedef enum RtValueType {
    RT_VALUE_INT,
    RT_VALUE_NUM,
    RT_VALUE_STR,
    RT_VALUE_BOOL,
    RT_VALUE_TABLE,
    RT_VALUE_ARRAY
} RtValueType;

RtResults *rt_results_new(void); /* a root table; NULL on ENOMEM */
void rt_results_free(RtResults *r);
bool rt_results_failed(const RtResults *root);

/* Setters on a table node (key != NULL) or appends to an array node (key == NULL).
 * Setting an existing key replaces its value. */
void rt_results_int(RtResults *t, const char *key, int64_t v);
void rt_results_num(RtResults *t, const char *key, double v);
void rt_results_str(RtResults *t, const char *key, const char *v);
void rt_results_strn(RtResults *t, const char *key, const char *v, size_t len);
void rt_results_bool(RtResults *t, const char *key, bool v);
/* Returns the child table/array under key, creating it (or returning the existing one). */
RtResults *rt_results_table(RtResults *t, const char *key);
RtResults *rt_results_array(RtResults *t, const char *key);

/* Reading, for bindings and tests. */
size_t rt_results_count(const RtResults *t);
const RtResults *rt_results_at(const RtResults *t, size_t i, const char **key, RtValueType *type);
const RtResults *rt_results_get(const RtResults *t, const char *key); /* NULL if absent */
RtValueType rt_results_type(const RtResults *v);
int64_t rt_results_as_int(const RtResults *v);
double rt_results_as_num(const RtResults *v);
const char *rt_results_as_str(const RtResults *v, size_t *len);
bool rt_results_as_bool(const RtResults *v);

#endif
