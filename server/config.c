/* config.c -- one table of settings drives parsing, environment lookup,
 * range checks and --help, so they cannot disagree.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"

typedef enum { OPT_STR, OPT_LONG, OPT_DOUBLE, OPT_LIST } opt_type;

/* One setting: flag name, where it lives, its range and its help. */
typedef struct option {
    const char *name;
    opt_type type;
    size_t offset;
    double lo, hi;
    const char *help;
} option;

#define OFF(f) offsetof(srv_config, f)

static const option OPTIONS[] = {
    {"host", OPT_STR, OFF(host), 0, 0, "address to listen on (0.0.0.0 or :: for every interface)"},
    {"port", OPT_LONG, OFF(port), 0, 65535, "TCP port; 0 picks a free one"},
    {"model", OPT_LIST, OFF(models), 0, SRV_MAX_MODELS,
     "model file (safetensors); give it once per model to serve several (the variable: a comma-separated list)"},
    {"workers", OPT_LONG, OFF(workers), 1, 256, "threads running the model (default: number of CPUs)"},
    {"queue", OPT_LONG, OFF(queue), 1, 100000, "requests that may wait for a worker; more get 503"},
    {"max-batch", OPT_LONG, OFF(max_batch), 1, 1024, "sequences one worker decodes together (at most --queue)"},
    {"timeout", OPT_DOUBLE, OFF(timeout), 0, 86400, "seconds a request may take before 504; 0: no limit"},
    {"max-body", OPT_LONG, OFF(max_body), 1, 1L << 30, "largest request body in bytes (413 above)"},
    {"max-input-tokens", OPT_LONG, OFF(max_input_tokens), 1, 1L << 24, "most input tokens per request (413 above)"},
    {"max-new-tokens", OPT_LONG, OFF(max_new_tokens), 0, 1L << 24, "largest max_tokens a request may ask for"},
    {"max-attention-tokens", OPT_LONG, OFF(max_attention_tokens), 1, 1L << 16,
     "most tokens in an attention-map request (413 above)"},
    {"api-key", OPT_STR, OFF(api_key), 0, 0, "require this key (Authorization: Bearer or X-Api-Key); empty: none"},
    {"drain-timeout", OPT_DOUBLE, OFF(drain_timeout), 0, 86400,
     "seconds to let in-flight requests finish after SIGTERM"},
    {"port-file", OPT_STR, OFF(port_file), 0, 0,
     "once listening, write the bound port (one line) to this file, for scripts; empty: none"},
    {"precision", OPT_STR, OFF(precision), 0, 0,
     "precision of the weights: f32 (exact), bf16 (half the memory) or int8 (a quarter, fastest)"},
};
#define N_OPTIONS (sizeof OPTIONS / sizeof *OPTIONS)

static long cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}

static void defaults(srv_config *c)
{
    *c = (srv_config){
        .host = "127.0.0.1",
        .port = 8080,
        .models = {"models/default.safetensors"},
        .n_models = 1,
        .workers = cpu_count(),
        .queue = 64,
        .max_batch = 32,
        .timeout = 120,
        .max_body = 1L << 20,
        .max_input_tokens = 4096,
        .max_new_tokens = 2048,
        .max_attention_tokens = 512,
        .api_key = "",
        .drain_timeout = 30,
        .port_file = "",
        .precision = "f32",
    };
}

/* ATTNLM_MAX_BODY for "max-body". */
static void env_name(const char *flag, char *out, size_t len)
{
    size_t i = (size_t)snprintf(out, len, "ATTNLM_");
    for (; *flag && i + 1 < len; flag++)
        out[i++] = *flag == '-' ? '_' : (char)toupper((unsigned char)*flag);
    out[i] = '\0';
}

/* Adds one model file to the list; from_env splits v at commas. */
static int add_models(srv_config *c, const char *v, bool from_env, const char *from, char *err, size_t errlen)
{
    if (!from_env) {
        if (c->n_models == SRV_MAX_MODELS) {
            err_set(err, errlen, "%s: at most %d models can be served", from, SRV_MAX_MODELS);
            return -1;
        }
        c->models[c->n_models++] = v;
        return 0;
    }
    free(c->model_list);
    if (!(c->model_list = strdup(v))) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    c->n_models = 0;
    for (char *save = NULL, *tok = strtok_r(c->model_list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (*tok && add_models(c, tok, false, from, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static int set_value(srv_config *c, const option *o, const char *v, const char *from, char *err, size_t errlen)
{
    char *p = (char *)c + o->offset, *end;
    errno = 0;
    switch (o->type) {
    case OPT_STR: *(const char **)p = v; return 0;
    case OPT_LIST: return add_models(c, v, strncmp(from, "ATTNLM_", 7) == 0, from, err, errlen);
    case OPT_LONG: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < (long)o->lo || x > (long)o->hi) {
            err_set(err, errlen, "%s must be an integer in [%ld, %ld], got \"%s\"", from, (long)o->lo, (long)o->hi,
                    v);
            return -1;
        }
        *(long *)p = x;
        return 0;
    }
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < o->lo || x > o->hi) {
            err_set(err, errlen, "%s must be a number in [%g, %g], got \"%s\"", from, o->lo, o->hi, v);
            return -1;
        }
        *(double *)p = x;
        return 0;
    }
    }
    return -1;
}

static const option *find(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strlen(OPTIONS[i].name) == len && strncmp(OPTIONS[i].name, name, len) == 0)
            return &OPTIONS[i];
    return NULL;
}

void config_usage(FILE *out)
{
    srv_config d;
    defaults(&d);
    fputs("usage: attnlm-server [--flag value | --flag=value]...\n\n"
          "Serves a model over HTTP.  Every flag can also be set by the environment variable\n"
          "shown; a flag given on the command line wins.\n\n",
          out);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const option *o = &OPTIONS[i];
        char env[64], def[64];
        env_name(o->name, env, sizeof env);
        const char *p = (const char *)&d + o->offset;
        switch (o->type) {
        case OPT_STR: snprintf(def, sizeof def, "\"%s\"", *(const char *const *)p); break;
        case OPT_LONG: snprintf(def, sizeof def, "%ld", *(const long *)p); break;
        case OPT_DOUBLE: snprintf(def, sizeof def, "%g", *(const double *)p); break;
        case OPT_LIST: snprintf(def, sizeof def, "\"%s\"", d.models[0]); break;
        }
        fprintf(out, "  --%-21s %-28s default %s\n      %s\n", o->name, env, def, o->help);
    }
    fputs("  --health                ask the server at --host/--port for /health and exit 0 if it\n"
          "                          answers 200, 1 otherwise (for container health checks)\n"
          "  --help                  print this and exit\n",
          out);
}

void config_free(srv_config *c)
{
    free(c->model_list);
    c->model_list = NULL;
}

int config_load(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen)
{
    defaults(c);
    bool model_flag = false; /* the first --model replaces the default or ATTNLM_MODEL's list */
    for (size_t i = 0; i < N_OPTIONS; i++) {
        char env[64];
        env_name(OPTIONS[i].name, env, sizeof env);
        const char *v = getenv(env);
        if (v && set_value(c, &OPTIONS[i], v, env, err, errlen) < 0)
            return -1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            config_usage(out);
            return 1;
        }
        if (strcmp(a, "--health") == 0) {
            c->health_check = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            err_set(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        const option *o = find(name, eq ? (size_t)(eq - name) : strlen(name));
        if (!o) {
            err_set(err, errlen, "unknown flag \"%s\" (see --help)", a);
            return -1;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) {
                err_set(err, errlen, "--%s needs a value", o->name);
                return -1;
            }
            v = argv[++i];
        }
        char from[48];
        snprintf(from, sizeof from, "--%s", o->name);
        if (o->type == OPT_LIST && !model_flag) {
            c->n_models = 0;
            model_flag = true;
        }
        if (set_value(c, o, v, from, err, errlen) < 0)
            return -1;
    }
    if (c->max_batch > c->queue)
        c->max_batch = c->queue;
    if (!*c->host) {
        err_set(err, errlen, "--host must not be empty");
        return -1;
    }
    if (c->n_models == 0) {
        err_set(err, errlen, "no model file given (--model, or ATTNLM_MODEL)");
        return -1;
    }
    return 0;
}
