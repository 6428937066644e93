/* A thread pool for the kernels that stays fast when other processes hold cores.
 *
 * pool_for(ntasks, nt, fn, ctx) runs fn(ctx, task, me) for task = 0..ntasks-1 on up to nt
 * threads (the caller is me = 0, pool workers 1..nt-1; `me` indexes per-thread scratch).
 * Tasks are claimed one at a time from a shared counter, so a thread that the OS has
 * descheduled delays nobody: the others take the tasks it did not claim, and the caller
 * waits only for tasks already running.  (OpenMP's static schedule and closing barrier made
 * every parallel section wait for the slowest thread: 10x slower with 2 threads than 1 when
 * another process held a core.)  Which thread runs a task never changes a result: each task
 * writes its own outputs.
 *
 * Waiting: each worker has its own bell, rung only for the jobs it may take part in (me <
 * nt), so workers beyond a job's thread count neither wake nor spin for it (with one word
 * for all, a pool started with 3 threads, then run with 2 on 2 cores, woke its third worker,
 * possibly in place of the second, and it took CPU from the two that worked).  A worker
 * spins on its bell for a while after each job (wake-ups are then immediate), and sleeps on
 * it (a futex) once the spin budget is spent.  The budget halves whenever the worker arrives
 * too late to get a task (the machine is busy: spinning only takes time from the threads
 * that do the work) and doubles when it gets one.  The caller spins briefly on the
 * tasks still running, then sleeps until the last one ends, so an idle core is free for
 * the thread it waits for.
 *
 * The job state is one 64-bit word: generation << 32 | next task.  A claim is a
 * compare-and-swap on it, so a worker holding a stale generation can never take a task of
 * another job; the job's parameters sit in one of four slots, rewritten only after the job
 * three generations later has started, i.e. after this one ended.
 */
#include "pool.h"

#if defined(__linux__) && !defined(TINYLMZ_NO_POOL)
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define POOL_MAX 64
#define SPIN_MIN_NS 2000LL
static int64_t spin_max_ns = 400000LL, caller_spin_ns = 20000LL;

typedef struct {
    _Atomic(pool_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t ntasks, nt;
    _Atomic uint32_t done;    /* tasks finished (futex word of the caller) */
    _Atomic uint32_t waiting; /* the caller sleeps on done */
} slot_t;

static _Atomic uint64_t state; /* generation << 32 | next task */

typedef struct {
    _Atomic uint32_t bell;  /* the last generation this worker was called for (its futex word) */
    _Atomic int32_t asleep; /* it sleeps on bell, or is about to */
    _Atomic int64_t calls;  /* bells it answered (pool_calls: the tests check who is called) */
    char pad[48];           /* one cache line per worker: the caller writes them all */
} seat_t;
static seat_t seats[POOL_MAX];
static slot_t slots[4];
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t started; /* workers running (indices 1..started) */

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Claim and run tasks of generation g; returns how many this thread ran. */
static int64_t work(uint32_t g, int64_t me)
{
    int64_t ran = 0;
    for (;;) {
        uint64_t w = atomic_load_explicit(&state, memory_order_acquire);
        if ((uint32_t)(w >> 32) != g)
            return ran;
        slot_t *s = &slots[g & 3];
        int64_t n = atomic_load_explicit(&s->ntasks, memory_order_relaxed);
        int64_t nt = atomic_load_explicit(&s->nt, memory_order_relaxed);
        pool_fn fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&s->ctx, memory_order_relaxed);
        int64_t i = (int64_t)(uint32_t)w;
        if (me >= nt || i >= n)
            return ran;
        if (!atomic_compare_exchange_weak_explicit(&state, &w, w + 1, memory_order_acq_rel, memory_order_relaxed))
            continue; /* another claim (or a new job) came first */
        fn(ctx, i, me);
        ran++;
        uint32_t d = atomic_fetch_add(&s->done, 1) + 1; /* seq_cst: ordered against the caller's `waiting` */
        if (d == (uint32_t)n && me != 0 && atomic_load(&s->waiting))
            futex_wake(&s->done, 1);
    }
}

static void *worker(void *arg)
{
    int64_t me = (int64_t)(intptr_t)arg, spin = spin_max_ns;
    seat_t *seat = &seats[me];
    uint32_t seen = atomic_load(&seat->bell);
    for (;;) {
        uint32_t g = atomic_load_explicit(&seat->bell, memory_order_acquire);
        if (g == seen) {
            int64_t until = now_ns() + spin;
            for (int k = 0; (g = atomic_load_explicit(&seat->bell, memory_order_acquire)) == seen; k++) {
                relax();
                if ((k & 63) == 63 && now_ns() > until) {
                    atomic_store(&seat->asleep, 1); /* seq_cst: ordered against the caller's bell */
                    if (atomic_load(&seat->bell) == seen)
                        futex_wait(&seat->bell, seen);
                    atomic_store(&seat->asleep, 0);
                    until = now_ns() + spin;
                }
            }
        }
        seen = g;
        atomic_fetch_add_explicit(&seat->calls, 1, memory_order_relaxed);
        if (work(g, me) > 0)
            spin = spin * 2 > spin_max_ns ? spin_max_ns : spin * 2;
        else
            spin = spin / 2 < SPIN_MIN_NS ? SPIN_MIN_NS : spin / 2;
    }
    return NULL;
}

static int64_t ensure_workers(int64_t want)
{
    if (want > POOL_MAX - 1)
        want = POOL_MAX - 1;
    if (started >= want)
        return started;
    pthread_mutex_lock(&start_lock);
    while (started < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&t, &attr, worker, (void *)(intptr_t)(started + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok)
            break;
        started++;
    }
    pthread_mutex_unlock(&start_lock);
    return started;
}

static void serial(int64_t ntasks, pool_fn fn, void *ctx)
{
    for (int64_t i = 0; i < ntasks; i++)
        fn(ctx, i, 0);
}

void pool_for(int64_t ntasks, int64_t nt, pool_fn fn, void *ctx)
{
    if (nt > ntasks)
        nt = ntasks;
    if (nt <= 1) {
        serial(ntasks, fn, ctx);
        return;
    }
    /* One job at a time; a second caller (another Python thread) runs its tasks itself. */
    if (pthread_mutex_trylock(&call_lock) != 0) {
        serial(ntasks, fn, ctx);
        return;
    }
    int64_t have = ensure_workers(nt - 1) + 1;
    if (nt > have)
        nt = have;
    uint32_t g = (uint32_t)(atomic_load(&state) >> 32) + 1;
    slot_t *s = &slots[g & 3];
    atomic_store_explicit(&s->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&s->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&s->ntasks, ntasks, memory_order_relaxed);
    atomic_store_explicit(&s->nt, nt, memory_order_relaxed);
    atomic_store_explicit(&s->done, 0, memory_order_relaxed);
    atomic_store_explicit(&s->waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&state, (uint64_t)g << 32, memory_order_release);
    for (int64_t i = 1; i < nt; i++) {
        atomic_store(&seats[i].bell, g); /* seq_cst: ordered against the worker's `asleep` */
        if (atomic_load(&seats[i].asleep))
            futex_wake(&seats[i].bell, 1);
    }
    work(g, 0);
    /* wait for the tasks other threads claimed and are still running */
    int64_t until = now_ns() + caller_spin_ns;
    for (int k = 0;; k++) {
        uint32_t d = atomic_load_explicit(&s->done, memory_order_acquire);
        if (d == (uint32_t)ntasks)
            break;
        relax();
        if ((k & 63) == 63 && now_ns() > until) {
            atomic_store(&s->waiting, 1);
            if (atomic_load(&s->done) == d)
                futex_wait(&s->done, d);
        }
    }
    pthread_mutex_unlock(&call_lock);
}

int64_t pool_threaded(void) { return 1; }

int64_t pool_calls(int64_t me) { return me > 0 && me < POOL_MAX ? atomic_load(&seats[me].calls) : 0; }

void pool_set_spin(int64_t worker_ns, int64_t caller_ns)
{
    spin_max_ns = worker_ns > SPIN_MIN_NS ? worker_ns : SPIN_MIN_NS;
    caller_spin_ns = caller_ns;
}

#else /* no futexes: one thread (results are the same; only speed differs) */

void pool_for(int64_t ntasks, int64_t nt, pool_fn fn, void *ctx)
{
    (void)nt;
    for (int64_t i = 0; i < ntasks; i++)
        fn(ctx, i, 0);
}

int64_t pool_threaded(void) { return 0; }

int64_t pool_calls(int64_t me) { (void)me; return 0; }

void pool_set_spin(int64_t worker_ns, int64_t caller_ns) { (void)worker_ns, (void)caller_ns; }

#endif
