/* The kernels' thread pool (pool.c): tasks claimed one at a time, so a descheduled thread
 * stalls nobody.  fn(ctx, task, me) runs once per task; me in 0..nt-1 indexes scratch. */
#ifndef TINYLMZ_POOL_H
#define TINYLMZ_POOL_H
#include <stdint.h>

typedef void (*pool_fn)(void *ctx, int64_t task, int64_t me);
void pool_for(int64_t ntasks, int64_t nt, pool_fn fn, void *ctx);
int64_t pool_threaded(void);
void pool_set_spin(int64_t worker_ns, int64_t caller_ns);
int64_t pool_calls(int64_t me); /* jobs worker `me` (1..) has answered so far */

/* How many tasks to cut work of `units` independent pieces into for nt threads: a few per
 * thread, so that a late thread's share is picked up by the others. */
static inline int64_t pool_tasks(int64_t units, int64_t nt)
{
    int64_t t = nt > 1 ? 8 * nt : 1;
    return t < units ? t : (units > 0 ? units : 1);
}
#endif
