/* job.c -- what every job has, whatever its kind: its making and freeing,
 * its output and how it ends, the forward pass through the prefix cache, and
 * each worker's scratch per model.  A kind's own work is in its file
 * (score.c, attribution.c, generate.c), reached through its job_ops.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "clock.h"
#include "sha256.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

api_job *job_new(const api_ctx *ctx, const job_ops *ops, const api_request *q, const cJSON *o, api_error *e)
{
    api_job *j = calloc(1, sizeof *j);
    void *state = calloc(1, ops->size);
    char *path = strdup(q->path ? q->path : "");
    if (!j || !state || !path) {
        free(j);
        free(state);
        free(path);
        api_error_set(e, 500, NULL, "out of memory");
        return NULL;
    }
    j->ctx = ctx;
    j->ops = ops;
    j->state = state;
    j->path = path;
    snprintf(j->owner, sizeof j->owner, "%s", q->owner ? q->owner : "");
    j->resume_after = -1;
    j->t_made = clock_now_ns();
    /* The stream's tag: its key, path and body under the server's secret, so that
     * a Last-Event-ID resumes only the request it came from, on any replica sharing the secret. */
    const void *parts[6] = {"stream", j->owner, "\n", j->path, "\n", q->body ? q->body : ""};
    const size_t lens[6] = {6, strlen(j->owner), 1, strlen(j->path), 1, q->body ? q->len : 0};
    unsigned char mac[32];
    hmac_sha256(ctx->session_key, sizeof ctx->session_key, parts, lens, 6, mac);
    for (int i = 0; i < 8; i++)
        snprintf(j->tag + 2 * i, 3, "%02x", mac[i]);
    if (!(j->am = json_get_model(ctx, o, e))) {
        api_job_free(j);
        return NULL;
    }
    j->m = j->am->m;
    return j;
}

void api_job_free(api_job *j)
{
    if (!j)
        return;
    if (j->ops->drop)
        j->ops->drop(j);
    free(j->state);
    job_inputs_free(j->in, j->n_in);
    buf_free(&j->out);
    api_model_release(j->am);
    free(j->path);
    free(j);
}

bool api_job_streams(const api_job *j) { return j->stream; }
int api_job_weight(const api_job *j) { return j->ops->weight ? j->ops->weight(j) : 1; }
int api_job_input_tokens(const api_job *j)
{
    int n = 0;
    for (int i = 0; i < j->n_in; i++)
        n += j->in[i].n - 1;
    return n;
}
int api_job_output_tokens(const api_job *j) { return j->output_tokens; }
int api_job_model_slot(const api_job *j) { return j->am->slot; }

int job_forward(api_job *j, api_job *const *owners, int B, const int *const *tokens, const int *lens,
                float *const *logprobs, model_seq *const *seqs, char *err, size_t errlen)
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
                (owners ? owners[b] : j)->cached_tokens += reused[b];
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

void api_job_fail(api_job *j, const api_error *e)
{
    if (j->done)
        return;
    if (j->ops->fail)
        j->ops->fail(j, e);
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

/* Milliseconds between two clock readings, 0 when either is missing. */
static double ms_between(int64_t from, int64_t to) { return from && to > from ? (double)(to - from) / 1e6 : 0.0; }

void json_timings(jw *w, const api_job *j)
{
    const int64_t now = clock_now_ns(), prefilled = j->t_prefilled ? j->t_prefilled : now;
    const int prompt = api_job_input_tokens(j), generated = j->output_tokens;
    const double prompt_ms = ms_between(j->t_started, prefilled), gen_ms = ms_between(j->t_prefilled, now);
    jw_kobj(w, "timings");
    jw_kdouble(w, "queue_ms", round(ms_between(j->t_made, j->t_started) * 1e3) / 1e3);
    jw_kint(w, "prompt_tokens", prompt);
    jw_kint(w, "cached_tokens", j->cached_tokens);
    jw_kdouble(w, "prompt_ms", round(prompt_ms * 1e3) / 1e3);
    jw_kdouble(w, "prompt_tokens_per_second", prompt_ms > 0 ? round(prompt / prompt_ms * 1e6) / 1e3 : 0.0);
    jw_kint(w, "generated_tokens", generated);
    jw_kdouble(w, "generation_ms", round(gen_ms * 1e3) / 1e3);
    jw_kdouble(w, "tokens_per_second", gen_ms > 0 ? round(generated / gen_ms * 1e6) / 1e3 : 0.0);
    jw_obj_end(w);
}

/* The job's end: its time, and a successful one in the GenAI metrics. */
static void job_end(api_job *j)
{
    j->done = true;
    j->t_done = clock_now_ns();
    if (j->failed || !j->ctx->metrics)
        return;
    const double secs = 1e-9 * (double)(j->t_done - j->t_made);
    const double ttft = j->t_first ? 1e-9 * (double)(j->t_first - j->t_made) : -1.0;
    const double tpot = j->t_first && j->output_tokens > 1
                            ? 1e-9 * (double)(j->t_done - j->t_first) / (j->output_tokens - 1)
                            : -1.0;
    metrics_genai(j->ctx->metrics, j->am->slot, j->ops->op, secs, ttft, tpot);
}

void job_stream_done(api_job *j) { job_end(j); }

void job_answer_end(api_job *j, jw *o, int input_tokens)
{
    jw_kobj(o, "usage");
    jw_kint(o, "input_tokens", input_tokens);
    jw_obj_end(o);
    json_timings(o, j);
    jw_obj_end(o);
    job_finish(j);
}

void job_finish(api_job *j)
{
    j->status = 200;
    job_end(j);
}

void job_fail_internal(api_job *j, const char *what)
{
    api_error e;
    api_error_set(&e, 500, NULL, "%s", what);
    job_finish_error(j, &e);
}

void job_finish_error(api_job *j, const api_error *e)
{
    jw w;
    j->failed = true;
    if (j->stream) {
        j->skip_until = 0; /* an error is news to every client, a resumed one too */
        sse_begin(j, &w);
        json_error(&w, e);
        sse_end(j);
        sse_done(j);
    } else {
        j->status = e->status;
        j->out.len = 0;
        j->out.oom = false;
        jw_init(&w, &j->out);
        json_error(&w, e);
    }
    job_end(j);
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
