/* attention.c -- the four attention mechanisms, one descriptor each, and the
 * banded products they share.
 *
 * Every mechanism scores a position against the positions of its window,
 * softmaxes the scores and averages the window's values.  What differs is
 * what is projected first (nothing for dot, normalised states for cosine,
 * queries and keys for additive, queries, keys and values for multihead),
 * what a decoding sequence must cache per window slot to score later
 * positions, and how a score is formed.  docs/FORMAT.md gives the formulas.
 *
 * Queries always come from the present state h_t; keys from each position's
 * key source and values from its value source (engine.h), which are the
 * state h_i itself or, with attn_kv continuation, the state before it and
 * the embedding of its byte.  Only multihead's tensors differ between the
 * two (its value projection reads embeddings), so it has a second descriptor.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine.h"
#include "vecmath.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int attn_dim_value(attn_dim_sym d, const model_config *c)
{
    switch (d) {
    case DIM_A: return c->attn_dim;
    case DIM_H: return c->hidden;
    case DIM_3H: return 3 * c->hidden;
    case DIM_E: return c->embed;
    default: return 1;
    }
}

/* Windowed attention of one head over rows [first, T) of T consecutive
 * positions (row 0 at absolute position pos0; earlier rows are the window's
 * context), in diagonal blocks that start at absolute multiples of
 * ATTN_BLOCK: for rows [t0, t0+bt) the keys [k0, t0+bt) are one product, the
 * band is softmaxed in place and the context is a second product.  A block's
 * products then have the same shapes and operands wherever the pass began,
 * so a resumed sequence gets the numbers of a whole one.
 *   ctx [T - first, dv] (row stride ldc) <- softmax(scale * q k^T, band) . vals
 *   q [T, dk] (ldq), keys [T, dk] (ldk), vals [T, dv] (ldv)
 *   S: scratch [ATTN_BLOCK * (ATTN_BLOCK + W - 1)]
 *   attn: band maps [T - first, N, W] or NULL, written for head `head`. */
void attend_banded(float *ctx, int ldc, float *attn, float *S, const float *q, int ldq, const float *keys, int ldk,
                   const float *vals, int ldv, int T, int first, int64_t pos0, int dk, int dv, int W, int N, int head,
                   float scale)
{
    for (int t0 = first, bt; t0 < T; t0 += bt) {
        bt = ATTN_BLOCK - (int)((pos0 + t0) % ATTN_BLOCK);
        bt = bt < T - t0 ? bt : T - t0;
        int k0 = t0 - W + 1 > 0 ? t0 - W + 1 : 0;
        int nk = t0 + bt - k0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bt, nk, dk, scale, q + (size_t)t0 * ldq, ldq,
                    keys + (size_t)k0 * ldk, ldk, 0.0f, S, nk);
        for (int r = 0; r < bt; r++) {
            int t = t0 + r, lo = t - W + 1 > 0 ? t - W + 1 : 0;
            float *row = S + (size_t)r * nk;
            softmax_inplace(row + (lo - k0), t - lo + 1);
            for (int i = k0; i < lo; i++)
                row[i - k0] = 0.0f;
            for (int i = t + 1; i < k0 + nk; i++)
                row[i - k0] = 0.0f;
            if (attn)
                for (int i = lo; i <= t; i++)
                    attn[((size_t)(t - first) * N + head) * W + (size_t)(i - t + W - 1)] = row[i - k0];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bt, dv, nk, 1.0f, S, nk, vals + (size_t)k0 * ldv,
                    ldv, 0.0f, ctx + (size_t)(t0 - first) * ldc, ldc);
    }
}

/* The single-head mechanisms' step: softmax the window's scores, average the
 * window's values into ctx, and record the band row. */
static void step_context(const model_seq *s, float *sc, int n, float *ctx, float *band)
{
    const int DV = s->m->cfg.value_dim, W = s->m->cfg.window;
    softmax_inplace(sc, n);
    cblas_sgemv(CblasRowMajor, CblasTrans, n, DV, 1.0f, s->ring_v, DV, sc, 1, 0.0f, ctx, 1);
    if (band)
        write_band(band, sc, n, s->pos, W);
}

/* The single-head mechanisms' context with a window of one: the value itself. */
static void value_itself(const model *m, float *out, const float *row, const float *vs)
{
    (void)row;
    memcpy(out, vs, (size_t)m->cfg.value_dim * sizeof *out);
}

/* Positions the window of a sequence at s->pos covers (slots 0 .. n-1 are valid). */
static int window_len(const model_seq *s)
{
    const int W = s->m->cfg.window;
    return s->pos + 1 < W ? (int)s->pos + 1 : W;
}

/* ---- additive (Bahdanau): s = v . tanh(Q h_t + K k_i + b_K) ----------------- */

enum { ADD_Q, ADD_K, ADD_KB, ADD_V };

static int additive_configure(model_config *c, int attn_dim, char *err, size_t errlen)
{
    if (attn_dim < 1) {
        err_set(err, errlen, "metadata: missing \"attn_dim\"");
        return -1;
    }
    c->attn_dim = attn_dim;
    c->heads = 1;
    return 0;
}

/* A position's projections: its query [A], then its key [A] (the cached part). */
static int additive_proj_dim(const model_config *c) { return 2 * c->attn_dim; }
static int additive_key_dim(const model_config *c) { return c->attn_dim; }

static void additive_project(const model *m, float *proj, const float *hs, const float *ks, const float *vs, int T,
                             void *scratch)
{
    (void)vs;
    const int H = m->cfg.hidden, A = m->cfg.attn_dim;
    linear(m, proj, 2 * A, hs, H, &m->w.attn_mat[ADD_Q], NULL, T, false, scratch);
    linear(m, proj + A, 2 * A, ks, H, &m->w.attn_mat[ADD_K], m->w.attn[ADD_KB], T, false, scratch);
}

/* Sum of v[a] * tanh(q[a] + k[a]): one additive attention score. */
static float additive_score(const float *v, const float *q, const float *k, int A)
{
    float s = 0.0f;
    for (int a = 0; a < A; a++)
        s += v[a] * fast_tanhf(q[a] + k[a]);
    return s;
}

/* A tanh per (t, i, a): no product form, so row by row. */
static void additive_seq(const model *m, float *ctx, float *ctxh, float *attn, float *S, const float *proj,
                         const float *hs, const float *ks, const float *vs, int T, int first, int64_t pos0)
{
    (void)ctxh, (void)pos0, (void)hs, (void)ks;
    const int DV = m->cfg.value_dim, A = m->cfg.attn_dim, W = m->cfg.window;
    float *scores = S;
    for (int t = first; t < T; t++) {
        int lo = t - W + 1 > 0 ? t - W + 1 : 0, n = t - lo + 1;
        for (int i = lo; i <= t; i++)
            scores[i - lo] = additive_score(m->w.attn[ADD_V], proj + (size_t)t * 2 * A,
                                            proj + (size_t)i * 2 * A + A, A);
        softmax_inplace(scores, n);
        float *c = ctx + (size_t)(t - first) * DV;
        memset(c, 0, (size_t)DV * sizeof *c);
        for (int i = lo; i <= t; i++) {
            cblas_saxpy(DV, scores[i - lo], vs + (size_t)i * DV, 1, c, 1);
            if (attn)
                attn[(size_t)(t - first) * W + (size_t)(i - t + W - 1)] = scores[i - lo];
        }
    }
}

static void additive_step(const model *m, const model_seq *s, const float *row, const float *h, float *ctx,
                          float *band, float *scores)
{
    (void)h;
    const int A = m->cfg.attn_dim, n = window_len(s);
    for (int i = 0; i < n; i++)
        scores[i] = additive_score(m->w.attn[ADD_V], row, s->ring_k + (size_t)i * A, A);
    step_context(s, scores, n, ctx, band);
}

static const attn_mech ADDITIVE = {
    .name = "additive",
    .size_key = "attn_dim",
    .tensors = {{"attn.query.weight", 2, {DIM_A, DIM_H}, true},
                {"attn.key.weight", 2, {DIM_A, DIM_H}, true},
                {"attn.key.bias", 1, {DIM_A}, false},
                {"attn.v.weight", 2, {DIM_1, DIM_A}, false}},
    .n_tensors = 4,
    .configure = additive_configure,
    .proj_dim = additive_proj_dim,
    .key_dim = additive_key_dim,
    .project = additive_project,
    .attend_seq = additive_seq,
    .attend_step = additive_step,
    .self_value = value_itself,
};

/* ---- dot (Luong, scaled): s = h_t . k_i / sqrt(H) ---------------------------- */

static int single_head(model_config *c, int size, char *err, size_t errlen)
{
    (void)size, (void)err, (void)errlen;
    c->attn_dim = 0;
    c->heads = 1;
    return 0;
}

static int no_width(const model_config *c)
{
    (void)c;
    return 0;
}

static void dot_seq(const model *m, float *ctx, float *ctxh, float *attn, float *S, const float *proj,
                    const float *hs, const float *ks, const float *vs, int T, int first, int64_t pos0)
{
    (void)ctxh, (void)proj;
    const int H = m->cfg.hidden, DV = m->cfg.value_dim;
    attend_banded(ctx, DV, attn, S, hs, H, ks, H, vs, DV, T, first, pos0, H, DV, m->cfg.window, 1, 0,
                  1.0f / sqrtf((float)H));
}

static void dot_step(const model *m, const model_seq *s, const float *row, const float *h, float *ctx, float *band,
                     float *scores)
{
    (void)row;
    const int H = m->cfg.hidden, n = window_len(s);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, H, 1.0f / sqrtf((float)H), s->ring_h, H, h, 1, 0.0f, scores, 1);
    step_context(s, scores, n, ctx, band);
}

static const attn_mech DOT = {
    .name = "dot",
    .configure = single_head,
    .proj_dim = no_width,
    .key_dim = no_width,
    .attend_seq = dot_seq,
    .attend_step = dot_step,
    .self_value = value_itself,
};

/* ---- cosine: s = g (h_t . k_i) / (max(|h_t|, eps) max(|k_i|, eps)) ----------- */

enum { COS_SCALE };

/* A position's projections are its normalised query state [H] and, when keys
 * come from other rows, its normalised key source [H]; a slot caches the
 * latter (with attn_kv state, the one row serves as both). */
static int hidden_width(const model_config *c) { return c->hidden; }
static int cosine_proj_dim(const model_config *c) { return c->attn_kv == ATTN_KV_STATE ? c->hidden : 2 * c->hidden; }

/* Rows of x [T, H] divided by max(|row|, 1e-8), as torch.nn.functional.normalize, into out (row stride ldo). */
static void normalize_rows(float *out, int ldo, const float *x, int T, int H)
{
    for (int t = 0; t < T; t++) {
        const float *r = x + (size_t)t * H;
        float nrm = cblas_snrm2(H, r, 1);
        float inv = 1.0f / (nrm > 1e-8f ? nrm : 1e-8f);
        for (int j = 0; j < H; j++)
            out[(size_t)t * ldo + j] = r[j] * inv;
    }
}

static void cosine_project(const model *m, float *proj, const float *hs, const float *ks, const float *vs, int T,
                           void *scratch)
{
    (void)scratch, (void)vs;
    const int H = m->cfg.hidden, P = m->proj_dim;
    normalize_rows(proj, P, hs, T, H);
    if (P > H)
        normalize_rows(proj + H, P, ks, T, H);
}

static void cosine_seq(const model *m, float *ctx, float *ctxh, float *attn, float *S, const float *proj,
                       const float *hs, const float *ks, const float *vs, int T, int first, int64_t pos0)
{
    (void)ctxh, (void)hs, (void)ks;
    const int H = m->cfg.hidden, P = m->proj_dim, DV = m->cfg.value_dim;
    attend_banded(ctx, DV, attn, S, proj, P, proj + (P - H), P, vs, DV, T, first, pos0, H, DV, m->cfg.window, 1, 0,
                  m->w.attn[COS_SCALE][0]);
}

static void cosine_step(const model *m, const model_seq *s, const float *row, const float *h, float *ctx,
                        float *band, float *scores)
{
    (void)h;
    const int H = m->cfg.hidden, n = window_len(s);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, H, m->w.attn[COS_SCALE][0], s->ring_k, H, row, 1, 0.0f, scores, 1);
    step_context(s, scores, n, ctx, band);
}

static const attn_mech COSINE = {
    .name = "cosine",
    .tensors = {{"attn.scale", 1, {DIM_1}, false}},
    .n_tensors = 1,
    .configure = single_head,
    .proj_dim = cosine_proj_dim,
    .key_dim = hidden_width,
    .project = cosine_project,
    .attend_seq = cosine_seq,
    .attend_step = cosine_step,
    .self_value = value_itself,
};

/* ---- multihead: per head j, s^j = q^j . k_i^j / sqrt(D), then out_proj ------ */

enum { MH_IN_W, MH_IN_B, MH_OUT_W, MH_OUT_B };

static int multihead_configure(model_config *c, int heads, char *err, size_t errlen)
{
    if (heads < 1) {
        err_set(err, errlen, "metadata: missing \"heads\"");
        return -1;
    }
    if (c->hidden % heads != 0) {
        err_set(err, errlen, "metadata \"heads\": %d does not divide hidden = %d", heads, c->hidden);
        return -1;
    }
    c->attn_dim = 0;
    c->heads = heads;
    return 0;
}

/* A position's projections: q [H], k [H], v [H]; a slot caches k and v. */
static int multihead_proj_dim(const model_config *c) { return 3 * c->hidden; }
static int multihead_key_dim(const model_config *c) { return 2 * c->hidden; }

static void multihead_project(const model *m, float *proj, const float *hs, const float *ks, const float *vs, int T,
                              void *scratch)
{
    (void)ks, (void)vs;
    const int H = m->cfg.hidden;
    linear(m, proj, 3 * H, hs, H, &m->w.attn_mat[MH_IN_W], m->w.attn[MH_IN_B], T, false, scratch);
}

static void multihead_seq(const model *m, float *ctx, float *ctxh, float *attn, float *S, const float *proj,
                          const float *hs, const float *ks, const float *vs, int T, int first, int64_t pos0)
{
    (void)ctx, (void)hs, (void)ks, (void)vs;
    const int H = m->cfg.hidden, N = m->cfg.heads, D = H / N;
    for (int j = 0; j < N; j++)
        attend_banded(ctxh + j * D, H, attn, S, proj + j * D, 3 * H, proj + H + j * D, 3 * H, proj + 2 * H + j * D,
                      3 * H, T, first, pos0, D, D, m->cfg.window, N, j, 1.0f / sqrtf((float)D));
}

static void multihead_step(const model *m, const model_seq *s, const float *row, const float *h, float *ctxh,
                           float *band, float *scores)
{
    (void)h;
    const int H = m->cfg.hidden, N = m->cfg.heads, D = H / N, W = m->cfg.window, n = window_len(s);
    for (int j = 0; j < N; j++) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, D, 1.0f / sqrtf((float)D), s->ring_k + j * D, 2 * H,
                    row + j * D, 1, 0.0f, scores, 1);
        softmax_inplace(scores, n);
        cblas_sgemv(CblasRowMajor, CblasTrans, n, D, 1.0f, s->ring_k + H + j * D, 2 * H, scores, 1, 0.0f,
                    ctxh + j * D, 1);
        if (band)
            write_band(band + (size_t)j * W, scores, n, s->pos, W);
    }
}

static void multihead_out(const model *m, float *ctx, const float *ctxh, int rows, void *scratch)
{
    const int H = m->cfg.hidden;
    linear(m, ctx, H, ctxh, H, &m->w.attn_mat[MH_OUT_W], m->w.attn[MH_OUT_B], rows, false, scratch);
}

/* A head's context with a window of one is its own value: u, the last H of the projections. */
static void multihead_self_value(const model *m, float *out, const float *row, const float *vs)
{
    (void)vs;
    const int H = m->cfg.hidden;
    memcpy(out, row + 2 * H, (size_t)H * sizeof *out);
}

static const attn_mech MULTIHEAD = {
    .name = "multihead",
    .size_key = "heads",
    .tensors = {{"attn.in_proj_weight", 2, {DIM_3H, DIM_H}, true},
                {"attn.in_proj_bias", 1, {DIM_3H}, false},
                {"attn.out_proj.weight", 2, {DIM_H, DIM_H}, true},
                {"attn.out_proj.bias", 1, {DIM_H}, false}},
    .n_tensors = 4,
    .configure = multihead_configure,
    .proj_dim = multihead_proj_dim,
    .key_dim = multihead_key_dim,
    .project = multihead_project,
    .attend_seq = multihead_seq,
    .attend_step = multihead_step,
    .self_value = multihead_self_value,
    .out_proj = multihead_out,
};

/* ---- multihead with keys and values from other rows (attn_kv continuation) --
 * torch.nn.MultiheadAttention's separate projections (kdim H, vdim E):
 * q = W_q h_t + b_q, k_i = W_k k_i + b_k, u_i = W_v e_i + b_v, the biases being
 * the three parts of in_proj_bias; the projections row is laid out as above. */

/* The bias and the output projection at the indices multihead's have, so multihead_out serves both. */
enum { MHKV_Q_W = MH_IN_W, MHKV_IN_B = MH_IN_B, MHKV_K_W = MH_OUT_B + 1, MHKV_V_W };

static void multihead_kv_project(const model *m, float *proj, const float *hs, const float *ks, const float *vs,
                                 int T, void *scratch)
{
    const int H = m->cfg.hidden, E = m->cfg.embed;
    const float *b = m->w.attn[MHKV_IN_B];
    linear(m, proj, 3 * H, hs, H, &m->w.attn_mat[MHKV_Q_W], b, T, false, scratch);
    linear(m, proj + H, 3 * H, ks, H, &m->w.attn_mat[MHKV_K_W], b + H, T, false, scratch);
    linear(m, proj + 2 * H, 3 * H, vs, E, &m->w.attn_mat[MHKV_V_W], b + 2 * H, T, false, scratch);
}

static const attn_mech MULTIHEAD_KV = {
    .name = "multihead",
    .size_key = "heads",
    .tensors = {{"attn.q_proj_weight", 2, {DIM_H, DIM_H}, true},
                {"attn.in_proj_bias", 1, {DIM_3H}, false},
                {"attn.out_proj.weight", 2, {DIM_H, DIM_H}, true},
                {"attn.out_proj.bias", 1, {DIM_H}, false},
                {"attn.k_proj_weight", 2, {DIM_H, DIM_H}, true},
                {"attn.v_proj_weight", 2, {DIM_H, DIM_E}, true}},
    .n_tensors = 6,
    .configure = multihead_configure,
    .proj_dim = multihead_proj_dim,
    .key_dim = multihead_key_dim,
    .project = multihead_kv_project,
    .attend_seq = multihead_seq,
    .attend_step = multihead_step,
    .self_value = multihead_self_value,
    .out_proj = multihead_out,
};

/* ---- the table -------------------------------------------------------------- */

static const attn_mech *const MECHS[ATTN_COUNT] = {
    [ATTN_ADDITIVE] = &ADDITIVE,
    [ATTN_DOT] = &DOT,
    [ATTN_COSINE] = &COSINE,
    [ATTN_MULTIHEAD] = &MULTIHEAD,
};

const attn_mech *attn_at(int i) { return MECHS[i]; }

const attn_mech *attn_for(int i, model_attn_kv kv)
{
    return i == ATTN_MULTIHEAD && kv == ATTN_KV_CONTINUATION ? &MULTIHEAD_KV : MECHS[i];
}

