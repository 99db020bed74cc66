/* job.c -- a request's model work from validation to answer, and the
 * worker-side step that advances many generations as one batch.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

api_job *api_job_new(const api_ctx *ctx, api_endpoint ep, const char *body, size_t len, uint64_t seed,
                     const char *request_id, api_error *e)
{
    job_kind kind;
    switch (ep) {
    case API_EP_SCORE: kind = JOB_SCORE; break;
    case API_EP_ATTENTION: kind = JOB_ATTENTION; break;
    case API_EP_GENERATE: kind = JOB_GENERATE; break;
    case API_EP_COMPLETIONS: kind = JOB_COMPLETIONS; break;
    default: api_error_set(e, 500, NULL, "%s is not model work", api_endpoint_path(ep)); return NULL;
    }
    cJSON *o = json_parse_object(body, len, e);
    if (!o)
        return NULL;
    api_job *j = calloc(1, sizeof *j);
    if (!j) {
        cJSON_Delete(o);
        api_error_set(e, 500, NULL, "out of memory");
        return NULL;
    }
    j->ctx = ctx;
    j->kind = kind;
    j->gp.n = 1;
    snprintf(j->id, sizeof j->id, "cmpl-%s", request_id ? request_id : "0");
    int rc;
    switch (kind) {
    case JOB_SCORE: rc = score_parse(j, o, e); break;
    case JOB_ATTENTION: rc = attention_parse(j, o, e); break;
    default: rc = generate_parse(j, o, seed, e); break;
    }
    cJSON_Delete(o);
    if (rc < 0) {
        api_job_free(j);
        return NULL;
    }
    return j;
}

void api_job_free(api_job *j)
{
    if (!j)
        return;
    generate_free(j);
    for (int i = 0; i < j->n_cands; i++)
        free(j->cands[i]);
    free(j->ids);
    buf_free(&j->out);
    free(j);
}

bool api_job_streams(const api_job *j) { return j->stream; }
int api_job_weight(const api_job *j) { return j->kind == JOB_GENERATE || j->kind == JOB_COMPLETIONS ? j->gp.n : 1; }
int api_job_input_tokens(const api_job *j) { return j->n_ids > 0 ? j->n_ids - 1 : 0; }
int api_job_output_tokens(const api_job *j) { return j->output_tokens; }
bool api_job_done(const api_job *j) { return j->done; }

void api_job_start(api_job *j, api_worker *w)
{
    switch (j->kind) {
    case JOB_SCORE: score_run(j, w); break;
    case JOB_ATTENTION: attention_run(j, w); break;
    default: generate_start(j, w); break;
    }
}

void api_job_start_many(api_job **jobs, int n, api_worker *w)
{
    api_job **scores = malloc((size_t)n * sizeof *scores);
    int ns = 0;
    for (int i = 0; i < n; i++) {
        if (scores && jobs[i]->kind == JOB_SCORE)
            scores[ns++] = jobs[i];
        else
            api_job_start(jobs[i], w);
    }
    /* Groups of at most API_FORWARD_TOKENS input tokens: a pass holds every
     * position's activations at once, and 32 long inputs would need a gigabyte. */
    for (int first = 0; first < ns;) {
        int end = first, tokens = 0;
        while (end < ns && (end == first || tokens + scores[end]->n_ids <= API_FORWARD_TOKENS))
            tokens += scores[end++]->n_ids;
        metrics_forward_batch(scores[first]->ctx->metrics, end - first);
        score_run_many(scores + first, end - first, w);
        first = end;
    }
    free(scores);
}

void api_job_fail(api_job *j, const api_error *e)
{
    if (j->done)
        return;
    if (j->kind == JOB_GENERATE || j->kind == JOB_COMPLETIONS)
        generate_fail(j, e);
    else
        job_finish_error(j, e);
}

size_t api_job_take_output(api_job *j, char **data, int *status)
{
    *status = j->status ? j->status : 200;
    if (j->out.oom) {
        /* Nothing sensible can be said in a half-written answer. */
        buf_free(&j->out);
        j->done = true;
        *status = 500;
        *data = strdup(j->stream ? "data: {\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                                   "\"param\":null,\"code\":500}}\n\ndata: [DONE]\n\n"
                                 : "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                   "\"code\":500}}");
        return *data ? strlen(*data) : 0;
    }
    if (!j->stream && !j->done) {
        *data = NULL;
        return 0;
    }
    size_t n = j->out.len;
    *data = n ? buf_take(&j->out, NULL) : NULL;
    return n;
}

void job_finish(api_job *j, cJSON *root)
{
    json_print(&j->out, root);
    j->status = 200;
    j->done = true;
}

void job_finish_error(api_job *j, const api_error *e)
{
    if (j->stream) {
        json_event(&j->out, json_error(e));
        buf_puts(&j->out, "data: [DONE]\n\n");
    } else {
        j->status = e->status;
        j->out.len = 0;
        json_print(&j->out, json_error(e));
    }
    j->done = true;
}

api_worker *api_worker_new(const model *m, int max_batch)
{
    const model_config *c = model_get_config(m);
    api_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    /* Room for a full batch, all candidates of a score, or all choices of a completion. */
    int cap = max_batch;
    if (cap < API_MAX_CANDIDATES)
        cap = API_MAX_CANDIDATES;
    if (cap < API_MAX_CHOICES)
        cap = API_MAX_CHOICES;
    w->m = m;
    w->cap = cap;
    w->batch = model_batch_new(m, cap);
    w->smp = sampler_new(c->vocab);
    w->logits = malloc((size_t)cap * c->vocab * sizeof *w->logits);
    w->attn = malloc((size_t)cap * c->heads * c->window * sizeof *w->attn);
    w->lp = malloc((size_t)c->vocab * sizeof *w->lp);
    w->idx = malloc((size_t)c->vocab * sizeof *w->idx);
    w->seqs = malloc((size_t)cap * sizeof *w->seqs);
    w->tokens = malloc((size_t)cap * sizeof *w->tokens);
    w->first = malloc((size_t)cap * sizeof *w->first);
    if (!w->first || !w->batch || !w->smp || !w->logits || !w->attn || !w->lp || !w->idx || !w->seqs || !w->tokens) {
        api_worker_free(w);
        return NULL;
    }
    return w;
}

void api_worker_free(api_worker *w)
{
    if (!w)
        return;
    model_batch_free(w->batch);
    sampler_free(w->smp);
    free(w->logits);
    free(w->attn);
    free(w->lp);
    free(w->idx);
    free(w->seqs);
    free(w->tokens);
    free(w->first);
    free(w);
}

int api_step(api_worker *w, api_job *const *jobs, int n)
{
    const model_config *c = model_get_config(w->m);
    const size_t V = (size_t)c->vocab, NW = (size_t)c->heads * c->window;
    int B = 0, *first = w->first;
    bool attn = false;
    if (n > w->cap)
        n = w->cap; /* each job holds at least one row */
    for (int i = 0; i < n; i++) {
        first[i] = B;
        api_job *j = jobs[i];
        if (j->done || B + j->gp.n > w->cap)
            continue;
        B += generate_collect(j, w->seqs + B, w->tokens + B);
        attn |= j->gp.attention;
    }
    if (B == 0)
        return 0;
    char err[ATTNLM_ERR_LEN];
    if (model_step(w->m, w->batch, w->seqs, w->tokens, B, w->logits, attn ? w->attn : NULL, err, sizeof err) < 0) {
        api_error e;
        api_error_set(&e, 500, NULL, "decoding failed: %s", err);
        for (int i = 0; i < n; i++)
            api_job_fail(jobs[i], &e);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        api_job *j = jobs[i];
        bool stepped = i + 1 < n ? first[i + 1] > first[i] : B > first[i];
        if (!stepped)
            continue;
        generate_advance(j, w, w->logits + (size_t)first[i] * V, attn ? w->attn + (size_t)first[i] * NW : NULL);
    }
    return B;
}
