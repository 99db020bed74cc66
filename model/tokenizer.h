/* tokenizer.h -- the byte tokenizer: ids 0-255 are the bytes of UTF-8 text and
 * id 256 marks the beginning of a sequence (BOS).
 * (The UTF-8 rules a stream of byte tokens needs are in common/utf8.h.)
 */
#ifndef ATTNLM_TOKENIZER_H
#define ATTNLM_TOKENIZER_H

#include <stddef.h>

#define TOK_BOS 256
#define TOK_VOCAB 257

/* Writes [BOS] + the bytes of text[len] into out[len + 1]; returns len + 1. */
size_t tok_encode(const char *text, size_t len, int *out);

/* Writes the bytes of ids[n] into out[n], skipping BOS; returns the byte count.
 * Returns (size_t)-1 if an id is outside [0, TOK_VOCAB). */
size_t tok_decode(const int *ids, size_t n, char *out);

#endif
