/* config.c -- one table of settings drives parsing, environment lookup,
 * range checks and --help, so they cannot disagree.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "err.h"
#include "opt.h"

/* What kind of value a setting takes (opt_spec.kind). */
enum { OPT_STR, OPT_LONG, OPT_DOUBLE, OPT_LIST, OPT_BOOL };

#define OFF(f) offsetof(srv_config, f)

static const opt_spec OPTIONS[] = {
    {"host", OPT_STR, OFF(host), 0, 0, "address to listen on (0.0.0.0 or :: for every interface)"},
    {"port", OPT_LONG, OFF(port), 0, 65535, "TCP port; 0 picks a free one"},
    {"model", OPT_LIST, OFF(models), 0, 0,
     "model file (safetensors); once per model to serve several (the variable: a comma-separated list)"},
    {"workers", OPT_LONG, OFF(workers), 1, 256, "threads running the model (default: number of CPUs)"},
    {"queue", OPT_LONG, OFF(queue), 1, 100000, "requests that may wait for a worker; more get 503"},
    {"max-batch", OPT_LONG, OFF(max_batch), 1, 1024, "sequences one worker decodes together (at most --queue)"},
    {"timeout", OPT_DOUBLE, OFF(timeout), 0, 86400, "seconds a request may take before 504; 0: no limit"},
    {"max-body", OPT_LONG, OFF(max_body), 1, 1L << 30, "largest request body in bytes (413 above)"},
    {"max-input-tokens", OPT_LONG, OFF(max_input_tokens), 1, 1L << 24, "most input tokens per request (413 above)"},
    {"max-new-tokens", OPT_LONG, OFF(max_new_tokens), 0, 1L << 24, "largest max_tokens a request may ask for"},
    {"max-attention-tokens", OPT_LONG, OFF(max_attention_tokens), 1, 1L << 16,
     "most tokens in an attention-map request (413 above)"},
    {"max-inputs", OPT_LONG, OFF(max_inputs), 1, 1024,
     "most inputs in one request's array (/v1/score texts, /v1/completions prompts; 413 above)"},
    {"api-key", OPT_STR, OFF(api_key), 0, 0, "require this key (Authorization: Bearer or X-Api-Key); empty: none"},
    {"api-key-file", OPT_STR, OFF(api_key_file), 0, 0,
     "accept the keys in this file too, one per line (# comments), re-read on SIGHUP; each key's sessions are its "
     "own; empty: none"},
    {"drain-timeout", OPT_DOUBLE, OFF(drain_timeout), 0, 86400,
     "seconds to let in-flight requests finish after SIGTERM"},
    {"port-file", OPT_STR, OFF(port_file), 0, 0,
     "once listening, write the bound port to this file (a second line: the admin port), for scripts; empty: none"},
    {"admin-port", OPT_LONG, OFF(admin_port), -1, 65535,
     "port of a separate listener for /health, /ready and /metrics, with its own thread; 0 picks one; -1: none"},
    {"max-connections", OPT_LONG, OFF(max_connections), 1, 100000, "connections the main port holds at once"},
    {"max-per-ip", OPT_LONG, OFF(max_per_ip), 0, 100000,
     "connections one client address may hold on the main port; 0: no limit (behind a proxy every client has its address)"},
    {"header-timeout", OPT_DOUBLE, OFF(header_timeout), 0.1, 3600,
     "seconds a connection gets to send a request's whole header (from connect, or from the previous answer)"},
    {"min-body-rate", OPT_LONG, OFF(min_body_rate), 0, 1L << 30,
     "bytes per second a request body must average once it has taken --header-timeout; 0: no minimum"},
    {"tls-cert", OPT_STR, OFF(tls_cert), 0, 0, "PEM certificate (chain) to serve HTTPS on the main port; empty: HTTP"},
    {"tls-key", OPT_STR, OFF(tls_key), 0, 0, "PEM private key of --tls-cert"},
    {"cors-origin", OPT_LIST, OFF(cors_origins), 0, 0,
     "an origin whose pages may call the API (once per origin, or \"*\"); none: no CORS headers"},
    {"log-format", OPT_STR, OFF(log_format_name), 0, 0, "\"text\" or \"json\" (one object per line)"},
    {"ui", OPT_BOOL, OFF(ui), 0, 1,
     "serve the attention inspector page at / (--no-ui, or the variable 0: 404 there); 1/0, true/false, yes/no, on/off"},
    {"precision", OPT_STR, OFF(precision), 0, 0,
     "precision of the weights: f32 (exact), bf16 (half the memory) or int8 (a quarter, fastest)"},
    {"kernels", OPT_STR, OFF(kernels), 0, 0,
     "the products' instruction set: auto (the fastest this CPU runs), amx, avx512bf16, avx512vnni, avx512, avx2 "
     "or generic"},
    {"prefix-cache", OPT_LONG, OFF(prefix_cache_mb), 0, 1L << 20,
     "megabytes of recent prompts' prefix states kept, so a request that repeats a prefix runs only what follows; 0: none"},
    {"session-store", OPT_STR, OFF(session_store), 0, 0,
     "where sessions and stream checkpoints live: memory (this process), or redis://HOST:PORT[/DB], shared by "
     "every replica that names it (bounded there by Redis's maxmemory; keys expire after --session-ttl)"},
    {"max-sessions", OPT_LONG, OFF(max_sessions), 0, 1000000, "sessions held at once (/v1/sessions); 0: no sessions"},
    {"session-memory", OPT_LONG, OFF(session_memory_mb), 1, 1L << 20,
     "megabytes of session states held at most; a new session beyond it (or beyond --max-sessions) gets 503"},
    {"session-ttl", OPT_DOUBLE, OFF(session_ttl), 1, 365 * 86400.0, "seconds a session may go unused before it is dropped"},
    {"session-secret-file", OPT_STR, OFF(session_secret_file), 0, 0,
     "file whose bytes sign exported session states (replicas that share it accept each other's); empty: a random "
     "secret of this process"},
    {"chat-template", OPT_STR, OFF(chat_template), 0, 0,
     "file of how /v1/chat/completions renders messages (role prefixes and suffixes, the generation prompt, stop "
     "strings; docs/API.md); empty: a plain User:/Assistant: transcript"},
    {"checkpoint-every", OPT_LONG, OFF(checkpoint_every), 0, 1000000,
     "tokens between a stream's checkpoints, from which a request with Last-Event-ID resumes it; 0: none"},
    {"checkpoint-memory", OPT_LONG, OFF(checkpoint_memory_mb), 1, 1L << 20,
     "megabytes of stream checkpoints held at most (three per stream, kept --session-ttl seconds)"},
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
        .models = {.v = {"models/default.safetensors"}, .n = 1},
        .workers = cpu_count(),
        .queue = 64,
        .max_batch = 32,
        .timeout = 120,
        .max_body = 1L << 20,
        .max_input_tokens = 4096,
        .max_new_tokens = 2048,
        .max_attention_tokens = 512,
        .max_inputs = 32,
        .api_key = "",
        .api_key_file = "",
        .drain_timeout = 30,
        .port_file = "",
        .admin_port = -1,
        .max_connections = 1000,
        .header_timeout = 10,
        .min_body_rate = 1024,
        .tls_cert = "",
        .tls_key = "",
        .log_format_name = "text",
        .ui = 1,
        .precision = "f32",
        .kernels = "auto",
        .prefix_cache_mb = 64,
        .session_store = "memory",
        .max_sessions = 1024,
        .session_memory_mb = 256,
        .session_ttl = 900,
        .session_secret_file = "",
        .checkpoint_every = 32,
        .chat_template = "",
        .checkpoint_memory_mb = 256,
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

/* Adds v to a list; from_env replaces the list with v split at commas. */
static int list_add(srv_list *l, const char *v, bool from_env, const char *from, char *err, size_t errlen)
{
    if (!from_env) {
        if (l->n == SRV_MAX_LIST) {
            err_set(err, errlen, "%s: at most %d values", from, SRV_MAX_LIST);
            return -1;
        }
        l->v[l->n++] = v;
        return 0;
    }
    free(l->owned);
    if (!(l->owned = strdup(v))) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    l->n = 0;
    for (char *save = NULL, *tok = strtok_r(l->owned, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        for (char *end = tok + strlen(tok); end > tok && end[-1] == ' ';)
            *--end = '\0';
        if (*tok && list_add(l, tok, false, from, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static int set_value(srv_config *c, const opt_spec *o, const char *v, const char *from, char *err, size_t errlen)
{
    void *p = opt_field(c, o);
    switch (o->kind) {
    case OPT_STR: *(const char **)p = v; return 0;
    case OPT_LIST: return list_add((srv_list *)p, v, strncmp(from, "ATTNLM_", 7) == 0, from, err, errlen);
    case OPT_LONG: return opt_long(o, from, v, (long *)p, err, errlen);
    case OPT_BOOL: {
        static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
        for (size_t i = 0; i < 4; i++)
            if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
                *(long *)p = strcasecmp(v, yes[i]) == 0;
                return 0;
            }
        err_set(err, errlen, "%s must be 1 or 0 (true/false, yes/no, on/off), got \"%s\"", from, v);
        return -1;
    }
    case OPT_DOUBLE: return opt_double(o, from, v, (double *)p, err, errlen);
    }
    return -1;
}

static const opt_spec *find(const char *name, size_t len)
{
    return opt_find(OPTIONS, N_OPTIONS, name, len);
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
        const opt_spec *o = &OPTIONS[i];
        char env[64], def[64];
        env_name(o->name, env, sizeof env);
        const char *p = (const char *)&d + o->offset;
        switch (o->kind) {
        case OPT_STR: snprintf(def, sizeof def, "\"%s\"", *(const char *const *)p); break;
        case OPT_LONG:
        case OPT_BOOL: snprintf(def, sizeof def, "%ld", *(const long *)p); break;
        case OPT_DOUBLE: snprintf(def, sizeof def, "%g", *(const double *)p); break;
        case OPT_LIST: {
            const srv_list *l = (const srv_list *)(const void *)p;
            snprintf(def, sizeof def, l->n ? "\"%s\"" : "none", l->n ? l->v[0] : "");
            break;
        }
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
    free(c->models.owned);
    free(c->cors_origins.owned);
    c->models.owned = c->cors_origins.owned = NULL;
}

int config_load(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen)
{
    defaults(c);
    bool list_flagged[N_OPTIONS] = {false}; /* a list's first flag replaces its default or variable */
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
        const opt_spec *o = find(name, eq ? (size_t)(eq - name) : strlen(name));
        /* A switch is --NAME (on), --no-NAME (off) or --NAME=VALUE; it never takes the next argument. */
        const opt_spec *off = !o && !eq && strncmp(name, "no-", 3) == 0 ? find(name + 3, strlen(name) - 3) : NULL;
        if (off && off->kind == OPT_BOOL) {
            *(long *)((char *)c + off->offset) = 0;
            continue;
        }
        if (!o) {
            err_set(err, errlen, "unknown flag \"%s\" (see --help)", a);
            return -1;
        }
        if (o->kind == OPT_BOOL && !eq) {
            *(long *)((char *)c + o->offset) = 1;
            continue;
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
        if (o->kind == OPT_LIST && !list_flagged[o - OPTIONS]) {
            ((srv_list *)(void *)((char *)c + o->offset))->n = 0;
            list_flagged[o - OPTIONS] = true;
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
    if (c->models.n == 0) {
        err_set(err, errlen, "no model file given (--model, or ATTNLM_MODEL)");
        return -1;
    }
    if (strcmp(c->log_format_name, "text") == 0) {
        c->log_format = LOG_TEXT;
    } else if (strcmp(c->log_format_name, "json") == 0) {
        c->log_format = LOG_JSON;
    } else {
        err_set(err, errlen, "--log-format must be \"text\" or \"json\", got \"%s\"", c->log_format_name);
        return -1;
    }
    if (!*c->tls_cert != !*c->tls_key) {
        err_set(err, errlen, "--tls-cert and --tls-key go together");
        return -1;
    }
    return 0;
}
