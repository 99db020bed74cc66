/* fuzz_state.c -- libFuzzer: session state bytes through the decoder and the
 * import route, on a tiny model.
 *
 * The bytes are decoded as they are: a state of the wrong shape is refused
 * with a 400 naming "state", and one that decodes continues by a token to
 * finite log-probabilities.  Then the same bytes, signed with the server's
 * key as a replica sharing the secret would, go through POST
 * /v1/sessions/import: a 200 with JSON, or a 400 naming "state"; unsigned
 * they are always refused.  The store stays within its bounds.
 */
#include "api.h"
#include "session.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static api_ctx ctx;
static api_metrics metrics;
static api_model *am;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[ATTNLM_ERR_LEN];
    const char *path = getenv("ATTNLM_FUZZ_MODEL");
    const char *paths[] = {path ? path : "tests/fixtures/gru_dot_cont.safetensors"};
    api_models *models = api_models_load(paths, 1, NULL, err, sizeof err);
    if (!models) {
        fprintf(stderr, "fuzz_state: %s\n", err);
        abort();
    }
    ctx = (api_ctx){.models = models,
                    .metrics = &metrics,
                    .sessions = session_store_new(&(session_limits){.max_sessions = 4, .max_bytes = 1 << 20,
                                                                     .ttl = 3600})};
    memset(ctx.session_key, 0x5a, sizeof ctx.session_key);
    am = api_model_acquire_at(models, 0);
    return 0;
}

static void expect_state_refusal(const api_error *e)
{
    if (e->status != 400 || strcmp(e->param, "state") != 0 || !e->message[0])
        abort();
}

static int import(const unsigned char *body, size_t len, api_reply *r)
{
    const api_request q = {.method = "POST", .path = "/v1/sessions/import", .body = (const char *)body, .len = len};
    return api_handle_inline(&ctx, API_EP_SESSION_IMPORT, &q, false, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const model *m = am->m;
    const int V = model_get_config(m)->vocab;
    model_seq *seq = model_seq_new(m), *next_seq = model_seq_new(m);
    float *next = malloc((size_t)V * sizeof *next), *lp = malloc((size_t)V * sizeof *lp);
    api_error e = {0};
    if (session_state_decode(m, data, size, seq, next, &e) < 0) {
        expect_state_refusal(&e);
    } else {
        char err[ATTNLM_ERR_LEN];
        const int tok = 'a';
        if (model_forward_from(m, seq, &tok, 1, lp, next_seq, err, sizeof err) < 0)
            abort();
        for (int i = 0; i < V; i++)
            if (isnan(lp[i]) || lp[i] > 0.0f)
                abort();
    }
    model_seq_free(seq);
    model_seq_free(next_seq);
    free(next);
    free(lp);

    /* Unsigned: refused.  Signed: imported or refused, never anything else. */
    unsigned char *body = malloc(size + SESSION_MAC);
    memcpy(body, data, size);
    api_reply r = {0};
    if (import(body, size, &r) < 0 || r.status != 400)
        abort();
    free(r.body);
    session_sign(&ctx, body, size, body + size);
    memset(&r, 0, sizeof r);
    if (import(body, size + SESSION_MAC, &r) < 0)
        abort();
    cJSON *o = cJSON_ParseWithLength(r.body, r.len);
    if (!o || (r.status != 200 && r.status != 400 && r.status != 503))
        abort();
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    if (r.status == 200 && !cJSON_IsString(id))
        abort();
    if (r.status == 200) { /* keep the store from filling, so that imports keep being tried */
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s", id->valuestring);
        api_reply d = {0};
        if (api_handle_inline(&ctx, API_EP_SESSION, &(api_request){.method = "DELETE", .path = path}, false, &d) < 0 ||
            d.status != 200)
            abort();
        free(d.body);
    }
    cJSON_Delete(o);
    free(r.body);
    free(body);
    int n;
    size_t bytes;
    session_store_usage(ctx.sessions, &n, &bytes);
    if (n > 4 || bytes > 1 << 20)
        abort();
    return 0;
}
