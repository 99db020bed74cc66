#define _GNU_SOURCE /* memmem */
/* fuzz_request.c -- libFuzzer: a request body through validation to its whole
 * answer, for every POST endpoint that runs the model, on a tiny model.
 *
 * The first byte picks the endpoint; the rest is the body.  Whatever the
 * body, the job is refused with a 4xx naming a field, or it runs to its end
 * (limits keep that short) and its answer is valid: JSON for a plain answer,
 * events of JSON ending in [DONE] for a stream.
 */
#include "api.h"
#include "buf.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static api_ctx ctx;
static api_metrics metrics;
static api_worker *worker;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[ATTNLM_ERR_LEN];
    const char *path = getenv("ATTNLM_FUZZ_MODEL");
    const char *paths[] = {path ? path : "tests/fixtures/gru_multihead.safetensors"};
    api_models *models = api_models_load(paths, 1, NULL, err, sizeof err);
    if (!models) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }
    ctx = (api_ctx){.models = models,
                    .limits = {.max_body_bytes = 1 << 16,
                               .max_input_tokens = 64,
                               .max_new_tokens = 24,
                               .max_attention_tokens = 48,
                               .queue_size = 4,
                               .workers = 1,
                               .max_batch = 8},
                    .metrics = &metrics,
                    .sessions = session_store_new(&(session_limits){.max_sessions = 8, .max_bytes = 1 << 20,
                                                                     .ttl = 3600})};
    worker = api_worker_new(8);
    return 0;
}

/* A stream is events "id: TAG.N\ndata: <json>\n\n", the last one [DONE]. */
static void check_stream(const char *s, size_t n)
{
    const char *p = s, *end = s + n, *last = NULL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (strncmp(p, "id: ", 4) != 0 || !nl)
            abort();
        p = nl + 1;
        if (strncmp(p, "data: ", 6) != 0)
            abort();
        const char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        if (!e)
            abort();
        last = p + 6;
        if (strncmp(last, "[DONE]", 6) != 0) {
            cJSON *o = cJSON_ParseWithLength(last, (size_t)(e - last));
            if (!o)
                abort();
            cJSON_Delete(o);
        }
        p = e + 2;
    }
    if (!last || strncmp(last, "[DONE]\n\n", 8) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const api_endpoint eps[] = {API_EP_SCORE,       API_EP_GENERATE, API_EP_ATTENTION,
                                       API_EP_COMPLETIONS, API_EP_ATTRIBUTION, API_EP_SESSIONS, API_EP_CHAT};
    if (size < 1)
        return 0;
    api_endpoint ep = eps[data[0] % (sizeof eps / sizeof *eps)];
    api_error e = {0};
    const api_request q = {.method = "POST", .path = "/v1/sessions/sess_0/append", .body = (const char *)data + 1,
                           .len = size - 1};
    api_job *j = api_job_new(&ctx, ep, &q, 7, "fuzz", &e);
    if (!j) {
        if (e.status < 400 || e.status > 499 || !e.message[0])
            abort(); /* a bad request is a 4xx with a message */
        return 0;
    }
    api_job_start(j, worker);
    for (int steps = 0; !api_job_done(j) && steps < 16 * 64; steps++)
        api_step(worker, &j, 1);
    if (!api_job_done(j))
        abort(); /* the limits bound every job */
    char *out = NULL;
    int status;
    buf all = {0};
    size_t n;
    while ((n = api_job_take_output(j, &out, &status)) > 0) {
        buf_put(&all, out, n);
        free(out);
    }
    if (status == 200 && !api_job_streams(j)) {
        cJSON *o = cJSON_ParseWithLength(all.p, all.len);
        if (!o)
            abort();
        cJSON_Delete(o);
    } else if (status == 200) {
        check_stream(all.p, all.len);
    }
    buf_free(&all);
    api_job_free(j);
    return 0;
}
