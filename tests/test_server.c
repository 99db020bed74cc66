/* test_server.c -- the daemon's parts without a socket: settings from flags
 * and environment, and the worker pool's batching, cancellation, deadlines
 * and admission, with tasks whose callbacks record what the pool did.
 */
#define _POSIX_C_SOURCE 200809L
#include "api.h"
#include "config.h"
#include "model.h"
#include "pool.h"
#include "probe.h"
#include "clock.h"
#include "testutil.h"

#include "api_fixture.h"
#include "check_main.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- settings ------------------------------------------------------------- */

/* A listener on loopback that answers one connection with fixed bytes. */
typedef struct canned {
    int fd;
    const char *answer;
    char request[256];
} canned;

static void *canned_serve(void *arg)
{
    canned *c = arg;
    int conn = accept(c->fd, NULL, NULL);
    if (conn < 0)
        return NULL;
    ssize_t n = recv(conn, c->request, sizeof c->request - 1, 0);
    c->request[n > 0 ? n : 0] = '\0';
    if (send(conn, c->answer, strlen(c->answer), MSG_NOSIGNAL) < 0)
        c->request[0] = '\0';
    close(conn);
    return NULL;
}

static int probe_canned(const char *answer, char *request, char *err)
{
    canned c = {.answer = answer};
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(c.fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(c.fd, 1), 0);
    ck_assert_int_eq(getsockname(c.fd, (struct sockaddr *)&a, &len), 0);
    pthread_t t;
    pthread_create(&t, NULL, canned_serve, &c);
    int status = probe_http("0.0.0.0", ntohs(a.sin_port), "/health", 5.0, err, ATTNLM_ERR_LEN);
    pthread_join(t, NULL);
    close(c.fd);
    strcpy(request, c.request);
    return status;
}

START_TEST(test_health_probe_reads_the_status)
{
    char req[256], err[ATTNLM_ERR_LEN];
    ck_assert_int_eq(probe_canned("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", req, err), 200);
    ck_assert_msg(strncmp(req, "GET /health HTTP/1.0\r\n", 22) == 0, "%s", req);
    ck_assert_int_eq(probe_canned("HTTP/1.0 503 Service Unavailable\r\n\r\n", req, err), 503);
    ck_assert_int_eq(probe_canned("SSH-2.0-OpenSSH\r\n", req, err), -1);
    ck_assert_msg(strstr(err, "did not answer HTTP") != NULL, "%s", err);
    ck_assert_int_eq(probe_canned("", req, err), -1);
}
END_TEST

/* Loads a configuration into c, freeing what an earlier load of c held. */
static int load(srv_config *c, char **argv, int argc, char *err)
{
    config_free(c);
    FILE *devnull = fopen("/dev/null", "w");
    int rc = config_load(c, argc, argv, devnull, err, ATTNLM_ERR_LEN);
    fclose(devnull);
    return rc;
}

START_TEST(test_config_defaults_flags_env)
{
    srv_config c = {0};
    char err[ATTNLM_ERR_LEN];
    unsetenv("ATTNLM_PORT");
    unsetenv("ATTNLM_MODEL");
    unsetenv("ATTNLM_MAX_BODY");
    char *a0[] = {"attnlm-server"};
    ck_assert_int_eq(load(&c, a0, 1, err), 0);
    ck_assert_str_eq(c.host, "127.0.0.1");
    ck_assert_int_eq(c.port, 8080);
    ck_assert_int_eq(c.models.n, 1);
    ck_assert_str_eq(c.models.v[0], "models/default.safetensors");
    ck_assert_int_eq(c.queue, 64);
    ck_assert_int_eq(c.max_body, 1 << 20);
    ck_assert_int_ge(c.workers, 1);

    setenv("ATTNLM_PORT", "9001", 1);
    setenv("ATTNLM_MAX_BODY", "2048", 1);
    ck_assert_int_eq(load(&c, a0, 1, err), 0);
    ck_assert_int_eq(c.port, 9001);
    ck_assert_int_eq(c.max_body, 2048);

    char *a1[] = {"attnlm-server", "--port", "9002", "--max-body=4096", "--api-key", "k", "--timeout", "2.5"};
    ck_assert_int_eq(load(&c, a1, 8, err), 0);
    ck_assert_int_eq(c.port, 9002); /* the flag wins */
    ck_assert_int_eq(c.max_body, 4096);
    ck_assert_str_eq(c.api_key, "k");
    ck_assert(c.timeout == 2.5);
    unsetenv("ATTNLM_PORT");
    unsetenv("ATTNLM_MAX_BODY");

    char *a2[] = {"attnlm-server", "--queue", "1", "--max-batch", "32"};
    ck_assert_int_eq(load(&c, a2, 5, err), 0);
    ck_assert_int_eq(c.max_batch, 1);

    /* Models: ATTNLM_MODEL is a comma-separated list; --model, once per file, replaces it. */
    setenv("ATTNLM_MODEL", "a.safetensors, b.safetensors,,c.safetensors", 1);
    ck_assert_int_eq(load(&c, a0, 1, err), 0);
    ck_assert_int_eq(c.models.n, 3);
    ck_assert_str_eq(c.models.v[0], "a.safetensors");
    ck_assert_str_eq(c.models.v[1], "b.safetensors");
    ck_assert_str_eq(c.models.v[2], "c.safetensors");
    char *a3[] = {"attnlm-server", "--model", "x.safetensors", "--workers", "1", "--model=y.safetensors"};
    ck_assert_int_eq(load(&c, a3, 6, err), 0);
    ck_assert_int_eq(c.models.n, 2);
    ck_assert_str_eq(c.models.v[0], "x.safetensors");
    ck_assert_str_eq(c.models.v[1], "y.safetensors");
    unsetenv("ATTNLM_MODEL");

    /* The inspector page: on by default; a switch: --ui, --no-ui, --ui=VALUE, ATTNLM_UI. */
    ck_assert_int_eq(load(&c, a0, 1, err), 0);
    ck_assert_int_eq(c.ui, 1);
    char *a4[] = {"attnlm-server", "--no-ui", "--port", "1"};
    ck_assert_int_eq(load(&c, a4, 4, err), 0);
    ck_assert_int_eq(c.ui, 0);
    ck_assert_int_eq(c.port, 1); /* the switch took no value */
    setenv("ATTNLM_UI", "off", 1);
    ck_assert_int_eq(load(&c, a0, 1, err), 0);
    ck_assert_int_eq(c.ui, 0);
    char *a5[] = {"attnlm-server", "--ui"};
    ck_assert_int_eq(load(&c, a5, 2, err), 0);
    ck_assert_int_eq(c.ui, 1);
    setenv("ATTNLM_UI", "TRUE", 1);
    char *a6[] = {"attnlm-server", "--ui=0"};
    ck_assert_int_eq(load(&c, a6, 2, err), 0);
    ck_assert_int_eq(c.ui, 0);
    unsetenv("ATTNLM_UI");
    config_free(&c);
}
END_TEST

START_TEST(test_config_refusals_name_the_setting)
{
    srv_config c = {0};
    char err[ATTNLM_ERR_LEN];
    char *a1[] = {"attnlm-server", "--port", "70000"};
    ck_assert_int_eq(load(&c, a1, 3, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--port"));
    char *a2[] = {"attnlm-server", "--prot", "1"};
    ck_assert_int_eq(load(&c, a2, 3, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--prot"));
    char *a3[] = {"attnlm-server", "--workers"};
    ck_assert_int_eq(load(&c, a3, 2, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--workers"));
    char *a4[] = {"attnlm-server", "--timeout", "soon"};
    ck_assert_int_eq(load(&c, a4, 3, err), -1);
    setenv("ATTNLM_QUEUE", "0", 1);
    char *a5[] = {"attnlm-server"};
    ck_assert_int_eq(load(&c, a5, 1, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "ATTNLM_QUEUE"));
    unsetenv("ATTNLM_QUEUE");
    char *a6[] = {"attnlm-server", "--help"};
    ck_assert_int_eq(load(&c, a6, 2, err), 1);
    setenv("ATTNLM_MODEL", " , ", 1);
    ck_assert_int_eq(load(&c, a5, 1, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no model file"));
    unsetenv("ATTNLM_MODEL");
    char *a7[] = {"attnlm-server", "--model", "1", "--model", "2", "--model", "3", "--model", "4", "--model", "5",
                  "--model", "6", "--model", "7", "--model", "8", "--model", "9", "--model", "10", "--model", "11",
                  "--model", "12", "--model", "13", "--model", "14", "--model", "15", "--model", "16", "--model",
                  "17"};
    ck_assert_int_eq(load(&c, a7, 35, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "at most 16 values"));
    char *a8[] = {"attnlm-server", "--ui=maybe"};
    ck_assert_int_eq(load(&c, a8, 2, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--ui"));
    char *a9[] = {"attnlm-server", "--no-port"}; /* only switches have a --no- form */
    ck_assert_int_eq(load(&c, a9, 2, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--no-port"));
    setenv("ATTNLM_UI", "2", 1);
    ck_assert_int_eq(load(&c, a5, 1, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "ATTNLM_UI"));
    unsetenv("ATTNLM_UI");
    config_free(&c);
}
END_TEST

START_TEST(test_help_lists_every_variable)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_usage(f);
    fclose(f);
    const char *want[] = {"ATTNLM_HOST", "ATTNLM_PORT", "ATTNLM_MODEL", "ATTNLM_WORKERS", "ATTNLM_QUEUE",
                          "ATTNLM_TIMEOUT", "ATTNLM_MAX_BODY", "ATTNLM_MAX_INPUT_TOKENS", "ATTNLM_MAX_NEW_TOKENS",
                          "ATTNLM_MAX_ATTENTION_TOKENS", "ATTNLM_API_KEY", "ATTNLM_DRAIN_TIMEOUT", "--max-batch", "ATTNLM_UI", "--no-ui",
                          "ATTNLM_PRECISION"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        ck_assert_msg(strstr(buf, want[i]) != NULL, "--help lacks %s", want[i]);
    free(buf);
}
END_TEST

/* ---- the pool ------------------------------------------------------------------ */

static const model *g_model;
static api_models *g_models;
static api_metrics g_metrics;
static api_ctx g_ctx;

/* A task that records what the pool hands it. */
typedef struct test_task {
    pool_task t;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    char *out;
    size_t len;
    int status;
    bool done, released, cancelled;
    atomic_bool gone;
} test_task;

/* What a pool test starts, freed by pool_teardown: the pool, then its tasks. */
static pool *g_pool;
static test_task *g_tasks[16];
static int g_n_tasks;

static void tt_emit(pool_task *t, int status, char *data, size_t len, bool done)
{
    test_task *x = (test_task *)t;
    pthread_mutex_lock(&x->lock);
    char *grown = realloc(x->out, x->len + len + 1);
    if (!grown)
        abort(); /* a test that cannot hold the output cannot judge it */
    x->out = grown;
    memcpy(x->out + x->len, data, len);
    x->len += len;
    x->out[x->len] = '\0';
    strip_timings(x->out); /* answers are compared across runs; "timings" measure one */
    x->len = strlen(x->out);
    x->status = status;
    x->done |= done;
    pthread_mutex_unlock(&x->lock);
    free(data);
}

static bool tt_gone(pool_task *t) { return atomic_load(&((test_task *)t)->gone); }

static void tt_release(pool_task *t, bool cancelled)
{
    test_task *x = (test_task *)t;
    pthread_mutex_lock(&x->lock);
    x->released = true;
    x->cancelled = cancelled;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->lock);
}

static test_task *tt_new(api_endpoint ep, const char *body, double timeout)
{
    test_task *x = calloc(1, sizeof *x);
    api_error e;
    x->t.job = api_job_new(&g_ctx, ep, &(api_request){.body = body, .len = strlen(body)},
                             99, "t", &e);
    ck_assert_msg(x->t.job != NULL, "%s", e.message);
    x->t.emit = tt_emit;
    x->t.gone = tt_gone;
    x->t.release = tt_release;
    x->t.deadline_ns = timeout > 0 ? clock_now_ns() + (int64_t)(timeout * 1e9) : 0;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->cv, NULL);
    ck_assert_int_lt(g_n_tasks, (int)(sizeof g_tasks / sizeof *g_tasks));
    g_tasks[g_n_tasks++] = x;
    return x;
}

/* A task submitted to the test's pool, which must take it. */
static test_task *tt_submit(api_endpoint ep, const char *body, double timeout)
{
    test_task *x = tt_new(ep, body, timeout);
    ck_assert_int_eq(pool_submit(g_pool, &x->t), 0);
    return x;
}

static void tt_wait(test_task *x)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&x->lock);
    while (!x->released)
        ck_assert_int_eq(pthread_cond_timedwait(&x->cv, &x->lock, &until), 0);
    pthread_mutex_unlock(&x->lock);
}

static void tt_free(test_task *x)
{
    api_job_free(x->t.job);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->cv);
    free(x->out);
    free(x);
}

static void pool_setup(void)
{
    api_limits lim = fixture_limits();
    lim.max_input_tokens = 256, lim.max_new_tokens = 100000, lim.max_attention_tokens = 64;
    lim.queue_size = 16, lim.workers = 2;
    g_models = load_api_fixture(&g_ctx, &g_metrics, "lstm_additive.safetensors", lim, &g_model);
}

/* The test's pool, freed with its tasks by pool_teardown. */
static void start_pool(int workers, int queue, int max_batch)
{
    char err[ATTNLM_ERR_LEN];
    g_pool = pool_new(&g_ctx, workers, queue, max_batch, 30, err, sizeof err);
    ck_assert_msg(g_pool != NULL, "%s", err);
}

static void pool_teardown(void)
{
    if (g_pool) {
        api_error e;
        api_error_set(&e, 503, NULL, "test over"); /* ends what a failed test left running */
        pool_abort(g_pool, &e);
        pool_free(g_pool);
        g_pool = NULL;
    }
    for (int i = 0; i < g_n_tasks; i++)
        tt_free(g_tasks[i]);
    g_n_tasks = 0;
    api_models_free(g_models);
}

/* Same text and tokens; the same log-probabilities (a row's numbers do not
 * depend on its batch; compared to 1e-5 as printed). */
static void same_generation(const char *a, const char *b)
{
    cJSON *x = cJSON_Parse(a), *y = cJSON_Parse(b);
    ck_assert_str_eq(cJSON_GetObjectItem(x, "text")->valuestring, cJSON_GetObjectItem(y, "text")->valuestring);
    cJSON *tx = cJSON_GetObjectItem(x, "tokens"), *ty = cJSON_GetObjectItem(y, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(tx), cJSON_GetArraySize(ty));
    for (int i = 0; i < cJSON_GetArraySize(tx); i++) {
        cJSON *u = cJSON_GetArrayItem(tx, i), *v = cJSON_GetArrayItem(ty, i);
        ck_assert_int_eq(cJSON_GetObjectItem(u, "id")->valueint, cJSON_GetObjectItem(v, "id")->valueint);
        ck_assert(fabs(cJSON_GetObjectItem(u, "logprob")->valuedouble - cJSON_GetObjectItem(v, "logprob")->valuedouble) <
                  1e-5);
    }
    cJSON_Delete(x);
    cJSON_Delete(y);
}

/* Generations submitted together are decoded together, and each answer is
 * the one it gets alone. */
START_TEST(test_pool_batches_and_matches_alone)
{
    enum { N = 6 };
    char body[N][160];
    start_pool(1, 16, 8);
    test_task *alone[N], *together[N];
    for (int i = 0; i < N; i++) {
        snprintf(body[i], sizeof body[i], "{\"prompt\":\"p%d\",\"max_tokens\":%d,\"seed\":%d,\"temperature\":0.8}",
                 i, 30 + 7 * i, i);
        alone[i] = tt_submit(API_EP_GENERATE, body[i], 0);
        tt_wait(alone[i]);
    }
    unsigned long batches_before = atomic_load(&g_metrics.batch_count);
    unsigned long rows_before = atomic_load(&g_metrics.batch_sum);
    for (int i = 0; i < N; i++)
        together[i] = tt_submit(API_EP_GENERATE, body[i], 0);
    for (int i = 0; i < N; i++) {
        tt_wait(together[i]);
        ck_assert_int_eq(together[i]->status, 200);
        ck_assert(!together[i]->cancelled);
        same_generation(together[i]->out, alone[i]->out);
    }
    unsigned long batches = atomic_load(&g_metrics.batch_count) - batches_before;
    unsigned long rows = atomic_load(&g_metrics.batch_sum) - rows_before;
    /* 6 sequences of 30..65 tokens alone would take 285 steps; together far fewer. */
    ck_assert_msg(rows == 30 + 37 + 44 + 51 + 58 + 65, "rows %lu", rows);
    ck_assert_msg(batches < 120, "%lu steps: no batching", batches);
    ck_assert_int_eq(atomic_load(&g_metrics.active_sequences), 0);
    ck_assert_int_eq(atomic_load(&g_metrics.queue_depth), 0);
}
END_TEST

START_TEST(test_pool_drops_gone_and_late_tasks)
{
    start_pool(2, 16, 8);
    test_task *gone = tt_submit(API_EP_GENERATE, "{\"max_tokens\":100000,\"stream\":true}", 0);
    test_task *late = tt_submit(API_EP_GENERATE, "{\"max_tokens\":100000}", 0.05);
    test_task *fine = tt_submit(API_EP_SCORE, "{\"text\":\"still served\"}", 0);
    tt_wait(fine);
    ck_assert_int_eq(fine->status, 200);
    /* The stream is producing; its client leaves. */
    for (;;) {
        pthread_mutex_lock(&gone->lock);
        size_t n = gone->len;
        pthread_mutex_unlock(&gone->lock);
        if (n > 0)
            break;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    atomic_store(&gone->gone, true);
    tt_wait(gone);
    ck_assert(gone->cancelled);
    tt_wait(late);
    ck_assert(!late->cancelled);
    ck_assert_int_eq(late->status, 504);
    ck_assert_ptr_nonnull(strstr(late->out, "timeout_error"));
    ck_assert_int_eq(atomic_load(&g_metrics.active_sequences), 0);
    ck_assert_uint_eq(atomic_load(&g_metrics.cancelled), 1);
    ck_assert_uint_eq(atomic_load(&g_metrics.timeouts), 1);
}
END_TEST

/* A worker takes scoring requests in rounds of at most 2,048 input tokens:
 * twelve of 250 tokens queued for one worker are answered in forward passes
 * of at most 8, not in one pass of all that were queued. */
START_TEST(test_pool_rounds_bound_input_tokens)
{
    enum { N = 12 };
    char body[300] = "{\"text\":\"";
    size_t len = strlen(body);
    for (int i = 0; i < 250; i++)
        body[len++] = (char)('a' + i % 26);
    strcpy(body + len, "\"}");
    start_pool(1, 16, 16);
    test_task *t[N];
    for (int i = 0; i < N; i++)
        t[i] = tt_submit(API_EP_SCORE, body, 0);
    for (int i = 0; i < N; i++) {
        tt_wait(t[i]);
        ck_assert_int_eq(t[i]->status, 200);
        ck_assert_str_eq(t[i]->out, t[0]->out);
    }
    unsigned long requests = atomic_load(&g_metrics.fwd_sum), passes = atomic_load(&g_metrics.fwd_count);
    ck_assert_uint_eq(requests, N);
    ck_assert_uint_ge(passes, 2);
    for (int b = 4; b < METRICS_BATCH_BUCKETS; b++) /* bucket 3 holds passes of 5 to 8 */
        ck_assert_msg(atomic_load(&g_metrics.fwd_bucket[b]) == 0, "a forward pass of more than 8 requests");
}
END_TEST

/* With one worker holding one sequence and a queue of one, the third is refused;
 * an abort ends everything held with its error. */
START_TEST(test_pool_queue_bound_and_abort)
{
    start_pool(1, 1, 1);
    test_task *a = tt_submit(API_EP_GENERATE, "{\"max_tokens\":100000,\"stream\":true}", 0);
    while (atomic_load(&g_metrics.active_sequences) == 0)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    test_task *b = tt_submit(API_EP_GENERATE, "{\"max_tokens\":100000}", 0);
    test_task *c = tt_new(API_EP_GENERATE, "{\"max_tokens\":1}", 0);
    ck_assert_int_eq(pool_submit(g_pool, &c->t), -1);
    ck_assert_int_eq(atomic_load(&g_metrics.queue_depth), 1);
    api_error e;
    api_error_set(&e, 503, NULL, "shutting down");
    pool_abort(g_pool, &e);
    tt_wait(a);
    tt_wait(b);
    ck_assert_ptr_nonnull(strstr(a->out, "overloaded_error"));
    ck_assert_ptr_nonnull(strstr(a->out, "data: [DONE]"));
    ck_assert_int_eq(b->status, 503);
}
END_TEST

int main(void)
{
    const check_case cases[] = {
        {"config",
         CHECK_TESTS(CHECK_TEST(test_config_defaults_flags_env), CHECK_TEST(test_config_refusals_name_the_setting),
                     CHECK_TEST(test_help_lists_every_variable), CHECK_TEST(test_health_probe_reads_the_status))},
        {"pool",
         CHECK_TESTS(CHECK_TEST(test_pool_batches_and_matches_alone), CHECK_TEST(test_pool_drops_gone_and_late_tasks),
                     CHECK_TEST(test_pool_queue_bound_and_abort), CHECK_TEST(test_pool_rounds_bound_input_tokens)),
         .setup = pool_setup, .teardown = pool_teardown, .timeout = 120},
    };
    return check_main("server", cases, sizeof cases / sizeof *cases);
}
