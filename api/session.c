/* session.c -- the session state format and the bounded in-memory store
 * (session.h).
 */
#define _GNU_SOURCE /* getrandom */
#include "session.h"
#include "err.h"
#include "session_redis.h"
#include "clock.h"
#include "sha256.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

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

/* ---- the store --------------------------------------------------------------- */

typedef struct entry {
    bool used, busy;
    char id[SESSION_ID_LEN + 1];
    char owner[65];
    char model[API_MODEL_NAME];
    unsigned char *state;
    size_t len;
    long long created, last_used; /* Unix seconds, for people */
    int64_t touched_ns;           /* monotonic, for expiry */
} entry;

struct session_store {
    redis_store *redis; /* the store is in Redis; else in this process, below */
    pthread_mutex_t lock;
    session_limits lim;
    entry *e; /* [lim.max_sessions] */
    int n;
    size_t bytes;
};

session_store *session_store_new(const session_limits *lim)
{
    session_store *s = calloc(1, sizeof *s);
    if (!s || lim->max_sessions < 1 || !(s->e = calloc((size_t)lim->max_sessions, sizeof *s->e))) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->lim = *lim;
    return s;
}

void session_store_free(session_store *s)
{
    if (!s)
        return;
    redis_store_free(s->redis);
    for (int i = 0; s->e && i < s->lim.max_sessions; i++)
        free(s->e[i].state);
    free(s->e);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void mem_usage(session_store *s, int *sessions, size_t *bytes)
{
    pthread_mutex_lock(&s->lock);
    *sessions = s->n;
    *bytes = s->bytes;
    pthread_mutex_unlock(&s->lock);
}

static void drop(session_store *s, entry *x)
{
    free(x->state);
    s->bytes -= x->len;
    s->n--;
    memset(x, 0, sizeof *x);
}

/* Drops the sessions idle for longer than the time to live (not those checked out). */
static void expire(session_store *s, int64_t now)
{
    for (int i = 0; i < s->lim.max_sessions; i++) {
        entry *x = &s->e[i];
        if (x->used && !x->busy && clock_seconds(x->touched_ns, now) > s->lim.ttl)
            drop(s, x);
    }
}

static void describe(const session_store *s, const entry *x, int64_t now, session_info *info)
{
    if (!info)
        return;
    snprintf(info->id, sizeof info->id, "%s", x->id);
    snprintf(info->model, sizeof info->model, "%s", x->model);
    info->created = x->created;
    info->last_used = x->last_used;
    info->expires_in = s->lim.ttl - clock_seconds(x->touched_ns, now);
    info->bytes = x->len;
}

/* Session id of owner, or NULL (404 in e); an expired one is gone already. */
static entry *find(session_store *s, const char *id, const char *owner, api_error *e)
{
    for (int i = 0; id && i < s->lim.max_sessions; i++) {
        entry *x = &s->e[i];
        /* Another owner's session answers as one that does not exist. */
        if (x->used && strcmp(x->id, id) == 0 && strcmp(x->owner, owner) == 0)
            return x;
    }
    api_error_set(e, 404, "session", "no session %.64s (it may have expired after %g s unused, or been deleted)",
                  id ? id : "", s->lim.ttl);
    return NULL;
}

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

static int mem_put(session_store *s, const char *owner, const char *model_name, unsigned char *state, size_t len,
                session_info *info, api_error *e)
{
    int64_t now = clock_now_ns();
    pthread_mutex_lock(&s->lock);
    expire(s, now);
    int rc = -1;
    if (len > s->lim.max_bytes) {
        api_error_set(e, 503, NULL, "a state of this model (%zu bytes) is larger than the whole session store (%zu "
                      "bytes, --session-memory)", len, s->lim.max_bytes);
        goto done;
    }
    if (s->n >= s->lim.max_sessions || len > s->lim.max_bytes - s->bytes) {
        api_error_set(e, 503, NULL,
                      "the session store is full (%d sessions, %zu of %zu bytes); delete sessions no longer needed, "
                      "or wait for idle ones to expire (after %g s)",
                      s->n, s->bytes, s->lim.max_bytes, s->lim.ttl);
        goto done;
    }
    entry *x = NULL;
    for (int i = 0; !x; i++)
        if (!s->e[i].used)
            x = &s->e[i];
    if (session_new_id(x->id) < 0) {
        api_error_set(e, 500, NULL, "no random bytes for a session id");
        goto done;
    }
    x->used = true;
    snprintf(x->owner, sizeof x->owner, "%s", owner ? owner : "");
    snprintf(x->model, sizeof x->model, "%s", model_name);
    x->state = state;
    x->len = len;
    x->created = x->last_used = (long long)time(NULL);
    x->touched_ns = now;
    s->n++;
    s->bytes += len;
    describe(s, x, now, info);
    rc = 0;
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int mem_set(session_store *s, const char *id, const char *owner, const char *model_name,
                   const unsigned char *state, size_t len, api_error *e)
{
    int64_t now = clock_now_ns();
    pthread_mutex_lock(&s->lock);
    expire(s, now);
    entry *x = NULL, *free_slot = NULL;
    for (int i = 0; i < s->lim.max_sessions && !x; i++) {
        entry *y = &s->e[i];
        if (y->used && strcmp(y->id, id) == 0 && strcmp(y->owner, owner) == 0)
            x = y;
        else if (!y->used && !free_slot)
            free_slot = y;
    }
    size_t held = s->bytes - (x ? x->len : 0);
    int rc = -1;
    if ((!x && !free_slot) || len > s->lim.max_bytes - held) {
        api_error_set(e, 503, NULL, "the store is full (%d entries, %zu of %zu bytes)", s->n, s->bytes,
                      s->lim.max_bytes);
        goto done;
    }
    /* A checkpoint replaces one of the same size: its buffer is reused, warm. */
    unsigned char *buf = x && x->len == len ? x->state : malloc(len ? len : 1);
    if (!buf) {
        api_error_set(e, 500, NULL, "out of memory");
        goto done;
    }
    memcpy(buf, state, len);
    if (x) {
        if (buf != x->state)
            free(x->state);
        s->bytes -= x->len;
    } else {
        x = free_slot;
        x->used = true;
        s->n++;
        snprintf(x->id, sizeof x->id, "%s", id);
        snprintf(x->owner, sizeof x->owner, "%s", owner);
        x->created = (long long)time(NULL);
    }
    snprintf(x->model, sizeof x->model, "%s", model_name);
    x->state = buf;
    x->len = len;
    x->last_used = (long long)time(NULL);
    x->touched_ns = now;
    s->bytes += len;
    rc = 0;
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int mem_get(session_store *s, const char *id, const char *owner, bool checkout, unsigned char **state,
                size_t *len, session_info *info, api_error *e)
{
    int64_t now = clock_now_ns();
    pthread_mutex_lock(&s->lock);
    expire(s, now);
    int rc = -1;
    entry *x = find(s, id, owner ? owner : "", e);
    if (!x)
        goto done;
    if (x->busy) {
        api_error_set(e, 409, "session", "session %s is busy with another request; retry when it has finished", id);
        goto done;
    }
    if (state) {
        if (!(*state = malloc(x->len))) {
            api_error_set(e, 500, NULL, "out of memory");
            goto done;
        }
        memcpy(*state, x->state, x->len);
        *len = x->len;
    }
    x->busy = checkout;
    x->last_used = (long long)time(NULL);
    x->touched_ns = now;
    describe(s, x, now, info);
    rc = 0;
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void mem_return(session_store *s, const char *id, unsigned char *state, size_t len)
{
    pthread_mutex_lock(&s->lock);
    entry *x = NULL;
    for (int i = 0; i < s->lim.max_sessions && !x; i++)
        if (s->e[i].used && s->e[i].busy && strcmp(s->e[i].id, id) == 0)
            x = &s->e[i];
    if (x && state) {
        /* Same model, same size: the budget holds. */
        free(x->state);
        s->bytes = s->bytes - x->len + len;
        x->state = state;
        x->len = len;
        state = NULL;
    }
    if (x) {
        x->busy = false;
        x->last_used = (long long)time(NULL);
        x->touched_ns = clock_now_ns();
    }
    pthread_mutex_unlock(&s->lock);
    free(state);
}

static int mem_delete(session_store *s, const char *id, const char *owner, session_info *info, api_error *e)
{
    int64_t now = clock_now_ns();
    pthread_mutex_lock(&s->lock);
    expire(s, now);
    int rc = -1;
    entry *x = find(s, id, owner ? owner : "", e);
    if (x && x->busy)
        api_error_set(e, 409, "session", "session %s is busy with another request; retry when it has finished", id);
    else if (x) {
        describe(s, x, now, info);
        drop(s, x);
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- the store's operations, in memory or in Redis ----------------------------- */

session_store *session_store_redis(const char *url, const char *prefix, const session_limits *lim, char *err,
                                   size_t errlen)
{
    session_store *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->lim = *lim;
    if (!(s->redis = redis_store_new(url, prefix, lim->ttl, err, errlen))) {
        session_store_free(s);
        return NULL;
    }
    return s;
}

bool session_store_counts(const session_store *s) { return !s->redis; }

void session_store_usage(session_store *s, int *sessions, size_t *bytes)
{
    if (s->redis) {
        *sessions = 0;
        *bytes = 0;
        return;
    }
    mem_usage(s, sessions, bytes);
}

int session_put(session_store *s, const char *owner, const char *model_name, unsigned char *state, size_t len,
                session_info *info, api_error *e)
{
    if (s->redis)
        return redis_put(s->redis, owner ? owner : "", model_name, state, len, info, e);
    return mem_put(s, owner, model_name, state, len, info, e);
}

int session_set(session_store *s, const char *id, const char *owner, const char *model_name,
                const unsigned char *state, size_t len, api_error *e)
{
    if (s->redis)
        return redis_set(s->redis, id, owner ? owner : "", model_name, state, len, e);
    return mem_set(s, id, owner, model_name, state, len, e);
}

int session_get(session_store *s, const char *id, const char *owner, bool checkout, unsigned char **state,
                size_t *len, session_info *info, api_error *e)
{
    if (s->redis)
        return redis_get(s->redis, id, owner ? owner : "", checkout, state, len, info, e);
    return mem_get(s, id, owner, checkout, state, len, info, e);
}

void session_return(session_store *s, const char *id, const char *owner, unsigned char *state, size_t len)
{
    if (s->redis)
        redis_return(s->redis, id, owner ? owner : "", state, len);
    else
        mem_return(s, id, state, len);
}

int session_delete(session_store *s, const char *id, const char *owner, session_info *info, api_error *e)
{
    if (s->redis)
        return redis_delete(s->redis, id, owner ? owner : "", info, e);
    return mem_delete(s, id, owner, info, e);
}
