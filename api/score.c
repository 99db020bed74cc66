/* score.c -- POST /v1/score: one full forward pass over the input, answered
 * whole.
 *
 * A score request may give an array of inputs ("texts", or "ids" as a list of
 * id lists); all of them go through one forward pass, with the inputs of any
 * other score requests the worker took, and each is answered as a single
 * request for it would be, in order, under "results".
 *
 * Candidates are scored by prefilling the input once and continuing a copy
 * of its state per candidate, all candidates stepped together as one batch.
 * Answers are written as they are read off the pass's log-probabilities, so
 * an answer costs its own bytes and no more.
 *
 * "attention_gain" adds to each token its log-probability minus the one the
 * model gives with the attention's contribution removed (each position
 * attending to itself alone), from a second pass over that input.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static score_state *sc(const api_job *j) { return j->state; }

/* The input or inputs of a score request: "text" or "ids" (one), "texts" or
 * "ids" as a list of id lists (several). */
static int score_inputs(api_job *j, const cJSON *o, api_error *e)
{
    const api_limits *lim = &j->ctx->limits;
    const cJSON *texts = json_field(o, "texts"), *ids = json_field(o, "ids");
    bool id_lists = ids && cJSON_IsArray(ids) && ids->child && cJSON_IsArray(ids->child);
    if (texts && (ids || json_field(o, "text"))) {
        api_error_set(e, 400, "texts", "give one of text, texts and ids");
        return -1;
    }
    if (id_lists && json_field(o, "text")) {
        api_error_set(e, 400, "ids", "give either text or ids, not both");
        return -1;
    }
    if (!texts && !id_lists) {
        j->in = calloc(1, sizeof *j->in);
        if (!j->in) {
            api_error_set(e, 500, NULL, "out of memory");
            return -1;
        }
        j->n_in = 1;
        return json_get_input(o, "text", lim->max_input_tokens, false, &j->in[0], e);
    }
    if (texts && !cJSON_IsArray(texts)) {
        api_error_set(e, 400, "texts", "texts must be an array of strings");
        return -1;
    }
    sc(j)->many = true;
    return json_read_inputs(texts ? texts : ids, texts ? "texts" : "ids", lim->max_inputs, lim->max_input_tokens,
                            false, texts != NULL, texts == NULL, &j->in, &j->n_in, e);
}

static int score_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    (void)seed, (void)request_id;
    const api_limits *lim = &j->ctx->limits;
    const model_config *c = model_get_config(j->m);
    long long top_k = 5;
    if (json_get_int(o, "top_k", 0, c->vocab, &top_k, e) < 0)
        return -1;
    sc(j)->top_k = (int)top_k;
    if (json_get_bool(o, "attention_gain", &sc(j)->gain, e) < 0 || score_inputs(j, o, e) < 0)
        return -1;
    int longest = 0;
    for (int i = 0; i < j->n_in; i++)
        longest = j->in[i].n > longest ? j->in[i].n : longest;
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
            api_error_set(e, 400, "candidates", "candidates[%d] must be a non-empty string", sc(j)->n_cands);
            return -1;
        }
        size_t len = strlen(it->valuestring);
        if ((size_t)longest - 1 + len > (size_t)lim->max_input_tokens) {
            api_error_set(e, 413, "candidates", "%s and candidates[%d] together exceed %d tokens",
                          sc(j)->many ? "an input" : "input", sc(j)->n_cands, lim->max_input_tokens);
            return -1;
        }
        if (!(sc(j)->cands[sc(j)->n_cands++] = strdup(it->valuestring))) {
            api_error_set(e, 500, NULL, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* The k most likely tokens of a row of log-probabilities, as an array. */
static void top_tokens(jw *w, const float *row, int V, int k, int *idx)
{
    api_topk(row, V, k, idx);
    for (int a = 0; a < k; a++)
        json_scored(w, idx[a], row[idx[a]]);
}

double score_write_tokens(jw *o, const int *ids, int T, const float *lp, int V, int top_k, const float *own, int *idx)
{
    jw_karr(o, "tokens");
    double sum = 0.0;
    for (int t = 1; t < T; t++) {
        const float *row = lp + (size_t)(t - 1) * V;
        sum += row[ids[t]];
        json_token_open(o, ids[t]);
        jw_kfloat(o, "logprob", row[ids[t]]);
        if (own)
            jw_kfloat(o, "gain", row[ids[t]] - own[t - 1]);
        if (top_k > 0) {
            jw_karr(o, "top");
            top_tokens(o, row, V, top_k, idx);
            jw_arr_end(o);
        }
        jw_obj_end(o);
    }
    jw_arr_end(o);
    jw_karr(o, "next");
    top_tokens(o, lp + (size_t)(T - 1) * V, V, top_k, idx);
    jw_arr_end(o);
    return sum;
}

/* Log-probability of each byte of each candidate after the input whose state
 * is in seq and whose next-token row is last: lps[k][i] for byte i of
 * candidate k.  Returns 0, or -1 on failure. */
static int score_candidates(api_job *j, worker_model *ws, const model_seq *seq, const float *last, float **lps)
{
    const int V = model_get_config(j->m)->vocab, nc = sc(j)->n_cands;
    model_seq *s[API_MAX_CANDIDATES] = {0};
    int pos[API_MAX_CANDIDATES], tokens[API_MAX_CANDIDATES], rows[API_MAX_CANDIDATES];
    int rc = -1;
    for (int k = 0; k < nc; k++) {
        if (!(s[k] = model_seq_new(j->m)))
            goto done;
        model_seq_copy(s[k], seq);
        lps[k][0] = last[(unsigned char)sc(j)->cands[k][0]];
        pos[k] = 1;
    }
    /* Each step feeds every unfinished candidate its previous byte. */
    for (;;) {
        int B = 0;
        model_seq *batch[API_MAX_CANDIDATES];
        for (int k = 0; k < nc; k++)
            if (sc(j)->cands[k][pos[k]] != '\0') {
                batch[B] = s[k];
                tokens[B] = (unsigned char)sc(j)->cands[k][pos[k] - 1];
                rows[B++] = k;
            }
        if (B == 0)
            break;
        char err[ATTNLM_ERR_LEN];
        if (model_step(j->m, ws->batch, batch, tokens, B, ws->logits, NULL, err, sizeof err) < 0)
            goto done;
        for (int b = 0; b < B; b++) {
            int k = rows[b];
            float *row = ws->logits + (size_t)b * V;
            model_log_softmax(row, row, V);
            lps[k][pos[k]] = row[(unsigned char)sc(j)->cands[k][pos[k]]];
            pos[k]++;
        }
    }
    rc = 0;
done:
    for (int k = 0; k < nc; k++)
        model_seq_free(s[k]);
    return rc;
}

/* The candidates part of a score answer, or -1 when they could not be scored. */
static int write_candidates(api_job *j, api_worker *w, jw *jo, const model_seq *seq, const float *last)
{
    worker_model *ws = worker_scratch(w, j->am);
    float *lps[API_MAX_CANDIDATES] = {0};
    int rc = -1;
    if (!ws)
        return -1;
    for (int k = 0; k < sc(j)->n_cands; k++)
        if (!(lps[k] = malloc(strlen(sc(j)->cands[k]) * sizeof *lps[k])))
            goto done;
    if (score_candidates(j, ws, seq, last, lps) < 0)
        goto done;
    jw_karr(jo, "candidates");
    for (int k = 0; k < sc(j)->n_cands; k++) {
        const unsigned char *c = (const unsigned char *)sc(j)->cands[k];
        size_t len = strlen(sc(j)->cands[k]);
        double sum = 0.0;
        for (size_t i = 0; i < len; i++)
            sum += lps[k][i];
        jw_obj(jo);
        jw_key(jo, "text");
        jw_bytes(jo, c, len);
        jw_kfloat(jo, "logprob", (float)sum);
        jw_karr(jo, "tokens");
        for (size_t i = 0; i < len; i++)
            json_scored(jo, c[i], lps[k][i]);
        jw_arr_end(jo);
        jw_obj_end(jo);
    }
    jw_arr_end(jo);
    rc = 0;
done:
    for (int k = 0; k < sc(j)->n_cands; k++)
        free(lps[k]);
    return rc;
}

/* The log-probability of each token of an input with the attention's
 * contribution removed: own [T - 1], for tokens 1 .. T-1.  Returns 0, or -1. */
static int ablated_logprobs(const api_job *j, const job_input *in, float *own, char *err, size_t errlen)
{
    const int V = model_get_config(j->m)->vocab, T = in->n;
    /* The input's own log-probabilities are the scoring pass's: only the ablated ones are computed here. */
    float *lp = malloc((size_t)T * V * sizeof *lp);
    if (!lp) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    int rc = model_forward_ablated(j->m, in->ids, T, NULL, lp, err, errlen);
    for (int t = 1; rc == 0 && t < T; t++)
        own[t - 1] = lp[(size_t)(t - 1) * V + in->ids[t]];
    free(lp);
    return rc;
}

/* The answer for input in of score job j, from its forward pass: lp [T, V]
 * and, with candidates, the state after the input in seq.  Returns -1 when
 * the candidates or the gains could not be computed. */
static int score_answer(api_job *j, api_worker *w, jw *o, const job_input *in, const float *lp,
                        const model_seq *seq)
{
    const int V = model_get_config(j->m)->vocab, T = in->n;
    float *own = NULL;
    char err[ATTNLM_ERR_LEN];
    if (sc(j)->gain && (!(own = malloc((size_t)T * sizeof *own)) || ablated_logprobs(j, in, own, err, sizeof err) < 0)) {
        free(own);
        return -1;
    }
    jw_obj(o);
    double sum = score_write_tokens(o, in->ids, T, lp, V, sc(j)->top_k, own, w->idx);
    free(own);
    const float *last = lp + (size_t)(T - 1) * V;
    if (sc(j)->n_cands && write_candidates(j, w, o, seq, last) < 0)
        return -1;
    jw_kfloat(o, "logprob", (float)sum);
    jw_kfloat(o, "perplexity", (float)exp(-sum / (T - 1)));
    jw_kobj(o, "usage");
    jw_kint(o, "input_tokens", T - 1);
    jw_obj_end(o);
    if (!sc(j)->many)
        json_timings(o, j);
    jw_obj_end(o);
    return 0;
}

/* The whole answer of score job j; lp[i] and seqs[i] belong to its input i. */
static void score_job_answer(api_job *j, api_worker *w, float *const *lp, model_seq *const *seqs)
{
    jw o;
    jw_init(&o, &j->out);
    if (sc(j)->many) {
        jw_obj(&o);
        jw_karr(&o, "results");
    }
    for (int i = 0; i < j->n_in; i++)
        if (score_answer(j, w, &o, &j->in[i], lp[i], seqs[i]) < 0) {
            job_fail_internal(j, sc(j)->gain ? "scoring the candidates or the attention gain failed"
                                     : "scoring the candidates failed");
            return;
        }
    if (sc(j)->many) {
        jw_arr_end(&o);
        jw_kobj(&o, "usage");
        jw_kint(&o, "input_tokens", api_job_input_tokens(j));
        jw_obj_end(&o);
        json_timings(&o, j);
        jw_obj_end(&o);
    }
    job_finish(j);
}

/* Runs n score jobs of one model through one batched forward pass over all
 * their inputs. */
static void score_run_many(api_job **jobs, int n, api_worker *w)
{
    const model *m = jobs[0]->m;
    const int V = model_get_config(m)->vocab;
    int total = 0;
    for (int i = 0; i < n; i++)
        total += jobs[i]->n_in;
    /* Every input of every job, in order: job i's inputs start at first[i]. */
    const int **tokens = calloc((size_t)total, sizeof *tokens);
    int *lens = calloc((size_t)total, sizeof *lens), *first = calloc((size_t)n, sizeof *first);
    float **lp = calloc((size_t)total, sizeof *lp);
    model_seq **seqs = calloc((size_t)total, sizeof *seqs);
    api_job **owners = calloc((size_t)total, sizeof *owners);
    bool ok = tokens && lens && first && lp && seqs && owners;
    for (int i = 0, b = 0; ok && i < n; i++) {
        first[i] = b;
        for (int k = 0; ok && k < jobs[i]->n_in; k++, b++) {
            tokens[b] = jobs[i]->in[k].ids;
            lens[b] = jobs[i]->in[k].n;
            owners[b] = jobs[i];
            lp[b] = malloc((size_t)lens[b] * V * sizeof **lp);
            seqs[b] = sc(jobs[i])->n_cands ? model_seq_new(m) : NULL;
            ok = lp[b] && (!sc(jobs[i])->n_cands || seqs[b]);
        }
    }
    char err[ATTNLM_ERR_LEN] = "out of memory";
    if (ok && job_forward(jobs[0], owners, total, tokens, lens, lp, seqs, err, sizeof err) == 0) {
        for (int i = 0; i < n; i++)
            score_job_answer(jobs[i], w, lp + first[i], seqs + first[i]);
    } else {
        for (int i = 0; i < n; i++)
            job_fail_internal(jobs[i], err);
    }
    for (int b = 0; b < total; b++) {
        if (lp)
            free(lp[b]);
        if (seqs)
            model_seq_free(seqs[b]);
    }
    free(tokens);
    free(lens);
    free(first);
    free(lp);
    free(seqs);
    free(owners);
}

/* Scoring requests of one model share forward passes, in groups of at most
 * API_FORWARD_TOKENS input tokens (a pass holds every position's activations
 * at once).  Taken out of the list as they are grouped. */
static void score_start(api_job **jobs, int n, api_worker *w)
{
    api_job **pending = malloc((size_t)n * sizeof *pending);
    if (!pending) {
        for (int i = 0; i < n; i++)
            score_run_many(&jobs[i], 1, w);
        return;
    }
    memcpy(pending, jobs, (size_t)n * sizeof *pending);
    int np = n;
    while (np > 0) {
        const model *m = pending[0]->m;
        api_job *group[API_MAX_CHOICES * 4];
        int ng = 0, tokens = 0, rest = 0;
        for (int i = 0; i < np; i++) {
            api_job *s = pending[i];
            int k = api_job_input_tokens(s) + s->n_in;
            bool fits = s->m == m && ng < (int)(sizeof group / sizeof *group) &&
                        (ng == 0 || tokens + k <= API_FORWARD_TOKENS);
            if (fits) {
                group[ng++] = s;
                tokens += k;
            } else {
                pending[rest++] = s;
            }
        }
        metrics_forward_batch(group[0]->ctx->metrics, ng);
        score_run_many(group, ng, w);
        np = rest;
    }
    free(pending);
}

static void score_drop(api_job *j)
{
    for (int i = 0; i < sc(j)->n_cands; i++)
        free(sc(j)->cands[i]);
}

static const char *const SCORE_FIELDS[] = {"model",      "text",          "ids", "texts", "top_k",
                                           "candidates", "attention_gain", NULL};

const job_ops SCORE_JOB = {.fields = SCORE_FIELDS, .op = METRICS_OP_SCORE, .size = sizeof(score_state),
                           .parse = score_parse, .start = score_start, .drop = score_drop};
