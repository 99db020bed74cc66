/* pool.c -- the worker pool and its continuous batching.
 *
 * A worker's loop: take what it fairly can from the queue (never more than
 * max_batch sequences running, and not while another worker has less), start
 * what it took (one-shot work runs to its end; generations are prefilled),
 * drop tasks whose client left, whose deadline passed or whose client stopped
 * reading for too long, then advance every generation it can by one batched
 * step and hand out what was produced.
 *
 * Backpressure: a task whose client has more unsent output than its bound is
 * blocked.  A blocked task stays in its worker but is not stepped and does
 * not count against max_batch, so clients that do not read cost their bounded
 * buffers and nothing else; the stream wakes the pool when it drains.
 *
 * The pool's lock guards the queue and the per-worker loads only; model work
 * and output happen outside it.
 */
#define _POSIX_C_SOURCE 200809L
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "err.h"

#define IDLE_LOOK_NS 250000000 /* how often a worker with only blocked tasks looks at them */

typedef struct worker {
    pool *p;
    int index;
    pthread_t thread;
    bool started;
    api_worker *aw;
    pool_task **active; /* [cap_active] tasks in hand, blocked ones included */
    api_job **jobs;     /* the runnable ones' jobs, for api_step */
    int n_active, cap_active;
    pool_task **taken;  /* [max_batch + API_MAX_CHOICES] tasks just taken from the queue */
    api_job **starting; /* their jobs */
} worker;

struct pool {
    const api_ctx *ctx;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pool_task *head, *tail; /* FIFO */
    int queued, queue_cap, max_batch, n_workers;
    int queued_weight; /* sequences the queued tasks will decode */
    int *load;  /* [n_workers] sequences each worker is running (blocked tasks not counted) */
    double stall_seconds;
    bool stop;
    atomic_bool abort_all;
    api_error abort_error;
    worker *w;
};

static void count_tokens(api_metrics *m, const api_job *j)
{
    metrics_model *mm = &m->model[api_job_model_slot(j)];
    atomic_fetch_add_explicit(&mm->input_tokens, (unsigned long)api_job_input_tokens(j), memory_order_relaxed);
    atomic_fetch_add_explicit(&mm->generated_tokens, (unsigned long)api_job_output_tokens(j), memory_order_relaxed);
}

/* Hands everything the job produced to the task's owner; a finished job's
 * tokens are counted first, so a client that has its answer sees them in /metrics. */
static void deliver(worker *w, pool_task *t)
{
    char *data;
    int status;
    size_t n = api_job_take_output(t->job, &data, &status);
    bool done = api_job_done(t->job);
    if (done)
        count_tokens(w->p->ctx->metrics, t->job);
    if (n || done)
        t->emit(t, status, data, n, done);
}

/* The task leaves the pool; the sequences it held are no longer active. */
static void finish(worker *w, pool_task *t, bool cancelled)
{
    api_metrics *m = w->p->ctx->metrics;
    if (cancelled) {
        count_tokens(m, t->job);
        atomic_fetch_add_explicit(&m->cancelled, 1, memory_order_relaxed);
    }
    atomic_fetch_sub_explicit(&m->active_sequences, api_job_weight(t->job), memory_order_relaxed);
    t->release(t, cancelled);
}

/* Ends the task with e: its client gets the error (an error event for a stream). */
static void end_with(worker *w, pool_task *t, const api_error *e, int end_status)
{
    t->end_status = end_status;
    api_job_fail(t->job, e);
    deliver(w, t);
    finish(w, t, false);
}

/* Whether the task must leave before its next step: gone, late, stalled or aborted. */
static bool check_leave(worker *w, pool_task *t, int64_t now)
{
    pool *p = w->p;
    if (t->gone(t)) {
        finish(w, t, true);
        return true;
    }
    api_error e;
    bool late = t->deadline_ns && now > t->deadline_ns;
    /* A stream that stopped because its client stopped reading ends as that, deadline or not. */
    if (t->stalled_since_ns && (late || now - t->stalled_since_ns > (int64_t)(p->stall_seconds * 1e9))) {
        api_error_set(&e, 408, NULL, "the client read nothing for %.1f s",
                      (double)(now - t->stalled_since_ns) / 1e9);
        atomic_fetch_add_explicit(&p->ctx->metrics->stalled, 1, memory_order_relaxed);
        end_with(w, t, &e, 408);
        return true;
    }
    if (late) {
        api_error_set(&e, 504, NULL, "the request ran past the server's deadline");
        atomic_fetch_add_explicit(&p->ctx->metrics->timeouts, 1, memory_order_relaxed);
        end_with(w, t, &e, 504);
        return true;
    }
    if (atomic_load_explicit(&p->abort_all, memory_order_relaxed)) {
        pthread_mutex_lock(&p->lock);
        e = p->abort_error;
        pthread_mutex_unlock(&p->lock);
        end_with(w, t, &e, e.status);
        return true;
    }
    return false;
}

/* Input tokens a worker takes at once: scoring and prefills of up to this
 * many tokens run before it answers them or steps its generations again. */
#define POOL_ROUND_TOKENS 2048

/* Takes queued tasks this worker should run; called with the lock held.
 * A worker takes up to its fair share of all the work in hand (queued plus
 * every worker's running load, divided by the number of workers), so a burst of
 * requests is split between the workers instead of waiting for whichever
 * finishes first, never more than max_batch sequences, and no more input
 * tokens than POOL_ROUND_TOKENS (beyond the first task): a forward pass of
 * that size runs its products as fast as a larger one, and what is left in
 * the queue is answered a round later instead of everything at the end of
 * one long pass. */
static int take(worker *w, pool_task **taken, int max)
{
    pool *p = w->p;
    int total = p->queued_weight;
    for (int i = 0; i < p->n_workers; i++)
        total += p->load[i];
    int share = (total + p->n_workers - 1) / p->n_workers, n = 0, tokens = 0;
    while (p->head && n < max) {
        pool_task *t = p->head;
        int weight = api_job_weight(t->job), load = p->load[w->index], in = api_job_input_tokens(t->job);
        if (load > 0 && (load + weight > p->max_batch || load + weight > share))
            break;
        if (n > 0 && tokens + in > POOL_ROUND_TOKENS)
            break;
        tokens += in;
        p->head = t->next;
        if (!p->head)
            p->tail = NULL;
        p->queued--;
        p->queued_weight -= weight;
        p->load[w->index] += weight;
        atomic_fetch_sub_explicit(&p->ctx->metrics->queue_depth, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->ctx->metrics->active_sequences, weight, memory_order_relaxed);
        taken[n++] = t;
    }
    return n;
}

/* Makes room for n more tasks in hand.  Returns 0, or -1 on out of memory. */
static int reserve_active(worker *w, int n)
{
    if (w->n_active + n <= w->cap_active)
        return 0;
    int cap = w->cap_active * 2 > w->n_active + n ? w->cap_active * 2 : w->n_active + n;
    pool_task **a = realloc(w->active, (size_t)cap * sizeof *a);
    if (a)
        w->active = a;
    api_job **j = a ? realloc(w->jobs, (size_t)cap * sizeof *j) : NULL;
    if (j)
        w->jobs = j;
    if (!a || !j)
        return -1;
    w->cap_active = cap;
    return 0;
}

/* Marks which tasks in hand are blocked, ages their stall, and returns the
 * sequences the runnable ones hold. */
static int look_at_blocked(worker *w, int64_t now)
{
    int load = 0;
    for (int i = 0; i < w->n_active; i++) {
        pool_task *t = w->active[i];
        bool blocked = t->blocked && t->blocked(t);
        if (!blocked)
            t->stalled_since_ns = 0;
        else if (!t->stalled_since_ns)
            t->stalled_since_ns = now;
        if (!blocked)
            load += api_job_weight(t->job);
    }
    return load;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    const int cap = p->max_batch + API_MAX_CHOICES;
    pool_task **taken = w->taken;
    for (;;) {
        int64_t now = clock_now_ns();
        int running = look_at_blocked(w, now);
        pthread_mutex_lock(&p->lock);
        p->load[w->index] = running;
        while (!p->stop && running == 0 && !p->head && !atomic_load(&p->abort_all)) {
            if (w->n_active == 0) {
                pthread_cond_wait(&p->wake, &p->lock);
            } else {
                /* Only blocked tasks: wait for a stream to drain, but look again soon for stalls. */
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_nsec += IDLE_LOOK_NS;
                until.tv_sec += until.tv_nsec / 1000000000;
                until.tv_nsec %= 1000000000;
                if (pthread_cond_timedwait(&p->wake, &p->lock, &until) != 0)
                    break;
            }
            pthread_mutex_unlock(&p->lock);
            running = look_at_blocked(w, clock_now_ns());
            pthread_mutex_lock(&p->lock);
            p->load[w->index] = running;
        }
        if (p->stop && w->n_active == 0 && !p->head) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        int n_taken = reserve_active(w, cap) == 0 ? take(w, taken, cap) : 0;
        pthread_mutex_unlock(&p->lock);
        api_worker_tidy(w->aw);

        /* Start what was taken together: scoring requests share one forward pass. */
        now = clock_now_ns();
        int n_start = 0;
        for (int i = 0; i < n_taken; i++)
            if (!check_leave(w, taken[i], now)) {
                taken[n_start] = taken[i];
                w->starting[n_start++] = taken[i]->job;
            }
        if (n_start)
            api_job_start_many(w->starting, n_start, w->aw);
        for (int i = 0; i < n_start; i++) {
            pool_task *t = taken[i];
            deliver(w, t);
            if (api_job_done(t->job))
                finish(w, t, false);
            else
                w->active[w->n_active++] = t;
        }

        /* Leave what must leave; step what is not blocked, at most max_batch sequences. */
        now = clock_now_ns();
        int kept = 0, n_run = 0, weight = 0;
        for (int i = 0; i < w->n_active; i++) {
            pool_task *t = w->active[i];
            if (check_leave(w, t, now))
                continue;
            w->active[kept++] = t;
            bool blocked = t->blocked && t->blocked(t);
            if (!blocked && weight + api_job_weight(t->job) <= p->max_batch + API_MAX_CHOICES) {
                w->jobs[n_run++] = t->job;
                weight += api_job_weight(t->job);
            }
        }
        w->n_active = kept;
        if (n_run == 0)
            continue;

        int B = api_step(w->aw, w->jobs, n_run);
        if (B > 0)
            metrics_batch(p->ctx->metrics, B);
        kept = 0;
        for (int i = 0; i < w->n_active; i++) {
            pool_task *t = w->active[i];
            deliver(w, t);
            if (api_job_done(t->job))
                finish(w, t, false);
            else
                w->active[kept++] = t;
        }
        w->n_active = kept;
    }
    return NULL;
}

pool *pool_new(const api_ctx *ctx, int workers, int queue, int max_batch, double stall_seconds, char *err,
               size_t errlen)
{
    pool *p = calloc(1, sizeof *p);
    if (!p) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    p->ctx = ctx;
    p->queue_cap = queue;
    p->max_batch = max_batch;
    p->n_workers = workers;
    p->stall_seconds = stall_seconds;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->load = calloc((size_t)workers, sizeof *p->load);
    p->w = calloc((size_t)workers, sizeof *p->w);
    if (!p->load || !p->w) {
        err_set(err, errlen, "out of memory");
        pool_free(p);
        return NULL;
    }
    const int cap = max_batch + API_MAX_CHOICES;
    for (int i = 0; i < workers; i++) {
        worker *w = &p->w[i];
        w->p = p;
        w->index = i;
        w->aw = api_worker_new(cap);
        w->taken = malloc((size_t)cap * sizeof *w->taken);
        w->starting = malloc((size_t)cap * sizeof *w->starting);
        if (!w->aw || !w->taken || !w->starting || reserve_active(w, cap) < 0) {
            err_set(err, errlen, "out of memory for worker %d", i);
            pool_free(p);
            return NULL;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            err_set(err, errlen, "cannot start worker thread %d", i);
            pool_free(p);
            return NULL;
        }
        w->started = true;
    }
    return p;
}

void pool_free(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; p->w && i < p->n_workers; i++) {
        worker *w = &p->w[i];
        if (w->started)
            pthread_join(w->thread, NULL);
        api_worker_free(w->aw);
        free(w->active);
        free(w->jobs);
        free(w->taken);
        free(w->starting);
    }
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->load);
    free(p->w);
    free(p);
}

int pool_submit(pool *p, pool_task *t)
{
    pthread_mutex_lock(&p->lock);
    if (p->stop || p->queued >= p->queue_cap) {
        pthread_mutex_unlock(&p->lock);
        return -1;
    }
    t->next = NULL;
    t->stalled_since_ns = 0;
    t->end_status = 0;
    if (p->tail)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    p->queued++;
    p->queued_weight += api_job_weight(t->job);
    atomic_fetch_add_explicit(&p->ctx->metrics->queue_depth, 1, memory_order_relaxed);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

void pool_kick(pool *p)
{
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

void pool_abort(pool *p, const api_error *e)
{
    pthread_mutex_lock(&p->lock);
    p->abort_error = *e;
    atomic_store(&p->abort_all, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
}
