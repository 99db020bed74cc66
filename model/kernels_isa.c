/* kernels_isa.c -- the kernels of kernels.h, written once and compiled once
 * per instruction set: the build passes -DKERN_ISA=avx512, avx2 or generic
 * together with that set's target flags and -ffp-contract=fast (multiplies
 * and adds may fuse), and this file defines the table kern_ops_<KERN_ISA>.
 */
#include "kernels.h"
#include "vecmath.h"

#include <stddef.h>

#ifndef KERN_ISA
#error "kernels_isa.c is compiled with -DKERN_ISA=avx512, avx2 or generic"
#endif

/* Products of a few rows with a weight matrix: out[M, N] += in[M, K] . w[N, K]^T
 * for 2 <= M <= KERN_SMALL_M.  Each row of w is read once for all M inputs, where a BLAS
 * product first copies all of w into its packed layout (OpenBLAS 0.3.21 does so
 * whatever M is: a 2-row product cost more than two matrix-vector products)
 * and M matrix-vector products read w M times.  A row's result does not depend
 * on M: each output is 16 lane sums in k order, then the lanes halved down to
 * one, then the K % 16 tail, so a sequence's numbers are the same in any batch this size. */
static inline __attribute__((always_inline)) void small_rows(float *out, int ldo, const float *in, int ldi,
                                                              const float *w, int ldw, const int M, int N, int K)
{
    const int K16 = K & ~15;
    for (int j = 0; j < N; j++) {
        const float *wj = w + (size_t)j * ldw;
        v16 acc[KERN_SMALL_M];
#pragma GCC unroll 8
        for (int r = 0; r < M; r++)
            acc[r] = (v16){0};
        for (int k = 0; k < K16; k += 16) {
            v16 wv = v16_load(wj + k);
#pragma GCC unroll 8
            for (int r = 0; r < M; r++)
                acc[r] += wv * v16_load(in + (size_t)r * ldi + k);
        }
#pragma GCC unroll 8
        for (int r = 0; r < M; r++) {
            /* Halving the lanes keeps the 15 additions of a sum mostly independent. */
            v8 lo, hi;
            memcpy(&lo, &acc[r], sizeof lo);
            memcpy(&hi, (const char *)&acc[r] + sizeof lo, sizeof hi);
            lo += hi;
            v4 q0, q1;
            memcpy(&q0, &lo, sizeof q0);
            memcpy(&q1, (const char *)&lo + sizeof q0, sizeof q1);
            q0 += q1;
            float s = (q0[0] + q0[2]) + (q0[1] + q0[3]);
            for (int k = K16; k < K; k++)
                s += wj[k] * in[(size_t)r * ldi + k];
            out[(size_t)r * ldo + j] += s;
        }
    }
}

static void gemm_small(float *out, int ldo, const float *in, int ldi, const float *w, int ldw, int M, int N, int K)
{
    switch (M) {
    case 2: small_rows(out, ldo, in, ldi, w, ldw, 2, N, K); break;
    case 3: small_rows(out, ldo, in, ldi, w, ldw, 3, N, K); break;
    case 4: small_rows(out, ldo, in, ldi, w, ldw, 4, N, K); break;
    case 5: small_rows(out, ldo, in, ldi, w, ldw, 5, N, K); break;
    case 6: small_rows(out, ldo, in, ldi, w, ldw, 6, N, K); break;
    case 7: small_rows(out, ldo, in, ldi, w, ldw, 7, N, K); break;
    default: small_rows(out, ldo, in, ldi, w, ldw, 8, N, K); break;
    }
}

/* The gate activations 16 units at a time, then the H % 16 rest one by one. */
static void cell_update(int cell, int H, const float *gi, const float *gh, float *h, float *c)
{
    const int H16 = H & ~15;
    switch (cell) {
    case 0: /* elman */
        for (int j = 0; j < H16; j += 16)
            v16_store(h + j, v16_tanh(v16_load(gi + j) + v16_load(gh + j)));
        for (int j = H16; j < H; j++)
            h[j] = fast_tanhf(gi[j] + gh[j]);
        break;
    case 1: /* gru: gate rows r, z, n */
        for (int j = 0; j < H16; j += 16) {
            v16 r = v16_sigmoid(v16_load(gi + j) + v16_load(gh + j));
            v16 z = v16_sigmoid(v16_load(gi + H + j) + v16_load(gh + H + j));
            v16 n = v16_tanh(v16_load(gi + 2 * H + j) + r * v16_load(gh + 2 * H + j));
            v16_store(h + j, (1.0f - z) * n + z * v16_load(h + j));
        }
        for (int j = H16; j < H; j++) {
            float r = sigmoidf(gi[j] + gh[j]);
            float z = sigmoidf(gi[H + j] + gh[H + j]);
            float n = fast_tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
            h[j] = (1.0f - z) * n + z * h[j];
        }
        break;
    default: /* lstm: gate rows i, f, g, o */
        for (int j = 0; j < H16; j += 16) {
            v16 i = v16_sigmoid(v16_load(gi + j) + v16_load(gh + j));
            v16 f = v16_sigmoid(v16_load(gi + H + j) + v16_load(gh + H + j));
            v16 g = v16_tanh(v16_load(gi + 2 * H + j) + v16_load(gh + 2 * H + j));
            v16 o = v16_sigmoid(v16_load(gi + 3 * H + j) + v16_load(gh + 3 * H + j));
            v16 cv = f * v16_load(c + j) + i * g;
            v16_store(c + j, cv);
            v16_store(h + j, o * v16_tanh(cv));
        }
        for (int j = H16; j < H; j++) {
            float i = sigmoidf(gi[j] + gh[j]);
            float f = sigmoidf(gi[H + j] + gh[H + j]);
            float g = fast_tanhf(gi[2 * H + j] + gh[2 * H + j]);
            float o = sigmoidf(gi[3 * H + j] + gh[3 * H + j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * fast_tanhf(c[j]);
        }
        break;
    }
}

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)

const kern_ops CAT(kern_ops_, KERN_ISA) = {
    .name = STR(KERN_ISA),
    .gemm_small = gemm_small,
    .cell_update = cell_update,
};
