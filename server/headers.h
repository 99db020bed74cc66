/* headers.h -- the header policy every answer follows: a request id (the
 * client's X-Request-Id when it is sane, else a new one), W3C trace context
 * (a valid traceparent's trace continues as a new span, else a new trace
 * begins), and CORS for the origins --cors-origin allows.
 */
#ifndef ATTNLM_HEADERS_H
#define ATTNLM_HEADERS_H

#include <microhttpd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Where new ids come from: a per-process base and a counter. */
typedef struct hdr_ids {
    uint64_t base;
    atomic_ulong next;
} hdr_ids;

/* Who a request is, as its answer and log line say. */
typedef struct req_identity {
    char id[72];
    char trace_id[33], span_id[17], trace_flags[3];
} req_identity;

/* A base for ids that differs between processes. */
void hdr_ids_init(hdr_ids *ids);
/* A new 64-bit number, different at every call. */
uint64_t hdr_ids_next(hdr_ids *ids);

/* The identity of a request from its X-Request-Id and traceparent headers (either may be NULL). */
void hdr_identify(hdr_ids *ids, const char *request_id, const char *traceparent, req_identity *out);
/* The Access-Control-Allow-Origin for a request's Origin (NULL: none), NULL if
 * that origin is not allowed; a named origin is copied into buf[len]. */
const char *hdr_allowed_origin(const srv_list *origins, const char *origin, char *buf, size_t len);
/* The headers every answer carries: request id, trace context, CORS (allow_origin may be NULL). */
void hdr_common(struct MHD_Response *resp, const req_identity *who, const char *allow_origin);
/* A CORS preflight's headers for an allowed origin. */
void hdr_preflight(struct MHD_Response *resp);

#endif
