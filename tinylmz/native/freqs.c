#include "common.h"

/* Frequency tables, exactly as freqs.frequencies (read its docstring).  logits float32
 * (n x V); width >= V symbols (ids >= V get frequency 1); table = EXP (L entries, the last 0).
 * Float steps: one multiplication by 256 (exact) and rint (round half to even, the default
 * rounding mode, as numpy's rint); everything after is integer.  A frequency depends on d
 * only, so each row first tabulates F[d] = 1 + EXP[d] * (total - width) / wsum for the d
 * that occur (at most L divisions instead of V). */
typedef struct {
    int32_t top;
    int64_t arg, dmax, adjust; /* adjust: added to the first maximum's frequency */
} freq_row_t;

static freq_row_t freq_row(const float *lr, int64_t V, int64_t width, const int64_t *table, int64_t L,
                           int64_t total, int32_t *fixed, int64_t *F, int64_t nb, const int64_t *bx,
                           const int32_t *bv)
{
    const float limit = 16777216.0f; /* 2^24, freqs.LIMIT */
    freq_row_t r = {INT32_MIN, 0, 0, 0};
    for (int64_t j = 0; j < V; j++) {
        float x = lr[j] * 256.0f;
        if (isnan(x))
            x = -limit;
        x = x > limit ? limit : (x < -limit ? -limit : x);
        int32_t q = (int32_t)nearbyintf(x);
        fixed[j] = q;
        if (q > r.top) {
            r.top = q;
            r.arg = j;
        }
    }
    if (nb > 0) { /* fixed-point logits set by the caller (the adaptive models' biased values) */
        for (int64_t k = 0; k < nb; k++)
            fixed[bx[k]] = bv[k];
        r.top = INT32_MIN;
        for (int64_t j = 0; j < V; j++)
            if (fixed[j] > r.top) {
                r.top = fixed[j];
                r.arg = j;
            }
    }
    int64_t wsum = 0;
    for (int64_t j = 0; j < V; j++) {
        int64_t d = (int64_t)r.top - fixed[j];
        d = d < L - 1 ? d : L - 1;
        fixed[j] = (int32_t)d; /* from here on, the clamped distance to the top */
        wsum += table[d];
        r.dmax = d > r.dmax ? d : r.dmax;
    }
    int64_t spread = total - width, fsum = width - V;
    for (int64_t d = 0; d <= r.dmax; d++)
        F[d] = 1 + table[d] * spread / wsum;
    for (int64_t j = 0; j < V; j++)
        fsum += F[fixed[j]];
    r.adjust = total - fsum;
    return r;
}

/* Rows are independent: each task takes a run of rows, with one scratch table F per thread. */
typedef struct {
    const float *logits;
    int64_t n, V, width, L, total, tasks;
    const int64_t *table;
    int32_t *fixed_rows;
    int64_t *F_all, *cum, *freq;
    /* freq_pick: per row nb[i] <= maxb logits set to bv at ids bx; their frequencies out in fx */
    const int64_t *nb, *bx;
    const int32_t *bv;
    int64_t maxb, decode, *sym, *fx;
} freq_job;

/* Run task over the job's rows on nt threads, each with its scratch table F (0: out of memory). */
static int64_t run_rows(freq_job *j, int64_t nt, void (*task)(void *, int64_t, int64_t))
{
    if (nt > j->n)
        nt = j->n > 0 ? j->n : 1;
    if (nt < 1)
        nt = 1;
    j->F_all = malloc(sizeof(int64_t) * (size_t)(j->L * nt));
    if (!j->F_all)
        return 0;
    pool_for(j->tasks, nt, task, j);
    free(j->F_all);
    return 1;
}

/* Cumulative tables cum int64 (n x (width + 1)): cum[0] = 0, cum[width] = total (the decoder). */
static void cum_task(void *p, int64_t t, int64_t me)
{
    const freq_job *j = p;
    int64_t V = j->V, width = j->width, *F = j->F_all + j->L * me;
    for (int64_t i = j->n * t / j->tasks; i < j->n * (t + 1) / j->tasks; i++) {
        int32_t *fixed = j->fixed_rows + i * V;
        int64_t *c = j->cum + i * (width + 1);
        freq_row_t r = freq_row(j->logits + i * V, V, width, j->table, j->L, j->total, fixed, F, 0, NULL, NULL);
        c[0] = 0;
        for (int64_t k = 0; k < V; k++)
            c[k + 1] = c[k] + F[fixed[k]] + (k == r.arg ? r.adjust : 0);
        for (int64_t k = V; k < width; k++)
            c[k + 1] = c[k] + 1;
    }
}

int64_t freq_cum(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table,
                 int64_t L, int64_t total, int32_t *fixed_rows, int64_t *cum, int64_t nt)
{
    freq_job j = {logits, n, V, width, L, total, n > 0 ? n : 1, table, fixed_rows, NULL, cum, NULL};
    return run_rows(&j, nt, cum_task);
}

/* One symbol per row, without whole tables: the row's logits, with nb[i] fixed-point values bv
 * set at ids bx (< V) first, give the frequency table of freqs.frequencies.  decode = 0: sym[i]
 * is the row's symbol; decode = 1: sym[i] is a target in [0, total) and becomes the symbol s
 * with cum[s] <= target < cum[s + 1] (the decoder's search).  Out: cum[i] and freq[i] of that
 * symbol, and fx[i * maxb + k] the frequency of bx[i * maxb + k] (the adaptive models learn
 * from them). */
static void pick_task(void *p, int64_t t, int64_t me)
{
    const freq_job *j = p;
    int64_t V = j->V, width = j->width, *F = j->F_all + j->L * me;
    for (int64_t i = j->n * t / j->tasks; i < j->n * (t + 1) / j->tasks; i++) {
        int32_t *fixed = j->fixed_rows + i * V;
        const int64_t *bx = j->bx ? j->bx + i * j->maxb : NULL;
        int64_t nb = j->nb ? j->nb[i] : 0;
        freq_row_t r = freq_row(j->logits + i * V, V, width, j->table, j->L, j->total, fixed, F, nb, bx,
                                j->bv ? j->bv + i * j->maxb : NULL);
        int64_t below = 0, s;
        if (j->decode) {
            int64_t v = j->sym[i];
            for (s = 0; s < V; s++) {
                int64_t f = F[fixed[s]] + (s == r.arg ? r.adjust : 0);
                if (below + f > v)
                    break;
                below += f;
            }
            if (s == V) { /* past the logits every symbol weighs 1 */
                s = V + (v - below);
                below = v;
            }
            j->sym[i] = s;
        } else {
            s = j->sym[i];
            int64_t m = s < V ? s : V;
            for (int64_t k = 0; k < m; k++)
                below += F[fixed[k]];
            below += s - m + (r.arg < s ? r.adjust : 0);
        }
        j->cum[i] = below;
        j->freq[i] = (s < V ? F[fixed[s]] : 1) + (s == r.arg ? r.adjust : 0);
        for (int64_t k = 0; k < nb; k++)
            j->fx[i * j->maxb + k] = F[fixed[bx[k]]] + (bx[k] == r.arg ? r.adjust : 0);
    }
}

int64_t freq_pick(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table, int64_t L,
                  int64_t total, const int64_t *nb, const int64_t *bx, const int32_t *bv, int64_t maxb,
                  int64_t decode, int64_t *sym, int32_t *fixed_rows, int64_t *cum, int64_t *freq, int64_t *fx,
                  int64_t nt)
{
    freq_job j = {logits, n, V, width, L, total, n > 0 ? n : 1, table, fixed_rows, NULL, cum, freq,
                  nb, bx, bv, maxb, decode, sym, fx};
    return run_rows(&j, nt, pick_task);
}

/* The encoder's part: for each row i, the cumulative frequency below ids[i] and its frequency
 * (freq_pick's coding half, no logits set; ids are only read when coding). */
int64_t freq_sym(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table, int64_t L,
                 int64_t total, const int64_t *ids, int32_t *fixed_rows, int64_t *cum, int64_t *freq, int64_t nt)
{
    freq_job j = {logits, n, V, width, L, total, n > 0 ? n : 1, table, fixed_rows, NULL, cum, freq,
                  NULL, NULL, NULL, 0, 0, (int64_t *)ids, NULL};
    return run_rows(&j, nt, pick_task);
}
