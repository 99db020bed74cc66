/* guard.h -- the connection guard of the main port: slow or silent clients
 * must not hold it.
 *
 * Every connection is tracked from accept to close (guard_notify is
 * libmicrohttpd's connection callback), and the request code says which
 * phase it is in.  A sweeper thread closes (shutdown) a connection that has
 * not sent a whole request header within header_timeout seconds of
 * connecting or of its previous answer, or whose body arrives slower than
 * min_body_rate bytes a second.  libmicrohttpd reports a connection closed
 * before it closes the socket, and both sides hold the guard's lock, so the
 * sweeper never touches a socket number that was reused.
 */
#ifndef ATTNLM_GUARD_H
#define ATTNLM_GUARD_H

#include <microhttpd.h>
#include <stddef.h>

#include "api.h"

typedef enum { CONN_HEADER, CONN_BODY, CONN_BUSY } conn_phase;
typedef enum { CUT_NONE, CUT_HEADER, CUT_BODY } cut_reason;

typedef struct guard guard;
typedef struct conn_track conn_track;

/* A guard counting its cuts in m; its sweeper runs from guard_start.  NULL on out of memory. */
guard *guard_new(double header_timeout, long min_body_rate, api_metrics *m);
/* Starts the sweeper thread; -1 if it cannot be started. */
int guard_start(guard *g);
/* Stops the sweeper and frees g (after the daemon that reports to it has stopped). */
void guard_free(guard *g);

/* libmicrohttpd's MHD_OPTION_NOTIFY_CONNECTION callback, with the guard as cls. */
void guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                  enum MHD_ConnectionNotificationCode code);

/* The tracking of a connection of the guarded daemon (NULL if it has none). */
conn_track *guard_track_of(struct MHD_Connection *conn);
/* The connection now reads a header, a body, or has a request in work (t may be NULL). */
void guard_phase(conn_track *t, conn_phase ph);
/* n more bytes of the body have arrived (t may be NULL). */
void guard_body_bytes(conn_track *t, size_t n);
/* Why the sweeper closed the connection, CUT_NONE if it did not (t may be NULL). */
cut_reason guard_cut(const conn_track *t);

#endif
