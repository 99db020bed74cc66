/* model.h -- the attnlm inference engine: an RNN (Elman, GRU or LSTM) stack with
 * windowed attention over its own outputs, loaded from a safetensors file.
 *
 * Weights are read-only once loaded and shared by every thread; all mutable
 * state lives in a model_seq (one per sequence) or a model_batch (one per
 * worker), so one model serves any number of threads without locks.
 * docs/FORMAT.md gives the function computed and the file format.
 *
 * Dimension letters used in shape comments:
 *   T positions, B batch, V vocabulary, E embedding, H hidden, G gates
 *   (1 elman, 3 gru, 4 lstm), L layers, W window, A additive attention size,
 *   N attention heads (1 unless multihead), D = H / N head size.
 *
 * Attention maps are returned in band form [.., N, W]: column c of position t
 * holds the weight on position i = t - (W - 1) + c, and columns with i < 0 are 0.
 */
#ifndef ATTNLM_MODEL_H
#define ATTNLM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h" /* common/ */

typedef enum { CELL_ELMAN, CELL_GRU, CELL_LSTM, CELL_COUNT } model_cell;
typedef enum { ATTN_ADDITIVE, ATTN_DOT, ATTN_COSINE, ATTN_MULTIHEAD, ATTN_COUNT } model_attention;
/* Where the attention's keys and values come from (metadata "attn_kv", format
 * version 2): the state h_i for both (version 1's only choice), or the state
 * before position i as key and the embedding of its byte as value, so that a
 * match with the past returns what followed it. */
typedef enum { ATTN_KV_STATE, ATTN_KV_CONTINUATION, ATTN_KV_COUNT } model_attn_kv;

/* Hyperparameters, as read from the file's metadata. */
typedef struct model_config {
    int vocab;      /* V */
    int embed;      /* E */
    int hidden;     /* H */
    int layers;     /* L */
    int window;     /* W */
    int attn_dim;   /* A, additive only (0 otherwise) */
    int heads;      /* N: multihead's head count, 1 for the other mechanisms */
    int gates;      /* G */
    int bos_id;
    int format_version;
    int value_dim;  /* width of a value: H (state) or E (continuation) */
    int context_dim; /* C: width of the context combine reads: value_dim, or H after multihead's out_proj */
    model_cell cell;
    model_attention attention;
    model_attn_kv attn_kv;
} model_config;

/* The precision a model's weight matrices are held and multiplied in.  f32
 * computes the file's function exactly (to float rounding); bf16 rounds every
 * matrix to bfloat16 at load (half the memory); int8 quantises them to 8 bits
 * with a scale per output row and multiplies them with activations quantised
 * per row at each product (a quarter).  Products accumulate in f32 or int32;
 * embeddings, biases and attention vectors stay f32. */
typedef enum { MODEL_F32, MODEL_BF16, MODEL_INT8, MODEL_PRECISION_COUNT } model_precision;

/* How to load a model; {0} is the default (f32). */
typedef struct model_opts {
    model_precision precision;
    /* The kernel table the products run on, by name ("amx", "avx512bf16",
     * "avx512vnni", "avx512", "avx2", "generic"); NULL or "auto": the fastest
     * this CPU runs.  One the CPU cannot run is refused at load. */
    const char *kernels;
} model_opts;

typedef struct model model;           /* loaded weights, read-only */
typedef struct model_seq model_seq;   /* one sequence's decoding state */
typedef struct model_batch model_batch; /* one worker's scratch for model_step */

/* Loads and validates a model file; NULL with a message naming the problem in
 * err on failure.  The file is read whole into memory the model owns, so
 * nothing done to it afterwards changes or breaks the model.  Free with
 * model_free. */
model *model_load(const char *path, char *err, size_t errlen);
/* The same with options (opts NULL: the defaults, as model_load). */
model *model_load_opts(const char *path, const model_opts *opts, char *err, size_t errlen);
/* The same from a file's bytes in memory (copied). */
model *model_load_mem(const void *data, size_t len, char *err, size_t errlen);
void model_free(model *m);

/* 0 if model_opts.kernels = name would load; -1 with a message naming the
 * tables this CPU runs otherwise. */
int model_kernels_check(const char *name, char *err, size_t errlen);
/* "f32", "bf16" or "int8". */
const char *model_precision_name(model_precision p);
/* The precision named s; -1 with a message listing the names if there is none. */
int model_precision_parse(const char *s, model_precision *out, char *err, size_t errlen);

const model_config *model_get_config(const model *m);
const char *model_cell_name(model_cell c);
const char *model_attention_name(model_attention a);
/* "state" or "continuation". */
const char *model_attn_kv_name(model_attn_kv kv);
/* Number of parameters (sum of tensor sizes). */
uint64_t model_param_count(const model *m);
/* The instruction set the engine's kernels use on this CPU and how the
 * products run at the model's precision, e.g. "avx2, f32 (fma)". */
const char *model_kernels(const model *m);
model_precision model_get_precision(const model *m);
/* Bytes of weights the model holds (packed matrices and vectors). */
size_t model_weight_bytes(const model *m);
/* Lower-case hex SHA-256 of the file's bytes as loaded. */
const char *model_sha256(const model *m);
/* Metadata of the file, including provenance; value NULL if key is absent. */
const char *model_meta(const model *m, const char *key);
int model_meta_count(const model *m);
void model_meta_at(const model *m, int i, const char **key, const char **value);

/* Full-sequence forward pass over tokens[T] (tokens[0] is normally BOS).
 *   logprobs [T, V]: log p(. | tokens[0..t]) for every t, or NULL;
 *   attn [T, N, W]: attention maps in band form, or NULL;
 *   seq: a fresh sequence (position 0) that receives the state after the T
 *        tokens, so decoding can continue with model_step (prefill), or NULL.
 * Returns 0, or -1 with a message (bad token id, out of memory, used seq). */
int model_forward(const model *m, const int *tokens, int T, float *logprobs, float *attn, model_seq *seq,
                  char *err, size_t errlen);

/* model_forward continuing the state from (NULL: a fresh sequence) over
 * tokens[T]: logprobs[t] is log p(. | the text before, tokens[0..t]) and seq
 * (fresh, not from) receives the state after them.  The numbers are those
 * of one pass over the whole text: bit for bit with bf16 and int8 weights,
 * to float rounding with f32 (OpenBLAS's sums depend on a product's rows). */
int model_forward_from(const model *m, const model_seq *from, const int *tokens, int T, float *logprobs,
                       model_seq *seq, char *err, size_t errlen);

/* The forward pass of model_forward, also writing into logprobs_self [T, V]
 * the log-probabilities with the attention's contribution removed: every
 * position attending to itself alone (a window of one), the context then
 * being its own value.  logprobs may be NULL (the ablated numbers alone);
 * logprobs_self may not. */
int model_forward_ablated(const model *m, const int *tokens, int T, float *logprobs, float *logprobs_self,
                          char *err, size_t errlen);

/* The forward pass of B sequences at once: sequence b is tokens[b][lens[b]]
 * and its outputs go to logprobs[b], attn[b] and seqs[b] exactly as with
 * model_forward (any of the three arrays, or entries, may be NULL).  Each
 * position's recurrent product covers every sequence still running, so the
 * recurrent weights are read once per position for all of them.  Results
 * agree with model_forward to float rounding. */
int model_forward_batch(const model *m, int B, const int *const *tokens, const int *lens, float *const *logprobs,
                        float *const *attn, model_seq *const *seqs, char *err, size_t errlen);

/* A sequence at position 0.  NULL on out of memory.  Free with model_seq_free. */
model_seq *model_seq_new(const model *m);
void model_seq_free(model_seq *s);
void model_seq_reset(model_seq *s);
/* Makes dst the same state as src (both of the same model): a prompt is
 * prefilled once and continued several ways.  Returns 0, or -1 if the
 * sequences belong to different models. */
int model_seq_copy(model_seq *dst, const model_seq *src);
/* Tokens consumed so far. */
int64_t model_seq_pos(const model_seq *s);
/* A sequence's whole state is its position and model_seq_floats(m) floats
 * (recurrent state and window): model_seq_save copies them out, and
 * model_seq_restore puts saved ones into s, refusing (-1, s unchanged) a
 * negative position or a float that is not finite. */
size_t model_seq_floats(const model *m);
void model_seq_save(const model_seq *s, int64_t *pos, void *out); /* out: floats, any alignment */
int model_seq_restore(model_seq *s, int64_t pos, const float *in, char *err, size_t errlen);

/* Scratch for stepping up to max_batch sequences at once.  Free with model_batch_free. */
model_batch *model_batch_new(const model *m, int max_batch);
void model_batch_free(model_batch *b);

/* Advances B distinct sequences by one token each: seqs[b] consumes tokens[b].
 *   logits [B, V]: the next-token logits of each sequence;
 *   attn [B, N, W]: this position's attention maps in band form, or NULL.
 * One matrix product per projection covers the whole batch; each sequence's
 * numbers do not depend on what else is in the batch.  The hot path allocates
 * nothing.  Returns 0, or -1 with a message (bad token, B out of range). */
int model_step(const model *m, model_batch *b, model_seq *const *seqs, const int *tokens, int B, float *logits,
               float *attn, char *err, size_t errlen);

/* out[n] = log_softmax(logits[n]); out may equal logits. */
void model_log_softmax(float *out, const float *logits, int n);

#endif
