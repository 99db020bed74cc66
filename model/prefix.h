/* prefix.h -- a cache of the states of recently seen token prefixes.
 *
 * A sequence's state after t tokens has a fixed size: the recurrent state
 * and the last W positions the attention reads.  The cache keeps the states
 * at every multiple of PREFIX_CHUNK tokens of the sequences it sees, with
 * the log-probabilities of their positions, keyed by the model and the exact
 * token prefix; a later forward pass over a sequence that begins with a
 * cached prefix starts from that state and computes only what follows.
 * Because every position's numbers are the same wherever a pass began (see
 * forward_runs), answers are bit-for-bit those of a pass from the start.
 *
 * Bounded in bytes; the least recently used prefixes go first, longer ones
 * before their own shorter prefixes.  Safe to share between threads.
 */
#ifndef ATTNLM_PREFIX_H
#define ATTNLM_PREFIX_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

#define PREFIX_CHUNK 64 /* tokens between two cached states */

typedef struct prefix_cache prefix_cache;

typedef struct prefix_stats {
    size_t bytes, limit; /* held now, at most */
    size_t entries;      /* states held */
    uint64_t evictions;  /* states dropped to stay within the limit */
} prefix_stats;

/* A cache of at most max_bytes (0: caches nothing).  NULL on out of memory. */
prefix_cache *prefix_cache_new(size_t max_bytes);
void prefix_cache_free(prefix_cache *pc);
void prefix_cache_stats(prefix_cache *pc, prefix_stats *st);
/* Drops every state of model m (before m is freed). */
void prefix_cache_forget(prefix_cache *pc, const model *m);

/* model_forward_batch through the cache pc (NULL: no cache): each sequence
 * starts from the longest cached prefix of its tokens that leaves at least
 * one token to run (one with log-probabilities when logprobs[b] is wanted),
 * and the states the pass crosses are offered to the cache.  reused[b]
 * (optional) receives the tokens sequence b took from the cache.  Returns 0,
 * or -1 with a message. */
int model_forward_cached(const model *m, prefix_cache *pc, int B, const int *const *tokens, const int *lens,
                         float *const *logprobs, model_seq *const *seqs, int *reused, char *err, size_t errlen);

#endif
