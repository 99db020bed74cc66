/* http.c -- libmicrohttpd glue: a request's life from first byte to log line.
 *
 * Per request, a srv_req lives in *req_cls.  The body is gathered into a
 * capped buffer; on the final call the request is routed, checked and either
 * answered at once (no model work) or handed to the pool as a task, after
 * which the connection is suspended.  Workers hand output back through
 * emit(): a whole answer, or stream bytes that the content reader passes on,
 * suspending the connection whenever it has nothing to send.
 *
 * Lifetime: a srv_req is shared by the HTTP thread, the pool and (for
 * streams) the response object, and freed by whichever lets go last.
 * Suspension: a connection is resumed only by the thread that clears
 * `suspended` under the request's lock, and only after dropping that lock.
 * A suspended connection cannot complete, so its srv_req and socket stay valid
 * for a worker that looks at them.
 */
#define _POSIX_C_SOURCE 200809L
#include "http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "rng.h"
#include "ui.h"

#define PROBE_INTERVAL_NS 20000000 /* how often a worker checks a waiting client's socket */
#define STREAM_BLOCK 4096

struct srv {
    struct MHD_Daemon *d;
    const srv_config *cfg;
    const api_ctx *ctx;
    pool *pool;
    atomic_bool draining;
    atomic_long in_flight;
    atomic_ulong next_id;
    uint64_t id_base;
    int port;
};

typedef enum { PH_BODY, PH_WAIT, PH_REPLIED } phase;

typedef struct srv_req {
    pool_task task; /* first: the pool's view of this request */
    srv *s;
    struct MHD_Connection *conn;
    atomic_int refs;
    int64_t start_ns;
    char id[72];
    char method[8];
    char path[128];
    api_endpoint ep;
    int route; /* metrics route index */
    phase ph;
    buf body; /* capped at max_body */
    bool too_large;
    /* shared with the worker, under lock */
    pthread_mutex_t lock;
    bool suspended;
    bool finished;
    bool streaming;
    int status;
    buf out;          /* answer, or stream bytes not yet sent */
    size_t out_sent;  /* of a stream's bytes in out */
    int in_tokens, out_tokens;
    /* client presence */
    atomic_bool closed;
    int fd;
    int64_t last_probe_ns;
    bool gone_seen;
} srv_req;

static void req_unref(srv_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    api_job_free(r->task.job);
    pthread_mutex_destroy(&r->lock);
    buf_free(&r->body);
    buf_free(&r->out);
    free(r);
}

/* ---- answering ------------------------------------------------------------ */

/* Queues an answer whose body (malloc'ed) libmicrohttpd frees; allow is the
 * Allow header of a 405, or NULL. */
static enum MHD_Result queue(srv_req *r, int status, const char *content_type, char *body, size_t len,
                             const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 503)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->ph = PH_REPLIED;
    return ok;
}

static enum MHD_Result reply_error(srv_req *r, const api_error *e, const char *allow)
{
    api_reply rep;
    if (api_error_reply(e, &rep) < 0)
        return MHD_NO;
    return queue(r, e->status, rep.content_type, rep.body, rep.len, allow);
}

static enum MHD_Result fail(srv_req *r, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result fail(srv_req *r, int status, const char *param, const char *fmt, ...)
{
    api_error e;
    api_error_set(&e, status, param, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return reply_error(r, &e, NULL);
}

/* ---- the pool's side of a task --------------------------------------------------- */

static void task_emit(pool_task *t, int status, char *data, size_t len, bool done)
{
    srv_req *r = (srv_req *)t;
    pthread_mutex_lock(&r->lock);
    if (r->streaming) {
        buf_put(&r->out, data, len);
        r->out.oom = false; /* bytes that did not fit are dropped; the stream's end still arrives */
        free(data);
    } else {
        buf_free(&r->out);
        r->out = (buf){.p = data, .len = len, .cap = len};
        r->status = status;
    }
    r->in_tokens = api_job_input_tokens(t->job);
    r->out_tokens = api_job_output_tokens(t->job);
    if (done)
        r->finished = true;
    bool resume = r->suspended;
    r->suspended = false;
    pthread_mutex_unlock(&r->lock);
    if (resume)
        MHD_resume_connection(r->conn);
}

static bool task_gone(pool_task *t)
{
    srv_req *r = (srv_req *)t;
    if (atomic_load(&r->closed))
        return true;
    if (r->streaming || r->gone_seen)
        return r->gone_seen;
    /* A suspended connection does not notice a disconnect: look at its socket. */
    int64_t now = clock_now_ns();
    if (now - r->last_probe_ns < PROBE_INTERVAL_NS)
        return false;
    r->last_probe_ns = now;
    char c;
    ssize_t n = recv(r->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        r->gone_seen = true;
    return r->gone_seen;
}

static void task_release(pool_task *t, bool cancelled)
{
    srv_req *r = (srv_req *)t;
    if (cancelled) {
        /* Nobody is listening; end the exchange so the connection is freed. */
        pthread_mutex_lock(&r->lock);
        r->finished = true;
        bool resume = r->suspended;
        r->suspended = false;
        if (!r->streaming && !r->out.p)
            r->status = 499; /* logged only: the client closed the request */
        pthread_mutex_unlock(&r->lock);
        if (resume)
            MHD_resume_connection(r->conn);
    }
    req_unref(r);
}

/* ---- streaming ------------------------------------------------------------------ */

static ssize_t stream_read(void *cls, uint64_t pos, char *dst, size_t max)
{
    (void)pos;
    srv_req *r = cls;
    pthread_mutex_lock(&r->lock);
    size_t avail = r->out.len - r->out_sent;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(dst, r->out.p + r->out_sent, n);
        r->out_sent += n;
        if (r->out_sent == r->out.len)
            r->out.len = r->out_sent = 0;
        pthread_mutex_unlock(&r->lock);
        return (ssize_t)n;
    }
    if (r->finished) {
        pthread_mutex_unlock(&r->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send yet: sleep until a worker has more (returning 0 would spin). */
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static void stream_free(void *cls) { req_unref(cls); }

/* ---- request handling ------------------------------------------------------------- */

static bool sane_request_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.'))
            return false;
    }
    return true;
}

static srv_req *req_new(srv *s, struct MHD_Connection *conn, const char *url, const char *method)
{
    srv_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->s = s;
    r->conn = conn;
    atomic_init(&r->refs, 1);
    atomic_init(&r->closed, false);
    pthread_mutex_init(&r->lock, NULL);
    r->start_ns = clock_now_ns();
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    for (char *c = r->path; *c; c++) /* the path goes into a log line: keep it one line */
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    r->route = METRICS_ROUTES - 1;
    r->fd = -1;
    const char *given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (given && sane_request_id(given))
        snprintf(r->id, sizeof r->id, "%s", given);
    else
        snprintf(r->id, sizeof r->id, "%016llx",
                 (unsigned long long)rng_hash(s->id_base + atomic_fetch_add(&s->next_id, 1)));
    atomic_fetch_add(&s->in_flight, 1);
    atomic_fetch_add(&s->ctx->metrics->in_flight, 1);
    return r;
}

/* Whether a Content-Type names JSON (parameters such as charset allowed). */
static bool is_json_type(const char *ct)
{
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

static enum MHD_Result submit_job(srv_req *r)
{
    srv *s = r->s;
    if (atomic_load(&s->draining)) {
        atomic_fetch_add(&s->ctx->metrics->rejected_queue_full, 1);
        return fail(r, 503, NULL, "the server is shutting down");
    }
    api_error e;
    uint64_t seed = rng_hash(s->id_base ^ (uint64_t)r->start_ns ^ atomic_fetch_add(&s->next_id, 1));
    api_job *job = api_job_new(s->ctx, r->ep, r->body.p, r->body.len, seed, r->id, &e);
    if (!job)
        return reply_error(r, &e, NULL);
    r->task = (pool_task){
        .job = job,
        .deadline_ns = s->cfg->timeout > 0 ? r->start_ns + (int64_t)(s->cfg->timeout * 1e9) : 0,
        .emit = task_emit,
        .gone = task_gone,
        .release = task_release,
    };
    r->streaming = api_job_streams(job);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    r->last_probe_ns = r->start_ns;
    atomic_fetch_add(&r->refs, 1); /* the pool's */

    if (r->streaming) {
        if (pool_submit(s->pool, &r->task) < 0) {
            atomic_fetch_sub(&r->refs, 1);
            atomic_fetch_add(&s->ctx->metrics->rejected_queue_full, 1);
            return fail(r, 503, NULL, "the server is busy: the request queue is full");
        }
        atomic_fetch_add(&r->refs, 1); /* the response's */
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, r,
                                                                      stream_free);
        if (!resp) {
            atomic_fetch_sub(&r->refs, 1);
            atomic_store(&r->closed, true); /* the pool lets go at its next look */
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        MHD_add_response_header(resp, "X-Request-Id", r->id);
        enum MHD_Result ok = MHD_queue_response(r->conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        r->status = 200;
        r->ph = PH_REPLIED;
        return ok;
    }

    /* Suspend before a worker can answer: it resumes only what is suspended. */
    pthread_mutex_lock(&r->lock);
    if (pool_submit(s->pool, &r->task) < 0) {
        pthread_mutex_unlock(&r->lock);
        atomic_fetch_sub(&r->refs, 1);
        atomic_fetch_add(&s->ctx->metrics->rejected_queue_full, 1);
        return fail(r, 503, NULL, "the server is busy: the request queue is full");
    }
    r->ph = PH_WAIT;
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->lock);
    return MHD_YES;
}

/* The inspector page's files (server/ui.c): GET and HEAD, no key needed. */
static enum MHD_Result serve_ui(srv_req *r, const char *method, const char *url)
{
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        api_error e;
        api_error_set(&e, 405, NULL, "%s does not answer %s (allowed: GET, HEAD)", r->path, method);
        return reply_error(r, &e, "GET, HEAD");
    }
    const ui_asset *a = ui_find(url);
    if (!a)
        return fail(r, 404, NULL, "no such file: %s", r->path);
    unsigned status;
    struct MHD_Response *resp =
        ui_response(a, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH), &status);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    enum MHD_Result ok = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    r->status = (int)status;
    r->ph = PH_REPLIED;
    return ok;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **req_cls)
{
    (void)version;
    srv *s = cls;
    srv_req *r = *req_cls;
    if (!r) {
        if (!(r = req_new(s, conn, url, method)))
            return MHD_NO;
        *req_cls = r;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg->max_body) {
            api_endpoint ep;
            const char *allow;
            if (api_route(method, url, &ep, &allow) != 404)
                r->route = (int)ep;
            return fail(r, 413, NULL, "the request body is larger than the limit of %ld bytes", s->cfg->max_body);
        }
        return MHD_YES;
    }

    if (r->ph == PH_WAIT) {
        /* Resumed by a worker: the answer is ready, or the client left. */
        pthread_mutex_lock(&r->lock);
        size_t len;
        char *out = buf_take(&r->out, &len);
        int status = r->status;
        pthread_mutex_unlock(&r->lock);
        if (!out)
            return MHD_NO;
        return queue(r, status, "application/json", out, len, NULL);
    }
    if (r->ph == PH_REPLIED) {
        *upload_data_size = 0; /* the rest of a refused body is read and dropped */
        return MHD_YES;
    }

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large || r->body.len + n > (size_t)s->cfg->max_body) {
            r->too_large = true;
            return MHD_YES;
        }
        buf_put(&r->body, upload_data, n);
        return r->body.oom ? MHD_NO : MHD_YES;
    }

    /* The whole request is in. */
    if (s->cfg->ui && ui_is_path(url))
        return serve_ui(r, method, url);
    const char *allow = NULL;
    api_endpoint ep;
    int rc = api_route(method, url, &ep, &allow);
    if (rc == 404)
        return fail(r, 404, NULL, "no such endpoint: %s %s", method, r->path);
    r->ep = ep;
    r->route = (int)ep;
    if (rc == 405) {
        api_error e;
        api_error_set(&e, 405, NULL, "%s does not answer %s (allowed: %s)", api_endpoint_path(ep), method, allow);
        return reply_error(r, &e, allow);
    }
    if (*s->cfg->api_key && !api_endpoint_is_open(ep) &&
        !api_key_matches(s->cfg->api_key, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
                         MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Api-Key")))
        return fail(r, 401, NULL, "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)");
    if (strcmp(method, "POST") == 0) {
        const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (ct && !is_json_type(ct))
            return fail(r, 415, NULL, "Content-Type must be application/json, not \"%.64s\"", ct);
        if (r->too_large)
            return fail(r, 413, NULL, "the request body is larger than the limit of %ld bytes", s->cfg->max_body);
    }
    if (api_endpoint_is_job(ep))
        return submit_job(r);
    api_reply rep;
    const char *model_arg = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "model");
    if (api_handle_inline(s->ctx, ep, url, model_arg, r->body.p, r->body.len, atomic_load(&s->draining), &rep) < 0)
        return MHD_NO;
    return queue(r, rep.status, rep.content_type, rep.body, rep.len, NULL);
}

static void completed(void *cls, struct MHD_Connection *conn, void **req_cls, enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    srv *s = cls;
    srv_req *r = *req_cls;
    if (!r)
        return;
    *req_cls = NULL;
    double secs = clock_seconds(r->start_ns, clock_now_ns());
    pthread_mutex_lock(&r->lock);
    int status = r->status ? r->status : 500, in = r->in_tokens, out = r->out_tokens;
    bool cut = r->streaming && !r->finished;
    pthread_mutex_unlock(&r->lock);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (cut || r->ph != PH_REPLIED))
        status = 499;
    atomic_store(&r->closed, true);
    metrics_request(s->ctx->metrics, r->route, status, secs);
    fprintf(stderr, "attnlm: req=%s %s %s %d %.1fms in=%d out=%d%s\n", r->id, r->method, r->path, status,
            secs * 1e3, in, out, status == 499 ? " (client closed)" : "");
    atomic_fetch_sub(&s->in_flight, 1);
    atomic_fetch_sub(&s->ctx->metrics->in_flight, 1);
    req_unref(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = '\0';
    /* A client that leaves mid-answer is already logged with its request. */
    if (strstr(msg, "no longer available for sending") || strstr(msg, "Connection reset by peer"))
        return;
    fprintf(stderr, "attnlm: http: %s\n", msg);
}

/* ---- the daemon ------------------------------------------------------------------ */

srv *srv_start(const srv_config *cfg, const api_ctx *ctx, pool *p, char *err, size_t errlen)
{
    srv *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->ctx = ctx;
    s->pool = p;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->id_base = rng_hash((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid());

    char port[16];
    snprintf(port, sizeof port, "%ld", cfg->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int g = getaddrinfo(cfg->host, port, &hints, &ai);
    if (g != 0) {
        err_set(err, errlen, "cannot resolve --host %s: %s", cfg->host, gai_strerror(g));
        free(s);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_DUAL_STACK; /* "::" takes IPv4 clients too */
    s->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, handle, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, completed, s,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        err_set(err, errlen, "cannot listen on %s port %ld (the line above says why)",
                cfg->host, cfg->port);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (int)cfg->port;
    return s;
}

int srv_port(const srv *s) { return s->port; }

void srv_drain_begin(srv *s)
{
    atomic_store(&s->draining, true);
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

long srv_in_flight(const srv *s) { return atomic_load(&((srv *)s)->in_flight); }

void srv_stop(srv *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    free(s);
}
