/* clock.h -- the time sources every layer uses.
 *
 * Durations and deadlines use the monotonic clock, which never jumps; only
 * what is shown to people (dates, "created") uses the wall clock.
 */
#ifndef ATTNLM_CLOCK_H
#define ATTNLM_CLOCK_H

#include <stdint.h>

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
int64_t clock_now_ns(void);
/* Seconds between two clock_now_ns readings. */
double clock_seconds(int64_t from_ns, int64_t to_ns);

#endif
