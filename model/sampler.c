/* sampler.c -- see sampler.h.
 *
 * Candidates are ordered by probability (then id) with a full sort: the byte
 * vocabulary is 257 entries, so this costs less than one output projection.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

/* A token and its probability; qsort has no context argument, so they travel together. */
typedef struct {
    float p;
    int id;
} cand;

struct sampler {
    int n;
    cand c[]; /* [n] candidates, most likely first after sorting */
};

sampler *sampler_new(int n)
{
    sampler *s = n > 0 ? calloc(1, sizeof *s + (size_t)n * sizeof *s->c) : NULL;
    if (s)
        s->n = n;
    return s;
}

void sampler_free(sampler *s) { free(s); }

int sampler_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

void sampler_adjust(float *logits, int n, const sampler_penalties *p, const int *window, const int *counts,
                    const float *bias)
{
    const float rep = p ? p->repetition : 1.0f;
    if (window && rep != 1.0f)
        for (int i = 0; i < n; i++)
            if (window[i] > 0)
                logits[i] = logits[i] > 0.0f ? logits[i] / rep : logits[i] * rep;
    if (p && counts && (p->presence != 0.0f || p->frequency != 0.0f))
        for (int i = 0; i < n; i++)
            if (counts[i] > 0)
                logits[i] -= p->presence + p->frequency * (float)counts[i];
    if (bias)
        for (int i = 0; i < n; i++)
            logits[i] += bias[i];
}

int sampler_sample(sampler *s, const float *logits, const sampler_params *p, float coin)
{
    const int n = s->n;
    if (!(p->temperature > 0.0f))
        return sampler_argmax(logits, n);

    cand *c = s->c;
    float mx = logits[sampler_argmax(logits, n)];
    if (!(mx > -INFINITY)) /* nothing possible: the lowest id, as greedy would say */
        return sampler_argmax(logits, n);
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        c[i] = (cand){expf((logits[i] - mx) / p->temperature), i};
        sum += c[i].p;
    }
    for (int i = 0; i < n; i++)
        c[i].p = (float)(c[i].p / sum);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    if (k == n && !(p->top_p < 1.0f)) {
        /* Nothing is cut: walk the distribution in id order, no sort needed. */
        double r = (double)coin, cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (r < cum && c[i].p > 0.0f)
                return i;
        }
        for (int i = n - 1; i > 0; i--) /* rounding left r past the end: the last possible token */
            if (c[i].p > 0.0f)
                return i;
        return 0;
    }
    qsort(c, (size_t)n, sizeof *c, cmp_cand);

    double kept = 0.0;
    for (int i = 0; i < k; i++)
        kept += c[i].p;
    if (p->top_p < 1.0f) {
        /* smallest prefix whose share of the top-k mass reaches top_p (one token for 0) */
        double cum = 0.0, target = p->top_p * kept;
        int m = 0;
        while (m < k) {
            cum += c[m++].p;
            if (cum >= target)
                break;
        }
        k = m;
        kept = cum;
    }
    double r = (double)coin * kept, cum = 0.0;
    int pick = c[k - 1].id;
    for (int i = 0; i < k; i++) {
        cum += c[i].p;
        if (r < cum) {
            pick = c[i].id;
            break;
        }
    }
    return pick;
}
