/* main.c -- `attnlm`: the engine from a shell.
 *
 *   attnlm info     --model M                 configuration and provenance
 *   attnlm score    --model M --text T        per-byte log-probabilities, nats/byte
 *   attnlm generate --model M --prompt P [--max-tokens N --temperature X --top-k K --top-p P --seed S]
 *   attnlm eval     --model M --text FILE     held-out loss in nats/byte, as train/train.py's evaluate
 *   attnlm parity   --model M --expected E    the engine against a PyTorch dump of M (exit 1 if off)
 * info, score, generate and eval take --precision f32|bf16|int8 (default f32).
 *
 * Generation prefills the prompt with the full-sequence pass and then decodes
 * one token at a time with model_step, exactly as the service does.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "parity.h"
#include "rng.h"
#include "sampler.h"
#include "tokenizer.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Bytes per evaluation slice and slices per forward pass (train/train.py's --eval-len and batch). */
enum { EVAL_LEN = 256, EVAL_BATCH = 32 };

typedef struct options {
    const char *cmd, *model, *text, *expected;
    model_opts load;
    long max_tokens;
    double temperature, top_p;
    long top_k;
    unsigned long long seed;
} options;

static void usage(FILE *to)
{
    fputs("usage: attnlm info     --model FILE\n"
          "       attnlm score    --model FILE --text TEXT\n"
          "       attnlm generate --model FILE --prompt TEXT [--max-tokens N (200)] [--temperature X (0.8)]\n"
          "                       [--top-k K (0: off)] [--top-p P (1: off)] [--seed S (1)]\n"
          "       attnlm eval     --model FILE --text FILE\n"
          "       attnlm parity   --model FILE --expected DUMP (from train/dump_expected.py)\n"
          "info, score, generate and eval take --precision f32|bf16|int8 (weights; default f32)\n",
          to);
}

static int parse_num(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "attnlm: %s must be a number in [%g, %g], got \"%s\"\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.model = "models/default.safetensors", .max_tokens = 200, .temperature = 0.8, .top_p = 1.0,
                   .seed = 1};
    if (argc < 2)
        return -1;
    o->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "attnlm: %s needs a value\n", f);
            return -1;
        }
        const char *v = argv[++i];
        double d;
        if (!strcmp(f, "--model")) {
            o->model = v;
        } else if (!strcmp(f, "--text") || !strcmp(f, "--prompt")) {
            o->text = v;
        } else if (!strcmp(f, "--expected")) {
            o->expected = v;
        } else if (!strcmp(f, "--precision")) {
            char err[ATTNLM_ERR_LEN];
            if (model_precision_parse(v, &o->load.precision, err, sizeof err) < 0) {
                fprintf(stderr, "attnlm: --precision: %s\n", err);
                return -1;
            }
        } else if (!strcmp(f, "--max-tokens")) {
            if (parse_num(f, v, 0, 1e6, &d) < 0)
                return -1;
            o->max_tokens = (long)d;
        } else if (!strcmp(f, "--temperature")) {
            if (parse_num(f, v, 0, 100, &o->temperature) < 0)
                return -1;
        } else if (!strcmp(f, "--top-k")) {
            if (parse_num(f, v, 0, 1e6, &d) < 0)
                return -1;
            o->top_k = (long)d;
        } else if (!strcmp(f, "--top-p")) {
            if (parse_num(f, v, 0, 1, &o->top_p) < 0)
                return -1;
        } else if (!strcmp(f, "--seed")) {
            if (parse_num(f, v, 0, 1.8e19, &d) < 0)
                return -1;
            o->seed = strtoull(v, NULL, 10);
        } else {
            fprintf(stderr, "attnlm: unknown option %s\n", f);
            return -1;
        }
    }
    return 0;
}

static void info(const model *m)
{
    const model_config *c = model_get_config(m);
    printf("cell %s, layers %d, hidden %d, embed %d, attention %s", model_cell_name(c->cell), c->layers, c->hidden,
           c->embed, model_attention_name(c->attention));
    if (c->attention == ATTN_MULTIHEAD)
        printf(" (%d heads)", c->heads);
    if (c->attention == ATTN_ADDITIVE)
        printf(" (attn_dim %d)", c->attn_dim);
    printf(", window %d, vocab %d, %llu parameters\n", c->window, c->vocab,
           (unsigned long long)model_param_count(m));
    for (int i = 0; i < model_meta_count(m); i++) {
        const char *k, *v;
        model_meta_at(m, i, &k, &v);
        printf("  %s: %s\n", k, v);
    }
}

static int score(const model *m, const char *text)
{
    size_t len = strlen(text);
    const int V = model_get_config(m)->vocab;
    int *tok = malloc((len + 1) * sizeof *tok);
    float *lp = malloc((len + 1) * (size_t)V * sizeof *lp);
    char err[ATTNLM_ERR_LEN];
    int rc = -1;
    if (!tok || !lp) {
        fprintf(stderr, "attnlm: out of memory\n");
        goto done;
    }
    size_t T = tok_encode(text, len, tok);
    if (model_forward(m, tok, (int)T, lp, NULL, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: %s\n", err);
        goto done;
    }
    double total = 0.0;
    for (size_t k = 1; k < T; k++) { /* token k is scored by the distribution after position k-1 */
        double l = lp[(k - 1) * (size_t)V + (size_t)tok[k]];
        total += l;
        unsigned char b = (unsigned char)tok[k];
        printf("%5zu  0x%02x %c  %9.5f\n", k, b, b >= 32 && b < 127 ? b : '.', l);
    }
    if (T > 1)
        printf("total %.5f nats, %.5f nats/byte over %zu bytes\n", total, -total / (double)(T - 1), T - 1);
    rc = 0;
done:
    free(tok);
    free(lp);
    return rc;
}

static int generate(const model *m, const options *o)
{
    const char *prompt = o->text ? o->text : "";
    size_t len = strlen(prompt);
    const int V = model_get_config(m)->vocab;
    int *tok = malloc((len + 1) * sizeof *tok);
    float *lp = malloc((len + 1) * (size_t)V * sizeof *lp);
    model_seq *seq = model_seq_new(m);
    model_batch *batch = model_batch_new(m, 1);
    sampler *smp = sampler_new(V);
    char err[ATTNLM_ERR_LEN];
    int rc = -1;
    if (!tok || !lp || !seq || !batch || !smp) {
        fprintf(stderr, "attnlm: out of memory\n");
        goto done;
    }
    size_t T = tok_encode(prompt, len, tok);
    if (model_forward(m, tok, (int)T, lp, NULL, seq, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: %s\n", err);
        goto done;
    }
    sampler_params sp = {(float)o->temperature, (int)o->top_k, (float)o->top_p};
    uint64_t rng = o->seed;
    float *logits = lp + (T - 1) * (size_t)V; /* log-probabilities sample like logits */
    fwrite(prompt, 1, len, stdout);
    for (long n = 0; n < o->max_tokens; n++) {
        logits[model_get_config(m)->bos_id] = -INFINITY; /* as the service: BOS is never text */
        int next = sampler_sample(smp, logits, &sp, rng_uniform(&rng));
        putchar(next);
        if (model_step(m, batch, &seq, &next, 1, logits, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "attnlm: %s\n", err);
            goto done;
        }
    }
    putchar('\n');
    rc = 0;
done:
    sampler_free(smp);
    model_batch_free(batch);
    model_seq_free(seq);
    free(tok);
    free(lp);
    return rc;
}

static double seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The mean negative log-likelihood in nats per byte of the file's text,
 * exactly as train/train.py's evaluate: the text cut into slices of EVAL_LEN
 * bytes (the last may be shorter), each scored after BOS and its own
 * preceding bytes only. */
static int eval(const model *m, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "attnlm: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 16, len = 0, n;
    unsigned char *text = malloc(cap);
    while (text && (n = fread(text + len, 1, cap - len, f)) > 0)
        if ((len += n) == cap) {
            unsigned char *bigger = realloc(text, cap *= 2);
            if (!bigger) {
                free(text);
                text = NULL;
            }
            text = bigger;
        }
    fclose(f);
    const model_config *c = model_get_config(m);
    const size_t V = (size_t)c->vocab;
    int *tok = malloc(sizeof *tok * EVAL_BATCH * EVAL_LEN);
    float *lp = malloc(sizeof *lp * EVAL_BATCH * EVAL_LEN * V);
    int rc = -1;
    if (!text || !tok || !lp) {
        fprintf(stderr, "attnlm: out of memory\n");
        goto done;
    }
    if (len == 0) {
        fprintf(stderr, "attnlm: %s is empty\n", path);
        goto done;
    }
    double total = 0.0, cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID), wall0 = seconds(CLOCK_MONOTONIC);
    char err[ATTNLM_ERR_LEN];
    for (size_t start = 0; start < len; start += (size_t)EVAL_BATCH * EVAL_LEN) {
        const int *tp[EVAL_BATCH];
        float *lps[EVAL_BATCH];
        int lens[EVAL_BATCH], B = 0;
        for (size_t s = start; s < len && B < EVAL_BATCH; s += EVAL_LEN, B++) {
            lens[B] = (int)(len - s < EVAL_LEN ? len - s : EVAL_LEN);
            int *t = tok + (size_t)B * EVAL_LEN;
            t[0] = c->bos_id;
            for (int i = 1; i < lens[B]; i++)
                t[i] = text[s + (size_t)i - 1];
            tp[B] = t;
            lps[B] = lp + (size_t)B * EVAL_LEN * V;
        }
        if (model_forward_batch(m, B, tp, lens, lps, NULL, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "attnlm: %s\n", err);
            goto done;
        }
        for (int b = 0; b < B; b++)
            for (int i = 0; i < lens[b]; i++)
                total -= lps[b][(size_t)i * V + text[start + (size_t)b * EVAL_LEN + (size_t)i]];
    }
    double cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = seconds(CLOCK_MONOTONIC) - wall0;
    printf("%s: %.5f nats/byte (%.4f bits/byte) over %zu bytes in slices of %d; precision %s, kernels %s; "
           "%.0f tokens/s (%.0f per CPU second)\n",
           path, total / (double)len, total / (double)len / log(2.0), len, EVAL_LEN,
           model_precision_name(model_get_precision(m)), model_kernels(m), (double)len / wall, (double)len / cpu);
    rc = 0;
done:
    free(text);
    free(tok);
    free(lp);
    return rc;
}

/* Exit status 0 when the engine matches the dump within tolerance. */
static int parity(const options *o)
{
    char err[ATTNLM_ERR_LEN];
    parity_result r;
    if (parity_compare(o->model, o->expected, &r, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: parity: %s\n", err);
        return 1;
    }
    int ok = r.logprob_err <= PARITY_TOL_LOGPROB && r.attn_err <= PARITY_TOL_ATTN && r.self_err <= PARITY_TOL_LOGPROB;
    printf("%s: %d tokens, max |logprob diff| %.3g (tol %g), max |attention diff| %.3g (tol %g), "
           "max |logprob diff| without attention %.3g: %s\n",
           o->model, r.tokens, r.logprob_err, PARITY_TOL_LOGPROB, r.attn_err, PARITY_TOL_ATTN, r.self_err,
           ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) < 0) {
        usage(stderr);
        return 2;
    }
    if (strcmp(o.cmd, "info") && strcmp(o.cmd, "score") && strcmp(o.cmd, "generate") && strcmp(o.cmd, "eval") &&
        strcmp(o.cmd, "parity")) {
        usage(strcmp(o.cmd, "--help") && strcmp(o.cmd, "-h") ? stderr : stdout);
        return strcmp(o.cmd, "--help") && strcmp(o.cmd, "-h") ? 2 : 0;
    }
    if ((!strcmp(o.cmd, "score") || !strcmp(o.cmd, "eval")) && !o.text) {
        fprintf(stderr, "attnlm: %s needs --text\n", o.cmd);
        return 2;
    }
    if (!strcmp(o.cmd, "parity") && !o.expected) {
        fprintf(stderr, "attnlm: parity needs --expected\n");
        return 2;
    }
    openblas_set_num_threads(1);
    if (!strcmp(o.cmd, "parity"))
        return parity(&o);
    char err[ATTNLM_ERR_LEN];
    model *m = model_load_opts(o.model, &o.load, err, sizeof err);
    if (!m) {
        fprintf(stderr, "attnlm: cannot load %s: %s\n", o.model, err);
        return 1;
    }
    int rc = 0;
    if (!strcmp(o.cmd, "info"))
        info(m);
    else if (!strcmp(o.cmd, "score"))
        rc = score(m, o.text);
    else if (!strcmp(o.cmd, "eval"))
        rc = eval(m, o.text);
    else
        rc = generate(m, &o);
    model_free(m);
    return rc < 0 ? 1 : 0;
}
