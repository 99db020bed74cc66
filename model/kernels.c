/* kernels.c -- the product of a few rows with a weight matrix.
 *
 * Compiled three times (AVX-512, AVX2+FMA, baseline) and picked at load time
 * by the CPU's features, so one binary runs anywhere and fast where it can.
 */
#include "kernels.h"

#include <stddef.h>

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
            v16 wv;
            memcpy(&wv, wj + k, sizeof wv);
#pragma GCC unroll 8
            for (int r = 0; r < M; r++) {
                v16 xv;
                memcpy(&xv, in + (size_t)r * ldi + k, sizeof xv);
                acc[r] += wv * xv;
            }
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

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
__attribute__((optimize("fp-contract=fast"))) void kern_gemm_small(float *out, int ldo, const float *in, int ldi,
                                                                      const float *w, int ldw, int M, int N, int K)
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

