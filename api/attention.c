/* attention.c -- POST /v1/attention: the attention maps of one forward pass
 * over the input, as band rows or dense rows, and optionally a summary of each
 * head's maps (entropy, look-back, weight on self and BOS, weight by distance)
 * without the maps.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static attention_state *st(const api_job *j) { return j->state; }

static int attention_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    (void)seed, (void)request_id;
    const char *format = "band";
    if (json_get_string(o, "format", &format, e) < 0)
        return -1;
    if (strcmp(format, "band") != 0 && strcmp(format, "dense") != 0) {
        api_error_set(e, 400, "format", "format must be \"band\" or \"dense\"");
        return -1;
    }
    st(j)->dense = format[0] == 'd';
    st(j)->maps = true;
    if (json_get_bool(o, "summary", &st(j)->summary, e) < 0 || json_get_bool(o, "maps", &st(j)->maps, e) < 0)
        return -1;
    if (!st(j)->maps && !st(j)->summary) {
        api_error_set(e, 400, "maps", "maps can be false only with \"summary\": true (the answer would be empty)");
        return -1;
    }
    if (!(j->in = calloc(1, sizeof *j->in))) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    j->n_in = 1;
    return json_get_input(o, "text", j->ctx->limits.max_attention_tokens, false, &j->in[0], e);
}

/* What /v1/attention's summary says of one head (or of their average). */
enum { SUM_ENTROPY, SUM_NORM_ENTROPY, SUM_LOOKBACK, SUM_SELF, SUM_BOS, SUM_FIGURES };
static const char *const SUM_NAMES[SUM_FIGURES] = {"entropy", "normalized_entropy", "lookback", "self", "bos"};

typedef struct head_summary {
    double *per_pos[SUM_FIGURES]; /* [T] each */
    double *by_distance;          /* [min(W, T)]: mean weight at distance d over the rows that reach it */
} head_summary;

/* Figures of head h from the band maps [T, N, W] into s. */
static void summarize_head(const float *band, int T, int N, int W, int h, head_summary *s)
{
    const int D = T < W ? T : W;
    for (int d = 0; d < D; d++)
        s->by_distance[d] = 0.0;
    for (int t = 0; t < T; t++) {
        const float *b = band + ((size_t)t * N + h) * W;
        const int lo = t - W + 1 < 0 ? 0 : t - W + 1, n = t - lo + 1;
        double H = 0.0, look = 0.0;
        for (int i = lo; i <= t; i++) {
            double a = b[i - t + W - 1];
            if (a > 0.0)
                H -= a * log(a);
            look += a * (t - i);
            s->by_distance[t - i] += a;
        }
        s->per_pos[SUM_ENTROPY][t] = H;
        s->per_pos[SUM_NORM_ENTROPY][t] = n > 1 ? H / log((double)n) : 0.0;
        s->per_pos[SUM_LOOKBACK][t] = look;
        s->per_pos[SUM_SELF][t] = b[W - 1];
        s->per_pos[SUM_BOS][t] = lo == 0 ? b[W - 1 - t] : 0.0;
    }
    /* Rows t >= d reach distance d: T - d of them. */
    for (int d = 0; d < D; d++)
        s->by_distance[d] /= (double)(T - d);
}

static void write_head_summary(jw *o, const head_summary *s, int T, int W)
{
    jw_obj(o);
    for (int f = 0; f < SUM_FIGURES; f++) {
        jw_karr(o, SUM_NAMES[f]);
        for (int t = 0; t < T; t++)
            jw_float(o, (float)s->per_pos[f][t]);
        jw_arr_end(o);
    }
    jw_karr(o, "by_distance");
    for (int d = 0; d < (T < W ? T : W); d++)
        jw_float(o, (float)s->by_distance[d]);
    jw_arr_end(o);
    jw_kobj(o, "mean");
    for (int f = 0; f < SUM_FIGURES; f++) {
        double sum = 0.0;
        for (int t = 0; t < T; t++)
            sum += s->per_pos[f][t];
        jw_kfloat(o, SUM_NAMES[f], (float)(sum / T));
    }
    jw_obj_end(o);
    jw_obj_end(o);
}

/* The "summary" object: each head's figures and their mean over heads.
 * Returns -1 on out of memory (nothing written). */
static int write_summary(jw *o, const float *band, int T, int N, int W)
{
    const int D = T < W ? T : W;
    const size_t per = (size_t)SUM_FIGURES * T + (size_t)D;
    double *all = calloc((size_t)(N + 1) * per, sizeof *all);
    head_summary *hs = malloc((size_t)(N + 1) * sizeof *hs);
    if (!all || !hs) {
        free(all);
        free(hs);
        return -1;
    }
    for (int h = 0; h <= N; h++) {
        double *p = all + (size_t)h * per;
        for (int f = 0; f < SUM_FIGURES; f++)
            hs[h].per_pos[f] = p + (size_t)f * T;
        hs[h].by_distance = p + (size_t)SUM_FIGURES * T;
    }
    head_summary *avg = &hs[N]; /* zeroed by calloc */
    for (int h = 0; h < N; h++) {
        summarize_head(band, T, N, W, h, &hs[h]);
        for (size_t k = 0; k < per; k++)
            avg->per_pos[0][k] += hs[h].per_pos[0][k] / N; /* one block: figures then distances */
    }
    jw_kobj(o, "summary");
    jw_karr(o, "heads");
    for (int h = 0; h < N; h++)
        write_head_summary(o, &hs[h], T, W);
    jw_arr_end(o);
    jw_key(o, "average");
    write_head_summary(o, avg, T, W);
    jw_obj_end(o);
    free(all);
    free(hs);
    return 0;
}

static void attention_run(api_job *j, api_worker *w)
{
    (void)w;
    const model_config *c = model_get_config(j->m);
    const job_input *in = &j->in[0];
    const int T = in->n, N = c->heads, W = c->window;
    float *band = malloc((size_t)T * N * W * sizeof *band);
    char err[ATTNLM_ERR_LEN];
    if (!band) {
        job_fail_internal(j, "out of memory");
        return;
    }
    if (model_forward(j->m, in->ids, T, NULL, band, NULL, err, sizeof err) < 0) {
        free(band);
        job_fail_internal(j, err);
        return;
    }
    jw o;
    jw_init(&o, &j->out);
    jw_obj(&o);
    jw_karr(&o, "tokens");
    for (int t = 0; t < T; t++)
        json_token(&o, in->ids[t]);
    jw_arr_end(&o);
    jw_kint(&o, "window", W);
    jw_kint(&o, "heads", N);
    jw_kstr(&o, "attention", model_attention_name(c->attention));
    if (st(j)->summary && write_summary(&o, band, T, N, W) < 0) {
        free(band);
        job_fail_internal(j, "out of memory");
        return;
    }
    if (st(j)->maps) {
        jw_kstr(&o, "format", st(j)->dense ? "dense" : "band");
        jw_karr(&o, "maps");
    }
    for (int h = 0; st(j)->maps && h < N; h++) {
        jw_arr(&o);
        for (int t = 0; t < T; t++) {
            /* Band column col holds key position t - (W - 1) + col. */
            const float *b = band + ((size_t)t * N + h) * W;
            int lo = t - W + 1 < 0 ? 0 : t - W + 1;
            jw_arr(&o);
            if (st(j)->dense)
                for (int i = 0; i < lo; i++)
                    jw_raw(&o, "0", 1);
            for (int i = lo; i <= t; i++)
                jw_float(&o, b[i - t + W - 1]);
            if (st(j)->dense)
                for (int i = t + 1; i < T; i++)
                    jw_raw(&o, "0", 1);
            jw_arr_end(&o);
        }
        jw_arr_end(&o);
    }
    if (st(j)->maps)
        jw_arr_end(&o);
    free(band);
    job_answer_end(j, &o, T - 1);
}

static const char *const ATTENTION_FIELDS[] = {"model", "text", "ids", "format", "summary", "maps", NULL};

const job_ops ATTENTION_JOB = {.fields = ATTENTION_FIELDS, .op = METRICS_OP_ATTENTION,
                               .size = sizeof(attention_state), .parse = attention_parse, .run = attention_run};
