/*
 * RtBuf — a byte buffer with a read cursor.
 *
 * `data[0 .. used)` holds bytes; `data[pos .. used)` are the bytes not yet consumed. Producers
 * append at `used` up to `size`; consumers advance `pos`. The buffer never grows by itself:
 * memory in the byte path is bounded by the buffers the pipe allocates up front.
 */
#ifndef RT_IO_BUF_H
#define RT_IO_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct RtBuf {
    uint8_t *data;
    size_t size; /* capacity */
    size_t used; /* bytes written */
    size_t pos;  /* bytes consumed */
} RtBuf;

static inline size_t rt_buf_remain(const RtBuf *b) { return b->used - b->pos; }      /* unread */
static inline size_t rt_buf_space(const RtBuf *b) { return b->size - b->used; }      /* writable */
static inline uint8_t *rt_buf_rptr(const RtBuf *b) { return b->data + b->pos; }
static inline uint8_t *rt_buf_wptr(const RtBuf *b) { return b->data + b->used; }
static inline void rt_buf_reset(RtBuf *b) { b->used = b->pos = 0; }

/* Allocates a buffer of `size` bytes; returns 0 or -1 (ENOMEM). */
int rt_buf_alloc(RtBuf *b, size_t size);
void rt_buf_free(RtBuf *b);
/* Copies as much of src[0..len) as fits; returns the number of bytes copied. */
size_t rt_buf_put(RtBuf *b, const void *src, size_t len);
/* Moves the unread bytes to the front, making room at the end. */
void rt_buf_compact(RtBuf *b);

#endif
