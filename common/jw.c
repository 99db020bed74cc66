/* jw.c -- see jw.h. */
#define _POSIX_C_SOURCE 200809L
#include "jw.h"

#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jw_init(jw *w, buf *b) { *w = (jw){.b = b}; }

/* The separator a value needs before it: a comma after an earlier item, none after a key. */
static void before_value(jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->has_item[w->depth])
        buf_putc(w->b, ',');
    w->has_item[w->depth] = true;
}

static void start(jw *w, char c)
{
    before_value(w);
    buf_putc(w->b, c);
    if (w->depth < JW_MAX_DEPTH)
        w->depth++;
    else
        w->b->oom = true; /* deeper than any answer here: refuse rather than misplace commas */
    w->has_item[w->depth] = false;
}

static void finish(jw *w, char c)
{
    buf_putc(w->b, c);
    if (w->depth > 0)
        w->depth--;
}

void jw_obj(jw *w) { start(w, '{'); }
void jw_obj_end(jw *w) { finish(w, '}'); }
void jw_arr(jw *w) { start(w, '['); }
void jw_arr_end(jw *w) { finish(w, ']'); }

/* Appends s[len] (valid UTF-8) quoted, escaping what JSON requires. */
static void put_quoted(buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (!buf_reserve(b, len + 2))
        return;
    buf_putc(b, '"');
    size_t run = 0; /* bytes copied as they are, flushed before each escape */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_put(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        buf_put(b, esc, n);
    }
    buf_put(b, s + run, len - run);
    buf_putc(b, '"');
}

/* Repairs s[len] to valid UTF-8 (on the stack when small) and quotes it. */
static void put_string(buf *b, const void *s, size_t len)
{
    char small[3 * 256];
    char *clean = len <= 256 ? small : malloc(3 * len);
    if (!clean) {
        b->oom = true;
        return;
    }
    size_t n = utf8_sanitize(s, len, clean);
    put_quoted(b, clean, n);
    if (clean != small)
        free(clean);
}

void jw_key(jw *w, const char *key)
{
    before_value(w);
    put_string(w->b, key, strlen(key));
    buf_putc(w->b, ':');
    w->after_key = true;
}

void jw_str(jw *w, const char *s) { jw_bytes(w, s, strlen(s)); }

void jw_bytes(jw *w, const void *s, size_t len)
{
    before_value(w);
    put_string(w->b, s, len);
}

void jw_int(jw *w, long long v)
{
    before_value(w);
    buf_printf(w->b, "%lld", v);
}

size_t jw_format_float(float x, char *out)
{
    if (!isfinite(x)) {
        memcpy(out, "null", 5);
        return 4;
    }
    int n = snprintf(out, 32, "%.7g", (double)x);
    if (strtof(out, NULL) != x)
        n = snprintf(out, 32, "%.9g", (double)x);
    return (size_t)n;
}

void jw_float(jw *w, float x)
{
    char s[32];
    size_t n = jw_format_float(x, s);
    before_value(w);
    buf_put(w->b, s, n);
}

void jw_double(jw *w, double x)
{
    before_value(w);
    if (!isfinite(x)) {
        buf_puts(w->b, "null");
        return;
    }
    if (x == floor(x) && fabs(x) < 1e15) {
        buf_printf(w->b, "%.0f", x);
        return;
    }
    char s[32];
    snprintf(s, sizeof s, "%.15g", x);
    if (strtod(s, NULL) != x)
        snprintf(s, sizeof s, "%.17g", x);
    buf_puts(w->b, s);
}

void jw_bool(jw *w, bool v)
{
    before_value(w);
    buf_puts(w->b, v ? "true" : "false");
}

void jw_null(jw *w)
{
    before_value(w);
    buf_puts(w->b, "null");
}

void jw_raw(jw *w, const char *json, size_t len)
{
    before_value(w);
    buf_put(w->b, json, len);
}

void jw_kstr(jw *w, const char *key, const char *s)
{
    jw_key(w, key);
    jw_str(w, s);
}

void jw_kint(jw *w, const char *key, long long v)
{
    jw_key(w, key);
    jw_int(w, v);
}

void jw_kfloat(jw *w, const char *key, float x)
{
    jw_key(w, key);
    jw_float(w, x);
}

void jw_kdouble(jw *w, const char *key, double x)
{
    jw_key(w, key);
    jw_double(w, x);
}

void jw_kbool(jw *w, const char *key, bool v)
{
    jw_key(w, key);
    jw_bool(w, v);
}

void jw_knull(jw *w, const char *key)
{
    jw_key(w, key);
    jw_null(w);
}

void jw_kobj(jw *w, const char *key)
{
    jw_key(w, key);
    jw_obj(w);
}

void jw_karr(jw *w, const char *key)
{
    jw_key(w, key);
    jw_arr(w);
}
