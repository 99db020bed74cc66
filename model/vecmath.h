/* vecmath.h -- exp, sigmoid and tanh for the engine, as scalars and on
 * vectors of any width (instantiated for 16 floats here, and for the
 * registers' width by kernels_isa.c).
 *
 * Everything here is inline so each caller's vector code keeps it in
 * registers.  The vector functions are meant for code compiled for one
 * instruction set as a whole (kernels_isa.c), where passing them between
 * inlined helpers costs nothing.
 */
#ifndef ATTNLM_VECMATH_H
#define ATTNLM_VECMATH_H

#include <stdint.h>
#include <string.h>

/* Vectors of 16, 8 and 4 floats. */
typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* exp for the activations: Cody-Waite reduction to |r| <= ln2/2 and a degree-6
 * polynomial (relative error about 2e-7), inlined.  libm's expf and tanhf (via
 * expm1f) cost a call each and were a fifth of scoring time.  Inputs are
 * clamped to [-87, 88], whose results are normal floats; NaN (only reachable
 * from overflowing weights) is clamped too, so the int conversion is defined. */
/* The reduction's and the polynomial's constants, shared by both versions. */
#define EXP_LOG2E 1.44269504f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO 2.12194440e-4f
#define EXP_P6 1.9875691500e-4f
#define EXP_P5 1.3981999507e-3f
#define EXP_P4 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P2 1.6666665459e-1f
#define EXP_P1 5.0000001201e-1f
/* e^r for |r| <= ln2/2, by Horner's rule; r may be a float or a v16. */
#define EXP_POLY(r) \
    (((((((EXP_P6 * (r) + EXP_P5) * (r) + EXP_P4) * (r) + EXP_P3) * (r) + EXP_P2) * (r) + EXP_P1) * (r)) * (r) + (r) + 1.0f)

static inline float fast_expf(float x)
{
    x = !(x > -87.0f) ? -87.0f : x > 88.0f ? 88.0f : x;
    /* k = round(x / ln2): truncating a positive number is floor, hence the +127. */
    int k = (int)(x * EXP_LOG2E + 127.5f) - 127;
    float r = x - (float)k * EXP_LN2_HI + (float)k * EXP_LN2_LO;
    float p = EXP_POLY(r);
    union {
        uint32_t u;
        float f;
    } scale = {.u = (uint32_t)(k + 127) << 23};
    return p * scale.f;
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + fast_expf(-x)); }

/* Absolute error about 1e-7; exact +-1 in the tails. */
static inline float fast_tanhf(float x) { return 1.0f - 2.0f / (fast_expf(2.0f * x) + 1.0f); }

/* fast_expf's steps on whole vectors (GCC does not vectorize loops over the
 * scalar version itself: their trip count is only known at run time, and -O2
 * will not add the remainder loop that needs).  VECMATH_VECTOR(VF, VI, P)
 * defines P_exp, P_sigmoid and P_tanh for a vector type VF of floats and VI
 * of 32-bit integers with as many lanes.  Code compiled for one instruction
 * set should use its registers' width: GCC compiles the comparisons of
 * vectors wider than the registers lane by lane, ten times slower. */
#define VECMATH_VECTOR(VF, VI, P)                                                                  \
    static inline __attribute__((always_inline)) VF P##_exp(VF x)                                 \
    {                                                                                              \
        VI keep = x > -87.0f; /* false for NaN too, as in fast_expf */                             \
        x = (VF)(((VI)x & keep) | ((VI)((VF){0} - 87.0f) & ~keep));                                \
        VI big = x > 88.0f;                                                                        \
        x = (VF)(((VI)((VF){0} + 88.0f) & big) | ((VI)x & ~big));                                  \
        VI k = __builtin_convertvector(x * EXP_LOG2E + 127.5f, VI) - 127;                          \
        VF kf = __builtin_convertvector(k, VF);                                                    \
        VF r = x - kf * EXP_LN2_HI + kf * EXP_LN2_LO;                                              \
        VF p = EXP_POLY(r);                                                                        \
        return p * (VF)((k + 127) << 23);                                                          \
    }                                                                                              \
    static inline __attribute__((always_inline)) VF P##_sigmoid(VF x) { return 1.0f / (1.0f + P##_exp(-x)); } \
    static inline __attribute__((always_inline)) VF P##_tanh(VF x) { return 1.0f - 2.0f / (P##_exp(2.0f * x) + 1.0f); }

/* The 16-float instance. */
typedef int32_t v16i __attribute__((vector_size(64)));
VECMATH_VECTOR(v16, v16i, v16)

static inline __attribute__((always_inline)) v16 v16_splat(float x)
{
    return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

static inline __attribute__((always_inline)) v16 v16_load(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void v16_store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

#endif
