/* testutil.c -- see testutil.h. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include <string.h>

#include "err.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

const char *fixture_path(char *buf, size_t len, const char *name)
{
    const char *dir = getenv("ATTNLM_FIXTURES");
    snprintf(buf, len, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return buf;
}

model *fixture_model(const char *stem, model_precision prec)
{
    char path[512], name[128], err[ATTNLM_ERR_LEN];
    snprintf(name, sizeof name, "%s.safetensors", stem);
    model_opts opts = {.precision = prec};
    model *m = model_load_opts(fixture_path(path, sizeof path, name), &opts, err, sizeof err);
    ck_assert_msg(m != NULL, "%s: %s", path, err);
    ck_assert_int_eq(model_get_precision(m), prec);
    return m;
}

int strip_timings(char *s)
{
    static const char key[] = ",\"timings\":{";
    int n = 0;
    for (char *at; (at = strstr(s, key));) {
        char *end = strchr(at + sizeof key - 1, '}'); /* the object holds numbers only */
        if (!end)
            break;
        memmove(at, end + 1, strlen(end + 1) + 1);
        n++;
    }
    return n;
}
