/* model.c -- loading a model file and the per-sequence state.
 *
 * Loading reads the configuration from the metadata, then binds every tensor
 * the configuration implies (the recurrent stack's, the attention mechanism's
 * from its descriptor, the output layers') with its exact shape, and refuses
 * a file with anything missing, extra, misshapen or non-finite.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine.h"
#include "tokenizer.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#define MAX_DIM (1 << 16) /* embed, hidden, attn_dim, heads */
#define MAX_LAYERS 256
#define MAX_WINDOW (1 << 14)
#define MAX_VOCAB (1 << 20)
#define MAX_TENSOR_NAME 64

/* The recurrent cells: metadata name and gate blocks per layer (G). */
static const struct {
    const char *name;
    int gates;
} CELLS[CELL_COUNT] = {[CELL_ELMAN] = {"elman", 1}, [CELL_GRU] = {"gru", 3}, [CELL_LSTM] = {"lstm", 4}};

/* The recurrent stack's tensors of layer k, by the names PyTorch gives them. */
static const char *const LAYER_TENSORS[] = {"rnn.weight_ih_l%d", "rnn.weight_hh_l%d", "rnn.bias_ih_l%d",
                                            "rnn.bias_hh_l%d"};

const char *model_cell_name(model_cell c) { return CELLS[c].name; }
const char *model_attention_name(model_attention a) { return attn_at(a)->name; }

static const char *const ATTN_KVS[ATTN_KV_COUNT] = {[ATTN_KV_STATE] = "state",
                                                   [ATTN_KV_CONTINUATION] = "continuation"};

const char *model_attn_kv_name(model_attn_kv kv) { return kv >= 0 && kv < ATTN_KV_COUNT ? ATTN_KVS[kv] : "?"; }

/* ---- configuration --------------------------------------------------------- */

/* A metadata value that must be a decimal integer in [1, max]; 0 in *out when
 * absent and not required. */
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

/* A metadata value that must be one of choices[n]; its index in *out. */
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
    static const char *const version[] = {"1", "2"};
    static const char *const tokenizers[] = {"byte"};
    const char *cells[CELL_COUNT], *attns[ATTN_COUNT];
    for (int i = 0; i < CELL_COUNT; i++)
        cells[i] = CELLS[i].name;
    for (int i = 0; i < ATTN_COUNT; i++)
        attns[i] = attn_at(i)->name;
    int fmt, ver, cell, attn, tok, bos;
    if (meta_choice(f, "format", format, 1, &fmt, err, errlen) < 0 ||
        meta_choice(f, "format_version", version, 2, &ver, err, errlen) < 0 ||
        meta_posint(f, "vocab_size", MAX_VOCAB, true, &cfg->vocab, err, errlen) < 0 ||
        meta_posint(f, "embed_dim", MAX_DIM, true, &cfg->embed, err, errlen) < 0 ||
        meta_posint(f, "hidden", MAX_DIM, true, &cfg->hidden, err, errlen) < 0 ||
        meta_posint(f, "layers", MAX_LAYERS, true, &cfg->layers, err, errlen) < 0 ||
        meta_posint(f, "window", MAX_WINDOW, true, &cfg->window, err, errlen) < 0 ||
        meta_choice(f, "cell", cells, CELL_COUNT, &cell, err, errlen) < 0 ||
        meta_choice(f, "attention", attns, ATTN_COUNT, &attn, err, errlen) < 0 ||
        meta_choice(f, "tokenizer", tokenizers, 1, &tok, err, errlen) < 0 ||
        meta_posint(f, "bos_id", MAX_VOCAB, true, &bos, err, errlen) < 0)
        return -1;
    cfg->cell = (model_cell)cell;
    cfg->attention = (model_attention)attn;
    cfg->format_version = ver + 1;
    /* Version 1 has no attn_kv (its keys and values are the states); version 2 must say. */
    int kv = ATTN_KV_STATE;
    if (cfg->format_version == 1 && st_meta_get(f, "attn_kv")) {
        err_set(err, errlen,
                "metadata \"attn_kv\": not part of format version 1 (set \"format_version\" to 2)");
        return -1;
    }
    if (cfg->format_version >= 2 && meta_choice(f, "attn_kv", ATTN_KVS, ATTN_KV_COUNT, &kv, err, errlen) < 0)
        return -1;
    cfg->attn_kv = (model_attn_kv)kv;
    cfg->gates = CELLS[cell].gates;
    cfg->bos_id = bos;
    if (cfg->vocab != TOK_VOCAB) {
        err_set(err, errlen, "metadata \"vocab_size\": %d, but the byte tokenizer has %d tokens", cfg->vocab,
                TOK_VOCAB);
        return -1;
    }
    if (bos != TOK_BOS) {
        err_set(err, errlen, "metadata \"bos_id\": %d, but the byte tokenizer's BOS is %d", bos, TOK_BOS);
        return -1;
    }
    /* Every mechanism's size key is checked wherever it appears; each
     * mechanism then says which it needs. */
    int sizes[2], size = 0;
    static const char *const size_keys[] = {"attn_dim", "heads"};
    for (int i = 0; i < 2; i++) {
        if (meta_posint(f, size_keys[i], MAX_DIM, false, &sizes[i], err, errlen) < 0)
            return -1;
        if (attn_at(attn)->size_key && strcmp(attn_at(attn)->size_key, size_keys[i]) == 0)
            size = sizes[i];
    }
    if (attn_for(attn, cfg->attn_kv)->configure(cfg, size, err, errlen) < 0)
        return -1;
    cfg->value_dim = cfg->attn_kv == ATTN_KV_CONTINUATION ? cfg->embed : cfg->hidden;
    cfg->context_dim = cfg->attention == ATTN_MULTIHEAD ? cfg->hidden : cfg->value_dim;
    return 0;
}

/* ---- tensors --------------------------------------------------------------- */

static void shape_str(char *buf, size_t len, int ndim, const uint64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", d ? ", " : "", (unsigned long long)shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Finds name, checks its shape is exactly dims[ndim], returns its data. */
static const float *bind(const st_file *f, const char *name, int ndim, int d0, int d1, int *n_bound, char *err,
                         size_t errlen)
{
    const st_tensor *t = st_find(f, name);
    if (!t) {
        err_set(err, errlen, "missing tensor \"%s\"", name);
        return NULL;
    }
    const uint64_t want[2] = {(uint64_t)d0, (uint64_t)d1};
    bool ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == want[d];
    if (!ok) {
        char got_s[96], want_s[96];
        shape_str(got_s, sizeof got_s, t->ndim, t->shape);
        shape_str(want_s, sizeof want_s, ndim, want);
        err_set(err, errlen, "tensor \"%s\": shape %s, expected %s", name, got_s, want_s);
        return NULL;
    }
    (*n_bound)++;
    return t->data;
}

/* The first tensor of the file that the configuration does not use; every
 * expected one having been found, there is one when the counts differ. */
static const char *extra_tensor(const st_file *f, const model_config *c, const attn_mech *a)
{
    static const char *const fixed[] = {"embed.weight", "combine.weight", "combine.bias", "out.weight", "out.bias"};
    char name[MAX_TENSOR_NAME];
    for (int i = 0; i < st_tensor_count(f); i++) {
        const char *tn = st_tensor_at(f, i)->name;
        bool known = false;
        for (size_t j = 0; j < sizeof fixed / sizeof *fixed && !known; j++)
            known = !strcmp(tn, fixed[j]);
        for (int k = 0; k < c->layers && !known; k++)
            for (size_t j = 0; j < sizeof LAYER_TENSORS / sizeof *LAYER_TENSORS && !known; j++) {
                snprintf(name, sizeof name, LAYER_TENSORS[j], k);
                known = !strcmp(tn, name);
            }
        for (int j = 0; j < a->n_tensors && !known; j++)
            known = !strcmp(tn, a->tensors[j].name);
        if (!known)
            return tn;
    }
    return NULL;
}

/* Floats of the weights kept as vectors: the embedding, the biases and the
 * mechanism's tensors that are not matrices. */
static size_t vector_floats(const model_config *c, const attn_mech *a)
{
    size_t n = (size_t)c->vocab * c->embed + (size_t)c->layers * 2 * c->gates * c->hidden + (size_t)c->hidden +
               (size_t)c->vocab;
    for (int j = 0; j < a->n_tensors; j++)
        if (!a->tensors[j].product)
            n += (size_t)attn_dim_value(a->tensors[j].dims[0], c) *
                 (a->tensors[j].ndim > 1 ? (size_t)attn_dim_value(a->tensors[j].dims[1], c) : 1);
    return n;
}

/* Where the loader puts what it binds: the vectors' arena and the precision. */
typedef struct binder {
    model *m;
    float *next; /* the arena's free part */
    kern_prec prec;
    int n_bound;
    char *err;
    size_t errlen;
} binder;

/* Binds a vector tensor: copied into the arena. */
static int bind_vector(binder *b, const float **dst, const char *name, int ndim, int d0, int d1)
{
    const float *src = bind(b->m->file, name, ndim, d0, d1, &b->n_bound, b->err, b->errlen);
    if (!src)
        return -1;
    size_t n = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    memcpy(b->next, src, n * sizeof *src);
    *dst = b->next;
    b->next += n;
    b->m->weight_bytes += n * sizeof *src;
    return 0;
}

/* Packs columns [c0, c0 + k) of the [n, cols] matrix src into w. */
static int pack(binder *b, kmat *w, const char *name, const float *src, int cols, int c0, int n, int k)
{
    char why[ATTNLM_ERR_LEN];
    if (kmat_pack(w, src + c0, cols, n, k, b->prec, why, sizeof why) < 0) {
        err_set(b->err, b->errlen, "tensor \"%s\": %s", name, why);
        return -1;
    }
    b->m->weight_bytes += kmat_bytes(w);
    size_t need = kern_scratch_bytes(k);
    if (need > b->m->scratch_bytes)
        b->m->scratch_bytes = need;
    return 0;
}

/* Binds a matrix tensor [n, k]: packed at the model's precision. */
static int bind_matrix(binder *b, kmat *w, const char *name, int n, int k)
{
    const float *src = bind(b->m->file, name, 2, n, k, &b->n_bound, b->err, b->errlen);
    return src ? pack(b, w, name, src, k, 0, n, k) : -1;
}

static int bind_weights(model *m, char *err, size_t errlen)
{
    const st_file *f = m->file;
    const model_config *c = &m->cfg;
    const attn_mech *a = m->attn;
    const int V = c->vocab, E = c->embed, H = c->hidden, GH = c->gates * c->hidden;
    model_weights *w = &m->w;
    char name[MAX_TENSOR_NAME];
    static const kern_prec PREC[MODEL_PRECISION_COUNT] = {KERN_F32, KERN_BF16, KERN_INT8};

    w->layer = calloc((size_t)c->layers, sizeof *w->layer);
    m->vectors = malloc(vector_floats(c, a) * sizeof *m->vectors);
    if (!w->layer || !m->vectors) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    binder b = {.m = m, .next = m->vectors, .prec = PREC[m->precision], .err = err, .errlen = errlen};
    if (bind_vector(&b, &w->embed, "embed.weight", 2, V, E) < 0)
        return -1;
    for (int k = 0; k < c->layers; k++) {
        layer_weights *l = &w->layer[k];
        snprintf(name, sizeof name, LAYER_TENSORS[0], k);
        if (bind_matrix(&b, &l->wih, name, GH, k == 0 ? E : H) < 0)
            return -1;
        snprintf(name, sizeof name, LAYER_TENSORS[1], k);
        if (bind_matrix(&b, &l->whh, name, GH, H) < 0)
            return -1;
        snprintf(name, sizeof name, LAYER_TENSORS[2], k);
        if (bind_vector(&b, &l->bih, name, 1, GH, 0) < 0)
            return -1;
        snprintf(name, sizeof name, LAYER_TENSORS[3], k);
        if (bind_vector(&b, &l->bhh, name, 1, GH, 0) < 0)
            return -1;
    }
    for (int j = 0; j < a->n_tensors; j++) {
        const attn_tensor *t = &a->tensors[j];
        int d0 = attn_dim_value(t->dims[0], c), d1 = t->ndim > 1 ? attn_dim_value(t->dims[1], c) : 0;
        if (t->product ? bind_matrix(&b, &w->attn_mat[j], t->name, d0, d1) < 0
                       : bind_vector(&b, &w->attn[j], t->name, t->ndim, d0, d1) < 0)
            return -1;
    }
    const int C = c->context_dim;
    const float *comb = bind(f, "combine.weight", 2, H, H + C, &b.n_bound, err, errlen);
    if (!comb || pack(&b, &w->comb_h, "combine.weight", comb, H + C, 0, H, H) < 0 ||
        pack(&b, &w->comb_c, "combine.weight", comb, H + C, H, H, C) < 0 ||
        bind_vector(&b, &w->comb_b, "combine.bias", 1, H, 0) < 0 || bind_matrix(&b, &w->out_w, "out.weight", V, H) < 0 ||
        bind_vector(&b, &w->out_b, "out.bias", 1, V, 0) < 0)
        return -1;

    if (b.n_bound != st_tensor_count(f)) {
        const char *tn = extra_tensor(f, c, a);
        if (tn)
            err_set(err, errlen, "unexpected tensor \"%s\" for a %d-layer %s model with %s attention", tn, c->layers,
                    model_cell_name(c->cell), a->name);
        else
            err_set(err, errlen, "unexpected tensors in the file");
        return -1;
    }
    return 0;
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

/* Tells loaded models apart for as long as the process runs (an address can be reused). */
static _Atomic uint64_t next_model_id;

/* Takes f (freed on failure) and builds the model its contents describe. */
static model *model_from(st_file *f, const model_opts *opts, char *err, size_t errlen)
{
    if (!f)
        return NULL;
    model *m = calloc(1, sizeof *m);
    if (!m) {
        st_close(f);
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    m->file = f;
    m->id = atomic_fetch_add(&next_model_id, 1) + 1;
    m->precision = opts ? opts->precision : MODEL_F32;
    if (m->precision < 0 || m->precision >= MODEL_PRECISION_COUNT) {
        err_set(err, errlen, "unknown precision %d", (int)m->precision);
        goto fail;
    }
    char why[ATTNLM_ERR_LEN];
    if (!(m->kern = kern_named(opts ? opts->kernels : NULL, why, sizeof why))) {
        err_set(err, errlen, "kernels %s", why);
        goto fail;
    }
    if (read_config(m->file, &m->cfg, err, errlen) < 0)
        goto fail;
    m->attn = attn_for(m->cfg.attention, m->cfg.attn_kv);
    if (check_finite(m->file, err, errlen) < 0 || bind_weights(m, err, errlen) < 0)
        goto fail;
    for (int i = 0; i < st_tensor_count(m->file); i++)
        m->n_params += st_tensor_at(m->file, i)->numel;
    /* Everything is packed or copied: the file's tensor data is no longer
     * needed, and goes back to the system even when the allocator had put it
     * on its heap (as it does for a reload's file once a larger block has
     * been freed). */
    st_release_data(m->file);
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
    m->proj_dim = m->attn->proj_dim(&m->cfg);
    m->key_dim = m->attn->key_dim(&m->cfg);
    snprintf(m->kernels, sizeof m->kernels, "%s, %s (%s)", m->kern->name, model_precision_name(m->precision),
             m->kern->how[m->w.out_w.prec]);
    return m;
fail:
    model_free(m);
    return NULL;
}

int model_kernels_check(const char *name, char *err, size_t errlen)
{
    return kern_named(name, err, errlen) ? 0 : -1;
}

model *model_load_opts(const char *path, const model_opts *opts, char *err, size_t errlen)
{
    return model_from(st_open(path, err, errlen), opts, err, errlen);
}

model *model_load(const char *path, char *err, size_t errlen) { return model_load_opts(path, NULL, err, errlen); }

model *model_load_mem(const void *data, size_t len, char *err, size_t errlen)
{
    return model_from(st_open_mem(data, len, err, errlen), NULL, err, errlen);
}

void model_free(model *m)
{
    if (!m)
        return;
    for (int k = 0; m->w.layer && k < m->cfg.layers; k++) {
        kmat_free(&m->w.layer[k].wih);
        kmat_free(&m->w.layer[k].whh);
    }
    for (int j = 0; j < ATTN_MAX_TENSORS; j++)
        kmat_free(&m->w.attn_mat[j]);
    kmat_free(&m->w.comb_h);
    kmat_free(&m->w.comb_c);
    kmat_free(&m->w.out_w);
    free(m->w.layer);
    free(m->vectors);
    st_close(m->file);
    free(m);
}

static const char *const PRECISIONS[MODEL_PRECISION_COUNT] = {"f32", "bf16", "int8"};

const char *model_precision_name(model_precision p)
{
    return p >= 0 && p < MODEL_PRECISION_COUNT ? PRECISIONS[p] : "?";
}

int model_precision_parse(const char *s, model_precision *out, char *err, size_t errlen)
{
    for (int i = 0; i < MODEL_PRECISION_COUNT; i++)
        if (s && strcmp(s, PRECISIONS[i]) == 0) {
            *out = (model_precision)i;
            return 0;
        }
    err_set(err, errlen, "precision \"%s\" is not one of f32, bf16, int8", s ? s : "");
    return -1;
}

const model_config *model_get_config(const model *m) { return &m->cfg; }
uint64_t model_param_count(const model *m) { return m->n_params; }
const char *model_kernels(const model *m) { return m->kernels; }
model_precision model_get_precision(const model *m) { return m->precision; }
size_t model_weight_bytes(const model *m) { return m->weight_bytes; }
const char *model_sha256(const model *m) { return st_sha256(m->file); }
const char *model_meta(const model *m, const char *key) { return st_meta_get(m->file, key); }
int model_meta_count(const model *m) { return st_meta_count(m->file); }

void model_meta_at(const model *m, int i, const char **key, const char **value)
{
    const st_meta *e = st_meta_at(m->file, i);
    *key = e->key;
    *value = e->value;
}

/* ---- sequences ------------------------------------------------------------- */

/* Floats of one sequence's state: h (and c) per layer, then the ring: key
 * sources, cached projections, and value sources when they are other rows. */
size_t seq_floats(const model *m)
{
    const model_config *c = &m->cfg;
    size_t H = (size_t)c->hidden, L = (size_t)c->layers, W = (size_t)c->window;
    size_t values = c->attn_kv == ATTN_KV_STATE ? 0 : W * (size_t)c->value_dim;
    return L * H * (c->cell == CELL_LSTM ? 2 : 1) + W * H + W * (size_t)m->key_dim + values;
}

void seq_bind(model_seq *s, const model *m, float *buf)
{
    const model_config *c = &m->cfg;
    size_t H = (size_t)c->hidden, L = (size_t)c->layers, W = (size_t)c->window;
    s->m = m;
    s->pos = 0;
    s->h = buf;
    s->c = c->cell == CELL_LSTM ? buf + L * H : NULL;
    s->ring_h = buf + L * H * (c->cell == CELL_LSTM ? 2 : 1);
    s->ring_k = m->key_dim ? s->ring_h + W * H : NULL;
    s->ring_v = c->attn_kv == ATTN_KV_STATE ? s->ring_h : s->ring_h + W * H + W * (size_t)m->key_dim;
}

model_seq *model_seq_new(const model *m)
{
    model_seq *s = calloc(1, sizeof *s);
    float *buf = calloc(seq_floats(m), sizeof *buf);
    if (!s || !buf) {
        free(s);
        free(buf);
        return NULL;
    }
    seq_bind(s, m, buf);
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

size_t model_seq_floats(const model *m) { return seq_floats(m); }

void model_seq_save(const model_seq *s, int64_t *pos, void *out)
{
    *pos = s->pos;
    memcpy(out, s->h, seq_floats(s->m) * sizeof *s->h);
}

int model_seq_restore(model_seq *s, int64_t pos, const float *in, char *err, size_t errlen)
{
    const size_t n = seq_floats(s->m);
    if (pos < 0) {
        err_set(err, errlen, "a state's position cannot be negative (%lld)", (long long)pos);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(in[i])) {
            err_set(err, errlen, "a state's float %zu of %zu is not finite", i, n);
            return -1;
        }
    memcpy(s->h, in, n * sizeof *in);
    s->pos = pos;
    return 0;
}

int model_seq_copy(model_seq *dst, const model_seq *src)
{
    if (dst->m != src->m)
        return -1;
    memcpy(dst->h, src->h, seq_floats(src->m) * sizeof *src->h);
    dst->pos = src->pos;
    return 0;
}
