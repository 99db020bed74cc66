/* fuzz_config.c -- libFuzzer: the server's settings from any flags and
 * environment.  Input: NUL-separated words; a word starting with '=' sets an
 * ATTNLM_* variable ("=MAX_BODY=12"), the others are argv.  The parser either
 * refuses with a message or returns settings inside their documented ranges,
 * and frees what it allocated. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    char *argv[64] = {"attnlm-server"};
    char names[16][64];
    int argc = 1, n_names = 0;
    for (char *w = copy; w < copy + size && argc < 63; w += strlen(w) + 1) {
        char *eq = w[0] == '=' ? strchr(w + 1, '=') : NULL;
        if (eq && n_names < 16) {
            snprintf(names[n_names], sizeof names[0], "ATTNLM_%.*s", (int)(eq - w - 1), w + 1);
            if (setenv(names[n_names], eq + 1, 1) == 0)
                n_names++;
        } else if (!eq) {
            argv[argc++] = w;
        }
    }
    srv_config c = {0};
    char err[256] = "";
    FILE *sink = fopen("/dev/null", "w");
    int rc = config_load(&c, argc, argv, sink, err, sizeof err);
    fclose(sink);
    if (rc < 0 && !err[0])
        abort();
    if (rc == 0 && (c.port < 0 || c.port > 65535 || c.workers < 1 || c.queue < 1 || c.max_batch < 1 ||
                    c.max_batch > c.queue || c.models.n < 1 || c.models.n > SRV_MAX_LIST || !*c.host ||
                    c.timeout < 0 || c.admin_port < -1))
        abort();
    config_free(&c);
    for (int i = 0; i < n_names; i++) /* the next input starts from a clean environment */
        unsetenv(names[i]);
    free(copy);
    return 0;
}
