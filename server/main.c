/* main.c -- attnlm-server: load the model, start the workers and the HTTP
 * front, wait for SIGTERM or SIGINT, then drain and stop.
 *
 * The signal handler only writes the signal's number to a pipe that main
 * reads: whichever thread the kernel picks runs it (OpenBLAS starts its own
 * threads before main, so blocking signals in main's threads would not cover
 * them), and everything else happens here, outside any handler.
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "model.h"
#include "pool.h"
#include "probe.h"
#include "sha256.h"

/* Name reported to OpenAI clients: the file's "name" metadata, else its file name. */
static const char *model_id(const model *m, const char *path)
{
    const char *name = model_meta(m, "name");
    if (name && *name)
        return name;
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    ssize_t n = write(signal_pipe[1], &c, 1); /* a full pipe already says enough */
    (void)n;
    errno = saved;
}

static int signals_install(void)
{
    if (pipe(signal_pipe) < 0)
        return -1;
    for (int i = 0; i < 2; i++)
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC);
    fcntl(signal_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    return sigaction(SIGTERM, &sa, NULL) | sigaction(SIGINT, &sa, NULL) | sigaction(SIGPIPE, &ign, NULL);
}

/* The next signal's number, waiting at most timeout_ms (-1: forever); 0 if none came. */
static int signal_next(int timeout_ms)
{
    struct pollfd pfd = {.fd = signal_pipe[0], .events = POLLIN};
    for (;;) {
        int r = poll(&pfd, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        unsigned char c;
        if (read(signal_pipe[0], &c, 1) == 1)
            return c;
    }
}

/* Writes the port to path through a temporary file and a rename, so a script
 * polling for the file never reads half of it.  Returns 0, or -1 with errno. */
static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%d\n", port) > 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

/* Waits up to secs for the in-flight requests; returns early on a second signal. */
static bool wait_idle(srv *s, double secs)
{
    int64_t end = clock_now_ns() + (int64_t)(secs * 1e9);
    while (srv_in_flight(s) > 0) {
        if (clock_now_ns() >= end)
            return false;
        if (signal_next(10)) {
            fprintf(stderr, "attnlm: second signal: ending in-flight requests now\n");
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv)
{
    srv_config cfg;
    char err[ATTNLM_ERR_LEN];
    int rc = config_load(&cfg, argc, argv, stdout, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "attnlm: %s\n", err);
        return 2;
    }
    if (cfg.health_check) {
        int status = probe_http(cfg.host, cfg.port, "/health", 3.0, err, sizeof err);
        if (status == 200)
            return 0;
        if (status > 0)
            fprintf(stderr, "attnlm: /health answered %d\n", status);
        else
            fprintf(stderr, "attnlm: health check failed: %s\n", err);
        return 1;
    }

    if (signals_install() < 0) {
        fprintf(stderr, "attnlm: cannot install signal handlers: %s\n", strerror(errno));
        return 1;
    }
    /* Each worker runs its own small products; BLAS threads would only contend. */
    openblas_set_num_threads(1);

    int64_t t0 = clock_now_ns();
    model *m = model_load(cfg.model, err, sizeof err);
    if (!m) {
        fprintf(stderr, "attnlm: cannot load %s: %s\n", cfg.model, err);
        return 1;
    }
    double load_seconds = clock_seconds(t0, clock_now_ns());

    static api_metrics metrics;
    api_ctx ctx = {
        .m = m,
        .model_id = model_id(m, cfg.model),
        .model_path = cfg.model,
        .load_seconds = load_seconds,
        .limits =
            {
                .max_body_bytes = (size_t)cfg.max_body,
                .max_input_tokens = (int)cfg.max_input_tokens,
                .max_new_tokens = (int)cfg.max_new_tokens,
                .max_attention_tokens = (int)cfg.max_attention_tokens,
                .queue_size = (int)cfg.queue,
                .workers = (int)cfg.workers,
                .max_batch = (int)cfg.max_batch,
            },
        .metrics = &metrics,
    };
    if (sha256_file(cfg.model, ctx.sha256, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: cannot load %s: %s\n", cfg.model, err);
        model_free(m);
        return 1;
    }
    metrics.load_seconds = load_seconds;
    metrics.workers = cfg.workers;
    metrics.parameters = (unsigned long long)model_param_count(m);

    pool *p = pool_new(&ctx, (int)cfg.workers, (int)cfg.queue, (int)cfg.max_batch, err, sizeof err);
    if (!p) {
        fprintf(stderr, "attnlm: %s\n", err);
        model_free(m);
        return 1;
    }
    srv *s = srv_start(&cfg, &ctx, p, err, sizeof err);
    if (!s) {
        fprintf(stderr, "attnlm: %s\n", err);
        pool_free(p);
        model_free(m);
        return 1;
    }
    if (*cfg.port_file && write_port_file(cfg.port_file, srv_port(s)) < 0) {
        fprintf(stderr, "attnlm: cannot write --port-file %s: %s\n", cfg.port_file, strerror(errno));
        srv_stop(s);
        pool_free(p);
        model_free(m);
        return 1;
    }
    const model_config *c = model_get_config(m);
    fprintf(stderr,
            "attnlm: listening on http://%s:%d (model %s: %s x%d h%d %s w%d, %llu params, loaded in %.3f s; "
            "%ld workers, queue %ld, batch %ld)\n",
            cfg.host, srv_port(s), ctx.model_id, model_cell_name(c->cell), c->layers, c->hidden,
            model_attention_name(c->attention), c->window, (unsigned long long)model_param_count(m), load_seconds,
            cfg.workers, cfg.queue, cfg.max_batch);

    int sig = signal_next(-1);
    fprintf(stderr, "attnlm: %s: draining (%ld in flight, up to %g s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            srv_in_flight(s), cfg.drain_timeout);
    srv_drain_begin(s);
    if (!wait_idle(s, cfg.drain_timeout)) {
        api_error e;
        api_error_set(&e, 503, NULL, "the server is shutting down");
        pool_abort(p, &e);
        /* Give the aborted answers a moment to reach their clients. */
        wait_idle(s, 2.0);
    }
    srv_stop(s);
    pool_free(p);
    model_free(m);
    if (*cfg.port_file)
        unlink(cfg.port_file); /* the port is no longer ours */
    fprintf(stderr, "attnlm: stopped\n");
    return 0;
}
