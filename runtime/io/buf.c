/* RtBuf — see buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int rt_buf_alloc(RtBuf *b, size_t size)
{
    b->data = malloc(size ? size : 1);
    b->size = b->data ? size : 0;
    b->used = b->pos = 0;
    return b->data ? 0 : -1;
}

void rt_buf_free(RtBuf *b)
{
    free(b->data);
    b->data = NULL;
    b->size = b->used = b->pos = 0;
}

size_t rt_buf_put(RtBuf *b, const void *src, size_t len)
{
    size_t n = rt_buf_space(b);
    if (n > len) n = len;
    if (n) memcpy(b->data + b->used, src, n);
    b->used += n;
    return n;
}

void rt_buf_compact(RtBuf *b)
{
    if (b->pos == 0) return;
    size_t n = rt_buf_remain(b);
    if (n) memmove(b->data, b->data + b->pos, n);
    b->used = n;
    b->pos = 0;
}
