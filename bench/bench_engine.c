/* bench_engine.c -- engine throughput on one model at every weight precision,
 * single-threaded, side by side in one run.
 *
 *   bench_engine MODEL TEXT_FILE [DECODE_STEPS]
 *
 * Loads MODEL once per precision (f32, bf16, int8; BENCH_PRECISIONS narrows
 * the list) and prints `name value` lines on stdout, P being the precision:
 *   kernels_P                   what model_kernels() reports
 *   weights_P_bytes             weights the model holds; rss_P_kb what loading it adds to the
 *                               resident memory of a fresh process
 *   score_P_tokens_per_s        full-sequence forward (log-probabilities) over BOS + TEXT
 *   decode_bN_P_tokens_per_s    greedy decoding of N sequences stepped together (N = 1, 8, 32),
 *                               aggregate tokens/s; each sequence is first prefilled with its own
 *                               32-byte slice of TEXT (not timed)
 *   decode_bN_P_ms_per_step     one model_step + argmax over the batch
 *   prefix_miss_P_ms, prefix_hit_P_ms
 *                               scoring a PREFIX_PROMPT-byte prompt (TEXT repeated) plus
 *                               PREFIX_SUFFIX new bytes through the prefix cache: with nothing
 *                               cached, and with the prompt's states cached by an earlier request
 *   window_W_b1_P_ms_per_step   one batch-1 step with W = 64 and W = 1024 positions in the window:
 *                               the model's own weights loaded with "window" set to W, each
 *                               sequence first prefilled with W + 64 tokens so that its window is
 *                               full, then 128 steps timed
 *   weight_read_P_ms            reading as many bytes as the weights hold once (AVX2 loads, four
 *                               streams) from a buffer that has just been read (as a step's
 *                               weights have): the floor that reading them sets for a batch-1 step
 * and the crossover of the product kernels with OpenBLAS on the model's
 * recurrent shape [G*H, H] and its first input shape [G*H, E]:
 *   gemm_NxK_mM_kernel_us / gemm_NxK_mM_blas_us   one f32 product of M rows (BLAS: sgemv for M = 1)
 * and every kernel table this CPU runs on the recurrent shape, at each precision:
 *   peak_T_P_gmacs              multiply-adds per second of the instructions table T's products at
 *                               precision P are made of, on independent accumulators (the peak)
 *   kernel_T_P_mM_gmacs         what one product of M = 1, 8, 32 rows reaches
 * BENCH_KERNELS names the table the models run on (default: the fastest this CPU runs).
 *
 * Times are the benchmarking thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so
 * other processes sharing the cores slow the figures less than they would
 * the wall clock; cpu_share says what fraction of the wall clock the thread
 * got.  Each figure is the best of REPS repetitions after a warm-up (on a
 * shared machine the other work only ever adds time), the precisions taking
 * turns within each repetition so that a change of load affects them alike.
 */
#define _GNU_SOURCE /* memmem */
#include "kernels.h"
#include "model.h"
#include "prefix.h"
#include "sampler.h"
#include "tokenizer.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { REPS = 7, PROMPT_BYTES = 32, MAX_BATCH = 32, N_BATCHES = 3, PREFIX_PROMPT = 2000, PREFIX_SUFFIX = 20 };
static const int BATCHES[N_BATCHES] = {1, 8, 32};
enum { N_WINDOWS = 2, WINDOW_STEPS = 128 };
static const int WINDOWS[N_WINDOWS] = {64, 1024};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static double cpu_now(void) { return clock_s(CLOCK_THREAD_CPUTIME_ID); }

static double best(const double *v, int n)
{
    double b = v[0];
    for (int i = 1; i < n; i++)
        b = v[i] < b ? v[i] : b;
    return b;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_engine: %s\n", what);
    exit(1);
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

static long rss_kb(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* One precision's model and what was measured of it. */
typedef struct run {
    model_precision prec;
    model *m;
    long rss_kb;
    double score[REPS], step[N_BATCHES][REPS], read[REPS], miss[REPS], hit[REPS], wstep[N_WINDOWS][REPS];
    model *wm[N_WINDOWS]; /* the same weights with window WINDOWS[i] */
    model_seq *seqs[MAX_BATCH];
    model_batch *batch;
    float *logits;
} run;

static double time_score(const model *m, const int *tokens, int T, float *logprobs)
{
    char err[ATTNLM_ERR_LEN];
    double t0 = cpu_now();
    if (model_forward(m, tokens, T, logprobs, NULL, NULL, err, sizeof err) < 0)
        die(err);
    return cpu_now() - t0;
}

/* CPU seconds to score tokens[T] (a prompt of P tokens and what follows)
 * through a prefix cache, cold (miss) or holding the prompt (hit). */
static void time_prefix(const model *m, const int *tokens, int T, int P, float *logprobs, double *miss, double *hit)
{
    char err[ATTNLM_ERR_LEN];
    prefix_cache *pc = prefix_cache_new(256u << 20);
    if (!pc)
        die("out of memory");
    double t0 = cpu_now();
    if (model_forward_cached(m, pc, 1, &tokens, &T, &logprobs, NULL, NULL, err, sizeof err) < 0)
        die(err);
    *miss = cpu_now() - t0;
    prefix_cache_free(pc);
    pc = prefix_cache_new(256u << 20);
    if (!pc || model_forward_cached(m, pc, 1, &tokens, &P, &logprobs, NULL, NULL, err, sizeof err) < 0)
        die("warming the prefix cache failed");
    int reused = 0;
    t0 = cpu_now();
    if (model_forward_cached(m, pc, 1, &tokens, &T, &logprobs, NULL, &reused, err, sizeof err) < 0)
        die(err);
    *hit = cpu_now() - t0;
    if (reused == 0)
        die("the prefix cache missed a cached prompt");
    prefix_cache_free(pc);
}

/* CPU seconds for `steps` steps of B sequences, each prefilled first (not timed). */
static double time_decode(run *r, const int *text, int ntext, int B, int steps)
{
    char err[ATTNLM_ERR_LEN];
    const model_config *c = model_get_config(r->m);
    int tokens[MAX_BATCH], prompt[PROMPT_BYTES + 1];
    for (int b = 0; b < B; b++) {
        int start = (b * 29) % (ntext - PROMPT_BYTES);
        prompt[0] = c->bos_id;
        memcpy(prompt + 1, text + start, sizeof(int) * PROMPT_BYTES);
        model_seq_reset(r->seqs[b]);
        /* The prompt's last token is fed by the first step. */
        if (model_forward(r->m, prompt, PROMPT_BYTES, NULL, NULL, r->seqs[b], err, sizeof err) < 0)
            die(err);
        tokens[b] = prompt[PROMPT_BYTES];
    }
    double t0 = cpu_now();
    for (int s = 0; s < steps; s++) {
        if (model_step(r->m, r->batch, r->seqs, tokens, B, r->logits, NULL, err, sizeof err) < 0)
            die(err);
        for (int b = 0; b < B; b++)
            tokens[b] = sampler_argmax(r->logits + (size_t)b * (size_t)c->vocab, c->vocab);
    }
    return cpu_now() - t0;
}

/* The model file's bytes with its "window" metadata set to W: the header
 * rewritten (and padded to 8 again), the tensors unchanged.  NULL if the
 * header has no window entry. */
static char *with_window(const char *file, size_t len, int W, size_t *out_len)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | (unsigned char)file[i];
    const char *key = "\"window\":\"", *head = file + 8;
    if (len < 8 || n > len - 8)
        return NULL;
    const char *at = memmem(head, n, key, strlen(key));
    const char *end = at ? memchr(at + strlen(key), '"', (size_t)(head + n - at - strlen(key))) : NULL;
    if (!end)
        return NULL;
    char value[16];
    int vlen = snprintf(value, sizeof value, "%d", W);
    size_t before = (size_t)(at + strlen(key) - head), after = (size_t)(head + n - end);
    /* The JSON ends at its last '}'; what follows is padding to drop and redo. */
    while (after > 0 && end[after - 1] == ' ')
        after--;
    size_t body = before + (size_t)vlen + after, padded = (8 + body + 7) / 8 * 8 - 8;
    char *out = malloc(8 + padded + (len - 8 - n));
    if (!out)
        return NULL;
    for (int i = 0; i < 8; i++)
        out[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(out + 8, head, before);
    memcpy(out + 8 + before, value, (size_t)vlen);
    memcpy(out + 8 + before + vlen, end, after);
    memset(out + 8 + body, ' ', padded - body);
    memcpy(out + 8 + padded, head + n, len - 8 - n);
    *out_len = 8 + padded + (len - 8 - n);
    return out;
}

/* CPU seconds for WINDOW_STEPS batch-1 steps of m with its window full. */
static double time_window_step(const model *m, model_batch *batch, model_seq *seq, float *logits, const int *text,
                               int ntext)
{
    char err[ATTNLM_ERR_LEN];
    const model_config *c = model_get_config(m);
    const int P = c->window + 64;
    int *prompt = malloc(sizeof(int) * (size_t)P);
    if (!prompt)
        die("out of memory");
    prompt[0] = c->bos_id;
    for (int i = 1; i < P; i++)
        prompt[i] = text[(i - 1) % ntext];
    model_seq_reset(seq);
    if (model_forward(m, prompt, P - 1, NULL, NULL, seq, err, sizeof err) < 0)
        die(err);
    int token = prompt[P - 1];
    free(prompt);
    double t0 = cpu_now();
    for (int s = 0; s < WINDOW_STEPS; s++) {
        if (model_step(m, batch, &seq, &token, 1, logits, NULL, err, sizeof err) < 0)
            die(err);
        token = sampler_argmax(logits, c->vocab);
    }
    return cpu_now() - t0;
}

/* Reads n bytes (a multiple of 1024) as 4 streams, one per quarter, as the
 * kernels read 4 panels at once, with 32-byte loads into 8 independent sums:
 * bound by the memory hierarchy, not by the loop.  (Only scalars cross the
 * boundary of this AVX2 function.) */
typedef uint64_t u64x4 __attribute__((vector_size(32)));
#if defined(__x86_64__)
__attribute__((target("avx2")))
#endif
static uint64_t read_bytes(const unsigned char *buf, size_t n)
{
    __asm__ volatile("" ::: "memory"); /* each call reads: the compiler may not reuse a result */
    u64x4 s[8] = {{0}};
    const size_t q = n / 4;
    for (size_t i = 0; i < q; i += 64)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            u64x4 v, w;
            memcpy(&v, buf + (size_t)j * q + i, sizeof v);
            memcpy(&w, buf + (size_t)j * q + i + 32, sizeof w);
            s[2 * j] ^= v;
            s[2 * j + 1] ^= w;
        }
    for (int j = 1; j < 8; j++)
        s[0] ^= s[j];
    return s[0][0] ^ s[0][1] ^ s[0][2] ^ s[0][3];
}

/* CPU seconds to read n bytes once, right after reading them (as a step's
 * weights have been by the step before). */
static double time_read(const unsigned char *buf, size_t n)
{
    static volatile uint64_t sink;
    enum { CALLS = 50 };
    n &= ~(size_t)1023;
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2"))
        return 0.0;
#endif
    uint64_t s = read_bytes(buf, n);
    double t0 = cpu_now();
    for (int k = 0; k < CALLS; k++)
        s ^= read_bytes(buf, n);
    sink = s;
    (void)sink;
    return (cpu_now() - t0) / CALLS;
}

/* What loading the model at prec adds to a fresh process's resident memory
 * (measured in a child process, so no other model or allocation history counts). */
static long load_rss_kb(const char *path, model_precision prec)
{
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        char err[ATTNLM_ERR_LEN];
        model_opts opts = {.precision = prec};
        long before = rss_kb();
        model *m = model_load_opts(path, &opts, err, sizeof err);
        long kb = m ? rss_kb() - before : -1;
        ssize_t w = write(fd[1], &kb, sizeof kb);
        _exit(w == (ssize_t)sizeof kb ? 0 : 1);
    }
    close(fd[1]);
    long kb = -1;
    if (pid < 0 || read(fd[0], &kb, sizeof kb) != (ssize_t)sizeof kb)
        kb = -1;
    close(fd[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return kb;
}

/* A product's operands: weights [N, K], up to maxm input rows, their outputs, scratch. */
typedef struct operands {
    float *w, *in, *out;
    void *scratch;
} operands;

static operands operands_new(int N, int K, int maxm)
{
    operands o = {malloc(sizeof(float) * (size_t)N * K), malloc(sizeof(float) * (size_t)maxm * K),
                  malloc(sizeof(float) * (size_t)maxm * N), malloc(kern_scratch_bytes(K))};
    if (!o.w || !o.in || !o.out || !o.scratch)
        die("out of memory");
    for (size_t i = 0; i < (size_t)N * K; i++)
        o.w[i] = 1e-3f * (float)(i % 13) - 6e-3f;
    for (size_t i = 0; i < (size_t)maxm * K; i++)
        o.in[i] = 1e-2f * (float)(i % 7) - 3e-2f;
    return o;
}

static void operands_free(operands *o)
{
    free(o->w);
    free(o->in);
    free(o->out);
    free(o->scratch);
}

/* The f32 product kernel against OpenBLAS on [N, K] for M rows: minimum microseconds of each. */
static void crossover(int N, int K)
{
    static const int Ms[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024};
    operands o = operands_new(N, K, 1024);
    float *w = o.w, *in = o.in, *out = o.out;
    void *scratch = o.scratch;
    kmat km;
    char err[128];
    if (kmat_pack(&km, w, K, N, K, KERN_F32, err, sizeof err) < 0)
        die(err);
    const kern_ops *k = kern_best();
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
        const int M = Ms[mi], reps = M <= 16 ? 200 : M <= 128 ? 30 : 6;
        double best[2] = {1e9, 1e9};
        for (int rep = 0; rep < reps; rep++) {
            double t0 = cpu_now();
            k->gemm[KERN_F32](out, N, in, K, &km, NULL, M, false, scratch);
            double t1 = cpu_now();
            if (M == 1)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, in, 1, 0.0f, out, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, in, K, w, K, 0.0f, out, N);
            double t2 = cpu_now();
            best[0] = t1 - t0 < best[0] ? t1 - t0 : best[0];
            best[1] = t2 - t1 < best[1] ? t2 - t1 : best[1];
        }
        printf("gemm_%dx%d_m%d_kernel_us %.1f\n", N, K, M, 1e6 * best[0]);
        printf("gemm_%dx%d_m%d_blas_us %.1f\n", N, K, M, 1e6 * best[1]);
    }
    kmat_free(&km);
    operands_free(&o);
}

/* Every kernel table this CPU runs, at every precision, on [N, K] for 1, 8 and
 * 32 rows: multiply-adds per second (best of many) beside the table's peak for
 * that precision's instructions (kern_ops.peak_macs). */
static void kernel_share(int N, int K)
{
    static const int Ms[] = {1, 8, 32};
    operands o = operands_new(N, K, 32);
    float *w = o.w, *in = o.in, *out = o.out;
    void *scratch = o.scratch;
    char err[128];
    printf("share_shape %dx%d\n", N, K);
    for (int t = 0; kern_tables[t]; t++) {
        const kern_ops *k = kern_tables[t];
        if (!kern_runs(k))
            continue;
        for (int p = 0; p < KERN_PREC_COUNT; p++) {
            kmat km;
            if (kmat_pack(&km, w, K, N, K, (kern_prec)p, err, sizeof err) < 0)
                die(err);
            double peak = k->peak_macs((kern_prec)p, 0.05);
            printf("peak_%s_%s_gmacs %.1f\n", k->name, kern_prec_name((kern_prec)p), peak / 1e9);
            for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
                const int M = Ms[mi];
                double best_s = 1e9;
                for (int rep = 0; rep < 100; rep++) {
                    double t0 = cpu_now();
                    k->gemm[p](out, N, in, K, &km, NULL, M, false, scratch);
                    double d = cpu_now() - t0;
                    best_s = d < best_s ? d : best_s;
                }
                printf("kernel_%s_%s_m%d_gmacs %.1f\n", k->name, kern_prec_name((kern_prec)p), M,
                       (double)M * N * K / best_s / 1e9);
            }
            kmat_free(&km);
        }
    }
    operands_free(&o);
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
    double wall0 = clock_s(CLOCK_MONOTONIC), cpu0 = cpu_now();

    run runs[MODEL_PRECISION_COUNT];
    int n_runs = 0;
    const char *want = getenv("BENCH_PRECISIONS");
    char err[ATTNLM_ERR_LEN];
    for (int p = 0; p < MODEL_PRECISION_COUNT; p++) {
        const char *name = model_precision_name((model_precision)p);
        if (want && *want && !strstr(want, name))
            continue;
        run *r = &runs[n_runs++];
        memset(r, 0, sizeof *r);
        r->prec = (model_precision)p;
        model_opts opts = {.precision = r->prec, .kernels = getenv("BENCH_KERNELS")};
        if (!(r->m = model_load_opts(argv[1], &opts, err, sizeof err)))
            die(err);
        r->rss_kb = load_rss_kb(argv[1], r->prec);
        r->batch = model_batch_new(r->m, MAX_BATCH);
        r->logits = malloc(sizeof(float) * MAX_BATCH * (size_t)model_get_config(r->m)->vocab);
        for (int b = 0; b < MAX_BATCH; b++)
            if (!(r->seqs[b] = model_seq_new(r->m)))
                die("out of memory");
        if (!r->batch || !r->logits)
            die("out of memory");
        size_t flen = 0, wlen = 0;
        char *file = read_file(argv[1], &flen);
        for (int wi = 0; wi < N_WINDOWS; wi++) {
            char *variant = file ? with_window(file, flen, WINDOWS[wi], &wlen) : NULL;
            char path[] = "/tmp/attnlm-bench-window-XXXXXX";
            int fd = variant ? mkstemp(path) : -1;
            if (fd < 0 || write(fd, variant, wlen) != (ssize_t)wlen)
                die("cannot write the model with another window");
            close(fd);
            free(variant);
            r->wm[wi] = model_load_opts(path, &opts, err, sizeof err);
            unlink(path);
            if (!r->wm[wi])
                die(err);
        }
        free(file);
    }
    if (n_runs == 0)
        die("BENCH_PRECISIONS names none of f32, bf16, int8");
    const model *m0 = runs[0].m;
    const model_config *c = model_get_config(m0);

    size_t len = 0;
    char *text = read_file(argv[2], &len);
    if (!text || len <= PROMPT_BYTES) {
        fprintf(stderr, "bench_engine: cannot read text from %s (need more than %d bytes)\n", argv[2], PROMPT_BYTES);
        return 1;
    }
    int T = (int)len + 1, TP = 1 + PREFIX_PROMPT + PREFIX_SUFFIX;
    int *tokens = malloc(sizeof(int) * (size_t)T), *ptokens = malloc(sizeof(int) * (size_t)TP);
    float *logprobs = malloc(sizeof(float) * (size_t)(T > TP ? T : TP) * (size_t)c->vocab);
    size_t max_bytes = 0;
    for (int i = 0; i < n_runs; i++)
        max_bytes = model_weight_bytes(runs[i].m) > max_bytes ? model_weight_bytes(runs[i].m) : max_bytes;
    unsigned char *wbuf = malloc(max_bytes + 1024);
    if (!tokens || !ptokens || !logprobs || !wbuf)
        die("out of memory");
    memset(wbuf, 1, max_bytes + 1024);
    tokens[0] = c->bos_id;
    for (size_t i = 0; i < len; i++)
        tokens[i + 1] = (unsigned char)text[i];
    ptokens[0] = c->bos_id;
    for (int i = 1; i < TP; i++)
        ptokens[i] = (unsigned char)text[(size_t)(i - 1 < PREFIX_PROMPT ? i - 1 : i - 1 - PREFIX_PROMPT / 2) % len];

    printf("model %s: %s x%d, hidden %d, %s attention, window %d, %llu parameters\n", argv[1],
           model_cell_name(c->cell), c->layers, c->hidden, model_attention_name(c->attention), c->window,
           (unsigned long long)model_param_count(m0));
    printf("openblas %s\n", openblas_get_config());
    printf("timing thread-cpu-time\n");
    printf("score_bytes %d\n", T - 1);
    printf("decode_steps %d\n", steps);
    printf("prefix_prompt_bytes %d\nprefix_suffix_bytes %d\n", PREFIX_PROMPT, PREFIX_SUFFIX);
    for (int i = 0; i < n_runs; i++) {
        const char *p = model_precision_name(runs[i].prec);
        printf("kernels_%s %s\n", p, model_kernels(runs[i].m));
        printf("weights_%s_bytes %zu\n", p, model_weight_bytes(runs[i].m));
        printf("rss_%s_kb %ld\n", p, runs[i].rss_kb);
    }
    fflush(stdout);

    for (int rep = -1; rep < REPS; rep++)
        for (int i = 0; i < n_runs; i++) {
            run *r = &runs[i];
            double s = time_score(r->m, tokens, T, logprobs);
            if (rep >= 0)
                r->score[rep] = s;
            for (int bi = 0; bi < N_BATCHES; bi++) {
                double d = time_decode(r, tokens + 1, (int)len, BATCHES[bi], steps);
                if (rep >= 0)
                    r->step[bi][rep] = d / steps;
            }
            for (int wi = 0; wi < N_WINDOWS; wi++) {
                model_seq *ws = model_seq_new(r->wm[wi]);
                model_batch *wb = model_batch_new(r->wm[wi], 1);
                if (!ws || !wb)
                    die("out of memory");
                double d = time_window_step(r->wm[wi], wb, ws, r->logits, tokens + 1, (int)len);
                if (rep >= 0)
                    r->wstep[wi][rep] = d / WINDOW_STEPS;
                model_seq_free(ws);
                model_batch_free(wb);
            }
            double rd = time_read(wbuf, model_weight_bytes(r->m));
            if (rep >= 0)
                r->read[rep] = rd;
            double miss, hit;
            time_prefix(r->m, ptokens, TP, 1 + PREFIX_PROMPT, logprobs, &miss, &hit);
            if (rep >= 0) {
                r->miss[rep] = miss;
                r->hit[rep] = hit;
            }
        }
    for (int i = 0; i < n_runs; i++) {
        run *r = &runs[i];
        const char *p = model_precision_name(r->prec);
        printf("score_%s_tokens_per_s %.1f\n", p, (double)(T - 1) / best(r->score, REPS));
        for (int bi = 0; bi < N_BATCHES; bi++) {
            double s = best(r->step[bi], REPS);
            printf("decode_b%d_%s_tokens_per_s %.1f\n", BATCHES[bi], p, BATCHES[bi] / s);
            printf("decode_b%d_%s_ms_per_step %.4f\n", BATCHES[bi], p, 1e3 * s);
        }
        for (int wi = 0; wi < N_WINDOWS; wi++)
            printf("window_%d_b1_%s_ms_per_step %.4f\n", WINDOWS[wi], p, 1e3 * best(r->wstep[wi], REPS));
        printf("weight_read_%s_ms %.4f\n", p, 1e3 * best(r->read, REPS));
        printf("prefix_miss_%s_ms %.3f\n", p, 1e3 * best(r->miss, REPS));
        printf("prefix_hit_%s_ms %.3f\n", p, 1e3 * best(r->hit, REPS));
    }
    crossover(c->gates * c->hidden, c->hidden);
    crossover(c->gates * c->hidden, c->embed);
    kernel_share(c->gates * c->hidden, c->hidden);
    printf("cpu_share %.2f\n", (cpu_now() - cpu0) / (clock_s(CLOCK_MONOTONIC) - wall0));

    for (int i = 0; i < n_runs; i++) {
        for (int b = 0; b < MAX_BATCH; b++)
            model_seq_free(runs[i].seqs[b]);
        model_batch_free(runs[i].batch);
        for (int wi = 0; wi < N_WINDOWS; wi++)
            model_free(runs[i].wm[wi]);
        free(runs[i].logits);
        model_free(runs[i].m);
    }
    free(wbuf);
    free(tokens);
    free(ptokens);
    free(logprobs);
    free(text);
    return 0;
}
