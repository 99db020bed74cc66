/* testutil.h -- shared by the test programs: fixture paths and the PyTorch parity comparison. */
#ifndef ATTNLM_TESTUTIL_H
#define ATTNLM_TESTUTIL_H

#include <stddef.h>

/* Tolerances the engine must meet against PyTorch. */
#define PARITY_TOL_LOGPROB 1e-4
#define PARITY_TOL_ATTN 1e-5

/* Largest absolute differences between the engine and an expected dump. */
typedef struct parity_result {
    int tokens;
    double logprob_err;   /* over all [T, V] log-probabilities */
    double attn_err;      /* over all [N, T, T] weights; -1 if the dump has none */
} parity_result;

/* Writes "$ATTNLM_FIXTURES/<name>" (default tests/fixtures) into buf. */
const char *fixture_path(char *buf, size_t len, const char *name);

/* Runs model_path on the "tokens" of expected_path and compares with its
 * "logprobs" [T, V] and, if present, dense "attention" [N, T, T].
 * Returns 0, or -1 with a message in err. */
int parity_compare(const char *model_path, const char *expected_path, parity_result *r, char *err, size_t errlen);

#endif
