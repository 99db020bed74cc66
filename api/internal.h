/* internal.h -- shared inside api/ only: the job structure and the helpers
 * the endpoint files share (JSON in json.c, errors in route.c, the OpenAI
 * shapes in openai.c).  The server sees none of this (api.h is its view).
 *
 * Answers are written with the JSON writer (common/jw.h) straight into the
 * job's output buffer; cJSON only parses requests.
 */
#ifndef ATTNLM_API_INTERNAL_H
#define ATTNLM_API_INTERNAL_H

#include "api.h"
#include "buf.h"
#include "jw.h"
#include "sampler.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* Most input tokens scored in one shared forward pass: a pass holds every
 * position's activations at once (about 8 KB each for the default model). */
#define API_FORWARD_TOKENS 8192

/* ---- JSON output ---------------------------------------------------------- */

/* {"id", "text", "bytes"} of a token, left open for more fields: text is its
 * byte as UTF-8 (U+FFFD when not a whole character), BOS has no bytes. */
void json_token_open(jw *w, int id);
/* The token object closed. */
void json_token(jw *w, int id);
/* {"id", "text", "bytes", "logprob"}. */
void json_scored(jw *w, int id, float logprob);
/* {"prompt_tokens", "completion_tokens"} and, with total, "total_tokens", under "usage". */
void json_usage(jw *w, int prompt_tokens, int completion_tokens, bool total);
/* {"error": {"message", "type", "param", "code"}} of e. */
void json_error(jw *w, const api_error *e);
/* Starts and ends one server-sent event of j: "id: TAG.N\ndata: " ... "\n\n"
 * (dropped again when N is one a resumed stream's client already has);
 * sse_done is the last event, "[DONE]". */
void sse_begin(api_job *j, jw *w);
void sse_end(api_job *j);
void sse_done(api_job *j);
/* Fills r with the JSON answer in b (taken; NUL-terminated beyond len).
 * Returns 0, or -1 on out of memory. */
int json_reply(buf *b, int status, api_reply *r);

/* ---- JSON input -------------------------------------------------------------
 * Each returns 1 when the field is present and valid, 0 when it is absent or
 * null (the default stays), -1 with e filled when it has the wrong type or is
 * out of range. */
/* Field name of o, NULL when absent or null. */
const cJSON *json_field(const cJSON *o, const char *name);
int json_get_int(const cJSON *o, const char *name, long long lo, long long hi, long long *out, api_error *e);
int json_get_num(const cJSON *o, const char *name, double lo, double hi, double *out, api_error *e);
int json_get_bool(const cJSON *o, const char *name, bool *out, api_error *e);
int json_get_string(const cJSON *o, const char *name, const char **out, api_error *e);
/* Parses body as a JSON object.  NULL with e filled (400) if it is not one, or
 * if a string in it holds U+0000, which would cut it short. */
cJSON *json_parse_object(const char *body, size_t len, api_error *e);
/* Refuses (400, naming it) the first field of o that is not in allowed (a
 * NULL-terminated list).  Returns 0 or -1. */
int json_check_fields(const cJSON *o, const char *const *allowed, const char *route, api_error *e);

/* One input of a request: ids = [BOS] + its tokens, n counting BOS. */
typedef struct job_input {
    int *ids;
    int n;
    float *lp; /* [n - 1, V] log-probabilities of the prompt, when an answer needs them */
} job_input;

/* Reads "text" (a string) or "ids" (token ids) into in->ids = [BOS] + tokens.
 * Refuses both or neither, and more than max tokens (413).  Empty input is
 * refused unless allow_empty.  The caller frees in->ids. */
int json_get_input(const cJSON *o, const char *text_field, int max, bool allow_empty, job_input *in, api_error *e);
/* Reads "ids" (required, may be empty) into [BOS] + ids as json_get_input does. */
int json_get_ids(const cJSON *o, int max, job_input *in, api_error *e);
/* One input given as the value v: a string (its UTF-8 bytes) when text_ok, an
 * array of token ids when ids_ok.  param is the field errors name, name what
 * messages call the value ("prompt[2]"). */
int json_read_input(const cJSON *v, const char *param, const char *name, int max, bool allow_empty, bool text_ok,
                    bool ids_ok, job_input *in, api_error *e);
/* The array arr of inputs (each as json_read_input reads it) into *in (n of
 * them, caller frees with job_inputs_free).  At least one, at most
 * max_inputs, and max_tokens between them (413 beyond either). */
int json_read_inputs(const cJSON *arr, const char *param, int max_inputs, int max_tokens, bool allow_empty,
                     bool text_ok, bool ids_ok, job_input **in, int *n, api_error *e);
void job_inputs_free(job_input *in, int n);
/* The served model a request names in "model" (absent: the first), with a
 * reference; NULL with a 404 naming "model" when there is none of that name. */
api_model *json_get_model(const api_ctx *ctx, const cJSON *o, api_error *e);

/* Indices of the k largest of lp[n], largest first, ties to the lower index. */
void api_topk(const float *lp, int n, int k, int *idx);

/* ---- jobs ---------------------------------------------------------------- */

/* Generation settings of /v1/generate and /v1/completions. */
typedef struct gen_params {
    int max_tokens;
    sampler_params sp;
    sampler_penalties pen;
    bool penalize;    /* a penalty is on: every choice counts its tokens */
    int last_n;       /* repetition window over prompt + generated: -1 all, 0 none */
    float *bias;      /* [V] logit_bias, -INFINITY for a ban; NULL: none */
    uint64_t seed;
    char *stop[API_MAX_STOP];
    int n_stop;
    int top;          /* alternatives reported per token */
    bool logprobs;    /* per-token log-probabilities in the answer (OpenAI: "logprobs" given) */
    bool attention;   /* /v1/generate: attention rows per token */
    bool echo;        /* OpenAI: the prompt is part of the answer */
    bool include_usage; /* OpenAI stream_options: a usage chunk before [DONE] */
    int n;            /* choices per prompt */
} gen_params;

/* One sequence being generated. */
typedef struct gen_choice {
    model_seq *seq;
    int prompt;         /* its prompt: j->in[prompt] */
    uint64_t rng;
    int next;           /* token to feed at the next step */
    int n_out;          /* tokens generated */
    int keep;           /* tokens certainly in the answer (not part of a possible stop string) */
    int emitted;        /* tokens already sent as stream events */
    size_t text_sent;   /* bytes of the answer already sent as text */
    unsigned char *out; /* [max_tokens] generated bytes / token ids < 256 */
    int *ids;           /* [max_tokens] */
    float *lp;          /* [max_tokens] */
    int *top_ids;       /* [max_tokens, top] */
    float *top_lp;      /* [max_tokens, top] */
    float *attn;        /* [max_tokens, N, W] band rows, if asked */
    int *counts;        /* [V] times each token was generated (with penalties) */
    int *window;        /* [V] occurrences in the last last_n tokens of prompt + generated (with penalties) */
    const char *finish; /* "length" or "stop" once done */
    bool done;
    bool end_sent;      /* a stream has had this choice's final event */
} gen_choice;

typedef struct gen_writer gen_writer;

/* A generation's own state (/v1/generate, /v1/completions). */
typedef struct gen_state {
    gen_params gp;
    gen_choice *ch;           /* [n_ch]: choice k is choice k % gp.n of prompt k / gp.n */
    int n_ch;
    const gen_writer *writer; /* the answer's format, chosen at parse time */
    char id[48];              /* OpenAI: the completion's id */
    char session[48];         /* "session": the prompt continues that session's text; "" none */
    int since_checkpoint;     /* tokens (steps) since a stream's last checkpoint */
    int checkpoint_slot;      /* which of the two rotating checkpoints is next */
    unsigned char *ckpt_buf;  /* a checkpoint is written here, then copied into the store */
    size_t ckpt_cap;
    long long created;        /* OpenAI: its Unix time */
} gen_state;

/* How a generation's answer is written: the decoding loop (generate.c) hands
 * it events and never looks at the format.  In a stream: token i of choice k
 * with the text bytes it completes, choice k's end with the rest of its text,
 * and the end of the whole stream (before "[DONE]"); prologue (may be NULL)
 * comes before the first token.  Not streamed: the whole answer once every
 * choice is done.  Those returning int give -1 on out of memory. */
struct gen_writer {
    int (*prologue)(api_job *j, api_worker *w);
    void (*token)(api_job *j, int k, int i, const unsigned char *text, size_t len);
    void (*choice_end)(api_job *j, int k, const unsigned char *rest, size_t len);
    void (*stream_end)(api_job *j);
    int (*answer)(api_job *j, api_worker *w);
};

/* The answer formats: native.c (/v1/generate), openai.c (/v1/completions), chat.c (/v1/chat/completions). */
extern const gen_writer NATIVE_WRITER, OPENAI_WRITER, CHAT_WRITER;

/* /v1/score's own state. */
typedef struct score_state {
    int top_k;
    char *cands[API_MAX_CANDIDATES];
    int n_cands;
    bool many;        /* the inputs came as an array, answered as "results" */
    bool gain;        /* each token's attention gain */
} score_state;

/* /v1/attention's own state. */
typedef struct attention_state {
    bool dense;
    bool summary;     /* per-head figures of the maps */
    bool maps;        /* the maps themselves (false: the summary alone) */
} attention_state;

/* /v1/attribution's own state. */
typedef struct attribution_state {
    int target;       /* position whose token's log-probability is explained */
    int range;        /* positions before it that are occluded */
    int baseline;     /* the byte put in their place */
} attribution_state;

typedef struct job_ops job_ops;

/* What every job has; its kind's own state is behind `state`. */
struct api_job {
    const api_ctx *ctx;
    const job_ops *ops; /* its kind */
    void *state;      /* the kind's own (score_state, gen_state, ...) */
    api_model *am;    /* the model it runs on, held until the job is freed */
    const model *m;   /* am->m */
    bool stream;
    bool done;
    int status;       /* of a non-streaming answer */
    buf out;          /* produced, not yet taken */
    job_input *in;    /* [n_in] the inputs (prompts), each BOS first */
    int n_in;
    int output_tokens;
    char *path;       /* the request's (ids in it) */
    char owner[65];   /* whose sessions it may use */
    /* A stream's events are numbered: "id: TAG.N", TAG naming the request
     * (its key, path and body) and N counting from 1.  Events up to
     * skip_until are made but not sent (a resumed stream replays them). */
    char tag[17];
    int events;
    int skip_until;
    size_t event_start;
    int resume_after; /* Last-Event-ID's N; -1: not a resumed request */
    /* Timings (monotonic ns): made (validated), started by a worker, prompt run,
     * first token, done; 0 until then.  cached_tokens: input tokens not run again
     * (the prefix cache's, a session's). */
    int64_t t_made, t_started, t_prefilled, t_first, t_done;
    int cached_tokens;
    bool failed; /* ended with an error (a stream's error event included) */
};

/* What an endpoint that runs the model does with a job, one row per kind
 * (the endpoints' table in route.c points at these).
 *   fields    the body's fields it takes (NULL-terminated); any other is refused
 *   op        its kind of work in the GenAI metrics
 *   size      bytes of its state, allocated zeroed before parse
 *   parse     reads the request into j (inputs, state); -1 with e filled
 *   run       runs one job to its end, or (steps) prefills it and picks its first tokens
 *   start     (when set, instead of run) the same for jobs[n] of this kind together
 *   steps     its jobs then advance a token at a time in api_step
 *   fail      ends a job with an error (NULL: job_finish_error)
 *   drop      frees what the state holds (NULL: nothing)
 *   weight    sequences the job decodes at once (NULL: 1) */
struct job_ops {
    const char *const *fields;
    metrics_op op; /* gen_ai.operation.name in the GenAI metrics */
    size_t size;
    int (*parse)(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e);
    void (*run)(api_job *j, api_worker *w);
    void (*start)(api_job **jobs, int n, api_worker *w);
    bool steps;
    void (*fail)(api_job *j, const api_error *e);
    void (*drop)(api_job *j);
    int (*weight)(const api_job *j);
};

/* The kinds: score.c (score, attention), attribution.c, generate.c (generate, completions),
 * sessions.c (a session's making and append). */
extern const job_ops SCORE_JOB, ATTENTION_JOB, ATTRIBUTION_JOB, GENERATE_JOB, COMPLETIONS_JOB, SESSION_CREATE_JOB,
    SESSION_APPEND_JOB, CHAT_JOB;

/* A worker's scratch for one model: batches of up to the worker's cap. */
typedef struct worker_model {
    api_model *am;  /* held while the scratch exists */
    model_batch *batch;
    float *logits;  /* [cap, V] */
    float *attn;    /* [cap, N, W] */
    bool used;      /* by the last step */
} worker_model;

/* Per-worker scratch. */
struct api_worker {
    int cap;
    sampler *smp;
    float *lp;        /* [V] */
    int *idx;         /* [V] */
    model_seq **seqs; /* [cap] the batch of one step */
    int *tokens;      /* [cap] */
    int *first;       /* [cap] each job's first row in the batch */
    api_job **group;  /* [cap] the jobs of one model in a step */
    worker_model models[API_MAX_MODELS * 2]; /* a reload can leave two per slot for a while */
    int n_models;
};

/* The worker's scratch for am, made on first use; NULL on out of memory. */
worker_model *worker_scratch(api_worker *w, api_model *am);

/* job.c: "timings" of j's answer: queue, prompt and generation times, tokens
 * and their rates, written when its answer (or stream's final event) is. */
void json_timings(jw *w, const api_job *j);
/* job.c: ends j's answer o: "usage" {"input_tokens"}, "timings", the object
 * closed, and j finished. */
void job_answer_end(api_job *j, jw *o, int input_tokens);
/* job.c: marks a stream's job done (its last event written). */
void job_stream_done(api_job *j);

/* job.c: a job's whole answer.  job_finish marks the answer written into
 * j->out as the 200 answer; job_finish_error replaces it with e (a stream:
 * an error event and its end).  Both mark the job done. */
void job_finish(api_job *j);
void job_finish_error(api_job *j, const api_error *e);
/* job_finish_error with a 500 saying what failed. */
void job_fail_internal(api_job *j, const char *what);
/* job.c: model_forward_cached through the server's prefix cache, counting in
 * the metrics of j's model, and in the cached tokens of the job each sequence
 * belongs to (owners[b]; NULL: all j's), what each input took from it. */
int job_forward(api_job *j, api_job *const *owners, int B, const int *const *tokens, const int *lens,
                float *const *logprobs, model_seq *const *seqs, char *err, size_t errlen);
/* job.c: a job of kind ops for request q on ctx's model named in o (a 404
 * naming "model" if there is none), its state allocated; NULL with e filled. */
api_job *job_new(const api_ctx *ctx, const job_ops *ops, const api_request *q, const cJSON *o, api_error *e);

/* score.c: "tokens", ids[1..T) each with its log-probability from row
 * lp[t - 1] (rows of V; "gain" against own[t - 1] when own is given, the
 * top_k likeliest as "top"), then "next": the top_k of row lp[T - 1].
 * Returns the sum of the tokens' log-probabilities.  idx: [V] scratch. */
double score_write_tokens(jw *o, const int *ids, int T, const float *lp, int V, int top_k, const float *own, int *idx);

/* generate.c: a generation's run, shared by the routes that generate: the
 * members of their job_ops after the route's own fields and parse. */
void generate_start(api_job *j, api_worker *w);
void generate_fail(api_job *j, const api_error *e);
void generate_free(api_job *j);
int generate_weight(const api_job *j);
#define GENERATION_RUN                                                                                         \
    .size = sizeof(gen_state), .run = generate_start, .steps = true, .fail = generate_fail, .drop = generate_free, \
    .weight = generate_weight
/* openai.c: the OpenAI rendering of a token: its character if ASCII, else
 * "bytes:\xNN" (NUL too, as it cannot be a C string's character). */
void openai_token_str(int id, char out[16]);

/* openai.c: the end of a whole answer with its choices open: the choices
 * closed, "usage" with totals, "timings", the object closed. */
void openai_answer_end(api_job *j, jw *w);
/* openai.c: the end of a stream chunk with one choice open: its
 * "finish_reason" (NULL: null), the choices closed, "timings" if asked, the
 * event ended.  Shared by the completion and chat chunks. */
void openai_chunk_end(api_job *j, jw *w, const char *finish, bool timings);

/* openai.c: the most alternatives per token OpenAI's completions take. */
#define OPENAI_MAX_LOGPROBS 20
/* generate.c: length of the longest proper prefix of a stop string that out[n]
 * ends with: the bytes a stream holds back until it is clear they do not begin a stop. */
int stop_holdback(const gen_params *gp, const unsigned char *out, int n);
/* generate.c: "session": the job runs on the session's model and its prompt
 * continues the session's text; read before anything that depends on the model. */
int gen_parse_session(api_job *j, const cJSON *o, api_error *e);
/* generate.c: "stream_options" {"include_usage"} into gp; -1 with e naming it. */
int gen_parse_stream_options(gen_params *gp, const cJSON *o, api_error *e);
/* generate.c: the parse shared by both generation routes, after the route's own fields. */
int gen_parse_common(api_job *j, const cJSON *o, uint64_t seed, long long max_tokens_default, api_error *e);

/* inline.c: the endpoints answered without a worker.  Each fills r (success
 * or a 4xx) and returns 0, or -1 on out of memory. */
typedef struct inline_req {
    const api_ctx *ctx;
    const char *route;     /* the endpoint's path, for messages */
    const char *method;
    const char *path;      /* the request's path, for the ids in it */
    const char *owner;     /* whose sessions it may use */
    const char *model_arg; /* ?model=, or NULL */
    const char *body;
    size_t len;
    bool draining;
} inline_req;
typedef int (*inline_fn)(const inline_req *q, api_reply *r);
int inline_health(const inline_req *q, api_reply *r);
int inline_ready(const inline_req *q, api_reply *r);
int inline_metrics(const inline_req *q, api_reply *r);
int inline_model(const inline_req *q, api_reply *r);
int inline_models(const inline_req *q, api_reply *r);
int inline_model_by_id(const inline_req *q, api_reply *r);
int inline_tokenize(const inline_req *q, api_reply *r);
int inline_detokenize(const inline_req *q, api_reply *r);
/* sessions.c: makes session id (of j's owner) j's model, as a job on it
 * must run: -1 with e (404 no such session, 409 its model is gone). */
int session_job_model(api_job *j, const char *id, api_error *e);
/* sessions.c: session id's state into seq (fresh, of j's model) and its
 * next-token log-probabilities into next[V]; -1 with e (404, 409). */
int session_job_load(const api_job *j, const char *id, model_seq *seq, float *next, api_error *e);
/* chat.c */
int inline_chat_render(const inline_req *q, api_reply *r);
/* sessions.c: bytes of the largest signed state of a served model. */
size_t sessions_import_limit(const api_ctx *ctx);
/* sessions.c */
int inline_session(const inline_req *q, api_reply *r);
int inline_session_state(const inline_req *q, api_reply *r);
int inline_session_import(const inline_req *q, api_reply *r);

#endif
