/* log.h -- the server's log on stderr: one line per request and one per
 * event of the daemon, as text ("attnlm: ...") or as one JSON object per line
 * for log collectors (--log-format json).
 *
 * Lines are written whole with one call, so lines of different threads never
 * interleave.  Bytes a client chose (method, path) are escaped: a log line is
 * one line of printable text whatever was sent.
 */
#ifndef ATTNLM_LOG_H
#define ATTNLM_LOG_H

#include "config.h"

#include <stddef.h>

/* One answered (or abandoned) request. */
typedef struct log_request {
    const char *id;       /* X-Request-Id */
    const char *trace_id; /* W3C trace id, 32 hex digits */
    const char *method;
    const char *path;
    const char *model;    /* the served model it ran on, or NULL */
    const char *note;     /* why it ended early ("client closed", ...), or NULL */
    int status;
    double ms;
    int tokens_in, tokens_out;
} log_request;

/* Chooses the format; until then lines are text. */
void log_init(srv_log_format format);
/* An event of the daemon at level "info", "warn" or "error". */
void log_msg(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_req(const log_request *r);
/* Copies s into out[cap] with every byte that is not printable ASCII written
 * as \xNN (and backslash as \\); truncates to fit.  Returns out. */
char *log_escape(const char *s, char *out, size_t cap);

#endif
