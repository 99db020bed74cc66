/* http_streams.c -- N concurrent streaming generations against attnlm-server.
 *
 *   http_streams [-d SECONDS | -r ROUNDS] [-t MAX_TOKENS] [-h HOST] PORT N
 *
 * N threads, one connection each at a time.  Every thread POSTs /v1/generate
 *   {"prompt": ..., "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": S, "stream": true}
 * (S = thread index for its first request, + N for each further one), reads the
 * SSE stream to "data: [DONE]" and counts token events (lines starting with
 * `data: {"token"`), then starts its next request: ROUNDS requests back to back
 * (-r, default 2), or as many as start within SECONDS (-d).  The response may be
 * chunked; the body is de-chunked before the events are parsed.
 *
 * Prints one human-readable line and one line of key=value figures:
 *   aggregate generated tokens/s over the wall time, the median per-request
 *   tokens/s, the median and p90 time to first token (from connect), and the
 *   requests that went wrong: connect/read failures, HTTP status other than 200,
 *   `data: {"error"` events, streams without [DONE], streams with fewer tokens
 *   than MAX_TOKENS.
 * Exit status: 0 when every request went right, 1 otherwise, 2 on bad usage.
 * Only libc: cc -std=c11 -O2 -Wall -Wextra -pthread http_streams.c
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PROMPT "The sea was calm that night, and the watch"
#define READ_TIMEOUT_S 120

typedef struct result {
    double start, first, end; /* seconds since the run began; first < 0: no token */
    int tokens;
    int status;       /* HTTP status, 0 if none was read */
    int io_error;     /* connect/write/read failed or timed out */
    int error_event;  /* data: {"error" ... */
    int done;         /* data: [DONE] seen */
} result;

typedef struct worker {
    int index, n_streams, max_tokens, rounds;
    double deadline; /* > 0: keep starting requests until then */
    result *res;
    int n_res, cap_res;
} worker;

static struct sockaddr_in g_addr;
static double g_t0;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - g_t0;
}

/* The response parser: status line and headers, then (de-chunked) body bytes
 * split into lines, each line looked at once. */
enum { S_HEAD, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_CRLF, S_BODY, S_END };

typedef struct parser {
    int state;
    int chunked;
    size_t chunk_left;
    char line[1 << 16]; /* the current header, chunk-size or SSE line */
    size_t line_len;
    int line_overflow;
    result *r;
} parser;

static void sse_line(parser *p, const char *s, size_t n)
{
    if (n && s[n - 1] == '\r')
        n--;
    static const char tok[] = "data: {\"token\"", err[] = "data: {\"error\"", done[] = "data: [DONE]";
    if (n >= sizeof tok - 1 && memcmp(s, tok, sizeof tok - 1) == 0) {
        if (p->r->tokens++ == 0)
            p->r->first = now();
    } else if (n >= sizeof err - 1 && memcmp(s, err, sizeof err - 1) == 0) {
        p->r->error_event = 1;
    } else if (n == sizeof done - 1 && memcmp(s, done, n) == 0) {
        p->r->done = 1;
    }
}

static void body_bytes(parser *p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') {
            if (!p->line_overflow)
                sse_line(p, p->line, p->line_len);
            p->line_len = 0;
            p->line_overflow = 0;
        } else if (p->line_len < sizeof p->line) {
            p->line[p->line_len++] = s[i];
        } else {
            p->line_overflow = 1;
        }
    }
}

static void header_line(parser *p, const char *s, size_t n)
{
    if (n && s[n - 1] == '\r')
        n--;
    if (p->r->status == 0) {
        int major, minor, code;
        char tmp[64];
        size_t k = n < sizeof tmp - 1 ? n : sizeof tmp - 1;
        memcpy(tmp, s, k);
        tmp[k] = '\0';
        p->r->status = sscanf(tmp, "HTTP/%d.%d %d", &major, &minor, &code) == 3 ? code : -1;
        return;
    }
    if (n == 0) {
        p->state = p->chunked ? S_CHUNK_SIZE : S_BODY;
        return;
    }
    static const char te[] = "transfer-encoding:";
    if (n > sizeof te - 1 && strncasecmp(s, te, sizeof te - 1) == 0) {
        for (size_t i = sizeof te - 1; i + 7 <= n; i++)
            if (strncasecmp(s + i, "chunked", 7) == 0)
                p->chunked = 1;
    }
}

/* Feeds raw bytes from the socket through the parser. */
static void feed(parser *p, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && p->state != S_END) {
        switch (p->state) {
        case S_HEAD:
        case S_CHUNK_SIZE:
            if (s[i] == '\n') {
                p->line[p->line_len < sizeof p->line ? p->line_len : sizeof p->line - 1] = '\0';
                if (p->state == S_HEAD) {
                    header_line(p, p->line, p->line_len);
                } else {
                    p->chunk_left = strtoul(p->line, NULL, 16);
                    p->state = p->chunk_left ? S_CHUNK_DATA : S_END;
                }
                p->line_len = 0;
            } else if (p->line_len < sizeof p->line - 1) {
                p->line[p->line_len++] = s[i];
            }
            i++;
            break;
        case S_CHUNK_DATA: {
            size_t k = n - i < p->chunk_left ? n - i : p->chunk_left;
            body_bytes(p, s + i, k);
            i += k;
            if ((p->chunk_left -= k) == 0)
                p->state = S_CHUNK_CRLF;
            break;
        }
        case S_CHUNK_CRLF:
            if (s[i++] == '\n')
                p->state = S_CHUNK_SIZE;
            break;
        case S_BODY:
            body_bytes(p, s + i, n - i);
            i = n;
            break;
        }
    }
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static void one_request(const worker *w, int seed, result *r, parser *p)
{
    memset(r, 0, sizeof *r);
    r->first = -1;
    r->start = now();
    char body[512], req[1024];
    int bl = snprintf(body, sizeof body,
                      "{\"prompt\": \"" PROMPT "\", \"max_tokens\": %d, \"temperature\": 0.8, \"seed\": %d, "
                      "\"stream\": true}",
                      w->max_tokens, seed);
    int rl = snprintf(req, sizeof req,
                      "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                      bl, body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = READ_TIMEOUT_S};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        connect(fd, (const struct sockaddr *)&g_addr, sizeof g_addr) < 0 || write_all(fd, req, (size_t)rl) < 0) {
        r->io_error = 1;
        if (fd >= 0)
            close(fd);
        r->end = now();
        return;
    }
    memset(p, 0, offsetof(parser, line));
    p->line_len = 0;
    p->line_overflow = 0;
    p->r = r;
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r->io_error = 1;
            break;
        }
        if (n == 0)
            break;
        feed(p, buf, (size_t)n);
        if (p->state == S_END)
            break;
    }
    if (p->state == S_BODY && p->line_len) /* a last line without '\n' */
        sse_line(p, p->line, p->line_len);
    close(fd);
    r->end = now();
}

static void *run(void *arg)
{
    worker *w = arg;
    parser *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    for (int k = 0;; k++) {
        if (w->deadline > 0 ? now() >= w->deadline : k >= w->rounds)
            break;
        if (w->n_res == w->cap_res) {
            int cap = w->cap_res ? 2 * w->cap_res : 16;
            result *grown = realloc(w->res, sizeof *grown * (size_t)cap);
            if (!grown)
                break;
            w->res = grown;
            w->cap_res = cap;
        }
        one_request(w, w->index + k * w->n_streams, &w->res[w->n_res], p);
        w->n_res++;
    }
    free(p);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(double *v, int n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int k = (int)(q * (n - 1) + 0.5);
    return v[k];
}

static int usage(void)
{
    fprintf(stderr, "usage: http_streams [-d SECONDS | -r ROUNDS] [-t MAX_TOKENS] [-h HOST] PORT N\n");
    return 2;
}

int main(int argc, char **argv)
{
    double seconds = 0;
    int rounds = 2, max_tokens = 256;
    const char *host = "127.0.0.1";
    int opt;
    while ((opt = getopt(argc, argv, "d:r:t:h:")) != -1) {
        switch (opt) {
        case 'd': seconds = atof(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 't': max_tokens = atoi(optarg); break;
        case 'h': host = optarg; break;
        default: return usage();
        }
    }
    if (argc - optind != 2)
        return usage();
    int port = atoi(argv[optind]), n = atoi(argv[optind + 1]);
    if (port <= 0 || port > 65535 || n <= 0 || n > 4096 || rounds <= 0 || max_tokens < 0 || seconds < 0)
        return usage();
    g_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1)
        return usage();

    worker *ws = calloc((size_t)n, sizeof *ws);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!ws || !th)
        return 1;
    g_t0 = 0;
    g_t0 = now();
    for (int i = 0; i < n; i++) {
        ws[i] = (worker){.index = i, .n_streams = n, .max_tokens = max_tokens, .rounds = rounds,
                         .deadline = seconds};
        if (pthread_create(&th[i], NULL, run, &ws[i]) != 0) {
            fprintf(stderr, "http_streams: cannot start thread %d\n", i);
            return 1;
        }
    }
    int total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += ws[i].n_res;
    }
    double wall = now();

    double *ttft = malloc(sizeof(double) * (size_t)(total + 1));
    double *rate = malloc(sizeof(double) * (size_t)(total + 1));
    long tokens = 0;
    int n_ttft = 0, n_rate = 0, bad = 0, io = 0, status = 0, events = 0, undone = 0, shortn = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < ws[i].n_res; k++) {
            const result *r = &ws[i].res[k];
            tokens += r->tokens;
            if (r->first >= 0)
                ttft[n_ttft++] = r->first - r->start;
            if (r->end > r->start && r->tokens)
                rate[n_rate++] = r->tokens / (r->end - r->start);
            int wrong = 0;
            if (r->io_error)
                io++, wrong = 1;
            if (r->status != 200)
                status++, wrong = 1;
            if (r->error_event)
                events++, wrong = 1;
            if (!r->done)
                undone++, wrong = 1;
            if (r->tokens < max_tokens)
                shortn++, wrong = 1;
            bad += wrong;
        }
    double agg = wall > 0 ? tokens / wall : 0;
    double per = quantile(rate, n_rate, 0.5);
    double t50 = quantile(ttft, n_ttft, 0.5) * 1e3, t90 = quantile(ttft, n_ttft, 0.9) * 1e3;
    printf("streams %d: %d requests, %ld tokens in %.2f s = %.0f tokens/s aggregate, %.0f tokens/s per stream "
           "(median); first token p50 %.1f ms, p90 %.1f ms; errors %d (io %d, status %d, error events %d, "
           "no [DONE] %d, short %d)\n",
           n, total, tokens, wall, agg, per, t50, t90, bad, io, status, events, undone, shortn);
    printf("RESULT streams=%d requests=%d tokens=%ld wall_s=%.3f agg_tps=%.1f stream_tps=%.1f ttft_p50_ms=%.2f "
           "ttft_p90_ms=%.2f errors=%d\n",
           n, total, tokens, wall, agg, per, t50, t90, bad);
    for (int i = 0; i < n; i++)
        free(ws[i].res);
    free(ttft);
    free(rate);
    free(ws);
    free(th);
    return bad ? 1 : 0;
}
