/* kernels.h -- the engine's innermost loops, compiled once per instruction set
 * (AVX-512, AVX2+FMA, baseline x86-64) and chosen once, by the CPU's
 * features, when the first model loads.
 *
 * Every kernel is a pure function of its arguments.  kernels_isa.c holds their
 * only source; the build compiles it three times with different target flags,
 * each defining one kern_ops table, so GCC and clang alike see vector code for
 * one instruction set at a time.
 */
#ifndef ATTNLM_KERNELS_H
#define ATTNLM_KERNELS_H

#include <stdbool.h>

/* Most rows kern_ops.gemm_small takes; more go to BLAS. */
#define KERN_SMALL_M 8

/* The kernels of one instruction set. */
typedef struct kern_ops {
    const char *name; /* "avx512", "avx2" or "generic" */
    /* out[M, N] += in[M, K] . w[N, K]^T for 2 <= M <= KERN_SMALL_M; rows of in, w
     * and out are ldi, ldw and ldo floats apart.  A row's numbers do not depend on M. */
    void (*gemm_small)(float *out, int ldo, const float *in, int ldi, const float *w, int ldw, int M, int N, int K);
    /* One recurrent cell update of one row (cell: 0 elman, 1 gru, 2 lstm).
     * gi, gh: [G*H] input and recurrent projections, biases included;
     * h [H] and, for lstm, c [H] are read and overwritten. */
    void (*cell_update)(int cell, int H, const float *gi, const float *gh, float *h, float *c);
} kern_ops;

/* The tables; avx512 and avx2 exist only in x86-64 builds. */
extern const kern_ops kern_ops_avx512, kern_ops_avx2, kern_ops_generic;

/* Whether this CPU can run table k. */
bool kern_runs(const kern_ops *k);
/* The fastest table this CPU runs. */
const kern_ops *kern_best(void);

#endif
