/* probe.h -- the client side of `attnlm-server --health`: one GET /health to a
 * running server, so a container needs no curl or wget for its health check.
 */
#ifndef ATTNLM_PROBE_H
#define ATTNLM_PROBE_H

#include <stddef.h>

/* Sends GET path to host:port (a wildcard address means this machine) and
 * waits up to timeout_s for the status line.  Returns the HTTP status, or -1
 * with the reason in err. */
int probe_http(const char *host, long port, const char *path, double timeout_s, char *err, size_t errlen);

#endif
