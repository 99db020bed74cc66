/* sha256.h -- SHA-256 (FIPS 180-4), for reporting which model file is served,
 * and HMAC-SHA-256 (RFC 2104), for signing the session states a server exports.
 *
 * Streaming: init, update with any chunks, final.  No state is shared.
 */
#ifndef ATTNLM_SHA256_H
#define ATTNLM_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Running state of one digest. */
typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t bytes;       /* message length so far */
    unsigned char block[64];
    size_t fill;          /* bytes waiting in block */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
void sha256_final(sha256_ctx *c, unsigned char out[32]);
/* HMAC-SHA-256 of the message parts msg[i] (len[i] bytes, n of them) under key. */
void hmac_sha256(const void *key, size_t key_len, const void *const *msg, const size_t *len, int n,
                 unsigned char out[32]);

/* Lower-case hex of a digest, NUL-terminated. */
void sha256_hex(const unsigned char digest[32], char out[65]);
/* Digest of a whole file as hex.  Returns 0, or -1 with a message in err. */
int sha256_file(const char *path, char hex[65], char *err, size_t errlen);

#endif
