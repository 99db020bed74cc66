/* probe.c -- a minimal HTTP/1.0 GET for the --health check. */
#define _POSIX_C_SOURCE 200809L
#include "probe.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"

static double now_s(void) { return (double)clock_now_ns() / 1e9; }

/* Waits for fd to be ready for events until the deadline; 0 when ready. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static int connect_by(const struct addrinfo *ai, double deadline)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0)
            return fd;
        errno = soerr ? soerr : ETIMEDOUT;
    } else if (errno == EINPROGRESS) {
        errno = ETIMEDOUT;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int probe_http(const char *host, long port, const char *path, double timeout_s, char *err, size_t errlen)
{
    /* A server listening on every interface is reached on loopback. */
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    double deadline = now_s() + timeout_s;
    char service[16];
    snprintf(service, sizeof service, "%ld", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        err_set(err, errlen, "cannot resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, why = 0;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = connect_by(ai, deadline);
        if (fd < 0)
            why = errno;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        err_set(err, errlen, "cannot connect to %s:%ld: %s", host, port, strerror(why));
        return -1;
    }

    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        err_set(err, errlen, "cannot send the request to %s:%ld", host, port);
        close(fd);
        return -1;
    }
    char buf[64];
    size_t got = 0;
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
        if (wait_fd(fd, POLLIN, deadline) < 0) {
            err_set(err, errlen, "no answer from %s:%ld within %g s", host, port, timeout_s);
            close(fd);
            return -1;
        }
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    int status;
    if (sscanf(buf, "HTTP/%*d.%*d %3d", &status) != 1) {
        err_set(err, errlen, "%s:%ld did not answer HTTP", host, port);
        return -1;
    }
    return status;
}
