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
    const unsigned char *p = s;
    size_t ascii = 0;
    while (ascii < len && p[ascii] < 0x80)
        ascii++;
    if (ascii == len) { /* nothing to repair: keys, numbers' names, most text */
        put_quoted(b, s, len);
        return;
    }
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

/* v in decimal into out (24 bytes); returns the length. */
static size_t format_int(long long v, char *out)
{
    char tmp[24];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

void jw_int(jw *w, long long v)
{
    char s[24];
    size_t n = format_int(v, s);
    before_value(w);
    buf_put(w->b, s, n);
}

/* Powers of ten as doubles (exact up to 1e22; the rest correctly rounded literals). */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10,
                               1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21,
                               1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30};

/* x's first P significant digits and decimal exponent (x ~ digits * 10^(e - P + 1)),
 * computed in double arithmetic: the digits can differ from printf's exact ones
 * only for a value within about 1e-16 of a rounding tie.  Returns false when x
 * is outside [1e-20, 1e20) in magnitude. */
static bool decimal_digits(float x, int P, unsigned long long *digits, int *exp10)
{
    double v = fabs((double)x);
    if (!(v >= 1e-20 && v < 1e20))
        return false;
    int e = (int)floor(log10(v));
    unsigned long long d = 0;
    for (int tries = 0; tries < 3; tries++) {
        int s = P - 1 - e; /* within [-20, 29] */
        d = (unsigned long long)llrint(s >= 0 ? v * POW10[s] : v / POW10[-s]);
        if (d >= (unsigned long long)POW10[P])
            e++;
        else if (d < (unsigned long long)POW10[P - 1])
            e--;
        else
            break;
    }
    *digits = d;
    *exp10 = e;
    return true;
}

/* Whether the decimal digits * 10^(e - P + 1) reads back as x: 1 yes, 0 no,
 * -1 too close to the middle between x and a neighbour to tell in double. */
static int reads_back(float x, unsigned long long digits, int e, int P)
{
    int k = e - P + 1;
    double back = (double)digits;
    back = k >= 0 ? back * POW10[k] : back / POW10[-k]; /* within a few units of double rounding */
    double v = fabs((double)x), margin = v * 0x1p-48;
    /* The floats next to |x| and the midpoints between (exact in double). */
    float ax = fabsf(x);
    double lo = (v + (double)nextafterf(ax, 0.0f)) / 2, hi = (v + (double)nextafterf(ax, INFINITY)) / 2;
    if (back > lo + margin && back < hi - margin)
        return 1;
    if (back < lo - margin || back > hi + margin)
        return 0;
    return -1;
}

/* x as printf's "%.{P}g" prints it, from digits of decimal_digits. */
static size_t render_g(float x, unsigned long long digits, int e, int P, char *out)
{
    char d[16];
    for (int i = P - 1; i >= 0; i--, digits /= 10)
        d[i] = (char)('0' + digits % 10);
    int nd = P; /* significant digits once trailing zeros go, as %g drops them */
    while (nd > 1 && d[nd - 1] == '0')
        nd--;
    size_t n = 0;
    if (x < 0)
        out[n++] = '-';
    if (e < -4 || e >= P) {
        out[n++] = d[0];
        if (nd > 1) {
            out[n++] = '.';
            memcpy(out + n, d + 1, (size_t)nd - 1);
            n += (size_t)nd - 1;
        }
        out[n++] = 'e';
        out[n++] = e < 0 ? '-' : '+';
        int ae = e < 0 ? -e : e;
        out[n++] = (char)('0' + ae / 10);
        out[n++] = (char)('0' + ae % 10);
    } else if (e >= 0) {
        memcpy(out + n, d, (size_t)e + 1);
        n += (size_t)e + 1;
        if (nd > e + 1) {
            out[n++] = '.';
            memcpy(out + n, d + e + 1, (size_t)(nd - e - 1));
            n += (size_t)(nd - e - 1);
        }
    } else {
        out[n++] = '0';
        out[n++] = '.';
        for (int i = 0; i < -e - 1; i++)
            out[n++] = '0';
        memcpy(out + n, d, (size_t)nd);
        n += (size_t)nd;
    }
    out[n] = '\0';
    return n;
}

size_t jw_format_float(float x, char *out)
{
    if (!isfinite(x)) {
        memcpy(out, "null", 5);
        return 4;
    }
    /* Seven significant digits when they are enough to read back as x, else nine (always enough). */
    for (int P = 7; P <= 9; P += 2) {
        unsigned long long digits;
        int e;
        if (!decimal_digits(x, P, &digits, &e))
            break;
        int ok = reads_back(x, digits, e, P);
        size_t n = ok != 0 ? render_g(x, digits, e, P, out) : 0;
        if (ok == 1 || (ok < 0 && strtof(out, NULL) == x))
            return n;
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

void jw_raw_members(jw *w, const char *json, size_t len)
{
    if (w->has_item[w->depth])
        buf_putc(w->b, ',');
    w->has_item[w->depth] = true;
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
