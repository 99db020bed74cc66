/* testutil.c -- see testutil.h. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>

const char *fixture_path(char *buf, size_t len, const char *name)
{
    const char *dir = getenv("ATTNLM_FIXTURES");
    snprintf(buf, len, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return buf;
}
