/* parity.h -- the engine against a PyTorch dump of the same model: the check
 * behind `attnlm parity` and the parity tests.
 *
 * A dump (train/dump_expected.py) is a safetensors file with "tokens" [T],
 * "logprobs" [T, V] and, optionally, dense "attention" [N, T, T] and
 * "logprobs_self" [T, V] (the attention's contribution removed).
 */
#ifndef ATTNLM_PARITY_H
#define ATTNLM_PARITY_H

#include <stddef.h>

/* Tolerances the engine must meet against PyTorch. */
#define PARITY_TOL_LOGPROB 1e-4
#define PARITY_TOL_ATTN 1e-5

/* Largest absolute differences between the engine and an expected dump. */
typedef struct parity_result {
    int tokens;
    double logprob_err;   /* over all [T, V] log-probabilities */
    double attn_err;      /* over all [N, T, T] weights; -1 if the dump has none */
    double self_err;      /* over all [T, V] ablated log-probabilities; -1 if the dump has none */
} parity_result;

/* Runs model_path on the "tokens" of expected_path and compares with its
 * "logprobs" and, if present, "attention" and "logprobs_self".  Returns 0, or -1 with a message
 * in err. */
int parity_compare(const char *model_path, const char *expected_path, parity_result *r, char *err, size_t errlen);

#endif
