/* utf8.h -- the UTF-8 rules a byte-level service needs: how much of a byte
 * buffer is whole characters (so a stream never sends half of one), and
 * repairing ill-formed bytes the way Python's decode(errors="replace") does.
 */
#ifndef ATTNLM_UTF8_H
#define ATTNLM_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the longest prefix of s[len] that does not end inside a UTF-8
 * character: an incomplete trailing sequence is held back, invalid bytes are
 * not (they will never complete). */
size_t utf8_complete(const unsigned char *s, size_t len);

/* Copies s[len] into out, replacing each ill-formed part with U+FFFD the way
 * Unicode's "maximal subpart" practice (and Python's decode(errors="replace"))
 * does: a truncated but otherwise valid sequence is one U+FFFD, any other bad
 * byte is one each.  out needs room for 3 * len bytes; no NUL is added.
 * Returns the bytes written. */
size_t utf8_sanitize(const unsigned char *s, size_t len, char *out);

/* Whether s[len] is well-formed UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF). */
bool utf8_valid(const unsigned char *s, size_t len);

#endif
