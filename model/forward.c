/* forward.c -- the full-sequence forward pass and batched incremental decoding.
 *
 * Both paths compute the function of docs/FORMAT.md.  The forward pass turns
 * everything that is not sequential into matrix products over many positions
 * (input projections, attention in diagonal blocks, output projections); the
 * step path does the same over the sequences of a batch.  Only the recurrence
 * itself is a product per position, over the sequences still running.  Every
 * product with a weight matrix is linear(), the model's kernels over its
 * packed weights (kernels.h); what is particular to an attention mechanism is
 * asked of its descriptor (engine.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "engine.h"
#include "vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared helpers ---------------------------------------------------------- */

void linear(const model *m, float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
            bool accumulate, void *scratch)
{
    m->kern->gemm[w->prec](out, ldo, in, ldi, w, bias, M, accumulate, scratch);
}

void softmax_inplace(float *x, int n)
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

void write_band(float *band, const float *weights, int n, int64_t pos, int W)
{
    for (int s = 0; s < n; s++) {
        int d = (int)((pos - s) % W);
        band[W - 1 - d] = weights[s];
    }
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

/* o [M, H] <- tanh(combine [h ; ctx]), then logits [M, V] <- out(o); ctx rows have stride ldc. */
static void output_layer(const model *m, float *logits, float *o, const float *h, const float *ctx, int ldc, int M,
                         void *scratch)
{
    const model_weights *w = &m->w;
    const int V = m->cfg.vocab, H = m->cfg.hidden;
    linear(m, o, H, h, H, &w->comb_h, w->comb_b, M, false, scratch);
    linear(m, o, H, ctx, ldc, &w->comb_c, NULL, M, true, scratch);
    m->kern->tanh_inplace(o, (size_t)M * H);
    linear(m, logits, V, o, H, &w->out_w, w->out_b, M, false, scratch);
}

/* ---- full-sequence forward ------------------------------------------------- */

/* Width of a context row buffer: the context, or multihead's heads' outputs. */
static int ctx_width(const model_config *c) { return c->context_dim > c->hidden ? c->context_dim : c->hidden; }

/* Whether key and value sources are rows other than the states. */
static bool separate_sources(const model *m) { return m->cfg.attn_kv != ATTN_KV_STATE; }

/* Scratch of forward_tail for up to T positions, context rows included. */
static size_t tail_floats(const model *m, int T)
{
    const model_config *c = &m->cfg;
    size_t Tz = (size_t)T, sources = separate_sources(m) ? Tz * ((size_t)c->hidden + (size_t)c->value_dim) : 0;
    return Tz * (size_t)m->proj_dim + Tz * (size_t)ctx_width(c) + 2 * Tz * c->hidden + sources +
           (size_t)ATTN_BLOCK * (ATTN_BLOCK + (size_t)c->window - 1) + (size_t)c->window;
}

/* The ring of a state at absolute position `at` from the T rows of ks, vs
 * and proj that start at absolute position pos0: the slots of positions
 * max(pos0, at - W) .. at - 1. */
static void fill_ring(const model *m, model_seq *s, const float *ks, const float *vs, const float *proj, int64_t pos0,
                      int64_t at)
{
    const int H = m->cfg.hidden, DV = m->cfg.value_dim, W = m->cfg.window, P = m->proj_dim, KD = m->key_dim;
    for (int64_t q = at - W > pos0 ? at - W : pos0; q < at; q++) {
        size_t slot = (size_t)(q % W), i = (size_t)(q - pos0);
        memcpy(s->ring_h + slot * H, ks + i * H, (size_t)H * sizeof *ks);
        if (s->ring_v != s->ring_h)
            memcpy(s->ring_v + slot * DV, vs + i * DV, (size_t)DV * sizeof *vs);
        if (KD)
            memcpy(s->ring_k + slot * KD, proj + i * P + (P - KD), (size_t)KD * sizeof *proj);
    }
}

/* The key sources ks [T, H] and value sources vs [T, E] of a run with
 * attn_kv continuation, from its top-layer outputs hs [T, H] whose first
 * `first` rows are the ring's key sources of the window before it: a
 * position's key source is the state before it (zeros at position 0). */
static void continuation_sources(const model *m, const fwd_run *r, const float *hs, int first, float *ks, float *vs)
{
    const model_config *c = &m->cfg;
    const int H = c->hidden, E = c->embed, W = c->window;
    const int64_t pos0 = (r->from ? r->from->pos : 0) - first;
    memcpy(ks, hs, (size_t)first * H * sizeof *ks);
    if (r->from && r->from->pos > 0)
        memcpy(ks + (size_t)first * H, r->from->h + (size_t)(c->layers - 1) * H, (size_t)H * sizeof *ks);
    else
        memset(ks + (size_t)first * H, 0, (size_t)H * sizeof *ks);
    memcpy(ks + (size_t)(first + 1) * H, hs + (size_t)first * H, (size_t)(r->n - 1) * H * sizeof *ks);
    for (int i = 0; i < first; i++)
        memcpy(vs + (size_t)i * E, r->from->ring_v + (size_t)((pos0 + i) % W) * E, (size_t)E * sizeof *vs);
    for (int j = 0; j < r->n; j++)
        memcpy(vs + (size_t)(first + j) * E, m->w.embed + (size_t)r->tokens[j] * E, (size_t)E * sizeof *vs);
}

/* logprobs [n, V] <- the output layer over the queries q [n, H] and their
 * contexts ctx [n, C] (row stride ldc). */
static void logprobs_of(const model *m, float *logprobs, float *o, const float *q, const float *ctx, int ldc, int n,
                        void *scratch)
{
    const int V = m->cfg.vocab;
    output_layer(m, logprobs, o, q, ctx, ldc, n, scratch);
    for (int t = 0; t < n; t++)
        model_log_softmax(logprobs + (size_t)t * V, logprobs + (size_t)t * V, V);
}

/* Attention, the states it leaves and the output layer of one run whose
 * top-layer outputs are hs [first + r->n, H]: the first `first` rows are the
 * window before r->from (copied from its ring of key sources), the rest this
 * pass's positions.  buf has tail_floats(m, first + r->n), scratch
 * m->scratch_bytes. */
static void forward_tail(const model *m, const fwd_run *r, const float *hs, int first, float *buf, void *scratch)
{
    const model_config *c = &m->cfg;
    const attn_mech *a = m->attn;
    const int H = c->hidden, W = c->window, N = c->heads, P = m->proj_dim, KD = m->key_dim, CW = ctx_width(c);
    const int n = r->n, T = first + n;
    const int64_t start = r->from ? r->from->pos : 0, pos0 = start - first;
    size_t Tz = (size_t)T, n_h = Tz * (size_t)H;
    float *proj = buf, *ctx = proj + Tz * P, *ctxh = ctx + Tz * CW, *o = ctxh + n_h, *S = o + n_h;
    const float *ks = hs, *vs = hs;
    if (separate_sources(m)) {
        float *kbuf = S + (size_t)ATTN_BLOCK * (ATTN_BLOCK + (size_t)W - 1) + (size_t)W, *vbuf = kbuf + n_h;
        continuation_sources(m, r, hs, first, kbuf, vbuf);
        ks = kbuf, vs = vbuf;
    }
    const float *q = hs + (size_t)first * H;

    if (r->attn)
        memset(r->attn, 0, (size_t)n * N * W * sizeof *r->attn);
    if (a->project) {
        a->project(m, proj + (size_t)first * P, q, ks + (size_t)first * H, vs + (size_t)first * c->value_dim, n,
                   scratch);
        for (int i = 0; i < first; i++) /* the window before: only the cached part is read */
            memcpy(proj + (size_t)i * P + (P - KD), r->from->ring_k + (size_t)((pos0 + i) % W) * KD,
                   (size_t)KD * sizeof *proj);
    }
    a->attend_seq(m, ctx, ctxh, r->attn, S, proj, hs, ks, vs, T, first, pos0);
    if (a->out_proj)
        a->out_proj(m, ctx, ctxh, n, scratch);
    if (r->seq) {
        fill_ring(m, r->seq, ks, vs, proj, pos0, start + n);
        r->seq->pos = start + n;
    }
    for (int64_t p = (start / ATTN_BLOCK + 1) * ATTN_BLOCK, i = 0; r->marks && i < r->n_marks && p <= start + n;
         p += ATTN_BLOCK, i++) {
        model_seq *s = r->marks[i];
        fill_ring(m, s, ks, vs, proj, pos0, p);
        s->pos = p;
    }
    if (r->logprobs)
        logprobs_of(m, r->logprobs, o, q, ctx, c->context_dim, n, scratch);
    if (r->logprobs_self) {
        /* The attention's contribution removed: each position's context is its own value. */
        float *own = a->out_proj ? ctxh : ctx;
        int ld = a->out_proj ? H : c->context_dim;
        for (int t = 0; t < n; t++)
            a->self_value(m, own + (size_t)t * ld, proj + (size_t)(first + t) * P,
                          vs + (size_t)(first + t) * c->value_dim);
        if (a->out_proj)
            a->out_proj(m, ctx, ctxh, n, scratch);
        logprobs_of(m, r->logprobs_self, o, q, ctx, c->context_dim, n, scratch);
    }
}

/* The rows of the window before a run's start its attention reads. */
static int context_rows(const model *m, const fwd_run *r)
{
    int64_t p = r->from ? r->from->pos : 0;
    return p < m->cfg.window - 1 ? (int)p : m->cfg.window - 1;
}

static int check_run(const model *m, const fwd_run *r, char *err, size_t errlen)
{
    if (r->n < 1) {
        err_set(err, errlen, "empty token sequence");
        return -1;
    }
    if (check_tokens(m, r->tokens, r->n, err, errlen) < 0)
        return -1;
    if (r->seq && (r->seq->m != m || r->seq->pos != 0)) {
        err_set(err, errlen, "prefill needs a fresh sequence of this model");
        return -1;
    }
    if (r->from && r->from->m != m) {
        err_set(err, errlen, "a run starts from a sequence of another model");
        return -1;
    }
    return 0;
}

/* The recurrent stack of a forward pass runs over time-major rows: the rows
 * of step t are those of the runs still going at t (a prefix of the runs
 * sorted by decreasing length), from row base[t] on.  The input projections
 * are computed a chunk of steps at a time, up to FWD_CHUNK_ROWS rows (or one
 * step), so they stay in cache until the recurrence of those steps uses
 * them; each step's recurrent product covers every run still going.  The
 * kernels' rows are independent, so none of this grouping changes a number.
 *
 * A pass is four steps: plan (sizes, one allocation, the order of the runs),
 * gather (embeddings time-major, the windows before resumed runs), a layer at
 * a time, and each run's tail (attention and output, forward_tail). */
#define FWD_CHUNK_ROWS 256

typedef struct fwd_plan {
    int B, Tmax;
    size_t S;         /* input tokens of all runs */
    size_t chunk;     /* rows of input projections computed at once */
    int *order;       /* [B] runs by decreasing length */
    int *off;         /* [B] where each run's own rows start in hs (after its context rows) */
    int *base;        /* [Tmax + 1] first time-major row of each step */
    float *x;         /* [S, E] time-major embeddings */
    float *ht;        /* [S, H] time-major outputs of the layers below the top (each overwrites its input) */
    float *hs;        /* [S_top, H] the top layer's, run after run, each after its context rows */
    float *gi, *gh;   /* [chunk, G*H] and [B, G*H] input and recurrent projections */
    float *hst, *cst; /* [B, H] running states, in `order` */
    float *tail;      /* forward_tail's scratch for the longest run */
    void *scratch;    /* [m->scratch_bytes] for the products */
} fwd_plan;

static void plan_free(fwd_plan *p)
{
    free(p->x);
    free(p->order);
}

/* Checks the runs and lays out one allocation for the pass. */
static int plan_pass(const model *m, int B, const fwd_run *runs, fwd_plan *p, char *err, size_t errlen)
{
    const model_config *c = &m->cfg;
    const size_t E = (size_t)c->embed, H = (size_t)c->hidden, GH = (size_t)c->gates * H, L = (size_t)c->layers;
    memset(p, 0, sizeof *p);
    if (B < 1) {
        err_set(err, errlen, "no sequences to run");
        return -1;
    }
    size_t S_top = 0;
    int tail_rows = 0;
    for (int b = 0; b < B; b++) {
        const fwd_run *r = &runs[b];
        if (check_run(m, r, err, errlen) < 0)
            return -1;
        const int rows = context_rows(m, r) + r->n;
        p->S += (size_t)r->n;
        S_top += (size_t)rows;
        p->Tmax = r->n > p->Tmax ? r->n : p->Tmax;
        tail_rows = rows > tail_rows ? rows : tail_rows;
    }
    const size_t Bz = (size_t)B, S = p->S;
    p->B = B;
    p->chunk = Bz > FWD_CHUNK_ROWS ? Bz : FWD_CHUNK_ROWS;
    size_t total = S * E + (L > 1 ? S * H : 0) + S_top * H + p->chunk * GH + Bz * (GH + 2 * H) +
                   tail_floats(m, tail_rows);
    p->x = malloc(total * sizeof *p->x + m->scratch_bytes);
    p->order = malloc((2 * Bz + (size_t)p->Tmax + 1) * sizeof *p->order);
    if (!p->x || !p->order) {
        plan_free(p);
        err_set(err, errlen, "out of memory for a forward pass over %zu tokens", S);
        return -1;
    }
    p->off = p->order + Bz;
    p->base = p->off + Bz;
    p->ht = p->x + S * E;
    p->hs = p->ht + (L > 1 ? S * H : 0);
    p->gi = p->hs + S_top * H;
    p->gh = p->gi + p->chunk * GH;
    p->hst = p->gh + Bz * GH;
    p->cst = p->hst + Bz * H;
    p->tail = p->cst + Bz * H;
    p->scratch = p->x + total;
    return 0;
}

/* Sorts the runs by length, copies each resumed run's window into hs ahead
 * of its rows, and lays the embeddings out time-major. */
static void gather_inputs(const model *m, const fwd_run *runs, fwd_plan *p)
{
    const int E = m->cfg.embed, H = m->cfg.hidden, W = m->cfg.window;
    for (int b = 0, pos = 0; b < p->B; b++) {
        const fwd_run *rb = &runs[b];
        const int first = context_rows(m, rb);
        p->off[b] = pos + first;
        for (int i = 0; i < first; i++) {
            int64_t q = rb->from->pos - first + i;
            memcpy(p->hs + (size_t)(pos + i) * H, rb->from->ring_h + (size_t)(q % W) * H, (size_t)H * sizeof *p->hs);
        }
        pos += first + rb->n;
        int r = b;
        while (r > 0 && runs[p->order[r - 1]].n < rb->n) {
            p->order[r] = p->order[r - 1];
            r--;
        }
        p->order[r] = b;
    }
    p->base[0] = 0;
    for (int t = 0, running = p->B; t < p->Tmax; t++) {
        while (runs[p->order[running - 1]].n <= t)
            running--;
        p->base[t + 1] = p->base[t] + running;
        for (int r = 0; r < running; r++)
            memcpy(p->x + (size_t)(p->base[t] + r) * E, m->w.embed + (size_t)runs[p->order[r]].tokens[t] * E,
                   (size_t)E * sizeof *p->x);
    }
}

/* Layer k over every run: from the runs' start states (or zeros), its rows
 * in (time-major, in_dim wide) to ht, or to hs for the top layer; the states
 * at each run's block marks and its end go to the sequences that want them. */
static void run_layer(const model *m, const fwd_run *runs, const fwd_plan *p, int k, const float *in, int in_dim)
{
    const model_config *c = &m->cfg;
    const layer_weights *l = &m->w.layer[k];
    const int H = c->hidden, GH = c->gates * c->hidden;
    const bool top = k == c->layers - 1;
    for (int r = 0; r < p->B; r++) {
        const model_seq *from = runs[p->order[r]].from;
        float *h = p->hst + (size_t)r * H, *cs = p->cst + (size_t)r * H;
        if (from)
            memcpy(h, from->h + (size_t)k * H, (size_t)H * sizeof *h);
        else
            memset(h, 0, (size_t)H * sizeof *h);
        if (from && from->c)
            memcpy(cs, from->c + (size_t)k * H, (size_t)H * sizeof *cs);
        else
            memset(cs, 0, (size_t)H * sizeof *cs);
    }
    for (int t0 = 0, t1; t0 < p->Tmax; t0 = t1) {
        for (t1 = t0 + 1; t1 < p->Tmax && (size_t)(p->base[t1 + 1] - p->base[t0]) <= p->chunk; t1++)
            ;
        linear(m, p->gi, GH, in + (size_t)p->base[t0] * in_dim, in_dim, &l->wih, l->bih, p->base[t1] - p->base[t0],
               false, p->scratch);
        for (int t = t0; t < t1; t++) {
            const int running = p->base[t + 1] - p->base[t];
            linear(m, p->gh, GH, p->hst, H, &l->whh, l->bhh, running, false, p->scratch);
            for (int r = 0; r < running; r++) {
                const fwd_run *rr = &runs[p->order[r]];
                float *h = p->hst + (size_t)r * H, *cs = p->cst + (size_t)r * H;
                m->kern->cell_update(c->cell, H, p->gi + (size_t)(p->base[t] - p->base[t0] + r) * GH,
                                     p->gh + (size_t)r * GH, h, cs);
                memcpy(top ? p->hs + (size_t)(p->off[p->order[r]] + t) * H : p->ht + (size_t)(p->base[t] + r) * H, h,
                       (size_t)H * sizeof *h);
                int64_t at = (rr->from ? rr->from->pos : 0) + t + 1; /* absolute position after this step */
                const int64_t mark = at / ATTN_BLOCK - (at - t - 1) / ATTN_BLOCK - 1;
                if (rr->marks && at % ATTN_BLOCK == 0 && mark < rr->n_marks) {
                    model_seq *mk = rr->marks[mark];
                    memcpy(mk->h + (size_t)k * H, h, (size_t)H * sizeof *h);
                    if (mk->c)
                        memcpy(mk->c + (size_t)k * H, cs, (size_t)H * sizeof *cs);
                }
            }
        }
    }
    for (int r = 0; r < p->B; r++) {
        model_seq *sq = runs[p->order[r]].seq;
        if (!sq)
            continue;
        memcpy(sq->h + (size_t)k * H, p->hst + (size_t)r * H, (size_t)H * sizeof *p->hst);
        if (sq->c)
            memcpy(sq->c + (size_t)k * H, p->cst + (size_t)r * H, (size_t)H * sizeof *p->cst);
    }
}

int forward_runs(const model *m, int B, const fwd_run *runs, char *err, size_t errlen)
{
    fwd_plan p;
    if (plan_pass(m, B, runs, &p, err, errlen) < 0)
        return -1;
    gather_inputs(m, runs, &p);
    const float *in = p.x;
    int in_dim = m->cfg.embed;
    for (int k = 0; k < m->cfg.layers; k++) {
        run_layer(m, runs, &p, k, in, in_dim);
        in = p.ht;
        in_dim = m->cfg.hidden;
    }
    for (int b = 0; b < B; b++) {
        const int first = context_rows(m, &runs[b]);
        forward_tail(m, &runs[b], p.hs + (size_t)(p.off[b] - first) * m->cfg.hidden, first, p.tail, p.scratch);
    }
    plan_free(&p);
    return 0;
}

int model_forward_batch(const model *m, int B, const int *const *tokens, const int *lens, float *const *logprobs,
                        float *const *attn, model_seq *const *seqs, char *err, size_t errlen)
{
    if (B < 1) {
        err_set(err, errlen, "no sequences to run");
        return -1;
    }
    fwd_run *runs = calloc((size_t)B, sizeof *runs);
    if (!runs) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    for (int b = 0; b < B; b++)
        runs[b] = (fwd_run){.tokens = tokens[b],
                            .n = lens[b],
                            .logprobs = logprobs ? logprobs[b] : NULL,
                            .attn = attn ? attn[b] : NULL,
                            .seq = seqs ? seqs[b] : NULL};
    int rc = forward_runs(m, B, runs, err, errlen);
    free(runs);
    return rc;
}

int model_forward(const model *m, const int *tokens, int T, float *logprobs, float *attn, model_seq *seq,
                  char *err, size_t errlen)
{
    return model_forward_batch(m, 1, &tokens, &T, &logprobs, &attn, &seq, err, errlen);
}

int model_forward_from(const model *m, const model_seq *from, const int *tokens, int T, float *logprobs,
                       model_seq *seq, char *err, size_t errlen)
{
    if (from && from == seq) {
        err_set(err, errlen, "a pass cannot write the state it starts from");
        return -1;
    }
    fwd_run run = {.tokens = tokens, .n = T, .from = from, .logprobs = logprobs, .seq = seq};
    return forward_runs(m, 1, &run, err, errlen);
}

int model_forward_ablated(const model *m, const int *tokens, int T, float *logprobs, float *logprobs_self,
                          char *err, size_t errlen)
{
    if (!logprobs_self) {
        err_set(err, errlen, "an ablated pass needs its output");
        return -1;
    }
    fwd_run run = {.tokens = tokens, .n = T, .logprobs = logprobs, .logprobs_self = logprobs_self};
    return forward_runs(m, 1, &run, err, errlen);
}

/* ---- batched incremental decoding ----------------------------------------- */

model_batch *model_batch_new(const model *m, int max_batch)
{
    const model_config *c = &m->cfg;
    if (max_batch < 1)
        return NULL;
    size_t B = (size_t)max_batch, H = (size_t)c->hidden, GH = (size_t)c->gates * H, P = (size_t)m->proj_dim;
    size_t CW = (size_t)ctx_width(c);
    size_t total = B * (size_t)c->embed + 2 * B * H + 2 * B * GH + B * P + B * H + B * CW + 2 * B * H +
                   (size_t)c->window;
    model_batch *b = calloc(1, sizeof *b);
    float *buf = calloc(total, sizeof *buf);
    void *scratch = malloc(m->scratch_bytes);
    if (!b || !buf || !scratch) {
        free(b);
        free(buf);
        free(scratch);
        return NULL;
    }
    b->scratch = scratch;
    b->cap = max_batch;
    b->x = buf;
    b->hbuf[0] = b->x + B * (size_t)c->embed;
    b->hbuf[1] = b->hbuf[0] + B * H;
    b->gi = b->hbuf[1] + B * H;
    b->gh = b->gi + B * GH;
    b->proj = b->gh + B * GH;
    b->keysrc = b->proj + B * P;
    b->ctx = b->keysrc + B * H;
    b->ctxh = b->ctx + B * CW;
    b->o = b->ctxh + B * H;
    b->scores = b->o + B * H;
    return b;
}

void model_batch_free(model_batch *b)
{
    if (!b)
        return;
    free(b->x);
    free(b->scratch);
    free(b);
}

int model_step(const model *m, model_batch *bt, model_seq *const *seqs, const int *tokens, int B, float *logits,
               float *attn, char *err, size_t errlen)
{
    const model_config *c = &m->cfg;
    const model_weights *w = &m->w;
    const attn_mech *a = m->attn;
    const int E = c->embed, H = c->hidden, GH = c->gates * c->hidden, W = c->window, N = c->heads,
              P = m->proj_dim, KD = m->key_dim;
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
    const bool separate = separate_sources(m);
    if (separate) /* the key source of this position is the top layer's state before it */
        for (int b = 0; b < B; b++)
            memcpy(bt->keysrc + (size_t)b * H, seqs[b]->h + (size_t)(c->layers - 1) * H,
                   (size_t)H * sizeof *bt->keysrc);
    const float *in = bt->x;
    int in_dim = E;
    for (int k = 0; k < c->layers; k++) {
        const layer_weights *l = &w->layer[k];
        float *hp = bt->hbuf[k % 2];
        for (int b = 0; b < B; b++)
            memcpy(hp + (size_t)b * H, seqs[b]->h + (size_t)k * H, (size_t)H * sizeof *hp);
        linear(m, bt->gi, GH, in, in_dim, &l->wih, l->bih, B, false, bt->scratch);
        linear(m, bt->gh, GH, hp, H, &l->whh, l->bhh, B, false, bt->scratch);
        for (int b = 0; b < B; b++) {
            float *hrow = hp + (size_t)b * H;
            m->kern->cell_update(c->cell, H, bt->gi + (size_t)b * GH, bt->gh + (size_t)b * GH, hrow,
                                 seqs[b]->c ? seqs[b]->c + (size_t)k * H : NULL);
            memcpy(seqs[b]->h + (size_t)k * H, hrow, (size_t)H * sizeof *hrow);
        }
        in = hp;
        in_dim = H;
    }
    const float *top = in; /* [B, H] */
    const float *ks = separate ? bt->keysrc : top, *vs = separate ? bt->x : top;
    const int DV = c->value_dim, C = c->context_dim, ldh = a->out_proj ? H : C;

    if (a->project)
        a->project(m, bt->proj, top, ks, vs, B, bt->scratch);
    if (attn)
        memset(attn, 0, (size_t)B * N * W * sizeof *attn);
    float *heads_out = a->out_proj ? bt->ctxh : bt->ctx;
    for (int b = 0; b < B; b++) {
        model_seq *s = seqs[b];
        const float *h = top + (size_t)b * H, *row = bt->proj + (size_t)b * P;
        size_t slot = (size_t)(s->pos % W);
        memcpy(s->ring_h + slot * H, ks + (size_t)b * H, (size_t)H * sizeof *h);
        if (s->ring_v != s->ring_h)
            memcpy(s->ring_v + slot * DV, vs + (size_t)b * DV, (size_t)DV * sizeof *vs);
        if (KD)
            memcpy(s->ring_k + slot * KD, row + (P - KD), (size_t)KD * sizeof *row);
        a->attend_step(m, s, row, h, heads_out + (size_t)b * ldh, attn ? attn + (size_t)b * N * W : NULL,
                       bt->scores);
        s->pos++;
    }
    if (a->out_proj)
        a->out_proj(m, bt->ctx, bt->ctxh, B, bt->scratch);
    output_layer(m, logits, bt->o, top, bt->ctx, C, B, bt->scratch);
    return 0;
}
