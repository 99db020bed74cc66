/* sampler.h -- choosing the next token from logits: penalties on tokens already
 * seen, a bias per token, then greedy, temperature, top-k, top-p.
 *
 * Sampling is a pure function of the logits, the parameters (with the
 * counts of tokens seen) and one uniform random number, so a test can pin the
 * outcome; the random number comes from
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

/* Penalties on tokens already seen, with the conventions of the OpenAI API
 * (presence, frequency) and of llama.cpp and TGI (repetition). */
typedef struct sampler_penalties {
    float presence;   /* subtracted once from a token counted at least once */
    float frequency;  /* subtracted once per time a token was counted */
    float repetition; /* > 0, 1 = off: a counted token's positive logit is divided by it, a negative one multiplied */
} sampler_penalties;

typedef struct sampler sampler;

/* Adjusts logits[n] in place before sampling, in this order:
 *   repetition for every token t with window[t] > 0 (the tokens of the recent window),
 *   logit -= presence * (counts[t] > 0) + frequency * counts[t],
 *   logit += bias[t], where a bias of -INFINITY bans t.
 * window, counts and bias may be NULL (nothing to do for that part).  A
 * logit of -INFINITY stays -INFINITY.  O(n); allocates nothing. */
void sampler_adjust(float *logits, int n, const sampler_penalties *p, const int *window, const int *counts,
                    const float *bias);

/* Scratch for a vocabulary of n tokens; NULL on out of memory.  Free with sampler_free. */
sampler *sampler_new(int n);
void sampler_free(sampler *s);

/* Picks a token from logits[n] with coin in [0, 1).  Ties go to the lower id;
 * if every logit is -INFINITY (no token possible), the lowest id. */
int sampler_sample(sampler *s, const float *logits, const sampler_params *p, float coin);

/* Index of the largest of x[n]; the lowest index among equals. */
int sampler_argmax(const float *x, int n);

#endif
