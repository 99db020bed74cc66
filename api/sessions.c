/* sessions.c -- the session routes.  Making a session and appending to one
 * run the model (jobs); reading, deleting, exporting and importing one do not
 * (inline).  The store and the state format are session.c's.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SESSIONS_PREFIX "/v1/sessions/"

/* Both kinds' own state. */
typedef struct session_job {
    int top_k;
    char id[SESSION_ID_LEN + 1]; /* append: the session */
} session_job;

static session_job *sj(const api_job *j) { return j->state; }

static int sessions_on(const api_ctx *ctx, api_error *e)
{
    if (ctx->sessions)
        return 0;
    api_error_set(e, 404, NULL, "sessions are off on this server (--max-sessions 0)");
    return -1;
}

/* The {id} of a path /v1/sessions/{id}[/...]; -1 with a 404 when it cannot name one. */
static int path_id(const char *path, char *id, api_error *e)
{
    const char *p = path + strlen(SESSIONS_PREFIX);
    size_t n = strncmp(path, SESSIONS_PREFIX, strlen(SESSIONS_PREFIX)) == 0 ? strcspn(p, "/") : 0;
    if (n == 0 || n > SESSION_ID_LEN || strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_") < n) {
        api_error_set(e, 404, "session", "no session %.64s", n ? p : "");
        return -1;
    }
    memcpy(id, p, n);
    id[n] = '\0';
    return 0;
}

/* What every answer about a session says of it. */
static void write_info(jw *o, const session_info *info)
{
    jw_kstr(o, "id", info->id);
    jw_kstr(o, "object", "session");
    jw_kstr(o, "model", info->model);
    jw_kint(o, "token_count", info->position - 1);
    jw_kint(o, "created", info->created);
    jw_kint(o, "last_used", info->last_used);
    jw_kdouble(o, "expires_in", floor(info->expires_in * 1000.0) / 1000.0);
    jw_kint(o, "state_bytes", (long long)info->bytes);
}

static int parse_top_k(api_job *j, const cJSON *o, api_error *e)
{
    long long top_k = 5;
    if (json_get_int(o, "top_k", 0, model_get_config(j->m)->vocab, &top_k, e) < 0)
        return -1;
    sj(j)->top_k = (int)top_k;
    if (!(j->in = calloc(1, sizeof *j->in))) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    j->n_in = 1;
    return 0;
}

/* ---- POST /v1/sessions -------------------------------------------------------- */

static int create_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    (void)seed, (void)request_id;
    if (sessions_on(j->ctx, e) < 0 || parse_top_k(j, o, e) < 0)
        return -1;
    /* An empty text is a session at the start, to append to. */
    return json_get_input(o, "text", j->ctx->limits.max_input_tokens, true, &j->in[0], e);
}

static void create_run(api_job *j, api_worker *w)
{
    const int V = model_get_config(j->m)->vocab, T = j->in[0].n;
    const size_t len = session_state_bytes(j->m);
    float *lp = malloc((size_t)T * V * sizeof *lp);
    model_seq *seq = model_seq_new(j->m);
    unsigned char *state = malloc(len);
    char err[ATTNLM_ERR_LEN];
    const int *ids = j->in[0].ids;
    if (!lp || !seq || !state) {
        job_fail_internal(j, "out of memory for the session");
        goto done;
    }
    if (job_forward(j, NULL, 1, &ids, &T, &lp, &seq, err, sizeof err) < 0) {
        job_fail_internal(j, err);
        goto done;
    }
    const float *next = lp + (size_t)(T - 1) * V;
    session_state_encode(j->m, seq, next, state);
    session_info info;
    api_error e;
    if (session_put(j->ctx->sessions, j->owner, j->am->name, state, len, &info, &e) < 0) {
        job_finish_error(j, &e);
        goto done;
    }
    state = NULL;
    jw o;
    jw_init(&o, &j->out);
    jw_obj(&o);
    write_info(&o, &info);
    jw_karr(&o, "next");
    api_topk(next, V, sj(j)->top_k, w->idx);
    for (int a = 0; a < sj(j)->top_k; a++)
        json_scored(&o, w->idx[a], next[w->idx[a]]);
    jw_arr_end(&o);
    job_answer_end(j, &o, T - 1);
done:
    free(lp);
    free(state);
    model_seq_free(seq);
}

static const char *const CREATE_FIELDS[] = {"model", "text", "ids", "top_k", NULL};

const job_ops SESSION_CREATE_JOB = {.fields = CREATE_FIELDS, .op = METRICS_OP_SESSION, .size = sizeof(session_job),
                                    .parse = create_parse, .run = create_run};

/* ---- POST /v1/sessions/{id}/append ------------------------------------------ */

int session_job_model(api_job *j, const char *id, api_error *e)
{
    session_info info;
    if (sessions_on(j->ctx, e) < 0 || session_get(j->ctx->sessions, id, j->owner, false, NULL, NULL, &info, e) < 0)
        return -1;
    if (strcmp(info.model, j->am->name) == 0)
        return 0;
    api_model *am = api_model_acquire(j->ctx->models, info.model);
    if (!am) {
        api_error_set(e, 409, "session", "session %s belongs to model \"%.100s\", which is no longer served", id,
                      info.model);
        return -1;
    }
    api_model_release(j->am);
    j->am = am;
    j->m = am->m;
    return 0;
}

/* A state that no longer decodes: a reload replaced the model file since the session was made. */
static void stale(const api_job *j, const char *id, const api_error *why, api_error *e)
{
    api_error_set(e, 409, "session", "session %s no longer fits the model served as \"%s\": %s", id, j->am->name,
                  why->message);
}

int session_job_load(const api_job *j, const char *id, model_seq *seq, float *next, api_error *e)
{
    unsigned char *state = NULL;
    size_t len = 0;
    api_error why;
    if (session_get(j->ctx->sessions, id, j->owner, false, &state, &len, NULL, e) < 0)
        return -1;
    int rc = session_state_decode(j->m, state, len, seq, next, &why);
    if (rc < 0)
        stale(j, id, &why, e);
    free(state);
    return rc;
}

static int append_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    (void)seed, (void)request_id;
    if (sessions_on(j->ctx, e) < 0 || path_id(j->path, sj(j)->id, e) < 0 || parse_top_k(j, o, e) < 0 ||
        json_get_input(o, "text", j->ctx->limits.max_input_tokens, false, &j->in[0], e) < 0)
        return -1;
    return session_job_model(j, sj(j)->id, e); /* the job runs on the session's model */
}

/* The appended tokens scored as the tail of the session's text: row 0 of lp is
 * the session's next-token row, rows 1.. the pass over what is appended. */
static void append_run(api_job *j, api_worker *w)
{
    const int V = model_get_config(j->m)->vocab, n = j->in[0].n - 1;
    session_store *store = j->ctx->sessions;
    unsigned char *state = NULL;
    size_t len = 0;
    session_info info;
    api_error e;
    if (session_get(store, sj(j)->id, j->owner, true, &state, &len, &info, &e) < 0) {
        job_finish_error(j, &e);
        return;
    }
    float *lp = malloc((size_t)(n + 1) * V * sizeof *lp);
    model_seq *from = model_seq_new(j->m), *to = model_seq_new(j->m);
    unsigned char *after = malloc(len);
    char err[ATTNLM_ERR_LEN];
    if (!lp || !from || !to || !after) {
        job_fail_internal(j, "out of memory for the append");
        goto fail;
    }
    if (session_state_decode(j->m, state, len, from, lp, &e) < 0) {
        api_error f;
        stale(j, sj(j)->id, &e, &f);
        job_finish_error(j, &f);
        goto fail;
    }
    if (model_forward_from(j->m, from, j->in[0].ids + 1, n, lp + V, to, err, sizeof err) < 0) {
        job_fail_internal(j, err);
        goto fail;
    }
    session_state_encode(j->m, to, lp + (size_t)n * V, after);
    const int64_t position = model_seq_pos(to);
    j->cached_tokens = (int)(model_seq_pos(from) - 1); /* the session's text, not run again */
    session_return(store, sj(j)->id, j->owner, after, len);
    after = NULL;
    jw o;
    jw_init(&o, &j->out);
    jw_obj(&o);
    jw_kstr(&o, "id", sj(j)->id);
    jw_kstr(&o, "object", "session.append");
    jw_kint(&o, "token_count", position - 1);
    double sum = score_write_tokens(&o, j->in[0].ids, n + 1, lp, V, sj(j)->top_k, NULL, w->idx);
    jw_kfloat(&o, "logprob", (float)sum);
    jw_kfloat(&o, "perplexity", (float)exp(-sum / n));
    job_answer_end(j, &o, n);
    goto done;
fail:
    session_return(store, sj(j)->id, j->owner, NULL, 0);
done:
    free(state);
    free(after);
    free(lp);
    model_seq_free(from);
    model_seq_free(to);
}

static const char *const APPEND_FIELDS[] = {"text", "ids", "top_k", NULL};

const job_ops SESSION_APPEND_JOB = {.fields = APPEND_FIELDS, .op = METRICS_OP_SESSION, .size = sizeof(session_job),
                                    .parse = append_parse, .run = append_run};

/* ---- GET, DELETE /v1/sessions/{id} ------------------------------------------- */

static int error_reply(const api_error *e, api_reply *r) { return api_error_reply(e, r); }

int inline_session(const inline_req *q, api_reply *r)
{
    char id[SESSION_ID_LEN + 1];
    api_error e;
    session_info info;
    if (sessions_on(q->ctx, &e) < 0 || path_id(q->path, id, &e) < 0)
        return error_reply(&e, r);
    bool del = strcmp(q->method, "DELETE") == 0;
    if (del ? session_delete(q->ctx->sessions, id, q->owner, &info, &e) < 0
            : session_get(q->ctx->sessions, id, q->owner, false, NULL, NULL, &info, &e) < 0)
        return error_reply(&e, r);
    buf b = {0};
    jw o;
    jw_init(&o, &b);
    jw_obj(&o);
    if (del) {
        jw_kstr(&o, "id", id);
        jw_kstr(&o, "object", "session");
        jw_kbool(&o, "deleted", true);
    } else {
        write_info(&o, &info);
    }
    jw_obj_end(&o);
    return json_reply(&b, 200, r);
}

/* ---- GET /v1/sessions/{id}/state --------------------------------------------- */

int inline_session_state(const inline_req *q, api_reply *r)
{
    char id[SESSION_ID_LEN + 1];
    api_error e;
    unsigned char *state = NULL;
    size_t len = 0;
    if (sessions_on(q->ctx, &e) < 0 || path_id(q->path, id, &e) < 0 ||
        session_get(q->ctx->sessions, id, q->owner, false, &state, &len, NULL, &e) < 0)
        return error_reply(&e, r);
    unsigned char *signed_state = realloc(state, len + SESSION_MAC);
    if (!signed_state) {
        free(state);
        return -1;
    }
    session_sign(q->ctx, signed_state, len, signed_state + len);
    r->status = 200;
    r->content_type = "application/octet-stream";
    r->body = (char *)signed_state;
    r->len = len + SESSION_MAC;
    return 0;
}

/* ---- POST /v1/sessions/import ------------------------------------------------- */

/* The served model whose file and precision made the state, with a reference; NULL with e. */
static api_model *state_model(const api_ctx *ctx, const unsigned char *in, size_t len, api_error *e)
{
    const char *sha = session_state_model(in, len);
    if (!sha) {
        api_error_set(e, 400, "state", "not a session state (it begins with the magic \"%s\")", SESSION_MAGIC);
        return NULL;
    }
    for (int i = 0; i < api_models_count(ctx->models); i++) {
        api_model *am = api_model_acquire_at(ctx->models, i);
        if (am && memcmp(model_sha256(am->m), sha, 64) == 0)
            return am;
        api_model_release(am);
    }
    api_error_set(e, 400, "state", "the state belongs to a model this server does not serve (sha256 %.64s)", sha);
    return NULL;
}

int inline_session_import(const inline_req *q, api_reply *r)
{
    api_error e;
    const unsigned char *in = (const unsigned char *)q->body;
    if (sessions_on(q->ctx, &e) < 0)
        return error_reply(&e, r);
    if (q->len < SESSION_HEADER + SESSION_MAC) {
        api_error_set(&e, 400, "state", "the body (%zu bytes) is too short to be a signed session state", q->len);
        return error_reply(&e, r);
    }
    /* The signature first: nothing else of an unsigned state is worth reading. */
    if (!session_signed(q->ctx, in, q->len)) {
        api_error_set(&e, 400, "state",
                      "the state's signature does not match: it was altered, cut short, or exported by a server "
                      "with another --session-secret-file");
        return error_reply(&e, r);
    }
    const size_t len = q->len - SESSION_MAC;
    api_model *am = state_model(q->ctx, in, len, &e);
    if (!am)
        return error_reply(&e, r);
    const int V = model_get_config(am->m)->vocab;
    model_seq *seq = model_seq_new(am->m);
    float *next = malloc((size_t)V * sizeof *next);
    unsigned char *state = malloc(len);
    session_info info;
    int rc = -1;
    if (!seq || !next || !state)
        goto done;
    memcpy(state, in, len);
    if (session_state_decode(am->m, state, len, seq, next, &e) < 0 ||
        session_put(q->ctx->sessions, q->owner, am->name, state, len, &info, &e) < 0) {
        rc = error_reply(&e, r);
        goto done;
    }
    state = NULL;
    buf b = {0};
    jw o;
    jw_init(&o, &b);
    jw_obj(&o);
    write_info(&o, &info);
    jw_obj_end(&o);
    rc = json_reply(&b, 200, r);
done:
    free(state);
    free(next);
    model_seq_free(seq);
    api_model_release(am);
    return rc;
}

size_t sessions_import_limit(const api_ctx *ctx)
{
    size_t most = 0;
    for (int i = 0; i < api_models_count(ctx->models); i++) {
        api_model *am = api_model_acquire_at(ctx->models, i);
        if (am) {
            size_t n = session_state_bytes(am->m) + SESSION_MAC;
            most = n > most ? n : most;
        }
        api_model_release(am);
    }
    return most;
}
