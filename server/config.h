/* config.h -- the server's settings from flags and ATTNLM_* environment
 * variables (a flag wins over its variable, a variable over the default).
 */
#ifndef ATTNLM_CONFIG_H
#define ATTNLM_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define SRV_MAX_LIST 16 /* values of a setting given once per value */

/* A setting given once per value on the command line, or as a comma-separated
 * environment variable. */
typedef struct srv_list {
    const char *v[SRV_MAX_LIST];
    int n;
    char *owned; /* the split copy of the variable's value */
} srv_list;

typedef enum { LOG_TEXT, LOG_JSON } srv_log_format;

/* Every setting of the daemon. */
typedef struct srv_config {
    const char *host;
    long port;
    srv_list models;          /* --model, once per file */
    long workers;
    long queue;
    long max_batch;
    double timeout;       /* seconds per request; 0 = none */
    long max_body;        /* bytes */
    long max_input_tokens;
    long max_new_tokens;
    long max_attention_tokens;
    long max_inputs;      /* inputs in one array request */
    const char *api_key;  /* "" = none */
    const char *api_key_file; /* "" = none: keys one per line, re-read on SIGHUP */
    double drain_timeout; /* seconds */
    const char *port_file; /* "" = none: where to write the bound port(s) once listening */
    long admin_port;       /* -1 = none; 0 picks a free one */
    long max_connections;  /* on the main port */
    long max_per_ip;       /* 0 = no limit */
    double header_timeout; /* seconds to send a request's header, counted from connect or the previous answer */
    long min_body_rate;    /* bytes/s a body must average once it has taken header_timeout */
    const char *tls_cert;  /* "" = plain HTTP */
    const char *tls_key;
    srv_list cors_origins; /* origins allowed to call from a browser; "*" = any */
    const char *log_format_name;
    srv_log_format log_format;
    long ui;              /* serve the inspector page (server/ui.c) at / and /ui/ */
    const char *precision; /* the models' weights: "f32", "bf16" or "int8" (checked by main) */
    const char *kernels;   /* the kernel table by name, or "auto" (checked when the models load) */
    long prefix_cache_mb;  /* megabytes of prefix states kept; 0: none */
    const char *session_store; /* "memory", or "redis://HOST:PORT[/DB]": sessions and checkpoints shared by replicas */
    long max_sessions;     /* sessions held at once; 0: no session routes */
    long session_memory_mb; /* megabytes of session states held at most */
    double session_ttl;    /* seconds a session may go unused before it is dropped */
    const char *session_secret_file; /* "" = a random secret of this process */
    long checkpoint_every;  /* tokens between a stream's checkpoints; 0: streams are not resumable */
    const char *chat_template; /* "" = the built-in transcript */
    long checkpoint_memory_mb; /* megabytes of stream checkpoints held at most */
    int health_check;     /* --health: probe a running server's /health instead of serving */
} srv_config;

/* Fills c from argv and the environment.  Returns 0, 1 if --help was asked
 * (usage already printed to out), or -1 with a message in err.  Free with
 * config_free whatever it returned. */
int config_load(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen);
void config_free(srv_config *c);
/* Prints every flag, its variable and its default. */
void config_usage(FILE *out);

#endif
