/* inline.c -- endpoints answered on the HTTP thread because they run no
 * model: health, readiness, metrics, model information, tokenizer.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A metadata value with its natural JSON type: integers and finite numbers
 * as numbers, true/false as booleans, anything else as the string it is. */
static void typed_value(jw *w, const char *v)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
        jw_bool(w, v[0] == 't');
        return;
    }
    if (*v && strspn(v, "+-0123456789.eE") == strlen(v)) {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        if (!errno && *end == '\0' && isfinite(d)) {
            jw_double(w, d);
            return;
        }
    }
    jw_str(w, v);
}

/* The server's limits as /v1/model names them, in the order of write_limits. */
static const char *const LIMIT_NAMES[] = {"max_body_bytes", "max_input_tokens", "max_new_tokens",
                                          "max_attention_tokens", "max_inputs", "queue_size", "workers",
                                          "max_batch", "prefix_cache_bytes"};
#define N_LIMITS (sizeof LIMIT_NAMES / sizeof *LIMIT_NAMES)

static void write_limits(jw *w, const api_limits *l)
{
    const long long v[N_LIMITS] = {(long long)l->max_body_bytes, l->max_input_tokens, l->max_new_tokens,
                                   l->max_attention_tokens, l->max_inputs, l->queue_size, l->workers, l->max_batch,
                                   l->prefix_cache_bytes};
    for (size_t i = 0; i < N_LIMITS; i++)
        jw_kint(w, LIMIT_NAMES[i], v[i]);
}

/* Whether key is one the answer sets itself at the top level. */
static bool reserved_key(const char *key)
{
    static const char *const own[] = {"id",     "object",    "metadata", "config",     "parameters", "parameter_count",
                                      "sha256", "file", "load_seconds", "loaded_at", "kernels",    "limits"};
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (strcmp(key, own[i]) == 0)
            return true;
    for (size_t i = 0; i < N_LIMITS; i++)
        if (strcmp(key, LIMIT_NAMES[i]) == 0)
            return true;
    return false;
}

/* GET /v1/model: everything known of one served model. */
static void model_info(jw *w, const api_ctx *ctx, const api_model *am)
{
    const model *m = am->m;
    const model_config *c = model_get_config(m);
    jw_obj(w);
    jw_kstr(w, "id", am->name);
    jw_kstr(w, "object", "model");
    /* The metadata's fields also at the top level, for clients that read them flat. */
    for (int i = 0; i < model_meta_count(m); i++) {
        const char *k, *v;
        model_meta_at(m, i, &k, &v);
        if (!reserved_key(k)) {
            jw_key(w, k);
            typed_value(w, v);
        }
    }
    jw_kobj(w, "metadata");
    for (int i = 0; i < model_meta_count(m); i++) {
        const char *k, *v;
        model_meta_at(m, i, &k, &v);
        jw_key(w, k);
        typed_value(w, v);
    }
    jw_obj_end(w);
    jw_kobj(w, "config");
    jw_kstr(w, "cell", model_cell_name(c->cell));
    jw_kstr(w, "attention", model_attention_name(c->attention));
    jw_kint(w, "vocab_size", c->vocab);
    jw_kint(w, "embed_dim", c->embed);
    jw_kint(w, "hidden", c->hidden);
    jw_kint(w, "layers", c->layers);
    jw_kint(w, "window", c->window);
    jw_kint(w, "heads", c->heads);
    jw_kint(w, "bos_id", c->bos_id);
    jw_obj_end(w);
    jw_kint(w, "parameters", (long long)model_param_count(m));
    jw_kint(w, "parameter_count", (long long)model_param_count(m));
    jw_kstr(w, "sha256", model_sha256(m));
    jw_kstr(w, "file", am->path);
    jw_kdouble(w, "load_seconds", round(am->load_seconds * 1e6) / 1e6);
    jw_kint(w, "loaded_at", am->loaded_at);
    jw_kstr(w, "kernels", model_kernels(m));
    jw_kobj(w, "limits");
    write_limits(w, &ctx->limits);
    jw_obj_end(w);
    write_limits(w, &ctx->limits);
    jw_obj_end(w);
}

/* Seconds since 1970 of an ISO 8601 UTC time "YYYY-MM-DDTHH:MM:SSZ"; 0 if it is not one. */
static long long unix_time(const char *iso)
{
    int y, mo, d, h = 0, mi = 0, s = 0;
    if (!iso || sscanf(iso, "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &s) < 3 || mo < 1 || mo > 12)
        return 0;
    /* Days from 1970-01-01 to y-mo-d in the proleptic Gregorian calendar. */
    y -= mo <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    long long doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    return days * 86400 + h * 3600 + mi * 60 + s;
}

/* The OpenAI model object of a served model. */
static void openai_model(jw *w, const api_model *am)
{
    jw_obj(w);
    jw_kstr(w, "id", am->name);
    jw_kstr(w, "object", "model");
    jw_kint(w, "created", unix_time(model_meta(am->m, "created")));
    jw_kstr(w, "owned_by", "attnlm");
    jw_obj_end(w);
}

static int models_list(const api_ctx *ctx, api_reply *r)
{
    buf b = {0};
    jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "object", "list");
    jw_karr(&w, "data");
    for (int i = 0; i < api_models_count(ctx->models); i++) {
        api_model *am = api_model_acquire_at(ctx->models, i);
        openai_model(&w, am);
        api_model_release(am);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    return json_reply(&b, 200, r);
}

static int not_found(const char *name, api_reply *r)
{
    api_error e;
    api_error_set(&e, 404, "model", "no model named \"%.100s\" is served here (GET /v1/models lists them)", name);
    return api_error_reply(&e, r);
}

/* GET /v1/models/{id} (openai) and GET /v1/model?model=ID. */
static int one_model(const api_ctx *ctx, const char *name, bool openai, api_reply *r)
{
    api_model *am = api_model_acquire(ctx->models, name);
    if (!am)
        return not_found(name, r);
    buf b = {0};
    jw w;
    jw_init(&w, &b);
    if (openai)
        openai_model(&w, am);
    else
        model_info(&w, ctx, am);
    api_model_release(am);
    return json_reply(&b, 200, r);
}

/* The body of tokenize/detokenize, with its fields and "model" checked (404 if unknown). */
static cJSON *tokenizer_body(const api_ctx *ctx, const char *route, const char *body, size_t len,
                             const char *const *fields, api_error *e)
{
    cJSON *o = json_parse_object(body, len, e);
    if (!o)
        return NULL;
    if (json_check_fields(o, fields, route, e) < 0) {
        cJSON_Delete(o);
        return NULL;
    }
    api_model *am = json_get_model(ctx, o, e);
    if (!am) {
        cJSON_Delete(o);
        return NULL;
    }
    api_model_release(am);
    return o;
}

static int tokenize(const api_ctx *ctx, const char *route, const char *body, size_t len, api_reply *r)
{
    static const char *const fields[] = {"model", "text", NULL};
    api_error e;
    cJSON *o = tokenizer_body(ctx, route, body, len, fields, &e);
    const char *text = NULL;
    if (o && json_get_string(o, "text", &text, &e) == 0)
        api_error_set(&e, 400, "text", "text is required");
    if (!o || !text) {
        cJSON_Delete(o);
        return api_error_reply(&e, r);
    }
    buf b = {0};
    jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_karr(&w, "tokens");
    for (const char *p = text; *p; p++)
        json_token(&w, (unsigned char)*p);
    jw_arr_end(&w);
    jw_obj_end(&w);
    cJSON_Delete(o);
    return json_reply(&b, 200, r);
}

static int detokenize(const api_ctx *ctx, const char *route, const char *body, size_t len, api_reply *r)
{
    static const char *const fields[] = {"model", "ids", NULL};
    api_error e;
    cJSON *o = tokenizer_body(ctx, route, body, len, fields, &e);
    if (!o)
        return api_error_reply(&e, r);
    job_input in = {0};
    json_get_ids(o, ctx->limits.max_input_tokens, &in, &e);
    cJSON_Delete(o);
    int *ids = in.ids, n = in.n;
    if (!ids)
        return api_error_reply(&e, r);
    unsigned char *bytes = malloc((size_t)n + 1);
    if (!bytes) {
        free(ids);
        return -1;
    }
    size_t nb = tok_decode(ids, (size_t)n, (char *)bytes);
    free(ids);
    buf b = {0};
    jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_key(&w, "text");
    jw_bytes(&w, bytes, nb);
    jw_obj_end(&w);
    free(bytes);
    return json_reply(&b, 200, r);
}

static int text_reply(const char *s, int status, api_reply *r)
{
    r->body = strdup(s);
    if (!r->body)
        return -1;
    r->len = strlen(s);
    r->status = status;
    r->content_type = "application/json";
    return 0;
}

/* The first one or two integers of a small file (b may be NULL); how many were read. */
static int read_numbers(const char *path, long long *a, long long *b)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = b ? fscanf(f, "%lld %lld", a, b) : fscanf(f, "%lld", a);
    fclose(f);
    return n < 0 ? 0 : n;
}

static int metrics(const api_ctx *ctx, bool draining, api_reply *r)
{
    metrics_view v = {.n_models = api_models_count(ctx->models), .ready = !draining,
                      .resident_bytes = -1, .memory_limit = -1, .queue_capacity = ctx->limits.queue_size};
    long long pages_total, pages_resident;
    if (read_numbers("/proc/self/statm", &pages_total, &pages_resident) == 2)
        v.resident_bytes = pages_resident * sysconf(_SC_PAGESIZE);
    /* cgroup v2, else v1; "max" (no limit) reads as no number */
    if (read_numbers("/sys/fs/cgroup/memory.max", &v.memory_limit, NULL) < 1 &&
        read_numbers("/sys/fs/cgroup/memory/memory.limit_in_bytes", &v.memory_limit, NULL) < 1)
        v.memory_limit = -1;
    if (v.memory_limit >= 1LL << 60) /* v1's "no limit" is a huge number */
        v.memory_limit = -1;
    if (v.memory_limit < 0 && sysconf(_SC_PHYS_PAGES) > 0) /* no limit of its own: the machine's memory */
        v.memory_limit = (long long)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE);
    for (int i = 0; i < METRICS_ROUTES; i++)
        v.routes[i] = i < API_EP_COUNT ? api_endpoint_path((api_endpoint)i) : "other";
    api_model *held[METRICS_MODELS];
    for (int i = 0; i < v.n_models; i++) {
        api_model *am = held[i] = api_model_acquire_at(ctx->models, i);
        v.model[i].name = am->name;
        v.model[i].sha256 = model_sha256(am->m);
        v.model[i].parameters = (unsigned long long)model_param_count(am->m);
        v.model[i].load_seconds = am->load_seconds;
    }
    if (ctx->prefix) {
        prefix_stats st;
        prefix_cache_stats(ctx->prefix, &st);
        v.prefix_cache = true;
        v.prefix_bytes = st.bytes;
        v.prefix_limit = st.limit;
        v.prefix_entries = st.entries;
        v.prefix_evictions = st.evictions;
    }
    if (ctx->sessions && session_store_counts(ctx->sessions)) {
        int n;
        size_t bytes;
        session_store_usage(ctx->sessions, &n, &bytes);
        v.sessions_on = true;
        v.sessions = (unsigned long long)n;
        v.session_bytes = bytes;
    }
    r->body = metrics_render(ctx->metrics, &v, &r->len);
    for (int i = 0; i < v.n_models; i++)
        api_model_release(held[i]);
    r->status = 200;
    r->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return r->body ? 0 : -1;
}

int inline_health(const inline_req *q, api_reply *r)
{
    (void)q;
    return text_reply("{\"status\":\"ok\"}", 200, r);
}

int inline_ready(const inline_req *q, api_reply *r)
{
    return q->draining ? text_reply("{\"status\":\"draining\"}", 503, r) : text_reply("{\"status\":\"ready\"}", 200, r);
}

int inline_metrics(const inline_req *q, api_reply *r) { return metrics(q->ctx, q->draining, r); }
int inline_model(const inline_req *q, api_reply *r) { return one_model(q->ctx, q->model_arg, false, r); }
int inline_models(const inline_req *q, api_reply *r) { return models_list(q->ctx, r); }
int inline_model_by_id(const inline_req *q, api_reply *r) { return one_model(q->ctx, strrchr(q->path, '/') + 1, true, r); }
int inline_tokenize(const inline_req *q, api_reply *r) { return tokenize(q->ctx, q->route, q->body, q->len, r); }
int inline_detokenize(const inline_req *q, api_reply *r) { return detokenize(q->ctx, q->route, q->body, q->len, r); }
