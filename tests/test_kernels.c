/* test_kernels.c -- the vector kernels against double-precision references,
 * for every kernel table this CPU runs: the few-row product at every M, with
 * remainders and row strides, the cell updates on awkward widths, and the
 * vector activations against the scalar ones and libm. */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"
#include "vecmath.h"

#include "check_main.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((int)((*s >> 8) % 2001) - 1000) / 1000.0f;
}

/* The tables this CPU runs; each test loops over them. */
static const kern_ops *TABLES[3];
static int n_tables;

static void find_tables(void)
{
    const kern_ops *all[] = {&kern_ops_generic,
#if defined(__x86_64__)
                             &kern_ops_avx2, &kern_ops_avx512
#endif
    };
    n_tables = 0;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (kern_runs(all[i]))
            TABLES[n_tables++] = all[i];
}

START_TEST(test_gemm_small_matches_reference)
{
    const int Ks[] = {1, 7, 15, 16, 17, 31, 40, 64, 100};
    double worst = 0.0;
    find_tables();
    ck_assert_int_ge(n_tables, 1);
    for (int ti = 0; ti < n_tables; ti++)
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
        for (int M = 2; M <= KERN_SMALL_M; M++) {
            const int K = Ks[ki], N = 37, ldi = K + 3, ldw = K + 5, ldo = N + 2;
            unsigned s = (unsigned)(K * 131 + M);
            float *in = malloc(sizeof *in * (size_t)(M * ldi)), *w = malloc(sizeof *w * (size_t)(N * ldw));
            float *out = malloc(sizeof *out * (size_t)(M * ldo));
            for (int i = 0; i < M * ldi; i++)
                in[i] = frand(&s);
            for (int i = 0; i < N * ldw; i++)
                w[i] = frand(&s);
            for (int i = 0; i < M * ldo; i++)
                out[i] = 0.5f;
            TABLES[ti]->gemm_small(out, ldo, in, ldi, w, ldw, M, N, K);
            for (int r = 0; r < M; r++) {
                for (int j = 0; j < N; j++) {
                    double ref = 0.5, mag = 0.5;
                    for (int k = 0; k < K; k++) {
                        ref += (double)in[r * ldi + k] * w[j * ldw + k];
                        mag += fabs((double)in[r * ldi + k] * w[j * ldw + k]);
                    }
                    double e = fabs(out[r * ldo + j] - ref) / mag;
                    worst = fmax(worst, e);
                    ck_assert_msg(e < 1e-6, "%s K=%d M=%d row %d col %d: %g, want %g", TABLES[ti]->name, K, M, r, j,
                                  out[r * ldo + j], ref);
                }
                for (int j = N; j < ldo; j++)
                    ck_assert_msg(out[r * ldo + j] == 0.5f, "wrote past column %d", N);
            }
            free(in);
            free(w);
            free(out);
        }
    ck_assert(worst > 0.0); /* the reference is not trivially equal */
}
END_TEST

/* A row's result is the same in a product of 2 or of 8 rows. */
START_TEST(test_gemm_small_rows_independent)
{
    enum { K = 40, N = 19 };
    unsigned s = 7;
    float in[8 * K], w[N * K], a[8 * N] = {0}, b[8 * N] = {0};
    for (int i = 0; i < 8 * K; i++)
        in[i] = frand(&s);
    for (int i = 0; i < N * K; i++)
        w[i] = frand(&s);
    find_tables();
    for (int ti = 0; ti < n_tables; ti++) {
        for (int i = 0; i < 8 * N; i++)
            a[i] = b[i] = 0.0f;
        TABLES[ti]->gemm_small(a, N, in, K, w, K, 2, N, K);
        TABLES[ti]->gemm_small(b, N, in, K, w, K, 8, N, K);
        ck_assert_mem_eq(a, b, sizeof(float) * 2 * N);
    }
}
END_TEST

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Each cell's update against the formulas in double precision, on widths
 * below, at and around the 16-unit vector width. */
START_TEST(test_cell_update)
{
    const int Hs[] = {1, 15, 16, 17, 40};
    find_tables();
    for (int ti = 0; ti < n_tables; ti++)
        for (int cell = 0; cell < 3; cell++)
            for (size_t hi = 0; hi < sizeof Hs / sizeof *Hs; hi++) {
                const int H = Hs[hi], G = cell == 0 ? 1 : cell == 1 ? 3 : 4;
                unsigned s = (unsigned)(H * 7 + cell);
                float gi[4 * 40], gh[4 * 40], h[40], c[40], h0[40], c0[40];
                for (int i = 0; i < G * H; i++) {
                    gi[i] = 3.0f * frand(&s);
                    gh[i] = 3.0f * frand(&s);
                }
                for (int j = 0; j < H; j++) {
                    h[j] = h0[j] = frand(&s);
                    c[j] = c0[j] = 2.0f * frand(&s);
                }
                TABLES[ti]->cell_update(cell, H, gi, gh, h, cell == 2 ? c : NULL);
                for (int j = 0; j < H; j++) {
                    double want, want_c = 0.0;
                    if (cell == 0) {
                        want = tanh((double)gi[j] + gh[j]);
                    } else if (cell == 1) {
                        double r = sigm((double)gi[j] + gh[j]), z = sigm((double)gi[H + j] + gh[H + j]);
                        double n = tanh(gi[2 * H + j] + r * gh[2 * H + j]);
                        want = (1.0 - z) * n + z * h0[j];
                    } else {
                        double i = sigm((double)gi[j] + gh[j]), f = sigm((double)gi[H + j] + gh[H + j]);
                        double g = tanh((double)gi[2 * H + j] + gh[2 * H + j]);
                        double o = sigm((double)gi[3 * H + j] + gh[3 * H + j]);
                        want_c = f * c0[j] + i * g;
                        want = o * tanh(want_c);
                        ck_assert_msg(fabs(c[j] - want_c) < 1e-6, "%s lstm H=%d c[%d] = %g, want %g",
                                      TABLES[ti]->name, H, j, c[j], want_c);
                    }
                    ck_assert_msg(fabs(h[j] - want) < 1e-6, "%s cell %d H=%d h[%d] = %g, want %g", TABLES[ti]->name,
                                  cell, H, j, h[j], want);
                }
            }
}
END_TEST

START_TEST(test_activations)
{
    float xs[32];
    for (int i = 0; i < 32; i++)
        xs[i] = -20.0f + 40.0f * (float)i / 31.0f;
    xs[0] = -200.0f;
    xs[31] = 200.0f;
    for (int b = 0; b < 32; b += 16) {
        v16 x = v16_load(xs + b), e = v16_exp(x), sg = v16_sigmoid(x), th = v16_tanh(x);
        for (int l = 0; l < 16; l++) {
            float v = xs[b + l];
            double want = exp(fmax(fmin(v, 88.0), -87.0));
            ck_assert_msg(fabs(e[l] - want) <= 1e-6 * want, "exp(%g) = %g, want %g", v, e[l], want);
            ck_assert_msg(fabs(e[l] - fast_expf(v)) <= 1e-6 * want, "vector and scalar exp differ at %g", v);
            ck_assert_msg(fabs(sg[l] - 1.0 / (1.0 + exp(-v))) < 1e-6, "sigmoid(%g) = %g", v, sg[l]);
            ck_assert_msg(fabs(th[l] - tanh(v)) < 1e-6, "tanh(%g) = %g", v, th[l]);
        }
    }
    v16 nan = v16_exp(v16_splat(NAN));
    ck_assert(isfinite(nan[0]) && nan[0] >= 0.0f); /* clamped, as the scalar version */
}
END_TEST

int main(void)
{
    return CHECK_MAIN("kernels", test_gemm_small_matches_reference, test_gemm_small_rows_independent,
                      test_cell_update, test_activations);
}
