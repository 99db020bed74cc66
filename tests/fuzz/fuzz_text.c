#define _POSIX_C_SOURCE 200809L
/* fuzz_text.c -- libFuzzer: the byte-level text rules of a stream.
 *
 * UTF-8 repair gives valid UTF-8 (and leaves valid input as it is); the
 * completeness rule never cuts a valid text inside a character and holds
 * back at most 3 bytes; the tokenizer round-trips; and the stop-string
 * hold-back equals a brute-force search for the longest proper prefix of a
 * stop string that the output ends with.
 */
#include "internal.h"
#include "tokenizer.h"
#include "utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The brute-force answer stop_holdback must give. */
static int holdback_reference(char *const *stops, int n_stop, const unsigned char *out, int n)
{
    int best = 0;
    for (int s = 0; s < n_stop; s++) {
        int L = (int)strlen(stops[s]);
        for (int k = 1; k < L && k <= n; k++)
            if (memcmp(out + n - k, stops[s], (size_t)k) == 0 && k > best)
                best = k;
    }
    return best;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *clean = malloc(3 * size + 1);
    size_t n = utf8_sanitize(data, size, clean);
    if (!utf8_valid((const unsigned char *)clean, n))
        abort();
    if (utf8_valid(data, size) && (n != size || memcmp(clean, data, size) != 0))
        abort();
    size_t whole = utf8_complete(data, size);
    if (whole > size || size - whole > 3)
        abort();
    if (utf8_valid(data, size) && whole != size)
        abort();
    free(clean);

    int *ids = malloc((size + 1) * sizeof *ids);
    char *back = malloc(size + 1);
    if (tok_encode((const char *)data, size, ids) != size + 1 || ids[0] != TOK_BOS ||
        tok_decode(ids, size + 1, back) != size || memcmp(back, data, size) != 0)
        abort();
    free(ids);
    free(back);

    /* Stops: the input up to its first NUL split at 0xFF bytes; the output: the rest. */
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return 0;
    gen_params gp = {0};
    char *spec = strndup((const char *)data, (size_t)(nul - data));
    for (char *save = NULL, *tok = strtok_r(spec, "\xff", &save); tok && gp.n_stop < API_MAX_STOP;
         tok = strtok_r(NULL, "\xff", &save))
        gp.stop[gp.n_stop++] = tok;
    const unsigned char *out = nul + 1;
    int on = (int)(size - (size_t)(nul + 1 - data));
    if (stop_holdback(&gp, out, on) != holdback_reference(gp.stop, gp.n_stop, out, on))
        abort();
    free(spec);
    return 0;
}
