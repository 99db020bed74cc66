/* keys.h -- the API keys a server accepts: --api-key and the lines of
 * --api-key-file (re-read on SIGHUP).  Each request's key, when it matches,
 * names the owner of the sessions it makes: the key's SHA-256, so that
 * sessions of one key are invisible to another and no key is kept in them.
 */
#ifndef ATTNLM_KEYS_H
#define ATTNLM_KEYS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct keyring keyring;

/* The keys of api_key ("" none) and the file at path ("" none): one key per
 * line, blank lines and lines starting with # skipped, spaces around a key
 * trimmed.  NULL with a message if the file cannot be read or holds no key. */
keyring *keyring_new(const char *api_key, const char *path, char *err, size_t errlen);
void keyring_free(keyring *k);
/* Reads the file again; on failure (message in err) the old keys stay.
 * Returns the keys now held, or -1. */
int keyring_reload(keyring *k, char *err, size_t errlen);
/* Whether requests need a key at all. */
bool keyring_active(const keyring *k);
/* Whether the request's Authorization ("Bearer KEY") or X-Api-Key header (each
 * may be NULL) holds a key of the ring; owner[65] then receives its digest.
 * Every key is compared, in time that does not depend on where they differ. */
bool keyring_check(keyring *k, const char *authorization, const char *x_api_key, char owner[65]);

#endif
