/* kernels_isa.c -- the kernels of kernels.h, written once and compiled once
 * per instruction set: the build passes -DKERN_ISA=<name> together with that
 * set's target flags and -ffp-contract=fast (multiplies and adds may fuse),
 * and this file defines the table kern_ops_<name>.
 *
 * A product runs in blocks of KERN_MB rows.  Within a block, groups of a few
 * panels are visited in turn and every row tile of the block is multiplied
 * with the group while its weights are in cache; a tile is MR rows by NP
 * panels of accumulators held in registers, its shape chosen per instruction
 * set and precision (the *_ROWS, *_GROUP and *_NP macros below).  The shape
 * changes only the order in which outputs are computed, never how one is: an
 * output is a multiply-add chain over k in order, or an exact integer sum.
 */
#include "kernels.h"
#include "vecmath.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef KERN_ISA
#error "kernels_isa.c is compiled with -DKERN_ISA=avx512bf16, avx512vnni, avx512, avx2 or generic"
#endif

#define INLINE static inline __attribute__((always_inline))
/* Unrolls the loop that follows completely (its trip count is a constant once
 * the tile is inlined), so a tile's arrays become registers. */
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 32")
#endif

/* With AMX (GCC and clang name it differently), a block's prepared
 * activations are tiles: rows and words per row padded with zeros to
 * multiples of 16 (a tile's rows and its 64-byte width). */
#if defined(__AMX_TILE__) || defined(__AMXTILE__)
#define KERN_AMX 1
#define XPAD 16
#else
#define XPAD 1
#endif
#define ROUND_UP(x, m) (((x) + (m) - 1) / (m) * (m))

/* Native vectors: VW floats and VI 32-bit integers per register.  A panel's
 * row of 16 columns is PV float vectors, or PI integer vectors. */
#if defined(__AVX512F__)
#define VW 16
#else
#if defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif
#endif
#if defined(__AVX512VNNI__)
#define VI 16
#else
#define VI (VW < 8 ? VW : 8)
#endif
#define PV (KERN_NR / VW)
#define PI (KERN_NR / VI)
typedef float vf __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VI * 4)));
typedef int32_t vm __attribute__((vector_size(VW * 4))); /* a comparison's result on vf */
VECMATH_VECTOR(vf, vm, vf)

INLINE vf vf_load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
#if !defined(KERN_AMX) /* the bf16 tiles load their own */
INLINE vu vu_load(const uint32_t *p)
{
    vu v;
    memcpy(&v, p, sizeof v);
    return v;
}
#endif
INLINE vi vi_load(const int32_t *p)
{
    vi v;
    memcpy(&v, p, sizeof v);
    return v;
}
/* x in every lane: x - 0 is x exactly, and the compilers make it a broadcast. */
INLINE vf vf_splat(float x) { return x - (vf){0}; }
INLINE vi vi_splat(int32_t x) { return x + (vi){0}; }

/* Tile shapes: rows per full tile (*_ROWS), panels per group (*_GROUP) and
 * panels per tile of mr rows (*_NP), so that a tile's accumulators, its
 * weights and a row's inputs fit the registers; TILE_MAX and NP_MAX bound
 * the accumulator and weight arrays, in vectors. */
#if defined(__AVX512F__) /* 32 registers */
#define F32_ROWS 6
#define F32_GROUP 8
#define F32_NP(mr) ((mr) <= 2 ? 8 : 4)
#define WBF_ROWS 4
#define WBF_GROUP 8
#define WBF_NP(mr) ((mr) == 1 ? 8 : 4)
#define TILE_MAX 24
#define NP_MAX 8
#elif defined(__AVX2__) /* 16 registers */
#define F32_ROWS 6
#define F32_GROUP 4
#define F32_NP(mr) ((mr) == 1 ? 4 : (mr) == 2 ? 2 : 1)
#define WBF_ROWS 4
#define WBF_GROUP 4
#define WBF_NP(mr) ((mr) == 1 ? 4 : 1)
#define TILE_MAX 12
#define NP_MAX 4
#else /* baseline: 16 registers of 4 floats */
#define F32_ROWS 3
#define F32_GROUP 2
#define F32_NP(mr) ((mr) == 1 ? 2 : 1)
#define WBF_ROWS 2
#define WBF_GROUP 2
#define WBF_NP(mr) 1
#define TILE_MAX 12
#define NP_MAX 2
#endif
#if VI == 16 /* VNNI: one instruction per 4 inputs, like f32 */
#define I8_ROWS 6
#define I8_GROUP 8
#define I8_NP(mr) ((mr) <= 2 ? 8 : 4)
#elif VI == 8
#define I8_ROWS 4
#define I8_GROUP 4
#define I8_NP(mr) ((mr) == 1 ? 4 : (mr) == 2 ? 2 : 1)
#else
#define I8_ROWS 2
#define I8_GROUP 2
#define I8_NP(mr) 1
#endif

/* What one product needs, handed to every tile. */
typedef struct gemm_args {
    float *out;
    int ldo;
    const float *in; /* f32 and widened bf16: the activations */
    int ldi;
    const void *x;   /* int8 and native bf16: the block's prepared activations, ldx words per row */
    int ldx;
    const float *xs; /* int8: the block's per-row scales */
    int r0;          /* first row of the block (x and xs are relative to it) */
    int r1;          /* the row after the block's last */
    const kmat *w;
    const float *bias;
    bool accumulate;
} gemm_args;

/* Writes the 16 outputs v of row r, panel p: out (+)= v (+ bias), only the columns below N. */
INLINE void put16(const gemm_args *a, int r, int p, const float *v)
{
    const int j0 = p * KERN_NR, n = a->w->n - j0 < KERN_NR ? a->w->n - j0 : KERN_NR;
    float *o = a->out + (size_t)r * a->ldo + j0;
    if (n == KERN_NR) {
        for (int i = 0; i < KERN_NR; i += VW) {
            vf base = a->accumulate ? vf_load(o + i) : a->bias ? vf_load(a->bias + j0 + i) : (vf){0};
            vf sum = base + vf_load(v + i);
            memcpy(o + i, &sum, sizeof sum);
        }
    } else {
        for (int j = 0; j < n; j++)
            o[j] = (a->accumulate ? o[j] : a->bias ? a->bias[j0 + j] : 0.0f) + v[j];
    }
}

/* Writes a tile's float accumulators acc[(i * NP + q) * PV + v]. */
INLINE void put_tile(const gemm_args *a, int r, int p, const vf *acc, const int MR, const int NP)
{
    UNROLL
    for (int i = 0; i < MR; i++)
        UNROLL
        for (int q = 0; q < NP; q++) {
            float v[KERN_NR];
            memcpy(v, &acc[(i * NP + q) * PV], sizeof v);
            put16(a, r + i, p + q, v);
        }
}

/* ---- the loop every tile shares ------------------------------------------------
 * acc[MR * NQ] starts at zero; for each step kk of KK, the NQ weight vectors
 * of the tile's panels are loaded (LOAD(q, kk)) and each row's input for that
 * step is broadcast (SPLAT(i, kk)) and combined into the row's accumulators
 * (acc = MADD(acc, weights, input)).  What differs between the precisions is
 * what a step covers (1, 2 or 4 values of k) and how it multiplies. */
#define TILE_LOOP(WT, XT, acc, MR, NQ, KK, LOAD, SPLAT, MADD)                   \
    do {                                                                        \
        UNROLL                                                                  \
        for (int i_ = 0; i_ < (MR) * (NQ); i_++)                                \
            acc[i_] = (__typeof__(acc[0])){0};                                  \
        for (int kk = 0; kk < (KK); kk++) {                                     \
            WT wv_[NP_MAX * PV > NP_MAX * PI ? NP_MAX * PV : NP_MAX * PI];      \
            UNROLL                                                              \
            for (int q = 0; q < (NQ); q++)                                      \
                wv_[q] = LOAD;                                                  \
            UNROLL                                                              \
            for (int i = 0; i < (MR); i++) {                                    \
                XT xv_ = SPLAT;                                                 \
                UNROLL                                                          \
                for (int q = 0; q < (NQ); q++)                                  \
                    acc[i * (NQ) + q] = MADD(acc[i * (NQ) + q], wv_[q], xv_);   \
            }                                                                   \
        }                                                                       \
    } while (0)

/* ---- f32: per k, the NP panels' 16 weights times each row's broadcast input ---- */

INLINE vf fma_f32(vf acc, vf w, vf x) { return acc + w * x; }

INLINE void tile_f32(const gemm_args *a, int r, int p, const int MR, const int NP)
{
    const kmat *w = a->w;
    const int K = w->k, ldi = a->ldi;
    const size_t ps = w->panel_bytes / sizeof(float);
    const float *wp = (const float *)(const void *)w->data + (size_t)p * ps;
    const float *x = a->in + (size_t)r * ldi;
    vf acc[TILE_MAX];
    TILE_LOOP(vf, vf, acc, MR, NP * PV, K, vf_load(wp + (size_t)(q / PV) * ps + (size_t)kk * KERN_NR + (q % PV) * VW),
              vf_splat(x[(size_t)i * ldi + kk]), fma_f32);
    put_tile(a, r, p, acc, MR, NP);
}

/* ---- bf16 widened: a word holds k = 2i (low half) and 2i+1 (high half) ------ */

#if !defined(__AVX512BF16__)
INLINE void tile_wbf(const gemm_args *a, int r, int p, const int MR, const int NP)
{
    const kmat *w = a->w;
    const int K = w->k, K2 = K / 2, ldi = a->ldi;
    const size_t ps = w->panel_bytes / sizeof(uint32_t);
    const uint32_t *wp = (const uint32_t *)(const void *)w->data + (size_t)p * ps;
    const float *x = a->in + (size_t)r * ldi;
    vf acc[TILE_MAX];
    UNROLL
    for (int i = 0; i < MR * NP * PV; i++)
        acc[i] = (vf){0};
    for (int k2 = 0; k2 < K2; k2++) {
        vf lo[NP_MAX * PV], hi[NP_MAX * PV];
        UNROLL
        for (int q = 0; q < NP * PV; q++) {
            vu u = vu_load(wp + (size_t)(q / PV) * ps + (size_t)k2 * KERN_NR + (q % PV) * VW);
            lo[q] = (vf)(u << 16);
            hi[q] = (vf)(u & 0xffff0000u);
        }
        UNROLL
        for (int i = 0; i < MR; i++) {
            vf x0 = vf_splat(x[(size_t)i * ldi + 2 * k2]), x1 = vf_splat(x[(size_t)i * ldi + 2 * k2 + 1]);
            UNROLL
            for (int q = 0; q < NP * PV; q++) {
                acc[i * NP * PV + q] += lo[q] * x0;
                acc[i * NP * PV + q] += hi[q] * x1;
            }
        }
    }
    if (K % 2) {
        UNROLL
        for (int q = 0; q < NP * PV; q++) {
            vf lo = (vf)(vu_load(wp + (size_t)(q / PV) * ps + (size_t)K2 * KERN_NR + (q % PV) * VW) << 16);
            UNROLL
            for (int i = 0; i < MR; i++)
                acc[i * NP * PV + q] += lo * vf_splat(x[(size_t)i * ldi + K - 1]);
        }
    }
    put_tile(a, r, p, acc, MR, NP);
}
#endif

/* ---- bf16 native (AVX512_BF16): vdpbf16ps on weight pairs and input pairs ---- */

#if defined(__AVX512BF16__)
/* A block's rows as bf16 pairs: word i = bf16(x[2i]) | bf16(x[2i+1]) << 16, 0 past K
 * and in the rows and words that pad the block to XPAD.  vcvtne2ps2bf16 rounds
 * to nearest even as kern_bf16 does, except that it flushes denormal inputs to
 * zero, which the bf16 products do with their inputs anyway. */
static void prepare_nbf(gemm_args *a, int mb, void *scratch)
{
    const int K = a->w->k, K2 = (K + 1) / 2, ldx = ROUND_UP(K2, XPAD);
    uint32_t *xp = scratch;
    for (int i = 0; i < mb; i++) {
        const float *x = a->in + (size_t)(a->r0 + i) * a->ldi;
        int k2 = 0;
        for (; 2 * k2 + 32 <= K; k2 += 16) {
            __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 2 * k2 + 16), _mm512_loadu_ps(x + 2 * k2));
            memcpy(xp + (size_t)i * ldx + k2, &b, sizeof b);
        }
        for (; k2 < K2; k2++) {
            uint32_t hi = 2 * k2 + 1 < K ? kern_bf16(x[2 * k2 + 1]) : 0;
            xp[(size_t)i * ldx + k2] = kern_bf16(x[2 * k2]) | hi << 16;
        }
        memset(xp + (size_t)i * ldx + K2, 0, sizeof *xp * (size_t)(ldx - K2));
    }
    memset(xp + (size_t)mb * ldx, 0, sizeof *xp * (size_t)ldx * (size_t)(ROUND_UP(mb, XPAD) - mb));
    a->x = xp;
    a->ldx = ldx;
}
#endif

#if defined(__AVX512BF16__) && !defined(KERN_AMX)
INLINE vu vu_splat(uint32_t x) { return x + (vu){0}; }
INLINE vf dot_bf16(vf acc, vu w, vu x) { return (vf)_mm512_dpbf16_ps((__m512)acc, (__m512bh)w, (__m512bh)x); }

#define NBF_ROWS F32_ROWS
#define NBF_GROUP F32_GROUP
#define NBF_NP(mr) F32_NP(mr)

INLINE void tile_nbf(const gemm_args *a, int r, int p, const int MR, const int NP)
{
    const kmat *w = a->w;
    const int K2 = (w->k + 1) / 2, ldx = a->ldx;
    const size_t ps = w->panel_bytes / sizeof(uint32_t);
    const uint32_t *wp = (const uint32_t *)(const void *)w->data + (size_t)p * ps;
    const uint32_t *x = (const uint32_t *)a->x + (size_t)(r - a->r0) * ldx;
    vf acc[TILE_MAX];
    TILE_LOOP(vu, vu, acc, MR, NP, K2, vu_load(wp + (size_t)q * ps + (size_t)kk * KERN_NR),
              vu_splat(x[(size_t)i * ldx + kk]), dot_bf16);
    put_tile(a, r, p, acc, MR, NP);
}
#endif

/* ---- int8: per 4 k, 16 columns' 4 bytes times a row's 4 quantised inputs ----
 *
 * A row's inputs are quantised to 7 bits, q in [-63, 63], and stored as the
 * unsigned bytes q + 64; dot4(acc, x, w) adds to each 32-bit lane the sum of
 * its 4 signed weight bytes times the 4 unsigned input bytes, exactly, and
 * the tile takes 64 times each column's weight sum off at the end.  With
 * VNNI that is one vpdpbusd; with AVX2 it is vpmaddubsw, whose pair sums (at
 * most 2 * 127 * 127) cannot saturate, then vpmaddwd into 32 bits; the
 * baseline does it lane by lane.  All three give the same integers. */
#define I8_LEVELS 63
#define I8_OFFSET 64
#if defined(__AVX512VNNI__)
INLINE vi dot4(vi acc, vi x, vi w) { return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)x, (__m512i)w); }
#elif defined(__AVX2__)
INLINE vi dot4(vi acc, vi x, vi w)
{
    return acc + (vi)_mm256_madd_epi16(_mm256_maddubs_epi16((__m256i)x, (__m256i)w), _mm256_set1_epi16(1));
}
#else
INLINE vi dot4(vi acc, vi x, vi w)
{
    uint8_t xs[4 * VI];
    int8_t ws[4 * VI];
    memcpy(xs, &x, sizeof xs);
    memcpy(ws, &w, sizeof ws);
    for (int l = 0; l < VI; l++)
        acc[l] += xs[4 * l] * ws[4 * l] + xs[4 * l + 1] * ws[4 * l + 1] + xs[4 * l + 2] * ws[4 * l + 2] +
                  xs[4 * l + 3] * ws[4 * l + 3];
    return acc;
}
#endif
/* dot4 with the operands in TILE_LOOP's order. */
INLINE vi dot4_wx(vi acc, vi w, vi x) { return dot4(acc, x, w); }

/* A block's rows quantised: scale t = max|x| / I8_LEVELS, q = round(x / t)
 * (halves away from zero), stored as q + I8_OFFSET, 4 per word; q = 0 past K. */
typedef uint8_t vbw __attribute__((vector_size(VW * 4))); /* a vm's bytes */
/* The low byte of each lane of a vm (a narrowing conversion, which GCC would do lane by lane). */
#if VW == 16
#define LOW_BYTES(v) __builtin_shufflevector((vbw)(v), (vbw)(v), 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60)
#elif VW == 8
#define LOW_BYTES(v) __builtin_shufflevector((vbw)(v), (vbw)(v), 0, 4, 8, 12, 16, 20, 24, 28)
#else
#define LOW_BYTES(v) __builtin_shufflevector((vbw)(v), (vbw)(v), 0, 4, 8, 12)
#endif

INLINE int quantise(float x, float inv)
{
    float y = x * inv;
    return (int)(y + (y < 0.0f ? -0.5f : 0.5f)) + I8_OFFSET;
}

static void prepare_i8(gemm_args *a, int mb, void *scratch)
{
    const int K = a->w->k, K4 = (K + 3) / 4, KV = K / VW * VW, ldx = ROUND_UP(K4, XPAD);
    unsigned char *xq = scratch;
    float *xs = (float *)(void *)(xq + (size_t)KERN_MB * KERN_XWORDS(K) * 4);
    for (int i = 0; i < mb; i++) {
        const float *x = a->in + (size_t)(a->r0 + i) * a->ldi;
        unsigned char *q = xq + (size_t)i * ldx * 4;
        vf vmx = (vf){0};
        for (int k = 0; k < KV; k += VW) {
            vf v = vf_load(x + k);
            v = (vf)((vu)v & 0x7fffffffu);
            vm gt = v > vmx;
            vmx = (vf)(((vm)v & gt) | ((vm)vmx & ~gt));
        }
        float mx = 0.0f;
        for (int l = 0; l < VW; l++)
            mx = vmx[l] > mx ? vmx[l] : mx;
        for (int k = KV; k < K; k++) {
            float v = x[k] < 0.0f ? -x[k] : x[k];
            mx = v > mx ? v : mx;
        }
        const float inv = mx > 0.0f ? (float)I8_LEVELS / mx : 0.0f;
        for (int k = 0; k < KV; k += VW) {
            vf y = vf_load(x + k) * inv;
            vf half = (vf)(((vu)y & 0x80000000u) | (vu)vf_splat(0.5f));
            vm v = __builtin_convertvector(y + half, vm) + I8_OFFSET;
            __typeof__(LOW_BYTES(v)) b = LOW_BYTES(v); /* VW bytes */
            memcpy(q + k, &b, sizeof b);
        }
        for (int k = KV; k < K; k++)
            q[k] = (unsigned char)quantise(x[k], inv);
        memset(q + K, I8_OFFSET, (size_t)(ldx * 4 - K));
        xs[i] = mx / (float)I8_LEVELS;
    }
    for (int i = mb; i < ROUND_UP(mb, XPAD); i++) {
        memset(xq + (size_t)i * ldx * 4, I8_OFFSET, (size_t)ldx * 4);
        xs[i] = 0.0f;
    }
    a->x = xq;
    a->ldx = ldx;
    a->xs = xs;
}

/* Writes row r, panel p from its 16 integer sums s: the offset's share taken
 * off, then scaled by the column's and the row's scales. */
INLINE void put16_i8(const gemm_args *a, int r, int p, const int32_t *s)
{
    const kmat *w = a->w;
    const int j0 = p * KERN_NR;
    const float t = a->xs[r - a->r0];
    float v[KERN_NR];
    for (int j = 0; j < KERN_NR; j++)
        v[j] = (float)(int32_t)((uint32_t)s[j] - (uint32_t)(I8_OFFSET * w->colsum[j0 + j])) * (w->scale[j0 + j] * t);
    put16(a, r, p, v);
}

INLINE void tile_i8(const gemm_args *a, int r, int p, const int MR, const int NP)
{
    const kmat *w = a->w;
    const int K4 = (w->k + 3) / 4, ldx = a->ldx;
    const size_t ps = w->panel_bytes / sizeof(int32_t);
    const int32_t *wp = (const int32_t *)(const void *)w->data + (size_t)p * ps;
    const int32_t *x = (const int32_t *)a->x + (size_t)(r - a->r0) * ldx;
    vi acc[TILE_MAX];
    TILE_LOOP(vi, vi, acc, MR, NP * PI, K4, vi_load(wp + (size_t)(q / PI) * ps + (size_t)kk * KERN_NR + (q % PI) * VI),
              vi_splat(x[(size_t)i * ldx + kk]), dot4_wx);
    UNROLL
    for (int q = 0; q < NP; q++)
        UNROLL
        for (int i = 0; i < MR; i++) {
            int32_t s[KERN_NR];
            memcpy(s, &acc[(i * NP + q) * PI], sizeof s);
            put16_i8(a, r + i, p + q, s);
        }
}

/* ---- AMX: tiles of 16 rows by 16 columns ---------------------------------------
 *
 * Eight tile registers: four accumulators C (two row tiles by two panels),
 * two activation tiles A (16 prepared rows, 64 bytes of each) and two weight
 * tiles B (16 rows of a panel: 16 columns by 64 bytes).  The packed panels are
 * already B tiles one after the other along k, and the prepared block is A
 * tiles padded with zeros, so a step along k is two A loads, two B loads and
 * four products: tdpbf16ps on bf16 pairs, tdpbusd on the int8 quads (exact,
 * the same integers as vpdpbusd).  A panel's last B tile may be short (k past
 * a multiple of 32 or 64): it is copied into a zeroed buffer first.  A tile's
 * configuration is per thread, so every product loads it and releases the
 * tiles when done. */
#if defined(KERN_AMX)
/* int8 products of fewer rows run on vpdpbusd (the same integers), which wastes no tile rows. */
#define AMX_I8_MIN_ROWS 8

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Accumulator and activation tiles of `rows` rows (fewer than 16 when the
 * whole product has fewer: they cost less to load, multiply and store),
 * weight tiles of 16. */
static void amx_configure(int rows)
{
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = (uint8_t)(t < 6 ? rows : 16);
    }
    _tile_loadconfig(&c);
}

/* The product of NA row tiles from row r with NB panels from panel p
 * (NA, NB in {1, 2}): C tiles 2a + b, A tiles 4 + a, B tiles 6 + b. */
#define AMX_BLOCK(NAME, DP, PUT, ACC_T)                                                                   \
    static void NAME(const gemm_args *a, int r, int na, int p, int nb)                                      \
    {                                                                                                       \
        const kmat *w = a->w;                                                                               \
        const int KW = (int)(w->panel_bytes / 64), full = KW / 16 * 16, ldx = a->ldx * 4;                   \
        const unsigned char *wp = w->data + (size_t)p * w->panel_bytes;                                     \
        const unsigned char *x = (const unsigned char *)a->x + (size_t)(r - a->r0) * ldx;                   \
        _tile_zero(0);                                                                                      \
        _tile_zero(1);                                                                                      \
        if (na == 2) {                                                                                      \
            _tile_zero(2);                                                                                  \
            _tile_zero(3);                                                                                  \
        }                                                                                                   \
        for (int kk = 0; kk < KW; kk += 16) {                                                               \
            unsigned char tail[2][1024] __attribute__((aligned(64)));                                       \
            const unsigned char *b0 = wp + (size_t)kk * 64, *b1 = b0 + w->panel_bytes;                      \
            if (kk == full) {                                                                               \
                memset(tail, 0, sizeof tail);                                                               \
                memcpy(tail[0], b0, (size_t)(KW - full) * 64);                                              \
                if (nb == 2)                                                                                \
                    memcpy(tail[1], b1, (size_t)(KW - full) * 64);                                          \
                b0 = tail[0], b1 = tail[1];                                                                 \
            }                                                                                               \
            _tile_loadd(4, x + (size_t)kk * 4, ldx);                                                        \
            _tile_loadd(6, b0, 64);                                                                         \
            DP(0, 4, 6);                                                                                    \
            if (nb == 2) {                                                                                  \
                _tile_loadd(7, b1, 64);                                                                     \
                DP(1, 4, 7);                                                                                \
            }                                                                                               \
            if (na == 2) {                                                                                  \
                _tile_loadd(5, x + (size_t)16 * ldx + (size_t)kk * 4, ldx);                                 \
                DP(2, 5, 6);                                                                                \
                if (nb == 2)                                                                                \
                    DP(3, 5, 7);                                                                            \
            }                                                                                               \
        }                                                                                                   \
        ACC_T c[4][16][16] __attribute__((aligned(64)));                                                    \
        _tile_stored(0, c[0], 64);                                                                          \
        if (nb == 2)                                                                                        \
            _tile_stored(1, c[1], 64);                                                                      \
        if (na == 2) {                                                                                      \
            _tile_stored(2, c[2], 64);                                                                      \
            if (nb == 2)                                                                                    \
                _tile_stored(3, c[3], 64);                                                                  \
        }                                                                                                   \
        for (int ta = 0; ta < na; ta++)                                                                     \
            for (int tb = 0; tb < nb; tb++)                                                                 \
                for (int i = 0; i < 16 && r + 16 * ta + i < a->r1; i++)                                     \
                    PUT(a, r + 16 * ta + i, p + tb, c[2 * ta + tb][i]);                                     \
    }

INLINE void put16_f(const gemm_args *a, int r, int p, const float *v) { put16(a, r, p, v); }
AMX_BLOCK(amx_block_bf16, _tile_dpbf16ps, put16_f, float)
AMX_BLOCK(amx_block_i8, _tile_dpbusd, put16_i8, int32_t)

typedef void (*amx_block_fn)(const gemm_args *a, int r, int na, int p, int nb);

/* Blocks of KERN_MB rows, prepared once each; pairs of panels, pairs of row tiles. */
static void gemm_amx(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                     bool accumulate, void *scratch, void (*prepare)(gemm_args *, int, void *), amx_block_fn block)
{
    gemm_args a = {.out = out, .ldo = ldo, .in = in, .ldi = ldi, .w = w, .bias = bias, .accumulate = accumulate};
    amx_configure(M < 16 ? M : 16);
    for (int r0 = 0; r0 < M; r0 += KERN_MB) {
        const int mb = M - r0 < KERN_MB ? M - r0 : KERN_MB;
        a.r0 = r0;
        a.r1 = r0 + mb;
        prepare(&a, mb, scratch);
        for (int p = 0; p < w->panels; p += 2)
            for (int r = r0; r < r0 + mb; r += 32)
                block(&a, r, r + 16 < r0 + mb ? 2 : 1, p, p + 1 < w->panels ? 2 : 1);
    }
    _tile_release();
}
#endif

/* ---- the product: blocks of rows, groups of panels, tiles ------------------- */

/* Row tile [r, r + MR) over the panels [p0, p1): tiles of NP panels, then single panels. */
#define SWEEP(TILE, MR, NP)                         \
    do {                                            \
        int p_ = p0;                                \
        for (; p_ + (NP) <= p1; p_ += (NP))         \
            TILE(a, r, p_, (MR), (NP));             \
        for (; p_ < p1; p_++)                       \
            TILE(a, r, p_, (MR), 1);                \
    } while (0)

/* NAME(a, r, mr, p0, p1): a tile of mr <= ROWS rows over panels [p0, p1). */
#define ROWS_FN(NAME, TILE, ROWS, NPF)                                              \
    static void NAME(const gemm_args *a, int r, int mr, int p0, int p1)             \
    {                                                                               \
        switch (mr) {                                                               \
        case 1: SWEEP(TILE, 1, NPF(1)); break;                                      \
        case 2: if (ROWS >= 2) SWEEP(TILE, 2, NPF(2)); break;                       \
        case 3: if (ROWS >= 3) SWEEP(TILE, 3, NPF(3)); break;                       \
        case 4: if (ROWS >= 4) SWEEP(TILE, 4, NPF(4)); break;                       \
        case 5: if (ROWS >= 5) SWEEP(TILE, 5, NPF(5)); break;                       \
        default: if (ROWS >= 6) SWEEP(TILE, 6, NPF(6)); break;                      \
        }                                                                           \
    }

ROWS_FN(rows_f32, tile_f32, F32_ROWS, F32_NP)
ROWS_FN(rows_i8, tile_i8, I8_ROWS, I8_NP)
#if defined(KERN_AMX)
#elif defined(__AVX512BF16__)
ROWS_FN(rows_nbf, tile_nbf, NBF_ROWS, NBF_NP)
#else
ROWS_FN(rows_wbf, tile_wbf, WBF_ROWS, WBF_NP)
#endif

typedef void (*rows_fn)(const gemm_args *a, int r, int mr, int p0, int p1);
typedef void (*prepare_fn)(gemm_args *a, int mb, void *scratch);

/* Blocks of KERN_MB rows (prepared once each), groups of panels, row tiles. */
static void gemm_blocks(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                        bool accumulate, void *scratch, prepare_fn prepare, rows_fn rows, int max_rows, int group)
{
    gemm_args a = {.out = out, .ldo = ldo, .in = in, .ldi = ldi, .w = w, .bias = bias, .accumulate = accumulate};
    for (int r0 = 0; r0 < M; r0 += KERN_MB) {
        const int mb = M - r0 < KERN_MB ? M - r0 : KERN_MB;
        a.r0 = r0;
        if (prepare)
            prepare(&a, mb, scratch);
        for (int g = 0; g < w->panels; g += group) {
            const int p1 = g + group < w->panels ? g + group : w->panels;
            int r = r0;
            for (; r + max_rows <= r0 + mb; r += max_rows)
                rows(&a, r, max_rows, g, p1);
            if (r < r0 + mb)
                rows(&a, r, r0 + mb - r, g, p1);
        }
    }
}

static void gemm_f32(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                     bool accumulate, void *scratch)
{
    gemm_blocks(out, ldo, in, ldi, w, bias, M, accumulate, scratch, NULL, rows_f32, F32_ROWS, F32_GROUP);
}

static void gemm_bf16(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                      bool accumulate, void *scratch)
{
#if defined(KERN_AMX)
    gemm_amx(out, ldo, in, ldi, w, bias, M, accumulate, scratch, prepare_nbf, amx_block_bf16);
#elif defined(__AVX512BF16__)
    gemm_blocks(out, ldo, in, ldi, w, bias, M, accumulate, scratch, prepare_nbf, rows_nbf, NBF_ROWS, NBF_GROUP);
#else
    gemm_blocks(out, ldo, in, ldi, w, bias, M, accumulate, scratch, NULL, rows_wbf, WBF_ROWS, WBF_GROUP);
#endif
}

static void gemm_i8(float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
                    bool accumulate, void *scratch)
{
#if defined(KERN_AMX)
    if (M >= AMX_I8_MIN_ROWS) {
        gemm_amx(out, ldo, in, ldi, w, bias, M, accumulate, scratch, prepare_i8, amx_block_i8);
        return;
    }
#endif
    gemm_blocks(out, ldo, in, ldi, w, bias, M, accumulate, scratch, prepare_i8, rows_i8, I8_ROWS, I8_GROUP);
}

/* ---- recurrent cells ---------------------------------------------------------- */

INLINE void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* The gate activations VW units at a time, then the H % VW rest one by one. */
static void cell_update(int cell, int H, const float *gi, const float *gh, float *h, float *c)
{
    const int HV = H / VW * VW;
    switch (cell) {
    case 0: /* elman */
        for (int j = 0; j < HV; j += VW)
            vf_store(h + j, vf_tanh(vf_load(gi + j) + vf_load(gh + j)));
        for (int j = HV; j < H; j++)
            h[j] = fast_tanhf(gi[j] + gh[j]);
        break;
    case 1: /* gru: gate rows r, z, n */
        for (int j = 0; j < HV; j += VW) {
            vf r = vf_sigmoid(vf_load(gi + j) + vf_load(gh + j));
            vf z = vf_sigmoid(vf_load(gi + H + j) + vf_load(gh + H + j));
            vf n = vf_tanh(vf_load(gi + 2 * H + j) + r * vf_load(gh + 2 * H + j));
            vf_store(h + j, (1.0f - z) * n + z * vf_load(h + j));
        }
        for (int j = HV; j < H; j++) {
            float r = sigmoidf(gi[j] + gh[j]);
            float z = sigmoidf(gi[H + j] + gh[H + j]);
            float n = fast_tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
            h[j] = (1.0f - z) * n + z * h[j];
        }
        break;
    default: /* lstm: gate rows i, f, g, o */
        for (int j = 0; j < HV; j += VW) {
            vf i = vf_sigmoid(vf_load(gi + j) + vf_load(gh + j));
            vf f = vf_sigmoid(vf_load(gi + H + j) + vf_load(gh + H + j));
            vf g = vf_tanh(vf_load(gi + 2 * H + j) + vf_load(gh + 2 * H + j));
            vf o = vf_sigmoid(vf_load(gi + 3 * H + j) + vf_load(gh + 3 * H + j));
            vf cv = f * vf_load(c + j) + i * g;
            vf_store(c + j, cv);
            vf_store(h + j, o * vf_tanh(cv));
        }
        for (int j = HV; j < H; j++) {
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

static void tanh_inplace(float *x, size_t n)
{
    size_t i = 0;
    for (; i + VW <= n; i += VW)
        vf_store(x + i, vf_tanh(vf_load(x + i)));
    for (; i < n; i++)
        x[i] = fast_tanhf(x[i]);
}

/* ---- the peak: the products' instructions on independent accumulators -------- */

static double thread_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Enough independent chains to cover the latency of two pipes. */
#define PEAK_ACCS (VW == 16 ? 16 : 8)
#define PEAK_ROUNDS 4096

/* Runs STEP(acc[i]) on every accumulator PEAK_ROUNDS times per pass until
 * `seconds` have gone; MACS is the multiply-adds of one STEP.  The result is
 * kept (sink) so that the loop cannot be dropped. */
#define PEAK_LOOP(T, INIT, STEP, MACS)                                                    \
    do {                                                                                  \
        T acc[PEAK_ACCS];                                                                 \
        for (int i_ = 0; i_ < PEAK_ACCS; i_++)                                            \
            acc[i_] = INIT;                                                               \
        double t0 = thread_seconds(), t;                                                  \
        long passes = 0;                                                                  \
        do {                                                                              \
            for (int r_ = 0; r_ < PEAK_ROUNDS; r_++) {                                    \
                UNROLL                                                                    \
                for (int i_ = 0; i_ < PEAK_ACCS; i_++)                                    \
                    acc[i_] = STEP(acc[i_]);                                              \
            }                                                                             \
            passes++;                                                                     \
        } while ((t = thread_seconds() - t0) < seconds);                                  \
        uint32_t kept_ = 0;                                                               \
        UNROLL                                                                            \
        for (int i_ = 0; i_ < PEAK_ACCS; i_++) {                                          \
            uint32_t v_;                                                                  \
            memcpy(&v_, &acc[i_], sizeof v_);                                             \
            kept_ ^= v_;                                                                  \
        }                                                                                 \
        sink = kept_;                                                                     \
        return (double)passes * PEAK_ROUNDS * PEAK_ACCS * (MACS) / t;                     \
    } while (0)

static volatile uint32_t sink;

static double peak_f32(double seconds)
{
    const vf w = vf_splat(1.0f), x = vf_splat(1e-7f);
#define STEP_F32(a) fma_f32(a, w, x)
    PEAK_LOOP(vf, (vf){0}, STEP_F32, VW);
}

#if defined(KERN_AMX)
/* Four accumulator tiles, each product 16 rows by 16 columns by a 64-byte row (32 bf16 pairs' worth of k, or 64 int8). */
#define PEAK_AMX(DP, MACS)                                                                \
    do {                                                                                  \
        static const unsigned char zeros[1024] __attribute__((aligned(64)));             \
        amx_configure(16);                                                                \
        _tile_loadd(4, zeros, 64);                                                        \
        _tile_loadd(5, zeros, 64);                                                        \
        _tile_loadd(6, zeros, 64);                                                        \
        _tile_loadd(7, zeros, 64);                                                        \
        _tile_zero(0);                                                                    \
        _tile_zero(1);                                                                    \
        _tile_zero(2);                                                                    \
        _tile_zero(3);                                                                    \
        double t0 = thread_seconds(), t;                                                  \
        long passes = 0;                                                                  \
        do {                                                                              \
            for (int r_ = 0; r_ < PEAK_ROUNDS / 16; r_++) {                               \
                DP(0, 4, 6);                                                              \
                DP(1, 4, 7);                                                              \
                DP(2, 5, 6);                                                              \
                DP(3, 5, 7);                                                              \
            }                                                                             \
            passes++;                                                                     \
        } while ((t = thread_seconds() - t0) < seconds);                                  \
        _tile_release();                                                                  \
        return (double)passes * (PEAK_ROUNDS / 16) * 4 * (MACS) / t;                      \
    } while (0)
static double peak_bf16(double seconds) { PEAK_AMX(_tile_dpbf16ps, 16 * 16 * 32); }
static double peak_i8(double seconds) { PEAK_AMX(_tile_dpbusd, 16 * 16 * 64); }
#else
static double peak_i8(double seconds)
{
    const vi w = vi_splat(0x01010101), x = vi_splat(0x02020202);
#define STEP_I8(a) dot4(a, x, w)
    PEAK_LOOP(vi, (vi){0}, STEP_I8, 4 * VI);
}
#if defined(__AVX512BF16__)
static double peak_bf16(double seconds)
{
    const vu w = vu_splat(0x3f803f80u), x = vu_splat(0x33d633d6u);
#define STEP_BF16(a) dot_bf16(a, w, x)
    PEAK_LOOP(vf, (vf){0}, STEP_BF16, 2 * VW);
}
#else
/* Widened bf16 is f32 multiply-adds on weights unpacked with a shift and a mask. */
static double peak_bf16(double seconds) { return peak_f32(seconds); }
#endif
#endif

static double peak_macs(kern_prec p, double seconds)
{
    switch (p) {
    case KERN_F32: return peak_f32(seconds);
    case KERN_BF16: return peak_bf16(seconds);
    default: return peak_i8(seconds);
    }
}

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)

const kern_ops CAT(kern_ops_, KERN_ISA) = {
    .name = STR(KERN_ISA),
#if defined(KERN_AMX)
    .how = {"fma", "AMX tdpbf16ps", "AMX tdpbusd, vpdpbusd below " STR(AMX_I8_MIN_ROWS) " rows"},
    .bf16_rounds_inputs = true,
#elif defined(__AVX512BF16__)
    .how = {"fma", "vdpbf16ps", "vpdpbusd"},
    .bf16_rounds_inputs = true,
#elif defined(__AVX512VNNI__)
    .how = {"fma", "widened to f32, fma", "vpdpbusd"},
#elif defined(__AVX2__)
    .how = {"fma", "widened to f32, fma", "vpmaddubsw"},
#else
    .how = {"vector multiply-add", "widened to f32", "scalar"},
#endif
    .gemm = {gemm_f32, gemm_bf16, gemm_i8},
    .cell_update = cell_update,
    .tanh_inplace = tanh_inplace,
    .peak_macs = peak_macs,
};
