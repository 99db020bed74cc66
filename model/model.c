/* model.c -- loading, full-sequence forward and batched incremental decoding.
 *
 * Both paths compute the function of docs/FORMAT.md.  The forward pass turns
 * everything that is not sequential into matrix products over all positions
 * (input projections, attention in diagonal blocks, output projections); the
 * step path does the same over the sequences of a batch.  Only the recurrence
 * itself is a matrix-vector product per position.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include "kernels.h"
#include "safetensors.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIM (1 << 16)    /* embed, hidden, attn_dim */
#define MAX_LAYERS 256
#define MAX_WINDOW (1 << 14)
#define MAX_VOCAB (1 << 20)
#define ATTN_BLOCK 64        /* query rows per banded attention product */

/* One recurrent layer's weights. */
typedef struct layer_weights {
    const float *wih; /* [G*H, E or H] */
    const float *whh; /* [G*H, H] */
    const float *bih; /* [G*H] */
    const float *bhh; /* [G*H] */
} layer_weights;

/* All weights: pointers into the (mapped) file. */
typedef struct model_weights {
    const float *embed;          /* [V, E] */
    layer_weights *layer;        /* [L] */
    const float *q, *k, *kb, *v; /* additive: [A, H], [A, H], [A], [1, A] */
    const float *scale;          /* cosine: [1] */
    const float *in_w, *in_b;    /* multihead: [3H, H], [3H] */
    const float *o_w, *o_b;      /* multihead: [H, H], [H] */
    const float *comb_w, *comb_b; /* [H, 2H], [H] */
    const float *out_w, *out_b;  /* [V, H], [V] */
} model_weights;

struct model {
    model_config cfg;
    model_weights w;
    st_file *file;
    uint64_t n_params;
    int key_dim; /* floats cached per ring slot besides h: A, 2H (k, v), H (normalised h) or 0 */
};

struct model_seq {
    const model *m;
    int64_t pos;
    float *h;      /* [L, H] */
    float *c;      /* [L, H], lstm only */
    float *ring_h; /* [W, H] top-layer outputs; slot i % W holds position i */
    float *ring_k; /* [W, key_dim] per-slot keys (and values), NULL for dot */
};

struct model_batch {
    int cap;
    float *x;       /* [cap, E] embeddings */
    float *hbuf[2]; /* [cap, H] layer states, alternating between layers */
    float *gi, *gh; /* [cap, G*H] input and recurrent projections */
    float *proj;    /* [cap, P] attention projections (2A, 3H or H) */
    float *ctx;     /* [cap, H] */
    float *ctxh;    /* [cap, H] multihead: heads' outputs before out_proj */
    float *o;       /* [cap, H] */
    float *scores;  /* [W] */
};

/* ---- small kernels ------------------------------------------------------- */

/* out[M, N] (+)= in[M, K] . w[N, K]^T + bias[N]; bias may be NULL.
 * With accumulate the product is added to out and bias is ignored. */
static void linear(float *out, int ldo, const float *in, int ldi, const float *w, int ldw, const float *bias, int M,
                   int N, int K, bool accumulate)
{
    if (!accumulate) {
        for (int r = 0; r < M; r++) {
            if (bias)
                memcpy(out + (size_t)r * ldo, bias, (size_t)N * sizeof *out);
            else
                memset(out + (size_t)r * ldo, 0, (size_t)N * sizeof *out);
        }
    }
    if (M == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, ldw, in, 1, 1.0f, out, 1);
    else if (M <= KERN_SMALL_M)
        kern_gemm_small(out, ldo, in, ldi, w, ldw, M, N, K);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, in, ldi, w, ldw, 1.0f, out, ldo);
}


__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
__attribute__((optimize("fp-contract=fast"))) static void cell_update(const model_config *cfg, const float *gi,
                                                                       const float *gh, float *h, float *c)
{
    const int H = cfg->hidden, H16 = H & ~15;
    switch (cfg->cell) {
    case CELL_ELMAN:
        for (int j = 0; j < H16; j += 16) {
            v16 v = v16_tanh(v16_load(gi + j) + v16_load(gh + j));
            memcpy(h + j, &v, sizeof v);
        }
        for (int j = H16; j < H; j++)
            h[j] = fast_tanhf(gi[j] + gh[j]);
        break;
    case CELL_GRU:
        for (int j = 0; j < H16; j += 16) {
            v16 r = v16_sigmoid(v16_load(gi + j) + v16_load(gh + j));
            v16 z = v16_sigmoid(v16_load(gi + H + j) + v16_load(gh + H + j));
            v16 n = v16_tanh(v16_load(gi + 2 * H + j) + r * v16_load(gh + 2 * H + j));
            v16 v = (1.0f - z) * n + z * v16_load(h + j);
            memcpy(h + j, &v, sizeof v);
        }
        for (int j = H16; j < H; j++) {
            float r = sigmoidf(gi[j] + gh[j]);
            float z = sigmoidf(gi[H + j] + gh[H + j]);
            float n = fast_tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
            h[j] = (1.0f - z) * n + z * h[j];
        }
        break;
    case CELL_LSTM:
        for (int j = 0; j < H16; j += 16) {
            v16 i = v16_sigmoid(v16_load(gi + j) + v16_load(gh + j));
            v16 f = v16_sigmoid(v16_load(gi + H + j) + v16_load(gh + H + j));
            v16 g = v16_tanh(v16_load(gi + 2 * H + j) + v16_load(gh + 2 * H + j));
            v16 o = v16_sigmoid(v16_load(gi + 3 * H + j) + v16_load(gh + 3 * H + j));
            v16 cv = f * v16_load(c + j) + i * g;
            v16 hv = o * v16_tanh(cv);
            memcpy(c + j, &cv, sizeof cv);
            memcpy(h + j, &hv, sizeof hv);
        }
        for (int j = H16; j < H; j++) {
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

static void softmax_inplace(float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = fast_expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

void model_log_softmax(float *out, const float *logits, int n)
{
    float mx = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += exp((double)(logits[i] - mx));
    float lse = mx + (float)log(sum);
    for (int i = 0; i < n; i++)
        out[i] = logits[i] - lse;
}

/* out[H] = x / max(||x||, 1e-8), as torch.nn.functional.normalize. */
static void normalize_row(float *out, const float *x, int H)
{
    float nrm = cblas_snrm2(H, x, 1);
    float inv = 1.0f / (nrm > 1e-8f ? nrm : 1e-8f);
    for (int j = 0; j < H; j++)
        out[j] = x[j] * inv;
}

/* Sum of v[a] * tanh(q[a] + k[a]): one additive attention score. */
static float additive_score(const float *v, const float *q, const float *k, int A)
{
    float s = 0.0f;
    for (int a = 0; a < A; a++)
        s += v[a] * fast_tanhf(q[a] + k[a]);
    return s;
}

/* ---- loading --------------------------------------------------------------- */

const char *model_cell_name(model_cell c)
{
    static const char *const names[] = {"elman", "gru", "lstm"};
    return names[c];
}

const char *model_attention_name(model_attention a)
{
    static const char *const names[] = {"additive", "dot", "cosine", "multihead"};
    return names[a];
}

/* A metadata value that must be a decimal integer in [1, max]. */
static int meta_posint(const st_file *f, const char *key, int max, bool required, int *out, char *err,
                       size_t errlen)
{
    const char *s = st_meta_get(f, key);
    *out = 0;
    if (!s) {
        if (required)
            err_set(err, errlen, "metadata: missing \"%s\"", key);
        return required ? -1 : 0;
    }
    long long v = 0;
    const char *p = s;
    if (*p < '1' || *p > '9')
        goto bad;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            goto bad;
        v = v * 10 + (*p - '0');
        if (v > max) {
            err_set(err, errlen, "metadata \"%s\": %s exceeds the limit of %d", key, s, max);
            return -1;
        }
    }
    *out = (int)v;
    return 0;
bad:
    err_set(err, errlen, "metadata \"%s\": \"%s\" is not a positive integer", key, s);
    return -1;
}

static int meta_choice(const st_file *f, const char *key, const char *const *choices, int n, int *out, char *err,
                       size_t errlen)
{
    const char *s = st_meta_get(f, key);
    if (!s) {
        err_set(err, errlen, "metadata: missing \"%s\"", key);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (strcmp(s, choices[i]) == 0) {
            *out = i;
            return 0;
        }
    char list[96] = "";
    for (int i = 0; i < n; i++) {
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
        if (i + 1 < n)
            strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    err_set(err, errlen, "metadata \"%s\": \"%s\" is not one of %s", key, s, list);
    return -1;
}

static int read_config(const st_file *f, model_config *cfg, char *err, size_t errlen)
{
    static const char *const format[] = {"attnlm"};
    static const char *const version[] = {"1"};
    static const char *const cells[] = {"elman", "gru", "lstm"};
    static const char *const attns[] = {"additive", "dot", "cosine", "multihead"};
    static const char *const tokenizers[] = {"byte"};
    int fmt, ver, cell, attn, tok, bos;
    if (meta_choice(f, "format", format, 1, &fmt, err, errlen) < 0 ||
        meta_choice(f, "format_version", version, 1, &ver, err, errlen) < 0 ||
        meta_posint(f, "vocab_size", MAX_VOCAB, true, &cfg->vocab, err, errlen) < 0 ||
        meta_posint(f, "embed_dim", MAX_DIM, true, &cfg->embed, err, errlen) < 0 ||
        meta_posint(f, "hidden", MAX_DIM, true, &cfg->hidden, err, errlen) < 0 ||
        meta_posint(f, "layers", MAX_LAYERS, true, &cfg->layers, err, errlen) < 0 ||
        meta_posint(f, "window", MAX_WINDOW, true, &cfg->window, err, errlen) < 0 ||
        meta_choice(f, "cell", cells, 3, &cell, err, errlen) < 0 ||
        meta_choice(f, "attention", attns, 4, &attn, err, errlen) < 0 ||
        meta_choice(f, "tokenizer", tokenizers, 1, &tok, err, errlen) < 0 ||
        meta_posint(f, "bos_id", MAX_VOCAB, true, &bos, err, errlen) < 0)
        return -1;
    cfg->cell = (model_cell)cell;
    cfg->attention = (model_attention)attn;
    cfg->gates = cfg->cell == CELL_ELMAN ? 1 : cfg->cell == CELL_GRU ? 3 : 4;
    cfg->bos_id = bos;
    if (cfg->vocab != 257) {
        err_set(err, errlen, "metadata \"vocab_size\": %d, but the byte tokenizer has 257 tokens", cfg->vocab);
        return -1;
    }
    if (bos != 256) {
        err_set(err, errlen, "metadata \"bos_id\": %d, but the byte tokenizer's BOS is 256", bos);
        return -1;
    }
    /* attn_dim and heads are validated wherever they appear, required where used. */
    int attn_dim, heads;
    if (meta_posint(f, "attn_dim", MAX_DIM, cfg->attention == ATTN_ADDITIVE, &attn_dim, err, errlen) < 0 ||
        meta_posint(f, "heads", MAX_DIM, cfg->attention == ATTN_MULTIHEAD, &heads, err, errlen) < 0)
        return -1;
    cfg->attn_dim = cfg->attention == ATTN_ADDITIVE ? attn_dim : 0;
    cfg->heads = cfg->attention == ATTN_MULTIHEAD ? heads : 1;
    if (cfg->attention == ATTN_MULTIHEAD && cfg->hidden % heads != 0) {
        err_set(err, errlen, "metadata \"heads\": %d does not divide hidden = %d", heads, cfg->hidden);
        return -1;
    }
    return 0;
}

static void shape_str(char *buf, size_t len, int ndim, const uint64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", d ? ", " : "", (unsigned long long)shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Finds name, checks its shape is exactly dims[ndim], returns its data. */
static const float *bind(const st_file *f, const char *name, int ndim, const int *dims, int *n_bound, char *err,
                         size_t errlen)
{
    const st_tensor *t = st_find(f, name);
    if (!t) {
        err_set(err, errlen, "missing tensor \"%s\"", name);
        return NULL;
    }
    bool ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == (uint64_t)dims[d];
    if (!ok) {
        uint64_t want[4];
        for (int d = 0; d < ndim; d++)
            want[d] = (uint64_t)dims[d];
        char got_s[96], want_s[96];
        shape_str(got_s, sizeof got_s, t->ndim, t->shape);
        shape_str(want_s, sizeof want_s, ndim, want);
        err_set(err, errlen, "tensor \"%s\": shape %s, expected %s", name, got_s, want_s);
        return NULL;
    }
    (*n_bound)++;
    return t->data;
}

#define BIND1(dst, name, d0)                                                   \
    do {                                                                       \
        int dims_[1] = {(d0)};                                                 \
        if (!((dst) = bind(f, (name), 1, dims_, &n_bound, err, errlen)))       \
            goto fail;                                                         \
    } while (0)
#define BIND2(dst, name, d0, d1)                                               \
    do {                                                                       \
        int dims_[2] = {(d0), (d1)};                                           \
        if (!((dst) = bind(f, (name), 2, dims_, &n_bound, err, errlen)))       \
            goto fail;                                                         \
    } while (0)

static int bind_weights(model *m, char *err, size_t errlen)
{
    const st_file *f = m->file;
    const model_config *c = &m->cfg;
    const int V = c->vocab, E = c->embed, H = c->hidden, GH = c->gates * c->hidden, A = c->attn_dim;
    model_weights *w = &m->w;
    int n_bound = 0;
    char name[64];

    w->layer = calloc((size_t)c->layers, sizeof *w->layer);
    if (!w->layer) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    BIND2(w->embed, "embed.weight", V, E);
    for (int k = 0; k < c->layers; k++) {
        layer_weights *l = &w->layer[k];
        snprintf(name, sizeof name, "rnn.weight_ih_l%d", k);
        BIND2(l->wih, name, GH, k == 0 ? E : H);
        snprintf(name, sizeof name, "rnn.weight_hh_l%d", k);
        BIND2(l->whh, name, GH, H);
        snprintf(name, sizeof name, "rnn.bias_ih_l%d", k);
        BIND1(l->bih, name, GH);
        snprintf(name, sizeof name, "rnn.bias_hh_l%d", k);
        BIND1(l->bhh, name, GH);
    }
    switch (c->attention) {
    case ATTN_ADDITIVE:
        BIND2(w->q, "attn.query.weight", A, H);
        BIND2(w->k, "attn.key.weight", A, H);
        BIND1(w->kb, "attn.key.bias", A);
        BIND2(w->v, "attn.v.weight", 1, A);
        break;
    case ATTN_DOT:
        break;
    case ATTN_COSINE:
        BIND1(w->scale, "attn.scale", 1);
        break;
    case ATTN_MULTIHEAD:
        BIND2(w->in_w, "attn.in_proj_weight", 3 * H, H);
        BIND1(w->in_b, "attn.in_proj_bias", 3 * H);
        BIND2(w->o_w, "attn.out_proj.weight", H, H);
        BIND1(w->o_b, "attn.out_proj.bias", H);
        break;
    }
    BIND2(w->comb_w, "combine.weight", H, 2 * H);
    BIND1(w->comb_b, "combine.bias", H);
    BIND2(w->out_w, "out.weight", V, H);
    BIND1(w->out_b, "out.bias", V);

    if (n_bound != st_tensor_count(f)) {
        /* Every expected tensor was found, so some other name is extra. */
        for (int i = 0; i < st_tensor_count(f); i++) {
            const char *tn = st_tensor_at(f, i)->name;
            bool known = !strcmp(tn, "embed.weight") || !strcmp(tn, "combine.weight") ||
                         !strcmp(tn, "combine.bias") || !strcmp(tn, "out.weight") || !strcmp(tn, "out.bias");
            for (int k = 0; k < c->layers && !known; k++) {
                const char *fmts[] = {"rnn.weight_ih_l%d", "rnn.weight_hh_l%d", "rnn.bias_ih_l%d",
                                      "rnn.bias_hh_l%d"};
                for (int j = 0; j < 4 && !known; j++) {
                    snprintf(name, sizeof name, fmts[j], k);
                    known = !strcmp(tn, name);
                }
            }
            const char *attn_names[] = {"attn.query.weight", "attn.key.weight", "attn.key.bias", "attn.v.weight",
                                        "attn.scale", "attn.in_proj_weight", "attn.in_proj_bias",
                                        "attn.out_proj.weight", "attn.out_proj.bias"};
            int lo = c->attention == ATTN_ADDITIVE ? 0 : c->attention == ATTN_COSINE ? 4 : 5;
            int hi = c->attention == ATTN_ADDITIVE ? 4 : c->attention == ATTN_COSINE ? 5 : 9;
            if (c->attention == ATTN_DOT)
                lo = hi = 0;
            for (int j = lo; j < hi && !known; j++)
                known = !strcmp(tn, attn_names[j]);
            if (!known) {
                err_set(err, errlen, "unexpected tensor \"%s\" for a %d-layer %s model with %s attention", tn,
                        c->layers, model_cell_name(c->cell), model_attention_name(c->attention));
                return -1;
            }
        }
        err_set(err, errlen, "unexpected tensors in the file");
        return -1;
    }
    return 0;
fail:
    return -1;
}

static int check_finite(const st_file *f, char *err, size_t errlen)
{
    for (int i = 0; i < st_tensor_count(f); i++) {
        const st_tensor *t = st_tensor_at(f, i);
        for (uint64_t j = 0; j < t->numel; j++)
            if (!isfinite(t->data[j])) {
                err_set(err, errlen, "tensor \"%s\": non-finite value (%s) at element %llu", t->name,
                        isnan(t->data[j]) ? "nan" : "inf", (unsigned long long)j);
                return -1;
            }
    }
    return 0;
}

model *model_load(const char *path, char *err, size_t errlen)
{
    model *m = calloc(1, sizeof *m);
    if (!m) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    m->file = st_open(path, err, errlen);
    if (!m->file || read_config(m->file, &m->cfg, err, errlen) < 0 || bind_weights(m, err, errlen) < 0 ||
        check_finite(m->file, err, errlen) < 0)
        goto fail;
    for (int i = 0; i < st_tensor_count(m->file); i++)
        m->n_params += st_tensor_at(m->file, i)->numel;
    switch (m->cfg.attention) {
    case ATTN_ADDITIVE: m->key_dim = m->cfg.attn_dim; break;
    case ATTN_DOT: m->key_dim = 0; break;
    case ATTN_COSINE: m->key_dim = m->cfg.hidden; break;
    case ATTN_MULTIHEAD: m->key_dim = 2 * m->cfg.hidden; break;
    }
    return m;
fail:
    model_free(m);
    return NULL;
}

void model_free(model *m)
{
    if (!m)
        return;
    free(m->w.layer);
    st_close(m->file);
    free(m);
}

const model_config *model_get_config(const model *m) { return &m->cfg; }
uint64_t model_param_count(const model *m) { return m->n_params; }
const char *model_meta(const model *m, const char *key) { return st_meta_get(m->file, key); }
int model_meta_count(const model *m) { return st_meta_count(m->file); }

void model_meta_at(const model *m, int i, const char **key, const char **value)
{
    const st_meta *e = st_meta_at(m->file, i);
    *key = e->key;
    *value = e->value;
}

/* ---- sequences ------------------------------------------------------------- */

/* Floats of one sequence's state: h (and c) per layer, then the ring. */
static size_t seq_floats(const model *m)
{
    const model_config *c = &m->cfg;
    size_t H = (size_t)c->hidden, L = (size_t)c->layers, W = (size_t)c->window;
    return L * H * (c->cell == CELL_LSTM ? 2 : 1) + W * H + W * (size_t)m->key_dim;
}

model_seq *model_seq_new(const model *m)
{
    const model_config *c = &m->cfg;
    size_t H = (size_t)c->hidden, L = (size_t)c->layers, W = (size_t)c->window;
    model_seq *s = calloc(1, sizeof *s);
    float *buf = calloc(seq_floats(m), sizeof *buf);
    if (!s || !buf) {
        free(s);
        free(buf);
        return NULL;
    }
    s->m = m;
    s->h = buf;
    s->c = c->cell == CELL_LSTM ? buf + L * H : NULL;
    s->ring_h = buf + L * H * (c->cell == CELL_LSTM ? 2 : 1);
    s->ring_k = m->key_dim ? s->ring_h + W * H : NULL;
    return s;
}

void model_seq_free(model_seq *s)
{
    if (!s)
        return;
    free(s->h);
    free(s);
}

void model_seq_reset(model_seq *s)
{
    memset(s->h, 0, seq_floats(s->m) * sizeof *s->h);
    s->pos = 0;
}

int64_t model_seq_pos(const model_seq *s) { return s->pos; }

int model_seq_copy(model_seq *dst, const model_seq *src)
{
    if (dst->m != src->m)
        return -1;
    memcpy(dst->h, src->h, seq_floats(src->m) * sizeof *src->h);
    dst->pos = src->pos;
    return 0;
}

static int check_tokens(const model *m, const int *tokens, int n, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab) {
            err_set(err, errlen, "token %d at position %d is outside the vocabulary [0, %d)", tokens[i], i,
                    m->cfg.vocab);
            return -1;
        }
    return 0;
}

/* ---- full-sequence forward ------------------------------------------------- */

/* Windowed attention of one head over T positions, in diagonal blocks:
 * for rows [t0, t0+bt) the keys [k0, t0+bt) are one product, the band is
 * softmaxed in place and the context is a second product.
 *   ctx [T, dv] (row stride ldc) <- softmax(scale * q k^T, band) . vals
 *   q [T, dk] (ldq), keys [T, dk] (ldk), vals [T, dv] (ldv)
 *   S: scratch [ATTN_BLOCK * (ATTN_BLOCK + W - 1)]
 *   attn: band maps [T, N, W] or NULL, written for head `head`. */
static void attend_banded(float *ctx, int ldc, float *attn, float *S, const float *q, int ldq, const float *keys,
                          int ldk, const float *vals, int ldv, int T, int dk, int dv, int W, int N, int head,
                          float scale)
{
    for (int t0 = 0; t0 < T; t0 += ATTN_BLOCK) {
        int bt = T - t0 < ATTN_BLOCK ? T - t0 : ATTN_BLOCK;
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
                    attn[((size_t)t * N + head) * W + (size_t)(i - t + W - 1)] = row[i - k0];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bt, dv, nk, 1.0f, S, nk, vals + (size_t)k0 * ldv,
                    ldv, 0.0f, ctx + (size_t)t0 * ldc, ldc);
    }
}

/* Additive attention rows need a tanh per (t, i, a): no product form. */
static void attend_additive(const model *m, float *ctx, float *attn, float *scores, const float *qa,
                            const float *ka, const float *hs, int T)
{
    const int H = m->cfg.hidden, A = m->cfg.attn_dim, W = m->cfg.window;
    for (int t = 0; t < T; t++) {
        int lo = t - W + 1 > 0 ? t - W + 1 : 0, n = t - lo + 1;
        for (int i = lo; i <= t; i++)
            scores[i - lo] = additive_score(m->w.v, qa + (size_t)t * A, ka + (size_t)i * A, A);
        softmax_inplace(scores, n);
        float *c = ctx + (size_t)t * H;
        memset(c, 0, (size_t)H * sizeof *c);
        for (int i = lo; i <= t; i++) {
            cblas_saxpy(H, scores[i - lo], hs + (size_t)i * H, 1, c, 1);
            if (attn)
                attn[(size_t)t * W + (size_t)(i - t + W - 1)] = scores[i - lo];
        }
    }
}

/* Scratch of forward_tail for sequences of up to T positions. */
static size_t tail_floats(const model *m, int T)
{
    const model_config *c = &m->cfg;
    size_t P = c->attention == ATTN_ADDITIVE ? 2 * (size_t)c->attn_dim
             : c->attention == ATTN_MULTIHEAD ? 3 * (size_t)c->hidden
             : c->attention == ATTN_COSINE ? (size_t)c->hidden : 0;
    return (size_t)T * P + 3 * (size_t)T * c->hidden + (size_t)ATTN_BLOCK * (ATTN_BLOCK + (size_t)c->window - 1) +
           (size_t)c->window;
}

/* Attention, the sequence's ring (for a prefill) and the output layer of one
 * sequence whose top-layer outputs are hs [T, H]; buf has tail_floats(m, T). */
static void forward_tail(const model *m, const float *hs, int T, float *logprobs, float *attn, model_seq *seq,
                         float *buf)
{
    const model_config *c = &m->cfg;
    const model_weights *w = &m->w;
    const int V = c->vocab, H = c->hidden, W = c->window, N = c->heads, A = c->attn_dim;
    size_t P = c->attention == ATTN_ADDITIVE ? 2 * (size_t)A : c->attention == ATTN_MULTIHEAD ? 3 * (size_t)H
             : c->attention == ATTN_COSINE ? (size_t)H : 0;
    size_t Tz = (size_t)T, n_h = Tz * (size_t)H;
    float *proj = buf, *ctx = proj + Tz * P, *ctxh = ctx + n_h, *o = ctxh + n_h, *S = o + n_h,
          *scores = S + (size_t)ATTN_BLOCK * (ATTN_BLOCK + (size_t)W - 1);

    if (attn)
        memset(attn, 0, Tz * (size_t)N * (size_t)W * sizeof *attn);
    switch (c->attention) {
    case ATTN_ADDITIVE: /* proj: queries [T, A], then keys [T, A] */
        linear(proj, A, hs, H, w->q, H, NULL, T, A, H, false);
        linear(proj + Tz * A, A, hs, H, w->k, H, w->kb, T, A, H, false);
        attend_additive(m, ctx, attn, scores, proj, proj + Tz * A, hs, T);
        break;
    case ATTN_DOT:
        attend_banded(ctx, H, attn, S, hs, H, hs, H, hs, H, T, H, H, W, 1, 0, 1.0f / sqrtf((float)H));
        break;
    case ATTN_COSINE:
        for (int t = 0; t < T; t++)
            normalize_row(proj + (size_t)t * H, hs + (size_t)t * H, H);
        attend_banded(ctx, H, attn, S, proj, H, proj, H, hs, H, T, H, H, W, 1, 0, w->scale[0]);
        break;
    case ATTN_MULTIHEAD: {
        const int D = H / N;
        linear(proj, 3 * H, hs, H, w->in_w, H, w->in_b, T, 3 * H, H, false);
        for (int j = 0; j < N; j++)
            attend_banded(ctxh + j * D, H, attn, S, proj + j * D, 3 * H, proj + H + j * D, 3 * H,
                          proj + 2 * H + j * D, 3 * H, T, D, D, W, N, j, 1.0f / sqrtf((float)D));
        linear(ctx, H, ctxh, H, w->o_w, H, w->o_b, T, H, H, false);
        break;
    }
    }
    if (seq) {
        int n = T < W ? T : W;
        for (int i = T - n; i < T; i++) {
            size_t slot = (size_t)(i % W);
            memcpy(seq->ring_h + slot * H, hs + (size_t)i * H, (size_t)H * sizeof *hs);
            if (m->key_dim) {
                const float *src = c->attention == ATTN_ADDITIVE ? proj + Tz * A + (size_t)i * A
                                 : c->attention == ATTN_MULTIHEAD ? proj + (size_t)i * 3 * H + H
                                                                  : proj + (size_t)i * H;
                memcpy(seq->ring_k + slot * m->key_dim, src, (size_t)m->key_dim * sizeof *src);
            }
        }
        seq->pos = T;
    }

    if (logprobs) {
        linear(o, H, hs, H, w->comb_w, 2 * H, w->comb_b, T, H, H, false);
        linear(o, H, ctx, H, w->comb_w + H, 2 * H, NULL, T, H, H, true);
        for (size_t i = 0; i < n_h; i++)
            o[i] = fast_tanhf(o[i]);
        linear(logprobs, V, o, H, w->out_w, H, w->out_b, T, V, H, false);
        for (int t = 0; t < T; t++)
            model_log_softmax(logprobs + (size_t)t * V, logprobs + (size_t)t * V, V);
    }
}

int model_forward_batch(const model *m, int B, const int *const *tokens, const int *lens, float *const *logprobs,
                        float *const *attn, model_seq *const *seqs, char *err, size_t errlen)
{
    const model_config *c = &m->cfg;
    const model_weights *w = &m->w;
    const int E = c->embed, H = c->hidden, GH = c->gates * c->hidden;
    if (B < 1) {
        err_set(err, errlen, "no sequences to run");
        return -1;
    }
    size_t S = 0;
    int Tmax = 0;
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1) {
            err_set(err, errlen, "empty token sequence");
            return -1;
        }
        if (check_tokens(m, tokens[b], lens[b], err, errlen) < 0)
            return -1;
        if (seqs && seqs[b] && (seqs[b]->m != m || seqs[b]->pos != 0)) {
            err_set(err, errlen, "prefill needs a fresh sequence of this model");
            return -1;
        }
        S += (size_t)lens[b];
        Tmax = lens[b] > Tmax ? lens[b] : Tmax;
    }
    size_t Bz = (size_t)B;
    size_t total = S * (size_t)E + 2 * S * (size_t)H + S * (size_t)GH + Bz * ((size_t)GH + 2 * (size_t)H) +
                   tail_floats(m, Tmax);
    float *buf = malloc(total * sizeof *buf);
    /* order: sequences by decreasing length, so the ones still running at a position are a prefix */
    int *order = malloc(2 * Bz * sizeof *order), *off = order ? order + Bz : NULL;
    if (!buf || !order) {
        free(buf);
        free(order);
        err_set(err, errlen, "out of memory for a forward pass over %zu tokens", S);
        return -1;
    }
    float *x = buf, *hA = x + S * E, *hB = hA + S * H, *gi = hB + S * H, *gh = gi + S * GH, *hst = gh + Bz * GH,
          *cst = hst + Bz * H, *tail = cst + Bz * H;
    for (int b = 0, pos = 0; b < B; b++) {
        off[b] = pos;
        pos += lens[b];
        int r = b;
        while (r > 0 && lens[order[r - 1]] < lens[b]) {
            order[r] = order[r - 1];
            r--;
        }
        order[r] = b;
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++)
            memcpy(x + (size_t)(off[b] + t) * E, w->embed + (size_t)tokens[b][t] * E, (size_t)E * sizeof *x);

    /* Recurrent stack: input projections of every position are one product;
     * each position's recurrent product covers every sequence still running. */
    const float *in = x;
    int in_dim = E;
    float *hout = hA;
    for (int k = 0; k < c->layers; k++) {
        const layer_weights *l = &w->layer[k];
        linear(gi, GH, in, in_dim, l->wih, in_dim, l->bih, (int)S, GH, in_dim, false);
        memset(hst, 0, Bz * (size_t)H * sizeof *hst);
        memset(cst, 0, Bz * (size_t)H * sizeof *cst);
        int running = B;
        for (int t = 0; t < Tmax; t++) {
            while (lens[order[running - 1]] <= t)
                running--;
            linear(gh, GH, hst, H, l->whh, H, l->bhh, running, GH, H, false);
            for (int r = 0; r < running; r++) {
                size_t p = (size_t)(off[order[r]] + t);
                cell_update(c, gi + p * GH, gh + (size_t)r * GH, hst + (size_t)r * H, cst + (size_t)r * H);
                memcpy(hout + p * H, hst + (size_t)r * H, (size_t)H * sizeof *hst);
            }
        }
        for (int r = 0; seqs && r < B; r++) {
            model_seq *sq = seqs[order[r]];
            if (!sq)
                continue;
            memcpy(sq->h + (size_t)k * H, hst + (size_t)r * H, (size_t)H * sizeof *hst);
            if (sq->c)
                memcpy(sq->c + (size_t)k * H, cst + (size_t)r * H, (size_t)H * sizeof *cst);
        }
        in = hout;
        in_dim = H;
        hout = hout == hA ? hB : hA;
    }
    for (int b = 0; b < B; b++)
        forward_tail(m, in + (size_t)off[b] * H, lens[b], logprobs ? logprobs[b] : NULL, attn ? attn[b] : NULL,
                     seqs ? seqs[b] : NULL, tail);
    free(order);
    free(buf);
    return 0;
}

int model_forward(const model *m, const int *tokens, int T, float *logprobs, float *attn, model_seq *seq,
                  char *err, size_t errlen)
{
    return model_forward_batch(m, 1, &tokens, &T, &logprobs, &attn, &seq, err, errlen);
}

/* ---- batched incremental decoding ----------------------------------------- */

model_batch *model_batch_new(const model *m, int max_batch)
{
    const model_config *c = &m->cfg;
    if (max_batch < 1)
        return NULL;
    size_t B = (size_t)max_batch, H = (size_t)c->hidden, GH = (size_t)c->gates * H;
    size_t P = c->attention == ATTN_ADDITIVE ? 2 * (size_t)c->attn_dim : 3 * H;
    size_t total = B * (size_t)c->embed + 2 * B * H + 2 * B * GH + B * P + 3 * B * H + (size_t)c->window;
    model_batch *b = calloc(1, sizeof *b);
    float *buf = calloc(total, sizeof *buf);
    if (!b || !buf) {
        free(b);
        free(buf);
        return NULL;
    }
    b->cap = max_batch;
    b->x = buf;
    b->hbuf[0] = b->x + B * (size_t)c->embed;
    b->hbuf[1] = b->hbuf[0] + B * H;
    b->gi = b->hbuf[1] + B * H;
    b->gh = b->gi + B * GH;
    b->proj = b->gh + B * GH;
    b->ctx = b->proj + B * P;
    b->ctxh = b->ctx + B * H;
    b->o = b->ctxh + B * H;
    b->scores = b->o + B * H;
    return b;
}

void model_batch_free(model_batch *b)
{
    if (!b)
        return;
    free(b->x);
    free(b);
}

/* Writes the weights over a sequence's valid ring slots (0 .. n-1) into the
 * band map of position pos.  Slot s holds position pos - ((pos - s) mod W). */
static void write_band(float *band, const float *weights, int n, int64_t pos, int W)
{
    for (int s = 0; s < n; s++) {
        int d = (int)((pos - s) % W);
        band[W - 1 - d] = weights[s];
    }
}

int model_step(const model *m, model_batch *bt, model_seq *const *seqs, const int *tokens, int B, float *logits,
               float *attn, char *err, size_t errlen)
{
    const model_config *c = &m->cfg;
    const model_weights *w = &m->w;
    const int V = c->vocab, E = c->embed, H = c->hidden, GH = c->gates * c->hidden, W = c->window,
              N = c->heads, A = c->attn_dim;
    if (B < 1 || B > bt->cap) {
        err_set(err, errlen, "batch of %d sequences, this scratch holds 1 to %d", B, bt->cap);
        return -1;
    }
    if (check_tokens(m, tokens, B, err, errlen) < 0)
        return -1;
    for (int b = 0; b < B; b++)
        if (seqs[b]->m != m) {
            err_set(err, errlen, "sequence %d belongs to another model", b);
            return -1;
        }

    for (int b = 0; b < B; b++)
        memcpy(bt->x + (size_t)b * E, w->embed + (size_t)tokens[b] * E, (size_t)E * sizeof *bt->x);
    const float *in = bt->x;
    int in_dim = E;
    for (int k = 0; k < c->layers; k++) {
        const layer_weights *l = &w->layer[k];
        float *hp = bt->hbuf[k % 2];
        for (int b = 0; b < B; b++)
            memcpy(hp + (size_t)b * H, seqs[b]->h + (size_t)k * H, (size_t)H * sizeof *hp);
        linear(bt->gi, GH, in, in_dim, l->wih, in_dim, l->bih, B, GH, in_dim, false);
        linear(bt->gh, GH, hp, H, l->whh, H, l->bhh, B, GH, H, false);
        for (int b = 0; b < B; b++) {
            float *hrow = hp + (size_t)b * H;
            cell_update(c, bt->gi + (size_t)b * GH, bt->gh + (size_t)b * GH, hrow,
                        seqs[b]->c ? seqs[b]->c + (size_t)k * H : NULL);
            memcpy(seqs[b]->h + (size_t)k * H, hrow, (size_t)H * sizeof *hrow);
        }
        in = hp;
        in_dim = H;
    }
    const float *top = in; /* [B, H] */

    switch (c->attention) {
    case ATTN_ADDITIVE:
        linear(bt->proj, 2 * A, top, H, w->q, H, NULL, B, A, H, false);
        linear(bt->proj + A, 2 * A, top, H, w->k, H, w->kb, B, A, H, false);
        break;
    case ATTN_MULTIHEAD:
        linear(bt->proj, 3 * H, top, H, w->in_w, H, w->in_b, B, 3 * H, H, false);
        break;
    case ATTN_COSINE:
        for (int b = 0; b < B; b++)
            normalize_row(bt->proj + (size_t)b * H, top + (size_t)b * H, H);
        break;
    case ATTN_DOT:
        break;
    }
    if (attn)
        memset(attn, 0, (size_t)B * N * W * sizeof *attn);
    for (int b = 0; b < B; b++) {
        model_seq *s = seqs[b];
        const float *h = top + (size_t)b * H;
        size_t slot = (size_t)(s->pos % W);
        int n = s->pos + 1 < W ? (int)s->pos + 1 : W;
        float *sc = bt->scores, *cx = bt->ctx + (size_t)b * H;
        memcpy(s->ring_h + slot * H, h, (size_t)H * sizeof *h);
        switch (c->attention) {
        case ATTN_ADDITIVE: {
            const float *qa = bt->proj + (size_t)b * 2 * A;
            memcpy(s->ring_k + slot * A, qa + A, (size_t)A * sizeof *qa);
            for (int i = 0; i < n; i++)
                sc[i] = additive_score(w->v, qa, s->ring_k + (size_t)i * A, A);
            break;
        }
        case ATTN_DOT:
            cblas_sgemv(CblasRowMajor, CblasNoTrans, n, H, 1.0f / sqrtf((float)H), s->ring_h, H, h, 1, 0.0f, sc, 1);
            break;
        case ATTN_COSINE: {
            const float *hn = bt->proj + (size_t)b * H;
            memcpy(s->ring_k + slot * H, hn, (size_t)H * sizeof *hn);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, n, H, w->scale[0], s->ring_k, H, hn, 1, 0.0f, sc, 1);
            break;
        }
        case ATTN_MULTIHEAD: {
            const int D = H / N;
            const float *qkv = bt->proj + (size_t)b * 3 * H;
            float *ch = bt->ctxh + (size_t)b * H;
            memcpy(s->ring_k + slot * 2 * H, qkv + H, 2 * (size_t)H * sizeof *qkv);
            for (int j = 0; j < N; j++) {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, n, D, 1.0f / sqrtf((float)D), s->ring_k + j * D, 2 * H,
                            qkv + j * D, 1, 0.0f, sc, 1);
                softmax_inplace(sc, n);
                cblas_sgemv(CblasRowMajor, CblasTrans, n, D, 1.0f, s->ring_k + H + j * D, 2 * H, sc, 1, 0.0f,
                            ch + j * D, 1);
                if (attn)
                    write_band(attn + ((size_t)b * N + j) * W, sc, n, s->pos, W);
            }
            break;
        }
        }
        if (c->attention != ATTN_MULTIHEAD) {
            softmax_inplace(sc, n);
            cblas_sgemv(CblasRowMajor, CblasTrans, n, H, 1.0f, s->ring_h, H, sc, 1, 0.0f, cx, 1);
            if (attn)
                write_band(attn + (size_t)b * W, sc, n, s->pos, W);
        }
        s->pos++;
    }
    if (c->attention == ATTN_MULTIHEAD)
        linear(bt->ctx, H, bt->ctxh, H, w->o_w, H, w->o_b, B, H, H, false);

    linear(bt->o, H, top, H, w->comb_w, 2 * H, w->comb_b, B, H, H, false);
    linear(bt->o, H, bt->ctx, H, w->comb_w + H, 2 * H, NULL, B, H, H, true);
    for (size_t i = 0; i < (size_t)B * H; i++)
        bt->o[i] = fast_tanhf(bt->o[i]);
    linear(logits, V, bt->o, H, w->out_w, H, w->out_b, B, V, H, false);
    return 0;
}
