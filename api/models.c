/* models.c -- the served models: loading, lookup by name, and reload.
 *
 * Each served file is a slot holding the model now served from it.  A lookup
 * takes a reference under the registry's lock; a reload loads and validates
 * the file outside the lock, then swaps the slot's model under it.  The old
 * model is released by the slot and freed by whoever drops the last
 * reference, so requests in flight finish on the weights they started with.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include "clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct api_models {
    pthread_mutex_t lock;
    model_opts opts; /* how every model is loaded, reloads included */
    prefix_cache *prefix;
    int n;
    api_model *slot[API_MAX_MODELS]; /* the model each file now serves */
};

/* The name a model answers to: its "name" metadata, else its file's name. */
static void model_name(const model *m, const char *path, char *out, size_t len)
{
    const char *name = model_meta(m, "name");
    if (!name || !*name) {
        const char *slash = strrchr(path, '/');
        name = slash ? slash + 1 : path;
    }
    snprintf(out, len, "%s", name);
}

/* Loads path into a new served model with one reference (the slot's). */
static api_model *load_one(const char *path, int slot, const model_opts *opts, char *err, size_t errlen)
{
    api_model *am = calloc(1, sizeof *am);
    if (!am) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    if (strlen(path) >= sizeof am->path) {
        err_set(err, errlen, "the path is longer than %zu bytes", sizeof am->path - 1);
        free(am);
        return NULL;
    }
    int64_t t0 = clock_now_ns();
    am->m = model_load_opts(path, opts, err, errlen);
    if (!am->m) {
        free(am);
        return NULL;
    }
    am->load_seconds = clock_seconds(t0, clock_now_ns());
    am->loaded_at = (long long)time(NULL);
    am->slot = slot;
    snprintf(am->path, sizeof am->path, "%s", path);
    model_name(am->m, path, am->name, sizeof am->name);
    atomic_init(&am->refs, 1);
    atomic_init(&am->retired, false);
    return am;
}

void api_model_release(api_model *am)
{
    if (am && atomic_fetch_sub(&am->refs, 1) == 1) {
        prefix_cache_forget(am->prefix, am->m);
        model_free(am->m);
        free(am);
    }
}

/* The slot serving name (NULL or "": the first); -1 if none.  Under the lock. */
static int find_slot(const api_models *r, const char *name)
{
    if (!name || !*name)
        return r->n > 0 ? 0 : -1;
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->slot[i]->name, name) == 0)
            return i;
    return -1;
}

api_models *api_models_load(const char *const *paths, int n, const model_opts *opts, char *err, size_t errlen)
{
    if (n < 1 || n > API_MAX_MODELS) {
        err_set(err, errlen, "%d model files given; from 1 to %d can be served", n, API_MAX_MODELS);
        return NULL;
    }
    api_models *r = calloc(1, sizeof *r);
    if (!r) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    if (opts)
        r->opts = *opts;
    for (int i = 0; i < n; i++) {
        char why[ATTNLM_ERR_LEN];
        api_model *am = load_one(paths[i], i, &r->opts, why, sizeof why);
        if (!am) {
            err_set(err, errlen, "cannot load %s: %s", paths[i], why);
            goto fail;
        }
        int same = find_slot(r, am->name);
        if (same >= 0) {
            err_set(err, errlen, "%s and %s are both named \"%s\"; give each model a distinct \"name\" metadata",
                    r->slot[same]->path, paths[i], am->name);
            api_model_release(am);
            goto fail;
        }
        r->slot[r->n++] = am;
    }
    return r;
fail:
    api_models_free(r);
    return NULL;
}

void api_models_free(api_models *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++)
        api_model_release(r->slot[i]);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int api_models_count(const api_models *r) { return r->n; }

void api_models_use_prefix_cache(api_models *r, prefix_cache *pc)
{
    pthread_mutex_lock(&r->lock);
    r->prefix = pc;
    for (int i = 0; i < r->n; i++)
        r->slot[i]->prefix = pc;
    pthread_mutex_unlock(&r->lock);
}

api_model *api_model_acquire(api_models *r, const char *name)
{
    pthread_mutex_lock(&r->lock);
    int i = find_slot(r, name);
    api_model *am = i >= 0 ? r->slot[i] : NULL;
    if (am)
        atomic_fetch_add(&am->refs, 1);
    pthread_mutex_unlock(&r->lock);
    return am;
}

api_model *api_model_acquire_at(api_models *r, int i)
{
    pthread_mutex_lock(&r->lock);
    api_model *am = i >= 0 && i < r->n ? r->slot[i] : NULL;
    if (am)
        atomic_fetch_add(&am->refs, 1);
    pthread_mutex_unlock(&r->lock);
    return am;
}

int api_models_reload(api_models *r, api_metrics *metrics, api_reload_note note, void *cls)
{
    int failed = 0;
    for (int i = 0; i < r->n; i++) {
        /* Only reload swaps slots, and reloads run one at a time, so the path is stable. */
        char path[API_MODEL_PATH], why[ATTNLM_ERR_LEN], msg[ATTNLM_ERR_LEN + 256];
        snprintf(path, sizeof path, "%s", r->slot[i]->path);
        api_model *am = load_one(path, i, &r->opts, why, sizeof why);
        bool ok = am != NULL;
        if (ok) {
            am->prefix = r->prefix;
            pthread_mutex_lock(&r->lock);
            int same = find_slot(r, am->name);
            ok = same < 0 || same == i;
            api_model *old = r->slot[i];
            if (ok)
                r->slot[i] = am;
            pthread_mutex_unlock(&r->lock);
            if (ok) {
                atomic_store(&old->retired, true);
                snprintf(msg, sizeof msg, "reloaded \"%s\" (sha256 %.12s, was %.12s) in %.3f s", am->name,
                         model_sha256(am->m), model_sha256(old->m), am->load_seconds);
                api_model_release(old);
            } else {
                snprintf(msg, sizeof msg, "kept the old model: the new file is named \"%s\", which another model has",
                         am->name);
                api_model_release(am);
            }
        } else {
            snprintf(msg, sizeof msg, "kept the old model: %s", why);
        }
        if (metrics)
            atomic_fetch_add(ok ? &metrics->model[i].reloads_ok : &metrics->model[i].reloads_failed, 1);
        if (note)
            note(cls, path, ok, msg);
        failed += !ok;
    }
    return failed;
}
