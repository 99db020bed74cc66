/* main.c -- `attnlm`: the engine from a shell.
 *
 *   attnlm info     --model M                 configuration and provenance
 *   attnlm score    --model M --text T        per-byte log-probabilities, nats/byte
 *   attnlm generate --model M --prompt P [--max-tokens N --temperature X --top-k K --top-p P --seed S]
 *   attnlm eval     --model M --text FILE     held-out loss in nats/byte, as train/train.py's evaluate
 *   attnlm parity   --model M --expected E    the engine against a PyTorch dump of M (exit 1 if off)
 * info, score, generate and eval take --precision f32|bf16|int8 (default f32)
 * and --kernels NAME (default auto: the fastest this CPU runs).
 *
 * Generation prefills the prompt with the full-sequence pass and then decodes
 * one token at a time with model_step, exactly as the service does.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "opt.h"
#include "parity.h"
#include "rng.h"
#include "sampler.h"
#include "tokenizer.h"

#include <cblas.h>
#include <stdbool.h>
#include <stddef.h>
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
    double max_tokens, temperature, top_p, top_k;
    unsigned long long seed;
} options;

/* What kind of value an option takes (opt_spec.kind). */
enum { OPT_STR, OPT_NUM, OPT_SEED, OPT_PRECISION, OPT_KERNELS };

#define OFF(f) offsetof(options, f)

static const opt_spec OPTIONS[] = {
    {"--model", OPT_STR, OFF(model), 0, 0, "model file (default models/default.safetensors)"},
    {"--text", OPT_STR, OFF(text), 0, 0, "score: the text; eval: a file of held-out text"},
    {"--prompt", OPT_STR, OFF(text), 0, 0, "generate: the prompt"},
    {"--expected", OPT_STR, OFF(expected), 0, 0, "parity: a dump from train/dump_expected.py"},
    {"--precision", OPT_PRECISION, OFF(load), 0, 0, "weights as f32 (default), bf16 or int8"},
    {"--kernels", OPT_KERNELS, OFF(load), 0, 0, "the products' instruction set: auto (default), amx, avx512bf16, ..."},
    {"--max-tokens", OPT_NUM, OFF(max_tokens), 0, 1e6, "generate: tokens to generate (200)"},
    {"--temperature", OPT_NUM, OFF(temperature), 0, 100, "generate: sampling temperature (0.8; 0: greedy)"},
    {"--top-k", OPT_NUM, OFF(top_k), 0, 1e6, "generate: keep the k likeliest tokens (0: off)"},
    {"--top-p", OPT_NUM, OFF(top_p), 0, 1, "generate: keep the smallest set reaching p (1: off)"},
    {"--seed", OPT_SEED, OFF(seed), 0, 1.8e19, "generate: the sampler's seed (1)"},
};
#define N_OPTIONS (sizeof OPTIONS / sizeof *OPTIONS)

static int info_cmd(const model *m, const options *o);
static int score_cmd(const model *m, const options *o);
static int generate_cmd(const model *m, const options *o);
static int eval_cmd(const model *m, const options *o);

/* One command: its name, what it needs, and what it does (with a loaded model, or alone). */
typedef struct cli_command {
    const char *name, *args, *help;
    bool needs_text, needs_expected;
    int (*run)(const model *m, const options *o); /* NULL: runs without loading the model */
} cli_command;

static const cli_command COMMANDS[] = {
    {"info", "--model FILE", "configuration and provenance", false, false, info_cmd},
    {"score", "--model FILE --text TEXT", "per-byte log-probabilities, nats/byte", true, false, score_cmd},
    {"generate", "--model FILE --prompt TEXT [--max-tokens N --temperature X --top-k K --top-p P --seed S]",
     "prefill, then decode one token at a time as the service does", false, false, generate_cmd},
    {"eval", "--model FILE --text FILE", "held-out loss in nats/byte, as train/train.py's evaluate", true, false,
     eval_cmd},
    {"parity", "--model FILE --expected DUMP", "the engine against a PyTorch dump of the model (exit 1 if off)",
     false, true, NULL},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof *COMMANDS)

static void usage(FILE *to)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(to, "%s attnlm %-8s %s\n%23s%s\n", i ? "      " : "usage:", COMMANDS[i].name, COMMANDS[i].args, "",
                COMMANDS[i].help);
    fputs("options:\n", to);
    for (size_t i = 0; i < N_OPTIONS; i++)
        fprintf(to, "  %-14s %s\n", OPTIONS[i].name, OPTIONS[i].help);
}

/* Sets option opt from its value v. */
static int set_option(options *o, const opt_spec *opt, const char *v)
{
    void *field = opt_field(o, opt);
    char err[ATTNLM_ERR_LEN];
    double d;
    int rc = 0;
    switch (opt->kind) {
    case OPT_STR: *(const char **)field = v; break;
    case OPT_NUM: rc = opt_double(opt, opt->name, v, (double *)field, err, sizeof err); break;
    case OPT_SEED:
        if ((rc = opt_double(opt, opt->name, v, &d, err, sizeof err)) == 0)
            *(unsigned long long *)field = strtoull(v, NULL, 10);
        break;
    case OPT_PRECISION:
        if ((rc = model_precision_parse(v, &((model_opts *)field)->precision, err, sizeof err)) < 0)
            fprintf(stderr, "attnlm: %s: %s\n", opt->name, err);
        return rc;
    case OPT_KERNELS:
        if ((rc = model_kernels_check(v, err, sizeof err)) < 0)
            fprintf(stderr, "attnlm: %s: %s\n", opt->name, err);
        else
            ((model_opts *)field)->kernels = v;
        return rc;
    }
    if (rc < 0)
        fprintf(stderr, "attnlm: %s\n", err);
    return rc;
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
        const opt_spec *opt = opt_find(OPTIONS, N_OPTIONS, f, strlen(f));
        if (!opt) {
            fprintf(stderr, "attnlm: unknown option %s\n", f);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "attnlm: %s needs a value\n", f);
            return -1;
        }
        if (set_option(o, opt, argv[++i]) < 0)
            return -1;
    }
    return 0;
}

static int info_cmd(const model *m, const options *o)
{
    (void)o;
    const model_config *c = model_get_config(m);
    printf("cell %s, layers %d, hidden %d, embed %d, attention %s", model_cell_name(c->cell), c->layers, c->hidden,
           c->embed, model_attention_name(c->attention));
    if (c->attention == ATTN_MULTIHEAD)
        printf(" (%d heads)", c->heads);
    if (c->attention == ATTN_ADDITIVE)
        printf(" (attn_dim %d)", c->attn_dim);
    printf(", keys/values %s, window %d, vocab %d, %llu parameters\n", model_attn_kv_name(c->attn_kv), c->window,
           c->vocab, (unsigned long long)model_param_count(m));
    for (int i = 0; i < model_meta_count(m); i++) {
        const char *k, *v;
        model_meta_at(m, i, &k, &v);
        printf("  %s: %s\n", k, v);
    }
    return 0;
}

/* Encodes text and runs the model over it: *tok gets the tokens, *lp the
 * log-probabilities after each (both the caller's to free, also on failure),
 * and seq, when given, the state after the text.  The token count, or -1. */
static long prefill(const model *m, const char *text, model_seq *seq, int **tok, float **lp)
{
    size_t len = strlen(text);
    const int V = model_get_config(m)->vocab;
    char err[ATTNLM_ERR_LEN];
    *tok = malloc((len + 1) * sizeof **tok);
    *lp = malloc((len + 1) * (size_t)V * sizeof **lp);
    if (!*tok || !*lp) {
        fprintf(stderr, "attnlm: out of memory\n");
        return -1;
    }
    size_t T = tok_encode(text, len, *tok);
    if (model_forward(m, *tok, (int)T, *lp, NULL, seq, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: %s\n", err);
        return -1;
    }
    return (long)T;
}

static int score_cmd(const model *m, const options *o)
{
    const size_t V = (size_t)model_get_config(m)->vocab;
    int *tok = NULL;
    float *lp = NULL;
    long T = prefill(m, o->text, NULL, &tok, &lp);
    double total = 0.0;
    for (long k = 1; k < T; k++) { /* token k is scored by the distribution after position k-1 */
        double l = lp[(size_t)(k - 1) * V + (size_t)tok[k]];
        total += l;
        unsigned char b = (unsigned char)tok[k];
        printf("%5ld  0x%02x %c  %9.5f\n", k, b, b >= 32 && b < 127 ? b : '.', l);
    }
    if (T > 1)
        printf("total %.5f nats, %.5f nats/byte over %ld bytes\n", total, -total / (double)(T - 1), T - 1);
    free(tok);
    free(lp);
    return T < 0 ? -1 : 0;
}

static int generate_cmd(const model *m, const options *o)
{
    const char *prompt = o->text ? o->text : "";
    const int V = model_get_config(m)->vocab;
    int *tok = NULL;
    float *lp = NULL;
    model_seq *seq = model_seq_new(m);
    model_batch *batch = model_batch_new(m, 1);
    sampler *smp = sampler_new(V);
    char err[ATTNLM_ERR_LEN];
    int rc = -1;
    if (!seq || !batch || !smp) {
        fprintf(stderr, "attnlm: out of memory\n");
        goto done;
    }
    long T = prefill(m, prompt, seq, &tok, &lp);
    if (T < 0)
        goto done;
    sampler_params sp = {(float)o->temperature, (int)o->top_k, (float)o->top_p};
    uint64_t rng = o->seed;
    float *logits = lp + (size_t)(T - 1) * (size_t)V; /* log-probabilities sample like logits */
    fputs(prompt, stdout);
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
static int eval_cmd(const model *m, const options *o)
{
    const char *path = o->text;
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
    const cli_command *cmd = NULL;
    for (size_t i = 0; i < N_COMMANDS && !cmd; i++)
        if (!strcmp(o.cmd, COMMANDS[i].name))
            cmd = &COMMANDS[i];
    if (!cmd) {
        bool help = !strcmp(o.cmd, "--help") || !strcmp(o.cmd, "-h");
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    if (cmd->needs_text && !o.text) {
        fprintf(stderr, "attnlm: %s needs --text\n", o.cmd);
        return 2;
    }
    if (cmd->needs_expected && !o.expected) {
        fprintf(stderr, "attnlm: %s needs --expected\n", o.cmd);
        return 2;
    }
    openblas_set_num_threads(1);
    if (!cmd->run)
        return parity(&o);
    char err[ATTNLM_ERR_LEN];
    model *m = model_load_opts(o.model, &o.load, err, sizeof err);
    if (!m) {
        fprintf(stderr, "attnlm: cannot load %s: %s\n", o.model, err);
        return 1;
    }
    int rc = cmd->run(m, &o);
    model_free(m);
    return rc < 0 ? 1 : 0;
}
