/* metrics.c -- counters and histograms behind GET /metrics.
 *
 * Updates are relaxed atomic increments from any thread; a scrape reads each
 * figure once, so a histogram's buckets may be a request apart from its count
 * under load, which Prometheus tolerates.
 */
#define _POSIX_C_SOURCE 200809L
#include "metrics.h"

#include "buf.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int STATUSES[METRICS_STATUSES - 1] = {200, 204, 304, 400, 401, 404, 405, 408, 409,
                                                   413, 415, 429, 499, 500, 503, 504};
#define N_KNOWN_STATUSES (METRICS_STATUSES - 1) /* the slot after them counts anything else */

static const double DUR_BOUNDS[METRICS_DUR_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
static const int BATCH_BOUNDS[METRICS_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128};

/* The bucket boundaries the OpenTelemetry GenAI semantic conventions give each instrument. */
static const double GENAI_DUR[METRICS_GENAI_DUR] = {0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64,
                                                    1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double GENAI_TTFT[METRICS_GENAI_TTFT] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                                      0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
static const double GENAI_TPOT[METRICS_GENAI_TPOT] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                      0.3,  0.4,   0.5,  0.75,  1.0, 2.5};
static const char *const OP_NAMES[METRICS_OPS] = {"generate_content", "text_completion", "chat", "score",
                                                  "attention", "attribution", "session"};

static void observe(metrics_hist *h, const double *bounds, int n, double seconds)
{
    for (int b = 0; b < n; b++)
        if (seconds <= bounds[b]) {
            atomic_fetch_add_explicit(&h->bucket[b], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (unsigned long)(seconds * 1e6 + 0.5), memory_order_relaxed);
}

void metrics_genai(api_metrics *m, int slot, metrics_op op, double duration, double ttft, double tpot)
{
    if (slot < 0 || slot >= METRICS_MODELS || op >= METRICS_OPS)
        return;
    metrics_model *mm = &m->model[slot];
    observe(&mm->request_duration[op], GENAI_DUR, METRICS_GENAI_DUR, duration);
    if ((int)op < METRICS_GEN_OPS && ttft >= 0)
        observe(&mm->time_to_first_token[op], GENAI_TTFT, METRICS_GENAI_TTFT, ttft);
    if ((int)op < METRICS_GEN_OPS && tpot >= 0)
        observe(&mm->time_per_output_token[op], GENAI_TPOT, METRICS_GENAI_TPOT, tpot);
}

static int status_slot(int status)
{
    for (int i = 0; i < N_KNOWN_STATUSES; i++)
        if (STATUSES[i] == status)
            return i;
    return N_KNOWN_STATUSES;
}

void metrics_request(api_metrics *m, int route, int status, double seconds)
{
    if (route < 0 || route >= METRICS_ROUTES)
        route = METRICS_ROUTES - 1;
    atomic_fetch_add_explicit(&m->requests[route][status_slot(status)], 1, memory_order_relaxed);
    for (int b = 0; b < METRICS_DUR_BUCKETS; b++)
        if (seconds <= DUR_BOUNDS[b]) {
            atomic_fetch_add_explicit(&m->dur_bucket[route][b], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&m->dur_count[route], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->dur_sum_us[route], (unsigned long)(seconds * 1e6 + 0.5), memory_order_relaxed);
}

/* Counts value in the first bucket whose bound holds it, plus count and sum. */
static void observe_size(atomic_ulong *bucket, atomic_ulong *count, atomic_ulong *sum, int value)
{
    for (int b = 0; b < METRICS_BATCH_BUCKETS; b++)
        if (value <= BATCH_BOUNDS[b]) {
            atomic_fetch_add_explicit(&bucket[b], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(sum, (unsigned long)value, memory_order_relaxed);
}

void metrics_batch(api_metrics *m, int batch_size)
{
    observe_size(m->batch_bucket, &m->batch_count, &m->batch_sum, batch_size);
}

void metrics_forward_batch(api_metrics *m, int batch_size)
{
    observe_size(m->fwd_bucket, &m->fwd_count, &m->fwd_sum, batch_size);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* A histogram of sizes in the exposition format. */
static void put_sizes(buf *t, const char *name, const char *help, atomic_ulong *bucket, unsigned long count,
                      unsigned long sum)
{
    buf_printf(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long cum = 0;
    for (int b = 0; b < METRICS_BATCH_BUCKETS; b++) {
        cum += LOAD(bucket[b]);
        buf_printf(t, "%s_bucket{le=\"%d\"} %lu\n", name, BATCH_BOUNDS[b], cum);
    }
    buf_printf(t, "%s_bucket{le=\"+Inf\"} %lu\n%s_sum %lu\n%s_count %lu\n", name, count, name, sum, name, count);
}

/* A label value: the exposition format escapes backslash, quote and newline. */
static void put_label(buf *t, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            buf_putc(t, '\\');
        if (*v == '\n')
            buf_puts(t, "\\n");
        else
            buf_putc(t, *v);
    }
}

/* One per-model sample: name{model="..."} value. */
static void put_model_sample(buf *t, const char *name, const char *model, const char *extra, const char *value)
{
    buf_printf(t, "%s{model=\"", name);
    put_label(t, model);
    buf_printf(t, "\"%s} %s\n", extra, value);
}

/* The figures kept or reported per served model, one metric family each. */
typedef enum {
    MF_INPUT,
    MF_GENERATED,
    MF_PREFIX_HITS,
    MF_PREFIX_MISSES,
    MF_PREFIX_REUSED,
    MF_INFO,
    MF_LOAD,
    MF_PARAMS,
    MF_RELOADS
} model_family;

static const struct {
    const char *name, *type, *help;
} FAMILIES[] = {
    [MF_INPUT] = {"attnlm_input_tokens_total", "counter", "Tokens read from requests (prompts, scored and attended text)."},
    [MF_GENERATED] = {"attnlm_generated_tokens_total", "counter", "Tokens generated."},
    [MF_PREFIX_HITS] = {"attnlm_prefix_cache_hits_total", "counter",
                        "Inputs whose forward pass started from a cached prefix state."},
    [MF_PREFIX_MISSES] = {"attnlm_prefix_cache_misses_total", "counter",
                          "Inputs longer than one cached chunk that found no cached prefix."},
    [MF_PREFIX_REUSED] = {"attnlm_prefix_cache_reused_tokens_total", "counter",
                          "Input tokens not run again because their prefix state was cached."},
    [MF_INFO] = {"attnlm_model_info", "gauge", "The served models: name and file hash."},
    [MF_LOAD] = {"attnlm_model_load_seconds", "gauge", "Time taken to load and check each model file."},
    [MF_PARAMS] = {"attnlm_model_parameters", "gauge", "Parameters of each served model."},
    [MF_RELOADS] = {"attnlm_model_reloads_total", "counter", "Reloads of each model's file (SIGHUP), by result."},
};

static void put_model_family(buf *t, model_family f, api_metrics *m, const metrics_view *v)
{
    const char *name = FAMILIES[f].name;
    buf_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, FAMILIES[f].help, name, FAMILIES[f].type);
    for (int i = 0; i < v->n_models; i++) {
        char val[64], extra[96] = "";
        switch (f) {
        case MF_INPUT: snprintf(val, sizeof val, "%lu", LOAD(m->model[i].input_tokens)); break;
        case MF_GENERATED: snprintf(val, sizeof val, "%lu", LOAD(m->model[i].generated_tokens)); break;
        case MF_PREFIX_HITS: snprintf(val, sizeof val, "%lu", LOAD(m->model[i].prefix_hits)); break;
        case MF_PREFIX_MISSES: snprintf(val, sizeof val, "%lu", LOAD(m->model[i].prefix_misses)); break;
        case MF_PREFIX_REUSED: snprintf(val, sizeof val, "%lu", LOAD(m->model[i].prefix_reused)); break;
        case MF_INFO:
            snprintf(val, sizeof val, "1");
            snprintf(extra, sizeof extra, ",sha256=\"%s\"", v->model[i].sha256);
            break;
        case MF_LOAD: snprintf(val, sizeof val, "%.6f", v->model[i].load_seconds); break;
        case MF_PARAMS: snprintf(val, sizeof val, "%llu", v->model[i].parameters); break;
        case MF_RELOADS:
            snprintf(val, sizeof val, "%lu", LOAD(m->model[i].reloads_ok));
            put_model_sample(t, name, v->model[i].name, ",result=\"ok\"", val);
            snprintf(val, sizeof val, "%lu", LOAD(m->model[i].reloads_failed));
            snprintf(extra, sizeof extra, ",result=\"failed\"");
            break;
        }
        put_model_sample(t, name, v->model[i].name, extra, val);
    }
}

/* One GenAI histogram family: a series per (operation, model) that has observations. */
static void put_genai(buf *t, api_metrics *m, const metrics_view *v, const char *name, const char *help,
                      size_t member, int n_ops, const double *bounds, int n_bounds)
{
    buf_printf(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < v->n_models; i++)
        for (int op = 0; op < n_ops; op++) {
            metrics_hist *h = (metrics_hist *)((char *)&m->model[i] + member) + op;
            unsigned long count = LOAD(h->count), cum = 0;
            if (!count)
                continue;
            buf lab = {0};
            buf_printf(&lab, "gen_ai_operation_name=\"%s\",gen_ai_request_model=\"", OP_NAMES[op]);
            put_label(&lab, v->model[i].name);
            buf_putc(&lab, '"');
            const char *labels = buf_cstr(&lab);
            if (!labels)
                continue;
            for (int b = 0; b < n_bounds; b++) {
                cum += LOAD(h->bucket[b]);
                buf_printf(t, "%s_bucket{%s,le=\"%g\"} %lu\n", name, labels, bounds[b], cum);
            }
            buf_printf(t, "%s_bucket{%s,le=\"+Inf\"} %lu\n", name, labels, count);
            buf_printf(t, "%s_sum{%s} %.6f\n", name, labels, (double)LOAD(h->sum_us) / 1e6);
            buf_printf(t, "%s_count{%s} %lu\n", name, labels, count);
            buf_free(&lab);
        }
}

char *metrics_render(const api_metrics *mc, const metrics_view *v, size_t *len)
{
    const char *const *route_names = v->routes;
    api_metrics *m = (api_metrics *)mc; /* atomic loads of a const object need a non-const pointer in C11 */
    buf t = {0};

    buf_printf(&t, "# HELP attnlm_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE attnlm_requests_total counter\n");
    for (int r = 0; r < METRICS_ROUTES; r++)
        for (int s = 0; s <= N_KNOWN_STATUSES; s++) {
            unsigned long n = LOAD(m->requests[r][s]);
            if (!n)
                continue;
            if (s < N_KNOWN_STATUSES)
                buf_printf(&t, "attnlm_requests_total{route=\"%s\",status=\"%d\"} %lu\n", route_names[r], STATUSES[s], n);
            else
                buf_printf(&t, "attnlm_requests_total{route=\"%s\",status=\"other\"} %lu\n", route_names[r], n);
        }

    buf_printf(&t, "# HELP attnlm_request_duration_seconds Time from a request's arrival to its last byte queued.\n"
            "# TYPE attnlm_request_duration_seconds histogram\n");
    for (int r = 0; r < METRICS_ROUTES; r++) {
        unsigned long count = LOAD(m->dur_count[r]), cum = 0;
        if (!count)
            continue;
        for (int b = 0; b < METRICS_DUR_BUCKETS; b++) {
            cum += LOAD(m->dur_bucket[r][b]);
            buf_printf(&t, "attnlm_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %lu\n", route_names[r],
                DUR_BOUNDS[b], cum);
        }
        buf_printf(&t, "attnlm_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %lu\n", route_names[r], count);
        buf_printf(&t, "attnlm_request_duration_seconds_sum{route=\"%s\"} %.6f\n", route_names[r],
            (double)LOAD(m->dur_sum_us[r]) / 1e6);
        buf_printf(&t, "attnlm_request_duration_seconds_count{route=\"%s\"} %lu\n", route_names[r], count);
    }

    put_model_family(&t, MF_INPUT, m, v);
    put_model_family(&t, MF_GENERATED, m, v);
    if (v->prefix_cache) {
        for (model_family f = MF_PREFIX_HITS; f <= MF_PREFIX_REUSED; f++)
            put_model_family(&t, f, m, v);
        buf_printf(&t,
                   "# HELP attnlm_prefix_cache_bytes Bytes the prefix-state cache holds.\n"
                   "# TYPE attnlm_prefix_cache_bytes gauge\nattnlm_prefix_cache_bytes %llu\n"
                   "# HELP attnlm_prefix_cache_limit_bytes The most it may hold (--prefix-cache).\n"
                   "# TYPE attnlm_prefix_cache_limit_bytes gauge\nattnlm_prefix_cache_limit_bytes %llu\n"
                   "# HELP attnlm_prefix_cache_entries Prefix states held.\n"
                   "# TYPE attnlm_prefix_cache_entries gauge\nattnlm_prefix_cache_entries %llu\n"
                   "# HELP attnlm_prefix_cache_evictions_total Prefix states dropped to stay within the limit.\n"
                   "# TYPE attnlm_prefix_cache_evictions_total counter\nattnlm_prefix_cache_evictions_total %llu\n",
                   v->prefix_bytes, v->prefix_limit, v->prefix_entries, v->prefix_evictions);
        buf_printf(&t,
                   "# HELP attnlm_prefix_cache_usage_ratio Share of the prefix-state cache in use (bytes held over "
                   "the limit), the cache gauge an inference gateway reads.\n"
                   "# TYPE attnlm_prefix_cache_usage_ratio gauge\nattnlm_prefix_cache_usage_ratio %.6f\n",
                   v->prefix_limit ? (double)v->prefix_bytes / (double)v->prefix_limit : 0.0);
    }
    put_genai(&t, m, v, "gen_ai_server_request_duration_seconds",
              "Generative AI server request duration, from a request's validation to its last token or answer "
              "(OpenTelemetry gen_ai.server.request.duration).",
              offsetof(metrics_model, request_duration), METRICS_OPS, GENAI_DUR, METRICS_GENAI_DUR);
    put_genai(&t, m, v, "gen_ai_server_time_to_first_token_seconds",
              "Time to generate the first token, from the request's validation (gen_ai.server.time_to_first_token).",
              offsetof(metrics_model, time_to_first_token), METRICS_GEN_OPS, GENAI_TTFT, METRICS_GENAI_TTFT);
    put_genai(&t, m, v, "gen_ai_server_time_per_output_token_seconds",
              "Time per output token after the first (gen_ai.server.time_per_output_token).",
              offsetof(metrics_model, time_per_output_token), METRICS_GEN_OPS, GENAI_TPOT, METRICS_GENAI_TPOT);
    buf_printf(&t,
               "# HELP attnlm_ready Whether the server takes new work (0 while it drains, as /ready's 503).\n"
               "# TYPE attnlm_ready gauge\nattnlm_ready %d\n",
               v->ready ? 1 : 0);
    if (v->resident_bytes >= 0)
        buf_printf(&t,
                   "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                   "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
                   v->resident_bytes);
    if (v->memory_limit >= 0)
        buf_printf(&t,
                   "# HELP attnlm_memory_limit_bytes The memory the server may use: its cgroup's limit (a container's), else the machine's.\n"
                   "# TYPE attnlm_memory_limit_bytes gauge\nattnlm_memory_limit_bytes %lld\n",
                   v->memory_limit);
    buf_printf(&t,
               "# HELP attnlm_queue_capacity Requests that may wait for a worker (--queue); beyond, 503.\n"
               "# TYPE attnlm_queue_capacity gauge\nattnlm_queue_capacity %ld\n",
               v->queue_capacity);
    buf_printf(&t,
               "# HELP attnlm_stream_checkpoints_total Checkpoints of streams, by whether they were stored.\n"
               "# TYPE attnlm_stream_checkpoints_total counter\n"
               "attnlm_stream_checkpoints_total{result=\"stored\"} %lu\n"
               "attnlm_stream_checkpoints_total{result=\"failed\"} %lu\n"
               "# HELP attnlm_stream_checkpoint_bytes_total Bytes of the checkpoints stored.\n"
               "# TYPE attnlm_stream_checkpoint_bytes_total counter\nattnlm_stream_checkpoint_bytes_total %lu\n"
               "# HELP attnlm_streams_resumed_total Streams resumed after an event (Last-Event-ID).\n"
               "# TYPE attnlm_streams_resumed_total counter\nattnlm_streams_resumed_total %lu\n",
               atomic_load(&m->checkpoints_written), atomic_load(&m->checkpoints_failed),
               atomic_load(&m->checkpoint_bytes), atomic_load(&m->streams_resumed));
    if (v->sessions_on)
        buf_printf(&t,
                   "# HELP attnlm_sessions Sessions held.\n"
                   "# TYPE attnlm_sessions gauge\nattnlm_sessions %llu\n"
                   "# HELP attnlm_session_bytes Bytes of the session states held.\n"
                   "# TYPE attnlm_session_bytes gauge\nattnlm_session_bytes %llu\n",
                   v->sessions, v->session_bytes);

    buf_printf(&t,
        "# HELP attnlm_queue_depth Requests waiting for a worker.\n"
        "# TYPE attnlm_queue_depth gauge\nattnlm_queue_depth %ld\n"
        "# HELP attnlm_active_sequences Sequences being decoded by the workers.\n"
        "# TYPE attnlm_active_sequences gauge\nattnlm_active_sequences %ld\n"
        "# HELP attnlm_requests_in_flight Requests received and not yet answered.\n"
        "# TYPE attnlm_requests_in_flight gauge\nattnlm_requests_in_flight %ld\n",
        LOAD(m->queue_depth), LOAD(m->active_sequences), LOAD(m->in_flight));

    put_sizes(&t, "attnlm_batch_size", "Sequences advanced together by one decoding step.", m->batch_bucket,
              LOAD(m->batch_count), LOAD(m->batch_sum));
    put_sizes(&t, "attnlm_forward_batch_size", "Scoring requests sharing one full forward pass.", m->fwd_bucket,
              LOAD(m->fwd_count), LOAD(m->fwd_sum));

    buf_printf(&t,
        "# HELP attnlm_rejected_total Requests refused because the queue was full or the server draining.\n"
        "# TYPE attnlm_rejected_total counter\nattnlm_rejected_total %lu\n"
        "# HELP attnlm_cancelled_total Requests whose client went away before the answer was complete.\n"
        "# TYPE attnlm_cancelled_total counter\nattnlm_cancelled_total %lu\n"
        "# HELP attnlm_timeouts_total Requests that ran past the deadline.\n"
        "# TYPE attnlm_timeouts_total counter\nattnlm_timeouts_total %lu\n"
        "# HELP attnlm_stalled_total Streams ended because their client read nothing for too long.\n"
        "# TYPE attnlm_stalled_total counter\nattnlm_stalled_total %lu\n"
        "# HELP attnlm_connections_cut_total Connections closed for sending a request too slowly.\n"
        "# TYPE attnlm_connections_cut_total counter\n"
        "attnlm_connections_cut_total{reason=\"header\"} %lu\n"
        "attnlm_connections_cut_total{reason=\"body\"} %lu\n",
        LOAD(m->rejected_queue_full), LOAD(m->cancelled), LOAD(m->timeouts), LOAD(m->stalled),
        LOAD(m->conns_cut_header), LOAD(m->conns_cut_body));

    for (model_family f = MF_INFO; f <= MF_RELOADS; f++)
        put_model_family(&t, f, m, v);
    buf_printf(&t,
               "# HELP attnlm_workers Worker threads running the models.\n"
               "# TYPE attnlm_workers gauge\nattnlm_workers %ld\n",
               m->workers);

    if (t.oom) {
        buf_free(&t);
        return NULL;
    }
    return buf_take(&t, len);
}
