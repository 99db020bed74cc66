/* opt.c -- table lookup and number parsing for settings (opt.h). */
#include "opt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

const opt_spec *opt_find(const opt_spec *specs, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(specs[i].name) == len && strncmp(specs[i].name, name, len) == 0)
            return &specs[i];
    return NULL;
}

int opt_long(const opt_spec *s, const char *from, const char *v, long *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < (long)s->lo || x > (long)s->hi) {
        err_set(err, errlen, "%s must be an integer in [%ld, %ld], got \"%s\"", from, (long)s->lo, (long)s->hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int opt_double(const opt_spec *s, const char *from, const char *v, double *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < s->lo || x > s->hi) {
        err_set(err, errlen, "%s must be a number in [%g, %g], got \"%s\"", from, s->lo, s->hi, v);
        return -1;
    }
    *out = x;
    return 0;
}
