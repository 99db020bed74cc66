/* err.h -- error messages as values.
 *
 * Library functions return 0/-1 (or NULL) and describe a failure in a buffer
 * the caller owns; nothing in model/ prints or exits.
 */
#ifndef ATTNLM_ERR_H
#define ATTNLM_ERR_H

#include <stddef.h>

#define ATTNLM_ERR_LEN 256

/* Formats a message into err[len]; a NULL err is allowed and ignored. */
void err_set(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
