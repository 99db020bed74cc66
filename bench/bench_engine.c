/* bench_engine.c -- engine throughput on one model, single-threaded BLAS.
 *
 *   bench_engine MODEL TEXT_FILE [DECODE_STEPS]
 *
 * Measures, as `name value` lines on stdout:
 *   score_tokens_per_s        full-sequence forward (log-probabilities) over BOS + TEXT
 *   decode_bN_tokens_per_s    greedy decoding of N sequences stepped together (N = 1, 8, 32),
 *                             aggregate tokens/s; each sequence is first prefilled with its own
 *                             32-byte slice of TEXT (not timed)
 *   decode_bN_ms_per_step     wall time of one model_step + argmax over the batch
 *   weight_stream_ms          one cblas_sgemv over as many floats as a step's weight
 *                             matrices hold: the floor that reading the weights sets
 *                             for a batch-1 step on this machine
 * Each figure is the median of several timed repetitions after one warm-up.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { REPS = 5, PROMPT_BYTES = 32, MAX_BATCH = 32 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            *len = fread(buf, 1, (size_t)n, f);
            buf[*len] = '\0';
        }
    }
    fclose(f);
    return buf;
}

static double bench_score(const model *m, const int *tokens, int T, float *logprobs)
{
    char err[ATTNLM_ERR_LEN];
    double secs[REPS];
    for (int r = -1; r < REPS; r++) {
        double t0 = now();
        if (model_forward(m, tokens, T, logprobs, NULL, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "bench_engine: %s\n", err);
            exit(1);
        }
        if (r >= 0)
            secs[r] = now() - t0;
    }
    return (double)(T - 1) / median(secs, REPS);
}

/* Returns the median seconds for `steps` steps of B sequences. */
static double bench_decode(const model *m, const int *text, int ntext, int B, int steps)
{
    char err[ATTNLM_ERR_LEN];
    const model_config *c = model_get_config(m);
    model_seq *seqs[MAX_BATCH];
    model_batch *batch = model_batch_new(m, B);
    float *logits = malloc(sizeof(float) * (size_t)B * (size_t)c->vocab);
    int tokens[MAX_BATCH], prompt[PROMPT_BYTES + 1];
    if (!batch || !logits) {
        fprintf(stderr, "bench_engine: out of memory\n");
        exit(1);
    }
    for (int b = 0; b < B; b++)
        seqs[b] = model_seq_new(m);

    double secs[REPS];
    for (int r = -1; r < REPS; r++) {
        for (int b = 0; b < B; b++) {
            int start = (b * 29) % (ntext - PROMPT_BYTES);
            prompt[0] = c->bos_id;
            memcpy(prompt + 1, text + start, sizeof(int) * PROMPT_BYTES);
            model_seq_reset(seqs[b]);
            /* The prompt's last token is fed by the first step. */
            if (model_forward(m, prompt, PROMPT_BYTES, NULL, NULL, seqs[b], err, sizeof err) < 0) {
                fprintf(stderr, "bench_engine: %s\n", err);
                exit(1);
            }
            tokens[b] = prompt[PROMPT_BYTES];
        }
        double t0 = now();
        for (int s = 0; s < steps; s++) {
            if (model_step(m, batch, seqs, tokens, B, logits, NULL, err, sizeof err) < 0) {
                fprintf(stderr, "bench_engine: %s\n", err);
                exit(1);
            }
            for (int b = 0; b < B; b++)
                tokens[b] = sampler_argmax(logits + (size_t)b * (size_t)c->vocab, c->vocab);
        }
        if (r >= 0)
            secs[r] = now() - t0;
    }
    for (int b = 0; b < B; b++)
        model_seq_free(seqs[b]);
    model_batch_free(batch);
    free(logits);
    return median(secs, REPS);
}

/* Every weight except the embedding table (a step reads one row of it). */
static double bench_weight_stream(const model *m)
{
    const model_config *c = model_get_config(m);
    int cols = c->hidden;
    int rows = (int)((model_param_count(m) - (uint64_t)c->vocab * (uint64_t)c->embed) / (uint64_t)cols);
    float *w = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    float *x = malloc(sizeof(float) * (size_t)cols), *y = malloc(sizeof(float) * (size_t)rows);
    if (!w || !x || !y) {
        fputs("bench_engine: out of memory\n", stderr);
        exit(1);
    }
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
        w[i] = 1e-3f * (float)(i % 13);
    for (int i = 0; i < cols; i++)
        x[i] = 1.0f;
    enum { CALLS = 200 };
    double secs[REPS];
    for (int r = -1; r < REPS; r++) {
        double t0 = now();
        for (int k = 0; k < CALLS; k++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, w, cols, x, 1, 0.0f, y, 1);
        if (r >= 0)
            secs[r] = (now() - t0) / CALLS;
    }
    free(w);
    free(x);
    free(y);
    return median(secs, REPS);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fputs("usage: bench_engine MODEL TEXT_FILE [DECODE_STEPS (256)]\n", stderr);
        return 2;
    }
    int steps = argc > 3 ? atoi(argv[3]) : 256;
    if (steps < 1)
        steps = 256;
    openblas_set_num_threads(1);

    char err[ATTNLM_ERR_LEN];
    double t0 = now();
    model *m = model_load(argv[1], err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    double load_s = now() - t0;
    const model_config *c = model_get_config(m);

    size_t len = 0;
    char *text = read_file(argv[2], &len);
    if (!text || len <= PROMPT_BYTES) {
        fprintf(stderr, "bench_engine: cannot read text from %s (need more than %d bytes)\n", argv[2],
                PROMPT_BYTES);
        return 1;
    }
    int T = (int)len + 1;
    int *tokens = malloc(sizeof(int) * (size_t)T);
    float *logprobs = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab);
    if (!tokens || !logprobs) {
        fputs("bench_engine: out of memory\n", stderr);
        return 1;
    }
    tokens[0] = c->bos_id;
    for (size_t i = 0; i < len; i++)
        tokens[i + 1] = (unsigned char)text[i];

    printf("model %s: %s x%d, hidden %d, %s attention, window %d, %llu parameters\n", argv[1],
           model_cell_name(c->cell), c->layers, c->hidden, model_attention_name(c->attention), c->window,
           (unsigned long long)model_param_count(m));
    printf("openblas %s\n", openblas_get_config());
    printf("load_seconds %.4f\n", load_s);
    printf("score_bytes %d\n", T - 1);
    printf("score_tokens_per_s %.1f\n", bench_score(m, tokens, T, logprobs));
    printf("decode_steps %d\n", steps);
    static const int batches[] = {1, 8, 32};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        int B = batches[i];
        double s = bench_decode(m, tokens + 1, (int)len, B, steps);
        printf("decode_b%d_tokens_per_s %.1f\n", B, (double)B * steps / s);
        printf("decode_b%d_ms_per_step %.3f\n", B, 1e3 * s / steps);
    }
    printf("weight_stream_ms %.3f\n", 1e3 * bench_weight_stream(m));
    free(tokens);
    free(logprobs);
    free(text);
    model_free(m);
    return 0;
}
