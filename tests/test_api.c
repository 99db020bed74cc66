/* test_api.c -- the API layer without a network: routing, request
 * validation (status and offending field), and the answers built from the
 * engine's numbers, on a small fixture model.
 */
#define _POSIX_C_SOURCE 200809L
#include "api.h"
#include "model.h"
#include "sampler.h"
#include "testutil.h"

#include "api_fixture.h"
#include "internal.h" /* api_topk */
#include "check_main.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const model *g_model;
static api_models *g_models;
static api_metrics g_metrics;
static api_ctx g_ctx;

static void setup(void)
{
    g_models = load_api_fixture(&g_ctx, &g_metrics, "gru_dot.safetensors", fixture_limits(), &g_model);
}

static void teardown(void) { api_models_free(g_models); }

static bool g_keep_timings; /* run_job leaves "timings" in (test_timings) */

/* Runs a job to its end on one worker; returns its status and body (caller frees). */
static char *run_job(api_endpoint ep, const char *body, int *status)
{
    api_error e;
    api_job *j = api_job_new(&g_ctx, ep, &(api_request){.body = body, .len = strlen(body)},
                             12345, "test", &e);
    ck_assert_msg(j != NULL, "%s: %d %s (%s)", body, e.status, e.message, e.param);
    api_worker *w = api_worker_new(8);
    char *all = NULL, *data;
    size_t total = 0;
    api_job_start(j, w);
    for (;;) {
        size_t n = api_job_take_output(j, &data, status);
        if (n) {
            char *grown = realloc(all, total + n + 1);
            ck_assert_ptr_nonnull(grown);
            all = grown;
            memcpy(all + total, data, n);
            total += n;
            free(data);
        }
        if (api_job_done(j))
            break;
        api_job *one[1] = {j};
        ck_assert_int_gt(api_step(w, one, 1), 0);
    }
    size_t n = api_job_take_output(j, &data, status);
    ck_assert_uint_eq(n, 0);
    char *grown = realloc(all, total + 1);
    ck_assert_ptr_nonnull(grown);
    all = grown;
    all[total] = '\0';
    api_worker_free(w);
    api_job_free(j);
    if (!g_keep_timings)
        strip_timings(all); /* they measure one run; answers are compared across runs */
    return all;
}

static cJSON *run_json(api_endpoint ep, const char *body)
{
    int status;
    char *s = run_job(ep, body, &status);
    ck_assert_msg(status == 200, "%s -> %d %s", body, status, s);
    cJSON *o = cJSON_Parse(s);
    ck_assert_msg(o != NULL, "not JSON: %s", s);
    free(s);
    return o;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsNumber(f), "%s is not a number", k);
    return f->valuedouble;
}

/* api_handle_inline with the reply's body NUL-terminated, so it can be read as a string. */
static int handle_inline(api_endpoint ep, const char *path, const char *model_arg, const char *body, size_t len,
                         bool draining, api_reply *r)
{
    const api_request q = {.method = body ? "POST" : "GET", .path = path, .model_arg = model_arg, .body = body,
                           .len = len};
    int rc = api_handle_inline(&g_ctx, ep, &q, draining, r);
    if (rc == 0) {
        char *p = realloc(r->body, r->len + 1);
        ck_assert_ptr_nonnull(p);
        p[r->len] = '\0';
        r->body = p;
    }
    return rc;
}

/* ---- routing, errors, keys --------------------------------------------------- */

START_TEST(test_routes)
{
    api_endpoint ep;
    const char *allow = NULL;
    ck_assert_int_eq(api_route("GET", "/health", &ep, &allow), 0);
    ck_assert_int_eq(ep, API_EP_HEALTH);
    ck_assert_int_eq(api_route("HEAD", "/v1/model", &ep, &allow), 0);
    ck_assert_int_eq(api_route("POST", "/v1/score", &ep, &allow), 0);
    ck_assert_int_eq(ep, API_EP_SCORE);
    ck_assert_int_eq(api_route("GET", "/v1/score", &ep, &allow), 405);
    ck_assert_str_eq(allow, "POST");
    ck_assert_int_eq(api_route("DELETE", "/metrics", &ep, &allow), 405);
    ck_assert_str_eq(allow, "GET, HEAD");
    ck_assert_int_eq(api_route("GET", "/v1/scores", &ep, &allow), 404);
    ck_assert_int_eq(api_route("GET", "/", &ep, &allow), 404);
    ck_assert(api_endpoint_is_open(API_EP_METRICS));
    ck_assert(!api_endpoint_is_open(API_EP_SCORE));
    ck_assert(api_endpoint_is_job(API_EP_COMPLETIONS));
    ck_assert(!api_endpoint_is_job(API_EP_TOKENIZE));
    ck_assert_int_eq(api_route("POST", "/v1/attribution", &ep, &allow), 0);
    ck_assert_int_eq(ep, API_EP_ATTRIBUTION);
    ck_assert(api_endpoint_is_job(API_EP_ATTRIBUTION) && !api_endpoint_is_open(API_EP_ATTRIBUTION));
    ck_assert_str_eq(api_endpoint_path(API_EP_ATTRIBUTION), "/v1/attribution");
}
END_TEST

/* api_topk against sorting: the k largest, largest first, ties to the lower
 * index, on rows with runs of equal values, -inf and every k from 0 to n. */
START_TEST(test_topk)
{
    enum { N = 257 };
    float lp[N];
    unsigned s = 5;
    for (int trial = 0; trial < 40; trial++) {
        const int n = trial == 0 ? 1 : trial < 5 ? 15 + trial : N;
        for (int i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            /* few distinct values in some rows, so that ties are common */
            lp[i] = trial % 3 == 0 ? -(float)((s >> 16) % 7) : -(float)((s >> 8) % 100000) / 1000.0f;
            if ((s >> 4) % 50 == 0)
                lp[i] = -INFINITY;
        }
        for (int k = 0; k <= n; k += k < 8 ? 1 : 37) {
            int got[N], want[N];
            api_topk(lp, n, k, got);
            for (int j = 0; j < k; j++) { /* selection by (value desc, index asc) */
                int best = -1;
                for (int i = 0; i < n; i++) {
                    bool taken = false;
                    for (int q = 0; q < j; q++)
                        taken |= want[q] == i;
                    if (!taken && (best < 0 || lp[i] > lp[best]))
                        best = i;
                }
                want[j] = best;
            }
            for (int j = 0; j < k; j++)
                ck_assert_msg(got[j] == want[j], "trial %d n=%d k=%d: [%d] = %d, want %d", trial, n, k, j, got[j],
                              want[j]);
        }
    }
}
END_TEST

START_TEST(test_error_body)
{
    api_error e;
    api_reply r;
    api_error_set(&e, 400, "top_k", "top_k must be between %d and %d", 0, 257);
    ck_assert_int_eq(api_error_reply(&e, &r), 0);
    ck_assert_int_eq(r.status, 400);
    cJSON *o = cJSON_ParseWithLength(r.body, r.len), *err = cJSON_GetObjectItem(o, "error");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, "top_k must be between 0 and 257");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "invalid_request_error");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "param")->valuestring, "top_k");
    ck_assert_int_eq((int)num(err, "code"), 400);
    cJSON_Delete(o);
    free(r.body);

    api_error_set(&e, 503, NULL, "busy");
    ck_assert_int_eq(api_error_reply(&e, &r), 0);
    o = cJSON_ParseWithLength(r.body, r.len);
    err = cJSON_GetObjectItem(o, "error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(err, "param")));
    ck_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "overloaded_error");
    cJSON_Delete(o);
    free(r.body);
    ck_assert_str_eq(api_error_type(504), "timeout_error");
    ck_assert_str_eq(api_error_type(413), "request_too_large");
    ck_assert_str_eq(api_error_type(401), "authentication_error");
}
END_TEST

START_TEST(test_api_key)
{
    ck_assert(api_key_matches("s3cret", "Bearer s3cret", NULL));
    ck_assert(api_key_matches("s3cret", NULL, "s3cret"));
    ck_assert(!api_key_matches("s3cret", "Bearer s3cre", NULL));
    ck_assert(!api_key_matches("s3cret", "Bearer s3crett", NULL));
    ck_assert(!api_key_matches("s3cret", "s3cret", NULL)); /* no Bearer */
    ck_assert(api_key_matches("s3cret", "bearer s3cret", NULL)); /* the scheme is case-insensitive */
    ck_assert(api_key_matches("s3cret", "BEARER s3cret", NULL));
    ck_assert(!api_key_matches("s3cret", "Bearer S3CRET", NULL)); /* the key is not */
    ck_assert(!api_key_matches("s3cret", "Bearer ", ""));
    ck_assert(!api_key_matches("s3cret", NULL, NULL));
    ck_assert(!api_key_matches("s3cret", "Basic s3cret", "S3CRET"));
}
END_TEST

/* ---- validation ------------------------------------------------------------ */

typedef struct bad_case {
    api_endpoint ep;
    const char *body;
    int status;
    const char *param; /* "" for null */
} bad_case;

static const bad_case BAD[] = {
    {API_EP_SCORE, "", 400, ""},
    {API_EP_SCORE, "not json", 400, ""},
    {API_EP_SCORE, "[1,2]", 400, ""},
    {API_EP_SCORE, "{\"text\":\"a\"} trailing", 400, ""},
    {API_EP_SCORE, "{}", 400, "text"},
    {API_EP_SCORE, "{\"text\":5}", 400, "text"},
    {API_EP_SCORE, "{\"text\":\"\"}", 400, "text"},
    {API_EP_SCORE, "{\"text\":\"a\\u0000b\"}", 400, "text"},
    {API_EP_SCORE, "{\"text\":\"a\",\"candidates\":[\"x\",\"\\\\\\u0000\"]}", 400, "candidates"},
    {API_EP_SCORE, "{\"text\":\"a\",\"x\\u0000\":1}", 400, ""},
    {API_EP_SCORE, "{\"text\":\"a\",\"top_k\":-1}", 400, "top_k"},
    {API_EP_SCORE, "{\"text\":\"a\",\"top_k\":1.5}", 400, "top_k"},
    {API_EP_SCORE, "{\"text\":\"a\",\"top_k\":\"5\"}", 400, "top_k"},
    {API_EP_SCORE, "{\"text\":\"a\",\"top_k\":258}", 400, "top_k"},
    {API_EP_SCORE, "{\"text\":\"a\",\"ids\":[1]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[300]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[-1]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":\"abc\"}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[]}", 400, "ids"},
    {API_EP_SCORE, "{\"text\":\"a\",\"candidates\":\"b\"}", 400, "candidates"},
    {API_EP_SCORE, "{\"text\":\"a\",\"candidates\":[\"\"]}", 400, "candidates"},
    {API_EP_SCORE, "{\"text\":\"a\",\"candidates\":[1]}", 400, "candidates"},
    {API_EP_SCORE,
     "{\"text\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}", 413, "text"},
    {API_EP_SCORE, "{\"text\":\"0123456789012345678901234567890123456789012345678901234567890\","
                   "\"candidates\":[\"abcd\"]}",
     413, "candidates"},
    {API_EP_GENERATE, "{\"max_tokens\":101}", 400, "max_tokens"},
    {API_EP_GENERATE, "{\"max_tokens\":-1}", 400, "max_tokens"},
    {API_EP_GENERATE, "{\"temperature\":-0.1}", 400, "temperature"},
    {API_EP_GENERATE, "{\"temperature\":\"hot\"}", 400, "temperature"},
    {API_EP_GENERATE, "{\"top_p\":1.5}", 400, "top_p"},
    {API_EP_GENERATE, "{\"top_p\":-0.5}", 400, "top_p"},
    {API_EP_GENERATE, "{\"top_k\":300}", 400, "top_k"},
    {API_EP_GENERATE, "{\"seed\":1.5}", 400, "seed"},
    {API_EP_GENERATE, "{\"stream\":\"yes\"}", 400, "stream"},
    {API_EP_GENERATE, "{\"attention\":1}", 400, "attention"},
    {API_EP_GENERATE, "{\"logprobs\":-2}", 400, "logprobs"},
    {API_EP_GENERATE, "{\"stop\":5}", 400, "stop"},
    {API_EP_GENERATE, "{\"stop\":[\"\"]}", 400, "stop"},
    {API_EP_GENERATE, "{\"prompt\":\"a\\\\u0000\",\"stop\":{\"a\":\"\\u0000\"}}", 400, "stop"},
    {API_EP_GENERATE, "{\"prompt\":7}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[true]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"n\":0}", 400, "n"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"n\":17}", 400, "n"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":21}", 400, "logprobs"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"echo\":\"x\"}", 400, "echo"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"model\":5}", 400, "model"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"stream_options\":5}", 400, "stream_options"},
    /* penalties and logit_bias, on both generation routes */
    {API_EP_GENERATE, "{\"presence_penalty\":2.5}", 400, "presence_penalty"},
    {API_EP_GENERATE, "{\"presence_penalty\":\"1\"}", 400, "presence_penalty"},
    {API_EP_COMPLETIONS, "{\"frequency_penalty\":-2.01}", 400, "frequency_penalty"},
    {API_EP_GENERATE, "{\"repetition_penalty\":0}", 400, "repetition_penalty"},
    {API_EP_COMPLETIONS, "{\"repetition_penalty\":-1.1}", 400, "repetition_penalty"},
    {API_EP_GENERATE, "{\"repetition_penalty\":100.5}", 400, "repetition_penalty"},
    {API_EP_GENERATE, "{\"penalty_last_n\":-2}", 400, "penalty_last_n"},
    {API_EP_COMPLETIONS, "{\"penalty_last_n\":1.5}", 400, "penalty_last_n"},
    {API_EP_GENERATE, "{\"logit_bias\":[1]}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"logit_bias\":{\"257\":1}}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"logit_bias\":{\"50256\":-100}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\"-1\":1}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\"1.0\":1}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\" 1\":1}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\"\":1}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\"x\":1}}", 400, "logit_bias"},
    {API_EP_GENERATE, "{\"logit_bias\":{\"5\":100.5}}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"logit_bias\":{\"5\":\"1\"}}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"logit_bias\":{\"5\":null}}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"logit_bias\":{\"5\":1,\"05\":2}}", 400, "logit_bias"},
    {API_EP_COMPLETIONS, "{\"top_k\":-2}", 400, "top_k"},
    {API_EP_COMPLETIONS, "{\"top_k\":258}", 400, "top_k"},
    /* OpenAI fields accepted only where they change nothing */
    {API_EP_COMPLETIONS, "{\"best_of\":2}", 400, "best_of"},
    {API_EP_COMPLETIONS, "{\"best_of\":3,\"n\":2}", 400, "best_of"},
    {API_EP_COMPLETIONS, "{\"best_of\":0}", 400, "best_of"},
    {API_EP_COMPLETIONS, "{\"suffix\":\"end\"}", 400, "suffix"},
    {API_EP_COMPLETIONS, "{\"user\":5}", 400, "user"},
    /* fields a route does not take */
    {API_EP_SCORE, "{\"text\":\"a\",\"user\":\"x\"}", 400, "user"},
    {API_EP_SCORE, "{\"text\":\"a\",\"temperature\":0}", 400, "temperature"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"top_k\":1}", 400, "top_k"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"attention_gain\":true}", 400, "attention_gain"},
    {API_EP_SCORE, "{\"text\":\"a\",\"attention_gain\":\"yes\"}", 400, "attention_gain"},
    {API_EP_SCORE, "{\"text\":\"a\",\"attention_gain\":1}", 400, "attention_gain"},
    {API_EP_GENERATE, "{\"n\":2}", 400, "n"},
    {API_EP_GENERATE, "{\"echo\":true}", 400, "echo"},
    {API_EP_GENERATE, "{\"user\":\"x\"}", 400, "user"},
    {API_EP_GENERATE, "{\"min_p\":0.1}", 400, "min_p"},
    {API_EP_COMPLETIONS, "{\"attention\":true}", 400, "attention"},
    {API_EP_COMPLETIONS, "{\"Prompt\":\"a\"}", 400, "Prompt"},
    /* arrays of inputs: /v1/score */
    {API_EP_SCORE, "{\"texts\":\"a\"}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[]}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\",1]}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\",[1]]}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\",\"\"]}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\"],\"text\":\"b\"}", 400, "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\"],\"ids\":[1]}", 400, "texts"},
    {API_EP_SCORE, "{\"ids\":[[1],[2,300]]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[[1],2]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[[1],[]]}", 400, "ids"},
    {API_EP_SCORE, "{\"ids\":[[1]],\"text\":\"a\"}", 400, "ids"},
    {API_EP_SCORE, "{\"texts\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}", 413, "texts"},
    {API_EP_SCORE, "{\"ids\":[[1],[1],[1],[1],[1],[1],[1],[1],[1]]}", 413, "ids"},
    {API_EP_SCORE, "{\"texts\":[\"0123456789012345678901234567890123\",\"0123456789012345678901234567890\"]}", 413,
     "texts"},
    {API_EP_SCORE, "{\"texts\":[\"0123456789012345678901234567890123456789012345678901234567890123456789\"]}", 413,
     "texts"},
    {API_EP_SCORE, "{\"texts\":[\"a\",\"0123456789012345678901234567890123456789012345678901234567890\"],"
                   "\"candidates\":[\"abcd\"]}",
     413, "candidates"},
    /* arrays of inputs: /v1/completions */
    {API_EP_COMPLETIONS, "{\"prompt\":[]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":{\"a\":1}}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[\"a\",5]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[65,\"a\"]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[[65],[66,300]]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[[65],[66,1.5]]}", 400, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[\"a\"],\"ids\":[1]}", 400, "ids"},
    {API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"ids\":[1]}", 400, "ids"},
    /* /v1/chat/completions */
    {API_EP_CHAT, "{}", 400, "messages"},
    {API_EP_CHAT, "{\"messages\":5}", 400, "messages"},
    {API_EP_CHAT, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400, "messages"},
    {API_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400, "messages"},
    {API_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", 400, "tools"},
    {API_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"prompt\":\"x\"}", 400, "prompt"},
    {API_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":17}", 400, "n"},
    {API_EP_COMPLETIONS, "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"],\"n\":13}", 400, "n"},
    {API_EP_COMPLETIONS, "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}", 413, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[\"0123456789012345678901234567890123\",[48,49,50,51,52,53,54,55,56,57,48,49,50,"
                         "51,52,53,54,55,56,57,48,49,50,51,52,53,54,55,56,57,48]]}",
     413, "prompt"},
    {API_EP_COMPLETIONS, "{\"prompt\":[48,49,50,51,52,53,54,55,56,57,48,49,50,51,52,53,54,55,56,57,48,49,50,51,52,53,"
                         "54,55,56,57,48,49,50,51,52,53,54,55,56,57,48,49,50,51,52,53,54,55,56,57,48,49,50,51,52,53,54,"
                         "55,56,57,48,49,50,51,52,53]}",
     413, "prompt"},
    {API_EP_GENERATE, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"format\":\"sparse\"}", 400, "format"},
    {API_EP_ATTENTION, "{\"text\":\"012345678901234567890123456789012\"}", 413, "text"},
    /* JSON text is UTF-8: ill-formed strings are refused, naming the top-level field they are in. */
    {API_EP_SCORE, "{\"text\":\"\xff\xfe\xc3\"}", 400, "text"},
    {API_EP_SCORE, "{\"text\":\"\xed\xa0\x80\"}", 400, "text"},            /* a surrogate */
    {API_EP_SCORE, "{\"text\":\"\xc0\xaf\"}", 400, "text"},                  /* an overlong */
    {API_EP_SCORE, "{\"text\":\"a\",\"candidates\":[\"\xe2\x82\"]}", 400, "candidates"},
    {API_EP_GENERATE, "{\"prompt\":\"a\",\"stop\":[\"\xf5\x80\x80\x80\"]}", 400, "stop"},
    {API_EP_GENERATE, "{\"prompt\":\"a\",\"x\xff\":1}", 400, ""},
    /* "model" names a served model. */
    {API_EP_SCORE, "{\"text\":\"a\",\"model\":\"nope\"}", 404, "model"},
    {API_EP_GENERATE, "{\"model\":\"\"}", 404, "model"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"summary\":\"yes\"}", 400, "summary"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"maps\":0}", 400, "maps"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"maps\":false}", 400, "maps"},
    {API_EP_ATTENTION, "{\"text\":\"a\",\"maps\":false,\"summary\":false}", 400, "maps"},
    {API_EP_ATTRIBUTION, "{}", 400, "text"},
    {API_EP_ATTRIBUTION, "{\"text\":\"\"}", 400, "text"},
    {API_EP_ATTRIBUTION, "{\"ids\":[1,2],\"text\":\"ab\"}", 400, "ids"},
    {API_EP_ATTRIBUTION, "{\"text\":\"012345678901234567890123456789012\"}", 413, "text"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"target\":0}", 400, "target"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"target\":4}", 400, "target"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"target\":1.5}", 400, "target"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"range\":0}", 400, "range"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"range\":33}", 400, "range"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"baseline\":256}", 400, "baseline"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"baseline\":\" \"}", 400, "baseline"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"model\":\"nope\"}", 404, "model"},
    {API_EP_ATTRIBUTION, "{\"text\":\"abc\",\"format\":\"band\"}", 400, "format"}, /* a field it does not take */
};

START_TEST(test_bad_requests_are_refused)
{
    const bad_case *c = &BAD[_i];
    api_error e = {0};
    api_job *j = api_job_new(&g_ctx, c->ep, &(api_request){.body = c->body, .len = strlen(c->body)},
                             1, "t", &e);
    ck_assert_msg(j == NULL, "accepted: %s", c->body);
    ck_assert_msg(e.status == c->status, "%s: status %d, want %d (%s)", c->body, e.status, c->status, e.message);
    ck_assert_msg(strcmp(e.param, c->param) == 0, "%s: param \"%s\", want \"%s\"", c->body, e.param, c->param);
    ck_assert_msg(e.message[0] != '\0', "%s: no message", c->body);
}
END_TEST

START_TEST(test_nulls_are_defaults)
{
    cJSON *o = run_json(API_EP_SCORE, "{\"text\":\"ab\",\"top_k\":null,\"candidates\":null,\"texts\":null}");
    cJSON *tok = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "tokens"), 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(tok, "top")), 5);
    cJSON_Delete(o);
    /* The OpenAI fields a client may send by default are taken: user, and best_of and
     * suffix where they change nothing; logit_bias {} is no bias. */
    const char *plain = "{\"prompt\":\"ab\",\"max_tokens\":6,\"seed\":3,\"n\":2}";
    cJSON *a = run_json(API_EP_COMPLETIONS, plain);
    cJSON *b = run_json(API_EP_COMPLETIONS, "{\"prompt\":\"ab\",\"max_tokens\":6,\"seed\":3,\"n\":2,\"user\":\"u-1\","
                                            "\"best_of\":2,\"suffix\":\"\",\"logit_bias\":{},\"presence_penalty\":0,"
                                            "\"frequency_penalty\":0,\"top_k\":-1,\"stream_options\":null}");
    for (int k = 0; k < 2; k++)
        ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(a, "choices"), k), "text")->valuestring,
                         cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(b, "choices"), k), "text")->valuestring);
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* tokenize and detokenize refuse other fields too */
    api_reply r;
    const char *t = "{\"text\":\"a\",\"ids\":[1]}";
    ck_assert_int_eq(handle_inline(API_EP_TOKENIZE, NULL, NULL, t, strlen(t), false, &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"param\":\"ids\""));
    free(r.body);
    t = "{\"ids\":[65],\"text\":\"a\"}";
    ck_assert_int_eq(handle_inline(API_EP_DETOKENIZE, NULL, NULL, t, strlen(t), false, &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"param\":\"text\""));
    free(r.body);
}
END_TEST

/* ---- answers --------------------------------------------------------------- */

START_TEST(test_score_matches_engine)
{
    const char *text = "the whale";
    const int T = 10, V = 257;
    int ids[10] = {256};
    for (int i = 0; i < 9; i++)
        ids[i + 1] = (unsigned char)text[i];
    float *lp = malloc((size_t)T * V * sizeof *lp);
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward(g_model, ids, T, lp, NULL, NULL, err, sizeof err), 0);

    cJSON *o = run_json(API_EP_SCORE, "{\"text\":\"the whale\",\"top_k\":3,\"candidates\":[\" is\",\"x\"]}");
    cJSON *toks = cJSON_GetObjectItem(o, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(toks), 9);
    double sum = 0;
    for (int t = 1; t < T; t++) {
        cJSON *tok = cJSON_GetArrayItem(toks, t - 1);
        ck_assert_int_eq((int)num(tok, "id"), ids[t]);
        double l = num(tok, "logprob");
        ck_assert_msg(fabs(l - lp[(t - 1) * V + ids[t]]) < 1e-6, "position %d: %g vs %g", t, l,
                      lp[(t - 1) * V + ids[t]]);
        sum += l;
        cJSON *top = cJSON_GetObjectItem(tok, "top");
        ck_assert_int_eq(cJSON_GetArraySize(top), 3);
        for (int k = 1; k < 3; k++)
            ck_assert(num(cJSON_GetArrayItem(top, k - 1), "logprob") >= num(cJSON_GetArrayItem(top, k), "logprob"));
        int best = (int)num(cJSON_GetArrayItem(top, 0), "id");
        for (int v = 0; v < V; v++)
            ck_assert(lp[(t - 1) * V + v] <= lp[(t - 1) * V + best]);
    }
    ck_assert(fabs(num(o, "logprob") - sum) < 1e-4);
    ck_assert(fabs(num(o, "perplexity") - exp(-sum / 9)) < 1e-3 * exp(-sum / 9));
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "next")), 3);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "input_tokens"), 9);

    /* A candidate's log-probability is what scoring the joined text gives its bytes. */
    cJSON *cands = cJSON_GetObjectItem(o, "candidates");
    ck_assert_int_eq(cJSON_GetArraySize(cands), 2);
    int ids2[13] = {256};
    const char *joined = "the whale is";
    for (int i = 0; i < 12; i++)
        ids2[i + 1] = (unsigned char)joined[i];
    float *lp2 = malloc((size_t)13 * V * sizeof *lp2);
    ck_assert_int_eq(model_forward(g_model, ids2, 13, lp2, NULL, NULL, err, sizeof err), 0);
    double want = 0;
    for (int t = 10; t < 13; t++)
        want += lp2[(t - 1) * V + ids2[t]];
    cJSON *c0 = cJSON_GetArrayItem(cands, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, " is");
    ck_assert_msg(fabs(num(c0, "logprob") - want) < 1e-4, "candidate %g vs %g", num(c0, "logprob"), want);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(c0, "tokens")), 3);
    double x = num(cJSON_GetArrayItem(cands, 1), "logprob");
    ck_assert(fabs(x - lp[(T - 1) * V + 'x']) < 1e-5);
    free(lp2);
    free(lp);
    cJSON_Delete(o);
}
END_TEST

/* "attention_gain": each token's log-probability minus the engine's with a window of one. */
START_TEST(test_score_attention_gain)
{
    const char *text = "whale, whale";
    const int T = 13, V = 257;
    int ids[13] = {256};
    for (int i = 0; i < T - 1; i++)
        ids[i + 1] = (unsigned char)text[i];
    float *lp = malloc(2 * (size_t)T * V * sizeof *lp), *own = lp + (size_t)T * V;
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward_ablated(g_model, ids, T, lp, own, err, sizeof err), 0);
    cJSON *o = run_json(API_EP_SCORE, "{\"text\":\"whale, whale\",\"top_k\":0,\"attention_gain\":true}");
    cJSON *toks = cJSON_GetObjectItem(o, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(toks), T - 1);
    double nonzero = 0.0;
    for (int t = 1; t < T; t++) {
        cJSON *tok = cJSON_GetArrayItem(toks, t - 1);
        double want = (double)lp[(t - 1) * V + ids[t]] - own[(t - 1) * V + ids[t]];
        ck_assert_msg(fabs(num(tok, "gain") - want) < 1e-5, "position %d: gain %g, want %g", t, num(tok, "gain"),
                      want);
        ck_assert_msg(fabs(num(tok, "logprob") - lp[(t - 1) * V + ids[t]]) < 1e-6, "position %d", t);
        nonzero = fmax(nonzero, fabs(want));
    }
    ck_assert_msg(nonzero > 1e-3, "the attention changes nothing on this fixture");
    /* The first token sees only BOS, whose window holds itself alone: no gain. */
    ck_assert(fabs(num(cJSON_GetArrayItem(toks, 0), "gain")) < 1e-6);
    cJSON_Delete(o);
    o = run_json(API_EP_SCORE, "{\"text\":\"whale\",\"attention_gain\":false}");
    ck_assert_ptr_null(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "tokens"), 0), "gain"));
    cJSON_Delete(o);
    free(lp);
}
END_TEST

START_TEST(test_attention_rows)
{
    const int W = model_get_config(g_model)->window;
    for (int dense = 0; dense < 2; dense++) {
        cJSON *o = run_json(API_EP_ATTENTION, dense ? "{\"text\":\"attention, please\",\"format\":\"dense\"}"
                                                    : "{\"text\":\"attention, please\"}");
        const int T = 18;
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")), T);
        ck_assert_int_eq((int)num(o, "window"), W);
        ck_assert_str_eq(cJSON_GetObjectItem(o, "attention")->valuestring, "dot");
        cJSON *rows = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "maps"), 0);
        ck_assert_int_eq(cJSON_GetArraySize(rows), T);
        for (int t = 0; t < T; t++) {
            cJSON *row = cJSON_GetArrayItem(rows, t);
            int want = dense ? T : (t + 1 < W ? t + 1 : W);
            ck_assert_int_eq(cJSON_GetArraySize(row), want);
            double s = 0;
            for (int i = 0; i < want; i++) {
                double v = cJSON_GetArrayItem(row, i)->valuedouble;
                if (dense && (i > t || i < t - W + 1))
                    ck_assert(v == 0.0);
                s += v;
            }
            ck_assert_msg(fabs(s - 1.0) < 1e-5, "row %d sums to %g", t, s);
        }
        cJSON_Delete(o);
    }
}
END_TEST

/* An array of numbers as doubles; n is checked. */
static void numbers(const cJSON *arr, int n, double *out)
{
    ck_assert_msg(cJSON_IsArray(arr), "not an array");
    ck_assert_int_eq(cJSON_GetArraySize(arr), n);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(arr, i);
        ck_assert(cJSON_IsNumber(v));
        out[i] = v->valuedouble;
    }
}

static void assert_close(double got, double want, const char *what, int i)
{
    ck_assert_msg(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want), "%s[%d]: %.9g, want %.9g", what, i, got, want);
}

/* The summary's figures recomputed from the engine's band maps, on a text
 * longer than the fixture's window (so rows are cut and BOS leaves the window). */
START_TEST(test_attention_summary)
{
    const char *text = "the whale, the whale!";
    const int T = 22, W = model_get_config(g_model)->window, D = T < W ? T : W;
    int ids[22] = {256};
    for (int i = 0; i < T - 1; i++)
        ids[i + 1] = (unsigned char)text[i];
    float *band = malloc((size_t)T * W * sizeof *band);
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward(g_model, ids, T, NULL, band, NULL, err, sizeof err), 0);
    ck_assert_int_lt(W, T);

    double ent[22], norm[22], look[22], self[22], bos[22], dist[22] = {0}, mean[5] = {0};
    for (int t = 0; t < T; t++) {
        int lo = t - W + 1 < 0 ? 0 : t - W + 1, n = t - lo + 1;
        ent[t] = look[t] = 0;
        for (int i = lo; i <= t; i++) {
            double a = band[(size_t)t * W + i - t + W - 1];
            ent[t] -= a > 0 ? a * log(a) : 0;
            look[t] += a * (t - i);
            dist[t - i] += a / (T - (t - i));
        }
        norm[t] = n == 1 ? 0 : ent[t] / log(n);
        self[t] = band[(size_t)t * W + W - 1];
        bos[t] = lo == 0 ? band[(size_t)t * W + W - 1 - t] : 0;
        const double fig[5] = {ent[t], norm[t], look[t], self[t], bos[t]};
        for (int f = 0; f < 5; f++)
            mean[f] += fig[f] / T;
    }
    ck_assert(bos[W] == 0 && bos[W - 1] > 0);
    ck_assert(norm[0] == 0 && self[0] == 1);

    for (int with_maps = 0; with_maps < 2; with_maps++) {
        cJSON *o = run_json(API_EP_ATTENTION, with_maps ? "{\"text\":\"the whale, the whale!\",\"summary\":true}"
                                                        : "{\"text\":\"the whale, the whale!\",\"summary\":true,"
                                                          "\"maps\":false}");
        ck_assert(!with_maps == !cJSON_GetObjectItem(o, "maps"));
        ck_assert(!with_maps == !cJSON_GetObjectItem(o, "format"));
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")), T);
        const cJSON *sum = cJSON_GetObjectItem(o, "summary"), *heads = cJSON_GetObjectItem(sum, "heads");
        ck_assert_int_eq(cJSON_GetArraySize(heads), 1);
        const cJSON *both[2] = {cJSON_GetArrayItem(heads, 0), cJSON_GetObjectItem(sum, "average")};
        const char *names[5] = {"entropy", "normalized_entropy", "lookback", "self", "bos"};
        const double *want[5] = {ent, norm, look, self, bos};
        for (int k = 0; k < 2; k++) {
            double got[22];
            for (int f = 0; f < 5; f++) {
                numbers(cJSON_GetObjectItem(both[k], names[f]), T, got);
                for (int t = 0; t < T; t++)
                    assert_close(got[t], want[f][t], names[f], t);
                assert_close(num(cJSON_GetObjectItem(both[k], "mean"), names[f]), mean[f], names[f], -1);
            }
            numbers(cJSON_GetObjectItem(both[k], "by_distance"), D, got);
            for (int d = 0; d < D; d++)
                assert_close(got[d], dist[d], "by_distance", d);
        }
        cJSON_Delete(o);
    }
    free(band);
}
END_TEST

/* Each position's occluded log-probability is the engine's on the changed
 * input; positions outside the range, BOS and those holding the baseline are
 * not occluded. */
START_TEST(test_attribution_matches_engine)
{
    const int V = 257;
    const char *text = "a sea of whales";
    const int n = 16, target = 12, range = 8, first = target - range; /* 4 .. 11 */
    int ids[16] = {256};
    for (int i = 0; i < n - 1; i++)
        ids[i + 1] = (unsigned char)text[i];
    float *lp = malloc((size_t)target * V * sizeof *lp);
    char err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(model_forward(g_model, ids, target, lp, NULL, NULL, err, sizeof err), 0);
    const double orig = lp[(size_t)(target - 1) * V + ids[target]];

    cJSON *o = run_json(API_EP_ATTRIBUTION, "{\"text\":\"a sea of whales\",\"target\":12,\"range\":8,\"baseline\":97}");
    const cJSON *tg = cJSON_GetObjectItem(o, "target");
    ck_assert_int_eq((int)num(tg, "position"), target);
    ck_assert_int_eq((int)num(tg, "id"), ids[target]);
    assert_close(num(tg, "logprob"), orig, "target", target);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "baseline"), "id"), 'a');
    const cJSON *ps = cJSON_GetObjectItem(o, "positions");
    ck_assert_int_eq(cJSON_GetArraySize(ps), range);
    int occluded = 0;
    for (int k = 0; k < range; k++) {
        const cJSON *p = cJSON_GetArrayItem(ps, k);
        const int at = first + k;
        ck_assert_int_eq((int)num(p, "position"), at);
        ck_assert_int_eq((int)num(p, "id"), ids[at]);
        double want = orig;
        if (ids[at] != 'a') {
            int changed[16];
            memcpy(changed, ids, sizeof changed);
            changed[at] = 'a';
            ck_assert_int_eq(model_forward(g_model, changed, target, lp, NULL, NULL, err, sizeof err), 0);
            want = lp[(size_t)(target - 1) * V + ids[target]];
            occluded++;
        } else {
            ck_assert(num(p, "delta") == 0.0);
        }
        assert_close(num(p, "logprob"), want, "logprob", at);
        assert_close(num(p, "delta"), want - orig, "delta", at);
    }
    ck_assert_int_eq(occluded, range - 1); /* "whales" has one a in 4..11: "ea of wh" -> the a of "sea" */
    const cJSON *u = cJSON_GetObjectItem(o, "usage");
    ck_assert_int_eq((int)num(u, "input_tokens"), n - 1);
    ck_assert_int_eq((int)num(u, "variants"), occluded + 1);
    cJSON_Delete(o);

    /* Defaults: the last token, the model's window, a space. */
    o = run_json(API_EP_ATTRIBUTION, "{\"text\":\"a sea of whales\"}");
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "target"), "position"), n - 1);
    ck_assert_int_eq((int)num(o, "range"), model_get_config(g_model)->window);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "positions")), model_get_config(g_model)->window);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "baseline"), "id"), ' ');
    cJSON_Delete(o);
    /* A range past BOS stops at position 1. */
    o = run_json(API_EP_ATTRIBUTION, "{\"text\":\"sea\",\"range\":30}");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "positions")), 2);
    ck_assert_int_eq((int)num(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "positions"), 0), "position"), 1);
    cJSON_Delete(o);
    free(lp);
}
END_TEST

/* Concatenated stream texts, checking each event is "id: TAG.N" (N counting
 * from 1) and well-formed JSON or [DONE]. */
static char *stream_text(const char *sse, int *events, const char **finish, bool openai)
{
    static char final_reason[16];
    size_t cap = strlen(sse) + 1, len = 0;
    char *text = calloc(1, cap);
    *events = 0;
    const char *p = sse;
    bool done = false;
    int number = 0;
    while (*p) {
        char tag[17];
        int n = -1, used = 0;
        ck_assert_msg(sscanf(p, "id: %16[0-9a-f].%d\n%n", tag, &n, &used) == 2 && used > 0, "no event id: %.40s", p);
        ck_assert_int_eq(n, ++number);
        p += used;
        ck_assert_msg(strncmp(p, "data: ", 6) == 0, "not an event: %.40s", p);
        const char *end = strstr(p, "\n\n");
        ck_assert(end != NULL);
        ck_assert_msg(!done, "event after [DONE]");
        if (strncmp(p + 6, "[DONE]", 6) == 0) {
            done = true;
        } else {
            cJSON *ev = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
            ck_assert_msg(ev != NULL, "bad event %.60s", p);
            cJSON *t = openai ? cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0), "text")
                              : cJSON_GetObjectItem(ev, "text");
            if (cJSON_IsString(t)) {
                size_t n = strlen(t->valuestring);
                memcpy(text + len, t->valuestring, n);
                len += n;
            }
            cJSON *fr = openai ? cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0),
                                                     "finish_reason")
                               : cJSON_GetObjectItem(ev, "finish_reason");
            if (cJSON_IsString(fr))
                snprintf(final_reason, sizeof final_reason, "%s", fr->valuestring);
            (*events)++;
            cJSON_Delete(ev);
        }
        p = end + 2;
    }
    ck_assert_msg(done, "stream did not end with [DONE]");
    *finish = final_reason;
    return text;
}

START_TEST(test_generation_is_reproducible_and_streams_alike)
{
    const char *req = "{\"prompt\":\"Call me\",\"max_tokens\":40,\"temperature\":0.9,\"seed\":7,\"logprobs\":2}";
    cJSON *a = run_json(API_EP_GENERATE, req), *b = run_json(API_EP_GENERATE, req);
    char *sa = cJSON_PrintUnformatted(a), *sb = cJSON_PrintUnformatted(b);
    ck_assert_str_eq(sa, sb);
    ck_assert_str_eq(cJSON_GetObjectItem(a, "finish_reason")->valuestring, "length");
    cJSON *toks = cJSON_GetObjectItem(a, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(toks), 40);
    cJSON *usage = cJSON_GetObjectItem(a, "usage");
    ck_assert_int_eq((int)num(usage, "prompt_tokens"), 7);
    ck_assert_int_eq((int)num(usage, "completion_tokens"), 40);
    for (int i = 0; i < 40; i++) {
        cJSON *t = cJSON_GetArrayItem(toks, i);
        ck_assert_int_ne((int)num(t, "id"), 256);
        ck_assert(num(t, "logprob") <= 0.0);
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(t, "top")), 2);
    }

    /* The same request streamed: same text, events end with the finish and [DONE]. */
    const char *sreq = "{\"prompt\":\"Call me\",\"max_tokens\":40,\"temperature\":0.9,\"seed\":7,\"logprobs\":2,"
                       "\"stream\":true}";
    int status, events;
    const char *finish;
    char *sse = run_job(API_EP_GENERATE, sreq, &status);
    ck_assert_int_eq(status, 200);
    char *text = stream_text(sse, &events, &finish, false);
    ck_assert_str_eq(text, cJSON_GetObjectItem(a, "text")->valuestring);
    ck_assert_int_eq(events, 41);
    ck_assert_str_eq(finish, "length");

    /* Another seed, another text (the fixture's distribution is close to uniform). */
    cJSON *c = run_json(API_EP_GENERATE, "{\"prompt\":\"Call me\",\"max_tokens\":40,\"temperature\":0.9,\"seed\":8}");
    ck_assert_str_ne(cJSON_GetObjectItem(c, "text")->valuestring, cJSON_GetObjectItem(a, "text")->valuestring);
    free(text);
    free(sse);
    free(sa);
    free(sb);
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(c);
}
END_TEST

START_TEST(test_stop_string_ends_generation)
{
    /* Take three printable generated bytes as the stop string; the answer ends
     * before their first occurrence.  The fixture emits any byte, so look for them. */
    char stop[4] = "";
    cJSON *a = NULL, *toks = NULL;
    for (int seed = 3; seed < 40 && !stop[0]; seed++) {
        char req0[128];
        snprintf(req0, sizeof req0, "{\"prompt\":\"x\",\"max_tokens\":60,\"temperature\":0.7,\"seed\":%d}", seed);
        cJSON_Delete(a);
        a = run_json(API_EP_GENERATE, req0);
        toks = cJSON_GetObjectItem(a, "tokens");
        for (int i = 10; i + 3 <= 60 && !stop[0]; i++) {
            bool plain = true;
            for (int k = 0; k < 3; k++) {
                int b = (int)num(cJSON_GetArrayItem(toks, i + k), "id");
                plain &= b >= 0x20 && b < 0x7f && b != '"' && b != '\\';
            }
            for (int k = 0; plain && k < 3; k++)
                stop[k] = (char)num(cJSON_GetArrayItem(toks, i + k), "id");
        }
        if (stop[0])
            cJSON_AddNumberToObject(a, "seed_used", seed);
    }
    ck_assert_msg(stop[0], "no printable run in 37 seeds");
    int seed = (int)num(a, "seed_used");
    int first = -1;
    for (int i = 0; i + 3 <= 60 && first < 0; i++) {
        bool m = true;
        for (int k = 0; k < 3; k++)
            m &= (int)num(cJSON_GetArrayItem(toks, i + k), "id") == (unsigned char)stop[k];
        if (m)
            first = i;
    }
    char req[256], *plain = NULL;
    for (int streamed = 0; streamed < 2; streamed++) {
        snprintf(req, sizeof req,
                 "{\"prompt\":\"x\",\"max_tokens\":60,\"temperature\":0.7,\"seed\":%d,\"stop\":[\"zzzz\",\"%s\"]%s}",
                 seed, stop, streamed ? ",\"stream\":true" : "");
        int status, events;
        const char *finish;
        char *out = run_job(API_EP_GENERATE, req, &status), *text;
        if (streamed) {
            text = stream_text(out, &events, &finish, false);
            ck_assert_str_eq(finish, "stop");
        } else {
            cJSON *o = cJSON_Parse(out);
            text = strdup(cJSON_GetObjectItem(o, "text")->valuestring);
            ck_assert_str_eq(cJSON_GetObjectItem(o, "finish_reason")->valuestring, "stop");
            ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")), first);
            ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "completion_tokens"), first + 3);
            cJSON_Delete(o);
        }
        ck_assert_ptr_null(strstr(text, stop));
        if (streamed)
            ck_assert_str_eq(text, plain);
        else
            plain = strdup(text);
        free(text);
        free(out);
    }
    free(plain);
    cJSON_Delete(a);
}
END_TEST

/* Every event's text is whole UTF-8: the fixture model emits bytes >= 0x80 freely. */
START_TEST(test_stream_sends_whole_characters)
{
    int status, events;
    const char *finish;
    char *sse = run_job(API_EP_GENERATE,
                        "{\"prompt\":\"\",\"max_tokens\":80,\"temperature\":1.0,\"seed\":11,\"stream\":true}", &status);
    const char *p = sse;
    int held = 0;
    while ((p = strstr(p, "data: {\"token\""))) {
        const char *end = strstr(p, "\n\n");
        cJSON *ev = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
        const unsigned char *t = (const unsigned char *)cJSON_GetObjectItem(ev, "text")->valuestring;
        held += t[0] == '\0';
        for (size_t i = 0; t[i];) {
            int n = t[i] < 0x80 ? 1 : t[i] >= 0xF0 ? 4 : t[i] >= 0xE0 ? 3 : 2;
            ck_assert_msg(t[i] < 0x80 || t[i] >= 0xC2, "bad lead byte");
            for (int k = 1; k < n; k++)
                ck_assert_msg((t[i + k] & 0xC0) == 0x80, "split character in an event");
            i += (size_t)n;
        }
        cJSON_Delete(ev);
        p = end;
    }
    ck_assert_int_gt(held, 0); /* some event held back half a character: the rule was exercised */
    char *text = stream_text(sse, &events, &finish, false);
    ck_assert_int_eq(events, 81);
    free(text);
    free(sse);
}
END_TEST

/* k = 0 alternatives and the byte 0, both of which once slipped past the edges. */
START_TEST(test_zero_alternatives_and_nul_bytes)
{
    cJSON *o = run_json(API_EP_SCORE, "{\"text\":\"ab\",\"top_k\":0}");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "next")), 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "tokens"), 1), "top")), 0);
    cJSON_Delete(o);

    o = run_json(API_EP_COMPLETIONS, "{\"prompt\":\"ab\",\"max_tokens\":0,\"echo\":true,\"logprobs\":0}");
    cJSON *lpo = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "logprobs");
    cJSON *top = cJSON_GetObjectItem(lpo, "top_logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(top), 2);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(top, 1)), 1); /* only the token itself */
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 1), "b")));
    cJSON_Delete(o);

    /* Byte 0 is a token like any other: it is escaped, never a string's end. */
    api_reply r;
    const char *d = "{\"ids\":[65,0,66]}";
    ck_assert_int_eq(handle_inline(API_EP_DETOKENIZE, NULL, NULL, d, strlen(d), false, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "\"text\":\"A\\u0000B\"") != NULL, "%s", r.body);
    free(r.body);
    int status;
    char *s = run_job(API_EP_SCORE, "{\"ids\":[0,10,34,92,1]}", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_msg(strstr(s, "\"text\":\"\\u0000\"") && strstr(s, "\"text\":\"\\n\"") &&
                      strstr(s, "\"text\":\"\\\"\"") && strstr(s, "\"text\":\"\\\\\"") &&
                      strstr(s, "\"text\":\"\\u0001\""),
                  "%s", s);
    o = cJSON_Parse(s);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "tokens"), 2), "text")->valuestring,
                     "\"");
    cJSON_Delete(o);
    free(s);
    s = run_job(API_EP_COMPLETIONS, "{\"ids\":[0],\"max_tokens\":0,\"echo\":true,\"logprobs\":1}", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_msg(strstr(s, "\"text\":\"\\u0000\"") && strstr(s, "\"tokens\":[\"bytes:\\\\x00\"]"), "%s", s);
    free(s);
}
END_TEST

START_TEST(test_completions_echo_scores_prompt)
{
    cJSON *s = run_json(API_EP_SCORE, "{\"text\":\"Call me Ishmael.\"}");
    cJSON *o = run_json(API_EP_COMPLETIONS,
                        "{\"model\":\"fixture gru_dot\",\"prompt\":\"Call me Ishmael.\",\"max_tokens\":0,\"echo\":true,\"logprobs\":1}");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion");
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "Call me Ishmael.");
    ck_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length");
    cJSON *lpo = cJSON_GetObjectItem(ch, "logprobs");
    cJSON *tl = cJSON_GetObjectItem(lpo, "token_logprobs"), *st = cJSON_GetObjectItem(s, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(tl), 16);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lpo, "tokens")), 16);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lpo, "top_logprobs")), 16);
    for (int i = 0; i < 16; i++) {
        ck_assert(fabs(cJSON_GetArrayItem(tl, i)->valuedouble - num(cJSON_GetArrayItem(st, i), "logprob")) < 1e-6);
        ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lpo, "text_offset"), i)->valueint, i);
    }
    ck_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lpo, "tokens"), 5)->valuestring, "m");
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "prompt_tokens"), 16);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "completion_tokens"), 0);
    cJSON_Delete(o);
    cJSON_Delete(s);

    /* n choices, streamed, each ends; [DONE] once. */
    int status, events;
    const char *finish;
    char *sse = run_job(API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"max_tokens\":5,\"n\":3,\"stream\":true,\"seed\":1}",
                        &status);
    char *text = stream_text(sse, &events, &finish, true);
    ck_assert_int_eq(events, 3 * 5 + 3);
    ck_assert_str_eq(finish, "length");
    free(text);
    free(sse);

    /* stream_options.include_usage adds one chunk with no choices and the usage. */
    sse = run_job(API_EP_COMPLETIONS,
                  "{\"prompt\":\"ab\",\"max_tokens\":4,\"n\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                  &status);
    text = stream_text(sse, &events, &finish, true);
    ck_assert_int_eq(events, 2 * 4 + 2 + 1);
    const char *last = strstr(sse, "\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":8,\"total_tokens\":10}}");
    ck_assert_ptr_nonnull(last);
    ck_assert_ptr_nonnull(strstr(last, "data: [DONE]"));
    free(text);
    free(sse);
}
END_TEST

START_TEST(test_inline_endpoints)
{
    api_reply r;
    ck_assert_int_eq(handle_inline(API_EP_READY, NULL, NULL, NULL, 0, true, &r), 0);
    ck_assert_int_eq(r.status, 503);
    free(r.body);
    ck_assert_int_eq(handle_inline(API_EP_TOKENIZE, NULL, NULL, "{\"text\":\"h\xC3\xA9\"}", 14, false, &r), 0);
    cJSON *o = cJSON_Parse(r.body), *toks = cJSON_GetObjectItem(o, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(toks), 3);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(toks, 1), "text")->valuestring, "\xEF\xBF\xBD");
    ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(toks, 2), "bytes"), 0)->valueint, 0xA9);
    cJSON_Delete(o);
    free(r.body);
    const char *d = "{\"ids\":[256,104,195,169,255]}";
    ck_assert_int_eq(handle_inline(API_EP_DETOKENIZE, NULL, NULL, d, strlen(d), false, &r), 0);
    o = cJSON_Parse(r.body);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "text")->valuestring, "h\xC3\xA9\xEF\xBF\xBD");
    cJSON_Delete(o);
    free(r.body);
    d = "{\"ids\":[1,257]}";
    ck_assert_int_eq(handle_inline(API_EP_DETOKENIZE, NULL, NULL, d, strlen(d), false, &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"param\":\"ids\""));
    free(r.body);
    ck_assert_int_eq(handle_inline(API_EP_MODEL, NULL, NULL, NULL, 0, false, &r), 0);
    o = cJSON_Parse(r.body);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "limits"), "max_input_tokens"), 64);
    ck_assert_int_eq((int)num(o, "parameters"), (int)model_param_count(g_model));
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "metadata"), "layers")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "metadata"), "cell")));
    cJSON_Delete(o);
    free(r.body);
}
END_TEST

START_TEST(test_model_by_id)
{
    api_endpoint ep;
    const char *allow;
    ck_assert_int_eq(api_route("GET", "/v1/models/fixture gru_dot", &ep, &allow), 0);
    ck_assert_int_eq(ep, API_EP_MODEL_BY_ID);
    ck_assert_int_eq(api_route("GET", "/v1/models/", &ep, &allow), 404);
    ck_assert_int_eq(api_route("POST", "/v1/models/fixture gru_dot", &ep, &allow), 405);
    api_reply r;
    ck_assert_int_eq(handle_inline(API_EP_MODEL_BY_ID, "/v1/models/fixture gru_dot", NULL, NULL, 0, false, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"id\":\"fixture gru_dot\""));
    free(r.body);
    ck_assert_int_eq(handle_inline(API_EP_MODEL_BY_ID, "/v1/models/other", NULL, NULL, 0, false, &r), 0);
    ck_assert_int_eq(r.status, 404);
    ck_assert_ptr_nonnull(strstr(r.body, "\"param\":\"model\""));
    free(r.body);
}
END_TEST

START_TEST(test_metrics_exposition)
{
    metrics_request(&g_metrics, API_EP_SCORE, 200, 0.02);
    metrics_request(&g_metrics, API_EP_SCORE, 413, 0.0001);
    metrics_batch(&g_metrics, 5);
    api_reply r;
    ck_assert_int_eq(handle_inline(API_EP_METRICS, NULL, NULL, NULL, 0, false, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_requests_total{route=\"/v1/score\",status=\"200\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_requests_total{route=\"/v1/score\",status=\"413\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_request_duration_seconds_bucket{route=\"/v1/score\",le=\"0.025\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_request_duration_seconds_count{route=\"/v1/score\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_batch_size_bucket{le=\"4\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "attnlm_batch_size_bucket{le=\"8\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE attnlm_generated_tokens_total counter\n"));
    ck_assert_str_eq(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    free(r.body);
}
END_TEST

/* ---- penalties, logit_bias, arrays of inputs ------------------------------------- */

/* Each adjustment on a logit vector worked out by hand (all values exact in binary). */
START_TEST(test_sampler_adjust_by_hand)
{
    const float in[4] = {2.0f, -1.0f, 0.5f, 3.0f};
    const int window[4] = {1, 1, 0, 0}, counts[4] = {0, 2, 1, 0};
    float x[4];
    /* repetition 2: positive logits halved, negative doubled, only for tokens in the window */
    memcpy(x, in, sizeof x);
    sampler_adjust(x, 4, &(sampler_penalties){0.0f, 0.0f, 2.0f}, window, counts, NULL);
    ck_assert(x[0] == 1.0f && x[1] == -2.0f && x[2] == 0.5f && x[3] == 3.0f);
    /* presence 0.5: once for every generated token, whatever its count */
    memcpy(x, in, sizeof x);
    sampler_adjust(x, 4, &(sampler_penalties){0.5f, 0.0f, 1.0f}, window, counts, NULL);
    ck_assert(x[0] == 2.0f && x[1] == -1.5f && x[2] == 0.0f && x[3] == 3.0f);
    /* frequency 0.25: per time generated */
    memcpy(x, in, sizeof x);
    sampler_adjust(x, 4, &(sampler_penalties){0.0f, 0.25f, 1.0f}, window, counts, NULL);
    ck_assert(x[0] == 2.0f && x[1] == -1.5f && x[2] == 0.25f && x[3] == 3.0f);
    /* bias: added; -INFINITY bans */
    const float bias[4] = {0.0f, 0.0f, 1.5f, -INFINITY};
    memcpy(x, in, sizeof x);
    sampler_adjust(x, 4, NULL, NULL, NULL, bias);
    ck_assert(x[0] == 2.0f && x[1] == -1.0f && x[2] == 2.0f && x[3] == -INFINITY);
    /* all together, in the order repetition, presence + frequency, bias */
    memcpy(x, in, sizeof x);
    sampler_adjust(x, 4, &(sampler_penalties){0.5f, 0.25f, 2.0f}, window, counts, bias);
    ck_assert(x[0] == 1.0f && x[1] == -3.0f && x[2] == 1.25f && x[3] == -INFINITY);

    /* Greedy picks the argmax of the adjusted logits: 2, not the model's 3; no coin reaches a ban. */
    sampler *smp = sampler_new(4);
    ck_assert_int_eq(sampler_sample(smp, in, &(sampler_params){0.0f, 0, 1.0f}, 0.5f), 3);
    ck_assert_int_eq(sampler_sample(smp, x, &(sampler_params){0.0f, 0, 1.0f}, 0.5f), 2);
    for (float coin = 0.0f; coin < 1.0f; coin += 1.0f / 64)
        ck_assert_int_ne(sampler_sample(smp, x, &(sampler_params){1.0f, 0, 1.0f}, coin), 3);
    /* Everything banned: no NaN, no crash, the lowest id. */
    const float none[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    ck_assert_int_eq(sampler_sample(smp, none, &(sampler_params){1.0f, 2, 0.9f}, 0.7f), 0);
    ck_assert_int_eq(sampler_sample(smp, none, &(sampler_params){0.0f, 0, 1.0f}, 0.7f), 0);
    sampler_free(smp);
}
END_TEST

static int tok_id(const cJSON *toks, int i) { return (int)num(cJSON_GetArrayItem(toks, i), "id"); }

/* A penalized, biased greedy generation is what decoding by hand gives: the
 * repetition window (the last 3 tokens of prompt + output) slides, presence and
 * frequency count the output only, and the answer's log-probabilities are the
 * model's own. */
START_TEST(test_penalized_greedy_equals_reference)
{
    const char *prompt = "abcab";
    const int P = 5, N = 40, V = 257, last_n = 3;
    const float presence = 0.7f, frequency = 0.4f, repetition = 1.5f;
    cJSON *o = run_json(API_EP_GENERATE, "{\"prompt\":\"abcab\",\"max_tokens\":40,\"temperature\":0,"
                                         "\"presence_penalty\":0.7,\"frequency_penalty\":0.4,\"repetition_penalty\":1.5,"
                                         "\"penalty_last_n\":3,\"logit_bias\":{\"101\":-100,\"32\":2.5}}");
    cJSON *toks = cJSON_GetObjectItem(o, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(toks), N);

    int ctx[5 + 40];
    for (int i = 0; i < P; i++)
        ctx[i] = (unsigned char)prompt[i];
    int ids[6] = {256};
    memcpy(ids + 1, ctx, P * sizeof *ids);
    char err[ATTNLM_ERR_LEN];
    model_seq *seq = model_seq_new(g_model);
    model_batch *b = model_batch_new(g_model, 1);
    ck_assert_int_eq(model_forward(g_model, ids, P, NULL, NULL, seq, err, sizeof err), 0);
    float logits[257], lp[257];
    int next = ctx[P - 1], changed = 0;
    for (int n = 0; n < N; n++) {
        ck_assert_int_eq(model_step(g_model, b, &seq, &next, 1, logits, NULL, err, sizeof err), 0);
        model_log_softmax(lp, logits, V);
        changed += sampler_argmax(logits, V) != tok_id(toks, n);
        /* by hand, rescanning */
        for (int t = 0; t < V; t++) {
            int in_window = 0, gen = 0;
            for (int q = P + n - last_n; q < P + n; q++)
                in_window |= q >= 0 && ctx[q] == t;
            for (int q = P; q < P + n; q++)
                gen += ctx[q] == t;
            if (in_window)
                logits[t] = logits[t] > 0 ? logits[t] / repetition : logits[t] * repetition;
            if (gen)
                logits[t] -= presence + frequency * (float)gen;
        }
        logits[101] = -INFINITY;
        logits[32] += 2.5f;
        logits[256] = -INFINITY;
        int want = sampler_argmax(logits, V);
        ck_assert_msg(tok_id(toks, n) == want, "token %d: %d, by hand %d", n, tok_id(toks, n), want);
        ck_assert_msg((float)num(cJSON_GetArrayItem(toks, n), "logprob") == lp[want], "token %d: logprob %g, model %g",
                      n, num(cJSON_GetArrayItem(toks, n), "logprob"), lp[want]);
        ck_assert_int_ne(want, 101);
        ctx[P + n] = next = want;
    }
    ck_assert_int_gt(changed, 0); /* the penalties and the bias did change tokens */
    model_batch_free(b);
    model_seq_free(seq);
    cJSON_Delete(o);
}
END_TEST

static const char *choice_text(const cJSON *o, int k)
{
    return cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), k), "text")->valuestring;
}

START_TEST(test_logit_bias_bans)
{
    /* Banning the greedy next byte changes it; the reported numbers stay the model's. */
    cJSON *a = run_json(API_EP_GENERATE, "{\"prompt\":\"Call me\",\"max_tokens\":1,\"temperature\":0,\"logprobs\":4}");
    cJSON *ta = cJSON_GetArrayItem(cJSON_GetObjectItem(a, "tokens"), 0);
    int first = (int)num(ta, "id");
    char req[256];
    snprintf(req, sizeof req,
             "{\"prompt\":\"Call me\",\"max_tokens\":1,\"temperature\":0,\"logprobs\":4,\"logit_bias\":{\"%d\":-100}}", first);
    cJSON *b = run_json(API_EP_GENERATE, req);
    cJSON *tb = cJSON_GetArrayItem(cJSON_GetObjectItem(b, "tokens"), 0);
    int second = (int)num(tb, "id");
    ck_assert_int_ne(second, first);
    char *top_a = cJSON_PrintUnformatted(cJSON_GetObjectItem(ta, "top")),
         *top_b = cJSON_PrintUnformatted(cJSON_GetObjectItem(tb, "top"));
    ck_assert_str_eq(top_a, top_b);
    /* the next most likely byte of the model, with its own log-probability */
    cJSON *alt = cJSON_GetArrayItem(cJSON_GetObjectItem(ta, "top"), 1);
    ck_assert_int_eq(second, (int)num(alt, "id"));
    ck_assert(num(tb, "logprob") == num(alt, "logprob"));
    free(top_a);
    free(top_b);
    cJSON_Delete(a);
    cJSON_Delete(b);

    /* A positive bias on one byte with the rest banned: only that byte, at any temperature. */
    char *big = malloc(8192);
    size_t len = (size_t)snprintf(big, 8192, "{\"prompt\":\"x\",\"max_tokens\":20,\"seed\":4,\"logit_bias\":{");
    for (int t = 0; t < 256; t++)
        len += (size_t)snprintf(big + len, 8192 - len, "%s\"%d\":%s", t ? "," : "", t, t == 'q' ? "3" : "-100");
    snprintf(big + len, 8192 - len, "}}");
    cJSON *q = run_json(API_EP_GENERATE, big);
    ck_assert_str_eq(cJSON_GetObjectItem(q, "text")->valuestring, "qqqqqqqqqqqqqqqqqqqq");
    cJSON_Delete(q);

    /* Every byte banned: the bans cancel out (the same -100 added to every byte), no crash. */
    len = (size_t)snprintf(big, 8192, "{\"prompt\":\"x\",\"max_tokens\":20,\"seed\":4,\"logit_bias\":{");
    for (int t = 0; t < 257; t++)
        len += (size_t)snprintf(big + len, 8192 - len, "%s\"%d\":-100", t ? "," : "", t);
    snprintf(big + len, 8192 - len, "}}");
    for (int greedy = 0; greedy < 2; greedy++) {
        cJSON *all = run_json(API_EP_GENERATE, big);
        cJSON *plain = run_json(API_EP_GENERATE, greedy ? "{\"prompt\":\"x\",\"max_tokens\":20,\"temperature\":0}"
                                                        : "{\"prompt\":\"x\",\"max_tokens\":20,\"seed\":4}");
        cJSON *ta = cJSON_GetObjectItem(all, "tokens"), *tp = cJSON_GetObjectItem(plain, "tokens");
        for (int i = 0; i < 20; i++)
            ck_assert_int_eq(tok_id(ta, i), tok_id(tp, i));
        cJSON_Delete(all);
        cJSON_Delete(plain);
        len = (size_t)snprintf(big, 8192, "{\"prompt\":\"x\",\"max_tokens\":20,\"temperature\":0,\"logit_bias\":{");
        for (int t = 0; t < 256; t++)
            len += (size_t)snprintf(big + len, 8192 - len, "%s\"%d\":-100", t ? "," : "", t);
        snprintf(big + len, 8192 - len, "}}");
    }
    free(big);

    /* The same on /v1/completions, with its own greedy. */
    cJSON *c = run_json(API_EP_COMPLETIONS, "{\"prompt\":\"Call me\",\"max_tokens\":1,\"temperature\":0}");
    snprintf(req, sizeof req, "{\"prompt\":\"Call me\",\"max_tokens\":1,\"temperature\":0,\"logit_bias\":{\"%d\":-100}}",
             (unsigned char)choice_text(c, 0)[0]);
    ck_assert_int_eq((unsigned char)choice_text(c, 0)[0], first);
    cJSON *d = run_json(API_EP_COMPLETIONS, req);
    ck_assert_int_eq((unsigned char)choice_text(d, 0)[0], second);
    cJSON_Delete(c);
    cJSON_Delete(d);
}
END_TEST

/* Greedy text that repeats itself repeats less with a frequency penalty. */
START_TEST(test_frequency_penalty_reduces_repeats)
{
    int repeats[2];
    for (int k = 0; k < 2; k++) {
        cJSON *o = run_json(API_EP_GENERATE, k ? "{\"prompt\":\"the \",\"max_tokens\":100,\"temperature\":0,"
                                                 "\"frequency_penalty\":2}"
                                               : "{\"prompt\":\"the \",\"max_tokens\":100,\"temperature\":0}");
        cJSON *toks = cJSON_GetObjectItem(o, "tokens");
        int seen[257] = {0};
        repeats[k] = 0;
        for (int i = 0; i < 100; i++)
            repeats[k] += seen[tok_id(toks, i)]++ > 0;
        cJSON_Delete(o);
    }
    ck_assert_msg(repeats[1] < repeats[0], "repeated bytes: %d with frequency_penalty 2, %d without", repeats[1],
                  repeats[0]);
}
END_TEST

/* Starts the jobs of bodies[n] together (score jobs share one forward pass) and
 * returns their answers (caller frees). */
static void run_together(api_endpoint ep, const char *const *bodies, int n, char **out)
{
    api_job *jobs[8];
    api_error e;
    for (int i = 0; i < n; i++) {
        jobs[i] = api_job_new(&g_ctx, ep, &(api_request){.body = bodies[i], .len = strlen(bodies[i])},
                             1, "t", &e);
        ck_assert_msg(jobs[i] != NULL, "%s: %s", bodies[i], e.message);
    }
    api_worker *w = api_worker_new(8);
    api_job_start_many(jobs, n, w);
    for (int i = 0; i < n; i++) {
        int status;
        char *data;
        ck_assert(api_job_done(jobs[i]));
        size_t len = api_job_take_output(jobs[i], &data, &status);
        ck_assert_int_eq(status, 200);
        ck_assert_ptr_nonnull(out[i] = strndup(data, len));
        strip_timings(out[i]);
        free(data);
        api_job_free(jobs[i]);
    }
    api_worker_free(w);
}

/* Every answer has "timings" (a stream's final event too), whose counts are the
 * answer's and whose rates follow from them; each successful job is one
 * observation of the GenAI request duration, and a generation one of time to
 * first token and per output token. */
START_TEST(test_timings)
{
    g_keep_timings = true;
    const int slot = 0;
    unsigned long dur0 = atomic_load(&g_metrics.model[slot].request_duration[METRICS_OP_GENERATE].count);
    unsigned long ttft0 = atomic_load(&g_metrics.model[slot].time_to_first_token[METRICS_OP_GENERATE].count);
    unsigned long tpot0 = atomic_load(&g_metrics.model[slot].time_per_output_token[METRICS_OP_GENERATE].count);
    cJSON *o = run_json(API_EP_GENERATE, "{\"prompt\":\"The sea\",\"max_tokens\":20,\"seed\":1}");
    const cJSON *t = cJSON_GetObjectItem(o, "timings");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq((int)num(t, "prompt_tokens"), 7);
    ck_assert_int_eq((int)num(t, "generated_tokens"), 20);
    ck_assert(num(t, "queue_ms") >= 0 && num(t, "prompt_ms") >= 0 && num(t, "generation_ms") > 0);
    ck_assert_msg(fabs(num(t, "tokens_per_second") - 20 / (num(t, "generation_ms") / 1e3)) <
                      1e-2 * num(t, "tokens_per_second") + 1e-2,
                  "tokens_per_second %g for 20 tokens in %g ms", num(t, "tokens_per_second"), num(t, "generation_ms"));
    cJSON_Delete(o);
    ck_assert_uint_eq(atomic_load(&g_metrics.model[slot].request_duration[METRICS_OP_GENERATE].count), dur0 + 1);
    ck_assert_uint_eq(atomic_load(&g_metrics.model[slot].time_to_first_token[METRICS_OP_GENERATE].count), ttft0 + 1);
    ck_assert_uint_eq(atomic_load(&g_metrics.model[slot].time_per_output_token[METRICS_OP_GENERATE].count),
                      tpot0 + 1);

    o = run_json(API_EP_SCORE, "{\"text\":\"whale\"}");
    t = cJSON_GetObjectItem(o, "timings");
    ck_assert_int_eq((int)num(t, "prompt_tokens"), 5);
    ck_assert_int_eq((int)num(t, "generated_tokens"), 0);
    ck_assert(num(t, "generation_ms") == 0 && num(t, "tokens_per_second") == 0);
    cJSON_Delete(o);

    int status;
    char *sse = run_job(API_EP_COMPLETIONS, "{\"prompt\":\"a\",\"max_tokens\":4,\"stream\":true,\"n\":2}", &status);
    ck_assert_int_eq(status, 200);
    const char *last = NULL;
    for (const char *p = sse; (p = strstr(p, "\"timings\":{")); p++)
        last = p;
    ck_assert_ptr_nonnull(last);
    ck_assert_ptr_nonnull(strstr(last, "\"generated_tokens\":8"));
    ck_assert_ptr_nonnull(strstr(last, "data: [DONE]"));
    free(sse);
    g_keep_timings = false;
}
END_TEST

/* /v1/chat/completions: the chat.completion shape, the same text as the
 * rendered transcript through /v1/completions, and a stream whose role comes
 * first and whose finish comes last. */
START_TEST(test_chat_completions)
{
    const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"Call me\"}]";
    char body[512];
    snprintf(body, sizeof body, "{%s,\"max_tokens\":16,\"seed\":2}", msgs);
    cJSON *o = run_json(API_EP_CHAT, body);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion");
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    const cJSON *msg = cJSON_GetObjectItem(ch, "message");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant");
    cJSON *c = run_json(API_EP_COMPLETIONS, "{\"prompt\":\"User: Call me\\nAssistant: \",\"max_tokens\":16,\"seed\":2,"
                                            "\"stop\":[\"\\nUser:\"]}");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring,
                     cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0), "text")->valuestring);
    cJSON_Delete(c);
    cJSON_Delete(o);
    snprintf(body, sizeof body, "{%s,\"max_tokens\":6,\"seed\":2,\"stream\":true}", msgs);
    int status;
    char *sse = run_job(API_EP_CHAT, body, &status);
    ck_assert_int_eq(status, 200);
    const char *role = strstr(sse, "\"delta\":{\"role\":\"assistant\""), *content = strstr(sse, "\"delta\":{\"content\"");
    const char *finish = strstr(sse, "\"finish_reason\":\"length\""), *done = strstr(sse, "data: [DONE]");
    ck_assert(role && content && finish && done && role < content && content < finish && finish < done);
    free(sse);
}
END_TEST

START_TEST(test_score_array_equals_singles)
{
    /* The answer of an array is each single answer, in order, byte for byte, when the
     * singles share a pass the same way; and the same to float rounding alone. */
    const char *singles[3] = {"{\"text\":\"Call me\",\"top_k\":2,\"candidates\":[\" Ishmael\",\"x\"]}",
                              "{\"ids\":[0,255,10],\"top_k\":2,\"candidates\":[\" Ishmael\",\"x\"]}",
                              "{\"text\":\"The whale, the whale!\",\"top_k\":2,\"candidates\":[\" Ishmael\",\"x\"]}"};
    char *one[3], *arr[2];
    run_together(API_EP_SCORE, singles, 3, one);
    const char *ids = "{\"ids\":[[67,97,108,108,32,109,101],[0,255,10],[256,84,104,101,32,119,104,97,108,101,44,32,"
                      "116,104,101,32,119,104,97,108,101,33]],\"top_k\":2,\"candidates\":[\" Ishmael\",\"x\"]}";
    /* Byte 0 cannot be sent in text (a string holding U+0000 is refused): the texts form
     * has a second input of its own. */
    const char *texts = "{\"texts\":[\"Call me\",\"\\u00ff\\n\",\"The whale, the whale!\"],\"top_k\":2,"
                        "\"candidates\":[\" Ishmael\",\"x\"]}";
    char *texts_one[3];
    const char *texts_singles[3] = {singles[0], "{\"text\":\"\\u00ff\\n\",\"top_k\":2,\"candidates\":[\" Ishmael\",\"x\"]}",
                                    singles[2]};
    run_together(API_EP_SCORE, texts_singles, 3, texts_one);
    run_together(API_EP_SCORE, &texts, 1, &arr[0]);
    run_together(API_EP_SCORE, &ids, 1, &arr[1]);
    for (int form = 0; form < 2; form++) {
        char **want = form ? one : texts_one;
        char expect[16384];
        int n = snprintf(expect, sizeof expect, "{\"results\":[%s,%s,%s],\"usage\":{\"input_tokens\":", want[0], want[1],
                         want[2]);
        ck_assert_int_lt(n, (int)sizeof expect);
        if (strncmp(arr[form], expect, (size_t)n) != 0) {
            size_t d = 0;
            while (arr[form][d] == expect[d])
                d++;
            ck_abort_msg("form %d differs at byte %zu: %.60s, want %.60s", form, d, arr[form] + d, expect + d);
        }
        cJSON *o = cJSON_Parse(arr[form]);
        int total = 0;
        for (int i = 0; i < 3; i++)
            total += (int)num(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "results"), i), "usage"),
                              "input_tokens");
        ck_assert_int_eq(total, 7 + 3 + 21); /* U+00FF is two bytes; a leading 256 is the BOS */
        ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "input_tokens"), total);
        cJSON_Delete(o);
    }
    /* Each alone: the same tokens and alternatives, numbers to float rounding. */
    for (int i = 0; i < 3; i++) {
        cJSON *alone = run_json(API_EP_SCORE, singles[i]);
        cJSON *o = cJSON_Parse(arr[1]), *r = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "results"), i);
        cJSON *ta = cJSON_GetObjectItem(alone, "tokens"), *tr = cJSON_GetObjectItem(r, "tokens");
        ck_assert_int_eq(cJSON_GetArraySize(ta), cJSON_GetArraySize(tr));
        for (int t = 0; t < cJSON_GetArraySize(ta); t++) {
            cJSON *x = cJSON_GetArrayItem(ta, t), *y = cJSON_GetArrayItem(tr, t);
            ck_assert_int_eq((int)num(x, "id"), (int)num(y, "id"));
            ck_assert(fabs(num(x, "logprob") - num(y, "logprob")) < 1e-5);
            for (int a = 0; a < 2; a++)
                ck_assert_int_eq((int)num(cJSON_GetArrayItem(cJSON_GetObjectItem(x, "top"), a), "id"),
                                 (int)num(cJSON_GetArrayItem(cJSON_GetObjectItem(y, "top"), a), "id"));
        }
        ck_assert(fabs(num(alone, "logprob") - num(r, "logprob")) < 1e-4);
        cJSON_Delete(o);
        cJSON_Delete(alone);
    }
    for (int i = 0; i < 3; i++) {
        free(one[i]);
        free(texts_one[i]);
    }
    free(arr[0]);
    free(arr[1]);
}
END_TEST

START_TEST(test_completions_prompt_arrays)
{
    /* Three prompts (a string, the empty prompt, token ids), two choices each: choice
     * p * 2 + j is choice j of the request for prompt p alone, with the same seed. */
    cJSON *o = run_json(API_EP_COMPLETIONS, "{\"prompt\":[\"Call me\",\"\",[104,105,256,32]],\"n\":2,\"max_tokens\":12,"
                                            "\"seed\":5,\"echo\":true,\"logprobs\":1}");
    const char *alone[3] = {"{\"prompt\":\"Call me\",\"n\":2,\"max_tokens\":12,\"seed\":5,\"echo\":true,\"logprobs\":1}",
                            "{\"prompt\":\"\",\"n\":2,\"max_tokens\":12,\"seed\":5,\"echo\":true,\"logprobs\":1}",
                            "{\"prompt\":[104,105,256,32],\"n\":2,\"max_tokens\":12,\"seed\":5,\"echo\":true,\"logprobs\":1}"};
    cJSON *choices = cJSON_GetObjectItem(o, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(choices), 6);
    int prompt_tokens = 0;
    for (int p = 0; p < 3; p++) {
        cJSON *s = run_json(API_EP_COMPLETIONS, alone[p]);
        prompt_tokens += (int)num(cJSON_GetObjectItem(s, "usage"), "prompt_tokens");
        for (int j = 0; j < 2; j++) {
            cJSON *c = cJSON_GetArrayItem(choices, p * 2 + j), *sc = cJSON_GetArrayItem(cJSON_GetObjectItem(s, "choices"), j);
            ck_assert_int_eq((int)num(c, "index"), p * 2 + j);
            ck_assert_str_eq(cJSON_GetObjectItem(c, "text")->valuestring, cJSON_GetObjectItem(sc, "text")->valuestring);
            cJSON *la = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "logprobs"), "token_logprobs"),
                  *lb = cJSON_GetObjectItem(cJSON_GetObjectItem(sc, "logprobs"), "token_logprobs");
            ck_assert_int_eq(cJSON_GetArraySize(la), cJSON_GetArraySize(lb));
            for (int t = 0; t < cJSON_GetArraySize(la); t++)
                ck_assert(fabs(cJSON_GetArrayItem(la, t)->valuedouble - cJSON_GetArrayItem(lb, t)->valuedouble) < 1e-5);
        }
        cJSON_Delete(s);
    }
    ck_assert_str_ne(choice_text(o, 0), choice_text(o, 1));
    ck_assert_int_eq(prompt_tokens, 7 + 0 + 4); /* BOS among the ids is a token like any other */
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "prompt_tokens"), prompt_tokens);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "completion_tokens"), 6 * 12);
    cJSON_Delete(o);

    /* Streamed: every choice's chunks carry its index, and add up to the same texts. */
    int status;
    char *sse = run_job(API_EP_COMPLETIONS,
                        "{\"prompt\":[\"Call me\",\"\",[104,105,256,32]],\"n\":2,\"max_tokens\":12,\"seed\":5,"
                        "\"stream\":true}",
                        &status);
    cJSON *plain = run_json(API_EP_COMPLETIONS,
                            "{\"prompt\":[\"Call me\",\"\",[104,105,256,32]],\"n\":2,\"max_tokens\":12,\"seed\":5}");
    char texts[6][64] = {{0}};
    int ends = 0;
    for (const char *p = sse; (p = strstr(p, "data: {")); p += 6) {
        const char *end = strstr(p, "\n\n");
        cJSON *ev = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0);
        int k = (int)num(c, "index");
        ck_assert(k >= 0 && k < 6);
        strcat(texts[k], cJSON_GetObjectItem(c, "text")->valuestring);
        ends += cJSON_IsString(cJSON_GetObjectItem(c, "finish_reason"));
        cJSON_Delete(ev);
    }
    ck_assert_int_eq(ends, 6);
    for (int k = 0; k < 6; k++)
        ck_assert_str_eq(texts[k], choice_text(plain, k));
    cJSON_Delete(plain);
    free(sse);

    /* 5 prompts x 12 choices: 60 sequences, more than the worker's batch of 8, step together. */
    o = run_json(API_EP_COMPLETIONS, "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"],\"n\":12,\"max_tokens\":3,\"seed\":1}");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "choices")), 60);
    ck_assert_int_eq((int)num(cJSON_GetObjectItem(o, "usage"), "completion_tokens"), 180);
    cJSON_Delete(o);
}
END_TEST

int main(void)
{
    const check_case api = {
        "api",
        CHECK_TESTS(CHECK_TEST(test_routes), CHECK_TEST(test_topk), CHECK_TEST(test_error_body), CHECK_TEST(test_api_key),
                    CHECK_LOOP(test_bad_requests_are_refused, (int)(sizeof BAD / sizeof *BAD)),
                    CHECK_TEST(test_nulls_are_defaults), CHECK_TEST(test_score_matches_engine),
                    CHECK_TEST(test_score_attention_gain),
                    CHECK_TEST(test_attention_rows), CHECK_TEST(test_attention_summary),
                    CHECK_TEST(test_attribution_matches_engine), CHECK_TEST(test_generation_is_reproducible_and_streams_alike),
                    CHECK_TEST(test_stop_string_ends_generation), CHECK_TEST(test_stream_sends_whole_characters),
                    CHECK_TEST(test_zero_alternatives_and_nul_bytes), CHECK_TEST(test_completions_echo_scores_prompt),
                    CHECK_TEST(test_inline_endpoints), CHECK_TEST(test_model_by_id),
                    CHECK_TEST(test_metrics_exposition), CHECK_TEST(test_sampler_adjust_by_hand),
                    CHECK_TEST(test_penalized_greedy_equals_reference), CHECK_TEST(test_logit_bias_bans),
                    CHECK_TEST(test_frequency_penalty_reduces_repeats), CHECK_TEST(test_score_array_equals_singles), CHECK_TEST(test_timings),
                    CHECK_TEST(test_chat_completions),
                    CHECK_TEST(test_completions_prompt_arrays)),
        .setup = setup,
        .teardown = teardown,
        .timeout = 60,
    };
    return check_main("api", &api, 1);
}
