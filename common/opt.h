/* opt.h -- settings described by a table.
 *
 * The server's flags and variables and the command-line tool's options are
 * rows of opt_spec: a name, a kind the caller defines, where the value goes in
 * the caller's settings struct, a range for numbers, and one line of help.
 * The lookup and the number parsing (with the one wording of their errors)
 * live here, so both tables behave alike.
 */
#ifndef ATTNLM_OPT_H
#define ATTNLM_OPT_H

#include <stddef.h>

typedef struct opt_spec {
    const char *name;
    int kind;      /* the caller's own enumeration */
    size_t offset; /* of the field in the caller's settings struct */
    double lo, hi; /* range of a number, inclusive */
    const char *help;
} opt_spec;

/* The row among specs[n] whose name is the len bytes at name, or NULL. */
const opt_spec *opt_find(const opt_spec *specs, size_t n, const char *name, size_t len);

/* Where row s's value goes in the settings struct at base. */
static inline void *opt_field(void *base, const opt_spec *s)
{
    return (char *)base + s->offset;
}

/* v as a whole decimal integer in [s->lo, s->hi]; else -1 and
 * "FROM must be an integer in [lo, hi], got "v"" (from: how the user wrote it). */
int opt_long(const opt_spec *s, const char *from, const char *v, long *out, char *err, size_t errlen);

/* v as a finite number in [s->lo, s->hi]; else -1 and a message as opt_long's. */
int opt_double(const opt_spec *s, const char *from, const char *v, double *out, char *err, size_t errlen);

#endif
