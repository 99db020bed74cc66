/* json.c -- the API's JSON conventions: numbers that round-trip, tokens,
 * strings of arbitrary bytes, typed field access with the offending field
 * named, and the input every model endpoint reads (text or token ids).
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "tokenizer.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output ------------------------------------------------------------------ */

cJSON *json_float(float x)
{
    if (!isfinite(x))
        return cJSON_CreateNull();
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", (double)x);
    if (strtof(buf, NULL) != x)
        snprintf(buf, sizeof buf, "%.9g", (double)x);
    return cJSON_CreateRaw(buf);
}

/* Writes s[0..len) as a quoted JSON string.  Unlike cJSON_CreateString this
 * keeps a NUL byte (as \u0000) instead of ending the string there.  out needs
 * room for 6 * len + 2 bytes.  Returns the bytes written. */
static size_t json_quote(const char *s, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            out[n++] = esc[0];
            out[n++] = esc[1];
        } else if (c < 0x20) {
            memcpy(out + n, "\\u00", 4);
            out[n + 4] = hex[c >> 4];
            out[n + 5] = hex[c & 15];
            n += 6;
        } else {
            out[n++] = (char)c;
        }
    }
    out[n++] = '"';
    return n;
}

cJSON *json_bytes_string(const unsigned char *s, size_t len)
{
    /* Sanitising at most triples the bytes; quoting a control byte takes six. */
    size_t clean_cap = 3 * len, quoted_cap = 6 * len + 3;
    char small[64 * 9 + 3];
    char *buf = len <= 64 ? small : malloc(clean_cap + quoted_cap);
    if (!buf)
        return NULL;
    char *quoted = buf + clean_cap;
    size_t n = utf8_sanitize(s, len, buf);
    size_t q = json_quote(buf, n, quoted);
    quoted[q] = '\0';
    cJSON *str = cJSON_CreateRaw(quoted);
    if (buf != small)
        free(buf);
    return str;
}

cJSON *json_token(const api_ctx *ctx, int id)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id);
    bool is_byte = id >= 0 && id < 256 && id != model_get_config(ctx->m)->bos_id;
    unsigned char byte = (unsigned char)id;
    cJSON_AddItemToObject(t, "text", json_bytes_string(&byte, is_byte ? 1 : 0));
    cJSON *bytes = cJSON_AddArrayToObject(t, "bytes");
    if (is_byte)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber(id));
    return t;
}

int json_reply(cJSON *root, int status, api_reply *r)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s)
        return -1;
    r->status = status;
    r->content_type = "application/json";
    r->body = s;
    r->len = strlen(s);
    return 0;
}

void json_print(buf *b, cJSON *root)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s) {
        b->oom = true;
        return;
    }
    buf_puts(b, s);
    free(s);
}

void json_event(buf *b, cJSON *root)
{
    buf_puts(b, "data: ");
    json_print(b, root);
    buf_puts(b, "\n\n");
}

cJSON *json_usage(int prompt_tokens, int completion_tokens, bool total)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", completion_tokens);
    if (total)
        cJSON_AddNumberToObject(u, "total_tokens", (double)prompt_tokens + completion_tokens);
    return u;
}

/* ---- input ------------------------------------------------------------------ */

static const cJSON *field(const cJSON *o, const char *name)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

int json_get_int(const cJSON *o, const char *name, long long lo, long long hi, long long *out, api_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    double v = f->valuedouble;
    if (!cJSON_IsNumber(f) || v != floor(v)) {
        api_error_set(e, 400, name, "%s must be an integer", name);
        return -1;
    }
    if (v < (double)lo || v > (double)hi) {
        api_error_set(e, 400, name, "%s must be between %lld and %lld", name, lo, hi);
        return -1;
    }
    *out = (long long)v;
    return 1;
}

int json_get_num(const cJSON *o, const char *name, double lo, double hi, double *out, api_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble)) {
        api_error_set(e, 400, name, "%s must be a number", name);
        return -1;
    }
    if (f->valuedouble < lo || f->valuedouble > hi) {
        api_error_set(e, 400, name, "%s must be between %g and %g", name, lo, hi);
        return -1;
    }
    *out = f->valuedouble;
    return 1;
}

int json_get_bool(const cJSON *o, const char *name, bool *out, api_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    if (!cJSON_IsBool(f)) {
        api_error_set(e, 400, name, "%s must be true or false", name);
        return -1;
    }
    *out = cJSON_IsTrue(f);
    return 1;
}

int json_get_string(const cJSON *o, const char *name, const char **out, api_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    if (!cJSON_IsString(f)) {
        api_error_set(e, 400, name, "%s must be a string", name);
        return -1;
    }
    *out = f->valuestring;
    return 1;
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
    return o;
}

/* Reads the token ids of arr into [BOS] + ids (BOS not repeated if arr starts with it). */
static int read_ids(const api_ctx *ctx, const cJSON *arr, int max, bool allow_empty, int **ids, int *n, api_error *e)
{
    const model_config *c = model_get_config(ctx->m);
    if (!cJSON_IsArray(arr)) {
        api_error_set(e, 400, "ids", "ids must be an array of token ids");
        return -1;
    }
    int k = cJSON_GetArraySize(arr);
    const cJSON *first = cJSON_GetArrayItem(arr, 0);
    bool lead_bos = first && cJSON_IsNumber(first) && first->valuedouble == c->bos_id;
    int total = k + (lead_bos ? 0 : 1);
    if (total - 1 > max) {
        api_error_set(e, 413, "ids", "%d input tokens exceed the limit of %d", total - 1, max);
        return -1;
    }
    if (total - 1 == 0 && !allow_empty) {
        api_error_set(e, 400, "ids", "ids must not be empty");
        return -1;
    }
    int *out = malloc((size_t)total * sizeof *out), i = 0;
    if (!out) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    if (!lead_bos)
        out[i++] = c->bos_id;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v != floor(v) || v < 0 || v >= c->vocab) {
            free(out);
            api_error_set(e, 400, "ids", "ids[%d] is not a token id (an integer in [0, %d))", i - (lead_bos ? 0 : 1),
                          c->vocab);
            return -1;
        }
        out[i++] = (int)v;
    }
    *ids = out;
    *n = total;
    return 0;
}

int json_get_ids(const api_ctx *ctx, const cJSON *o, int max, int **ids, int *n, api_error *e)
{
    const cJSON *arr = field(o, "ids");
    if (!arr) {
        api_error_set(e, 400, "ids", "ids is required");
        return -1;
    }
    return read_ids(ctx, arr, max, true, ids, n, e);
}

int json_get_input(const api_ctx *ctx, const cJSON *o, const char *text_field, int max, bool allow_empty, int **ids,
                   int *n, api_error *e)
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
        return read_ids(ctx, arr, max, allow_empty, ids, n, e);
    if (!has_text) {
        if (!allow_empty) {
            api_error_set(e, 400, text_field, "%s is required", text_field);
            return -1;
        }
        text = "";
    }
    size_t len = strlen(text);
    if (len == 0 && !allow_empty) {
        api_error_set(e, 400, text_field, "%s must not be empty", text_field);
        return -1;
    }
    if (len > (size_t)max) {
        api_error_set(e, 413, text_field, "%zu input tokens exceed the limit of %d", len, max);
        return -1;
    }
    int *out = malloc((len + 1) * sizeof *out);
    if (!out) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    tok_encode(text, len, out);
    *ids = out;
    *n = (int)len + 1;
    return 0;
}

void api_topk(const float *lp, int n, int k, int *idx)
{
    if (k <= 0)
        return;
    if (k > n)
        k = n;
    int have = 0;
    for (int i = 0; i < n; i++) {
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
