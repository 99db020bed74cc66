/* rng.h -- splitmix64: a small, fast generator whose whole state is one word.
 *
 * Used for sampling (one generator per sequence, seeded from the request, so
 * a seed reproduces its tokens whatever else is decoded) and for request ids.
 * Header-only: the functions are a few instructions each.
 */
#ifndef ATTNLM_RNG_H
#define ATTNLM_RNG_H

#include <stdint.h>

#define RNG_GOLDEN 0x9E3779B97F4A7C15ull /* splitmix64's increment, 2^64 / phi */

/* splitmix64's output function: a well-mixed 64-bit value of x. */
static inline uint64_t rng_mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The first value of a generator seeded with x: a hash of x. */
static inline uint64_t rng_hash(uint64_t x) { return rng_mix(x + RNG_GOLDEN); }

/* Advances the state and returns the next value. */
static inline uint64_t rng_next(uint64_t *state) { return rng_mix(*state += RNG_GOLDEN); }

/* Uniform in [0, 1) with 24 bits of precision. */
static inline float rng_uniform(uint64_t *state)
{
    return (float)(rng_next(state) >> 40) * (1.0f / 16777216.0f);
}

#endif
