/* session_redis.h -- the session store's operations (session.h) in Redis,
 * through hiredis.  Keys are PREFIX:OWNER:ID, each value a short record head
 * (the model's name, when it was made) and the state; they expire after the
 * time to live, which every read renews.  A checkout is a lock key
 * (PREFIX:lock:OWNER:ID, SET NX with an expiry, so that a replica that dies
 * holding it does not hold it for ever).  One connection, behind a lock, with
 * short timeouts; after a failure the store answers 503 for a second and then
 * connects again.
 */
#ifndef ATTNLM_API_SESSION_REDIS_H
#define ATTNLM_API_SESSION_REDIS_H

#include "session.h"

typedef struct redis_store redis_store;

/* NULL with a message for a url that is not redis://HOST:PORT[/DB]. */
redis_store *redis_store_new(const char *url, const char *prefix, double ttl, char *err, size_t errlen);
void redis_store_free(redis_store *r);

int redis_put(redis_store *r, const char *owner, const char *model_name, unsigned char *state, size_t len,
              session_info *info, api_error *e);
int redis_set(redis_store *r, const char *id, const char *owner, const char *model_name,
              const unsigned char *state, size_t len, api_error *e);
int redis_get(redis_store *r, const char *id, const char *owner, bool checkout, unsigned char **state, size_t *len,
              session_info *info, api_error *e);
void redis_return(redis_store *r, const char *id, const char *owner, unsigned char *state, size_t len);
int redis_delete(redis_store *r, const char *id, const char *owner, session_info *info, api_error *e);

#endif
