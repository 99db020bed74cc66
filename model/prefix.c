/* prefix.c -- the prefix-state cache (prefix.h).
 *
 * The cached states of one model form a tree: a node is the state after
 * PREFIX_CHUNK more tokens than its parent's, keyed by (model, parent, those
 * tokens), with the log-probabilities of the chunk's positions when a pass
 * computed them.  Nodes live in one hash table and one recency list.  Every
 * use of a node also uses its ancestors, deepest first, so a parent is always
 * more recent than its children: eviction from the old end takes leaves, and
 * no node outlives the path that reaches it.
 */
#define _POSIX_C_SOURCE 200809L
#include "prefix.h"
#include "engine.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct pnode {
    struct pnode *hnext;        /* hash chain */
    struct pnode *newer, *older; /* recency list */
    uint64_t id, parent, model_id, hash;
    size_t bytes;  /* counted against the limit */
    float *rows;   /* [PREFIX_CHUNK, V] log-probabilities of the chunk's positions, or NULL */
    model_seq seq; /* the state after the chunk, over state[] */
    int tokens[PREFIX_CHUNK];
    float state[]; /* [seq_floats] */
} pnode;

struct prefix_cache {
    pthread_mutex_t mu;
    size_t limit, bytes, entries;
    uint64_t evictions, next_id;
    pnode **buckets;
    size_t nbuckets; /* a power of two */
    pnode list;      /* sentinel: list.older is the newest node, list.newer the oldest */
};

prefix_cache *prefix_cache_new(size_t max_bytes)
{
    prefix_cache *pc = calloc(1, sizeof *pc);
    if (!pc)
        return NULL;
    pc->nbuckets = 256;
    pc->buckets = calloc(pc->nbuckets, sizeof *pc->buckets);
    if (!pc->buckets) {
        free(pc);
        return NULL;
    }
    pthread_mutex_init(&pc->mu, NULL);
    pc->limit = max_bytes;
    pc->list.newer = pc->list.older = &pc->list;
    return pc;
}

static void node_free(pnode *n)
{
    free(n->rows);
    free(n);
}

void prefix_cache_free(prefix_cache *pc)
{
    if (!pc)
        return;
    for (pnode *n = pc->list.older, *next; n != &pc->list; n = next) {
        next = n->older;
        node_free(n);
    }
    free(pc->buckets);
    pthread_mutex_destroy(&pc->mu);
    free(pc);
}

void prefix_cache_stats(prefix_cache *pc, prefix_stats *st)
{
    pthread_mutex_lock(&pc->mu);
    *st = (prefix_stats){.bytes = pc->bytes, .limit = pc->limit, .entries = pc->entries, .evictions = pc->evictions};
    pthread_mutex_unlock(&pc->mu);
}

/* ---- the table and the list (callers hold mu) ------------------------------- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t key_hash(uint64_t model_id, uint64_t parent, const int *tokens)
{
    uint64_t h = mix(model_id) ^ mix(parent + 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < PREFIX_CHUNK; i++)
        h = (h ^ (uint32_t)tokens[i]) * 0x100000001b3ull;
    return mix(h);
}

static pnode **bucket(prefix_cache *pc, uint64_t hash) { return &pc->buckets[hash & (pc->nbuckets - 1)]; }

static pnode *find(prefix_cache *pc, uint64_t model_id, uint64_t parent, const int *tokens)
{
    uint64_t h = key_hash(model_id, parent, tokens);
    for (pnode *n = *bucket(pc, h); n; n = n->hnext)
        if (n->hash == h && n->model_id == model_id && n->parent == parent &&
            memcmp(n->tokens, tokens, sizeof n->tokens) == 0)
            return n;
    return NULL;
}

static void list_unlink(pnode *n)
{
    n->newer->older = n->older;
    n->older->newer = n->newer;
}

/* Makes n the newest node. */
static void touch(prefix_cache *pc, pnode *n)
{
    list_unlink(n);
    n->older = pc->list.older;
    n->newer = &pc->list;
    pc->list.older->newer = n;
    pc->list.older = n;
}

/* Doubles the table when it holds more nodes than buckets (keeps it as it is
 * if memory is short: chains only get longer). */
static void maybe_grow(prefix_cache *pc)
{
    if (pc->entries <= pc->nbuckets)
        return;
    size_t nb = pc->nbuckets * 2;
    pnode **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < pc->nbuckets; i++)
        for (pnode *n = pc->buckets[i], *next; n; n = next) {
            next = n->hnext;
            n->hnext = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    free(pc->buckets);
    pc->buckets = b;
    pc->nbuckets = nb;
}

static void add(prefix_cache *pc, pnode *n, uint64_t parent)
{
    n->id = ++pc->next_id;
    n->parent = parent;
    n->hash = key_hash(n->model_id, parent, n->tokens);
    pnode **b = bucket(pc, n->hash);
    n->hnext = *b;
    *b = n;
    n->older = n->newer = n;
    touch(pc, n);
    pc->bytes += n->bytes;
    pc->entries++;
    maybe_grow(pc);
}

static void drop(prefix_cache *pc, pnode *n)
{
    for (pnode **p = bucket(pc, n->hash); *p; p = &(*p)->hnext)
        if (*p == n) {
            *p = n->hnext;
            break;
        }
    list_unlink(n);
    pc->bytes -= n->bytes;
    pc->entries--;
    node_free(n);
}

static void evict(prefix_cache *pc)
{
    while (pc->bytes > pc->limit && pc->list.newer != &pc->list) {
        drop(pc, pc->list.newer);
        pc->evictions++;
    }
}

void prefix_cache_forget(prefix_cache *pc, const model *m)
{
    if (!pc)
        return;
    pthread_mutex_lock(&pc->mu);
    for (pnode *n = pc->list.older, *next; n != &pc->list; n = next) {
        next = n->older;
        if (n->model_id == m->id)
            drop(pc, n);
    }
    pthread_mutex_unlock(&pc->mu);
}

/* Follows tokens[0 .. n) down the tree for at most max_depth chunks, stopping
 * at a node without rows when rows are wanted; path[] receives the nodes.
 * Returns the depth reached. */
static int walk(prefix_cache *pc, const model *m, const int *tokens, int max_depth, bool want_rows, pnode **path)
{
    int d = 0;
    for (uint64_t parent = 0; d < max_depth; d++) {
        pnode *n = find(pc, m->id, parent, tokens + (size_t)d * PREFIX_CHUNK);
        if (!n || (want_rows && !n->rows))
            break;
        path[d] = n;
        parent = n->id;
    }
    return d;
}

/* Uses a path: its nodes become the newest, the root newest of all. */
static void touch_path(prefix_cache *pc, pnode *const *path, int depth)
{
    for (int d = depth - 1; d >= 0; d--)
        touch(pc, path[d]);
}

/* ---- one sequence ------------------------------------------------------------ */

/* What the cache does for one sequence of a pass. */
typedef struct seq_plan {
    int n;           /* its tokens */
    int depth;       /* chunks taken from the cache */
    int fresh;       /* chunks the pass crosses, each a node to offer */
    model_seq *from; /* the state at depth * PREFIX_CHUNK, or NULL */
    pnode **nodes;   /* [fresh] */
    model_seq **marks; /* [fresh] the nodes' states */
} seq_plan;

static size_t node_bytes(const model *m, bool rows)
{
    return sizeof(pnode) + seq_floats(m) * sizeof(float) +
           (rows ? (size_t)PREFIX_CHUNK * m->cfg.vocab * sizeof(float) : 0);
}

/* Takes the longest usable prefix of tokens[0 .. n) from the cache: its state
 * into a new p->from and its log-probabilities into lp (if wanted). */
static int plan_lookup(prefix_cache *pc, const model *m, const int *tokens, float *lp, pnode **path, seq_plan *p)
{
    const int V = m->cfg.vocab;
    model_seq *from = model_seq_new(m);
    if (!from)
        return -1;
    pthread_mutex_lock(&pc->mu);
    int d = walk(pc, m, tokens, (p->n - 1) / PREFIX_CHUNK, lp != NULL, path);
    if (d > 0) {
        memcpy(from->h, path[d - 1]->state, seq_floats(m) * sizeof(float));
        from->pos = (int64_t)d * PREFIX_CHUNK;
        for (int i = 0; lp && i < d; i++)
            memcpy(lp + (size_t)i * PREFIX_CHUNK * V, path[i]->rows, (size_t)PREFIX_CHUNK * V * sizeof *lp);
        touch_path(pc, path, d);
    }
    pthread_mutex_unlock(&pc->mu);
    p->depth = d;
    if (d > 0)
        p->from = from;
    else
        model_seq_free(from);
    return 0;
}

/* Nodes for the states the pass will cross, their states as marks. */
static int plan_nodes(prefix_cache *pc, const model *m, const int *tokens, bool rows, seq_plan *p)
{
    p->fresh = p->n / PREFIX_CHUNK - p->depth;
    /* No more nodes than the cache can hold: the rest would be evicted at
     * once, and a long window makes each state large.  The first ones are
     * kept, as every use of a node also uses the path before it. */
    const size_t fit = pc->limit / node_bytes(m, rows);
    if (p->fresh > 0 && (size_t)p->fresh > fit)
        p->fresh = (int)fit;
    if (p->fresh <= 0) {
        p->fresh = 0;
        return 0;
    }
    p->nodes = calloc((size_t)p->fresh, sizeof *p->nodes);
    p->marks = calloc((size_t)p->fresh, sizeof *p->marks);
    if (!p->nodes || !p->marks)
        return -1;
    for (int i = 0; i < p->fresh; i++) {
        pnode *n = calloc(1, sizeof *n + seq_floats(m) * sizeof(float));
        if (!n)
            return -1;
        p->nodes[i] = n;
        n->model_id = m->id;
        n->bytes = node_bytes(m, false);
        memcpy(n->tokens, tokens + (size_t)(p->depth + i) * PREFIX_CHUNK, sizeof n->tokens);
        seq_bind(&n->seq, m, n->state);
        p->marks[i] = &n->seq;
    }
    return 0;
}

/* Offers the pass's nodes to the cache, below the path of the prefix they
 * continue (if it is still there), and trims the cache to its limit. */
static void plan_store(prefix_cache *pc, const model *m, const int *tokens, const float *lp, pnode **path,
                       seq_plan *p)
{
    const size_t V = (size_t)m->cfg.vocab, row_bytes = PREFIX_CHUNK * V * sizeof(float);
    for (int i = 0; lp && i < p->fresh; i++)
        if ((p->nodes[i]->rows = malloc(row_bytes)))
            memcpy(p->nodes[i]->rows, lp + (size_t)(p->depth + i) * PREFIX_CHUNK * V, row_bytes);
    pthread_mutex_lock(&pc->mu);
    int d = walk(pc, m, tokens, p->depth, false, path);
    for (int i = 0; d >= p->depth && i < p->fresh; i++, d++) {
        pnode *n = p->nodes[i], *have = find(pc, m->id, d ? path[d - 1]->id : 0, n->tokens);
        if (have) { /* another pass stored it meanwhile, or stored it without rows */
            if (!have->rows && n->rows) {
                have->rows = n->rows;
                n->rows = NULL;
                have->bytes += row_bytes;
                pc->bytes += row_bytes;
            }
            path[d] = have;
            continue;
        }
        if (n->rows)
            n->bytes += row_bytes;
        add(pc, n, d ? path[d - 1]->id : 0);
        p->nodes[i] = NULL;
        path[d] = n;
    }
    touch_path(pc, path, d);
    evict(pc);
    pthread_mutex_unlock(&pc->mu);
}

static void plan_free(seq_plan *p)
{
    model_seq_free(p->from);
    for (int i = 0; p->nodes && i < p->fresh; i++)
        if (p->nodes[i])
            node_free(p->nodes[i]);
    free(p->nodes);
    free(p->marks);
}

int model_forward_cached(const model *m, prefix_cache *pc, int B, const int *const *tokens, const int *lens,
                         float *const *logprobs, model_seq *const *seqs, int *reused, char *err, size_t errlen)
{
    const size_t V = (size_t)m->cfg.vocab;
    if (!pc || pc->limit == 0) {
        for (int b = 0; reused && b < B; b++)
            reused[b] = 0;
        return model_forward_batch(m, B, tokens, lens, logprobs, NULL, seqs, err, errlen);
    }
    if (B < 1) {
        err_set(err, errlen, "no sequences to run");
        return -1;
    }
    int longest = 0;
    for (int b = 0; b < B; b++)
        longest = lens[b] > longest ? lens[b] : longest;
    seq_plan *plans = calloc((size_t)B, sizeof *plans);
    fwd_run *runs = calloc((size_t)B, sizeof *runs);
    pnode **path = calloc((size_t)longest / PREFIX_CHUNK + 1, sizeof *path);
    int rc = -1;
    if (!plans || !runs || !path) {
        err_set(err, errlen, "out of memory");
        goto done;
    }
    for (int b = 0; b < B; b++) {
        seq_plan *p = &plans[b];
        p->n = lens[b];
        float *lp = logprobs ? logprobs[b] : NULL;
        /* A bad token or length is the pass's to report: such a sequence is run as it is. */
        if (p->n > PREFIX_CHUNK && (plan_lookup(pc, m, tokens[b], lp, path, p) < 0 ||
                                    plan_nodes(pc, m, tokens[b], lp != NULL, p) < 0)) {
            err_set(err, errlen, "out of memory");
            goto done;
        }
        const size_t skip = (size_t)p->depth * PREFIX_CHUNK;
        runs[b] = (fwd_run){.tokens = tokens[b] + skip,
                            .n = p->n - (int)skip,
                            .from = p->from,
                            .logprobs = lp ? lp + skip * V : NULL,
                            .seq = seqs ? seqs[b] : NULL,
                            .marks = p->fresh ? p->marks : NULL,
                            .n_marks = p->fresh};
    }
    if ((rc = forward_runs(m, B, runs, err, errlen)) < 0)
        goto done;
    for (int b = 0; b < B; b++) {
        if (plans[b].fresh)
            plan_store(pc, m, tokens[b], logprobs ? logprobs[b] : NULL, path, &plans[b]);
        if (reused)
            reused[b] = plans[b].depth * PREFIX_CHUNK;
    }
done:
    for (int b = 0; plans && b < B; b++)
        plan_free(&plans[b]);
    free(plans);
    free(runs);
    free(path);
    return rc;
}
