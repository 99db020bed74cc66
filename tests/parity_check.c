/* parity_check.c -- compares the engine with a PyTorch dump: parity_check MODEL EXPECTED.
 * Exits 0 when log-probabilities and attention weights are within tolerance. */
#include "testutil.h"

#include "err.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.safetensors EXPECTED.safetensors\n", argv[0]);
        return 2;
    }
    char err[ATTNLM_ERR_LEN];
    parity_result r;
    if (parity_compare(argv[1], argv[2], &r, err, sizeof err) < 0) {
        fprintf(stderr, "parity_check: %s\n", err);
        return 1;
    }
    int ok = r.logprob_err <= PARITY_TOL_LOGPROB && r.attn_err <= PARITY_TOL_ATTN;
    printf("%s: %d tokens, max |logprob diff| %.3g (tol %g), max |attention diff| %.3g (tol %g): %s\n", argv[1],
           r.tokens, r.logprob_err, PARITY_TOL_LOGPROB, r.attn_err, PARITY_TOL_ATTN, ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}
