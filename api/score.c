/* score.c -- POST /v1/score and POST /v1/attention: one full forward pass
 * over the input, answered whole.
 *
 * Candidates are scored by prefilling the input once and continuing a copy
 * of its state per candidate, all candidates stepped together as one batch.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int score_parse(api_job *j, const cJSON *o, api_error *e)
{
    const api_ctx *ctx = j->ctx;
    const model_config *c = model_get_config(ctx->m);
    long long top_k = 5;
    if (json_get_int(o, "top_k", 0, c->vocab, &top_k, e) < 0)
        return -1;
    j->top_k = (int)top_k;
    if (json_get_input(ctx, o, "text", ctx->limits.max_input_tokens, false, &j->ids, &j->n_ids, e) < 0)
        return -1;
    const cJSON *cands = cJSON_GetObjectItemCaseSensitive(o, "candidates");
    if (!cands || cJSON_IsNull(cands))
        return 0;
    if (!cJSON_IsArray(cands)) {
        api_error_set(e, 400, "candidates", "candidates must be an array of strings");
        return -1;
    }
    if (cJSON_GetArraySize(cands) > API_MAX_CANDIDATES) {
        api_error_set(e, 400, "candidates", "at most %d candidates", API_MAX_CANDIDATES);
        return -1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cands)
    {
        if (!cJSON_IsString(it) || it->valuestring[0] == '\0') {
            api_error_set(e, 400, "candidates", "candidates[%d] must be a non-empty string", j->n_cands);
            return -1;
        }
        size_t len = strlen(it->valuestring);
        if ((size_t)j->n_ids - 1 + len > (size_t)ctx->limits.max_input_tokens) {
            api_error_set(e, 413, "candidates", "input and candidates[%d] together exceed %d tokens", j->n_cands,
                          ctx->limits.max_input_tokens);
            return -1;
        }
        if (!(j->cands[j->n_cands++] = strdup(it->valuestring))) {
            api_error_set(e, 500, NULL, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* {"id", "text", "bytes", "logprob"} plus "top" from a row of log-probabilities. */
static cJSON *scored_token(const api_ctx *ctx, int id, const float *row, int top_k, int *idx)
{
    const int V = model_get_config(ctx->m)->vocab;
    cJSON *t = json_token(ctx, id);
    cJSON_AddItemToObject(t, "logprob", json_float(row[id]));
    if (top_k > 0) {
        cJSON *top = cJSON_AddArrayToObject(t, "top");
        api_topk(row, V, top_k, idx);
        for (int k = 0; k < top_k; k++) {
            cJSON *a = json_token(ctx, idx[k]);
            cJSON_AddItemToObject(a, "logprob", json_float(row[idx[k]]));
            cJSON_AddItemToArray(top, a);
        }
    }
    return t;
}

/* Log-probability of each candidate after the input whose state is in seq
 * and whose next-token row is last; fills out (cJSON array). */
static int score_candidates(api_job *j, api_worker *w, const model_seq *seq, const float *last, cJSON *out)
{
    const api_ctx *ctx = j->ctx;
    const int V = model_get_config(ctx->m)->vocab, nc = j->n_cands;
    model_seq *s[API_MAX_CANDIDATES] = {0};
    int pos[API_MAX_CANDIDATES], tokens[API_MAX_CANDIDATES], rows[API_MAX_CANDIDATES];
    double sum[API_MAX_CANDIDATES];
    cJSON *toks[API_MAX_CANDIDATES];
    int rc = -1;
    for (int k = 0; k < nc; k++) {
        if (!(s[k] = model_seq_new(ctx->m)))
            goto done;
        model_seq_copy(s[k], seq);
        toks[k] = cJSON_CreateArray();
        const unsigned char first = (unsigned char)j->cands[k][0];
        sum[k] = last[first];
        cJSON *t = json_token(ctx, first);
        cJSON_AddItemToObject(t, "logprob", json_float(last[first]));
        cJSON_AddItemToArray(toks[k], t);
        pos[k] = 1;
    }
    /* Each step feeds every unfinished candidate its previous byte. */
    for (;;) {
        int B = 0;
        model_seq *batch[API_MAX_CANDIDATES];
        for (int k = 0; k < nc; k++)
            if (j->cands[k][pos[k]] != '\0') {
                batch[B] = s[k];
                tokens[B] = (unsigned char)j->cands[k][pos[k] - 1];
                rows[B++] = k;
            }
        if (B == 0)
            break;
        char err[ATTNLM_ERR_LEN];
        if (model_step(ctx->m, w->batch, batch, tokens, B, w->logits, NULL, err, sizeof err) < 0)
            goto done;
        for (int b = 0; b < B; b++) {
            int k = rows[b];
            float *row = w->logits + (size_t)b * V;
            model_log_softmax(row, row, V);
            int id = (unsigned char)j->cands[k][pos[k]];
            sum[k] += row[id];
            cJSON *t = json_token(ctx, id);
            cJSON_AddItemToObject(t, "logprob", json_float(row[id]));
            cJSON_AddItemToArray(toks[k], t);
            pos[k]++;
        }
    }
    for (int k = 0; k < nc; k++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToObject(c, "text", json_bytes_string((const unsigned char *)j->cands[k], strlen(j->cands[k])));
        cJSON_AddItemToObject(c, "logprob", json_float((float)sum[k]));
        cJSON_AddItemToObject(c, "tokens", toks[k]);
        toks[k] = NULL;
        cJSON_AddItemToArray(out, c);
    }
    rc = 0;
done:
    for (int k = 0; k < nc; k++) {
        model_seq_free(s[k]);
        if (rc < 0 && s[k])
            cJSON_Delete(toks[k]);
    }
    return rc;
}

static void fail_internal(api_job *j, const char *what)
{
    api_error e;
    api_error_set(&e, 500, NULL, "%s", what);
    job_finish_error(j, &e);
}

/* The answer of score job j from its forward pass: lp [T, V] and, with
 * candidates, the state after the input in seq.  Frees lp and seq. */
static void score_answer(api_job *j, api_worker *w, float *lp, model_seq *seq)
{
    const api_ctx *ctx = j->ctx;
    const int V = model_get_config(ctx->m)->vocab, T = j->n_ids;
    cJSON *root = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(root, "tokens");
    double sum = 0.0;
    for (int t = 1; t < T; t++) {
        const float *row = lp + (size_t)(t - 1) * V;
        sum += row[j->ids[t]];
        cJSON_AddItemToArray(toks, scored_token(ctx, j->ids[t], row, j->top_k, w->idx));
    }
    cJSON *next = cJSON_AddArrayToObject(root, "next");
    const float *last = lp + (size_t)(T - 1) * V;
    api_topk(last, V, j->top_k, w->idx);
    for (int k = 0; k < j->top_k; k++) {
        cJSON *a = json_token(ctx, w->idx[k]);
        cJSON_AddItemToObject(a, "logprob", json_float(last[w->idx[k]]));
        cJSON_AddItemToArray(next, a);
    }
    if (j->n_cands) {
        cJSON *cands = cJSON_AddArrayToObject(root, "candidates");
        if (score_candidates(j, w, seq, last, cands) < 0) {
            cJSON_Delete(root);
            fail_internal(j, "scoring the candidates failed");
            goto done;
        }
    }
    cJSON_AddItemToObject(root, "logprob", json_float((float)sum));
    cJSON_AddItemToObject(root, "perplexity", json_float((float)exp(-sum / (T - 1))));
    cJSON *usage = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(usage, "input_tokens", T - 1);
    job_finish(j, root);
done:
    model_seq_free(seq);
    free(lp);
}

void score_run_many(api_job **jobs, int n, api_worker *w)
{
    const model *m = w->m;
    const int V = model_get_config(m)->vocab;
    const int **tokens = calloc((size_t)n, sizeof *tokens);
    int *lens = calloc((size_t)n, sizeof *lens);
    float **lp = calloc((size_t)n, sizeof *lp);
    model_seq **seqs = calloc((size_t)n, sizeof *seqs);
    bool ok = tokens && lens && lp && seqs;
    for (int i = 0; ok && i < n; i++) {
        tokens[i] = jobs[i]->ids;
        lens[i] = jobs[i]->n_ids;
        lp[i] = malloc((size_t)lens[i] * V * sizeof **lp);
        seqs[i] = jobs[i]->n_cands ? model_seq_new(m) : NULL;
        ok = lp[i] && (!jobs[i]->n_cands || seqs[i]);
    }
    char err[ATTNLM_ERR_LEN] = "out of memory";
    if (ok && model_forward_batch(m, n, tokens, lens, lp, NULL, seqs, err, sizeof err) == 0) {
        for (int i = 0; i < n; i++)
            score_answer(jobs[i], w, lp[i], seqs[i]);
    } else {
        for (int i = 0; i < n; i++) {
            fail_internal(jobs[i], err);
            if (lp)
                free(lp[i]);
            if (seqs)
                model_seq_free(seqs[i]);
        }
    }
    free(tokens);
    free(lens);
    free(lp);
    free(seqs);
}

void score_run(api_job *j, api_worker *w) { score_run_many(&j, 1, w); }

int attention_parse(api_job *j, const cJSON *o, api_error *e)
{
    const char *format = "band";
    if (json_get_string(o, "format", &format, e) < 0)
        return -1;
    if (strcmp(format, "band") != 0 && strcmp(format, "dense") != 0) {
        api_error_set(e, 400, "format", "format must be \"band\" or \"dense\"");
        return -1;
    }
    j->dense = format[0] == 'd';
    const api_ctx *ctx = j->ctx;
    return json_get_input(ctx, o, "text", ctx->limits.max_attention_tokens, false, &j->ids, &j->n_ids, e);
}

void attention_run(api_job *j, api_worker *w)
{
    (void)w;
    const api_ctx *ctx = j->ctx;
    const model_config *c = model_get_config(ctx->m);
    const int T = j->n_ids, N = c->heads, W = c->window;
    float *band = malloc((size_t)T * N * W * sizeof *band);
    char err[ATTNLM_ERR_LEN];
    if (!band) {
        fail_internal(j, "out of memory");
        return;
    }
    if (model_forward(ctx->m, j->ids, T, NULL, band, NULL, err, sizeof err) < 0) {
        free(band);
        fail_internal(j, err);
        return;
    }
    cJSON *root = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(root, "tokens");
    for (int t = 0; t < T; t++)
        cJSON_AddItemToArray(toks, json_token(ctx, j->ids[t]));
    cJSON_AddNumberToObject(root, "window", W);
    cJSON_AddNumberToObject(root, "heads", N);
    cJSON_AddStringToObject(root, "attention", model_attention_name(c->attention));
    cJSON_AddStringToObject(root, "format", j->dense ? "dense" : "band");
    cJSON *maps = cJSON_AddArrayToObject(root, "maps");
    for (int h = 0; h < N; h++) {
        cJSON *rows = cJSON_CreateArray();
        for (int t = 0; t < T; t++) {
            /* Band column col holds key position t - (W - 1) + col. */
            const float *b = band + ((size_t)t * N + h) * W;
            int lo = t - W + 1 < 0 ? 0 : t - W + 1;
            cJSON *row = cJSON_CreateArray();
            if (j->dense)
                for (int i = 0; i < lo; i++)
                    cJSON_AddItemToArray(row, cJSON_CreateRaw("0"));
            for (int i = lo; i <= t; i++)
                cJSON_AddItemToArray(row, json_float(b[i - t + W - 1]));
            if (j->dense)
                for (int i = t + 1; i < T; i++)
                    cJSON_AddItemToArray(row, cJSON_CreateRaw("0"));
            cJSON_AddItemToArray(rows, row);
        }
        cJSON_AddItemToArray(maps, rows);
    }
    cJSON *usage = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(usage, "input_tokens", T - 1);
    free(band);
    job_finish(j, root);
}
