/* test_http.c -- server/http.c on a loopback port with a raw socket client:
 * the request lifecycle the Python suite sees only from outside, here under
 * the same process's sanitizers.  Routing, refusals before any model work
 * (404, 405 with Allow, 413 from Content-Length and from the body, 415, 401),
 * request ids, a job answered by a worker, a stream, a client that leaves in
 * the middle of a stream, /ready during a drain, and the embedded inspector
 * page (open without the key, CSP, 304 by ETag, 404 with --no-ui).
 */
#define _POSIX_C_SOURCE 200809L
#include "api.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "model.h"
#include "pool.h"
#include "ui.h"
#include "api_fixture.h"

#include "check_main.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static api_models *g_models;
static api_metrics g_metrics;
static api_ctx g_ctx;
static srv_config g_cfg;
static pool *g_pool;
static srv *g_srv;

static void setup_with_key(const char *key)
{
    char err[ATTNLM_ERR_LEN];
    FILE *devnull = fopen("/dev/null", "w");
    char *argv[] = {"attnlm-server", "--port", "0", "--max-body", "256", "--workers", "1"};
    ck_assert_int_eq(config_load(&g_cfg, 7, argv, devnull, err, sizeof err), 0);
    fclose(devnull);
    g_cfg.api_key = key;
    const model *m;
    api_limits lim = fixture_limits();
    lim.max_body_bytes = 256, lim.max_new_tokens = 64, lim.max_attention_tokens = 64;
    g_models = load_api_fixture(&g_ctx, &g_metrics, "gru_dot.safetensors", lim, &m);
    g_pool = pool_new(&g_ctx, 1, 8, 8, 30, err, sizeof err);
    ck_assert_msg(g_pool != NULL, "%s", err);
    g_srv = srv_start(&g_cfg, &g_ctx, g_pool, err, sizeof err);
    ck_assert_msg(g_srv != NULL, "%s", err);
    ck_assert_int_gt(srv_port(g_srv), 0);
}

static void setup(void) { setup_with_key(""); }
static void setup_key(void) { setup_with_key("sesame"); }

static void teardown(void)
{
    /* Every request ends before the daemon stops: no connection is left suspended. */
    for (int i = 0; i < 500 && srv_in_flight(g_srv) > 0; i++)
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    ck_assert_int_eq(srv_in_flight(g_srv), 0);
    srv_stop(g_srv);
    pool_free(g_pool);
    api_models_free(g_models);
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)srv_port(g_srv))};
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        ck_assert_int_gt(k, 0);
        s += k;
        n -= (size_t)k;
    }
}

/* Reads until the server closes the connection (requests here say close) or 30 s pass. */
static char *read_all(int fd)
{
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    int64_t end = clock_now_ns() + 30 * (int64_t)1000000000;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left_ms = (int)((end - clock_now_ns()) / 1000000);
        ck_assert_msg(left_ms > 0 && poll(&p, 1, left_ms) == 1, "no answer within 30 s: %.*s", (int)len, out);
        if (len + 1024 > cap)
            ck_assert_ptr_nonnull(out = realloc(out, cap *= 2));
        ssize_t n = recv(fd, out + len, cap - len - 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    return out;
}

/* One request on its own connection; the whole answer (head and body). */
static char *exchange(const char *req)
{
    int fd = connect_server();
    send_all(fd, req, strlen(req));
    char *out = read_all(fd);
    close(fd);
    return out;
}

static char *post(const char *path, const char *headers, const char *body)
{
    char req[2048];
    snprintf(req, sizeof req,
             "POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
             "%sContent-Length: %zu\r\n\r\n%s",
             path, headers, strlen(body), body);
    return exchange(req);
}

static int status_of(const char *answer)
{
    int status = 0;
    ck_assert_msg(sscanf(answer, "HTTP/1.1 %d", &status) == 1, "not an HTTP answer: %.200s", answer);
    return status;
}

static const char *body_of(const char *answer)
{
    const char *b = strstr(answer, "\r\n\r\n");
    ck_assert_ptr_nonnull(b);
    return b + 4;
}

/* Asserts answer a's status and that its head holds in_head and its body
 * in_body (each when not NULL), then frees it. */
static void expect(char *a, int status, const char *in_head, const char *in_body)
{
    ck_assert_int_eq(status_of(a), status);
    const char *body = body_of(a);
    if (in_head) {
        const char *at = strstr(a, in_head);
        ck_assert_msg(at && at < body, "no %s in the head: %.300s", in_head, a);
    }
    if (in_body)
        ck_assert_msg(strstr(body, in_body), "no %s in the body: %.300s", in_body, body);
    free(a);
}

START_TEST(test_routes_and_refusals)
{
    char *a = exchange("GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    ck_assert_int_eq(status_of(a), 200);
    ck_assert_str_eq(body_of(a), "{\"status\":\"ok\"}");
    ck_assert_ptr_nonnull(strstr(a, "X-Request-Id: "));
    free(a);

    a = exchange("GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    expect(a, 404, NULL, "\"type\":\"not_found_error\"");

    a = exchange("GET /v1/score HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    expect(a, 405, "Allow: POST\r\n", NULL);

    a = post("/v1/score", "", "{\"text\": \"" /* over the 256-byte limit */
                              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}");
    expect(a, 413, NULL, NULL);

    /* A chunked body has no Content-Length: the cap is applied while it arrives. */
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST /v1/score HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "64\r\n%0100d\r\n", 0);
    snprintf(req + n, sizeof req - (size_t)n, "0\r\n\r\n");
    a = exchange(req);
    expect(a, 413, NULL, "\"type\":\"request_too_large\"");

    a = exchange("POST /v1/score HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                 "Content-Length: 2\r\n\r\nhi");
    expect(a, 415, NULL, NULL);

    a = post("/v1/score", "X-Request-Id: my-id.1\r\n", "{\"text\": 5}");
    expect(a, 400, "X-Request-Id: my-id.1\r\n", "\"param\":\"text\"");
}
END_TEST

START_TEST(test_job_answered_by_a_worker)
{
    char *a = post("/v1/score", "", "{\"text\": \"whale\", \"top_k\": 1}");
    expect(a, 200, "Content-Type: application/json\r\n", "\"usage\":{\"input_tokens\":5}");
}
END_TEST

START_TEST(test_stream_and_client_leaving)
{
    char *a = post("/v1/generate", "", "{\"prompt\": \"a\", \"max_tokens\": 5, \"stream\": true, \"seed\": 1}");
    ck_assert_int_eq(status_of(a), 200);
    ck_assert_ptr_nonnull(strstr(a, "Content-Type: text/event-stream\r\n"));
    int events = 0;
    for (const char *p = body_of(a); (p = strstr(p, "data: ")); p += 6)
        events++;
    ck_assert_int_eq(events, 5 + 2); /* a token each, the end, [DONE] */
    ck_assert_ptr_nonnull(strstr(a, "data: [DONE]"));
    free(a);

    /* A client that reads the first event and leaves: its generation stops. */
    int fd = connect_server();
    const char *body = "{\"prompt\": \"a\", \"max_tokens\": 64, \"stream\": true}";
    char req[512];
    snprintf(req, sizeof req,
             "POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    send_all(fd, req, strlen(req));
    char first[64];
    ck_assert_int_gt(recv(fd, first, sizeof first, 0), 0);
    close(fd);
    for (int i = 0; i < 500 && srv_in_flight(g_srv) > 0; i++)
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    ck_assert_int_eq(srv_in_flight(g_srv), 0);
    ck_assert_int_eq(atomic_load(&g_metrics.active_sequences), 0);
}
END_TEST

START_TEST(test_api_key)
{
    char *a = post("/v1/score", "", "{\"text\": \"x\"}");
    expect(a, 401, "WWW-Authenticate: Bearer\r\n", NULL);
    a = post("/v1/score", "Authorization: Bearer sesame\r\n", "{\"text\": \"x\"}");
    expect(a, 200, NULL, NULL);
    a = post("/v1/score", "X-Api-Key: sesame\r\n", "{\"text\": \"x\"}");
    expect(a, 200, NULL, NULL);
    a = exchange("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"); /* open without a key */
    expect(a, 200, NULL, "attnlm_requests_total{route=\"/v1/score\",status=\"401\"} 1\n");
}
END_TEST

/* The embedded page: its table, and its files served without the key, with
 * their headers and conditional answers; --no-ui makes them 404. */
START_TEST(test_inspector_page)
{
    ck_assert(ui_is_path("/") && ui_is_path("/ui/app.js") && !ui_is_path("/ui") && !ui_is_path("/v1/model"));
    const ui_asset *page = ui_find("/"), *js = ui_find("/ui/app.js");
    ck_assert(page && js && !ui_find("/index.html") && !ui_find("/ui/../ui/app.js") && !ui_find("/ui/"));
    ck_assert_str_eq(page->type, "text/html; charset=utf-8");
    ck_assert_str_eq(js->type, "text/javascript; charset=utf-8");
    ck_assert_int_eq(page->etag[0], '"');
    ck_assert_str_ne(page->etag, js->etag);
    ck_assert(ui_etag_matches(page->etag, page->etag));
    char list[160];
    snprintf(list, sizeof list, "\"abc\" , W/%s", page->etag);
    ck_assert(ui_etag_matches(list, page->etag));
    ck_assert(ui_etag_matches("*", page->etag));
    ck_assert(!ui_etag_matches(js->etag, page->etag));
    ck_assert(!ui_etag_matches("", page->etag) && !ui_etag_matches(NULL, page->etag));

    char *a = exchange("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"); /* no key needed */
    ck_assert_int_eq(status_of(a), 200);
    ck_assert_ptr_nonnull(strstr(a, "Content-Type: text/html; charset=utf-8\r\n"));
    ck_assert_ptr_nonnull(strstr(a, "Content-Security-Policy: default-src 'self';"));
    ck_assert_ptr_nonnull(strstr(a, "X-Content-Type-Options: nosniff\r\n"));
    ck_assert_ptr_nonnull(strstr(a, "Cache-Control: no-cache\r\n"));
    ck_assert_uint_eq(strlen(body_of(a)), page->len);
    ck_assert(memcmp(body_of(a), page->data, page->len) == 0);
    free(a);
    char req[256];
    snprintf(req, sizeof req, "GET /ui/app.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIf-None-Match: %s\r\n\r\n",
             js->etag);
    a = exchange(req);
    ck_assert_int_eq(status_of(a), 304);
    ck_assert_str_eq(body_of(a), "");
    free(a);
    a = exchange("DELETE /ui/app.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    expect(a, 405, "Allow: GET, HEAD\r\n", NULL);
    a = exchange("GET /ui/none.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    expect(a, 404, NULL, NULL);
    /* Off, the paths are like any other: the key first (so nothing tells them apart), then 404. */
    g_cfg.ui = 0;
    a = exchange("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    expect(a, 401, NULL, NULL);
    a = exchange("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer sesame\r\n\r\n");
    expect(a, 404, NULL, "\"not_found_error\"");
    g_cfg.ui = 1;
}
END_TEST

/* Reads one answer with a Content-Length from a kept-alive connection. */
static char *read_one(int fd)
{
    char *out = calloc(1, 8192);
    size_t len = 0;
    const char *head_end = NULL;
    long body = -1;
    while (!head_end || len < (size_t)(head_end + 4 - out) + (size_t)body) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ck_assert_msg(poll(&p, 1, 30000) == 1, "no answer within 30 s");
        ssize_t n = recv(fd, out + len, 8191 - len, 0);
        ck_assert_int_gt(n, 0);
        len += (size_t)n;
        if (!head_end && (head_end = strstr(out, "\r\n\r\n"))) {
            const char *cl = strstr(out, "Content-Length: ");
            ck_assert_ptr_nonnull(cl);
            body = strtol(cl + 16, NULL, 10);
        }
    }
    return out;
}

START_TEST(test_drain_turns_ready)
{
    /* A connection the server holds before the drain is still answered, and /ready says so. */
    int fd = connect_server();
    const char *req = "GET /ready HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, req, strlen(req));
    char *a = read_one(fd);
    expect(a, 200, NULL, NULL);
    srv_drain_begin(g_srv);
    send_all(fd, req, strlen(req));
    a = read_one(fd);
    close(fd);
    ck_assert_int_eq(status_of(a), 503);
    ck_assert_str_eq(body_of(a), "{\"status\":\"draining\"}");
    free(a);
}
END_TEST

int main(void)
{
    const check_case cases[] = {
        {"http",
         CHECK_TESTS(CHECK_TEST(test_routes_and_refusals), CHECK_TEST(test_job_answered_by_a_worker),
                     CHECK_TEST(test_stream_and_client_leaving), CHECK_TEST(test_drain_turns_ready)),
         .setup = setup, .teardown = teardown, .timeout = 60},
        {"key", CHECK_TESTS(CHECK_TEST(test_api_key), CHECK_TEST(test_inspector_page)), .setup = setup_key, .teardown = teardown, .timeout = 60},
    };
    return check_main("http", cases, sizeof cases / sizeof *cases);
}
