/* test_sampler.c -- greedy, temperature, top-k, top-p and the seeded generator. */
#include "rng.h"
#include "sampler.h"

#include "check_main.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define V 257

static void random_logits(float *x, uint64_t seed)
{
    for (int i = 0; i < V; i++)
        x[i] = 6.0f * rng_uniform(&seed) - 3.0f;
}

/* Random logits from seed, and their ids ordered by logit, highest first (ties: lower id first). */
static void random_ranked(float *x, int *order, uint64_t seed)
{
    random_logits(x, seed);
    for (int i = 0; i < V; i++)
        order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (x[order[j]] > x[order[i]] || (x[order[j]] == x[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
}

/* x[i] <- v for every token. */
static void flat_logits(float *x, float v)
{
    for (int i = 0; i < V; i++)
        x[i] = v;
}

/* prob[i] <- softmax(x)[i] at temperature 1. */
static void softmax_of(const float *x, double *prob)
{
    double sum = 0.0, mx = x[0];
    for (int i = 1; i < V; i++)
        mx = fmax(mx, x[i]);
    for (int i = 0; i < V; i++)
        sum += prob[i] = exp((double)x[i] - mx);
    for (int i = 0; i < V; i++)
        prob[i] /= sum;
}

/* The size of the nucleus of top_p over ranked probabilities: the smallest
 * prefix of order whose probability reaches p (less slack), at least one token. */
static int nucleus_size(const double *prob, const int *order, double p, double slack)
{
    int n = 1;
    for (double cum = prob[order[0]]; cum < p * (1 - slack) && n < V;)
        cum += prob[order[n++]];
    return n;
}

/* Samples a token with p and returns its rank in order (0: the most likely). */
static int sampled_rank(sampler *s, const float *x, const int *order, const sampler_params *p, uint64_t *rng)
{
    int tok = sampler_sample(s, x, p, rng_uniform(rng));
    int r = 0;
    while (order[r] != tok)
        r++;
    return r;
}

/* Samples n tokens with p, marks the ranks drawn in hit[V] and returns the
 * largest rank drawn. */
static int sample_ranks(sampler *s, const float *x, const int *order, const sampler_params *p, uint64_t *rng, int n,
                        int *hit)
{
    int top = 0;
    for (int i = 0; i < n; i++) {
        int r = sampled_rank(s, x, order, p, rng);
        hit[r] = 1;
        top = r > top ? r : top;
    }
    return top;
}

START_TEST(test_temperature_zero_is_argmax)
{
    sampler *s = sampler_new(V);
    float x[V];
    for (int trial = 0; trial < 20; trial++) {
        random_logits(x, (uint64_t)trial + 1);
        int want = 0;
        for (int i = 1; i < V; i++)
            if (x[i] > x[want])
                want = i;
        sampler_params p = {0.0f, 0, 1.0f};
        for (float coin = 0.0f; coin < 1.0f; coin += 0.1f)
            ck_assert_int_eq(sampler_sample(s, x, &p, coin), want);
        p.temperature = -1.0f; /* any non-positive temperature is greedy */
        ck_assert_int_eq(sampler_sample(s, x, &p, 0.99f), want);
    }
    float ties[V] = {0};
    ties[7] = ties[3] = 1.0f;
    ck_assert_int_eq(sampler_argmax(ties, V), 3);
    sampler_free(s);
}
END_TEST

/* Sampling never leaves its set: the k likeliest tokens under top_k, the
 * nucleus under top_p; and a flat-ish distribution visits every member of a
 * small top-k set. */
START_TEST(test_truncation_stays_in_set)
{
    static const sampler_params params[] = {{1.5f, 1, 1.0f}, {1.5f, 2, 1.0f}, {1.5f, 5, 1.0f}, {1.5f, 40, 1.0f},
                                            {1.0f, 0, 0.0f}, {1.0f, 0, 0.1f}, {1.0f, 0, 0.5f}, {1.0f, 0, 0.9f}};
    sampler *s = sampler_new(V);
    float x[V];
    int order[V];
    double prob[V];
    uint64_t rng = 99;
    for (int trial = 0; trial < 10; trial++) {
        random_ranked(x, order, (uint64_t)trial + 100);
        softmax_of(x, prob); /* at temperature 1, that of the top_p settings */
        for (size_t i = 0; i < sizeof params / sizeof *params; i++) {
            const sampler_params *p = &params[i];
            int set = p->top_k ? p->top_k : nucleus_size(prob, order, p->top_p, 1e-6);
            int hit[V] = {0}, top = sample_ranks(s, x, order, p, &rng, 2000, hit), distinct = 0;
            ck_assert_msg(top < set, "top_k %d top_p %g chose rank %d of a set of %d", p->top_k, p->top_p, top, set);
            for (int r = 0; r < V; r++)
                distinct += hit[r];
            if (p->top_k && p->top_k <= 5)
                ck_assert_int_eq(distinct, p->top_k);
        }
    }
    sampler_free(s);
}
END_TEST

/* The exact nucleus, token by token: sampling is a function of the coin, so
 * the coin at the middle of member j's share of the nucleus must give
 * exactly the j-th most likely token, and a coin just below 1 the last
 * member.  A nucleus cut short or run long, or mass renormalised wrongly,
 * moves these picks. */
START_TEST(test_top_p_exact_nucleus)
{
    sampler *s = sampler_new(V);
    float x[V];
    int order[V];
    const float ps[] = {0.05f, 0.3f, 0.5f, 0.8f, 0.95f};
    for (int trial = 0; trial < 10; trial++) {
        random_ranked(x, order, (uint64_t)trial + 300);
        double prob[V];
        softmax_of(x, prob);
        for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
            int nucleus = nucleus_size(prob, order, ps[pi], 0.0);
            double kept = 0.0;
            for (int j = 0; j < nucleus; j++)
                kept += prob[order[j]];
            sampler_params p = {1.0f, 0, ps[pi]};
            double below = 0.0;
            for (int j = 0; j < nucleus; j++) {
                double share = prob[order[j]];
                float coin = (float)((below + share / 2) / kept);
                ck_assert_msg(sampler_sample(s, x, &p, coin) == order[j], "top_p %g, coin %g: want rank %d of %d",
                              ps[pi], coin, j, nucleus);
                below += share;
            }
            ck_assert_int_eq(sampler_sample(s, x, &p, nextafterf(1.0f, 0.0f)), order[nucleus - 1]);
        }
    }
    sampler_free(s);
}
END_TEST

/* top_k under ties: equal logits rank by id, so the set is exactly the k lowest ids among them. */
START_TEST(test_top_k_exact_under_ties)
{
    sampler *s = sampler_new(V);
    float x[V];
    flat_logits(x, -2.0f);
    const int tied[] = {200, 40, 90, 10}; /* equal best: ranked 10, 40, 90, 200 */
    for (size_t i = 0; i < sizeof tied / sizeof *tied; i++)
        x[tied[i]] = 3.0f;
    sampler_params p = {1.0f, 3, 1.0f};
    const int want[3] = {10, 40, 90};
    for (int j = 0; j < 3; j++)
        ck_assert_int_eq(sampler_sample(s, x, &p, (float)(j + 0.5) / 3.0f), want[j]);
    ck_assert_int_eq(sampler_sample(s, x, &p, nextafterf(1.0f, 0.0f)), 90);
    p.top_k = 5; /* the four tied, then the lowest id of the rest */
    ck_assert_int_eq(sampler_sample(s, x, &p, nextafterf(1.0f, 0.0f)), 0);
    sampler_free(s);
}
END_TEST

/* Frequencies follow softmax(x / T): a chi-square check with a fixed seed. */
START_TEST(test_temperature_distribution)
{
    sampler *s = sampler_new(V);
    float x[V];
    flat_logits(x, -30.0f); /* all but the three below as good as never */
    x[10] = 1.0f, x[20] = 0.0f, x[30] = -1.0f;
    sampler_params p = {2.0f, 0, 1.0f};
    double z = exp(0.5) + 1.0 + exp(-0.5), expect[3] = {exp(0.5) / z, 1.0 / z, exp(-0.5) / z};
    int count[3] = {0}, n = 20000;
    uint64_t rng = 2024;
    for (int i = 0; i < n; i++) {
        int tok = sampler_sample(s, x, &p, rng_uniform(&rng));
        ck_assert(tok == 10 || tok == 20 || tok == 30);
        count[(tok - 10) / 10]++;
    }
    double chi2 = 0.0;
    for (int k = 0; k < 3; k++)
        chi2 += pow(count[k] - n * expect[k], 2) / (n * expect[k]);
    ck_assert_msg(chi2 < 13.8, "chi-square %g over 2 degrees of freedom", chi2); /* p = 0.001 */
    sampler_free(s);
}
END_TEST

START_TEST(test_seed_reproduces)
{
    sampler *s = sampler_new(V);
    float x[V];
    random_logits(x, 77);
    sampler_params p = {0.9f, 50, 0.95f};
    int a[64], b[64], c[64];
    uint64_t r1 = 12345, r2 = 12345, r3 = 54321;
    for (int i = 0; i < 64; i++) {
        a[i] = sampler_sample(s, x, &p, rng_uniform(&r1));
        b[i] = sampler_sample(s, x, &p, rng_uniform(&r2));
        c[i] = sampler_sample(s, x, &p, rng_uniform(&r3));
    }
    ck_assert_mem_eq(a, b, sizeof a);
    int same = 0;
    for (int i = 0; i < 64; i++)
        same += a[i] == c[i];
    ck_assert_int_lt(same, 64);
    sampler_free(s);
}
END_TEST

START_TEST(test_rng_range)
{
    uint64_t st = 0;
    double sum = 0.0;
    for (int i = 0; i < 100000; i++) {
        float u = rng_uniform(&st);
        ck_assert(u >= 0.0f && u < 1.0f);
        sum += u;
    }
    ck_assert(fabs(sum / 100000 - 0.5) < 0.01);
    sampler_free(NULL);
}
END_TEST

int main(void)
{
    return CHECK_MAIN("sampler", test_temperature_zero_is_argmax, test_truncation_stays_in_set,
                      test_top_p_exact_nucleus, test_top_k_exact_under_ties, test_temperature_distribution,
                      test_seed_reproduces, test_rng_range);
}
