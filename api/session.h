/* session.h -- sessions: a text's model state kept between requests.
 *
 * A session is the state of one served model after a text: its recurrent
 * state and window, its position, and the log-probabilities of the next
 * token.  The store keeps it as bytes in the state format below, the same
 * bytes GET /v1/sessions/{id}/state exports (with a signature) and
 * POST /v1/sessions/import takes back, so a session can move to any server
 * that serves the same model file at the same precision.
 *
 * State format, version 1 (integers little-endian, floats IEEE 754 binary32
 * little-endian):
 *     offset  size  field
 *          0     8  magic "ATLMSESS"
 *          8     4  format version, 1
 *         12     4  precision of the weights: 0 f32, 1 bf16, 2 int8
 *         16    64  sha256 of the model file, lower-case hex
 *         80     4  vocab size V
 *         84     4  F, floats of the model's state
 *         88     8  position: tokens consumed, BOS included (>= 1)
 *         96     8  reserved, zero
 *        104    4V  log-probabilities of the next token
 *   104 + 4V    4F  the state (recurrent state, then the window)
 * An exported state is followed by 32 bytes: HMAC-SHA-256 of everything
 * before them under the server's session secret.
 *
 * The store is bounded: at most a number of sessions and of bytes, and a
 * session unused for the time to live is gone.  It is safe to share between
 * threads.  A session being worked on (an append) is checked out: a second
 * request on it meanwhile gets 409.
 */
#ifndef ATTNLM_API_SESSION_H
#define ATTNLM_API_SESSION_H

#include "api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SESSION_MAGIC "ATLMSESS"
#define SESSION_VERSION 1
#define SESSION_HEADER 104
#define SESSION_MAC 32
#define SESSION_ID_LEN 37 /* "sess_" and 32 hex digits */

/* ---- the state format -------------------------------------------------------- */

/* Bytes of a state of model m, without the signature. */
size_t session_state_bytes(const model *m);
/* Writes the state of seq, whose next-token log-probabilities are next[V],
 * into out[session_state_bytes(m)]. */
void session_state_encode(const model *m, const model_seq *seq, const float *next, unsigned char *out);
/* Reads a state of m from in[len] into seq (fresh) and next[V]; -1 with e (400)
 * naming what does not fit: magic, version, model, precision, sizes, position,
 * a non-finite number. */
int session_state_decode(const model *m, const unsigned char *in, size_t len, model_seq *seq, float *next,
                         api_error *e);
/* The model sha256 (hex, 64 bytes, not terminated) a state claims, or NULL if
 * in[len] is too short or not a state. */
const char *session_state_model(const unsigned char *in, size_t len);
/* The position recorded in a state (valid state bytes). */
int64_t session_state_position(const unsigned char *in);
/* out[32] = HMAC-SHA-256 of in[len] under the secret. */
void session_sign(const api_ctx *ctx, const unsigned char *in, size_t len, unsigned char *out);
/* Whether in[len] ends with the signature of what precedes it (constant time). */
bool session_signed(const api_ctx *ctx, const unsigned char *in, size_t len);

/* ---- the store --------------------------------------------------------------- */

/* A new id, "sess_" and 32 hex digits from the kernel's random source; -1 if it has none. */
int session_new_id(char *id);

/* What the store knows of a session besides its state. */
typedef struct session_info {
    char id[SESSION_ID_LEN + 1];
    char model[API_MODEL_NAME];
    long long created, last_used; /* Unix seconds */
    double expires_in;            /* seconds left unused before it goes */
    size_t bytes;
    int64_t position;             /* tokens the state has read, BOS included */
} session_info;

/* Stores state[len] (taken on success) as a new session of owner on model;
 * info receives its id and times.  -1 with e: 503 when the store is full. */
int session_put(session_store *s, const char *owner, const char *model_name, unsigned char *state, size_t len,
                session_info *info, api_error *e);
/* Stores a copy of state[len] under the given id for owner, replacing what
 * that id held.  -1 with e (503) when it does not fit. */
int session_set(session_store *s, const char *id, const char *owner, const char *model_name,
                const unsigned char *state, size_t len, api_error *e);
/* A copy of session id's state (*state, caller frees) and its information;
 * with checkout the session stays busy until session_return.  -1 with e: 404
 * (none of that id for owner, or expired), 409 (busy), 500. */
int session_get(session_store *s, const char *id, const char *owner, bool checkout, unsigned char **state,
                size_t *len, session_info *info, api_error *e);
/* Ends a checkout: state[len] (taken; NULL keeps the old one) becomes the session's. */
void session_return(session_store *s, const char *id, const char *owner, unsigned char *state, size_t len);
/* Removes session id of owner.  -1 with e: 404, 409 (busy). */
int session_delete(session_store *s, const char *id, const char *owner, session_info *info, api_error *e);

#endif
