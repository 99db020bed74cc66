/* tokenizer.c -- see tokenizer.h. */
#include "tokenizer.h"

#include <string.h>

size_t tok_encode(const char *text, size_t len, int *out)
{
    out[0] = TOK_BOS;
    for (size_t i = 0; i < len; i++)
        out[i + 1] = (unsigned char)text[i];
    return len + 1;
}

size_t tok_decode(const int *ids, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= TOK_VOCAB)
            return (size_t)-1;
        if (ids[i] != TOK_BOS)
            out[o++] = (char)ids[i];
    }
    return o;
}
