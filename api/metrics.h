/* metrics.h -- the service's Prometheus metrics: counters and histograms
 * updated by any thread with atomics, rendered in the text exposition format.
 *
 * Every name carries the attnlm_ prefix; counters end in _total and durations
 * in _seconds.
 */
#ifndef ATTNLM_METRICS_H
#define ATTNLM_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#define METRICS_ROUTES 21     /* the routes of api.h plus "other" */
#define METRICS_MODELS 16     /* served models (API_MAX_MODELS) */
#define METRICS_STATUSES 17   /* distinct status codes counted (see metrics.c), plus "other" */
#define METRICS_DUR_BUCKETS 14
#define METRICS_BATCH_BUCKETS 8

/* Kinds of work, the values of gen_ai_operation_name. */
typedef enum {
    METRICS_OP_GENERATE,   /* generate_content: /v1/generate */
    METRICS_OP_COMPLETION, /* text_completion: /v1/completions */
    METRICS_OP_CHAT,       /* chat: /v1/chat/completions */
    METRICS_OP_SCORE,      /* score: /v1/score */
    METRICS_OP_ATTENTION,  /* attention: /v1/attention */
    METRICS_OP_ATTRIBUTION,/* attribution: /v1/attribution */
    METRICS_OP_SESSION,    /* session: making a session, appending to one */
    METRICS_OPS
} metrics_op;
#define METRICS_GEN_OPS 3 /* the ones that generate, first: time to first token and per output token */
#define METRICS_GENAI_DUR 14
#define METRICS_GENAI_TTFT 16
#define METRICS_GENAI_TPOT 13

/* One histogram: a count per bucket (not cumulative), the count and the sum in microseconds. */
typedef struct metrics_hist {
    atomic_ulong bucket[16];
    atomic_ulong count;
    atomic_ulong sum_us;
} metrics_hist;

/* The figures kept per served model (by slot). */
typedef struct metrics_model {
    atomic_ulong input_tokens;
    atomic_ulong generated_tokens;
    atomic_ulong reloads_ok;
    atomic_ulong reloads_failed;
    atomic_ulong prefix_hits;   /* inputs started from a cached prefix state */
    atomic_ulong prefix_misses; /* inputs long enough to have one that found none */
    atomic_ulong prefix_reused; /* tokens taken from the cache */
    /* OpenTelemetry GenAI server metrics, by operation */
    metrics_hist request_duration[METRICS_OPS];
    metrics_hist time_to_first_token[METRICS_GEN_OPS];
    metrics_hist time_per_output_token[METRICS_GEN_OPS];
} metrics_model;

/* All figures; zero-initialised, then workers set once before serving. */
typedef struct api_metrics {
    atomic_ulong requests[METRICS_ROUTES][METRICS_STATUSES];
    atomic_ulong dur_bucket[METRICS_ROUTES][METRICS_DUR_BUCKETS]; /* cumulative at render */
    atomic_ulong dur_count[METRICS_ROUTES];
    atomic_ulong dur_sum_us[METRICS_ROUTES];
    metrics_model model[METRICS_MODELS];
    atomic_ulong batch_bucket[METRICS_BATCH_BUCKETS];
    atomic_ulong batch_count;
    atomic_ulong batch_sum;
    atomic_ulong fwd_bucket[METRICS_BATCH_BUCKETS];
    atomic_ulong fwd_count;
    atomic_ulong fwd_sum;
    atomic_ulong rejected_queue_full;
    atomic_ulong cancelled;  /* generations stopped by a client that went away */
    atomic_ulong timeouts;
    atomic_ulong stalled;    /* streams ended because their client read nothing for too long */
    atomic_ulong conns_cut_header; /* connections cut for not sending a request header in time */
    atomic_ulong conns_cut_body;   /* connections cut for sending a body too slowly */
    atomic_ulong checkpoints_written; /* streams' checkpoints stored */
    atomic_ulong checkpoints_failed;  /* not stored: the store was full (or memory short) */
    atomic_ulong checkpoint_bytes;    /* bytes of the checkpoints stored */
    atomic_ulong streams_resumed;     /* streams resumed from a checkpoint (Last-Event-ID) */
    atomic_long queue_depth;
    atomic_long active_sequences;
    atomic_long in_flight;
    long workers;
} api_metrics;

/* What a scrape reports besides the counters: the route names, and per
 * served model its name, file hash, parameters and load time. */
typedef struct metrics_view {
    const char *routes[METRICS_ROUTES];
    int n_models;
    struct {
        const char *name;
        const char *sha256;
        unsigned long long parameters;
        double load_seconds;
    } model[METRICS_MODELS];
    bool prefix_cache; /* whether there is one; then its figures */
    unsigned long long prefix_bytes, prefix_limit, prefix_entries, prefix_evictions;
    bool ready;       /* /ready's answer: 0 while draining */
    long long resident_bytes; /* the process's resident memory, -1 unknown */
    long long memory_limit;   /* its cgroup's memory limit, else the machine's memory; -1 unknown */
    long queue_capacity;      /* --queue */
    bool sessions_on; /* whether there is a session store; then its figures */
    unsigned long long sessions, session_bytes;
} metrics_view;

/* route is an index from api_endpoint (or METRICS_ROUTES-1 for unknown paths). */
void metrics_request(api_metrics *m, int route, int status, double seconds);
void metrics_batch(api_metrics *m, int batch_size);
/* A successful request of model slot and kind op: its duration, and for the
 * ones that generate its time to first token and per output token after the
 * first (negative: none). */
void metrics_genai(api_metrics *m, int slot, metrics_op op, double duration, double ttft, double tpot);
/* A full forward pass shared by this many scoring requests. */
void metrics_forward_batch(api_metrics *m, int batch_size);
/* Writes the exposition text into a buffer the caller frees; NULL on out of memory. */
char *metrics_render(const api_metrics *m, const metrics_view *v, size_t *len);

#endif
