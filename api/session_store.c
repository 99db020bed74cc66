/* session_store.c -- the session store (session.h): sessions held in this
 * process's memory, bounded, or in Redis (session_redis.c) when the server
 * names it.
 */
#define _POSIX_C_SOURCE 200809L
#include "session.h"
#include "clock.h"
#include "err.h"
#include "session_redis.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    info->position = x->len >= SESSION_HEADER ? session_state_position(x->state) : 0;
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
