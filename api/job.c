/* job.c -- a request's model work from validation to answer, each worker's
 * scratch per model, and the step that advances many generations at once:
 * one batched model_step per model among the jobs in hand.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fields each route takes; any other is refused, so that a request
 * meant for another server does not silently do something else here. */
static const char *const SCORE_FIELDS[] = {"model",      "text",          "ids", "texts", "top_k",
                                           "candidates", "attention_gain", NULL};
static const char *const ATTENTION_FIELDS[] = {"model", "text", "ids", "format", "summary", "maps", NULL};
static const char *const ATTRIBUTION_FIELDS[] = {"model", "text", "ids", "target", "range", "baseline", NULL};
#define SAMPLING_FIELDS                                                                                              \
    "model", "prompt", "ids", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stream",              \
        "presence_penalty", "frequency_penalty", "repetition_penalty", "penalty_last_n", "logit_bias"
static const char *const GENERATE_FIELDS[] = {SAMPLING_FIELDS, "logprobs", "attention", NULL};
static const char *const COMPLETIONS_FIELDS[] = {SAMPLING_FIELDS, "n", "logprobs", "echo", "stream_options",
                                                 "user", "best_of", "suffix", NULL};

api_job *api_job_new(const api_ctx *ctx, api_endpoint ep, const char *body, size_t len, uint64_t seed,
                     const char *request_id, api_error *e)
{
    static const char *const *const fields[] = {
        [JOB_SCORE] = SCORE_FIELDS,
        [JOB_ATTENTION] = ATTENTION_FIELDS,
        [JOB_GENERATE] = GENERATE_FIELDS,
        [JOB_COMPLETIONS] = COMPLETIONS_FIELDS,
        [JOB_ATTRIBUTION] = ATTRIBUTION_FIELDS,
    };
    job_kind kind;
    switch (ep) {
    case API_EP_SCORE: kind = JOB_SCORE; break;
    case API_EP_ATTENTION: kind = JOB_ATTENTION; break;
    case API_EP_GENERATE: kind = JOB_GENERATE; break;
    case API_EP_COMPLETIONS: kind = JOB_COMPLETIONS; break;
    case API_EP_ATTRIBUTION: kind = JOB_ATTRIBUTION; break;
    default: api_error_set(e, 500, NULL, "%s is not model work", api_endpoint_path(ep)); return NULL;
    }
    cJSON *o = json_parse_object(body, len, e);
    if (!o)
        return NULL;
    if (json_check_fields(o, fields[kind], api_endpoint_path(ep), e) < 0) {
        cJSON_Delete(o);
        return NULL;
    }
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
    int rc = -1;
    if ((j->am = json_get_model(ctx, o, e))) {
        j->m = j->am->m;
        switch (kind) {
        case JOB_SCORE: rc = score_parse(j, o, e); break;
        case JOB_ATTENTION: rc = attention_parse(j, o, e); break;
        case JOB_ATTRIBUTION: rc = attribution_parse(j, o, e); break;
        default: rc = generate_parse(j, o, seed, e); break;
        }
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
    job_inputs_free(j->in, j->n_in);
    buf_free(&j->out);
    api_model_release(j->am);
    free(j);
}

bool api_job_streams(const api_job *j) { return j->stream; }
int api_job_weight(const api_job *j) { return j->kind == JOB_GENERATE || j->kind == JOB_COMPLETIONS ? j->n_ch : 1; }
int api_job_input_tokens(const api_job *j)
{
    int n = 0;
    for (int i = 0; i < j->n_in; i++)
        n += j->in[i].n - 1;
    return n;
}
int api_job_output_tokens(const api_job *j) { return j->output_tokens; }
int api_job_model_slot(const api_job *j) { return j->am->slot; }

int job_forward(const api_job *j, int B, const int *const *tokens, const int *lens, float *const *logprobs,
                model_seq *const *seqs, char *err, size_t errlen)
{
    int *reused = calloc((size_t)(B > 0 ? B : 1), sizeof *reused);
    if (!reused) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    int rc = model_forward_cached(j->m, j->ctx->prefix, B, tokens, lens, logprobs, seqs, reused, err, errlen);
    if (rc == 0 && j->ctx->prefix && j->ctx->metrics) {
        metrics_model *mm = &j->ctx->metrics->model[j->am->slot];
        for (int b = 0; b < B; b++) {
            if (reused[b] > 0) {
                atomic_fetch_add(&mm->prefix_hits, 1);
                atomic_fetch_add(&mm->prefix_reused, (unsigned long)reused[b]);
            } else if (lens[b] > PREFIX_CHUNK) {
                atomic_fetch_add(&mm->prefix_misses, 1);
            }
        }
    }
    free(reused);
    return rc;
}
const char *api_job_model_name(const api_job *j) { return j->am->name; }
bool api_job_done(const api_job *j) { return j->done; }

void api_job_start(api_job *j, api_worker *w) { api_job_start_many(&j, 1, w); }

void api_job_start_many(api_job **jobs, int n, api_worker *w)
{
    api_job **scores = malloc((size_t)n * sizeof *scores);
    int ns = 0;
    for (int i = 0; i < n; i++) {
        if (scores && jobs[i]->kind == JOB_SCORE)
            scores[ns++] = jobs[i];
        else if (jobs[i]->kind == JOB_ATTENTION)
            attention_run(jobs[i], w);
        else if (jobs[i]->kind == JOB_ATTRIBUTION)
            attribution_run(jobs[i], w);
        else if (jobs[i]->kind == JOB_SCORE)
            score_run_many(&jobs[i], 1, w);
        else
            generate_start(jobs[i], w);
    }
    /* Scoring requests of one model share forward passes, in groups of at
     * most API_FORWARD_TOKENS input tokens (a pass holds every position's
     * activations at once).  Taken out of the list as they are grouped. */
    while (ns > 0) {
        const model *m = scores[0]->m;
        api_job *group[API_MAX_CHOICES * 4];
        int ng = 0, tokens = 0, rest = 0;
        for (int i = 0; i < ns; i++) {
            api_job *s = scores[i];
            int n = api_job_input_tokens(s) + s->n_in;
            bool fits = s->m == m && ng < (int)(sizeof group / sizeof *group) &&
                        (ng == 0 || tokens + n <= API_FORWARD_TOKENS);
            if (fits) {
                group[ng++] = s;
                tokens += n;
            } else {
                scores[rest++] = s;
            }
        }
        metrics_forward_batch(group[0]->ctx->metrics, ng);
        score_run_many(group, ng, w);
        ns = rest;
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

void job_finish(api_job *j)
{
    j->status = 200;
    j->done = true;
}

void job_finish_error(api_job *j, const api_error *e)
{
    jw w;
    if (j->stream) {
        sse_begin(&j->out, &w);
        json_error(&w, e);
        sse_end(&j->out);
        buf_puts(&j->out, "data: [DONE]\n\n");
    } else {
        j->status = e->status;
        j->out.len = 0;
        j->out.oom = false;
        jw_init(&w, &j->out);
        json_error(&w, e);
    }
    j->done = true;
}

/* ---- workers ------------------------------------------------------------------ */

api_worker *api_worker_new(int max_batch)
{
    api_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    /* Room for a full batch, all candidates of a score, or all choices of a completion. */
    int cap = max_batch;
    if (cap < API_MAX_CANDIDATES)
        cap = API_MAX_CANDIDATES;
    if (cap < API_MAX_SEQS)
        cap = API_MAX_SEQS;
    w->cap = cap;
    w->smp = sampler_new(TOK_VOCAB);
    w->lp = malloc(TOK_VOCAB * sizeof *w->lp);
    w->idx = malloc(TOK_VOCAB * sizeof *w->idx);
    w->seqs = malloc((size_t)cap * sizeof *w->seqs);
    w->tokens = malloc((size_t)cap * sizeof *w->tokens);
    w->first = malloc((size_t)cap * sizeof *w->first);
    w->group = malloc((size_t)cap * sizeof *w->group);
    if (!w->smp || !w->lp || !w->idx || !w->seqs || !w->tokens || !w->first || !w->group) {
        api_worker_free(w);
        return NULL;
    }
    return w;
}

static void scratch_free(worker_model *s)
{
    model_batch_free(s->batch);
    free(s->logits);
    free(s->attn);
    api_model_release(s->am);
    *s = (worker_model){0};
}

void api_worker_free(api_worker *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n_models; i++)
        scratch_free(&w->models[i]);
    sampler_free(w->smp);
    free(w->lp);
    free(w->idx);
    free(w->seqs);
    free(w->tokens);
    free(w->first);
    free(w->group);
    free(w);
}

worker_model *worker_scratch(api_worker *w, api_model *am)
{
    for (int i = 0; i < w->n_models; i++)
        if (w->models[i].am == am) {
            w->models[i].used = true;
            return &w->models[i];
        }
    if (w->n_models == (int)(sizeof w->models / sizeof *w->models))
        return NULL;
    const model_config *c = model_get_config(am->m);
    worker_model *s = &w->models[w->n_models];
    s->batch = model_batch_new(am->m, w->cap);
    s->logits = malloc((size_t)w->cap * c->vocab * sizeof *s->logits);
    s->attn = malloc((size_t)w->cap * c->heads * c->window * sizeof *s->attn);
    if (!s->batch || !s->logits || !s->attn) {
        scratch_free(s);
        return NULL;
    }
    atomic_fetch_add(&am->refs, 1);
    s->am = am;
    s->used = true;
    w->n_models++;
    return s;
}

/* Advances the sequences of jobs[n], all of model ws, in one model_step. */
static int step_group(api_worker *w, worker_model *ws, api_job *const *jobs, int n)
{
    const model_config *c = model_get_config(ws->am->m);
    const size_t V = (size_t)c->vocab, NW = (size_t)c->heads * c->window;
    int B = 0, *first = w->first;
    bool attn = false;
    for (int i = 0; i < n; i++) {
        first[i] = B;
        api_job *j = jobs[i];
        if (j->done || B + j->n_ch > w->cap)
            continue;
        B += generate_collect(j, w->seqs + B, w->tokens + B);
        attn |= j->gp.attention;
    }
    if (B == 0)
        return 0;
    char err[ATTNLM_ERR_LEN];
    if (model_step(ws->am->m, ws->batch, w->seqs, w->tokens, B, ws->logits, attn ? ws->attn : NULL, err,
                   sizeof err) < 0) {
        api_error e;
        api_error_set(&e, 500, NULL, "decoding failed: %s", err);
        for (int i = 0; i < n; i++)
            api_job_fail(jobs[i], &e);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        bool stepped = i + 1 < n ? first[i + 1] > first[i] : B > first[i];
        if (stepped)
            generate_advance(jobs[i], w, ws->logits + (size_t)first[i] * V,
                             attn ? ws->attn + (size_t)first[i] * NW : NULL);
    }
    return B;
}

void api_worker_tidy(api_worker *w)
{
    int kept = 0;
    for (int i = 0; i < w->n_models; i++) {
        worker_model *s = &w->models[i];
        if (s->used || !atomic_load(&s->am->retired)) {
            s->used = false;
            w->models[kept++] = *s;
        } else {
            scratch_free(s);
        }
    }
    w->n_models = kept;
}

int api_step(api_worker *w, api_job *const *jobs, int n)
{
    int total = 0;
    bool *taken = calloc((size_t)n + 1, sizeof *taken);
    if (!taken)
        return 0;
    for (int i = 0; i < n; i++) {
        if (taken[i] || jobs[i]->done)
            continue;
        /* Every unfinished job of this model, in order, up to the worker's cap. */
        api_model *am = jobs[i]->am;
        int ng = 0, rows = 0;
        for (int k = i; k < n && ng < w->cap; k++) {
            if (taken[k] || jobs[k]->done || jobs[k]->am != am || rows + jobs[k]->n_ch > w->cap)
                continue;
            taken[k] = true;
            w->group[ng++] = jobs[k];
            rows += jobs[k]->n_ch;
        }
        worker_model *ws = worker_scratch(w, am);
        if (!ws) {
            api_error e;
            api_error_set(&e, 500, NULL, "out of memory for a batch of %s", am->name);
            for (int k = 0; k < ng; k++)
                api_job_fail(w->group[k], &e);
            continue;
        }
        total += step_group(w, ws, w->group, ng);
    }
    free(taken);
    return total;
}
