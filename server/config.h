/* config.h -- the server's settings from flags and ATTNLM_* environment
 * variables (a flag wins over its variable, a variable over the default).
 */
#ifndef ATTNLM_CONFIG_H
#define ATTNLM_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define SRV_MAX_MODELS 16

/* Every setting of the daemon. */
typedef struct srv_config {
    const char *host;
    long port;
    const char *models[SRV_MAX_MODELS]; /* --model, once per file (ATTNLM_MODEL: comma-separated) */
    int n_models;
    char *model_list;                    /* owns the split ATTNLM_MODEL value */
    long workers;
    long queue;
    long max_batch;
    double timeout;       /* seconds per request; 0 = none */
    long max_body;        /* bytes */
    long max_input_tokens;
    long max_new_tokens;
    long max_attention_tokens;
    const char *api_key;  /* "" = none */
    double drain_timeout; /* seconds */
    const char *port_file; /* "" = none: where to write the bound port once listening */
    const char *precision; /* the models' weights: "f32", "bf16" or "int8" (checked by main) */
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
