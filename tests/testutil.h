/* testutil.h -- shared by the test programs: fixture paths and loading (the
 * parity comparison itself is cli/parity.h, also behind `attnlm parity`). */
#ifndef ATTNLM_TESTUTIL_H
#define ATTNLM_TESTUTIL_H

#include "model.h"

#include <stddef.h>

/* Writes "$ATTNLM_FIXTURES/<name>" (default tests/fixtures) into buf. */
const char *fixture_path(char *buf, size_t len, const char *name);

/* The fixture <stem>.safetensors at precision prec; fails the running test if it does not load. */
model *fixture_model(const char *stem, model_precision prec);

/* Removes every ',"timings":{...}' from the JSON text s, in place: the
 * timings measure one run, so answers compared across runs leave them out.
 * Returns the number removed. */
int strip_timings(char *s);

#endif
