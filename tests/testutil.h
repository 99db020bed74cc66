/* testutil.h -- shared by the test programs: fixture paths (the parity
 * comparison itself is cli/parity.h, also behind `attnlm parity`). */
#ifndef ATTNLM_TESTUTIL_H
#define ATTNLM_TESTUTIL_H

#include <stddef.h>

/* Writes "$ATTNLM_FIXTURES/<name>" (default tests/fixtures) into buf. */
const char *fixture_path(char *buf, size_t len, const char *name);

#endif
