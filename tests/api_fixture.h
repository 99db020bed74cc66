/* api_fixture.h -- the API context the API and server tests serve from: a fixture model,
 * fresh metrics and the limits a test chooses. */
#ifndef ATTNLM_API_FIXTURE_H
#define ATTNLM_API_FIXTURE_H

#include "api.h"
#include "model.h"
#include "testutil.h"

#include <check.h>
#include <string.h>

/* Loads tests/fixtures/<name> into *ctx (model id "fixture", path name) with zeroed *metrics;
 * returns the model, which the caller frees. */
static inline model *load_api_fixture(api_ctx *ctx, api_metrics *metrics, const char *name, api_limits limits)
{
    char path[512], err[ATTNLM_ERR_LEN];
    model *m = model_load(fixture_path(path, sizeof path, name), err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    memset(metrics, 0, sizeof *metrics);
    *ctx = (api_ctx){.m = m, .model_id = "fixture", .model_path = name, .limits = limits, .metrics = metrics};
    return m;
}

#endif
