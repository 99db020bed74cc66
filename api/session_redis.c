/* session_redis.c -- the session store in Redis (session_redis.h). */
#define _POSIX_C_SOURCE 200809L
#include "session_redis.h"
#include "clock.h"
#include "err.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IO_TIMEOUT_MS 500    /* connect, and each command */
#define RETRY_NS 1000000000LL /* after a failure, answer 503 this long before connecting again */
#define LOCK_MS 60000        /* a checkout's lock outlives any append; it expires if its holder died */
#define RECORD_MAGIC "ATLMREC1"

/* What a value holds before the state. */
typedef struct record_head {
    char magic[8];
    int64_t created;
    char model[API_MODEL_NAME];
} record_head;

struct redis_store {
    pthread_mutex_t lock;
    char host[256];
    int port, db;
    char prefix[64];
    long long ttl;  /* whole seconds */
    redisContext *c;
    int64_t retry_at; /* monotonic ns: no connecting before it */
    char why[160];    /* the last failure */
};

redis_store *redis_store_new(const char *url, const char *prefix, double ttl, char *err, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        err_set(err, errlen, "--session-store must be memory or redis://HOST:PORT[/DB], not \"%.100s\"", url);
        return NULL;
    }
    p += 8;
    size_t hl = strcspn(p, ":/");
    char *end = NULL;
    long port = 6379, db = 0;
    if (p[hl] == ':')
        port = strtol(p + hl + 1, &end, 10);
    else
        end = (char *)p + hl;
    if (end && *end == '/')
        db = strtol(end + 1, &end, 10);
    if (hl == 0 || hl >= 256 || !end || *end || port < 1 || port > 65535 || db < 0 || db > 1000000) {
        err_set(err, errlen, "--session-store must be redis://HOST:PORT[/DB], not \"%.100s\"", url);
        return NULL;
    }
    redis_store *r = calloc(1, sizeof *r);
    if (!r) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    memcpy(r->host, p, hl);
    r->port = (int)port;
    r->db = (int)db;
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    r->ttl = ttl < 1 ? 1 : (long long)ttl;
    return r;
}

void redis_store_free(redis_store *r)
{
    if (!r)
        return;
    if (r->c)
        redisFree(r->c);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void unavailable(redis_store *r, api_error *e)
{
    api_error_set(e, 503, NULL, "the session store (Redis at %s:%d) is unavailable: %s", r->host, r->port, r->why);
}

/* Drops the connection after a failure; the next second answers 503 without trying. */
static void broken(redis_store *r, const char *why)
{
    snprintf(r->why, sizeof r->why, "%s", why && *why ? why : "no answer");
    if (r->c)
        redisFree(r->c);
    r->c = NULL;
    r->retry_at = clock_now_ns() + RETRY_NS;
}

/* One command (r locked); NULL with e (503) if Redis could not be asked or
 * answered an error.  The caller frees the reply. */
static redisReply *command(redis_store *r, api_error *e, const char *fmt, ...)
{
    if (!r->c) {
        if (clock_now_ns() < r->retry_at) {
            unavailable(r, e);
            return NULL;
        }
        const struct timeval tv = {0, IO_TIMEOUT_MS * 1000};
        r->c = redisConnectWithTimeout(r->host, r->port, tv);
        if (!r->c || r->c->err || redisSetTimeout(r->c, tv) != REDIS_OK) {
            broken(r, r->c ? r->c->errstr : "out of memory");
            unavailable(r, e);
            return NULL;
        }
        if (r->db) {
            redisReply *sel = redisCommand(r->c, "SELECT %d", r->db);
            bool ok = sel && sel->type != REDIS_REPLY_ERROR;
            if (!ok)
                broken(r, sel ? sel->str : r->c->errstr);
            freeReplyObject(sel);
            if (!ok) {
                unavailable(r, e);
                return NULL;
            }
        }
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r->c, fmt, ap);
    va_end(ap);
    if (!rep) {
        broken(r, r->c->errstr);
        unavailable(r, e);
        return NULL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        /* Redis answered, and refused: its memory limit (OOM), or a misconfiguration. */
        api_error_set(e, 503, NULL, "the session store (Redis at %s:%d) refused: %.120s", r->host, r->port, rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

static void key_of(const redis_store *r, char *out, size_t n, const char *kind, const char *owner, const char *id)
{
    snprintf(out, n, "%s:%s%s:%s", r->prefix, kind, *owner ? owner : "-", id);
}

static unsigned char *record(const char *model_name, int64_t created, const unsigned char *state, size_t len)
{
    unsigned char *v = malloc(sizeof(record_head) + len);
    if (!v)
        return NULL;
    record_head h = {.created = created};
    memcpy(h.magic, RECORD_MAGIC, 8);
    snprintf(h.model, sizeof h.model, "%s", model_name);
    memcpy(v, &h, sizeof h);
    memcpy(v + sizeof h, state, len);
    return v;
}

static void describe(const redis_store *r, const char *id, const record_head *h, size_t len, int64_t position,
                     session_info *info)
{
    if (!info)
        return;
    snprintf(info->id, sizeof info->id, "%s", id);
    snprintf(info->model, sizeof info->model, "%.*s", (int)sizeof h->model - 1, h->model);
    info->created = h->created;
    info->last_used = (long long)time(NULL);
    info->expires_in = (double)r->ttl;
    info->bytes = len;
    info->position = position;
}

/* SET key record [NX|XX] EX ttl; 1 stored, 0 not (the NX/XX condition), -1 with e. */
static int store(redis_store *r, const char *key, const char *model_name, int64_t created, const unsigned char *state,
                 size_t len, const char *cond, api_error *e)
{
    unsigned char *v = record(model_name, created, state, len);
    if (!v) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    redisReply *rep = *cond ? command(r, e, "SET %s %b EX %lld %s", key, v, sizeof(record_head) + len, r->ttl, cond)
                            : command(r, e, "SET %s %b EX %lld", key, v, sizeof(record_head) + len, r->ttl);
    free(v);
    if (!rep)
        return -1;
    int stored = rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    return stored;
}

/* Whether session id is checked out (its lock key held): true with e (409),
 * or when Redis could not say (e, 503). */
static bool checked_out(redis_store *r, const char *lock, const char *id, api_error *e)
{
    redisReply *rep = command(r, e, "EXISTS %s", lock);
    if (!rep)
        return true;
    bool busy = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    if (busy)
        api_error_set(e, 409, "session", "session %s is busy with another request; retry when it has finished", id);
    return busy;
}

int redis_put(redis_store *r, const char *owner, const char *model_name, unsigned char *state, size_t len,
              session_info *info, api_error *e)
{
    char id[SESSION_ID_LEN + 1], key[256];
    if (session_new_id(id) < 0) {
        api_error_set(e, 500, NULL, "no random bytes for a session id");
        return -1;
    }
    key_of(r, key, sizeof key, "", owner, id);
    const int64_t created = (int64_t)time(NULL);
    pthread_mutex_lock(&r->lock);
    int stored = store(r, key, model_name, created, state, len, "NX", e);
    pthread_mutex_unlock(&r->lock);
    if (stored == 0)
        api_error_set(e, 500, NULL, "a new session id was taken already");
    if (stored <= 0)
        return -1;
    record_head h = {.created = created};
    snprintf(h.model, sizeof h.model, "%s", model_name);
    describe(r, id, &h, len, len >= SESSION_HEADER ? session_state_position(state) : 0, info);
    free(state);
    return 0;
}

int redis_set(redis_store *r, const char *id, const char *owner, const char *model_name,
              const unsigned char *state, size_t len, api_error *e)
{
    char key[256];
    key_of(r, key, sizeof key, "", owner, id);
    pthread_mutex_lock(&r->lock);
    int stored = store(r, key, model_name, (int64_t)time(NULL), state, len, "", e);
    pthread_mutex_unlock(&r->lock);
    return stored > 0 ? 0 : -1;
}

static void not_found(api_error *e, const char *id, long long ttl)
{
    api_error_set(e, 404, "session", "no session %.64s (it may have expired after %lld s unused, or been deleted)",
                  id, ttl);
}

int redis_get(redis_store *r, const char *id, const char *owner, bool checkout, unsigned char **state, size_t *len,
              session_info *info, api_error *e)
{
    char key[256], lock[256];
    key_of(r, key, sizeof key, "", owner, id);
    key_of(r, lock, sizeof lock, "lock:", owner, id);
    int rc = -1;
    pthread_mutex_lock(&r->lock);
    redisReply *rep = NULL;
    if (checked_out(r, lock, id, e))
        goto done;
    /* Read and renew the time to live in one step. */
    if (!(rep = command(r, e, "GETEX %s EX %lld", key, r->ttl)))
        goto done;
    record_head h;
    if (rep->type != REDIS_REPLY_STRING || rep->len < sizeof h) {
        freeReplyObject(rep);
        not_found(e, id, r->ttl);
        goto done;
    }
    memcpy(&h, rep->str, sizeof h);
    const size_t n = rep->len - sizeof h;
    const int64_t position =
        n >= SESSION_HEADER ? session_state_position((const unsigned char *)rep->str + sizeof h) : 0;
    if (memcmp(h.magic, RECORD_MAGIC, 8) != 0) {
        freeReplyObject(rep);
        not_found(e, id, r->ttl);
        goto done;
    }
    if (state && !(*state = malloc(n ? n : 1))) {
        freeReplyObject(rep);
        api_error_set(e, 500, NULL, "out of memory");
        goto done;
    }
    if (state) {
        memcpy(*state, rep->str + sizeof h, n);
        *len = n;
    }
    freeReplyObject(rep);
    if (checkout) {
        if (!(rep = command(r, e, "SET %s 1 NX PX %d", lock, LOCK_MS)))
            goto fail_state;
        bool got = rep->type == REDIS_REPLY_STATUS;
        freeReplyObject(rep);
        if (!got) {
            api_error_set(e, 409, "session", "session %s is busy with another request; retry when it has finished",
                          id);
            goto fail_state;
        }
    }
    describe(r, id, &h, n, position, info);
    rc = 0;
    goto done;
fail_state:
    if (state) {
        free(*state);
        *state = NULL;
    }
done:
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void redis_return(redis_store *r, const char *id, const char *owner, unsigned char *state, size_t len)
{
    char key[256], lock[256];
    key_of(r, key, sizeof key, "", owner, id);
    key_of(r, lock, sizeof lock, "lock:", owner, id);
    api_error e;
    pthread_mutex_lock(&r->lock);
    if (state) {
        /* The record's head as it is: the session's model and creation time stay. */
        redisReply *rep = command(r, &e, "GETRANGE %s 0 %d", key, (int)sizeof(record_head) - 1);
        record_head h;
        if (rep && rep->type == REDIS_REPLY_STRING && rep->len == sizeof h) {
            memcpy(&h, rep->str, sizeof h);
            h.model[sizeof h.model - 1] = '\0';
            store(r, key, h.model, h.created, state, len, "XX", &e); /* gone meanwhile (expired): stays gone */
        }
        freeReplyObject(rep);
    }
    redisReply *rep = command(r, &e, "DEL %s", lock);
    freeReplyObject(rep);
    pthread_mutex_unlock(&r->lock);
    free(state);
}

int redis_delete(redis_store *r, const char *id, const char *owner, session_info *info, api_error *e)
{
    char key[256], lock[256];
    key_of(r, key, sizeof key, "", owner, id);
    key_of(r, lock, sizeof lock, "lock:", owner, id);
    (void)info;
    int rc = -1;
    pthread_mutex_lock(&r->lock);
    redisReply *rep = NULL;
    if (checked_out(r, lock, id, e))
        goto done;
    if (!(rep = command(r, e, "DEL %s", key)))
        goto done;
    bool gone = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    if (!gone)
        not_found(e, id, r->ttl);
    else
        rc = 0;
done:
    pthread_mutex_unlock(&r->lock);
    return rc;
}
