#define _POSIX_C_SOURCE 200809L
/* fuzz_loader.c -- libFuzzer: any bytes as a model file.  The loader refuses
 * them with a message or returns a model that can run: a short forward pass
 * over every token id at the edges must succeed on whatever it accepted. */
#include "model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ATTNLM_ERR_LEN] = "";
    model *m = model_load_mem(data, size, err, sizeof err);
    if (!m) {
        if (!err[0])
            abort(); /* a refusal names its reason */
        return 0;
    }
    const model_config *c = model_get_config(m);
    /* A configuration too large to run in a fuzzing budget is still a valid model. */
    if ((uint64_t)c->hidden * c->layers * c->window < (1u << 22)) {
        int tokens[4] = {c->bos_id, 0, 255, 65};
        float *lp = malloc(4 * (size_t)c->vocab * sizeof *lp);
        if (lp && model_forward(m, tokens, 4, lp, NULL, NULL, err, sizeof err) < 0)
            abort();
        free(lp);
    }
    model_free(m);
    return 0;
}
