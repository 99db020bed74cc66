/* sampler.h -- choosing the next token from logits: greedy, temperature, top-k, top-p.
 *
 * Sampling is a pure function of the logits, the parameters and one uniform
 * random number, so a test can pin the outcome; the random number comes from
 * a per-request generator (common/rng.h), so the same seed gives the same tokens
 * whatever else is decoded alongside.  A sampler holds scratch for one
 * vocabulary size and belongs to one thread at a time.
 */
#ifndef ATTNLM_SAMPLER_H
#define ATTNLM_SAMPLER_H

/* How to pick a token. */
typedef struct sampler_params {
    float temperature; /* <= 0: greedy (argmax) */
    int top_k;         /* keep the k most likely tokens; <= 0: all */
    float top_p;       /* keep the smallest set whose probability reaches p (0: the top token; >= 1: all) */
} sampler_params;

typedef struct sampler sampler;

/* Scratch for a vocabulary of n tokens; NULL on out of memory.  Free with sampler_free. */
sampler *sampler_new(int n);
void sampler_free(sampler *s);

/* Picks a token from logits[n] with coin in [0, 1).  Ties go to the lower id. */
int sampler_sample(sampler *s, const float *logits, const sampler_params *p, float coin);

/* Index of the largest of x[n]; the lowest index among equals. */
int sampler_argmax(const float *x, int n);

#endif
