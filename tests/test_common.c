/* test_common.c -- the utilities every layer uses: the growable buffer, the
 * random number generator and the clock. */
#define _POSIX_C_SOURCE 200809L
#include "buf.h"
#include "clock.h"
#include "jw.h"
#include "opt.h"
#include "rng.h"

#include "check_main.h"

#include <check.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

START_TEST(test_buf_grows_and_formats)
{
    buf b = {0};
    ck_assert_str_eq(buf_cstr(&b), "");
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%d,", i);
    ck_assert(!b.oom);
    ck_assert_uint_eq(b.len, 3890); /* 10*2 + 90*3 + 900*4 */
    ck_assert(strncmp(b.p, "0,1,2,", 6) == 0);
    ck_assert(strncmp(b.p + b.len - 4, "999,", 4) == 0);
    /* A formatted piece longer than the stack buffer buf_printf tries first. */
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    buf_printf(&b, "[%s]", big);
    ck_assert_uint_eq(b.len, 3890 + 1001);
    ck_assert(b.p[b.len - 1] == ']' && b.p[3890] == '[');
    buf_consume(&b, 3890);
    ck_assert_uint_eq(b.len, 1001);
    ck_assert(b.p[0] == '[');
    buf_putc(&b, 'z');
    ck_assert_str_eq(buf_cstr(&b) + 1000, "]z");
    size_t n;
    char *p = buf_take(&b, &n);
    ck_assert_uint_eq(n, 1002);
    ck_assert_str_eq(p + 1000, "]z"); /* NUL-terminated */
    ck_assert_ptr_null(b.p);
    ck_assert_uint_eq(b.len, 0);
    free(p);
    buf_put(&b, "abc", 3);
    buf_consume(&b, 5);
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
    buf_free(&b); /* freeing an empty buffer is harmless */
}
END_TEST

START_TEST(test_rng_is_splitmix64)
{
    /* The reference sequence of splitmix64 from seed 0. */
    uint64_t s = 0;
    ck_assert(rng_next(&s) == 0xE220A8397B1DCDAFull);
    ck_assert(rng_next(&s) == 0x6E789E6AA1B965F4ull);
    ck_assert(rng_hash(0) == 0xE220A8397B1DCDAFull);
    uint64_t a = 42, b = 42;
    for (int i = 0; i < 1000; i++) {
        float u = rng_uniform(&a);
        ck_assert(u >= 0.0f && u < 1.0f);
        ck_assert(u == rng_uniform(&b));
    }
}
END_TEST

START_TEST(test_clock_moves_forward)
{
    int64_t t0 = clock_now_ns();
    nanosleep(&(struct timespec){0, 2000000}, NULL);
    int64_t t1 = clock_now_ns();
    ck_assert(t1 - t0 >= 2000000);
    ck_assert(clock_seconds(t0, t1) >= 0.002 && clock_seconds(t0, t1) < 10.0);
}
END_TEST

/* What jw_format_float must match: printf's seven digits when they read back, else nine. */
static void reference_float(float x, char *out)
{
    snprintf(out, 32, "%.7g", (double)x);
    if (strtof(out, NULL) != x)
        snprintf(out, 32, "%.9g", (double)x);
}

static void check_float(float x)
{
    char got[32], want[32];
    size_t n = jw_format_float(x, got);
    if (!isfinite(x)) {
        ck_assert_str_eq(got, "null");
        return;
    }
    reference_float(x, want);
    ck_assert_msg(strcmp(got, want) == 0, "%a: got %s, printf %s", (double)x, got, want);
    ck_assert_uint_eq(n, strlen(got));
}

/* The fast path is checked against printf over the floats answers carry
 * (log-probabilities, probabilities, attention weights) and over random bit
 * patterns, which reach every exponent and the fallbacks at the extremes. */
START_TEST(test_float_format_matches_printf)
{
    static const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1e-20f, 1e20f, 9.9999999e19f,
                                    1e-21f, 123456.7f, 1234567.0f, 12345678.0f, 1e-4f, 9.9999997e-5f,
                                    FLT_MIN, FLT_MAX, FLT_TRUE_MIN, 0.5f, 3.4e38f, -2.5e-8f,
                                    INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        check_float(special[i]);
    uint64_t r = 20261125;
    for (int i = 0; i < 50000; i++) {
        check_float(-20.0f * rng_uniform(&r));          /* a log-probability */
        check_float(rng_uniform(&r));                   /* a probability or weight */
        uint32_t bits = (uint32_t)rng_next(&r);
        float x;
        memcpy(&x, &bits, sizeof x);
        check_float(x);
    }
}
END_TEST

START_TEST(test_int_format_matches_printf)
{
    static const long long values[] = {0, 1, -1, 9, 10, -10, 257, 4095, 1000000, LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    uint64_t r = 7;
    for (int i = 0; i < 1000 + (int)(sizeof values / sizeof *values); i++) {
        long long v = i < (int)(sizeof values / sizeof *values) ? values[i] : (long long)rng_next(&r) >> (i % 60);
        buf b = {0};
        jw w;
        jw_init(&w, &b);
        jw_int(&w, v);
        char want[32];
        snprintf(want, sizeof want, "%lld", v);
        ck_assert(!b.oom);
        ck_assert_uint_eq(b.len, strlen(want));
        ck_assert(memcmp(b.p, want, b.len) == 0);
        buf_free(&b);
    }
}
END_TEST

START_TEST(test_opt_finds_and_bounds)
{
    static const opt_spec specs[] = {{"port", 0, 0, 0, 65535, ""}, {"port-file", 1, 0, -1.5, 2.5, ""}};
    ck_assert_ptr_eq(opt_find(specs, 2, "port-file=x", 9), &specs[1]);
    ck_assert_ptr_eq(opt_find(specs, 2, "port", 4), &specs[0]);
    ck_assert_ptr_null(opt_find(specs, 2, "por", 3));
    char err[128];
    long l = 7;
    ck_assert_int_eq(opt_long(&specs[0], "--port", "65535", &l, err, sizeof err), 0);
    ck_assert_int_eq(l, 65535);
    static const char *const bad_longs[] = {"65536", "-1", "", "12x", "1.0", " ", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_longs / sizeof *bad_longs; i++) {
        ck_assert_int_eq(opt_long(&specs[0], "--port", bad_longs[i], &l, err, sizeof err), -1);
        ck_assert_int_eq(l, 65535); /* a refused value changes nothing */
        ck_assert_str_eq(strstr(err, "--port must be an integer in [0, 65535]"), err);
    }
    double d = 0;
    ck_assert_int_eq(opt_double(&specs[1], "P", "-1.5", &d, err, sizeof err), 0);
    ck_assert(d == -1.5);
    static const char *const bad_doubles[] = {"2.6", "nan", "inf", "1e400", "", "1,5"};
    for (size_t i = 0; i < sizeof bad_doubles / sizeof *bad_doubles; i++) {
        ck_assert_int_eq(opt_double(&specs[1], "P", bad_doubles[i], &d, err, sizeof err), -1);
        ck_assert(d == -1.5);
        ck_assert_ptr_nonnull(strstr(err, "P must be a number in [-1.5, 2.5]"));
    }
}
END_TEST

int main(void) { return CHECK_MAIN("common", test_buf_grows_and_formats, test_rng_is_splitmix64, test_clock_moves_forward,
                                  test_float_format_matches_printf, test_int_format_matches_printf,
                                  test_opt_finds_and_bounds); }
