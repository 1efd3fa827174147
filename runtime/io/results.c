/*
 * RtResults — see results.h. A node holds either a scalar or an ordered list of children;
 * lookups are linear, which is fine for the tens to thousands of entries a pipe reports.
 */
#include "results.h"

#include <stdlib.h>
#include <string.h>

struct RtResults {
    RtValueType type;
    char *key;
    union {
        int64_t i;
        double n;
        bool b;
        struct {
            char *s;
            size_t len;
        } str;
    } v;
    RtResults **items;
    size_t count, cap;
    RtResults *root; /* for the failure flag */
    bool failed;     /* only meaningful on the root */
};

static RtResults *node_new(RtResults *root, RtValueType type)
{
    RtResults *n = calloc(1, sizeof *n);
    if (!n) {
        if (root) root->failed = true;
        return NULL;
    }
    n->type = type;
    n->root = root ? root : n;
    return n;
}

RtResults *rt_results_new(void) { return node_new(NULL, RT_VALUE_TABLE); }

static void node_clear_value(RtResults *n)
{
    if (n->type == RT_VALUE_STR) free(n->v.str.s);
    for (size_t i = 0; i < n->count; i++) rt_results_free(n->items[i]);
    free(n->items);
    n->items = NULL;
    n->count = n->cap = 0;
}

void rt_results_free(RtResults *r)
{
    if (!r) return;
    node_clear_value(r);
    free(r->key);
    free(r);
}

bool rt_results_failed(const RtResults *root) { return !root || root->root->failed; }

static RtResults *find(const RtResults *t, const char *key)
{
    if (!t || !key) return NULL;
    for (size_t i = 0; i < t->count; i++)
        if (t->items[i]->key && strcmp(t->items[i]->key, key) == 0) return t->items[i];
    return NULL;
}

/* Returns the slot for key (existing, reset to `type`) or a new appended node. */
static RtResults *slot(RtResults *t, const char *key, RtValueType type)
{
    if (!t || (t->type != RT_VALUE_TABLE && t->type != RT_VALUE_ARRAY)) return NULL;
    RtResults *n = key ? find(t, key) : NULL;
    if (n) {
        if (n->type != type) {
            node_clear_value(n);
            n->type = type;
        }
        return n;
    }
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        RtResults **items = realloc(t->items, cap * sizeof *items);
        if (!items) {
            t->root->failed = true;
            return NULL;
        }
        t->items = items;
        t->cap = cap;
    }
    n = node_new(t->root, type);
    if (!n) return NULL;
    if (key && t->type == RT_VALUE_TABLE) {
        n->key = strdup(key);
        if (!n->key) {
            t->root->failed = true;
            free(n);
            return NULL;
        }
    }
    t->items[t->count++] = n;
    return n;
}

void rt_results_int(RtResults *t, const char *key, int64_t v)
{
    RtResults *n = slot(t, key, RT_VALUE_INT);
    if (n) n->v.i = v;
}

void rt_results_num(RtResults *t, const char *key, double v)
{
    RtResults *n = slot(t, key, RT_VALUE_NUM);
    if (n) n->v.n = v;
}

void rt_results_bool(RtResults *t, const char *key, bool v)
{
    RtResults *n = slot(t, key, RT_VALUE_BOOL);
    if (n) n->v.b = v;
}

void rt_results_strn(RtResults *t, const char *key, const char *v, size_t len)
{
    RtResults *n = slot(t, key, RT_VALUE_STR);
    if (!n) return;
    char *s = malloc(len + 1);
    if (!s) {
        n->root->failed = true;
        return;
    }
    memcpy(s, v, len);
    s[len] = '\0';
    free(n->v.str.s);
    n->v.str.s = s;
    n->v.str.len = len;
}

void rt_results_str(RtResults *t, const char *key, const char *v)
{
    rt_results_strn(t, key, v ? v : "", v ? strlen(v) : 0);
}

RtResults *rt_results_table(RtResults *t, const char *key)
{
    RtResults *n = key ? find(t, key) : NULL;
    if (n && n->type == RT_VALUE_TABLE) return n;
    return slot(t, key, RT_VALUE_TABLE);
}

RtResults *rt_results_array(RtResults *t, const char *key)
{
    RtResults *n = key ? find(t, key) : NULL;
    if (n && n->type == RT_VALUE_ARRAY) return n;
    return slot(t, key, RT_VALUE_ARRAY);
}

size_t rt_results_count(const RtResults *t) { return t ? t->count : 0; }

const RtResults *rt_results_at(const RtResults *t, size_t i, const char **key, RtValueType *type)
{
    if (!t || i >= t->count) return NULL;
    if (key) *key = t->items[i]->key;
    if (type) *type = t->items[i]->type;
    return t->items[i];
}

const RtResults *rt_results_get(const RtResults *t, const char *key) { return find(t, key); }
RtValueType rt_results_type(const RtResults *v) { return v->type; }
int64_t rt_results_as_int(const RtResults *v)
{
    return v->type == RT_VALUE_INT ? v->v.i : v->type == RT_VALUE_NUM ? (int64_t)v->v.n : 0;
}
double rt_results_as_num(const RtResults *v)
{
    return v->type == RT_VALUE_NUM ? v->v.n : v->type == RT_VALUE_INT ? (double)v->v.i : 0;
}
const char *rt_results_as_str(const RtResults *v, size_t *len)
{
    if (v->type != RT_VALUE_STR) return NULL;
    if (len) *len = v->v.str.len;
    return v->v.str.s;
}
bool rt_results_as_bool(const RtResults *v) { return v->type == RT_VALUE_BOOL && v->v.b; }
