/* route.c -- the endpoints, one row each: which endpoint a method and path
 * name, what answers it (an inline answer, or a kind of job that a worker
 * runs), and whether the request's credentials match the key.
 *
 * Adding an endpoint: its value in api_endpoint (api.h), a file with its
 * parse and work ending in its job_ops (or an inline_fn in inline.c), and its
 * row here.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "clock.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the endpoints ---------------------------------------------------------- */

/* One endpoint: its path (a segment "{id}" stands for any one segment, a
 * final "{name}" for the rest of the path), the methods it answers, whether it
 * is open without the key, whether its body is bytes (else JSON), and what
 * answers it: a job kind (job_ops, run by a worker) or an inline answer. */
typedef struct endpoint {
    const char *path;
    const char *methods;
    bool open;
    bool bytes;
    const job_ops *job;
    inline_fn answer;
} endpoint;

#define GET "GET, HEAD"

static const endpoint ENDPOINTS[API_EP_COUNT] = {
    [API_EP_HEALTH] = {"/health", GET, true, false, NULL, inline_health},
    [API_EP_READY] = {"/ready", GET, true, false, NULL, inline_ready},
    [API_EP_METRICS] = {"/metrics", GET, true, false, NULL, inline_metrics},
    [API_EP_MODEL] = {"/v1/model", GET, false, false, NULL, inline_model},
    [API_EP_MODELS] = {"/v1/models", GET, false, false, NULL, inline_models},
    [API_EP_TOKENIZE] = {"/v1/tokenize", "POST", false, false, NULL, inline_tokenize},
    [API_EP_DETOKENIZE] = {"/v1/detokenize", "POST", false, false, NULL, inline_detokenize},
    [API_EP_SCORE] = {"/v1/score", "POST", false, false, &SCORE_JOB, NULL},
    [API_EP_GENERATE] = {"/v1/generate", "POST", false, false, &GENERATE_JOB, NULL},
    [API_EP_ATTENTION] = {"/v1/attention", "POST", false, false, &ATTENTION_JOB, NULL},
    [API_EP_COMPLETIONS] = {"/v1/completions", "POST", false, false, &COMPLETIONS_JOB, NULL},
    [API_EP_MODEL_BY_ID] = {"/v1/models/{name}", GET, false, false, NULL, inline_model_by_id},
    [API_EP_ATTRIBUTION] = {"/v1/attribution", "POST", false, false, &ATTRIBUTION_JOB, NULL},
    [API_EP_SESSIONS] = {"/v1/sessions", "POST", false, false, &SESSION_CREATE_JOB, NULL},
    [API_EP_SESSION_IMPORT] = {"/v1/sessions/import", "POST", false, true, NULL, inline_session_import},
    [API_EP_SESSION] = {"/v1/sessions/{id}", GET ", DELETE", false, false, NULL, inline_session},
    [API_EP_SESSION_APPEND] = {"/v1/sessions/{id}/append", "POST", false, false, &SESSION_APPEND_JOB, NULL},
    [API_EP_SESSION_STATE] = {"/v1/sessions/{id}/state", GET, false, false, NULL, inline_session_state},
    [API_EP_CHAT] = {"/v1/chat/completions", "POST", false, false, &CHAT_JOB, NULL},
    [API_EP_CHAT_RENDER] = {"/v1/chat/render", "POST", false, false, NULL, inline_chat_render},
};

/* Whether path fits the endpoint's pattern. */
static bool path_fits(const char *pattern, const char *path)
{
    while (*pattern) {
        if (strcmp(pattern, "{name}") == 0)
            return *path != '\0';
        if (strncmp(pattern, "{id}", 4) == 0) {
            size_t n = strcspn(path, "/");
            if (n == 0)
                return false;
            pattern += 4;
            path += n;
            continue;
        }
        if (*pattern++ != *path++)
            return false;
    }
    return *path == '\0';
}

/* Whether method is one of the comma-separated list. */
static bool method_in(const char *method, const char *list)
{
    size_t n = strlen(method);
    for (const char *p = list; *p; p += strspn(p, ", ")) {
        size_t k = strcspn(p, ",");
        if (k == n && strncmp(p, method, n) == 0)
            return true;
        p += k;
    }
    return false;
}

int api_route(const char *method, const char *path, api_endpoint *ep, const char **allow)
{
    /* Literal paths first: "/v1/sessions/import" is not the session "import". */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < API_EP_COUNT; i++) {
            if ((strchr(ENDPOINTS[i].path, '{') != NULL) != (pass == 1) || !path_fits(ENDPOINTS[i].path, path))
                continue;
            *ep = (api_endpoint)i;
            if (method_in(method, ENDPOINTS[i].methods))
                return 0;
            *allow = ENDPOINTS[i].methods;
            return 405;
        }
    return 404;
}

const char *api_endpoint_path(api_endpoint ep) { return ep < API_EP_COUNT ? ENDPOINTS[ep].path : "other"; }
bool api_endpoint_is_open(api_endpoint ep) { return ep < API_EP_COUNT && ENDPOINTS[ep].open; }
bool api_endpoint_is_job(api_endpoint ep) { return ep < API_EP_COUNT && ENDPOINTS[ep].job; }
bool api_endpoint_takes_bytes(api_endpoint ep) { return ep < API_EP_COUNT && ENDPOINTS[ep].bytes; }

size_t api_endpoint_max_body(const api_ctx *ctx, api_endpoint ep, size_t max_body)
{
    if (ep != API_EP_SESSION_IMPORT || !ctx->sessions)
        return max_body;
    size_t state = sessions_import_limit(ctx);
    return state > max_body ? state : max_body;
}

int api_handle_inline(const api_ctx *ctx, api_endpoint ep, const api_request *q, bool draining, api_reply *r)
{
    if (ep >= API_EP_COUNT || !ENDPOINTS[ep].answer) {
        api_error e;
        api_error_set(&e, 500, NULL, "%s is not answered inline", api_endpoint_path(ep));
        return api_error_reply(&e, r);
    }
    inline_req iq = {.ctx = ctx, .route = ENDPOINTS[ep].path, .method = q->method, .path = q->path,
                     .owner = q->owner ? q->owner : "", .model_arg = q->model_arg, .body = q->body, .len = q->len,
                     .draining = draining};
    return ENDPOINTS[ep].answer(&iq, r);
}

/* ---- jobs --------------------------------------------------------------------- */

/* Last-Event-ID "TAG.N" of a request to resume: the same request's tag, and
 * a stream on a server that keeps checkpoints. */
static int resume_point(api_job *j, const char *last, api_error *e)
{
    const char *dot = strchr(last, '.');
    char *end;
    long n = dot ? strtol(dot + 1, &end, 10) : -1;
    if (!j->stream || !j->ctx->checkpoints) {
        api_error_set(e, 400, "Last-Event-ID", "Last-Event-ID resumes a stream%s",
                      j->stream ? ", and this server keeps no checkpoints (--checkpoint-every 0)"
                                : "; this request does not stream");
        return -1;
    }
    if (!dot || dot - last != (ptrdiff_t)strlen(j->tag) || strncmp(last, j->tag, strlen(j->tag)) != 0 || n < 0 ||
        n > 1 << 30 || *end) {
        api_error_set(e, 400, "Last-Event-ID",
                      "Last-Event-ID %.64s is not an event of this request: a stream resumes only with its own "
                      "body, path and API key",
                      last);
        return -1;
    }
    j->resume_after = (int)n;
    j->skip_until = (int)n;
    return 0;
}

api_job *api_job_new(const api_ctx *ctx, api_endpoint ep, const api_request *q, uint64_t seed,
                     const char *request_id, api_error *e)
{
    if (!api_endpoint_is_job(ep)) {
        api_error_set(e, 500, NULL, "%s is not model work", api_endpoint_path(ep));
        return NULL;
    }
    const job_ops *ops = ENDPOINTS[ep].job;
    cJSON *o = json_parse_object(q->body, q->len, e);
    if (!o)
        return NULL;
    api_job *j = NULL;
    /* The fields each route takes; any other is refused, so that a request
     * meant for another server does not silently do something else here. */
    if (json_check_fields(o, ops->fields, api_endpoint_path(ep), e) == 0 && (j = job_new(ctx, ops, q, o, e)) &&
        (ops->parse(j, o, seed, request_id, e) < 0 || (q->last_event_id && resume_point(j, q->last_event_id, e) < 0))) {
        api_job_free(j);
        j = NULL;
    }
    cJSON_Delete(o);
    return j;
}

void api_job_start(api_job *j, api_worker *w) { api_job_start_many(&j, 1, w); }

void api_job_start_many(api_job **jobs, int n, api_worker *w)
{
    /* The jobs of each kind together, in their order: a kind may share work among them (scoring passes). */
    api_job **same = malloc((size_t)n * sizeof *same);
    bool *started = calloc((size_t)n, sizeof *started);
    const int64_t now = clock_now_ns();
    for (int i = 0; i < n; i++)
        jobs[i]->t_started = now;
    for (int i = 0; i < n; i++) {
        if (!same || !started) { /* out of memory: one at a time */
            if (jobs[i]->ops->start)
                jobs[i]->ops->start(&jobs[i], 1, w);
            else
                jobs[i]->ops->run(jobs[i], w);
            continue;
        }
        if (started[i])
            continue;
        int m = 0;
        for (int k = i; k < n; k++)
            if (!started[k] && jobs[k]->ops == jobs[i]->ops) {
                started[k] = true;
                same[m++] = jobs[k];
            }
        if (jobs[i]->ops->start)
            jobs[i]->ops->start(same, m, w);
        else
            for (int k = 0; k < m; k++)
                jobs[i]->ops->run(same[k], w);
    }
    free(same);
    free(started);
}

/* ---- API key ------------------------------------------------------------- */

/* Compares in time that depends only on the lengths, not on where they differ. */
static bool same_secret(const char *key, const char *given)
{
    size_t kl = strlen(key), gl = strlen(given);
    unsigned diff = (unsigned)(kl ^ gl);
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)given[gl ? i % gl : 0];
    return diff == 0 && gl > 0;
}

bool api_key_matches(const char *key, const char *authorization, const char *x_api_key)
{
    bool ok = false;
    /* The scheme is case-insensitive (RFC 9110 11.1); the key is not. */
    if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *t = authorization + 7;
        while (*t == ' ')
            t++;
        ok |= same_secret(key, t);
    }
    if (x_api_key)
        ok |= same_secret(key, x_api_key);
    return ok;
}
