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

/* A metadata value with its natural JSON type: integers and finite numbers
 * as numbers, true/false as booleans, anything else as the string it is. */
static cJSON *typed_value(const char *v)
{
    if (strcmp(v, "true") == 0)
        return cJSON_CreateTrue();
    if (strcmp(v, "false") == 0)
        return cJSON_CreateFalse();
    if (*v && strspn(v, "+-0123456789.eE") == strlen(v)) {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        if (!errno && *end == '\0' && isfinite(d))
            return cJSON_CreateNumber(d);
    }
    return cJSON_CreateString(v);
}

static void add_limits(cJSON *o, const api_limits *l)
{
    cJSON_AddNumberToObject(o, "max_body_bytes", (double)l->max_body_bytes);
    cJSON_AddNumberToObject(o, "max_input_tokens", l->max_input_tokens);
    cJSON_AddNumberToObject(o, "max_new_tokens", l->max_new_tokens);
    cJSON_AddNumberToObject(o, "max_attention_tokens", l->max_attention_tokens);
    cJSON_AddNumberToObject(o, "queue_size", l->queue_size);
    cJSON_AddNumberToObject(o, "workers", l->workers);
    cJSON_AddNumberToObject(o, "max_batch", l->max_batch);
}

static cJSON *model_info(const api_ctx *ctx)
{
    const model *m = ctx->m;
    const model_config *c = model_get_config(m);
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", ctx->model_id);
    cJSON_AddStringToObject(root, "object", "model");
    for (int i = 0; i < model_meta_count(m); i++) {
        const char *k, *v;
        model_meta_at(m, i, &k, &v);
        cJSON_AddItemToObject(meta, k, typed_value(v));
        /* The same fields at the top level, for clients that read them flat. */
        if (!cJSON_HasObjectItem(root, k))
            cJSON_AddItemToObject(root, k, typed_value(v));
    }
    cJSON_AddItemToObject(root, "metadata", meta);
    cJSON *cfg = cJSON_AddObjectToObject(root, "config");
    cJSON_AddStringToObject(cfg, "cell", model_cell_name(c->cell));
    cJSON_AddStringToObject(cfg, "attention", model_attention_name(c->attention));
    cJSON_AddNumberToObject(cfg, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(cfg, "embed_dim", c->embed);
    cJSON_AddNumberToObject(cfg, "hidden", c->hidden);
    cJSON_AddNumberToObject(cfg, "layers", c->layers);
    cJSON_AddNumberToObject(cfg, "window", c->window);
    cJSON_AddNumberToObject(cfg, "heads", c->heads);
    cJSON_AddNumberToObject(cfg, "bos_id", c->bos_id);
    cJSON_AddNumberToObject(root, "parameters", (double)model_param_count(m));
    cJSON_AddNumberToObject(root, "parameter_count", (double)model_param_count(m));
    cJSON_AddStringToObject(root, "sha256", ctx->sha256);
    cJSON_AddStringToObject(root, "file", ctx->model_path);
    cJSON_AddItemToObject(root, "load_seconds", cJSON_CreateNumber(round(ctx->load_seconds * 1e6) / 1e6));
    cJSON *limits = cJSON_AddObjectToObject(root, "limits");
    add_limits(limits, &ctx->limits);
    add_limits(root, &ctx->limits);
    return root;
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

/* The OpenAI model object of the served model. */
static cJSON *openai_model(const api_ctx *ctx)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", ctx->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)unix_time(model_meta(ctx->m, "created")));
    cJSON_AddStringToObject(m, "owned_by", "attnlm");
    return m;
}

static cJSON *models_list(const api_ctx *ctx)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "data"), openai_model(ctx));
    return root;
}

/* GET /v1/models/{id}: the model if the id is its name. */
static int model_by_id(const api_ctx *ctx, const char *path, api_reply *r)
{
    const char *id = strrchr(path, '/') + 1;
    if (strcmp(id, ctx->model_id) == 0)
        return json_reply(openai_model(ctx), 200, r);
    api_error e;
    api_error_set(&e, 404, "model", "no model named \"%.100s\"; this server has \"%s\"", id, ctx->model_id);
    return api_error_reply(&e, r);
}

static int tokenize(const api_ctx *ctx, const char *body, size_t len, api_reply *r)
{
    api_error e;
    cJSON *o = json_parse_object(body, len, &e);
    const char *text = NULL;
    if (o && json_get_string(o, "text", &text, &e) == 0)
        api_error_set(&e, 400, "text", "text is required");
    if (!o || !text) {
        cJSON_Delete(o);
        return api_error_reply(&e, r);
    }
    size_t n = strlen(text);
    cJSON *root = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(toks, json_token(ctx, (unsigned char)text[i]));
    cJSON_Delete(o);
    return json_reply(root, 200, r);
}

static int detokenize(const api_ctx *ctx, const char *body, size_t len, api_reply *r)
{
    api_error e;
    cJSON *o = json_parse_object(body, len, &e);
    if (!o)
        return api_error_reply(&e, r);
    int *ids = NULL, n = 0;
    json_get_ids(ctx, o, ctx->limits.max_input_tokens, &ids, &n, &e);
    cJSON_Delete(o);
    if (!ids)
        return api_error_reply(&e, r);
    unsigned char *bytes = malloc((size_t)n + 1);
    if (!bytes) {
        free(ids);
        return -1;
    }
    size_t nb = tok_decode(ids, (size_t)n, (char *)bytes);
    free(ids);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "text", json_bytes_string(bytes, nb));
    free(bytes);
    return json_reply(root, 200, r);
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

int api_handle_inline(const api_ctx *ctx, api_endpoint ep, const char *path, const char *body, size_t len,
                      bool draining, api_reply *r)
{
    switch (ep) {
    case API_EP_HEALTH: return text_reply("{\"status\":\"ok\"}", 200, r);
    case API_EP_READY:
        return draining ? text_reply("{\"status\":\"draining\"}", 503, r) : text_reply("{\"status\":\"ready\"}", 200, r);
    case API_EP_METRICS: {
        const char *names[METRICS_ROUTES];
        for (int i = 0; i < METRICS_ROUTES; i++)
            names[i] = i < API_EP_COUNT ? api_endpoint_path((api_endpoint)i) : "other";
        r->body = metrics_render(ctx->metrics, names, &r->len);
        r->status = 200;
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        return r->body ? 0 : -1;
    }
    case API_EP_MODEL: return json_reply(model_info(ctx), 200, r);
    case API_EP_MODELS: return json_reply(models_list(ctx), 200, r);
    case API_EP_MODEL_BY_ID: return model_by_id(ctx, path, r);
    case API_EP_TOKENIZE: return tokenize(ctx, body, len, r);
    case API_EP_DETOKENIZE: return detokenize(ctx, body, len, r);
    default: {
        api_error e;
        api_error_set(&e, 500, NULL, "%s is not answered inline", api_endpoint_path(ep));
        return api_error_reply(&e, r);
    }
    }
}
