/* buf.h -- the growable byte buffer every layer uses (answers, stream bytes,
 * request bodies, the metrics text).
 *
 * Appending never fails loudly: on out of memory the buffer stops growing and
 * sets oom, so a writer can produce a whole answer and check once at the end.
 * Zero-initialised means empty.
 */
#ifndef ATTNLM_BUF_H
#define ATTNLM_BUF_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes p[0 .. len), room for cap; not NUL-terminated unless buf_cstr is used. */
typedef struct buf {
    char *p;
    size_t len, cap;
    bool oom; /* an append failed; the contents are incomplete */
} buf;

void buf_put(buf *b, const void *data, size_t len);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Makes room for n more bytes; false (and oom) if it cannot. */
bool buf_reserve(buf *b, size_t n);
/* Drops the first n bytes (those already consumed by a reader). */
void buf_consume(buf *b, size_t n);
/* A NUL-terminated view of the contents ("" if empty or on out of memory). */
const char *buf_cstr(buf *b);
/* Hands the bytes to the caller (who frees them) and leaves b empty.  A NUL
 * not counted in len follows them, so they also read as a string, unless
 * memory ran out. */
char *buf_take(buf *b, size_t *len);
void buf_free(buf *b);

#endif
