/* http.h -- the HTTP front: libmicrohttpd with one internal epoll thread that
 * parses, validates and queues, then suspends the connection; workers resume
 * it when they have output.  This thread never runs the model.  An optional
 * admin listener (--admin-port) answers /health, /ready and /metrics on a
 * thread of its own.
 */
#ifndef ATTNLM_HTTP_H
#define ATTNLM_HTTP_H

#include "api.h"
#include "config.h"
#include "pool.h"

typedef struct srv srv;

/* Listens on cfg's host and port.  NULL with a message on failure. */
srv *srv_start(const srv_config *cfg, const api_ctx *ctx, pool *p, char *err, size_t errlen);
/* The port actually bound (useful with --port 0), and the admin port's (-1: none). */
int srv_port(const srv *s);
int srv_admin_port(const srv *s);
/* Stops accepting connections; /ready answers 503 and new model work is refused. */
void srv_drain_begin(srv *s);
/* Reads --api-key-file again (SIGHUP); on failure (message in err) the old keys
 * stay.  Returns the keys now accepted, or -1. */
int srv_reload_keys(srv *s, char *err, size_t errlen);
/* Requests received and not yet answered. */
long srv_in_flight(const srv *s);
/* Stops the daemon and frees s.  Every task must have been released. */
void srv_stop(srv *s);

#endif
