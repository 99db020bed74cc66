/* api_fixture.h -- the API context the API and server tests serve from: a fixture model
 * (named by its metadata, e.g. "fixture gru_dot"), fresh metrics and the limits a test chooses. */
#ifndef ATTNLM_API_FIXTURE_H
#define ATTNLM_API_FIXTURE_H

#include "api.h"
#include "model.h"
#include "testutil.h"

#include <check.h>
#include <string.h>

/* Limits small enough to reach in a test; a test changes the ones it is about. */
static inline api_limits fixture_limits(void)
{
    return (api_limits){.max_body_bytes = 1 << 20, .max_input_tokens = 64, .max_new_tokens = 100,
                        .max_attention_tokens = 32, .max_inputs = 8, .queue_size = 8, .workers = 1, .max_batch = 8};
}

/* Serves tests/fixtures/<name> from *ctx with zeroed *metrics and sets *m to its
 * model; returns the registry, which the caller frees with api_models_free. */
static inline api_models *load_api_fixture(api_ctx *ctx, api_metrics *metrics, const char *name, api_limits limits,
                                           const model **m)
{
    char path[512], err[ATTNLM_ERR_LEN];
    const char *paths[] = {fixture_path(path, sizeof path, name)};
    api_models *r = api_models_load(paths, 1, NULL, err, sizeof err);
    ck_assert_msg(r != NULL, "%s", err);
    memset(metrics, 0, sizeof *metrics);
    *ctx = (api_ctx){.models = r, .limits = limits, .metrics = metrics};
    api_model *am = api_model_acquire_at(r, 0);
    *m = am->m;
    api_model_release(am);
    return r;
}

#endif
