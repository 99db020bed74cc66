/* http_streams.c -- N concurrent streaming generations against attnlm-server.
 *
 *   http_streams PORT N MAX_TOKENS ROUNDS
 *
 * Each of N threads sends ROUNDS requests to POST /v1/generate with
 * "stream": true, one after another, reads each stream to "data: [DONE]" and
 * counts token events.  Prints aggregate tokens/s over the wall time, the
 * median time to first token and the number of failed streams.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct client {
    int port, id, max_tokens, rounds;
    long tokens;
    int failures;
    double ttft[64];
    int n_ttft;
} client;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long count(const char *hay, size_t n, const char *needle)
{
    long c = 0;
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            c++;
    return c;
}

static void *run(void *arg)
{
    client *c = arg;
    for (int r = 0; r < c->rounds; r++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)c->port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        char body[256], req[512];
        int bl = snprintf(body, sizeof body,
                          "{\"prompt\":\"Call me Ishmael. \",\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,"
                          "\"stream\":true}",
                          c->max_tokens, c->id * 1000 + r);
        int rl = snprintf(req, sizeof req,
                          "POST /v1/generate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                          bl, body);
        double t0 = now();
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, req, (size_t)rl) != rl) {
            c->failures++;
            close(fd);
            continue;
        }
        size_t cap = 1 << 20, len = 0;
        char *buf = malloc(cap);
        ssize_t n;
        if (!buf) {
            c->failures++;
            close(fd);
            continue;
        }
        int first = 0;
        while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
            if (!first && count(buf + len, (size_t)n, "data: {\"token\"") > 0) {
                first = 1;
                if (c->n_ttft < 64)
                    c->ttft[c->n_ttft++] = now() - t0;
            }
            len += (size_t)n;
            if (cap - len < 65536) {
                char *grown = realloc(buf, cap * 2);
                if (!grown)
                    break;
                buf = grown;
                cap *= 2;
            }
        }
        close(fd);
        buf[len] = '\0';
        long tok = count(buf, len, "data: {\"token\"");
        if (!strstr(buf, "data: [DONE]") || !strstr(buf, " 200 "))
            c->failures++;
        c->tokens += tok;
        free(buf);
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: http_streams PORT N MAX_TOKENS ROUNDS\n");
        return 2;
    }
    int port = atoi(argv[1]), N = atoi(argv[2]), M = atoi(argv[3]), R = atoi(argv[4]);
    client *cs = calloc((size_t)N, sizeof *cs);
    pthread_t *th = calloc((size_t)N, sizeof *th);
    double t0 = now();
    for (int i = 0; i < N; i++) {
        cs[i] = (client){.port = port, .id = i, .max_tokens = M, .rounds = R};
        pthread_create(&th[i], NULL, run, &cs[i]);
    }
    long tokens = 0;
    int fails = 0, nt = 0;
    double *tt = malloc(sizeof(double) * (size_t)N * 64);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        tokens += cs[i].tokens;
        fails += cs[i].failures;
        for (int k = 0; k < cs[i].n_ttft; k++)
            tt[nt++] = cs[i].ttft[k];
    }
    double secs = now() - t0;
    qsort(tt, (size_t)nt, sizeof *tt, cmp);
    printf("streams %d: %ld tokens in %.2f s = %.0f tokens/s aggregate, %.0f per stream; "
           "first token median %.1f ms; failed streams %d\n",
           N, tokens, secs, tokens / secs, tokens / secs / N, nt ? tt[nt / 2] * 1e3 : 0.0, fails);
    free(tt);
    free(cs);
    free(th);
    return fails ? 1 : 0;
}
