/* session.c -- the session state format, its signature, and session ids
 * (session.h); the store is session_store.c.
 */
#define _GNU_SOURCE /* getrandom */
#include "session.h"
#include "sha256.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ---- the state format -------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Floats as little-endian binary32, whatever the host's byte order (a copy
 * on a little-endian host, which is every host this builds for today). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static void put_floats(unsigned char *p, const float *x, size_t n) { memcpy(p, x, n * sizeof *x); }
static void get_floats(float *x, const unsigned char *p, size_t n) { memcpy(x, p, n * sizeof *x); }
#else
static void put_floats(unsigned char *p, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        put_u32(p + 4 * i, u);
    }
}

static void get_floats(float *x, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = get_u32(p + 4 * i);
        memcpy(&x[i], &u, 4);
    }
}
#endif

size_t session_state_bytes(const model *m)
{
    return SESSION_HEADER + 4 * ((size_t)model_get_config(m)->vocab + model_seq_floats(m));
}

void session_state_encode(const model *m, const model_seq *seq, const float *next, unsigned char *out)
{
    const size_t V = (size_t)model_get_config(m)->vocab, F = model_seq_floats(m);
    memset(out, 0, SESSION_HEADER);
    memcpy(out, SESSION_MAGIC, 8);
    put_u32(out + 8, SESSION_VERSION);
    put_u32(out + 12, (uint32_t)model_get_precision(m));
    memcpy(out + 16, model_sha256(m), 64);
    put_u32(out + 80, (uint32_t)V);
    put_u32(out + 84, (uint32_t)F);
    int64_t pos = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    model_seq_save(seq, &pos, out + SESSION_HEADER + 4 * V); /* the format's byte order: no copy between */
#else
    float *state = malloc(F * sizeof *state);
    if (state) { /* else the caller's size check has already failed; keep the bytes defined */
        model_seq_save(seq, &pos, state);
        put_floats(out + SESSION_HEADER + 4 * V, state, F);
    } else {
        memset(out + SESSION_HEADER + 4 * V, 0, 4 * F);
    }
    free(state);
#endif
    put_u64(out + 88, (uint64_t)pos);
    put_floats(out + SESSION_HEADER, next, V);
}

const char *session_state_model(const unsigned char *in, size_t len)
{
    return len >= SESSION_HEADER && memcmp(in, SESSION_MAGIC, 8) == 0 ? (const char *)in + 16 : NULL;
}

int64_t session_state_position(const unsigned char *in) { return (int64_t)get_u64(in + 88); }

int session_state_decode(const model *m, const unsigned char *in, size_t len, model_seq *seq, float *next,
                         api_error *e)
{
    const size_t V = (size_t)model_get_config(m)->vocab, F = model_seq_floats(m);
    if (len < SESSION_HEADER || memcmp(in, SESSION_MAGIC, 8) != 0) {
        api_error_set(e, 400, "state", "not a session state (it begins with the magic \"%s\")", SESSION_MAGIC);
        return -1;
    }
    uint32_t version = get_u32(in + 8), precision = get_u32(in + 12);
    if (version != SESSION_VERSION) {
        api_error_set(e, 400, "state", "state format version %u; this server reads version %d", version,
                      SESSION_VERSION);
        return -1;
    }
    if (memcmp(in + 16, model_sha256(m), 64) != 0) {
        api_error_set(e, 400, "state", "the state belongs to another model (sha256 %.64s, served: %.64s)",
                      (const char *)in + 16, model_sha256(m));
        return -1;
    }
    if (precision != (uint32_t)model_get_precision(m)) {
        api_error_set(e, 400, "state", "the state was made with %s weights; this server runs the model in %s",
                      precision < MODEL_PRECISION_COUNT ? model_precision_name((model_precision)precision) : "unknown",
                      model_precision_name(model_get_precision(m)));
        return -1;
    }
    if (get_u32(in + 80) != V || get_u32(in + 84) != F) {
        api_error_set(e, 400, "state", "the state's sizes (vocab %u, %u floats) are not the model's (%zu, %zu)",
                      get_u32(in + 80), get_u32(in + 84), V, F);
        return -1;
    }
    if (len != session_state_bytes(m)) {
        api_error_set(e, 400, "state", "the state is %zu bytes; one of this model is %zu", len,
                      session_state_bytes(m));
        return -1;
    }
    const uint64_t pos = get_u64(in + 88);
    if (pos < 1 || pos > (uint64_t)INT64_MAX / 2 || get_u64(in + 96) != 0) {
        api_error_set(e, 400, "state", "the state's position (%llu) or reserved field is out of range",
                      (unsigned long long)pos);
        return -1;
    }
    float *state = malloc(F * sizeof *state);
    if (!state) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    get_floats(next, in + SESSION_HEADER, V);
    get_floats(state, in + SESSION_HEADER + 4 * V, F);
    int rc = 0;
    for (size_t i = 0; i < V && rc == 0; i++)
        if (isnan(next[i]) || next[i] > 0.0f) { /* log-probabilities: <= 0, -inf allowed */
            api_error_set(e, 400, "state", "the state's next-token log-probability %zu is not one", i);
            rc = -1;
        }
    char err[ATTNLM_ERR_LEN];
    if (rc == 0 && model_seq_restore(seq, (int64_t)pos, state, err, sizeof err) < 0) {
        api_error_set(e, 400, "state", "%s", err);
        rc = -1;
    }
    free(state);
    return rc;
}

void session_sign(const api_ctx *ctx, const unsigned char *in, size_t len, unsigned char *out)
{
    const void *parts[1] = {in};
    hmac_sha256(ctx->session_key, sizeof ctx->session_key, parts, &len, 1, out);
}

bool session_signed(const api_ctx *ctx, const unsigned char *in, size_t len)
{
    if (len < SESSION_MAC)
        return false;
    unsigned char mac[SESSION_MAC];
    session_sign(ctx, in, len - SESSION_MAC, mac);
    unsigned diff = 0;
    for (int i = 0; i < SESSION_MAC; i++)
        diff |= mac[i] ^ in[len - SESSION_MAC + (size_t)i];
    return diff == 0;
}

/* ---- ids ------------------------------------------------------------------------ */

int session_new_id(char *id)
{
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return -1;
    int n = snprintf(id, SESSION_ID_LEN + 1, "sess_");
    for (int i = 0; i < 16; i++)
        n += snprintf(id + n, (size_t)(SESSION_ID_LEN + 1 - n), "%02x", r[i]);
    return 0;
}
