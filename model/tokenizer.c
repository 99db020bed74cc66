/* tokenizer.c -- see tokenizer.h. */
#include "tokenizer.h"

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

/* Bytes a UTF-8 character has when it starts with lead byte c; 0 if c cannot lead. */
static int utf8_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

size_t tok_utf8_complete(const unsigned char *s, size_t len)
{
    /* Only the last (up to) 3 bytes can be an unfinished character. */
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = len; i > start; i--) {
        unsigned char c = s[i - 1];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for its lead */
        int need = utf8_len(c);
        if (need > 1 && len - (i - 1) < (size_t)need) {
            for (size_t j = i; j < len; j++) /* only a valid prefix can still complete */
                if ((s[j] & 0xC0) != 0x80)
                    return len;
            return i - 1;
        }
        return len;
    }
    return len;
}
