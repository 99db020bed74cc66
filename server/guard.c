/* guard.c -- see guard.h. */
#define _POSIX_C_SOURCE 200809L
#include "guard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "clock.h"
#include "log.h"

#define SWEEP_INTERVAL_NS 250000000 /* how often the sweeper looks at the connections */

/* One connection, as the sweeper sees it. */
struct conn_track {
    struct conn_track *prev, *next;
    int fd;
    atomic_int phase;         /* conn_phase */
    atomic_llong since_ns;    /* when the phase began */
    atomic_ullong body_bytes; /* of the request being read */
    atomic_int cut;           /* cut_reason, once the sweeper closed it */
};

struct guard {
    double header_timeout;
    long min_body_rate;
    api_metrics *metrics;
    pthread_mutex_t lock; /* the list */
    conn_track *conns;
    pthread_t sweeper;
    bool started;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cv;
    bool stopping;
};

guard *guard_new(double header_timeout, long min_body_rate, api_metrics *m)
{
    guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->header_timeout = header_timeout;
    g->min_body_rate = min_body_rate;
    g->metrics = m;
    pthread_mutex_init(&g->lock, NULL);
    pthread_mutex_init(&g->stop_lock, NULL);
    pthread_cond_init(&g->stop_cv, NULL);
    return g;
}

void guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                  enum MHD_ConnectionNotificationCode code)
{
    guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_track *t = calloc(1, sizeof *t);
        if (!t)
            return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        t->fd = ci ? ci->connect_fd : -1;
        atomic_init(&t->phase, CONN_HEADER);
        atomic_init(&t->since_ns, clock_now_ns());
        atomic_init(&t->body_bytes, 0);
        atomic_init(&t->cut, CUT_NONE);
        pthread_mutex_lock(&g->lock);
        t->next = g->conns;
        if (g->conns)
            g->conns->prev = t;
        g->conns = t;
        pthread_mutex_unlock(&g->lock);
        *socket_context = t;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        /* Called before libmicrohttpd closes the socket: once unlinked, the sweeper cannot touch it. */
        conn_track *t = *socket_context;
        pthread_mutex_lock(&g->lock);
        if (t->prev)
            t->prev->next = t->next;
        else
            g->conns = t->next;
        if (t->next)
            t->next->prev = t->prev;
        pthread_mutex_unlock(&g->lock);
        free(t);
        *socket_context = NULL;
    }
}

conn_track *guard_track_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void guard_phase(conn_track *t, conn_phase ph)
{
    if (!t)
        return;
    atomic_store(&t->since_ns, clock_now_ns());
    atomic_store(&t->body_bytes, 0);
    atomic_store(&t->phase, ph);
}

void guard_body_bytes(conn_track *t, size_t n)
{
    if (t)
        atomic_fetch_add(&t->body_bytes, n);
}

cut_reason guard_cut(const conn_track *t) { return t ? (cut_reason)atomic_load(&t->cut) : CUT_NONE; }

/* Closes connections too slow with a request's header or body. */
static void sweep(guard *g)
{
    const int64_t now = clock_now_ns(), header_ns = (int64_t)(g->header_timeout * 1e9);
    unsigned long cut_header = 0, cut_body = 0;
    pthread_mutex_lock(&g->lock);
    for (conn_track *t = g->conns; t; t = t->next) {
        if (atomic_load(&t->cut) != CUT_NONE || t->fd < 0)
            continue;
        int64_t age = now - atomic_load(&t->since_ns);
        int ph = atomic_load(&t->phase);
        cut_reason why = CUT_NONE;
        if (ph == CONN_HEADER && age > header_ns)
            why = CUT_HEADER;
        else if (ph == CONN_BODY && g->min_body_rate > 0 && age > header_ns &&
                 (double)atomic_load(&t->body_bytes) < (double)g->min_body_rate * ((double)age / 1e9))
            why = CUT_BODY;
        if (why == CUT_NONE)
            continue;
        atomic_store(&t->cut, why);
        shutdown(t->fd, SHUT_RDWR); /* libmicrohttpd sees the end of the connection and closes it */
        if (why == CUT_HEADER)
            cut_header++;
        else
            cut_body++;
    }
    pthread_mutex_unlock(&g->lock);
    atomic_fetch_add(&g->metrics->conns_cut_header, cut_header);
    atomic_fetch_add(&g->metrics->conns_cut_body, cut_body);
    if (cut_header || cut_body)
        log_msg("warn", "closed %lu connection(s) that sent no whole request header within %g s and %lu whose body "
                        "came slower than %ld bytes/s",
                cut_header, g->header_timeout, cut_body, g->min_body_rate);
}

static void *sweeper_main(void *arg)
{
    guard *g = arg;
    pthread_mutex_lock(&g->stop_lock);
    while (!g->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += SWEEP_INTERVAL_NS;
        until.tv_sec += until.tv_nsec / 1000000000;
        until.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&g->stop_cv, &g->stop_lock, &until);
        if (g->stopping)
            break;
        pthread_mutex_unlock(&g->stop_lock);
        sweep(g);
        pthread_mutex_lock(&g->stop_lock);
    }
    pthread_mutex_unlock(&g->stop_lock);
    return NULL;
}

int guard_start(guard *g)
{
    if (pthread_create(&g->sweeper, NULL, sweeper_main, g) != 0)
        return -1;
    g->started = true;
    return 0;
}

void guard_free(guard *g)
{
    if (!g)
        return;
    if (g->started) {
        pthread_mutex_lock(&g->stop_lock);
        g->stopping = true;
        pthread_cond_broadcast(&g->stop_cv);
        pthread_mutex_unlock(&g->stop_lock);
        pthread_join(g->sweeper, NULL);
    }
    pthread_cond_destroy(&g->stop_cv);
    pthread_mutex_destroy(&g->stop_lock);
    pthread_mutex_destroy(&g->lock);
    free(g);
}
