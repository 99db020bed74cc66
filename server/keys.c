/* keys.c -- the API keys a server accepts (keys.h). */
#define _POSIX_C_SOURCE 200809L
#include "keys.h"
#include "api.h"
#include "err.h"
#include "sha256.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEYS 1024
#define MAX_KEY_BYTES 512

struct keyring {
    pthread_mutex_t lock;
    char *path;     /* "" none */
    char *fixed;    /* --api-key, "" none */
    char **keys;    /* [n]: --api-key first, then the file's */
    char (*owners)[65];
    int n;
};

static void digest(const char *key, char out[65])
{
    sha256_ctx h;
    unsigned char d[32];
    sha256_init(&h);
    sha256_update(&h, key, strlen(key));
    sha256_final(&h, d);
    sha256_hex(d, out);
}

static void free_keys(char **keys, char (*owners)[65], int n)
{
    for (int i = 0; i < n; i++) {
        memset(keys[i], 0, strlen(keys[i]));
        free(keys[i]);
    }
    free(keys);
    free(owners);
}

static int add_key(char ***keys, int *n, const char *key, size_t len, char *err, size_t errlen)
{
    if (*n == MAX_KEYS || len > MAX_KEY_BYTES) {
        err_set(err, errlen, "at most %d keys of at most %d bytes", MAX_KEYS, MAX_KEY_BYTES);
        return -1;
    }
    char **more = realloc(*keys, (size_t)(*n + 1) * sizeof *more);
    if (!more || !(more[*n] = strndup(key, len))) {
        if (more)
            *keys = more;
        err_set(err, errlen, "out of memory");
        return -1;
    }
    *keys = more;
    (*n)++;
    return 0;
}

/* The ring's keys read afresh into *keys[*n]. */
static int read_keys(const keyring *k, char ***keys, int *n, char *err, size_t errlen)
{
    *keys = NULL;
    *n = 0;
    if (*k->fixed && add_key(keys, n, k->fixed, strlen(k->fixed), err, errlen) < 0)
        return -1;
    if (!*k->path)
        return 0;
    FILE *f = fopen(k->path, "r");
    if (!f) {
        err_set(err, errlen, "cannot read --api-key-file %s: %s", k->path, strerror(errno));
        return -1;
    }
    char line[MAX_KEY_BYTES + 2];
    int from_file = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            err_set(err, errlen, "--api-key-file %s: a line longer than %d bytes", k->path, MAX_KEY_BYTES);
            rc = -1;
            break;
        }
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        len = strlen(p);
        while (len > 0 && isspace((unsigned char)p[len - 1]))
            len--;
        if (len == 0 || *p == '#')
            continue;
        rc = add_key(keys, n, p, len, err, errlen);
        from_file++;
    }
    fclose(f);
    if (rc == 0 && from_file == 0) {
        err_set(err, errlen, "--api-key-file %s holds no key", k->path);
        rc = -1;
    }
    memset(line, 0, sizeof line);
    return rc;
}

static int load(keyring *k, char *err, size_t errlen)
{
    char **keys;
    int n;
    char(*owners)[65] = NULL;
    if (read_keys(k, &keys, &n, err, errlen) < 0) {
        free_keys(keys, NULL, n);
        return -1;
    }
    if (n && !(owners = calloc((size_t)n, sizeof *owners))) {
        err_set(err, errlen, "out of memory");
        free_keys(keys, NULL, n);
        return -1;
    }
    for (int i = 0; i < n; i++)
        digest(keys[i], owners[i]);
    pthread_mutex_lock(&k->lock);
    char **old = k->keys;
    char(*old_owners)[65] = k->owners;
    int old_n = k->n;
    k->keys = keys;
    k->owners = owners;
    k->n = n;
    pthread_mutex_unlock(&k->lock);
    free_keys(old, old_owners, old_n);
    return n;
}

keyring *keyring_new(const char *api_key, const char *path, char *err, size_t errlen)
{
    keyring *k = calloc(1, sizeof *k);
    if (!k || !(k->fixed = strdup(api_key ? api_key : "")) || !(k->path = strdup(path ? path : ""))) {
        if (k) {
            free(k->fixed);
            free(k);
        }
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&k->lock, NULL);
    if (load(k, err, errlen) < 0) {
        keyring_free(k);
        return NULL;
    }
    return k;
}

void keyring_free(keyring *k)
{
    if (!k)
        return;
    free_keys(k->keys, k->owners, k->n);
    free(k->fixed);
    free(k->path);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

int keyring_reload(keyring *k, char *err, size_t errlen) { return *k->path ? load(k, err, errlen) : k->n; }

bool keyring_active(const keyring *k) { return *k->fixed || *k->path; }

bool keyring_check(keyring *k, const char *authorization, const char *x_api_key, char owner[65])
{
    int found = -1;
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < k->n; i++) /* no early exit: every key takes its time */
        if (api_key_matches(k->keys[i], authorization, x_api_key) && found < 0)
            found = i;
    if (found >= 0)
        memcpy(owner, k->owners[found], 65);
    pthread_mutex_unlock(&k->lock);
    return found >= 0;
}
