/* test_prefix.c -- the prefix-state cache: a pass that starts from a cached
 * state gives bit-for-bit the numbers of a pass from the start, at every
 * precision, alone or in a batch, from any thread; the cache stays within its
 * bytes and forgets a model on request.
 */
#include "model.h"
#include "prefix.h"
#include "testutil.h"

#include "check_main.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Window 5 and 80 (longer than a block of the pass); every cell and mechanism. */
static const char *const MODELS[] = {"gru_dot", "lstm_additive", "elman_cosine", "wide_gru_multihead",
                                     "long_lstm_multihead", "gru_dot_cont", "wide_lstm_multihead_cont",
                                     "long_elman_cosine_cont"};
#define N_MODELS ((int)(sizeof MODELS / sizeof *MODELS))

static model *load(int i, model_precision prec) { return fixture_model(MODELS[i], prec); }

/* Deterministic pseudo-random tokens, BOS first. */
static void fill_tokens(int *tok, int n, unsigned seed)
{
    tok[0] = 256;
    for (int i = 1; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        tok[i] = (int)((seed >> 16) % 256);
    }
}

/* What a pass from the start gives for tok[0 .. n): log-probabilities, and
 * the logits of one more token stepped from the end state (which shows the
 * state, opaque here, bit for bit). */
typedef struct outcome {
    float *lp;
    float *next;
} outcome;

static void outcome_free(outcome *o)
{
    free(o->lp);
    free(o->next);
}

static outcome run(const model *m, prefix_cache *pc, const int *tok, int n, bool want_lp, int *reused)
{
    const int V = model_get_config(m)->vocab;
    char err[ATTNLM_ERR_LEN];
    outcome o = {want_lp ? malloc((size_t)n * V * sizeof(float)) : NULL, malloc((size_t)V * sizeof(float))};
    model_seq *s = model_seq_new(m);
    model_batch *b = model_batch_new(m, 1);
    int r = -1, next = 65;
    ck_assert_int_eq(model_forward_cached(m, pc, 1, &tok, &n, &o.lp, &s, &r, err, sizeof err), 0);
    ck_assert_int_eq((int)model_seq_pos(s), n);
    ck_assert_int_eq(model_step(m, b, &s, &next, 1, o.next, NULL, err, sizeof err), 0);
    if (reused)
        *reused = r;
    model_batch_free(b);
    model_seq_free(s);
    return o;
}

static void assert_same(const model *m, const outcome *a, const outcome *b, int n, const char *what)
{
    const size_t V = (size_t)model_get_config(m)->vocab;
    const char *name = model_precision_name(model_get_precision(m));
    if (a->lp && b->lp)
        ck_assert_msg(memcmp(a->lp, b->lp, (size_t)n * V * sizeof(float)) == 0, "%s %s: log-probabilities differ",
                      what, name);
    ck_assert_msg(memcmp(a->next, b->next, V * sizeof(float)) == 0, "%s %s: end state differs", what, name);
}

/* Each request against the cache equals the same request without it, and
 * takes what earlier requests left: a longer text, a different continuation
 * of a shared prefix, a repeat, and log-probabilities after a pass that
 * cached states without them. */
START_TEST(test_cached_equals_uncached)
{
    model *m = load(_i / MODEL_PRECISION_COUNT, (model_precision)(_i % MODEL_PRECISION_COUNT));
    prefix_cache *pc = prefix_cache_new(64u << 20);
    enum { NA = 250, NB = 300, NC = 280, ND = 200, NE = 230 };
    int a[NB], c[NC], d[NE];
    fill_tokens(a, NB, 11u + (unsigned)_i);
    fill_tokens(c, NC, 12u + (unsigned)_i);
    memcpy(c, a, 200 * sizeof *c); /* c shares a's first 200 tokens */
    fill_tokens(d, NE, 13u + (unsigned)_i);
    struct {
        const int *tok;
        int n;
        bool lp;
        int reused; /* expected */
        const char *what;
    } steps[] = {
        {a, NA, true, 0, "first"},
        {a, NB, true, 192, "longer"},
        {c, NC, true, 192, "other continuation"},
        {a, NB, true, 256, "repeat"},
        {a, 64, true, 0, "one chunk"},
        {a, 65, true, 64, "one chunk and a token"},
        {d, ND, false, 0, "without log-probabilities"},
        {d, NE, true, 0, "log-probabilities after a pass without"},
        {d, NE, true, 192, "log-probabilities again"},
        {d, ND, false, 192, "states alone"},
    };
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        int reused = -1;
        outcome want = run(m, NULL, steps[k].tok, steps[k].n, steps[k].lp, NULL);
        outcome got = run(m, pc, steps[k].tok, steps[k].n, steps[k].lp, &reused);
        ck_assert_msg(reused == steps[k].reused, "%s %s: reused %d, expected %d", MODELS[_i / MODEL_PRECISION_COUNT],
                      steps[k].what, reused, steps[k].reused);
        assert_same(m, &want, &got, steps[k].n, steps[k].what);
        outcome_free(&want);
        outcome_free(&got);
    }
    prefix_stats st;
    prefix_cache_stats(pc, &st);
    ck_assert_uint_gt(st.entries, 0);
    ck_assert_uint_le(st.bytes, st.limit);
    prefix_cache_forget(pc, m);
    prefix_cache_stats(pc, &st);
    ck_assert_uint_eq(st.entries, 0);
    ck_assert_uint_eq(st.bytes, 0);
    prefix_cache_free(pc);
    model_free(m);
}
END_TEST

/* Several sequences in one cached pass, some resumed, some not, equal each alone. */
START_TEST(test_cached_batch)
{
    model *m = load(_i, MODEL_F32);
    const int V = model_get_config(m)->vocab;
    prefix_cache *pc = prefix_cache_new(64u << 20);
    enum { NS = 4 };
    int tok[NS][400], lens[NS] = {300, 129, 40, 390}, reused[NS];
    const int *tp[NS];
    float *lp[NS];
    char err[ATTNLM_ERR_LEN];
    for (int b = 0; b < NS; b++) {
        fill_tokens(tok[b], 400, 50u + (unsigned)b);
        tp[b] = tok[b];
        lp[b] = malloc((size_t)lens[b] * V * sizeof(float));
    }
    memcpy(tok[3], tok[0], 300 * sizeof(int)); /* 3 continues 0 */
    /* Warm the cache with sequence 0, then run all four together. */
    ck_assert_int_eq(model_forward_cached(m, pc, 1, tp, lens, lp, NULL, reused, err, sizeof err), 0);
    ck_assert_int_eq(model_forward_cached(m, pc, NS, tp, lens, lp, NULL, reused, err, sizeof err), 0);
    ck_assert_int_eq(reused[0], 256);
    ck_assert_int_eq(reused[1], 0);
    ck_assert_int_eq(reused[2], 0);
    ck_assert_int_eq(reused[3], 256);
    float *one = malloc((size_t)400 * V * sizeof *one);
    for (int b = 0; b < NS; b++) {
        ck_assert_int_eq(model_forward(m, tok[b], lens[b], one, NULL, NULL, err, sizeof err), 0);
        ck_assert_msg(memcmp(one, lp[b], (size_t)lens[b] * V * sizeof *one) == 0, "%s: sequence %d differs",
                      MODELS[_i], b);
        free(lp[b]);
    }
    free(one);
    prefix_cache_free(pc);
    model_free(m);
}
END_TEST

/* A small cache holds what fits, evicts the least recent, and still answers exactly. */
START_TEST(test_cache_limit)
{
    model *m = load(4, MODEL_F32);
    enum { N = 200, TEXTS = 12 };
    /* Room for about four states with their log-probabilities. */
    prefix_cache *probe = prefix_cache_new(64u << 20);
    int tok[TEXTS][N];
    for (int k = 0; k < TEXTS; k++)
        fill_tokens(tok[k], N, 300u + (unsigned)k);
    outcome o = run(m, probe, tok[0], 129, true, NULL); /* caches two states */
    outcome_free(&o);
    prefix_stats st;
    prefix_cache_stats(probe, &st);
    ck_assert_uint_eq(st.entries, 2);
    size_t per_state = st.bytes / 2;
    prefix_cache_free(probe);

    prefix_cache *pc = prefix_cache_new(4 * per_state + per_state / 2);
    for (int k = 0; k < TEXTS; k++) {
        int reused;
        outcome want = run(m, NULL, tok[k], N, true, NULL), got = run(m, pc, tok[k], N, true, &reused);
        ck_assert_int_eq(reused, 0);
        assert_same(m, &want, &got, N, "small cache");
        outcome_free(&want);
        outcome_free(&got);
        prefix_cache_stats(pc, &st);
        ck_assert_uint_le(st.bytes, st.limit);
        ck_assert_uint_le(st.entries, 4);
    }
    ck_assert_uint_gt(st.evictions, 0);
    /* The last text's shortest prefixes stayed (a prefix outlives its continuations). */
    int reused;
    o = run(m, pc, tok[TEXTS - 1], N, true, &reused);
    ck_assert_int_ge(reused, 64);
    outcome_free(&o);
    /* A pass crossing more states than the cache holds offers only the first ones (the
     * rest would be evicted at once): the answers stay exact, the opening is kept. */
    prefix_cache *one = prefix_cache_new(per_state + per_state / 2);
    outcome want = run(m, NULL, tok[1], N, true, NULL), got = run(m, one, tok[1], N, true, NULL);
    assert_same(m, &want, &got, N, "cache of one state");
    prefix_cache_stats(one, &st);
    ck_assert_uint_eq(st.entries, 1);
    ck_assert_uint_eq(st.evictions, 0);
    outcome_free(&got);
    got = run(m, one, tok[1], N, true, &reused);
    ck_assert_int_eq(reused, 64);
    assert_same(m, &want, &got, N, "resumed from the one state");
    outcome_free(&want);
    outcome_free(&got);
    prefix_cache_free(one);
    /* A cache of nothing caches nothing. */
    prefix_cache *none = prefix_cache_new(0);
    o = run(m, none, tok[0], N, true, &reused);
    ck_assert_int_eq(reused, 0);
    outcome_free(&o);
    prefix_cache_stats(none, &st);
    ck_assert_uint_eq(st.entries, 0);
    prefix_cache_free(none);
    prefix_cache_free(pc);
    model_free(m);
}
END_TEST

/* A bad token fails the pass with a message and caches nothing. */
START_TEST(test_cache_bad_input)
{
    model *m = load(0, MODEL_F32);
    prefix_cache *pc = prefix_cache_new(64u << 20);
    int tok[200], n = 200, empty = 0;
    const int *tp = tok;
    char err[ATTNLM_ERR_LEN] = "";
    fill_tokens(tok, n, 5u);
    tok[150] = 999;
    ck_assert_int_eq(model_forward_cached(m, pc, 1, &tp, &n, NULL, NULL, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "vocabulary"));
    ck_assert_int_eq(model_forward_cached(m, pc, 1, &tp, &empty, NULL, NULL, NULL, err, sizeof err), -1);
    prefix_stats st;
    prefix_cache_stats(pc, &st);
    ck_assert_uint_eq(st.entries, 0);
    prefix_cache_free(pc);
    model_free(m);
}
END_TEST

/* Threads sharing one cache over overlapping texts all get exact answers. */
typedef struct worker_arg {
    const model *m;
    prefix_cache *pc;
    const int (*tok)[300];
    const float *const *want;
    int id, bad;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    const int V = model_get_config(a->m)->vocab;
    float *lp = malloc((size_t)300 * V * sizeof *lp);
    char err[ATTNLM_ERR_LEN];
    for (int r = 0; r < 24; r++) {
        int k = (a->id + r) % 4, n = 300;
        const int *tp = a->tok[k];
        if (model_forward_cached(a->m, a->pc, 1, &tp, &n, &lp, NULL, NULL, err, sizeof err) < 0 ||
            memcmp(lp, a->want[k], (size_t)n * V * sizeof *lp) != 0)
            a->bad++;
    }
    free(lp);
    return NULL;
}

START_TEST(test_cache_threads)
{
    model *m = load(1, MODEL_F32);
    const int V = model_get_config(m)->vocab;
    static int tok[4][300];
    float *want[4];
    char err[ATTNLM_ERR_LEN];
    for (int k = 0; k < 4; k++) {
        fill_tokens(tok[k], 300, 70u + (unsigned)k);
        if (k)
            memcpy(tok[k], tok[0], (size_t)(64 * k + 10) * sizeof(int)); /* prefixes of 1, 2, 3 chunks shared */
        want[k] = malloc((size_t)300 * V * sizeof(float));
        ck_assert_int_eq(model_forward(m, tok[k], 300, want[k], NULL, NULL, err, sizeof err), 0);
    }
    /* Small enough that states are evicted while others read. */
    prefix_cache *pc = prefix_cache_new(200u << 10);
    pthread_t th[4];
    worker_arg args[4];
    for (int t = 0; t < 4; t++) {
        args[t] = (worker_arg){m, pc, (const int(*)[300])tok, (const float *const *)want, t, 0};
        pthread_create(&th[t], NULL, worker, &args[t]);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        ck_assert_int_eq(args[t].bad, 0);
    }
    for (int k = 0; k < 4; k++)
        free(want[k]);
    prefix_cache_free(pc);
    model_free(m);
}
END_TEST

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    return worst;
}

/* A state saved after a text and restored into another sequence continues
 * exactly as one pass over the whole text: the log-probabilities of what
 * follows and the state after it, bit for bit (f32: to 1e-5).  Restoring refuses a negative
 * position or a non-finite float and leaves the sequence as it was. */
START_TEST(test_saved_state_continues_exactly)
{
    model *m = load(_i / MODEL_PRECISION_COUNT, (model_precision)(_i % MODEL_PRECISION_COUNT));
    const int V = model_get_config(m)->vocab;
    enum { N = 230 };
    int tok[N];
    fill_tokens(tok, N, 40u + (unsigned)_i);
    const int splits[] = {1, 2, 5, 81, 200, N - 1};
    float *whole = malloc((size_t)N * V * sizeof *whole), *tail = malloc((size_t)N * V * sizeof *tail);
    float *saved = malloc(model_seq_floats(m) * sizeof *saved), *after = malloc(model_seq_floats(m) * sizeof *after);
    model_seq *end = model_seq_new(m);
    char err[256];
    ck_assert_int_eq(model_forward(m, tok, N, whole, NULL, end, err, sizeof err), 0);
    for (size_t k = 0; k < sizeof splits / sizeof *splits; k++) {
        const int s = splits[k];
        model_seq *head = model_seq_new(m), *restored = model_seq_new(m), *cont = model_seq_new(m);
        ck_assert_int_eq(model_forward_from(m, NULL, tok, s, NULL, head, err, sizeof err), 0);
        int64_t pos;
        model_seq_save(head, &pos, saved);
        ck_assert_int_eq(pos, s);
        ck_assert_int_eq(model_seq_restore(restored, pos, saved, err, sizeof err), 0);
        ck_assert_int_eq(model_forward_from(m, restored, tok + s, N - s, tail, cont, err, sizeof err), 0);
        /* f32 products run in OpenBLAS, whose sums can depend on how many rows a
         * product has: rounding apart, then.  The engine's own kernels are exact. */
        const bool exact = _i % MODEL_PRECISION_COUNT != MODEL_F32;
        double worst = max_abs_diff(tail, whole + (size_t)s * V, (size_t)(N - s) * V);
        ck_assert_msg(exact ? worst == 0.0 : worst <= 1e-5, "%s %s split at %d: the continuation differs by %g",
                      MODELS[_i / MODEL_PRECISION_COUNT], model_precision_name((model_precision)(_i % MODEL_PRECISION_COUNT)), s, worst);
        int64_t pos_a, pos_b;
        model_seq_save(cont, &pos_a, after);
        model_seq_save(end, &pos_b, saved);
        ck_assert_int_eq(pos_a, pos_b);
        ck_assert(exact ? memcmp(after, saved, model_seq_floats(m) * sizeof *after) == 0
                        : max_abs_diff(after, saved, model_seq_floats(m)) <= 1e-5);
        ck_assert_int_eq(model_forward_from(m, cont, tok, 3, NULL, cont, err, sizeof err), -1);
        model_seq_free(head);
        model_seq_free(restored);
        model_seq_free(cont);
    }
    model_seq *fresh = model_seq_new(m);
    model_seq_save(end, &(int64_t){0}, saved);
    ck_assert_int_eq(model_seq_restore(fresh, -1, saved, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "negative"));
    saved[model_seq_floats(m) / 2] = NAN;
    ck_assert_int_eq(model_seq_restore(fresh, 7, saved, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "not finite"));
    ck_assert_int_eq(model_seq_pos(fresh), 0);
    model_seq_free(fresh);
    model_seq_free(end);
    free(whole);
    free(tail);
    free(saved);
    free(after);
    model_free(m);
}
END_TEST

int main(void)
{
    const check_case cases[] = {
        {"prefix",
         CHECK_TESTS(CHECK_LOOP(test_cached_equals_uncached, N_MODELS * MODEL_PRECISION_COUNT),
                     CHECK_LOOP(test_cached_batch, N_MODELS), CHECK_TEST(test_cache_limit),
                     CHECK_TEST(test_cache_bad_input), CHECK_TEST(test_cache_threads),
                     CHECK_LOOP(test_saved_state_continues_exactly, N_MODELS * MODEL_PRECISION_COUNT)),
         .timeout = 300},
    };
    return check_main("prefix", cases, sizeof cases / sizeof *cases);
}
