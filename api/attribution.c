/* attribution.c -- POST /v1/attribution: occlusion attribution.  How much
 * the log-probability of one token (the target) changes when one earlier
 * position is replaced by a neutral byte, for each position in a range
 * before it.
 *
 * Every variant is the input up to the token before the target with one
 * position replaced; the variants and the unchanged input run through
 * batched forward passes (model_forward_batch), each position's recurrent
 * product covering all of them.  A position that already holds the baseline
 * byte would give the unchanged input: it is not run and its change is 0.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define BASELINE_DEFAULT 0x20 /* a space: the commonest byte of text, and no word */

static attribution_state *st(const api_job *j) { return j->state; }

static int attribution_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    (void)seed, (void)request_id;
    const model_config *c = model_get_config(j->m);
    const int max = j->ctx->limits.max_attention_tokens;
    long long target = 0, range = c->window, baseline = BASELINE_DEFAULT;
    if (json_get_int(o, "range", 1, max, &range, e) < 0 || json_get_int(o, "baseline", 0, 255, &baseline, e) < 0)
        return -1;
    if (!(j->in = calloc(1, sizeof *j->in))) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    j->n_in = 1;
    if (json_get_input(o, "text", max, false, &j->in[0], e) < 0)
        return -1;
    /* Positions count BOS as 0: the input's tokens are at 1 .. n - 1. */
    const int n = j->in[0].n;
    int has_target = json_get_int(o, "target", 1, n - 1, &target, e);
    if (has_target < 0)
        return -1;
    st(j)->target = has_target ? (int)target : n - 1;
    st(j)->range = (int)range;
    st(j)->baseline = (int)baseline;
    return 0;
}

static void attribution_run(api_job *j, api_worker *w)
{
    (void)w;
    const int *ids = j->in[0].ids, V = model_get_config(j->m)->vocab, P = st(j)->target; /* variants are P tokens long */
    const int first = P - st(j)->range < 1 ? 1 : P - st(j)->range, goal = ids[P];
    /* Variant 0 is the input as it is; variant k > 0 occludes pos[k]. */
    int n_var = 1, per = 0;
    int *pos = malloc((size_t)(P + 1) * sizeof *pos);
    float *lp_var = malloc((size_t)(P + 1) * sizeof *lp_var);
    int *toks = NULL;
    const int **tokens = NULL;
    int *lens = NULL;
    float **lp = NULL;
    char err[ATTNLM_ERR_LEN] = "out of memory";
    if (!pos || !lp_var)
        goto fail;
    pos[0] = 0;
    for (int p = first; p < P; p++)
        if (ids[p] != st(j)->baseline)
            pos[n_var++] = p;
    if (!(toks = malloc((size_t)n_var * P * sizeof *toks)))
        goto fail;
    for (int k = 0; k < n_var; k++) {
        memcpy(toks + (size_t)k * P, ids, (size_t)P * sizeof *toks);
        if (k > 0)
            toks[(size_t)k * P + pos[k]] = st(j)->baseline;
    }
    /* Passes of at most API_FORWARD_TOKENS tokens (one variant at the least):
     * a pass holds every position's activations at once. */
    per = API_FORWARD_TOKENS / P < 1 ? 1 : API_FORWARD_TOKENS / P;
    if (per > n_var)
        per = n_var;
    tokens = malloc((size_t)per * sizeof *tokens);
    lens = malloc((size_t)per * sizeof *lens);
    lp = calloc((size_t)per, sizeof *lp);
    if (!tokens || !lens || !lp)
        goto fail;
    for (int b = 0; b < per; b++)
        if (!(lp[b] = malloc((size_t)P * V * sizeof **lp)))
            goto fail;
    for (int k0 = 0; k0 < n_var; k0 += per) {
        int B = n_var - k0 < per ? n_var - k0 : per;
        for (int b = 0; b < B; b++) {
            tokens[b] = toks + (size_t)(k0 + b) * P;
            lens[b] = P;
        }
        if (model_forward_batch(j->m, B, tokens, lens, lp, NULL, NULL, err, sizeof err) < 0)
            goto fail;
        for (int b = 0; b < B; b++)
            lp_var[k0 + b] = lp[b][(size_t)(P - 1) * V + goal];
    }

    const float orig = lp_var[0];
    jw o;
    jw_init(&o, &j->out);
    jw_obj(&o);
    jw_key(&o, "target");
    json_token_open(&o, goal);
    jw_kint(&o, "position", P);
    jw_kfloat(&o, "logprob", orig);
    jw_obj_end(&o);
    jw_key(&o, "baseline");
    json_token(&o, st(j)->baseline);
    jw_kint(&o, "range", st(j)->range);
    jw_karr(&o, "positions");
    for (int p = first, k = 1; p < P; p++) {
        bool run = k < n_var && pos[k] == p;
        float v = run ? lp_var[k++] : orig;
        json_token_open(&o, ids[p]);
        jw_kint(&o, "position", p);
        jw_kfloat(&o, "logprob", v);
        jw_kfloat(&o, "delta", run ? v - orig : 0.0f);
        jw_obj_end(&o);
    }
    jw_arr_end(&o);
    jw_kobj(&o, "usage");
    jw_kint(&o, "input_tokens", j->in[0].n - 1);
    jw_kint(&o, "variants", n_var);
    jw_kint(&o, "forward_tokens", (long long)n_var * P);
    jw_obj_end(&o);
    json_timings(&o, j);
    jw_obj_end(&o);
    job_finish(j);
    goto done;
fail:
    job_fail_internal(j, err);
done:
    for (int b = 0; lp && b < per; b++)
        free(lp[b]);
    free(lp);
    free(lens);
    free(tokens);
    free(toks);
    free(lp_var);
    free(pos);
}

static const char *const ATTRIBUTION_FIELDS[] = {"model", "text", "ids", "target", "range", "baseline", NULL};

const job_ops ATTRIBUTION_JOB = {.fields = ATTRIBUTION_FIELDS, .op = METRICS_OP_ATTRIBUTION,
                                 .size = sizeof(attribution_state), .parse = attribution_parse,
                                 .run = attribution_run};
