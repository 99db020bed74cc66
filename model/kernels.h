/* kernels.h -- the engine's innermost loops: products of activation rows with
 * weight matrices packed once at load, and the recurrent cells' updates.
 *
 * A weight matrix W [N, K] (N outputs, K inputs) is packed into panels of
 * KERN_NR output columns, each panel holding its columns' weights interleaved
 * along K, so a product reads every weight once, in order, for a whole block
 * of activation rows.  Three precisions:
 *   f32   panel [K][16] floats;
 *   bf16  panel [ceil(K/2)][16] 32-bit words, word = bf16(W[j][2i]) | bf16(W[j][2i+1]) << 16
 *         (rounded to nearest even); products accumulate in f32;
 *   int8  panel [ceil(K/4)][16][4] signed bytes q[j][4i .. 4i+3] in [-127, 127] with
 *         W[j][k] ~ scale[j] * q[j][k] (one scale per output column); each block of rows is
 *         quantised per row to 7 bits, [-63, 63] (so that one vpmaddubsw pair sum cannot
 *         saturate), and products accumulate exactly in int32.
 * Padding (columns past N, k past K) is zero.
 *
 * Every kernel is a pure function of its arguments.  kernels_isa.c holds their
 * only source; the build compiles it once per instruction set (AVX-512 with
 * BF16 and VNNI, AVX-512 with VNNI, AVX-512, AVX2+FMA, baseline), each time
 * defining one kern_ops table, and the fastest table the CPU runs is chosen
 * when a model loads.  The f32 and widened bf16 products are plain vector code
 * (GCC and clang vector extensions), the same source for every table; the int8
 * products and the native bf16 products differ by one primitive each.
 *
 * A row's numbers never depend on the other rows of the product: each output
 * is one multiply-add chain over k in order (f32, widened bf16), or an exact
 * integer sum (int8), whatever the number of rows and the tiling.
 */
#ifndef ATTNLM_KERNELS_H
#define ATTNLM_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a packed matrix holds its weights. */
typedef enum { KERN_F32, KERN_BF16, KERN_INT8, KERN_PREC_COUNT } kern_prec;

#define KERN_NR 16 /* output columns per panel */
#define KERN_MB 64 /* rows per block of a product: a block's activations are prepared once */

/* A packed weight matrix; read-only once packed. */
typedef struct kmat {
    int n, k;             /* W is [N, K] */
    kern_prec prec;
    int panels;           /* ceil(N / KERN_NR) */
    size_t panel_bytes;   /* bytes per panel, a multiple of 64 */
    unsigned char *data;  /* [panels][panel_bytes], 64-byte aligned */
    float *scale;         /* int8: [panels * KERN_NR] per output column (0 past N); otherwise NULL */
    int32_t *colsum;      /* int8: [panels * KERN_NR] sum of each column's q; otherwise NULL */
} kmat;

/* Packs src [n, k] (rows ld floats apart) into w at precision prec.  Returns 0,
 * or -1 with a message (out of memory, a weight too large for bf16). */
int kmat_pack(kmat *w, const float *src, int ld, int n, int k, kern_prec prec, char *err, size_t errlen);
void kmat_free(kmat *w);
/* Bytes w holds (panels, scales and sums). */
size_t kmat_bytes(const kmat *w);
/* W[j][k] as the kernels see it (after rounding or quantisation). */
float kmat_get(const kmat *w, int j, int k);
/* 32-bit words of one prepared activation row in scratch for inputs of width
 * k: bf16 pairs (ceil(k/2)) or int8 quads (ceil(k/4)), padded to 16 words, the
 * 64 bytes of an AMX tile's row. */
#define KERN_XWORDS(k) ((((k) + 1) / 2 + 15) / 16 * 16)
/* Scratch one product over inputs of width k needs (prepared activations of a block). */
size_t kern_scratch_bytes(int k);
/* bf16 of x rounded to nearest even, and back. */
uint16_t kern_bf16(float x);
float kern_bf16_to_f32(uint16_t b);
/* "f32", "bf16", "int8". */
const char *kern_prec_name(kern_prec p);

/* out[M, N] (+)= in[M, K] . W^T: rows of in and out are ldi and ldo floats
 * apart.  Without accumulate, out = product + bias (bias may be NULL); with
 * it, out += product and bias is ignored.  M >= 1; scratch holds
 * kern_scratch_bytes(K) bytes (unused by f32 and widened bf16: may be NULL). */
typedef void (*kern_gemm_fn)(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                             bool accumulate, void *scratch);

/* The kernels of one instruction set. */
typedef struct kern_ops {
    const char *name;                /* "amx", "avx512bf16", "avx512vnni", "avx512", "avx2" or "generic" */
    const char *how[KERN_PREC_COUNT]; /* how each precision's products run, e.g. "vpmaddubsw" */
    /* The bf16 products round the activations to bf16 too (vdpbf16ps); otherwise
     * the weights are widened to f32 and the activations kept. */
    bool bf16_rounds_inputs;
    kern_gemm_fn gemm[KERN_PREC_COUNT];
    /* One recurrent cell update of one row (cell: 0 elman, 1 gru, 2 lstm).
     * gi, gh: [G*H] input and recurrent projections, biases included;
     * h [H] and, for lstm, c [H] are read and overwritten. */
    void (*cell_update)(int cell, int H, const float *gi, const float *gh, float *h, float *c);
    /* x[n] = tanh(x[n]) (vecmath.h's approximation). */
    void (*tanh_inplace)(float *x, size_t n);
    /* Multiply-adds per second of the instructions precision p's products are
     * made of, on independent accumulators for about `seconds` of this
     * thread's CPU time: the peak the products are measured against. */
    double (*peak_macs)(kern_prec p, double seconds);
} kern_ops;

/* The tables; all but generic exist only in x86-64 builds. */
extern const kern_ops kern_ops_amx, kern_ops_avx512bf16, kern_ops_avx512vnni, kern_ops_avx512, kern_ops_avx2, kern_ops_generic;

/* Every table of this build, fastest first, NULL-terminated. */
extern const kern_ops *const kern_tables[];
/* Whether this CPU can run table k. */
bool kern_runs(const kern_ops *k);
/* The fastest table this CPU runs. */
const kern_ops *kern_best(void);
/* The table called name, or the fastest for NULL, "" or "auto"; NULL with a
 * message if this build has no such table or this CPU cannot run it. */
const kern_ops *kern_named(const char *name, char *err, size_t errlen);

#endif
