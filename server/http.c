/* http.c -- libmicrohttpd glue: a request's life from its first line to its
 * log line, streaming, and the admin listener.  The connection guard
 * (guard.c) keeps slow clients from holding the main port; the header policy
 * (headers.c) gives every answer its request id, trace context and CORS.
 *
 * Per request, a srv_req is made when the request line arrives (libmicrohttpd's
 * URI log callback, which sees the target before it is unescaped) and lives
 * in *req_cls.  The body is gathered into a capped buffer; on the final call
 * the request is checked, routed and either answered at once (no model work)
 * or handed to the pool as a task, after which the connection is suspended.
 * Workers hand output back through emit(): a whole answer, or stream bytes
 * that the content reader passes on, suspending the connection whenever it
 * has nothing to send.  A stream whose unsent bytes pass STREAM_BOUND is
 * reported blocked, and the pool stops generating for it until it drains.
 *
 * /health, /ready and /metrics also answer on --admin-port, a listener with
 * its own thread that load on the main port cannot starve.
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
#include "guard.h"
#include "headers.h"
#include "keys.h"
#include "log.h"
#include "rng.h"
#include "ui.h"

#define PROBE_INTERVAL_NS 20000000   /* how often a worker checks a waiting client's socket */
#define STREAM_BLOCK 4096
#define STREAM_BOUND (128 * 1024)    /* unsent bytes of a stream beyond which it is blocked */
#define STREAM_SNDBUF (256 * 1024)   /* the kernel's send buffer of a stream's socket */
#define ADMIN_CONNECTIONS 64
#define CONNECTION_TIMEOUT 60        /* seconds without progress before libmicrohttpd closes a connection */

struct srv {
    struct MHD_Daemon *d;     /* the main port */
    struct MHD_Daemon *admin; /* /health, /ready, /metrics only; NULL without --admin-port */
    const srv_config *cfg;
    const api_ctx *ctx;
    pool *pool;
    atomic_bool draining;
    atomic_long in_flight;
    hdr_ids ids; /* request and trace ids, and the jobs' seeds */
    int port, admin_port;
    char *tls_cert, *tls_key; /* PEM, read at start */
    guard *guard; /* of the main port */
    keyring *keys;      /* --api-key and --api-key-file */
};

typedef enum { PH_NEW, PH_BODY, PH_WAIT, PH_REPLIED } phase;

typedef struct srv_req {
    pool_task task; /* first: the pool's view of this request */
    srv *s;
    struct MHD_Connection *conn;
    conn_track *track; /* NULL on the admin port */
    bool admin;
    atomic_int refs;
    int64_t start_ns;
    req_identity who;
    char method[16];
    char path[256];     /* the request target as sent (escaped when logged) */
    bool nul_in_path;   /* the target held %00, which would cut the path short */
    const char *allow_origin; /* Access-Control-Allow-Origin to send, or NULL */
    char origin[256];
    api_endpoint ep;
    int route; /* metrics route index */
    phase ph;
    bool counted; /* in in_flight */
    buf body;     /* capped at max_body */
    size_t max_body; /* the route's: --max-body, or more for an imported session state */
    bool too_large;
    char owner[65]; /* whose sessions it may use: a digest of its API key, "" without keys */
    char model[API_MODEL_NAME];
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

/* The headers every answer carries (headers.h). */
static void common_headers(const srv_req *r, struct MHD_Response *resp) { hdr_common(resp, &r->who, r->allow_origin); }

/* Queues an answer whose body (malloc'ed) libmicrohttpd frees; allow is the
 * Allow header of a 405, or NULL; close ends the connection after it. */
static enum MHD_Result queue(srv_req *r, int status, const char *content_type, char *body, size_t len,
                             const char *allow, bool close)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    common_headers(r, resp);
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 503)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (close)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->ph = PH_REPLIED;
    return ok;
}

static enum MHD_Result reply_error(srv_req *r, const api_error *e, const char *allow, bool close)
{
    api_reply rep;
    if (api_error_reply(e, &rep) < 0)
        return MHD_NO;
    return queue(r, e->status, rep.content_type, rep.body, rep.len, allow, close);
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
    return reply_error(r, &e, NULL, false);
}

/* A refusal of how the request is framed: the connection cannot be trusted
 * to be at the start of a next request, so it is closed after the answer. */
static enum MHD_Result refuse_framing(srv_req *r, const char *what)
{
    api_error e;
    api_error_set(&e, 400, NULL, "%s", what);
    return reply_error(r, &e, NULL, true);
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

static bool task_blocked(pool_task *t)
{
    srv_req *r = (srv_req *)t;
    if (!r->streaming)
        return false;
    pthread_mutex_lock(&r->lock);
    bool blocked = r->out.len - r->out_sent > STREAM_BOUND;
    pthread_mutex_unlock(&r->lock);
    return blocked;
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
        bool was_blocked = avail > STREAM_BOUND;
        memcpy(dst, r->out.p + r->out_sent, n);
        r->out_sent += n;
        if (r->out_sent == r->out.len)
            r->out.len = r->out_sent = 0;
        else if (r->out_sent > STREAM_BOUND) /* keep the buffer from growing by what was sent */
            buf_consume(&r->out, r->out_sent), r->out_sent = 0;
        bool unblocked = was_blocked && r->out.len - r->out_sent <= STREAM_BOUND;
        pthread_mutex_unlock(&r->lock);
        if (unblocked)
            pool_kick(r->s->pool);
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

/* libmicrohttpd's URI log callback: the request line has arrived. */
static void *req_begin_on(srv *s, const char *uri, struct MHD_Connection *conn, bool admin)
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
    snprintf(r->path, sizeof r->path, "%s", uri ? uri : "");
    r->nul_in_path = uri && strstr(uri, "%00") != NULL;
    r->route = METRICS_ROUTES - 1;
    r->fd = -1;
    strcpy(r->who.id, "-");
    strcpy(r->who.trace_id, "-");
    r->admin = admin;
    return r;
}

static void *req_begin(void *cls, const char *uri, struct MHD_Connection *conn)
{
    return req_begin_on(cls, uri, conn, false);
}

static void *req_begin_admin(void *cls, const char *uri, struct MHD_Connection *conn)
{
    return req_begin_on(cls, uri, conn, true);
}

/* Counts the Content-Length headers and whether they disagree. */
typedef struct cl_count {
    int n;
    const char *first;
    bool differ;
} cl_count;

static enum MHD_Result count_content_length(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    cl_count *c = cls;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (c->n++ == 0)
            c->first = value;
        else if (strcmp(c->first, value ? value : "") != 0)
            c->differ = true;
    }
    return MHD_YES;
}

/* The first call for a request, its header complete: identity, then how it is framed. */
static enum MHD_Result req_headers(srv_req *r, struct MHD_Connection *conn, const char *method,
                                   const char *version)
{
    srv *s = r->s;
    snprintf(r->method, sizeof r->method, "%s", method);
    r->counted = true;
    atomic_fetch_add(&s->in_flight, 1);
    atomic_fetch_add(&s->ctx->metrics->in_flight, 1);
    r->track = r->admin ? NULL : guard_track_of(conn);
    guard_phase(r->track, CONN_BODY);
    hdr_identify(&s->ids, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"),
                 MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent"), &r->who);
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    r->allow_origin = hdr_allowed_origin(&s->cfg->cors_origins, origin, r->origin, sizeof r->origin);
    r->ph = PH_BODY;

    /* Refused before anything else, and the connection closed: it cannot be
     * trusted to be at the start of a next request. */
    if (r->nul_in_path)
        return refuse_framing(r, "the request target holds %00, which cannot be part of a path");
    if (strcmp(version, MHD_HTTP_VERSION_1_1) == 0 && !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host"))
        return refuse_framing(r, "an HTTP/1.1 request needs a Host header");
    cl_count cl = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_content_length, &cl);
    if (cl.differ)
        return refuse_framing(r, "the request has two different Content-Length headers");
    if (cl.n > 0 && MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding"))
        return refuse_framing(r, "the request has both Content-Length and Transfer-Encoding");
    api_endpoint ep;
    const char *allow;
    r->max_body = (size_t)s->cfg->max_body;
    if (api_route(method, r->path, &ep, &allow) != 404)
        r->max_body = api_endpoint_max_body(s->ctx, ep, r->max_body);
    if (cl.first && strtoull(cl.first, NULL, 10) > (unsigned long long)r->max_body) {
        if (api_route(method, r->path, &ep, &allow) != 404)
            r->route = (int)ep;
        return fail(r, 413, NULL, "the request body is larger than the limit of %zu bytes", r->max_body);
    }
    return MHD_YES;
}

/* Whether a Content-Type names the media type want (parameters such as charset allowed). */
static bool is_type(const char *ct, const char *want)
{
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return n == strlen(want) && strncasecmp(ct, want, n) == 0;
}

static enum MHD_Result submit_job(srv_req *r)
{
    srv *s = r->s;
    if (atomic_load(&s->draining)) {
        atomic_fetch_add(&s->ctx->metrics->rejected_queue_full, 1);
        return fail(r, 503, NULL, "the server is shutting down");
    }
    api_error e;
    uint64_t seed = rng_hash(s->ids.base ^ (uint64_t)r->start_ns ^ atomic_fetch_add(&s->ids.next, 1));
    const api_request q = {
        .method = r->method,
        .path = r->path,
        .owner = r->owner,
        .last_event_id = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID"),
        .body = r->body.p,
        .len = r->body.len,
    };
    api_job *job = api_job_new(s->ctx, r->ep, &q, seed, r->who.id, &e);
    if (!job)
        return reply_error(r, &e, NULL, false);
    snprintf(r->model, sizeof r->model, "%s", api_job_model_name(job));
    r->task = (pool_task){
        .job = job,
        .deadline_ns = s->cfg->timeout > 0 ? r->start_ns + (int64_t)(s->cfg->timeout * 1e9) : 0,
        .emit = task_emit,
        .gone = task_gone,
        .blocked = task_blocked,
        .release = task_release,
    };
    r->streaming = api_job_streams(job);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    if (r->streaming && r->fd >= 0) {
        /* Left to grow, the kernel's buffer for a client that does not read reaches megabytes
         * (memory a container is charged for) before backpressure starts. */
        int sndbuf = STREAM_SNDBUF;
        setsockopt(r->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    }
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
        common_headers(r, resp);
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
        api_error_set(&e, 405, NULL, "%.200s does not answer %.16s (allowed: GET, HEAD)", url, method);
        return reply_error(r, &e, "GET, HEAD", false);
    }
    const ui_asset *a = ui_find(url);
    if (!a)
        return fail(r, 404, NULL, "no such file: %.200s", url);
    unsigned status;
    struct MHD_Response *resp =
        ui_response(a, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH), &status);
    if (!resp)
        return MHD_NO;
    common_headers(r, resp);
    enum MHD_Result ok = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    r->status = (int)status;
    r->ph = PH_REPLIED;
    return ok;
}

/* A CORS preflight: which methods and headers a page of an allowed origin may use. */
static enum MHD_Result preflight(srv_req *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    common_headers(r, resp);
    if (r->allow_origin)
        hdr_preflight(resp);
    enum MHD_Result ok = MHD_queue_response(r->conn, MHD_HTTP_NO_CONTENT, resp);
    MHD_destroy_response(resp);
    r->status = 204;
    r->ph = PH_REPLIED;
    return ok;
}

/* The whole request is in: route, credentials, then the answer or the job. */
static enum MHD_Result req_complete(srv_req *r, struct MHD_Connection *conn, const char *url, const char *method)
{
    srv *s = r->s;
    guard_phase(r->track, CONN_BUSY);
    /* The inspector page's files, on the main port: before routing and the key check. */
    if (!r->admin && s->cfg->ui && ui_is_path(url))
        return serve_ui(r, method, url);
    const char *allow = NULL;
    api_endpoint ep;
    int rc = api_route(method, url, &ep, &allow);
    if (rc != 404)
        r->route = (int)ep;
    bool open = rc != 404 && api_endpoint_is_open(ep);
    if (r->admin && (rc == 404 || !open))
        return fail(r, 404, NULL, "the admin port answers /health, /ready and /metrics only");
    if (strcmp(method, "OPTIONS") == 0 && s->cfg->cors_origins.n > 0 && rc != 404)
        return preflight(r);
    /* Credentials before the route's existence, so routes cannot be listed without a key. */
    if (keyring_active(s->keys) && !open &&
        !keyring_check(s->keys, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
                       MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Api-Key"), r->owner))
        return fail(r, 401, NULL, "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)");
    if (rc == 404)
        return fail(r, 404, NULL, "no such endpoint: %.16s %.200s", method, url);
    r->ep = ep;
    if (rc == 405) {
        api_error e;
        api_error_set(&e, 405, NULL, "%s does not answer %.16s (allowed: %s)", api_endpoint_path(ep), method, allow);
        return reply_error(r, &e, allow, false);
    }
    if (strcmp(method, "POST") == 0) {
        const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        const char *want = api_endpoint_takes_bytes(ep) ? "application/octet-stream" : "application/json";
        if (ct && !is_type(ct, want))
            return fail(r, 415, NULL, "Content-Type must be %s, not \"%.64s\"", want, ct);
        if (r->too_large)
            return fail(r, 413, NULL, "the request body is larger than the limit of %zu bytes", r->max_body);
    }
    if (api_endpoint_is_job(ep))
        return submit_job(r);
    api_reply rep;
    const char *model_arg = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "model");
    const api_request q = {.method = method, .path = url, .owner = r->owner, .model_arg = model_arg,
                           .body = r->body.p, .len = r->body.len};
    if (api_handle_inline(s->ctx, ep, &q, atomic_load(&s->draining), &rep) < 0)
        return MHD_NO;
    return queue(r, rep.status, rep.content_type, rep.body, rep.len, NULL, false);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **req_cls)
{
    (void)cls;
    srv_req *r = *req_cls;
    if (!r) /* out of memory when the request line came */
        return MHD_NO;
    if (r->ph == PH_NEW)
        return req_headers(r, conn, method, version);

    if (r->ph == PH_WAIT) {
        /* Resumed by a worker: the answer is ready, or the client left. */
        pthread_mutex_lock(&r->lock);
        size_t len;
        char *out = buf_take(&r->out, &len);
        int status = r->status;
        pthread_mutex_unlock(&r->lock);
        if (!out) /* the client left: nobody reads this, but the exchange ends in order */
            return queue(r, 499, NULL, NULL, 0, NULL, true);
        return queue(r, status, "application/json", out, len, NULL, false);
    }
    if (r->ph == PH_REPLIED) {
        *upload_data_size = 0; /* the rest of a refused body is read and dropped */
        return MHD_YES;
    }

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        guard_body_bytes(r->track, n);
        if (r->too_large || r->body.len + n > r->max_body) {
            r->too_large = true;
            return MHD_YES;
        }
        buf_put(&r->body, upload_data, n);
        return r->body.oom ? MHD_NO : MHD_YES;
    }
    return req_complete(r, conn, url, method);
}

/* The status a request is logged and counted with, and why it ended early. */
static int final_status(srv_req *r, enum MHD_RequestTerminationCode toe, const char **note)
{
    pthread_mutex_lock(&r->lock);
    int status = r->status ? r->status : 500;
    bool cut = r->streaming && !r->finished;
    pthread_mutex_unlock(&r->lock);
    *note = NULL;
    cut_reason swept = guard_cut(r->track);
    if (swept != CUT_NONE && r->ph != PH_REPLIED) {
        *note = swept == CUT_HEADER ? "header not complete in time" : "body sent too slowly";
        return 408;
    }
    if (r->task.end_status && r->streaming) {
        *note = r->task.end_status == 408 ? "client stopped reading" : r->task.end_status == 504 ? "deadline"
                                                                                                  : "ended by the server";
        return r->task.end_status;
    }
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && status != 499)
        return status;
    if (toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED) {
        *note = "connection timed out";
        return 408;
    }
    if (toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN && (cut || r->ph != PH_REPLIED)) {
        *note = "server stopped";
        return 503;
    }
    if (status == 499 || cut || r->ph != PH_REPLIED) {
        *note = "client closed";
        return 499;
    }
    return status;
}

static void completed(void *cls, struct MHD_Connection *conn, void **req_cls, enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    srv *s = cls;
    srv_req *r = *req_cls;
    if (!r)
        return;
    *req_cls = NULL;
    atomic_store(&r->closed, true);
    if (r->counted) {
        double secs = clock_seconds(r->start_ns, clock_now_ns());
        const char *note;
        int status = final_status(r, toe, &note);
        pthread_mutex_lock(&r->lock);
        int in = r->in_tokens, out = r->out_tokens;
        pthread_mutex_unlock(&r->lock);
        metrics_request(s->ctx->metrics, r->route, status, secs);
        log_req(&(log_request){.id = r->who.id,
                               .trace_id = r->who.trace_id,
                               .method = r->method,
                               .path = r->path,
                               .model = r->model[0] ? r->model : NULL,
                               .note = note,
                               .status = status,
                               .ms = secs * 1e3,
                               .tokens_in = in,
                               .tokens_out = out});
        atomic_fetch_sub(&s->in_flight, 1);
        atomic_fetch_sub(&s->ctx->metrics->in_flight, 1);
    }
    if (guard_cut(r->track) == CUT_NONE)
        guard_phase(r->track, CONN_HEADER); /* a kept-alive connection now waits for its next request */
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
    if (strstr(msg, "no longer available for sending") || strstr(msg, "Connection reset by peer") ||
        strstr(msg, "forcibly closed by remote peer") || strstr(msg, "Broken pipe"))
        return;
    char esc[600];
    log_msg("warn", "http: %s", log_escape(msg, esc, sizeof esc));
}

/* ---- the daemons ------------------------------------------------------------------ */

/* The whole of a small file (a PEM), NUL-terminated, or NULL with errno. */
static char *read_small_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (1u << 20))
        buf_put(&b, chunk, n);
    int failed = ferror(f) || b.oom;
    fclose(f);
    if (failed || b.len >= (1u << 20)) {
        buf_free(&b);
        errno = failed ? EIO : EFBIG;
        return NULL;
    }
    buf_cstr(&b);
    return buf_take(&b, NULL);
}

static struct addrinfo *resolve(const char *host, long port, char *err, size_t errlen)
{
    char service[16];
    snprintf(service, sizeof service, "%ld", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int g = getaddrinfo(host, service, &hints, &ai);
    if (g != 0) {
        err_set(err, errlen, "cannot resolve --host %s: %s", host, gai_strerror(g));
        return NULL;
    }
    return ai;
}

static int bound_port(struct MHD_Daemon *d, long asked)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return di ? di->port : (int)asked;
}

srv *srv_start(const srv_config *cfg, const api_ctx *ctx, pool *p, char *err, size_t errlen)
{
    srv *s = calloc(1, sizeof *s);
    struct addrinfo *ai = NULL;
    if (!s) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->ctx = ctx;
    s->pool = p;
    hdr_ids_init(&s->ids);
    if (!(s->keys = keyring_new(cfg->api_key, cfg->api_key_file, err, errlen)))
        goto fail;
    if (!(s->guard = guard_new(cfg->header_timeout, cfg->min_body_rate, ctx->metrics))) {
        err_set(err, errlen, "out of memory");
        goto fail;
    }

    if (*cfg->tls_cert) {
        if (!(s->tls_cert = read_small_file(cfg->tls_cert))) {
            err_set(err, errlen, "cannot read --tls-cert %s: %s", cfg->tls_cert, strerror(errno));
            goto fail;
        }
        if (!(s->tls_key = read_small_file(cfg->tls_key))) {
            err_set(err, errlen, "cannot read --tls-key %s: %s", cfg->tls_key, strerror(errno));
            goto fail;
        }
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            err_set(err, errlen, "this libmicrohttpd was built without TLS");
            goto fail;
        }
    }
    if (!(ai = resolve(cfg->host, cfg->port, err, errlen)))
        goto fail;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_DUAL_STACK; /* "::" takes IPv4 clients too */
    if (s->tls_cert)
        flags |= MHD_USE_TLS;
    struct MHD_OptionItem tls[] = {
        {s->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, s->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key},
        {MHD_OPTION_END, 0, NULL},
    };
    s->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, handle, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_URI_LOG_CALLBACK, req_begin, s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_NOTIFY_CONNECTION, guard_notify,
                            s->guard, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)CONNECTION_TIMEOUT,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)cfg->max_per_ip, MHD_OPTION_ARRAY, tls,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    ai = NULL;
    if (!s->d) {
        err_set(err, errlen, "cannot listen on %s port %ld (the line above says why)", cfg->host, cfg->port);
        goto fail;
    }
    s->port = bound_port(s->d, cfg->port);

    if (cfg->admin_port >= 0) {
        if (!(ai = resolve(cfg->host, cfg->admin_port, err, errlen)))
            goto fail;
        unsigned aflags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
        if (ai->ai_family == AF_INET6)
            aflags |= MHD_USE_DUAL_STACK;
        s->admin = MHD_start_daemon(aflags, (uint16_t)cfg->admin_port, NULL, NULL, handle, s,
                                    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                    MHD_OPTION_URI_LOG_CALLBACK, req_begin_admin, s, MHD_OPTION_NOTIFY_COMPLETED,
                                    completed, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10,
                                    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)ADMIN_CONNECTIONS, MHD_OPTION_END);
        freeaddrinfo(ai);
        ai = NULL;
        if (!s->admin) {
            err_set(err, errlen, "cannot listen on %s admin port %ld (the line above says why)", cfg->host,
                    cfg->admin_port);
            goto fail;
        }
        s->admin_port = bound_port(s->admin, cfg->admin_port);
    }
    if (guard_start(s->guard) < 0) {
        err_set(err, errlen, "cannot start the connection sweeper");
        goto fail;
    }
    return s;
fail:
    if (ai)
        freeaddrinfo(ai);
    srv_stop(s);
    return NULL;
}

int srv_port(const srv *s) { return s->port; }
int srv_admin_port(const srv *s) { return s->admin ? s->admin_port : -1; }

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
    if (s->admin)
        MHD_stop_daemon(s->admin);
    if (s->d)
        MHD_stop_daemon(s->d);
    guard_free(s->guard); /* after the daemon that reports to it */
    keyring_free(s->keys);
    free(s->tls_cert);
    free(s->tls_key);
    free(s);
}

int srv_reload_keys(srv *s, char *err, size_t errlen) { return keyring_reload(s->keys, err, errlen); }
