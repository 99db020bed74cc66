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
#include "prefix.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define API_MAX_CHOICES 16    /* /v1/completions "n" */
#define API_MAX_SEQS 64       /* /v1/completions: choices of all prompts together (prompts x n) */
#define API_MAX_CANDIDATES 32 /* /v1/score "candidates" */
#define API_MAX_STOP 16       /* "stop" strings per request */
#define API_MAX_STOP_BYTES 256
#define API_MAX_MODELS METRICS_MODELS /* models one server serves */
#define API_MODEL_NAME 128    /* bytes of a model name, NUL included */
#define API_MODEL_PATH 1024

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
    API_EP_ATTRIBUTION,
    API_EP_SESSIONS,        /* POST /v1/sessions */
    API_EP_SESSION_IMPORT,  /* POST /v1/sessions/import */
    API_EP_SESSION,         /* GET, DELETE /v1/sessions/{id} */
    API_EP_SESSION_APPEND,  /* POST /v1/sessions/{id}/append */
    API_EP_SESSION_STATE,   /* GET /v1/sessions/{id}/state */
    API_EP_CHAT,            /* POST /v1/chat/completions */
    API_EP_CHAT_RENDER,     /* POST /v1/chat/render */
    API_EP_COUNT
} api_endpoint;

_Static_assert(METRICS_ROUTES == API_EP_COUNT + 1, "metrics count every route of api_endpoint plus \"other\"");

/* The server's limits, also reported by GET /v1/model. */
typedef struct api_limits {
    size_t max_body_bytes;
    int max_input_tokens;
    int max_new_tokens;
    int max_attention_tokens;
    int max_inputs;       /* inputs in one array (/v1/score texts, /v1/completions prompts) */
    int queue_size;
    int workers;
    int max_batch;
    long long prefix_cache_bytes; /* the prefix-state cache's bound (0: none) */
} api_limits;

/* One model as served: its weights and what is reported of them.
 * Reference-counted: a job holds its model from validation to its end, so a
 * reload can put a new model in its place for new requests while requests in
 * flight finish on the old one, which goes with the last of them. */
typedef struct api_model {
    model *m;
    char name[API_MODEL_NAME]; /* the file's "name" metadata, else its file name: the OpenAI model id */
    char path[API_MODEL_PATH]; /* the file it was loaded from */
    double load_seconds;
    long long loaded_at;       /* Unix time of the load */
    int slot;                  /* its place among the served models, for metrics */
    atomic_int refs;
    atomic_bool retired;       /* a reload has replaced it: no new request gets it */
    prefix_cache *prefix;      /* the cache holding its states (forgotten when it goes), or NULL */
} api_model;

typedef struct api_models api_models; /* the served models, by name */

/* Loads the model files paths[n] (at most API_MAX_MODELS) with opts (NULL:
 * the defaults; reloads use the same), refusing two with one name.  NULL
 * with a message naming the file and the problem.  Free with
 * api_models_free once no job holds a model. */
api_models *api_models_load(const char *const *paths, int n, const model_opts *opts, char *err, size_t errlen);
void api_models_free(api_models *r);
/* Makes every model, reloads included, keep its prefix states in pc (which
 * must outlive the models; NULL: none). */
void api_models_use_prefix_cache(api_models *r, prefix_cache *pc);
int api_models_count(const api_models *r);
/* The model now served under name (NULL or "": the first), with a reference
 * for the caller to release; NULL if no model has that name. */
api_model *api_model_acquire(api_models *r, const char *name);
/* The same for the model in slot i (0 <= i < api_models_count). */
api_model *api_model_acquire_at(api_models *r, int i);
void api_model_release(api_model *am);

/* What a reload did to one model, for the log. */
typedef void (*api_reload_note)(void *cls, const char *path, bool ok, const char *message);
/* Loads every served file again and fully validates it; a good one replaces
 * its model for new requests, a bad one (or one whose name now belongs to
 * another model) leaves the old model serving.  Returns how many failed. */
int api_models_reload(api_models *r, api_metrics *metrics, api_reload_note note, void *cls);

/* How /v1/chat/completions renders messages into the text a model continues
 * (chat.c has the file syntax). */
typedef struct api_chat_template api_chat_template;
/* The template of the file at path (NULL or "": the built-in transcript);
 * NULL with a message naming the file, the line and the problem. */
api_chat_template *api_chat_template_load(const char *path, char *err, size_t errlen);
void api_chat_template_free(api_chat_template *t);

/* Sessions (session.h): model states kept between requests, bounded. */
typedef struct session_store session_store;
typedef struct session_limits {
    int max_sessions;
    size_t max_bytes; /* of states held */
    double ttl;       /* seconds a session may go unused */
} session_limits;
/* A store in this process's memory, bounded by lim.  NULL on out of memory.
 * Free with session_store_free once no request runs. */
session_store *session_store_new(const session_limits *lim);
/* A store in Redis at url ("redis://HOST:PORT[/DB]"), its keys under prefix,
 * expiring after lim->ttl; Redis's own memory limit bounds it.  It connects
 * on first use and again after a failure; a store that cannot be reached
 * answers 503 within about a second.  NULL with a message for a bad url. */
session_store *session_store_redis(const char *url, const char *prefix, const session_limits *lim, char *err,
                                   size_t errlen);
void session_store_free(session_store *s);
/* Whether the store counts what it holds (in memory: yes; Redis: no). */
bool session_store_counts(const session_store *s);
/* Sessions and bytes held now (0 for a store that does not count them). */
void session_store_usage(session_store *s, int *sessions, size_t *bytes);

/* Everything a handler may read; shared by every thread while serving. */
typedef struct api_ctx {
    api_models *models;
    api_limits limits;
    api_metrics *metrics;
    prefix_cache *prefix; /* states of recent prompts' prefixes, shared by the workers, or NULL */
    session_store *sessions;          /* NULL: the session routes answer 404 */
    session_store *checkpoints;       /* streams' checkpoints, to resume them; NULL: none */
    int checkpoint_every;             /* tokens between two checkpoints of a stream */
    const api_chat_template *chat;    /* --chat-template; NULL: the built-in one */
    unsigned char session_key[32];    /* signs exported states: SHA-256 of the server's secret */
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

/* The parts of a request a handler reads. */
typedef struct api_request {
    const char *method;
    const char *path;      /* as requested; ids in it (/v1/sessions/{id}) are read from here */
    const char *owner;     /* whose sessions it may use: a digest of its API key, "" (or NULL) without keys */
    const char *model_arg; /* ?model=, or NULL */
    const char *last_event_id; /* Last-Event-ID: resume a stream after that event; NULL none */
    const char *body;
    size_t len;
} api_request;

/* Finds the endpoint of method + path.  Returns 0, 404 for an unknown path, or
 * 405 with the methods the path allows in *allow (e.g. "GET, HEAD", "POST"). */
int api_route(const char *method, const char *path, api_endpoint *ep, const char **allow);
const char *api_endpoint_path(api_endpoint ep);
/* Whether the endpoint answers without an API key (health, readiness, metrics). */
bool api_endpoint_is_open(api_endpoint ep);
/* Whether the endpoint needs a worker (anything that runs the model). */
bool api_endpoint_is_job(api_endpoint ep);
/* Whether the endpoint's body is bytes (application/octet-stream), not JSON. */
bool api_endpoint_takes_bytes(api_endpoint ep);
/* The largest body the endpoint takes: max_body, or for an imported session
 * state the size of the largest served model's state if that is more. */
size_t api_endpoint_max_body(const api_ctx *ctx, api_endpoint ep, size_t max_body);

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
 * models, tokenize, detokenize, the session routes that run no model);
 * draining turns /ready into 503.  Returns 0 with r filled (success or a
 * 4xx), -1 on out of memory. */
int api_handle_inline(const api_ctx *ctx, api_endpoint ep, const api_request *q, bool draining, api_reply *r);

/* ---- jobs ----------------------------------------------------------------- */

/* Validates a request for model work (score, attention, attribution,
 * generate, completions, a session's making or append) and turns it into a job.  seed is used when the request gives none; request_id names
 * the OpenAI completion.  NULL with e filled on a bad request.  Free with
 * api_job_free. */
api_job *api_job_new(const api_ctx *ctx, api_endpoint ep, const api_request *q, uint64_t seed,
                     const char *request_id, api_error *e);
void api_job_free(api_job *j);

/* Whether the answer is a server-sent event stream (headers go out at once). */
bool api_job_streams(const api_job *j);
/* Sequences the job will decode at once (its weight in a worker's batch). */
int api_job_weight(const api_job *j);
/* Input tokens read and tokens generated so far, for logs and metrics. */
int api_job_input_tokens(const api_job *j);
int api_job_output_tokens(const api_job *j);
/* The served model the job runs on: its slot (for metrics) and name (for logs). */
int api_job_model_slot(const api_job *j);
const char *api_job_model_name(const api_job *j);
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

/* Scratch for one worker: batches of up to max_batch sequences (at least
 * API_MAX_SEQS, all the choices of one completion), for any of the served models.  NULL on out of memory.  Free with api_worker_free. */
api_worker *api_worker_new(int max_batch);
void api_worker_free(api_worker *w);
/* Frees the worker's scratch for models a reload retired and no step used
 * since the last call; called between steps. */
void api_worker_tidy(api_worker *w);

#endif
