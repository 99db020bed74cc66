/* engine.h -- inside model/ only: the structures behind model.h's opaque
 * types, the attention mechanisms' descriptors, and the helpers the loader,
 * the forward pass and the mechanisms share.
 *
 * Each attention mechanism is one attn_mech (attention.c): its metadata name,
 * its tensors and their shapes, the widths it caches and projects, and the
 * functions that project and score.  The rest of the engine asks the
 * descriptor and never names a mechanism, so adding one touches attention.c
 * and the table in it.
 */
#ifndef ATTNLM_ENGINE_H
#define ATTNLM_ENGINE_H

#include "kernels.h"
#include "model.h"
#include "safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATTN_MAX_TENSORS 6 /* tensors one mechanism adds */
#define ATTN_BLOCK 64      /* query rows per banded attention product */

/* A tensor dimension in terms of the configuration. */
typedef enum { DIM_1, DIM_A, DIM_H, DIM_3H, DIM_E } attn_dim_sym;

/* One tensor a mechanism needs: its name in the file, its shape, and whether
 * it is a matrix the mechanism multiplies with linear() (packed at load) or a
 * vector or scalar it reads as floats. */
typedef struct attn_tensor {
    const char *name;
    int ndim;
    attn_dim_sym dims[2];
    bool product;
} attn_tensor;

/* One recurrent layer's weights. */
typedef struct layer_weights {
    kmat wih;         /* [G*H, E or H] */
    kmat whh;         /* [G*H, H] */
    const float *bih; /* [G*H] */
    const float *bhh; /* [G*H] */
} layer_weights;

/* All weights, owned by the model: the matrices packed for the kernels at the
 * model's precision, the vectors as floats in one arena. */
typedef struct model_weights {
    const float *embed;                  /* [V, E] */
    layer_weights *layer;                /* [L] */
    const float *attn[ATTN_MAX_TENSORS]; /* the mechanism's vectors and scalars, in its table's order */
    kmat attn_mat[ATTN_MAX_TENSORS];     /* the mechanism's matrices (attn_tensor.product), same order */
    kmat comb_h, comb_c;                 /* combine.weight [H, H + C] as its columns for h [H, H] and for c [H, C] */
    const float *comb_b;                 /* [H] */
    kmat out_w;                          /* [V, H] */
    const float *out_b;                  /* [V] */
} model_weights;

typedef struct attn_mech attn_mech;

struct model {
    uint64_t id; /* unique in the process: the prefix cache's key */
    model_config cfg;
    model_weights w;
    const attn_mech *attn;
    const kern_ops *kern;
    st_file *file;        /* metadata and hash; its tensor data is released once packed */
    float *vectors;       /* the arena of model_weights' vectors */
    uint64_t n_params;
    size_t weight_bytes;  /* packed matrices and vectors */
    size_t scratch_bytes; /* one product's scratch (kern_scratch_bytes of the widest input) */
    model_precision precision;
    int proj_dim; /* P: floats of one position's attention projections (0: none) */
    int key_dim;  /* floats a ring slot caches besides its key and value sources (0: none) */
    char kernels[128]; /* what model_kernels() reports */
};

/* A position's key source is the row its key is computed from and its value
 * source the row its value is: h_i for both (attn_kv state), or h_{i-1} and
 * the embedding of x_i (continuation). */
struct model_seq {
    const model *m;
    int64_t pos;
    float *h;      /* [L, H] */
    float *c;      /* [L, H], lstm only */
    float *ring_h; /* [W, H] key sources; slot i % W holds position i */
    float *ring_v; /* [W, value_dim] value sources: ring_h itself when they are the same rows */
    float *ring_k; /* [W, key_dim] the cached part of each slot's projections, or NULL */
};

struct model_batch {
    int cap;
    float *x;       /* [cap, E] embeddings */
    float *hbuf[2]; /* [cap, H] layer states, alternating between layers */
    float *gi, *gh; /* [cap, G*H] input and recurrent projections */
    float *proj;    /* [cap, P] attention projections */
    float *keysrc;  /* [cap, H] key sources (continuation: the top layer's state before the step) */
    float *ctx;     /* [cap, max(H, C)] */
    float *ctxh;    /* [cap, H] heads' outputs before a mechanism's output projection */
    float *o;       /* [cap, H] */
    float *scores;  /* [W] */
    void *scratch;  /* [model.scratch_bytes] for the products */
};

/* One attention mechanism. */
struct attn_mech {
    const char *name;          /* the "attention" metadata value */
    const char *size_key;      /* metadata key sizing it ("attn_dim", "heads") or NULL */
    attn_tensor tensors[ATTN_MAX_TENSORS];
    int n_tensors;
    /* Sets cfg->attn_dim and cfg->heads from the size_key value (0 if absent);
     * -1 with a message if they do not fit the rest of cfg. */
    int (*configure)(model_config *cfg, int size, char *err, size_t errlen);
    /* Floats one position's projections take, and how many of them (the last
     * ones) a decoding sequence caches per window slot to score later positions. */
    int (*proj_dim)(const model_config *cfg);
    int (*key_dim)(const model_config *cfg);
    /* proj [T, P] <- the projections of T positions: queries from hs [T, H],
     * keys from ks [T, H], values from vs [T, value_dim] (the three the same
     * rows with attn_kv state); NULL when there are none.  scratch:
     * model.scratch_bytes for the products. */
    void (*project)(const model *m, float *proj, const float *hs, const float *ks, const float *vs, int T,
                    void *scratch);
    /* Many positions: hs [T, H] (queries), ks [T, H], vs [T, value_dim] and
     * proj [T, P] hold T consecutive positions, the first `first` of them
     * context only (the window before a resumed sequence; their hs rows are
     * not read and their proj rows need only the cached part), and row 0 is
     * at absolute position pos0.  For each of the other rows: ctx [T - first,
     * C] (or the heads' outputs [T - first, H] into ctxh, when out_proj is
     * set), and band maps [T - first, N, W] into attn unless NULL (zeroed by
     * the caller).  Products run in blocks aligned to absolute multiples of
     * ATTN_BLOCK, so a position's numbers do not depend on where its pass
     * began.  S [ATTN_BLOCK * (ATTN_BLOCK + W - 1) + W] is scratch. */
    void (*attend_seq)(const model *m, float *ctx, float *ctxh, float *attn, float *S, const float *proj,
                       const float *hs, const float *ks, const float *vs, int T, int first, int64_t pos0);
    /* One step of one sequence whose slot for this position already holds its
     * key and value sources and cached projections: writes ctx [C] (or the
     * heads' outputs [H], when out_proj is set) and the band row [N, W] unless
     * NULL.  row is this position's projections [P], h its query state [H];
     * scores [W] is scratch. */
    void (*attend_step)(const model *m, const model_seq *s, const float *row, const float *h, float *ctx,
                        float *band, float *scores);
    /* A position's context with a window of one (itself only), before
     * out_proj: its value, from its value source vs [value_dim] or its
     * projections row [P].  out [C, or H with out_proj]. */
    void (*self_value)(const model *m, float *out, const float *row, const float *vs);
    /* When set, the context is this projection of the heads' outputs:
     * ctx [rows, H] <- ctxh [rows, H]. */
    void (*out_proj)(const model *m, float *ctx, const float *ctxh, int rows, void *scratch);
};

/* One sequence of a forward pass: n tokens after the state `from` (NULL:
 * position 0, nothing before).  Outputs, each optional: logprobs [n, V] and
 * attn [n, N, W] for these positions; seq, a fresh sequence that receives the
 * state after them; marks [n_marks], fresh sequences that receive the states
 * at the first n_marks multiples of ATTN_BLOCK in (start, start + n], in order. */
typedef struct fwd_run {
    const int *tokens;
    int n;
    const model_seq *from;
    float *logprobs;
    float *logprobs_self; /* [n, V] with a window of one (model_forward_ablated), or NULL */
    float *attn;
    model_seq *seq;
    model_seq *const *marks;
    int n_marks;
} fwd_run;

/* The forward pass of B runs at once (model_forward_batch's, with start
 * states).  A position's numbers are the same whatever run, start or batch
 * it is computed in.  Returns 0, or -1 with a message. */
int forward_runs(const model *m, int B, const fwd_run *runs, char *err, size_t errlen);

/* Floats of one sequence's state: h, c, ring_h, ring_k, in that order. */
size_t seq_floats(const model *m);
/* Points s (at position 0) at buf [seq_floats(m)], which the caller owns. */
void seq_bind(model_seq *s, const model *m, float *buf);

/* The mechanism of a model_attention value (its attn_kv state form, which
 * names it), and the descriptor that serves it with the given keys and values. */
const attn_mech *attn_at(int i);
const attn_mech *attn_for(int i, model_attn_kv kv);
/* A symbolic dimension's value. */
int attn_dim_value(attn_dim_sym d, const model_config *c);

/* out[M, N] (+)= in[M, K] . w[N, K]^T + bias[N] with the model's kernels;
 * bias may be NULL.  With accumulate the product is added to out and bias is
 * ignored.  scratch holds m->scratch_bytes. */
void linear(const model *m, float *out, int ldo, const float *in, int ldi, const kmat *w, const float *bias, int M,
            bool accumulate, void *scratch);
void softmax_inplace(float *x, int n);
/* Writes the weights over a sequence's valid ring slots (0 .. n-1) into the
 * band row of position pos.  Slot s holds position pos - ((pos - s) mod W). */
void write_band(float *band, const float *weights, int n, int64_t pos, int W);
/* Windowed attention of one head over the rows first .. T-1 of T positions
 * starting at absolute position pos0, in diagonal blocks (see attention.c). */
void attend_banded(float *ctx, int ldc, float *attn, float *S, const float *q, int ldq, const float *keys, int ldk,
                   const float *vals, int ldv, int T, int first, int64_t pos0, int dk, int dv, int W, int N, int head,
                   float scale);

#endif
