#include "common.h"

/* Frequency tables, exactly as freqs.frequencies (read its docstring).  logits float32
 * (n x V); width >= V symbols (ids >= V get frequency 1); table = EXP as int32 (L entries, the last 0).
 * Float steps: one multiplication by 256 (exact) and rint (round half to even, the default
 * rounding mode, as numpy's rint); everything after is integer.  A frequency depends on d
 * only, so each row first tabulates F[d] = 1 + EXP[d] * (total - width) / wsum for the d
 * that occur (at most L divisions instead of V). */
typedef struct {
    int32_t top;
    int64_t arg, dmax, adjust; /* adjust: added to the first maximum's frequency */
} freq_row_t;

/* The passes over a row, with AVX-512 forms that do the same operations 16 ids at a time
 * (integer maxima and sums do not depend on order; the float steps are the same IEEE ones). */

/* fixed[j] = rint(clamp(lr[j] * 256)) (NaN as -limit); returns the row's maximum. */
static int32_t fixed_row(const float *lr, int64_t V, int32_t *fixed)
{
    const float limit = 16777216.0f; /* 2^24, freqs.LIMIT */
    int32_t top = INT32_MIN;
    int64_t j = 0;
#if defined(__AVX512F__)
    const __m512 s = _mm512_set1_ps(256.0f), hi = _mm512_set1_ps(limit), lo = _mm512_set1_ps(-limit);
    __m512i m = _mm512_set1_epi32(INT32_MIN);
    for (; j + 16 <= V; j += 16) {
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(lr + j), s);
        x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, lo);
        x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
        __m512i q = _mm512_cvtps_epi32(_mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_storeu_si512(fixed + j, q);
        m = _mm512_max_epi32(m, q);
    }
    top = _mm512_reduce_max_epi32(m);
#endif
    for (; j < V; j++) {
        float x = lr[j] * 256.0f;
        if (isnan(x))
            x = -limit;
        x = x > limit ? limit : (x < -limit ? -limit : x);
        int32_t q = (int32_t)nearbyintf(x);
        fixed[j] = q;
        top = q > top ? q : top;
    }
    return top;
}

static int32_t max_i32(const int32_t *a, int64_t V)
{
    int32_t top = INT32_MIN;
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512i m = _mm512_set1_epi32(INT32_MIN);
    for (; j + 16 <= V; j += 16)
        m = _mm512_max_epi32(m, _mm512_loadu_si512(a + j));
    top = _mm512_reduce_max_epi32(m);
#endif
    for (; j < V; j++)
        top = a[j] > top ? a[j] : top;
    return top;
}

/* The first j with fixed[j] == top (there is one). */
static int64_t first_at(const int32_t *fixed, int64_t V, int32_t top)
{
    int64_t j = 0;
#if defined(__AVX512F__)
    const __m512i t = _mm512_set1_epi32(top);
    for (; j + 16 <= V; j += 16) {
        __mmask16 e = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(fixed + j), t);
        if (e)
            return j + __builtin_ctz(e);
    }
#endif
    for (; j < V; j++)
        if (fixed[j] == top)
            return j;
    return 0;
}

/* fixed[j] = min(top - fixed[j], L - 1) in place; returns sum(table[d]); *dmax = max d. */
static int64_t distances(int32_t *fixed, int64_t V, int32_t top, const int32_t *table, int64_t L, int64_t *dmax)
{
    int64_t wsum = 0, j = 0, mx = 0;
#if defined(__AVX512F__)
    const __m512i t = _mm512_set1_epi32(top), lim = _mm512_set1_epi32((int32_t)(L - 1));
    __m512i sum = _mm512_setzero_si512(), m = _mm512_setzero_si512();
    for (; j + 16 <= V; j += 16) {
        __m512i d = _mm512_min_epi32(_mm512_sub_epi32(t, _mm512_loadu_si512(fixed + j)), lim);
        _mm512_storeu_si512(fixed + j, d);
        m = _mm512_max_epi32(m, d);
        __m512i e = _mm512_i32gather_epi32(d, table, 4); /* EXP <= 2^30: int32 entries, int64 sums */
        sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(e)));
        sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(e, 1)));
    }
    wsum = _mm512_reduce_add_epi64(sum);
    mx = _mm512_reduce_max_epi32(m);
#endif
    for (; j < V; j++) {
        int64_t d = (int64_t)top - fixed[j];
        d = d < L - 1 ? d : L - 1;
        fixed[j] = (int32_t)d;
        wsum += table[d];
        mx = d > mx ? d : mx;
    }
    *dmax = mx;
    return wsum;
}

/* sum of F[dist[j]] for j0 <= j < j1 (F <= 2^28 + 1 and a row's frequencies sum to total <= 2^28,
 * so int32 lanes hold any part of a row's sum). */
static int64_t fsum_range(const int32_t *dist, int64_t j0, int64_t j1, const int32_t *F)
{
    int64_t total = 0, j = j0;
#if defined(__AVX512F__)
    __m512i sum = _mm512_setzero_si512();
    for (; j + 16 <= j1; j += 16)
        sum = _mm512_add_epi32(sum, _mm512_i32gather_epi32(_mm512_loadu_si512(dist + j), F, 4));
    total = (int64_t)(uint32_t)_mm512_reduce_add_epi32(sum);
#endif
    for (; j < j1; j++)
        total += F[dist[j]];
    return total;
}

/* The row's frequency procedure up to its table F[d] (freqs.frequencies): fixed becomes the
 * clamped distance to the top, and the frequency of id j is F[fixed[j]] (+ adjust at arg).
 * below_at >= 0: also returns in *below the sum of the frequencies of ids < below_at (< V),
 * from the same pass that sums them all. */
static freq_row_t freq_row(const float *lr, int64_t V, int64_t width, const int32_t *table, int64_t L, int64_t total, int32_t *fixed, int32_t *F, int64_t nb, const int64_t *bx,
                           const int32_t *bv, int64_t below_at, int64_t *below)
{
    freq_row_t r = {INT32_MIN, 0, 0, 0};
    r.top = fixed_row(lr, V, fixed);
    if (nb > 0) { /* fixed-point logits set by the caller (the adaptive models' biased values) */
        for (int64_t k = 0; k < nb; k++)
            fixed[bx[k]] = bv[k];
        r.top = max_i32(fixed, V);
    }
    r.arg = first_at(fixed, V, r.top);
    int64_t wsum = distances(fixed, V, r.top, table, L, &r.dmax);
    int64_t spread = total - width, fsum = width - V;
    int64_t d = 0;
    for (; d <= r.dmax && (int64_t)table[d] * spread >= wsum; d++) /* table decreases: past here the quotient is 0 */
        F[d] = (int32_t)(1 + (int64_t)table[d] * spread / wsum);
    for (; d <= r.dmax; d++)
        F[d] = 1;
    if (below_at >= 0) {
        int64_t part = fsum_range(fixed, 0, below_at, F);
        *below = part;
        fsum += part + fsum_range(fixed, below_at, V, F);
    } else {
        fsum += fsum_range(fixed, 0, V, F);
    }
    r.adjust = total - fsum;
    return r;
}

/* Rows are independent: each task takes a run of rows, with one scratch table F per thread. */
typedef struct {
    const float *logits;
    int64_t n, V, width, L, total, tasks;
    const int32_t *table; /* EXP, int32: its entries are <= 2^30 */
    int32_t *fixed_rows;
    int32_t *F_all; /* per thread a table F (int32: <= 2^28 + 1) */
    int64_t *cum, *freq;
    /* freq_pick: per row nb[i] <= maxb logits set to bv at ids bx; their frequencies out in fx */
    const int64_t *nb, *bx;
    const int32_t *bv;
    int64_t maxb, decode, *sym, *fx;
} freq_job;

/* Run task over the job's rows on nt threads, each with its scratch table F (0: out of memory). */
static int64_t run_rows(freq_job *j, int64_t nt, void (*task)(void *, int64_t, int64_t))
{
    if (j->total > (1 << 30))
        return 0; /* the int32 tables and sums above hold frequencies up to 2^30 only */
    if (nt > j->n)
        nt = j->n > 0 ? j->n : 1;
    if (nt < 1)
        nt = 1;
    j->F_all = malloc(sizeof(int32_t) * (size_t)(j->L * nt));
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
    int64_t V = j->V, width = j->width;
    int32_t *F = j->F_all + j->L * me;
    for (int64_t i = j->n * t / j->tasks; i < j->n * (t + 1) / j->tasks; i++) {
        int32_t *fixed = j->fixed_rows + i * V;
        int64_t *c = j->cum + i * (width + 1);
        freq_row_t r = freq_row(j->logits + i * V, V, width, j->table, j->L, j->total, fixed, F, 0, NULL, NULL, -1,
                                NULL);
        c[0] = 0;
        for (int64_t k = 0; k < V; k++)
            c[k + 1] = c[k] + F[fixed[k]] + (k == r.arg ? r.adjust : 0);
        for (int64_t k = V; k < width; k++)
            c[k + 1] = c[k] + 1;
    }
}

int64_t freq_cum(const float *logits, int64_t n, int64_t V, int64_t width, const int32_t *table,
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
    int64_t V = j->V, width = j->width;
    int32_t *F = j->F_all + j->L * me;
    for (int64_t i = j->n * t / j->tasks; i < j->n * (t + 1) / j->tasks; i++) {
        int32_t *fixed = j->fixed_rows + i * V;
        const int64_t *bx = j->bx ? j->bx + i * j->maxb : NULL;
        int64_t nb = j->nb ? j->nb[i] : 0;
        int64_t below = 0, s, m = j->decode ? -1 : (j->sym[i] < V ? j->sym[i] : V);
        freq_row_t r = freq_row(j->logits + i * V, V, width, j->table, j->L, j->total, fixed, F, nb, bx,
                                j->bv ? j->bv + i * j->maxb : NULL, m, &below);
        if (j->decode) {
            int64_t v = j->sym[i], s0 = 0;
            for (; s0 + 64 <= V; s0 += 64) { /* whole blocks first: every frequency is >= 1 */
                int64_t b = fsum_range(fixed, s0, s0 + 64, F) + (r.arg >= s0 && r.arg < s0 + 64 ? r.adjust : 0);
                if (below + b > v)
                    break;
                below += b;
            }
            for (s = s0; s < V; s++) {
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
            below += s - m + (r.arg < s ? r.adjust : 0);
        }
        j->cum[i] = below;
        j->freq[i] = (s < V ? F[fixed[s]] : 1) + (s == r.arg ? r.adjust : 0);
        for (int64_t k = 0; k < nb; k++)
            j->fx[i * j->maxb + k] = F[fixed[bx[k]]] + (bx[k] == r.arg ? r.adjust : 0);
    }
}

int64_t freq_pick(const float *logits, int64_t n, int64_t V, int64_t width, const int32_t *table, int64_t L,
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
int64_t freq_sym(const float *logits, int64_t n, int64_t V, int64_t width, const int32_t *table, int64_t L,
                 int64_t total, const int64_t *ids, int32_t *fixed_rows, int64_t *cum, int64_t *freq, int64_t nt)
{
    freq_job j = {logits, n, V, width, L, total, n > 0 ? n : 1, table, fixed_rows, NULL, cum, freq,
                  NULL, NULL, NULL, 0, 0, (int64_t *)ids, NULL};
    return run_rows(&j, nt, pick_task);
}
