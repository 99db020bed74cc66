/* test_kernels.c -- the vector kernels against double-precision references,
 * for every kernel table this CPU runs: the packed products at every
 * precision on awkward shapes (rows, columns and inputs that are not
 * multiples of the vector width, blocks of rows and their remainders, row
 * strides, bias and accumulation), the same numbers for a row in any number
 * of rows, the packing and rounding themselves, the cell updates on awkward
 * widths, and the vector activations against the scalar ones and libm. */
#define _GNU_SOURCE /* syscall numbers */
#include "kernels.h"
#include "vecmath.h"

#include "check_main.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((int)((*s >> 8) % 2001) - 1000) / 1000.0f;
}

/* The tables this CPU runs; each test loops over them. */
static const kern_ops *TABLES[8];
static int n_tables;

static void find_tables(void)
{
    n_tables = 0;
    for (int i = 0; kern_tables[i]; i++)
        if (kern_runs(kern_tables[i]))
            TABLES[n_tables++] = kern_tables[i];
    ck_assert_int_ge(n_tables, 1);
}

/* What the kernels of table t multiply row x [K] by at precision p: int8
 * quantises it per row to 7 bits, native bf16 rounds it. */
static void reference_inputs(const kern_ops *t, kern_prec p, const float *x, int K, double *out)
{
    if (p == KERN_INT8) {
        float mx = 0.0f;
        for (int k = 0; k < K; k++)
            mx = fmaxf(mx, fabsf(x[k]));
        const float inv = mx > 0.0f ? 63.0f / mx : 0.0f;
        for (int k = 0; k < K; k++) {
            float y = x[k] * inv;
            out[k] = (double)(int)(y + (y < 0.0f ? -0.5f : 0.5f)) * (mx / 63.0f);
        }
    } else {
        for (int k = 0; k < K; k++)
            out[k] = p == KERN_BF16 && t->bf16_rounds_inputs ? kern_bf16_to_f32(kern_bf16(x[k])) : x[k];
    }
}

/* Runs one product of table t and checks it against the reference in double. */
static double check_product(const kern_ops *t, kern_prec p, int M, int N, int K, bool use_bias, bool accumulate,
                            unsigned seed)
{
    const int ldi = K + 3, ldw = K + 5, ldo = N + 2;
    unsigned s = seed;
    float *in = malloc(sizeof *in * (size_t)M * ldi), *src = malloc(sizeof *src * (size_t)N * ldw);
    float *out = malloc(sizeof *out * (size_t)M * ldo), *bias = malloc(sizeof *bias * (size_t)N);
    double *xr = malloc(sizeof *xr * (size_t)K);
    void *scratch = malloc(kern_scratch_bytes(K));
    ck_assert(in && src && out && bias && xr && scratch);
    for (int i = 0; i < M * ldi; i++)
        in[i] = frand(&s);
    for (int i = 0; i < N * ldw; i++)
        src[i] = frand(&s);
    for (int j = 0; j < N; j++)
        bias[j] = frand(&s);
    if (M > 2) /* a row of zeros: int8 quantises it with scale 0 */
        memset(in + (size_t)ldi, 0, sizeof *in * (size_t)K);
    for (int i = 0; i < M * ldo; i++)
        out[i] = 0.5f;
    kmat w;
    char err[128];
    ck_assert_int_eq(kmat_pack(&w, src, ldw, N, K, p, err, sizeof err), 0);
    t->gemm[p](out, ldo, in, ldi, &w, use_bias ? bias : NULL, M, accumulate, scratch);
    double worst = 0.0;
    for (int r = 0; r < M; r++) {
        reference_inputs(t, p, in + (size_t)r * ldi, K, xr);
        for (int j = 0; j < N; j++) {
            double ref = accumulate ? 0.5 : use_bias ? bias[j] : 0.0, mag = fabs(ref) + 1e-3;
            for (int k = 0; k < K; k++) {
                double wk = kmat_get(&w, j, k);
                ref += wk * xr[k];
                mag += fabs(wk * xr[k]);
            }
            double e = fabs(out[r * ldo + j] - ref) / mag;
            worst = fmax(worst, e);
            /* f32 sums of up to 100 terms in order; int8 sums are exact, then scaled */
            ck_assert_msg(e < 2e-6, "%s %s M=%d N=%d K=%d bias=%d acc=%d: out[%d][%d] = %.9g, want %.9g", t->name,
                          kern_prec_name(p), M, N, K, use_bias, accumulate, r, j, out[r * ldo + j], ref);
        }
        for (int j = N; j < ldo; j++)
            ck_assert_msg(out[r * ldo + j] == 0.5f, "%s %s: wrote past column %d", t->name, kern_prec_name(p), N);
    }
    kmat_free(&w);
    free(in);
    free(src);
    free(out);
    free(bias);
    free(xr);
    free(scratch);
    return worst;
}

/* Every precision of every table on shapes around the vector width (16), the
 * tile shapes and the row block (KERN_MB = 64). */
START_TEST(test_gemm_matches_reference)
{
    const int Ms[] = {1, 2, 3, 4, 5, 6, 7, 9, 13, 31, 64, 70};
    const int Ks[] = {1, 2, 3, 5, 7, 15, 16, 17, 31, 40, 64, 100};
    const int Ns[] = {1, 5, 16, 17, 37, 40, 63, 130};
    find_tables();
    for (int ti = 0; ti < n_tables; ti++)
        for (int p = 0; p < KERN_PREC_COUNT; p++) {
            double worst = 0.0;
            for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
                for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
                    size_t v = mi * 5 + ki * 3;
                    int N = Ns[v % (sizeof Ns / sizeof *Ns)];
                    worst = fmax(worst, check_product(TABLES[ti], (kern_prec)p, Ms[mi], N, Ks[ki], v % 3 != 0,
                                                      v % 4 == 1, (unsigned)(v * 131 + (size_t)p)));
                }
            ck_assert(worst > 0.0); /* the reference is not trivially equal */
        }
}
END_TEST

/* A row's numbers are the same in a product of any number of rows, 1 to 70
 * (past one block of KERN_MB), at every precision. */
START_TEST(test_gemm_rows_independent)
{
    enum { K = 41, N = 37, MAXM = 70 };
    unsigned s = 7;
    static float in[MAXM * K], src[N * K], one[MAXM * N], many[MAXM * N];
    for (int i = 0; i < MAXM * K; i++)
        in[i] = frand(&s);
    for (int i = 0; i < N * K; i++)
        src[i] = frand(&s);
    void *scratch = malloc(kern_scratch_bytes(K));
    char err[128];
    find_tables();
    for (int ti = 0; ti < n_tables; ti++)
        for (int p = 0; p < KERN_PREC_COUNT; p++) {
            const kern_ops *t = TABLES[ti];
            kmat w;
            ck_assert_int_eq(kmat_pack(&w, src, K, N, K, (kern_prec)p, err, sizeof err), 0);
            for (int r = 0; r < MAXM; r++)
                t->gemm[p](one + r * N, N, in + r * K, K, &w, NULL, 1, false, scratch);
            for (int M = 2; M <= MAXM; M++) {
                t->gemm[p](many, N, in, K, &w, NULL, M, false, scratch);
                ck_assert_msg(memcmp(many, one, sizeof(float) * (size_t)M * N) == 0, "%s %s: rows differ at M=%d",
                              t->name, kern_prec_name((kern_prec)p), M);
            }
            kmat_free(&w);
        }
    free(scratch);
}
END_TEST

/* Packing: bf16 rounds to nearest even, int8 keeps every weight within half a
 * step of its row's scale, and both keep a zero row zero. */
START_TEST(test_packing)
{
    ck_assert_uint_eq(kern_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(kern_bf16(1.0f + 0x1p-8f), 0x3f80);  /* a tie: to the even neighbour */
    ck_assert_uint_eq(kern_bf16(1.0f + 0x3p-8f), 0x3f82);  /* a tie: to the even neighbour */
    ck_assert_uint_eq(kern_bf16(1.0f + 0x1p-7f + 0x1p-12f), 0x3f81);
    ck_assert_uint_eq(kern_bf16(-2.0f), 0xc000);
    ck_assert(kern_bf16_to_f32(kern_bf16(3.14159f)) == 3.140625f);

    enum { N = 19, K = 23 };
    float src[N * K];
    unsigned s = 3;
    for (int i = 0; i < N * K; i++)
        src[i] = frand(&s) * (float)(1 + i % 7);
    memset(src + 4 * K, 0, sizeof(float) * K);
    char err[128];
    kmat w8, w16, w32;
    ck_assert_int_eq(kmat_pack(&w8, src, K, N, K, KERN_INT8, err, sizeof err), 0);
    ck_assert_int_eq(kmat_pack(&w16, src, K, N, K, KERN_BF16, err, sizeof err), 0);
    ck_assert_int_eq(kmat_pack(&w32, src, K, N, K, KERN_F32, err, sizeof err), 0);
    for (int j = 0; j < N; j++) {
        float mx = 0.0f;
        for (int k = 0; k < K; k++)
            mx = fmaxf(mx, fabsf(src[j * K + k]));
        for (int k = 0; k < K; k++) {
            float v = src[j * K + k];
            ck_assert(kmat_get(&w32, j, k) == v);
            ck_assert(kmat_get(&w16, j, k) == kern_bf16_to_f32(kern_bf16(v)));
            ck_assert_msg(fabsf(kmat_get(&w8, j, k) - v) <= 0.5f * mx / 127.0f * 1.0001f, "int8 [%d][%d]", j, k);
        }
    }
    ck_assert(kmat_get(&w8, 4, 3) == 0.0f);
    ck_assert_uint_lt(kmat_bytes(&w8), kmat_bytes(&w16));
    ck_assert_uint_lt(kmat_bytes(&w16), kmat_bytes(&w32));
    kmat_free(&w8);
    kmat_free(&w16);
    kmat_free(&w32);
    float huge[2] = {3.4e38f, 1.0f};
    ck_assert_int_eq(kmat_pack(&w16, huge, 2, 1, 2, KERN_BF16, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "too large for bf16"));
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

    /* Each table's tanh over an array, vector part and scalar rest. */
    float arr[37];
    find_tables();
    for (int ti = 0; ti < n_tables; ti++) {
        for (int i = 0; i < 37; i++)
            arr[i] = -9.0f + 0.5f * (float)i;
        TABLES[ti]->tanh_inplace(arr, 37);
        for (int i = 0; i < 37; i++)
            ck_assert_msg(fabs(arr[i] - tanh(-9.0 + 0.5 * i)) < 1e-6, "%s tanh[%d] = %g", TABLES[ti]->name, i, arr[i]);
    }
}
END_TEST

/* A table by name: "auto" and no name are the fastest; a name this build
 * lacks, or one this CPU cannot run, is refused naming what it runs. */
START_TEST(test_named)
{
    char err[256] = "";
    ck_assert_ptr_eq(kern_named(NULL, err, sizeof err), kern_best());
    ck_assert_ptr_eq(kern_named("", err, sizeof err), kern_best());
    ck_assert_ptr_eq(kern_named("auto", err, sizeof err), kern_best());
    ck_assert_ptr_eq(kern_named("generic", err, sizeof err), &kern_ops_generic);
    ck_assert_ptr_null(kern_named("sse9", err, sizeof err));
    ck_assert_msg(strstr(err, "\"sse9\": no such kernels") && strstr(err, "generic"), "%s", err);
    for (int i = 0; kern_tables[i]; i++) {
        const kern_ops *t = kern_tables[i];
        err[0] = '\0';
        const kern_ops *got = kern_named(t->name, err, sizeof err);
        if (kern_runs(t)) {
            ck_assert_ptr_eq(got, t);
        } else {
            ck_assert_ptr_null(got);
            ck_assert_msg(strstr(err, "does not run"), "%s: %s", t->name, err);
        }
    }
}
END_TEST

/* Every table measures a positive, finite peak for every precision (what
 * make bench sets the products beside; how fast is for the benchmark). */
START_TEST(test_peak)
{
    find_tables();
    for (int ti = 0; ti < n_tables; ti++)
        for (int p = 0; p < KERN_PREC_COUNT; p++) {
            double peak = TABLES[ti]->peak_macs((kern_prec)p, 0.002);
            ck_assert_msg(peak > 1e6 && isfinite(peak), "%s %s: peak %g", TABLES[ti]->name,
                          kern_prec_name((kern_prec)p), peak);
        }
}
END_TEST

/* When the kernel refuses the tile state (here a seccomp filter makes
 * arch_prctl fail, as an old kernel or a container's policy would), AMX is
 * not chosen and the fastest other table runs the products. */
START_TEST(test_amx_refused)
{
#if defined(__x86_64__)
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct sock_filter filter[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_arch_prctl, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = sizeof filter / sizeof *filter, .filter = filter};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(3);
        if (kern_runs(&kern_ops_amx) || kern_best() == &kern_ops_amx)
            _exit(1);
        char err[256];
        if (kern_named("amx", err, sizeof err) || !strstr(err, "does not run"))
            _exit(2);
        /* the table chosen instead multiplies correctly */
        enum { M = 9, N = 20, K = 33 };
        float in[M * K], src[N * K], out[M * N];
        unsigned s = 9;
        for (int i = 0; i < M * K; i++)
            in[i] = frand(&s);
        for (int i = 0; i < N * K; i++)
            src[i] = frand(&s);
        void *scratch = malloc(kern_scratch_bytes(K));
        for (int p = 0; p < KERN_PREC_COUNT; p++) {
            kmat w;
            if (!scratch || kmat_pack(&w, src, K, N, K, (kern_prec)p, err, sizeof err) != 0)
                _exit(4);
            kern_best()->gemm[p](out, N, in, K, &w, NULL, M, false, scratch);
            for (int r = 0; r < M; r++)
                for (int j = 0; j < N; j++) {
                    double ref = 0.0;
                    for (int k = 0; k < K; k++)
                        ref += (double)kmat_get(&w, j, k) * in[r * K + k];
                    if (fabs(out[r * N + j] - ref) > 0.05 * (1.0 + fabs(ref))) /* within int8's input rounding */
                        _exit(5);
                }
            kmat_free(&w);
        }
        free(scratch);
        _exit(0);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed at step %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
#endif
}
END_TEST

int main(void)
{
    const check_case cases[] = {{"kernels",
                                 CHECK_TESTS(CHECK_TEST(test_gemm_matches_reference), CHECK_TEST(test_gemm_rows_independent),
                                             CHECK_TEST(test_packing), CHECK_TEST(test_cell_update),
                                             CHECK_TEST(test_activations), CHECK_TEST(test_named),
                                             CHECK_TEST(test_peak), CHECK_TEST(test_amx_refused)),
                                 .timeout = 60}};
    return check_main("kernels", cases, 1);
}
