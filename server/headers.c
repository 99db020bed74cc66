/* headers.c -- see headers.h. */
#define _POSIX_C_SOURCE 200809L
#include "headers.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "rng.h"

void hdr_ids_init(hdr_ids *ids)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ids->base = rng_hash((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid());
    atomic_init(&ids->next, 0);
}

uint64_t hdr_ids_next(hdr_ids *ids)
{
    return rng_hash(ids->base ^ (uint64_t)clock_now_ns() ^ atomic_fetch_add(&ids->next, 1));
}

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

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

static void random_hex(hdr_ids *ids, char *out, size_t digits)
{
    for (size_t i = 0; i < digits; i += 16) {
        char chunk[17];
        snprintf(chunk, sizeof chunk, "%016llx", (unsigned long long)hdr_ids_next(ids));
        memcpy(out + i, chunk, digits - i < 16 ? digits - i : 16);
    }
    out[digits] = '\0';
}

void hdr_identify(hdr_ids *ids, const char *request_id, const char *tp, req_identity *out)
{
    if (request_id && sane_request_id(request_id))
        snprintf(out->id, sizeof out->id, "%s", request_id);
    else
        snprintf(out->id, sizeof out->id, "%016llx",
                 (unsigned long long)rng_hash(ids->base + atomic_fetch_add(&ids->next, 1)));
    bool ok = tp && strlen(tp) == 55 && tp[2] == '-' && tp[35] == '-' && tp[52] == '-' && lower_hex(tp, 2) &&
              strncmp(tp, "ff", 2) != 0 && lower_hex(tp + 3, 32) && !all_zero(tp + 3, 32) &&
              lower_hex(tp + 36, 16) && !all_zero(tp + 36, 16) && lower_hex(tp + 53, 2);
    if (ok) {
        memcpy(out->trace_id, tp + 3, 32);
        out->trace_id[32] = '\0';
        memcpy(out->trace_flags, tp + 53, 2);
        out->trace_flags[2] = '\0';
    } else {
        random_hex(ids, out->trace_id, 32);
        strcpy(out->trace_flags, "00");
    }
    random_hex(ids, out->span_id, 16);
}

const char *hdr_allowed_origin(const srv_list *origins, const char *origin, char *buf, size_t len)
{
    if (!origin || origins->n == 0)
        return NULL;
    for (int i = 0; i < origins->n; i++) {
        if (strcmp(origins->v[i], "*") == 0)
            return "*";
        if (strcasecmp(origins->v[i], origin) == 0) {
            snprintf(buf, len, "%s", origin);
            return buf;
        }
    }
    return NULL;
}

void hdr_common(struct MHD_Response *resp, const req_identity *who, const char *allow_origin)
{
    char tp[64];
    snprintf(tp, sizeof tp, "00-%s-%s-%s", who->trace_id, who->span_id, who->trace_flags);
    MHD_add_response_header(resp, "X-Request-Id", who->id);
    MHD_add_response_header(resp, "traceparent", tp);
    if (allow_origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", allow_origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, traceparent, Retry-After");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Origin");
    }
}

void hdr_preflight(struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE, OPTIONS");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                            "Authorization, Content-Type, X-Api-Key, X-Request-Id, traceparent, Last-Event-ID");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
}
