/* json.c -- the API's JSON conventions: numbers that round-trip, tokens,
 * strings of arbitrary bytes, typed field access with the offending field
 * named, the input every model endpoint reads (text or token ids), and the
 * error answer of a refusal.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "tokenizer.h"
#include "utf8.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output ------------------------------------------------------------------ */

/* The members of a token object, "id", "text" and "bytes". */
static void token_members(jw *w, int id)
{
    jw_kint(w, "id", id);
    bool is_byte = id >= 0 && id < 256; /* BOS (and nothing else) has no bytes */
    unsigned char byte = (unsigned char)id;
    jw_key(w, "text");
    jw_bytes(w, &byte, is_byte ? 1 : 0);
    jw_karr(w, "bytes");
    if (is_byte)
        jw_int(w, id);
    jw_arr_end(w);
}

/* Token objects are most of a scoring answer: their members are written
 * once per process, for the 256 bytes and BOS, and copied from then on. */
enum { N_TOKEN_TEXTS = 257 };
static struct {
    char *text;
    size_t len;
} token_texts[N_TOKEN_TEXTS];
static pthread_once_t token_texts_once = PTHREAD_ONCE_INIT;

static void make_token_texts(void)
{
    for (int id = 0; id < N_TOKEN_TEXTS; id++) {
        buf b = {0};
        jw w;
        jw_init(&w, &b);
        jw_obj(&w); /* a container for the members; its brace is not kept */
        token_members(&w, id);
        if (b.oom || b.len < 1) {
            buf_free(&b);
            continue; /* written member by member instead */
        }
        size_t len;
        char *s = buf_take(&b, &len);
        memmove(s, s + 1, len); /* drop the '{' (the NUL moves too) */
        token_texts[id].text = s;
        token_texts[id].len = len - 1;
    }
}

void json_token_open(jw *w, int id)
{
    jw_obj(w);
    pthread_once(&token_texts_once, make_token_texts);
    if (id >= 0 && id < N_TOKEN_TEXTS && token_texts[id].text)
        jw_raw_members(w, token_texts[id].text, token_texts[id].len);
    else
        token_members(w, id);
}

void json_token(jw *w, int id)
{
    json_token_open(w, id);
    jw_obj_end(w);
}

void json_scored(jw *w, int id, float logprob)
{
    json_token_open(w, id);
    jw_kfloat(w, "logprob", logprob);
    jw_obj_end(w);
}

void json_usage(jw *w, int prompt_tokens, int completion_tokens, bool total)
{
    jw_kobj(w, "usage");
    jw_kint(w, "prompt_tokens", prompt_tokens);
    jw_kint(w, "completion_tokens", completion_tokens);
    if (total)
        jw_kint(w, "total_tokens", (long long)prompt_tokens + completion_tokens);
    jw_obj_end(w);
}

void sse_begin(api_job *j, jw *w)
{
    j->event_start = j->out.len;
    buf_printf(&j->out, "id: %s.%d\ndata: ", j->tag, ++j->events);
    jw_init(w, &j->out);
}

void sse_end(api_job *j)
{
    if (j->events <= j->skip_until && !j->out.oom)
        j->out.len = j->event_start; /* the client has this one */
    else
        buf_puts(&j->out, "\n\n");
}

void sse_done(api_job *j)
{
    jw w;
    sse_begin(j, &w);
    buf_puts(&j->out, "[DONE]");
    sse_end(j);
}

int json_reply(buf *b, int status, api_reply *r)
{
    if (b->oom) {
        buf_free(b);
        return -1;
    }
    buf_cstr(b); /* NUL-terminated too, for callers that read it as a string */
    if (b->oom) {
        buf_free(b);
        return -1;
    }
    r->status = status;
    r->content_type = "application/json";
    r->body = buf_take(b, &r->len);
    return r->body ? 0 : -1;
}

/* ---- input ------------------------------------------------------------------ */

static const cJSON *field(const cJSON *o, const char *name)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

const cJSON *json_field(const cJSON *o, const char *name) { return field(o, name); }

int json_check_fields(const cJSON *o, const char *const *allowed, const char *route, api_error *e)
{
    for (const cJSON *f = o->child; f; f = f->next) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, f->string) != 0)
            a++;
        if (!*a) {
            api_error_set(e, 400, f->string, "%s does not take the field \"%.64s\" (docs/API.md lists the fields of each route)",
                          route, f->string);
            return -1;
        }
    }
    return 0;
}

/* The field name of o when it is present and passes is: 1; absent or null:
 * 0; otherwise -1 with e saying it must be `what`. */
static int typed_field(const cJSON *o, const char *name, cJSON_bool (*is)(const cJSON *), const char *what,
                       const cJSON **f, api_error *e)
{
    *f = field(o, name);
    if (!*f)
        return 0;
    if (!is(*f)) {
        api_error_set(e, 400, name, "%s must be %s", name, what);
        return -1;
    }
    return 1;
}

static cJSON_bool is_finite_number(const cJSON *f) { return cJSON_IsNumber(f) && isfinite(f->valuedouble); }
static cJSON_bool is_integer(const cJSON *f) { return is_finite_number(f) && f->valuedouble == floor(f->valuedouble); }

/* A number field within [lo, hi]; integer asks for a whole number. */
static int number_field(const cJSON *o, const char *name, bool integer, double lo, double hi, double *out,
                        api_error *e)
{
    const cJSON *f;
    int rc = typed_field(o, name, integer ? is_integer : is_finite_number, integer ? "an integer" : "a number", &f, e);
    if (rc != 1)
        return rc;
    if (f->valuedouble < lo || f->valuedouble > hi) {
        if (integer)
            api_error_set(e, 400, name, "%s must be between %lld and %lld", name, (long long)lo, (long long)hi);
        else
            api_error_set(e, 400, name, "%s must be between %g and %g", name, lo, hi);
        return -1;
    }
    *out = f->valuedouble;
    return 1;
}

int json_get_int(const cJSON *o, const char *name, long long lo, long long hi, long long *out, api_error *e)
{
    double v;
    int rc = number_field(o, name, true, (double)lo, (double)hi, &v, e);
    if (rc == 1)
        *out = (long long)v;
    return rc;
}

int json_get_num(const cJSON *o, const char *name, double lo, double hi, double *out, api_error *e)
{
    return number_field(o, name, false, lo, hi, out, e);
}

int json_get_bool(const cJSON *o, const char *name, bool *out, api_error *e)
{
    const cJSON *f;
    int rc = typed_field(o, name, cJSON_IsBool, "true or false", &f, e);
    if (rc == 1)
        *out = cJSON_IsTrue(f);
    return rc;
}

int json_get_string(const cJSON *o, const char *name, const char **out, api_error *e)
{
    const cJSON *f;
    int rc = typed_field(o, name, cJSON_IsString, "a string", &f, e);
    if (rc == 1)
        *out = f->valuestring;
    return rc;
}

/* Whether the (valid) JSON object text s holds the escape \u0000 in a string.
 * cJSON would decode it and cut the string there, so such a request is
 * refused.  key receives the top-level field it sits in ("" if unknown). */
static bool find_escaped_nul(const char *s, size_t len, char *key, size_t key_cap)
{
    int depth = 0;
    bool in_str = false, is_key = false, expect_key = false;
    size_t start = 0;
    key[0] = '\0';
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') {
                if (i + 6 <= len && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) {
                    if (is_key)
                        key[0] = '\0';
                    return true;
                }
                i++;
            } else if (c == '"') {
                in_str = false;
                size_t n = i - start;
                if (is_key && n < key_cap && !memchr(s + start, '\\', n)) {
                    memcpy(key, s + start, n);
                    key[n] = '\0';
                } else if (is_key) {
                    key[0] = '\0';
                }
            }
            continue;
        }
        switch (c) {
        case '{': depth++; expect_key = depth == 1; break;
        case '[': depth++; break;
        case '}':
        case ']': depth--; break;
        case ',': expect_key = depth == 1; break;
        case '"':
            in_str = true;
            is_key = depth == 1 && expect_key;
            expect_key = false;
            start = i + 1;
            break;
        default: break;
        }
    }
    return false;
}

static bool text_valid(const char *s) { return utf8_valid((const unsigned char *)s, strlen(s)); }

/* Whether every string in v, keys of nested objects included, is well-formed
 * UTF-8: JSON text is UTF-8, and cJSON passes any bytes through. */
static bool value_valid(const cJSON *v)
{
    if (cJSON_IsString(v))
        return text_valid(v->valuestring);
    for (const cJSON *c = v->child; c; c = c->next)
        if ((c->string && !text_valid(c->string)) || !value_valid(c))
            return false;
    return true;
}

cJSON *json_parse_object(const char *body, size_t len, api_error *e)
{
    if (!body || len == 0) {
        api_error_set(e, 400, NULL, "the request body is empty; a JSON object is required");
        return NULL;
    }
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!o) {
        api_error_set(e, 400, NULL, "the request body is not valid JSON (near byte %zu)",
                      end ? (size_t)(end - body) : (size_t)0);
        return NULL;
    }
    size_t rest = (size_t)(end - body);
    while (rest < len && (body[rest] == ' ' || body[rest] == '\n' || body[rest] == '\r' || body[rest] == '\t'))
        rest++;
    if (rest < len) {
        cJSON_Delete(o);
        api_error_set(e, 400, NULL, "the request body has data after the JSON value (at byte %zu)", rest);
        return NULL;
    }
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        api_error_set(e, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    char key[64];
    if (find_escaped_nul(body, len, key, sizeof key)) {
        cJSON_Delete(o);
        if (key[0])
            api_error_set(e, 400, key, "%s must not contain U+0000 (send such bytes as ids)", key);
        else
            api_error_set(e, 400, NULL, "strings must not contain U+0000");
        return NULL;
    }
    for (const cJSON *f = o->child; f; f = f->next) {
        bool key_ok = text_valid(f->string);
        if (key_ok && value_valid(f))
            continue;
        if (key_ok)
            api_error_set(e, 400, f->string, "%.64s holds a string that is not valid UTF-8", f->string);
        else
            api_error_set(e, 400, NULL, "a field name is not valid UTF-8");
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Reads the token ids of arr into [BOS] + ids (BOS not repeated if arr starts with it). */
static int read_ids(const cJSON *arr, const char *param, const char *name, int max, bool allow_empty, job_input *in,
                    api_error *e)
{
    if (!cJSON_IsArray(arr)) {
        api_error_set(e, 400, param, "%s must be an array of token ids", name);
        return -1;
    }
    int k = cJSON_GetArraySize(arr);
    const cJSON *first = cJSON_GetArrayItem(arr, 0);
    bool lead_bos = first && cJSON_IsNumber(first) && first->valuedouble == TOK_BOS;
    int total = k + (lead_bos ? 0 : 1);
    if (total - 1 > max) {
        api_error_set(e, 413, param, "%d input tokens exceed the limit of %d", total - 1, max);
        return -1;
    }
    if (total - 1 == 0 && !allow_empty) {
        api_error_set(e, 400, param, "%s must not be empty", name);
        return -1;
    }
    int *out = malloc((size_t)total * sizeof *out), i = 0;
    if (!out) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    if (!lead_bos)
        out[i++] = TOK_BOS;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v != floor(v) || v < 0 || v >= TOK_VOCAB) {
            free(out);
            api_error_set(e, 400, param, "%s[%d] is not a token id (an integer in [0, %d))", name,
                          i - (lead_bos ? 0 : 1), TOK_VOCAB);
            return -1;
        }
        out[i++] = (int)v;
    }
    in->ids = out;
    in->n = total;
    return 0;
}

/* The UTF-8 bytes of text into [BOS] + bytes. */
static int read_text(const char *text, const char *param, const char *name, int max, bool allow_empty, job_input *in,
                     api_error *e)
{
    size_t len = strlen(text);
    if (len == 0 && !allow_empty) {
        api_error_set(e, 400, param, "%s must not be empty", name);
        return -1;
    }
    if (len > (size_t)max) {
        api_error_set(e, 413, param, "%zu input tokens exceed the limit of %d", len, max);
        return -1;
    }
    int *out = malloc((len + 1) * sizeof *out);
    if (!out) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    tok_encode(text, len, out);
    in->ids = out;
    in->n = (int)len + 1;
    return 0;
}

int json_read_input(const cJSON *v, const char *param, const char *name, int max, bool allow_empty, bool text_ok,
                    bool ids_ok, job_input *in, api_error *e)
{
    if (text_ok && cJSON_IsString(v))
        return read_text(v->valuestring, param, name, max, allow_empty, in, e);
    if (ids_ok && cJSON_IsArray(v))
        return read_ids(v, param, name, max, allow_empty, in, e);
    api_error_set(e, 400, param, "%s must be %s", name,
                  text_ok && ids_ok ? "a string or an array of token ids"
                  : text_ok         ? "a string"
                                    : "an array of token ids");
    return -1;
}

void job_inputs_free(job_input *in, int n)
{
    if (!in)
        return;
    for (int i = 0; i < n; i++) {
        free(in[i].ids);
        free(in[i].lp);
    }
    free(in);
}

int json_read_inputs(const cJSON *arr, const char *param, int max_inputs, int max_tokens, bool allow_empty,
                     bool text_ok, bool ids_ok, job_input **in, int *n, api_error *e)
{
    int k = cJSON_GetArraySize(arr);
    if (k == 0) {
        api_error_set(e, 400, param, "%s must not be an empty array", param);
        return -1;
    }
    if (k > max_inputs) {
        api_error_set(e, 413, param, "%d inputs exceed the limit of %d per request (--max-inputs)", k, max_inputs);
        return -1;
    }
    job_input *out = calloc((size_t)k, sizeof *out);
    if (!out) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    long long total = 0;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        char name[48];
        snprintf(name, sizeof name, "%.20s[%d]", param, i);
        if (json_read_input(it, param, name, max_tokens, allow_empty, text_ok, ids_ok, &out[i], e) < 0) {
            job_inputs_free(out, k);
            return -1;
        }
        total += out[i++].n - 1;
        if (total > max_tokens) {
            job_inputs_free(out, k);
            api_error_set(e, 413, param, "the inputs of %s hold more than the limit of %d tokens between them",
                          param, max_tokens);
            return -1;
        }
    }
    *in = out;
    *n = k;
    return 0;
}

int json_get_ids(const cJSON *o, int max, job_input *in, api_error *e)
{
    const cJSON *arr = field(o, "ids");
    if (!arr) {
        api_error_set(e, 400, "ids", "ids is required");
        return -1;
    }
    return read_ids(arr, "ids", "ids", max, true, in, e);
}

int json_get_input(const cJSON *o, const char *text_field, int max, bool allow_empty, job_input *in, api_error *e)
{
    const char *text = NULL;
    int has_text = json_get_string(o, text_field, &text, e);
    if (has_text < 0)
        return -1;
    const cJSON *arr = field(o, "ids");
    if (has_text && arr) {
        api_error_set(e, 400, "ids", "give either %s or ids, not both", text_field);
        return -1;
    }
    if (arr)
        return read_ids(arr, "ids", "ids", max, allow_empty, in, e);
    if (!has_text && !allow_empty) {
        api_error_set(e, 400, text_field, "%s is required", text_field);
        return -1;
    }
    return read_text(has_text ? text : "", text_field, text_field, max, allow_empty, in, e);
}

api_model *json_get_model(const api_ctx *ctx, const cJSON *o, api_error *e)
{
    const char *name = NULL;
    if (json_get_string(o, "model", &name, e) < 0)
        return NULL;
    api_model *am = name && !*name ? NULL : api_model_acquire(ctx->models, name); /* "" names no model */
    if (!am)
        api_error_set(e, 404, "model", "no model named \"%.100s\" is served here (GET /v1/models lists them)", name);
    return am;
}

/* The k-th largest of v[n] (k <= n), by k passes of selection: n and k are small. */
static float kth_largest(float *v, int n, int k)
{
    for (int j = 0; j < k; j++) {
        int best = j;
        for (int i = j + 1; i < n; i++)
            if (v[i] > v[best])
                best = i;
        float t = v[j];
        v[j] = v[best];
        v[best] = t;
    }
    return v[k - 1];
}

void api_topk(const float *lp, int n, int k, int *idx)
{
    enum { BLOCK = 8, MAX_BLOCKS = 64 };
    if (k <= 0)
        return;
    if (k > n)
        k = n;
    /* The k-th largest of the blocks' maxima is at most the k-th largest value
     * (k blocks each hold a value that large): only the few blocks whose
     * maximum reaches it can hold any of the k, and only their values that
     * reach it are candidates. */
    float least = -INFINITY, bmax[MAX_BLOCKS], sel[MAX_BLOCKS];
    const int nb = (n + BLOCK - 1) / BLOCK;
    const bool blocks = nb <= MAX_BLOCKS && k <= nb;
    if (blocks) {
        for (int b = 0; b < nb; b++) {
            const float *p = lp + (size_t)b * BLOCK;
            const int len = n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK;
            float m0 = -INFINITY, m1 = -INFINITY;
            int j = 0;
            for (; j + 1 < len; j += 2) {
                m0 = p[j] > m0 ? p[j] : m0;
                m1 = p[j + 1] > m1 ? p[j + 1] : m1;
            }
            if (j < len)
                m0 = p[j] > m0 ? p[j] : m0;
            bmax[b] = sel[b] = m0 > m1 ? m0 : m1;
        }
        least = kth_largest(sel, nb, k);
    }
    int have = 0;
    for (int b = 0; b < (blocks ? nb : 1); b++) {
        if (blocks && !(bmax[b] >= least))
            continue;
        const int i0 = blocks ? b * BLOCK : 0, i1 = !blocks ? n : i0 + BLOCK < n ? i0 + BLOCK : n;
        for (int i = i0; i < i1; i++) {
            if (!(lp[i] >= least))
                continue;
            /* Strictly greater: an equal later index never displaces an earlier one. */
            if (have == k && !(lp[i] > lp[idx[k - 1]]))
                continue;
            int pos = have < k ? have++ : k - 1;
            while (pos > 0 && lp[i] > lp[idx[pos - 1]]) {
                idx[pos] = idx[pos - 1];
                pos--;
            }
            idx[pos] = i;
        }
    }
}

/* ---- errors ------------------------------------------------------------ */

void api_error_set(api_error *e, int status, const char *param, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

const char *api_error_type(int status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 405: return "method_not_allowed";
    case 409: return "conflict_error";
    case 413: return "request_too_large";
    case 415: return "unsupported_media_type";
    case 503: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void json_error(jw *w, const api_error *e)
{
    jw_obj(w);
    jw_kobj(w, "error");
    jw_kstr(w, "message", e->message);
    jw_kstr(w, "type", api_error_type(e->status));
    if (e->param[0])
        jw_kstr(w, "param", e->param);
    else
        jw_knull(w, "param");
    jw_kint(w, "code", e->status);
    jw_obj_end(w);
    jw_obj_end(w);
}

int api_error_reply(const api_error *e, api_reply *r)
{
    buf b = {0};
    jw w;
    jw_init(&w, &b);
    json_error(&w, e);
    return json_reply(&b, e->status, r);
}
