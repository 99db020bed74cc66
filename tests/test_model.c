/* test_model.c -- the engine against PyTorch, and decoding against the forward pass.
 *
 * Fixtures (tests/fixtures, written by train/make_fixtures.py) are small random
 * models of every cell x attention combination with PyTorch's outputs.
 */
#include "model.h"
#include "parity.h"
#include "testutil.h"

#include "check_main.h"

#include <check.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const COMBOS[] = {
    "elman_additive", "elman_dot", "elman_cosine", "elman_multihead",
    "gru_additive",   "gru_dot",   "gru_cosine",   "gru_multihead",
    "lstm_additive",  "lstm_dot",  "lstm_cosine",  "lstm_multihead",
    /* hidden 40, embedding 24: the 16-wide vector paths and their remainders */
    "wide_gru_multihead", "wide_lstm_cosine", "wide_elman_additive",
    /* attn_kv continuation (format version 2): keys from the state before, values the byte's embedding */
    "elman_additive_cont", "elman_dot_cont", "elman_cosine_cont", "elman_multihead_cont",
    "gru_additive_cont",   "gru_dot_cont",   "gru_cosine_cont",   "gru_multihead_cont",
    "lstm_additive_cont",  "lstm_dot_cont",  "lstm_cosine_cont",  "lstm_multihead_cont",
    "wide_gru_dot_cont", "wide_lstm_multihead_cont",
};
#define N_COMBOS ((int)(sizeof COMBOS / sizeof *COMBOS))

static model *load_combo_at(int i, model_precision prec) { return fixture_model(COMBOS[i], prec); }

static model *load_combo(int i) { return load_combo_at(i, MODEL_F32); }

/* Deterministic pseudo-random tokens, BOS first. */
static void fill_tokens(int *tok, int n, unsigned seed)
{
    tok[0] = 256;
    for (int i = 1; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        tok[i] = (int)((seed >> 16) % 256);
    }
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0.0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

START_TEST(test_parity_with_pytorch)
{
    char mpath[512], epath[512], mname[64], ename[64], err[ATTNLM_ERR_LEN];
    snprintf(mname, sizeof mname, "%s.safetensors", COMBOS[_i]);
    snprintf(ename, sizeof ename, "%s.expected.safetensors", COMBOS[_i]);
    parity_result r;
    int rc = parity_compare(fixture_path(mpath, sizeof mpath, mname), fixture_path(epath, sizeof epath, ename), &r,
                            err, sizeof err);
    ck_assert_msg(rc == 0, "%s: %s", COMBOS[_i], err);
    ck_assert_int_gt(r.tokens, 5);
    ck_assert_msg(r.logprob_err <= PARITY_TOL_LOGPROB, "%s: logprob diff %g", COMBOS[_i], r.logprob_err);
    ck_assert_msg(r.attn_err >= 0.0 && r.attn_err <= PARITY_TOL_ATTN, "%s: attention diff %g", COMBOS[_i],
                  r.attn_err);
    ck_assert_msg(r.self_err >= 0.0 && r.self_err <= PARITY_TOL_LOGPROB, "%s: logprob diff without attention %g",
                  COMBOS[_i], r.self_err);
}
END_TEST

/* Stepping one token at a time gives the forward pass's numbers, far past the window. */
START_TEST(test_incremental_equals_forward)
{
    model *m = load_combo(_i);
    const model_config *c = model_get_config(m);
    const int T = 6 * c->window + 3, V = c->vocab, N = c->heads, W = c->window;
    ck_assert_int_gt(T, 5 * W);
    int tok[64];
    ck_assert_int_le(T, 64);
    fill_tokens(tok, T, 42u + (unsigned)_i);
    float *lp = malloc((size_t)T * V * sizeof *lp), *band = malloc((size_t)T * N * W * sizeof *band);
    float logits[257], step_attn[64];
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward(m, tok, T, lp, band, NULL, err, sizeof err), 0);

    model_seq *s = model_seq_new(m);
    model_batch *b = model_batch_new(m, 1);
    double lp_err = 0.0, attn_err = 0.0;
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(model_step(m, b, &s, &tok[t], 1, logits, step_attn, err, sizeof err), 0);
        model_log_softmax(logits, logits, V);
        lp_err = fmax(lp_err, max_diff(logits, lp + (size_t)t * V, (size_t)V));
        attn_err = fmax(attn_err, max_diff(step_attn, band + (size_t)t * N * W, (size_t)N * W));
    }
    ck_assert_int_eq((int)model_seq_pos(s), T);
    ck_assert_msg(lp_err <= 1e-4, "%s: step vs forward logprob diff %g", COMBOS[_i], lp_err);
    ck_assert_msg(attn_err <= 1e-5, "%s: step vs forward attention diff %g", COMBOS[_i], attn_err);

    /* Prefill through the forward pass, then step: same numbers as the forward pass. */
    const int P = 2 * W + 1;
    model_seq_reset(s);
    ck_assert_int_eq(model_forward(m, tok, P, NULL, NULL, s, err, sizeof err), 0);
    ck_assert_int_eq((int)model_seq_pos(s), P);
    lp_err = 0.0;
    for (int t = P; t < T; t++) {
        ck_assert_int_eq(model_step(m, b, &s, &tok[t], 1, logits, NULL, err, sizeof err), 0);
        model_log_softmax(logits, logits, V);
        lp_err = fmax(lp_err, max_diff(logits, lp + (size_t)t * V, (size_t)V));
    }
    ck_assert_msg(lp_err <= 1e-4, "%s: prefill+step vs forward diff %g", COMBOS[_i], lp_err);

    model_batch_free(b);
    model_seq_free(s);
    free(lp);
    free(band);
    model_free(m);
}
END_TEST

/* Sequences of different lengths, joining and leaving, stepped together equal each stepped alone. */
START_TEST(test_batch_equals_alone)
{
    enum { NS = 5, STEPS = 24 };
    model *m = load_combo(_i);
    const model_config *c = model_get_config(m);
    const int V = c->vocab, NW = c->heads * c->window;
    const int prefill[NS] = {1, 3, 7, 12, 2};
    const int join[NS] = {0, 0, 4, 2, 9};     /* step at which each joins */
    const int leave[NS] = {STEPS, 15, STEPS, 20, STEPS};
    int tok[NS][64];
    char err[ATTNLM_ERR_LEN];
    model_seq *together[NS], *alone[NS];
    for (int k = 0; k < NS; k++) {
        fill_tokens(tok[k], 64, 7u * (unsigned)k + 1u);
        together[k] = model_seq_new(m);
        alone[k] = model_seq_new(m);
        ck_assert_int_eq(model_forward(m, tok[k], prefill[k], NULL, NULL, together[k], err, sizeof err), 0);
        ck_assert_int_eq(model_forward(m, tok[k], prefill[k], NULL, NULL, alone[k], err, sizeof err), 0);
    }
    model_batch *big = model_batch_new(m, NS), *one = model_batch_new(m, 1);
    float logits[NS * 257], attn[NS * 64], l1[257], a1[64];
    double lerr = 0.0, aerr = 0.0;
    for (int step = 0; step < STEPS; step++) {
        model_seq *batch[NS];
        int btok[NS], who[NS], B = 0;
        for (int k = 0; k < NS; k++)
            if (step >= join[k] && step < leave[k]) {
                batch[B] = together[k];
                btok[B] = tok[k][model_seq_pos(together[k])];
                who[B++] = k;
            }
        ck_assert_int_eq(model_step(m, big, batch, btok, B, logits, attn, err, sizeof err), 0);
        for (int j = 0; j < B; j++) {
            int k = who[j];
            ck_assert_int_eq(model_step(m, one, &alone[k], &btok[j], 1, l1, a1, err, sizeof err), 0);
            lerr = fmax(lerr, max_diff(logits + (size_t)j * V, l1, (size_t)V));
            aerr = fmax(aerr, max_diff(attn + (size_t)j * NW, a1, (size_t)NW));
        }
    }
    ck_assert_msg(lerr <= 1e-4, "%s: batched vs alone logits diff %g", COMBOS[_i], lerr);
    ck_assert_msg(aerr <= 1e-5, "%s: batched vs alone attention diff %g", COMBOS[_i], aerr);
    for (int k = 0; k < NS; k++) {
        model_seq_free(together[k]);
        model_seq_free(alone[k]);
    }
    model_batch_free(big);
    model_batch_free(one);
    model_free(m);
}
END_TEST

START_TEST(test_bad_calls_are_refused)
{
    model *m = load_combo(7);
    char err[ATTNLM_ERR_LEN] = "";
    int bad[3] = {256, 300, 5}, neg = -1;
    float lp[3 * 257], logits[257];
    ck_assert_int_eq(model_forward(m, bad, 3, lp, NULL, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "token 300 at position 1"));
    ck_assert_int_eq(model_forward(m, bad, 0, lp, NULL, NULL, err, sizeof err), -1);

    model_seq *s = model_seq_new(m);
    model_batch *b = model_batch_new(m, 1);
    ck_assert_int_eq(model_step(m, b, &s, &neg, 1, logits, NULL, err, sizeof err), -1);
    ck_assert_int_eq((int)model_seq_pos(s), 0); /* refused calls change nothing */
    model_seq *two[2] = {s, s};
    ck_assert_int_eq(model_step(m, b, two, bad, 2, logits, NULL, err, sizeof err), -1);
    ck_assert_int_eq(model_forward(m, bad, 1, NULL, NULL, s, err, sizeof err), 0);
    /* a used sequence cannot be prefilled again */
    ck_assert_int_eq(model_forward(m, bad, 1, NULL, NULL, s, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "fresh"));
    model_batch_free(b);
    model_seq_free(s);
    model_free(m);
}
END_TEST

START_TEST(test_config_from_metadata)
{
    model *m = load_combo(11); /* lstm_multihead */
    const model_config *c = model_get_config(m);
    ck_assert_int_eq(c->cell, CELL_LSTM);
    ck_assert_int_eq(c->attention, ATTN_MULTIHEAD);
    ck_assert_int_eq(c->layers, 2);
    ck_assert_int_eq(c->heads, 3);
    ck_assert_int_eq(c->gates, 4);
    ck_assert_int_eq(c->bos_id, 256);
    ck_assert_str_eq(model_meta(m, "name"), "fixture lstm_multihead");
    ck_assert_ptr_null(model_meta(m, "no such key"));
    ck_assert_str_eq(model_cell_name(c->cell), "lstm");
    ck_assert_str_eq(model_attention_name(c->attention), "multihead");
    ck_assert_uint_gt(model_param_count(m), 1000);
    model_free(m);
    model_free(NULL);
    model_seq_free(NULL);
    model_batch_free(NULL);
}
END_TEST

/* Threads sharing one model, each with its own sequences and scratch, get the single-thread numbers. */
typedef struct thread_job {
    const model *m;
    unsigned seed;
    float logits[40 * 257];
    int rc;
} thread_job;

static void *decode_job(void *arg)
{
    thread_job *job = arg;
    const int V = model_get_config(job->m)->vocab;
    int tok[40];
    char err[ATTNLM_ERR_LEN];
    fill_tokens(tok, 40, job->seed);
    model_seq *s = model_seq_new(job->m);
    model_batch *b = model_batch_new(job->m, 1);
    job->rc = model_forward(job->m, tok, 10, NULL, NULL, s, err, sizeof err);
    for (int t = 10; t < 40 && job->rc == 0; t++)
        job->rc = model_step(job->m, b, &s, &tok[t], 1, job->logits + (size_t)t * V, NULL, err, sizeof err);
    model_batch_free(b);
    model_seq_free(s);
    return NULL;
}

START_TEST(test_threads_share_model)
{
    enum { NT = 4 };
    model *m = load_combo(5 + 4 * (_i % 2)); /* gru_dot, lstm_additive */
    static thread_job jobs[NT], solo[NT];
    pthread_t th[NT];
    for (int k = 0; k < NT; k++) {
        memset(&jobs[k], 0, sizeof jobs[k]);
        memset(&solo[k], 0, sizeof solo[k]);
        jobs[k].m = solo[k].m = m;
        jobs[k].seed = solo[k].seed = 1000u + (unsigned)k;
        decode_job(&solo[k]);
    }
    for (int k = 0; k < NT; k++)
        ck_assert_int_eq(pthread_create(&th[k], NULL, decode_job, &jobs[k]), 0);
    for (int k = 0; k < NT; k++) {
        ck_assert_int_eq(pthread_join(th[k], NULL), 0);
        ck_assert_int_eq(jobs[k].rc, 0);
        ck_assert_mem_eq(jobs[k].logits, solo[k].logits, sizeof jobs[k].logits);
    }
    model_free(m);
}
END_TEST


/* A copied sequence continues exactly as the original would. */
START_TEST(test_seq_copy_continues_alike)
{
    model *m = load_combo(_i);
    const model_config *c = model_get_config(m);
    const int V = c->vocab, P = c->window + 2;
    int tok[64];
    fill_tokens(tok, P + 4, 7u + (unsigned)_i);
    char err[ATTNLM_ERR_LEN];
    model_seq *a = model_seq_new(m), *b = model_seq_new(m);
    model_batch *bt = model_batch_new(m, 2);
    ck_assert_int_eq(model_forward(m, tok, P, NULL, NULL, a, err, sizeof err), 0);
    ck_assert_int_eq(model_seq_copy(b, a), 0);
    ck_assert_int_eq((int)model_seq_pos(b), P);
    float la[257], lb[257];
    for (int t = P; t < P + 4; t++) {
        ck_assert_int_eq(model_step(m, bt, &a, &tok[t], 1, la, NULL, err, sizeof err), 0);
        ck_assert_int_eq(model_step(m, bt, &b, &tok[t], 1, lb, NULL, err, sizeof err), 0);
        ck_assert_mem_eq(la, lb, (size_t)V * sizeof *la);
    }
    model *other = load_combo((_i + 1) % N_COMBOS);
    model_seq *o = model_seq_new(other);
    ck_assert_int_eq(model_seq_copy(o, a), -1);
    model_seq_free(o);
    model_free(other);
    model_batch_free(bt);
    model_seq_free(a);
    model_seq_free(b);
    model_free(m);
}
END_TEST


/* Several sequences in one forward pass give each one's own numbers and state. */
START_TEST(test_forward_batch_equals_alone)
{
    enum { NS = 4 };
    model *m = load_combo(_i);
    const model_config *c = model_get_config(m);
    const int V = c->vocab, NW = c->heads * c->window;
    const int lens[NS] = {7, 3 * c->window + 2, 1, c->window};
    int tok[NS][64];
    const int *tp[NS];
    float *lp[NS], *at[NS];
    model_seq *sq[NS];
    char err[ATTNLM_ERR_LEN];
    for (int b = 0; b < NS; b++) {
        ck_assert_int_le(lens[b], 60);
        fill_tokens(tok[b], lens[b] + 2, 100u + (unsigned)(_i * NS + b));
        tp[b] = tok[b];
        lp[b] = malloc((size_t)lens[b] * V * sizeof *lp[b]);
        at[b] = malloc((size_t)lens[b] * NW * sizeof *at[b]);
        sq[b] = model_seq_new(m);
    }
    ck_assert_int_eq(model_forward_batch(m, NS, tp, lens, lp, at, sq, err, sizeof err), 0);
    model_batch *bt = model_batch_new(m, 1);
    float *lp1 = malloc((size_t)64 * V * sizeof *lp1), *at1 = malloc((size_t)64 * NW * sizeof *at1);
    float la[257], lb[257];
    for (int b = 0; b < NS; b++) {
        model_seq *one = model_seq_new(m);
        ck_assert_int_eq(model_forward(m, tok[b], lens[b], lp1, at1, one, err, sizeof err), 0);
        double dl = max_diff(lp[b], lp1, (size_t)lens[b] * V), da = max_diff(at[b], at1, (size_t)lens[b] * NW);
        ck_assert_msg(dl <= 1e-4 && da <= 1e-5, "%s seq %d: logprob diff %g, attention diff %g", COMBOS[_i], b, dl,
                      da);
        /* The prefilled states continue alike. */
        ck_assert_int_eq((int)model_seq_pos(sq[b]), lens[b]);
        ck_assert_int_eq(model_step(m, bt, &sq[b], &tok[b][lens[b]], 1, la, NULL, err, sizeof err), 0);
        ck_assert_int_eq(model_step(m, bt, &one, &tok[b][lens[b]], 1, lb, NULL, err, sizeof err), 0);
        ck_assert_msg(max_diff(la, lb, (size_t)V) <= 1e-4, "%s seq %d: continuation differs", COMBOS[_i], b);
        model_seq_free(one);
    }
    int bad_len[2] = {3, 0};
    ck_assert_int_eq(model_forward_batch(m, 2, tp, bad_len, NULL, NULL, NULL, err, sizeof err), -1);
    for (int b = 0; b < NS; b++) {
        free(lp[b]);
        free(at[b]);
        model_seq_free(sq[b]);
    }
    free(lp1);
    free(at1);
    model_batch_free(bt);
    model_free(m);
}
END_TEST

/* A row's numbers are the same in a decoding step of any batch size, 1 to 64,
 * at every precision: _i runs over the combinations and the precisions. */
START_TEST(test_step_rows_independent_of_batch)
{
    enum { MAXB = 64 };
    static const int sizes[] = {1, 2, 7, 8, 9, 33, 64};
    model *m = load_combo_at(_i / MODEL_PRECISION_COUNT, (model_precision)(_i % MODEL_PRECISION_COUNT));
    const int V = model_get_config(m)->vocab;
    char err[ATTNLM_ERR_LEN];
    model_seq *s[MAXB];
    int tok[MAXB], prompt[6];
    model_batch *bt = model_batch_new(m, MAXB);
    float *l1 = malloc((size_t)2 * V * sizeof *l1), *lb = malloc((size_t)MAXB * V * sizeof *lb);
    for (int b = 0; b < MAXB; b++)
        s[b] = model_seq_new(m);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        const int B = sizes[k];
        /* Every sequence at its own state (a short prompt of its own), then one step. */
        for (int b = 0; b < B; b++) {
            fill_tokens(prompt, 6, 500u + (unsigned)b);
            model_seq_reset(s[b]);
            ck_assert_int_eq(model_forward(m, prompt, 2 + b % 4, NULL, NULL, s[b], err, sizeof err), 0);
            tok[b] = (b * 37) % 256;
        }
        ck_assert_int_eq(model_step(m, bt, s, tok, B, lb, NULL, err, sizeof err), 0);
        if (k == 0) {
            memcpy(l1, lb, (size_t)V * sizeof *l1);
            continue;
        }
        ck_assert_msg(memcmp(l1, lb, (size_t)V * sizeof *l1) == 0, "%s %s: row 0 differs in a batch of %d",
                      COMBOS[_i / MODEL_PRECISION_COUNT], model_precision_name(model_get_precision(m)), B);
        if (k == 1)
            memcpy(l1 + V, lb + V, (size_t)V * sizeof *l1);
        else
            ck_assert_msg(memcmp(l1 + V, lb + V, (size_t)V * sizeof *l1) == 0, "%s: row 1 differs in a batch of %d",
                          COMBOS[_i / MODEL_PRECISION_COUNT], B);
    }
    free(l1);
    free(lb);
    model_batch_free(bt);
    for (int b = 0; b < MAXB; b++)
        model_seq_free(s[b]);
    model_free(m);
}
END_TEST

/* A sequence's numbers in a forward pass of many sequences (40: more rows per
 * position than one block of the kernels' tiles) are exactly its numbers alone,
 * at every precision. */
START_TEST(test_forward_rows_independent_of_batch)
{
    enum { NS = 40 };
    model *m = load_combo_at(_i / MODEL_PRECISION_COUNT, (model_precision)(_i % MODEL_PRECISION_COUNT));
    const model_config *c = model_get_config(m);
    const int V = c->vocab;
    int tok[NS][40], lens[NS];
    const int *tp[NS];
    float *lp[NS], *one = malloc((size_t)40 * V * sizeof *one);
    char err[ATTNLM_ERR_LEN];
    for (int b = 0; b < NS; b++) {
        lens[b] = 1 + (b * 7) % 40;
        fill_tokens(tok[b], lens[b], 900u + (unsigned)b);
        tp[b] = tok[b];
        lp[b] = malloc((size_t)lens[b] * V * sizeof *lp[b]);
    }
    ck_assert_int_eq(model_forward_batch(m, NS, tp, lens, lp, NULL, NULL, err, sizeof err), 0);
    for (int b = 0; b < NS; b++) {
        ck_assert_int_eq(model_forward(m, tok[b], lens[b], one, NULL, NULL, err, sizeof err), 0);
        ck_assert_msg(memcmp(one, lp[b], (size_t)lens[b] * V * sizeof *one) == 0, "%s %s: sequence %d differs",
                      COMBOS[_i / MODEL_PRECISION_COUNT], model_precision_name(model_get_precision(m)), b);
        free(lp[b]);
    }
    free(one);
    model_free(m);
}
END_TEST

/* bf16 and int8 weights: decoding equals the forward pass at the same
 * precision, and the next-token distributions stay near the f32 ones (the
 * random fixtures, Elman ones most, amplify rounding far more than a trained
 * model: worst total variation 0.095 for bf16 and 0.22 for int8 here, both
 * elman_multihead_cont, spikes at single positions rather than a growth along
 * the sequence; a broken kernel gives 0.5 and more.  On the default model the
 * loss moves by less than 1e-4). */
START_TEST(test_reduced_precision)
{
    const int combo = _i / 2;
    const model_precision prec = _i % 2 ? MODEL_INT8 : MODEL_BF16;
    model *m = load_combo_at(combo, prec), *full = load_combo(combo);
    const model_config *c = model_get_config(m);
    const int T = 4 * c->window + 3, V = c->vocab;
    int tok[64];
    fill_tokens(tok, T, 77u + (unsigned)_i);
    float *lp = malloc((size_t)T * V * sizeof *lp), *lf = malloc((size_t)T * V * sizeof *lf), logits[257];
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward(m, tok, T, lp, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(model_forward(full, tok, T, lf, NULL, NULL, err, sizeof err), 0);
    /* The total variation distance between the two next-token distributions, worst position. */
    double tv = 0.0, step_err = 0.0;
    for (int t = 0; t < T; t++) {
        double d = 0.0;
        for (int v = 0; v < V; v++)
            d += 0.5 * fabs(exp((double)lp[(size_t)t * V + v]) - exp((double)lf[(size_t)t * V + v]));
        tv = fmax(tv, d);
    }
    ck_assert_msg(tv > 0.0 && tv < (prec == MODEL_BF16 ? 0.12 : 0.25), "%s %s: total variation %g from f32",
                  COMBOS[combo], model_precision_name(prec), tv);
    model_seq *s = model_seq_new(m);
    model_batch *b = model_batch_new(m, 1);
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(model_step(m, b, &s, &tok[t], 1, logits, NULL, err, sizeof err), 0);
        model_log_softmax(logits, logits, V);
        step_err = fmax(step_err, max_diff(logits, lp + (size_t)t * V, (size_t)V));
    }
    ck_assert_msg(step_err <= 1e-4, "%s %s: step vs forward diff %g", COMBOS[combo], model_precision_name(prec),
                  step_err);
    ck_assert_ptr_nonnull(strstr(model_kernels(m), model_precision_name(prec)));
    model_batch_free(b);
    model_seq_free(s);
    free(lp);
    free(lf);
    model_free(m);
    model_free(full);
}
END_TEST

int main(void)
{
    const check_case parity = {
        "parity",
        CHECK_TESTS(CHECK_LOOP(test_parity_with_pytorch, N_COMBOS),
                    CHECK_LOOP(test_incremental_equals_forward, N_COMBOS),
                    CHECK_LOOP(test_batch_equals_alone, N_COMBOS),
                    CHECK_LOOP(test_seq_copy_continues_alike, N_COMBOS),
                    CHECK_LOOP(test_forward_batch_equals_alone, N_COMBOS),
                    CHECK_LOOP(test_step_rows_independent_of_batch, N_COMBOS * MODEL_PRECISION_COUNT),
                    CHECK_LOOP(test_forward_rows_independent_of_batch, N_COMBOS * MODEL_PRECISION_COUNT),
                    CHECK_LOOP(test_reduced_precision, N_COMBOS * 2),
                    CHECK_TEST(test_bad_calls_are_refused),
                    CHECK_TEST(test_config_from_metadata),
                    CHECK_LOOP(test_threads_share_model, 2)),
        .timeout = 120,
    };
    return check_main("model", &parity, 1);
}
