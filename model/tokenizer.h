/* tokenizer.h -- the byte tokenizer: ids 0-255 are the bytes of UTF-8 text and
 * id 256 marks the beginning of a sequence (BOS).
 *
 * Also the UTF-8 helpers a stream of byte tokens needs: how much of a byte
 * buffer is whole characters, so nothing half a character long is sent.
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

/* Length of the longest prefix of s[len] that does not end inside a UTF-8
 * character: an incomplete trailing sequence is held back, invalid bytes are
 * not (they will never complete). */
size_t tok_utf8_complete(const unsigned char *s, size_t len);

/* Copies s[len] into out, replacing each ill-formed part with U+FFFD the way
 * Unicode's "maximal subpart" practice (and Python's decode(errors="replace"))
 * does: a truncated but otherwise valid sequence is one U+FFFD, any other bad
 * byte is one each.  out needs room for 3 * len bytes; no NUL is added.
 * Returns the bytes written. */
size_t tok_utf8_sanitize(const unsigned char *s, size_t len, char *out);

#endif
