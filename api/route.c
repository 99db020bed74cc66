/* route.c -- what the server asks before any model work: which endpoint a
 * method and path name, whether the request's credentials match the key, and
 * the error answer of a refusal.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- routing --------------------------------------------------------------- */

typedef struct route {
    const char *path;
    bool post;
    bool open;
    bool job;
} route;

static const route ROUTES[API_EP_COUNT] = {
    [API_EP_HEALTH] = {"/health", false, true, false},
    [API_EP_READY] = {"/ready", false, true, false},
    [API_EP_METRICS] = {"/metrics", false, true, false},
    [API_EP_MODEL] = {"/v1/model", false, false, false},
    [API_EP_MODELS] = {"/v1/models", false, false, false},
    [API_EP_TOKENIZE] = {"/v1/tokenize", true, false, false},
    [API_EP_DETOKENIZE] = {"/v1/detokenize", true, false, false},
    [API_EP_SCORE] = {"/v1/score", true, false, true},
    [API_EP_GENERATE] = {"/v1/generate", true, false, true},
    [API_EP_ATTENTION] = {"/v1/attention", true, false, true},
    [API_EP_COMPLETIONS] = {"/v1/completions", true, false, true},
    [API_EP_MODEL_BY_ID] = {"/v1/models/{id}", false, false, false}, /* matched by prefix below */
    [API_EP_ATTRIBUTION] = {"/v1/attribution", true, false, true},
};

#define MODELS_PREFIX "/v1/models/"

int api_route(const char *method, const char *path, api_endpoint *ep, const char **allow)
{
    for (int i = 0; i < API_EP_COUNT; i++) {
        bool by_id = i == API_EP_MODEL_BY_ID && strncmp(path, MODELS_PREFIX, strlen(MODELS_PREFIX)) == 0 &&
                     path[strlen(MODELS_PREFIX)] != '\0';
        if (!by_id && strcmp(path, ROUTES[i].path) != 0)
            continue;
        *ep = (api_endpoint)i;
        bool ok = ROUTES[i].post ? strcmp(method, "POST") == 0
                                 : strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        if (ok)
            return 0;
        *allow = ROUTES[i].post ? "POST" : "GET, HEAD";
        return 405;
    }
    return 404;
}

const char *api_endpoint_path(api_endpoint ep) { return ep < API_EP_COUNT ? ROUTES[ep].path : "other"; }
bool api_endpoint_is_open(api_endpoint ep) { return ep < API_EP_COUNT && ROUTES[ep].open; }
bool api_endpoint_is_job(api_endpoint ep) { return ep < API_EP_COUNT && ROUTES[ep].job; }

/* ---- API key ------------------------------------------------------------- */

/* Compares in time that depends only on the lengths, not on where they differ. */
static bool same_secret(const char *key, const char *given)
{
    size_t kl = strlen(key), gl = strlen(given);
    unsigned diff = (unsigned)(kl ^ gl);
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)given[gl ? i % gl : 0];
    return diff == 0 && gl > 0;
}

bool api_key_matches(const char *key, const char *authorization, const char *x_api_key)
{
    bool ok = false;
    /* The scheme is case-insensitive (RFC 9110 11.1); the key is not. */
    if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *t = authorization + 7;
        while (*t == ' ')
            t++;
        ok |= same_secret(key, t);
    }
    if (x_api_key)
        ok |= same_secret(key, x_api_key);
    return ok;
}
