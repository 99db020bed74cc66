/* main.c -- attnlm-server: load the models, start the workers and the HTTP
 * front, reload the models on SIGHUP, and on SIGTERM or SIGINT drain and stop.
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
#include <malloc.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "log.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "pool.h"
#include "probe.h"
#include "sha256.h"
#include "err.h"

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
    return sigaction(SIGTERM, &sa, NULL) | sigaction(SIGINT, &sa, NULL) | sigaction(SIGHUP, &sa, NULL) |
           sigaction(SIGPIPE, &ign, NULL);
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

/* Writes the port (and on a second line the admin port, if any) to path
 * through a temporary file and a rename, so a script polling for the file
 * never reads half of it.  Returns 0, or -1 with errno. */
static int write_port_file(const char *path, int port, int admin_port)
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
    if (admin_port >= 0)
        ok &= fprintf(f, "%d\n", admin_port) > 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

/* Waits up to secs for the in-flight requests; returns early on a second
 * stopping signal (SIGHUP does not stop a drain). */
static bool wait_idle(srv *s, double secs)
{
    int64_t end = clock_now_ns() + (int64_t)(secs * 1e9);
    while (srv_in_flight(s) > 0) {
        if (clock_now_ns() >= end)
            return false;
        int sig = signal_next(10);
        if (sig && sig != SIGHUP) {
            log_msg("warn", "second signal: ending in-flight requests now");
            return false;
        }
    }
    return true;
}

/* Large buffers (answers, a pass's activations) come from mmap and go back to
 * the system when freed, whatever sizes came before (glibc's adaptive
 * threshold would otherwise keep them in the heap); one arena per worker and
 * a couple more. */
static void tune_malloc(int workers)
{
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
    mallopt(M_ARENA_MAX, workers + 2);
}

/* Room for every connection the main port may hold, beside the files, pipes
 * and the admin port's connections: the soft limit is often 1024. */
static void raise_fd_limit(long max_connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t want = (rlim_t)max_connections + 256;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
        log_msg("warn", "open files are limited to %llu: fewer than --max-connections %ld connections may be held",
                (unsigned long long)rl.rlim_cur, max_connections);
}

/* The key that signs exported session states: SHA-256 of the secret file's
 * bytes (a final newline aside), or random bytes of this process without one. */
static int session_secret(const char *path, unsigned char key[32], char *err, size_t errlen)
{
    if (!*path) {
        if (getrandom(key, 32, 0) != 32) {
            err_set(err, errlen, "no random bytes for the session secret: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, errlen, "cannot read --session-secret-file %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char secret[4096];
    size_t n = fread(secret, 1, sizeof secret, f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r'))
        n--;
    if (n < 16 || more) {
        err_set(err, errlen, "--session-secret-file %s must hold 16 to %zu bytes of secret, not %s", path,
                sizeof secret, more ? "more" : "fewer");
        return -1;
    }
    sha256_ctx h;
    sha256_init(&h);
    sha256_update(&h, secret, n);
    sha256_final(&h, key);
    memset(secret, 0, sizeof secret);
    return 0;
}

/* One store, in memory or in Redis (keys under prefix), when on; -1 with err. */
static int open_store(const srv_config *cfg, bool on, const char *prefix, const session_limits *lim,
                      const char *what, session_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!on)
        return 0;
    bool redis = strcmp(cfg->session_store, "memory") != 0;
    if (redis && strncmp(cfg->session_store, "redis://", 8) != 0) {
        err_set(err, errlen, "--session-store must be memory or redis://HOST:PORT[/DB], not \"%.100s\"",
                cfg->session_store);
        return -1;
    }
    *out = redis ? session_store_redis(cfg->session_store, prefix, lim, err, errlen) : session_store_new(lim);
    if (!*out && !redis)
        err_set(err, errlen, "out of memory for the %s store", what);
    return *out ? 0 : -1;
}

/* The session store and the streams' checkpoint store (each NULL when turned off). */
static int open_stores(const srv_config *cfg, const session_limits *slim, const session_limits *climit,
                       session_store **sessions, session_store **checkpoints, char *err, size_t errlen)
{
    if (open_store(cfg, cfg->max_sessions > 0, "attnlm:s", slim, "session", sessions, err, errlen) < 0)
        return -1;
    if (open_store(cfg, cfg->checkpoint_every > 0, "attnlm:c", climit, "checkpoint", checkpoints, err, errlen) < 0) {
        session_store_free(*sessions);
        *sessions = NULL;
        return -1;
    }
    return 0;
}

static void reload_note(void *cls, const char *path, bool ok, const char *message)
{
    (void)cls;
    log_msg(ok ? "info" : "error", "SIGHUP: %s: %s%s", path, ok ? "" : "reload failed, ", message);
}

/* One line per served model: name, architecture, size, hash, load time. */
static void describe_models(api_models *r)
{
    for (int i = 0; i < api_models_count(r); i++) {
        api_model *am = api_model_acquire_at(r, i);
        const model_config *c = model_get_config(am->m);
        log_msg("info", "model %s: %s x%d h%d %s w%d, %llu params, kernels %s, sha256 %.12s, %s, loaded in %.3f s",
                am->name, model_cell_name(c->cell), c->layers, c->hidden, model_attention_name(c->attention),
                c->window, (unsigned long long)model_param_count(am->m), model_kernels(am->m), model_sha256(am->m),
                am->path, am->load_seconds);
        api_model_release(am);
    }
}

int main(int argc, char **argv)
{
    srv_config cfg;
    char err[ATTNLM_ERR_LEN];
    int loaded = config_load(&cfg, argc, argv, stdout, err, sizeof err);
    if (loaded != 0)
        config_free(&cfg);
    if (loaded == 1)
        return 0;
    if (loaded < 0) {
        fprintf(stderr, "attnlm: %s\n", err);
        return 2;
    }
    if (cfg.health_check) {
        /* The admin port when there is one: load on the main port cannot delay it, and it is plain HTTP. */
        if (cfg.admin_port <= 0 && *cfg.tls_cert) {
            fprintf(stderr, "attnlm: --health speaks plain HTTP: give --admin-port with --tls-cert\n");
            config_free(&cfg);
            return 1;
        }
        long port = cfg.admin_port > 0 ? cfg.admin_port : cfg.port;
        int status = probe_http(cfg.host, port, "/health", 3.0, err, sizeof err);
        config_free(&cfg);
        if (status == 200)
            return 0;
        if (status > 0)
            fprintf(stderr, "attnlm: /health answered %d\n", status);
        else
            fprintf(stderr, "attnlm: health check failed: %s\n", err);
        return 1;
    }

    log_init(cfg.log_format);
    if (signals_install() < 0) {
        log_msg("error", "cannot install signal handlers: %s", strerror(errno));
        config_free(&cfg);
        return 1;
    }
    tune_malloc((int)cfg.workers);
    raise_fd_limit(cfg.max_connections);
    /* Each worker runs its own small products; BLAS threads would only contend. */
    openblas_set_num_threads(1);

    model_opts load = {.kernels = cfg.kernels};
    if (model_precision_parse(cfg.precision, &load.precision, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: --precision: %s\n", err);
        config_free(&cfg);
        return 2;
    }
    if (model_kernels_check(cfg.kernels, err, sizeof err) < 0) {
        fprintf(stderr, "attnlm: --kernels: %s\n", err);
        config_free(&cfg);
        return 2;
    }
    _Static_assert(SRV_MAX_LIST <= API_MAX_MODELS, "every --model can be served");
    api_models *models = api_models_load(cfg.models.v, cfg.models.n, &load, err, sizeof err);
    if (!models) {
        log_msg("error", "%s", err);
        config_free(&cfg);
        return 1;
    }
    prefix_cache *prefix = NULL;
    if (cfg.prefix_cache_mb > 0 && !(prefix = prefix_cache_new((size_t)cfg.prefix_cache_mb << 20))) {
        log_msg("error", "out of memory for the prefix cache");
        api_models_free(models);
        config_free(&cfg);
        return 1;
    }
    api_models_use_prefix_cache(models, prefix);
    session_store *sessions = NULL, *checkpoints = NULL;
    const session_limits slim = {.max_sessions = (int)cfg.max_sessions,
                                 .max_bytes = (size_t)cfg.session_memory_mb << 20,
                                 .ttl = cfg.session_ttl};
    const session_limits climit = {.max_sessions = 3 * (int)(cfg.queue + cfg.workers * cfg.max_batch),
                                   .max_bytes = (size_t)cfg.checkpoint_memory_mb << 20,
                                   .ttl = cfg.session_ttl};
    api_chat_template *chat = NULL;
    unsigned char session_key[32];
    if (open_stores(&cfg, &slim, &climit, &sessions, &checkpoints, err, sizeof err) < 0 ||
        !(chat = api_chat_template_load(cfg.chat_template, err, sizeof err)) ||
        session_secret(cfg.session_secret_file, session_key, err, sizeof err) < 0) {
        log_msg("error", "%s", err);
        api_chat_template_free(chat);
        session_store_free(checkpoints);
        session_store_free(sessions);
        api_models_free(models);
        prefix_cache_free(prefix);
        config_free(&cfg);
        return 1;
    }
    static api_metrics metrics;
    api_ctx ctx = {
        .models = models,
        .limits =
            {
                .max_body_bytes = (size_t)cfg.max_body,
                .max_input_tokens = (int)cfg.max_input_tokens,
                .max_new_tokens = (int)cfg.max_new_tokens,
                .max_attention_tokens = (int)cfg.max_attention_tokens,
                .max_inputs = (int)cfg.max_inputs,
                .queue_size = (int)cfg.queue,
                .workers = (int)cfg.workers,
                .max_batch = (int)cfg.max_batch,
                .prefix_cache_bytes = (long long)cfg.prefix_cache_mb << 20,
            },
        .metrics = &metrics,
        .prefix = prefix,
        .sessions = sessions,
        .checkpoints = checkpoints,
        .checkpoint_every = (int)cfg.checkpoint_every,
        .chat = chat,
    };
    memcpy(ctx.session_key, session_key, sizeof session_key);
    memset(session_key, 0, sizeof session_key);
    metrics.workers = cfg.workers;

    int rc = 1;
    srv *s = NULL;
    /* A stream whose client reads nothing is ended after the request deadline, or two minutes without one. */
    double stall = cfg.timeout > 0 ? cfg.timeout : 120;
    pool *p = pool_new(&ctx, (int)cfg.workers, (int)cfg.queue, (int)cfg.max_batch, stall, err, sizeof err);
    if (!p || !(s = srv_start(&cfg, &ctx, p, err, sizeof err))) {
        log_msg("error", "%s", err);
        goto done;
    }
    if (*cfg.port_file && write_port_file(cfg.port_file, srv_port(s), srv_admin_port(s)) < 0) {
        log_msg("error", "cannot write --port-file %s: %s", cfg.port_file, strerror(errno));
        goto done;
    }
    describe_models(models);
    api_model *first = api_model_acquire_at(models, 0);
    char admin[64] = "";
    if (srv_admin_port(s) >= 0)
        snprintf(admin, sizeof admin, ", admin port %d", srv_admin_port(s));
    log_msg("info", "listening on %s://%s:%d (%d model%s, first %s; %ld workers, queue %ld, batch %ld%s)",
            *cfg.tls_cert ? "https" : "http", cfg.host, srv_port(s), api_models_count(models),
            api_models_count(models) > 1 ? "s" : "", first->name, cfg.workers, cfg.queue, cfg.max_batch, admin);
    api_model_release(first);

    int sig;
    while ((sig = signal_next(-1)) == SIGHUP) {
        int failed = api_models_reload(models, &metrics, reload_note, NULL);
        log_msg(failed ? "warn" : "info", "SIGHUP: %d of %d models reloaded", api_models_count(models) - failed,
                api_models_count(models));
        if (*cfg.api_key_file) {
            int n = srv_reload_keys(s, err, sizeof err);
            if (n < 0)
                log_msg("warn", "SIGHUP: %s; the keys before stay", err);
            else
                log_msg("info", "SIGHUP: %d API keys", n);
        }
    }
    log_msg("info", "%s: draining (%ld in flight, up to %g s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
            srv_in_flight(s), cfg.drain_timeout);
    srv_drain_begin(s);
    if (!wait_idle(s, cfg.drain_timeout)) {
        api_error e;
        api_error_set(&e, 503, NULL, "the server is shutting down");
        pool_abort(p, &e);
        /* Give the aborted answers a moment to reach their clients. */
        wait_idle(s, 2.0);
    }
    rc = 0;
done:
    srv_stop(s);
    pool_free(p);
    api_chat_template_free(chat);
    session_store_free(checkpoints);
    session_store_free(sessions);
    api_models_free(models);
    prefix_cache_free(prefix);
    if (*cfg.port_file && rc == 0)
        unlink(cfg.port_file); /* the port is no longer ours */
    config_free(&cfg);
    if (rc == 0)
        log_msg("info", "stopped");
    return rc;
}
