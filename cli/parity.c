/* parity.c -- see parity.h. */
#define _POSIX_C_SOURCE 200809L
#include "parity.h"

#include "model.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int parity_compare(const char *model_path, const char *expected_path, parity_result *r, char *err, size_t errlen)
{
    int rc = -1;
    model *m = model_load(model_path, err, errlen);
    st_file *ex = m ? st_open(expected_path, err, errlen) : NULL;
    int *tokens = NULL;
    float *lp = NULL, *band = NULL;
    if (!ex)
        goto done;
    const model_config *c = model_get_config(m);
    const st_tensor *tt = st_find(ex, "tokens"), *tl = st_find(ex, "logprobs"), *ta = st_find(ex, "attention"),
                    *ts = st_find(ex, "logprobs_self");
    if (!tt || !tl || tt->ndim != 1 || tl->ndim != 2 || tl->shape[0] != tt->shape[0] ||
        tl->shape[1] != (uint64_t)c->vocab) {
        err_set(err, errlen, "%s: needs tokens [T] and logprobs [T, V]", expected_path);
        goto done;
    }
    const int T = (int)tt->shape[0], V = c->vocab, N = c->heads, W = c->window;
    if (ta && (ta->ndim != 3 || ta->shape[0] != (uint64_t)N || ta->shape[1] != (uint64_t)T ||
               ta->shape[2] != (uint64_t)T)) {
        err_set(err, errlen, "%s: attention must be [N, T, T]", expected_path);
        goto done;
    }
    if (ts && (ts->ndim != 2 || ts->shape[0] != tt->shape[0] || ts->shape[1] != (uint64_t)c->vocab)) {
        err_set(err, errlen, "%s: logprobs_self must be [T, V]", expected_path);
        goto done;
    }
    tokens = malloc((size_t)T * sizeof *tokens);
    lp = malloc(2 * (size_t)T * V * sizeof *lp);
    band = malloc((size_t)T * N * W * sizeof *band);
    if (!tokens || !lp || !band) {
        err_set(err, errlen, "out of memory");
        goto done;
    }
    for (int t = 0; t < T; t++)
        tokens[t] = (int)tt->data[t];
    if (model_forward(m, tokens, T, lp, band, NULL, err, errlen) < 0)
        goto done;
    r->tokens = T;
    r->logprob_err = 0.0;
    for (size_t i = 0; i < (size_t)T * V; i++)
        r->logprob_err = fmax(r->logprob_err, fabs((double)lp[i] - tl->data[i]));
    r->attn_err = -1.0;
    if (ta) {
        r->attn_err = 0.0;
        for (int j = 0; j < N; j++)
            for (int t = 0; t < T; t++)
                for (int i = 0; i < T; i++) {
                    int col = i - t + W - 1;
                    float got = col >= 0 && col < W ? band[((size_t)t * N + j) * W + col] : 0.0f;
                    float want = ta->data[((size_t)j * T + t) * T + i];
                    r->attn_err = fmax(r->attn_err, fabs((double)got - want));
                }
    }
    r->self_err = -1.0;
    if (ts) {
        float *own = lp + (size_t)T * V;
        if (model_forward_ablated(m, tokens, T, lp, own, err, errlen) < 0)
            goto done;
        r->self_err = 0.0;
        for (size_t i = 0; i < (size_t)T * V; i++)
            r->self_err = fmax(r->self_err, fabs((double)own[i] - ts->data[i]));
    }
    rc = 0;
done:
    free(tokens);
    free(lp);
    free(band);
    st_close(ex);
    model_free(m);
    return rc;
}
