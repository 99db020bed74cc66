/* pool.h -- worker threads that run the models, fed by one bounded queue.
 *
 * Each worker owns its scratch (single-threaded BLAS, batches of sequences)
 * and advances all of its generations together, one step per token; new
 * requests join between steps and finished, failed or abandoned ones leave.
 * A task whose client is not reading its output waits out of the batch.
 * The pool knows nothing of HTTP: a task tells it how to hand output back,
 * whether its client is still there, and when the pool is done with it.
 */
#ifndef ATTNLM_POOL_H
#define ATTNLM_POOL_H

#include "api.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct pool pool;
typedef struct pool_task pool_task;

/* One request's model work, owned by its submitter; the pool borrows it
 * from pool_submit until it calls release. */
struct pool_task {
    api_job *job;
    int64_t deadline_ns; /* clock_now_ns() time; 0: none */
    /* Output for the client (data is the callee's to free), done when it is the last. */
    void (*emit)(pool_task *t, int status, char *data, size_t len, bool done);
    /* Whether the client has gone away. */
    bool (*gone)(pool_task *t);
    /* Whether the client has so much unsent output that the task should not
     * produce more until it reads (NULL: never). */
    bool (*blocked)(pool_task *t);
    /* The pool will not touch the task again; cancelled if the client had gone. */
    void (*release)(pool_task *t, bool cancelled);
    /* The pool's own: */
    pool_task *next;          /* queue link */
    int64_t stalled_since_ns; /* when the task last became blocked, 0 if it is not */
    int end_status;           /* set when the pool ended the task: 504 deadline, 408 stalled, 503 abort */
};

/* Starts worker threads serving ctx's models; each decodes at most max_batch
 * sequences at once, at most queue tasks wait, and a task blocked for longer
 * than stall_seconds is ended.  NULL with a message on failure. */
pool *pool_new(const api_ctx *ctx, int workers, int queue, int max_batch, double stall_seconds, char *err,
               size_t errlen);
/* Stops the workers once queue and batches are empty (see pool_abort) and frees the pool. */
void pool_free(pool *p);

/* Queues a task.  Returns 0, or -1 if the queue is full. */
int pool_submit(pool *p, pool_task *t);
/* Ends every queued and running task with e (used when draining runs out of time). */
void pool_abort(pool *p, const api_error *e);
/* Wakes the workers: a blocked task's client has read some of its output. */
void pool_kick(pool *p);

#endif
