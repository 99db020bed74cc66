/* jw.h -- a JSON writer that appends straight to a buffer.
 *
 * Answers are written as they are produced, with no tree of the whole answer
 * in memory: an answer costs its own bytes and nothing else.  The writer
 * places commas and colons itself; the caller only opens, closes and writes
 * values.  Strings are arbitrary bytes: ill-formed UTF-8 is repaired to
 * U+FFFD (as Python's decode(errors="replace")), and control characters,
 * NUL included, are escaped.  Floats are the shortest decimal that reads back
 * as the same float; NaN and infinities, which JSON cannot carry, are null.
 * Out of memory is the buffer's oom flag, checked once at the end.
 */
#ifndef ATTNLM_JW_H
#define ATTNLM_JW_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

#define JW_MAX_DEPTH 32

/* Writer state: the buffer and, per open container, whether it holds an item. */
typedef struct jw {
    buf *b;
    int depth;
    bool has_item[JW_MAX_DEPTH + 1];
    bool after_key; /* a key was written: the next value takes no comma */
} jw;

void jw_init(jw *w, buf *b);

void jw_obj(jw *w);
void jw_obj_end(jw *w);
void jw_arr(jw *w);
void jw_arr_end(jw *w);
/* An object key; the value follows with the next call. */
void jw_key(jw *w, const char *key);

void jw_str(jw *w, const char *s);
void jw_bytes(jw *w, const void *s, size_t len);
void jw_int(jw *w, long long v);
void jw_float(jw *w, float x);
void jw_double(jw *w, double x);
void jw_bool(jw *w, bool v);
void jw_null(jw *w);
/* A value that is already JSON text. */
void jw_raw(jw *w, const char *json, size_t len);
/* Members of the open object that are already JSON text ("key":value,...). */
void jw_raw_members(jw *w, const char *json, size_t len);

/* Key and value in one call. */
void jw_kstr(jw *w, const char *key, const char *s);
void jw_kint(jw *w, const char *key, long long v);
void jw_kfloat(jw *w, const char *key, float x);
void jw_kdouble(jw *w, const char *key, double x);
void jw_kbool(jw *w, const char *key, bool v);
void jw_knull(jw *w, const char *key);
/* Opens an object or array under a key. */
void jw_kobj(jw *w, const char *key);
void jw_karr(jw *w, const char *key);

/* The shortest decimal of x that reads back as x ("null" if not finite);
 * out needs 32 bytes.  Returns the length. */
size_t jw_format_float(float x, char *out);

#endif
