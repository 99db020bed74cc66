/* api.h -- the HTTP API's meaning, without the HTTP: routing, request
 * validation, the model work behind each endpoint and the JSON it answers.
 *
 * Nothing here touches a socket.  The server hands in a path, a method and a
 * body and gets back a status and bytes; model work is packaged as a job that
 * a worker starts and, for generation, steps in a batch with other jobs.
 * Jobs are owned by one thread at a time; the context (api_ctx) is read-only
 * once the server runs and is shared by every thread.
 */
#ifndef ATTNLM_API_H
#define ATTNLM_API_H

#include "metrics.h"
#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define API_MAX_CHOICES 16    /* /v1/completions "n" */
#define API_MAX_CANDIDATES 32 /* /v1/score "candidates" */
#define API_MAX_STOP 16       /* "stop" strings per request */
#define API_MAX_STOP_BYTES 256

/* The routes of the contract. */
typedef enum {
    API_EP_HEALTH,
    API_EP_READY,
    API_EP_METRICS,
    API_EP_MODEL,
    API_EP_MODELS,
    API_EP_TOKENIZE,
    API_EP_DETOKENIZE,
    API_EP_SCORE,
    API_EP_GENERATE,
    API_EP_ATTENTION,
    API_EP_COMPLETIONS,
    API_EP_MODEL_BY_ID, /* GET /v1/models/{id} */
    API_EP_COUNT
} api_endpoint;

_Static_assert(METRICS_ROUTES == API_EP_COUNT + 1, "metrics count every route of api_endpoint plus \"other\"");

/* The server's limits, also reported by GET /v1/model. */
typedef struct api_limits {
    size_t max_body_bytes;
    int max_input_tokens;
    int max_new_tokens;
    int max_attention_tokens;
    int queue_size;
    int workers;
    int max_batch;
} api_limits;

/* Everything a handler may read; shared, read-only while serving. */
typedef struct api_ctx {
    const model *m;
    const char *model_id;   /* name reported to OpenAI clients */
    const char *model_path;
    char sha256[65];        /* of the model file, hex */
    double load_seconds;
    api_limits limits;
    api_metrics *metrics;
} api_ctx;

/* A refusal: the HTTP status and what the error body says. */
typedef struct api_error {
    int status;
    char param[64];  /* offending field, "" for none (null in JSON) */
    char message[256];
} api_error;

/* A complete answer: status, content type and a body the caller frees. */
typedef struct api_reply {
    int status;
    const char *content_type;
    char *body;
    size_t len;
} api_reply;

typedef struct api_job api_job;       /* model work for one request */
typedef struct api_worker api_worker; /* one worker thread's scratch */

/* ---- routing ------------------------------------------------------------ */

/* Finds the endpoint of method + path.  Returns 0, 404 for an unknown path, or
 * 405 with the methods the path allows in *allow ("GET, HEAD" or "POST"). */
int api_route(const char *method, const char *path, api_endpoint *ep, const char **allow);
const char *api_endpoint_path(api_endpoint ep);
/* Whether the endpoint answers without an API key (health, readiness, metrics). */
bool api_endpoint_is_open(api_endpoint ep);
/* Whether the endpoint needs a worker (anything that runs the model). */
bool api_endpoint_is_job(api_endpoint ep);

/* ---- errors ------------------------------------------------------------- */

void api_error_set(api_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The contract's "type" for a status, e.g. "invalid_request_error" for 400. */
const char *api_error_type(int status);
/* Fills r with the JSON error body of e.  Returns 0, or -1 on out of memory. */
int api_error_reply(const api_error *e, api_reply *r);

/* Constant-time check of a request's credentials against the configured key:
 * authorization is the Authorization header ("Bearer KEY"), x_api_key the
 * X-Api-Key header; either may be NULL. */
bool api_key_matches(const char *key, const char *authorization, const char *x_api_key);

/* Answers the endpoints that need no model work (health, ready, metrics, model,
 * models, tokenize, detokenize); path is the request's, for /v1/models/{id};
 * draining turns /ready into 503.  Returns 0 with r filled (success or a
 * 4xx), -1 on out of memory. */
int api_handle_inline(const api_ctx *ctx, api_endpoint ep, const char *path, const char *body, size_t len,
                      bool draining, api_reply *r);

/* ---- jobs ----------------------------------------------------------------- */

/* Validates a request for score, attention, generate or completions and turns
 * it into a job.  seed is used when the request gives none; request_id names
 * the OpenAI completion.  NULL with e filled on a bad request.  Free with
 * api_job_free. */
api_job *api_job_new(const api_ctx *ctx, api_endpoint ep, const char *body, size_t len, uint64_t seed,
                     const char *request_id, api_error *e);
void api_job_free(api_job *j);

/* Whether the answer is a server-sent event stream (headers go out at once). */
bool api_job_streams(const api_job *j);
/* Sequences the job will decode at once (its weight in a worker's batch). */
int api_job_weight(const api_job *j);
/* Input tokens read and tokens generated so far, for logs and metrics. */
int api_job_input_tokens(const api_job *j);
int api_job_output_tokens(const api_job *j);
/* Whether the job has produced its whole answer (or failed). */
bool api_job_done(const api_job *j);

/* Runs a one-shot job to completion, or prefills a generation and picks its
 * first tokens.  Afterwards the job is done or has sequences to step. */
void api_job_start(api_job *j, api_worker *w);

/* api_job_start for n jobs taken together: score requests among them share
 * one batched forward pass. */
void api_job_start_many(api_job **jobs, int n, api_worker *w);

/* Advances every sequence of the unfinished jobs[n] by one token in one batch.
 * Returns the batch size. */
int api_step(api_worker *w, api_job *const *jobs, int n);

/* Ends the job with an error: a non-streaming job answers e; a stream gets an
 * error event and its end.  A job already done is left as it is. */
void api_job_fail(api_job *j, const api_error *e);

/* Takes the bytes produced since the last call (SSE events, or the whole body
 * once done).  *status is the HTTP status of a non-streaming answer.  Returns
 * the byte count; *data (caller frees) is NULL when there is nothing. */
size_t api_job_take_output(api_job *j, char **data, int *status);

/* Scratch for one worker: a batch of up to max_batch sequences.  NULL on out
 * of memory.  Free with api_worker_free. */
api_worker *api_worker_new(const model *m, int max_batch);
void api_worker_free(api_worker *w);

#endif
