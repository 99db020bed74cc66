/* context.c -- what a decoding step costs after a long context: the engine's
 * batch-1 step time after N tokens of text, for each N given.
 *
 *   context MODEL TEXT_FILE N...
 *
 * For each N the sequence first reads N tokens (TEXT repeated), in passes of
 * CHUNK tokens that each continue the state the previous one left
 * (model_forward_from), so memory stays that of one pass however long N is;
 * then STEPS greedy steps are timed.  Prints `context_N_us_per_token V` lines:
 * the best of REPS, in the benchmarking thread's CPU time.  The window holds
 * the last W positions whatever N is, so a step should cost the same.
 */
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CHUNK = 4096, STEPS = 256, REPS = 5 };

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = n > 0 ? malloc((size_t)n) : NULL;
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = p ? (size_t)n : 0;
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fputs("usage: context MODEL TEXT_FILE N...\n", stderr);
        return 2;
    }
    char err[ATTNLM_ERR_LEN];
    model *m = model_load(argv[1], err, sizeof err);
    size_t len = 0;
    char *text = read_file(argv[2], &len);
    if (!m || !text || len < 16) {
        fprintf(stderr, "context: %s\n", m ? "cannot read the text" : err);
        return 1;
    }
    const int V = model_get_config(m)->vocab;
    int *tok = malloc((len + 1) * sizeof *tok), *chunk = malloc(CHUNK * sizeof *chunk);
    float *logits = malloc((size_t)V * sizeof *logits);
    model_batch *b = model_batch_new(m, 1);
    sampler *smp = sampler_new(V);
    size_t T = tok_encode(text, len, tok); /* BOS, then the text's bytes */
    printf("model %s, window %d, %llu parameters\n", argv[1], model_get_config(m)->window,
           (unsigned long long)model_param_count(m));
    for (int a = 3; a < argc; a++) {
        long N = atol(argv[a]);
        model_seq *s[2] = {model_seq_new(m), model_seq_new(m)};
        int cur = 0;
        /* The context: BOS and the text, repeated, CHUNK tokens a pass. */
        for (long done = 0; done < N;) {
            int n = (int)(N - done < CHUNK ? N - done : CHUNK);
            for (int i = 0; i < n; i++)
                chunk[i] = done + i == 0 ? tok[0] : tok[1 + (size_t)(done + i - 1) % (T - 1)];
            model_seq_reset(s[1 - cur]);
            if (model_forward_from(m, done ? s[cur] : NULL, chunk, n, NULL, s[1 - cur], err, sizeof err) < 0) {
                fprintf(stderr, "context: %s\n", err);
                return 1;
            }
            cur = 1 - cur;
            done += n;
        }
        model_seq *saved = model_seq_new(m), *seq = s[cur];
        model_seq_copy(saved, seq);
        double bestt = 1e30;
        for (int r = 0; r < REPS; r++) {
            model_seq_copy(seq, saved); /* every repetition steps from the same context */
            int next = 'e';
            double t0 = cpu_now();
            for (int i = 0; i < STEPS; i++) {
                if (model_step(m, b, &seq, &next, 1, logits, NULL, err, sizeof err) < 0) {
                    fprintf(stderr, "context: %s\n", err);
                    return 1;
                }
                next = sampler_argmax(logits, V);
            }
            double t = cpu_now() - t0;
            bestt = t < bestt ? t : bestt;
        }
        printf("context_%ld_us_per_token %.2f\n", N, bestt / STEPS * 1e6);
        fflush(stdout);
        model_seq_free(s[0]);
        model_seq_free(s[1]);
        model_seq_free(saved);
    }
    sampler_free(smp);
    model_batch_free(b);
    free(logits);
    free(chunk);
    free(tok);
    free(text);
    model_free(m);
    return 0;
}
