/* Exact integer matrix product for the portable engine (tinylmz/kernel.py builds and loads it).
 *
 *   out[i][j] = sum_k x[i][k] * w[j][k]      x int16 (n x K), w int8 (N x K), out int64
 *
 * Integer arithmetic is exact whatever the instruction set, so this kernel gives
 * the same numbers as the numpy path on every machine; it is only faster.
 * The bulk is done in tiles of rows of x times rows of w, with AVX-512 VNNI or
 * AVX2 where the compiler targets them (-march=native) and plain C otherwise.
 */
#include <math.h>
#include <stdint.h>

/* Threads split outputs, never sums (OpenMP when the compiler has it, else one thread). */
#ifdef _OPENMP
#include <omp.h>
static inline int64_t omp_thread(void) { return omp_get_thread_num(); }
#define PRAGMA(x) _Pragma(#x)
#define PARALLEL_FOR(nt) PRAGMA(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
#else
static inline int64_t omp_thread(void) { return 0; }
#define PARALLEL_FOR(nt)
#endif


/* Blocks of KB products are summed in int32, then added into int64.  Every
 * product is at most 32767 * 127 < 2^22 in magnitude (|x| <= 32767: the engine
 * quantizes to +-32767, never -32768).  An int32 lane therefore holds at most
 * 2048/32 sums of two products with AVX-512 (< 2^29), 2048/16 with AVX2
 * (< 2^30), and 256 single products in plain C (< 2^30): no lane overflows, so
 * every path returns the exact integer product.
 */

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define KB 2048
#define VEC 32 /* int16 lanes per vector */
#define TR 4   /* rows of x per tile */
#define TC 4   /* rows of w per tile */
typedef __m512i acc_t;
static inline acc_t acc_zero(void) { return _mm512_setzero_si512(); }
static inline acc_t load_x(const int16_t *p) { return _mm512_loadu_si512((const void *)p); }
static inline acc_t load_w(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
static inline acc_t mac(acc_t a, acc_t x, acc_t w) { return _mm512_dpwssd_epi32(a, x, w); }
static inline int64_t acc_sum(acc_t a)
{
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)),
                                                    _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1))));
}
#elif defined(__AVX2__)
#include <immintrin.h>
#define KB 2048
#define VEC 16
#define TR 2
#define TC 4
typedef __m256i acc_t;
static inline acc_t acc_zero(void) { return _mm256_setzero_si256(); }
static inline acc_t load_x(const int16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline acc_t load_w(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline acc_t mac(acc_t a, acc_t x, acc_t w) { return _mm256_add_epi32(a, _mm256_madd_epi16(x, w)); }
static inline int64_t acc_sum(acc_t a)
{
    int32_t l[8];
    _mm256_storeu_si256((__m256i *)l, a);
    int64_t s = 0;
    for (int i = 0; i < 8; i++)
        s += l[i];
    return s;
}
#else /* plain C: the compiler vectorizes what it can */
#define KB 256
#define VEC 1
#define TR 4
#define TC 4
typedef int32_t acc_t;
static inline acc_t acc_zero(void) { return 0; }
static inline acc_t load_x(const int16_t *p) { return *p; }
static inline acc_t load_w(const int8_t *p) { return *p; }
static inline acc_t mac(acc_t a, acc_t x, acc_t w) { return a + x * w; }
static inline int64_t acc_sum(acc_t a) { return a; }
#endif

/* TR rows of x times TC rows of w: the loads are shared across the tile. */
static void tile(const int16_t *x, int64_t K, const int8_t *w, int64_t *o, int64_t N)
{
    int64_t t[TR][TC] = {{0}};
    int64_t Kv = K - K % VEC;
    for (int64_t k0 = 0; k0 < Kv; k0 += KB) {
        int64_t k1 = k0 + KB < Kv ? k0 + KB : Kv;
        acc_t a[TR][TC];
        for (int r = 0; r < TR; r++)
            for (int c = 0; c < TC; c++)
                a[r][c] = acc_zero();
        for (int64_t k = k0; k < k1; k += VEC) {
            acc_t wv[TC];
            for (int c = 0; c < TC; c++)
                wv[c] = load_w(w + c * K + k);
            for (int r = 0; r < TR; r++) {
                acc_t xv = load_x(x + r * K + k);
                for (int c = 0; c < TC; c++)
                    a[r][c] = mac(a[r][c], xv, wv[c]);
            }
        }
        for (int r = 0; r < TR; r++)
            for (int c = 0; c < TC; c++)
                t[r][c] += acc_sum(a[r][c]);
    }
    for (int64_t k = Kv; k < K; k++)
        for (int r = 0; r < TR; r++)
            for (int c = 0; c < TC; c++)
                t[r][c] += (int32_t)x[r * K + k] * (int32_t)w[c * K + k];
    for (int r = 0; r < TR; r++)
        for (int c = 0; c < TC; c++)
            o[r * N + c] = t[r][c];
}

static int64_t row1(const int16_t *xr, const int8_t *wr, int64_t K)
{
    int64_t total = 0, Kv = K - K % VEC;
    for (int64_t k0 = 0; k0 < Kv; k0 += KB) {
        int64_t k1 = k0 + KB < Kv ? k0 + KB : Kv;
        acc_t a = acc_zero();
        for (int64_t k = k0; k < k1; k += VEC)
            a = mac(a, load_x(xr + k), load_w(wr + k));
        total += acc_sum(a);
    }
    for (int64_t k = Kv; k < K; k++)
        total += (int32_t)xr[k] * (int32_t)wr[k];
    return total;
}

/* Columns j0..j1-1 of out (so threads can split the weight rows): the exact products,
 * int64.  With y != NULL they are also dequantized, y[i][j] = ((double)out[i][j] * sx[i]) * ws[j]:
 * the same two IEEE multiplications, in the same order, as numpy's ``acc * sx * w.scale``
 * (the product converts to double exactly: it is below 2^53).
 */
void qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1,
           int64_t N, int64_t *out, const double *sx, const double *ws, double *y)
{
    int64_t nr = n - n % TR, j = j0;
    for (; j + TC <= j1; j += TC) {
        for (int64_t i = 0; i < nr; i += TR)
            tile(x + i * K, K, w + j * K, out + i * N + j, N);
        for (int64_t i = nr; i < n; i++)
            for (int c = 0; c < TC; c++)
                out[i * N + j + c] = row1(x + i * K, w + (j + c) * K, K);
    }
    for (; j < j1; j++)
        for (int64_t i = 0; i < n; i++)
            out[i * N + j] = row1(x + i * K, w + j * K, K);
    if (y)
        for (int64_t i = 0; i < n; i++)
            for (j = j0; j < j1; j++)
                y[i * N + j] = ((double)out[i * N + j] * sx[i]) * ws[j];
}

/* qgemm over all N columns with nt threads (OpenMP when the compiler has it, else one):
 * each thread takes a contiguous share of whole column tiles, so results do not depend on nt. */
int64_t qgemm_parallel(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void qgemm_mt(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t N, int64_t *out,
              const double *sx, const double *ws, double *y, int64_t nt)
{
    int64_t tiles = N / TC;
    PARALLEL_FOR(nt)
    for (int64_t c = 0; c < nt; c++) {
        int64_t j0 = tiles * c / nt * TC, j1 = c == nt - 1 ? N : tiles * (c + 1) / nt * TC;
        qgemm(x, n, K, w, j0, j1, N, out, sx, ws, y);
    }
}

/* Per-row symmetric quantization to int16, as engine_portable._quant(x, levels):
 * s = max|x| / levels (1 where the row is all zeros), q = rint(x / s). */
void quant16(const double *x, int64_t n, int64_t K, double levels, int16_t *q, double *scale)
{
    for (int64_t i = 0; i < n; i++) {
        const double *xr = x + i * K;
        double amax = 0.0;
        for (int64_t k = 0; k < K; k++) {
            double a = fabs(xr[k]);
            if (a > amax)
                amax = a;
        }
        double s = amax > 0 ? amax / levels : 1.0;
        for (int64_t k = 0; k < K; k++)
            q[i * K + k] = (int16_t)nearbyint(xr[k] / s);
        scale[i] = s;
    }
}

/* SwiGLU as engine_portable.silu(g) * u, for rows gu = [g | u] of 2 * F doubles:
 *   t = (clip(g, -R, R) + R) * steps;  i = floor(t);  f = t - i
 *   sig = S[i] + (S[i + 1] - S[i]) * f   (0 where g < -R);  out = (g * sig) * u
 */
void swiglu(const double *gu, int64_t n, int64_t F, const double *S, double R, double steps, double *out)
{
    for (int64_t r = 0; r < n; r++) {
        const double *g = gu + r * 2 * F, *u = g + F;
        double *o = out + r * F;
        for (int64_t k = 0; k < F; k++) {
            double c = g[k] < -R ? -R : (g[k] > R ? R : g[k]);
            double t = (c + R) * steps;
            double fi = floor(t);
            double f = t - fi;
            int64_t i = (int64_t)fi;
            double sig = S[i] + (S[i + 1] - S[i]) * f;
            if (g[k] < -R)
                sig = 0.0;
            o[k] = (g[k] * sig) * u[k];
        }
    }
}

/* Attention products, batched over B = streams x kv-heads; integer and exact.
 *
 *   qk: s[b][r][j] = sum_d q[b][r][d] * k[b][j][d]     q, k int8; |s| <= D * 127^2 (int32)
 *   pv: o[b][r][d] = sum_j p[b][r][j] * v[b][j][d]     p int32 (<= 2^16), v int8; int64
 *
 * k and v are read with a stride per batch (the cache's capacity), so the
 * cache is used in place without copies; rows of s and p have a stride ld (>= T),
 * so scores can be written into, and weights read from, part of a wider row.
 */
#include <stdlib.h>

/* Dot products of int8 vectors of length D stay below D * 127^2 < 2^31 for D <= 2^17, so
 * int32 is exact everywhere here.  The SIMD paths widen to int16 and use the same mac() as
 * the matrix product; 4 query rows share each key's loads. */
static void qk_rows(const int16_t *q16, const int8_t *kb, int64_t R, int64_t T, int64_t D, int32_t *s, int64_t ld)
{
#if VEC > 1
    acc_t kv[256 / VEC];
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        int64_t rn = R - r0 < 4 ? R - r0 : 4;
        for (int64_t j = 0; j < T; j++) {
            for (int64_t c = 0; c < D / VEC; c++)
                kv[c] = load_w(kb + j * D + c * VEC);
            for (int64_t r = r0; r < r0 + rn; r++) {
                acc_t a = acc_zero();
                for (int64_t c = 0; c < D / VEC; c++)
                    a = mac(a, load_x(q16 + r * D + c * VEC), kv[c]);
                s[r * ld + j] = (int32_t)acc_sum(a);
            }
        }
    }
#else
    (void)q16; (void)kb; (void)R; (void)T; (void)D; (void)s; (void)ld;
#endif
}

void qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t kstride, int32_t *s, int64_t ld)
{
    int simd = VEC > 1 && D % VEC == 0 && D <= 256;
    int16_t *q16 = simd ? malloc(sizeof(int16_t) * R * D) : NULL;
    if (!q16)
        simd = 0;
    for (int64_t b = 0; b < B; b++) {
        const int8_t *kb = k + b * kstride;
        if (simd) {
            for (int64_t i = 0; i < R * D; i++)
                q16[i] = q[b * R * D + i];
            qk_rows(q16, kb, R, T, D, s + b * R * ld, ld);
            continue;
        }
        for (int64_t r = 0; r < R; r++) {
            const int8_t *qr = q + (b * R + r) * D;
            int32_t *sr = s + (b * R + r) * ld;
            for (int64_t j = 0; j < T; j++) {
                const int8_t *kj = kb + j * D;
                int32_t acc = 0;
                for (int64_t d = 0; d < D; d++)
                    acc += (int32_t)qr[d] * (int32_t)kj[d];
                sr[j] = acc;
            }
        }
    }
    free(q16);
}

/* p <= 2^16 and |v| <= 127: 128 products sum below 2^31, so int32 partial sums in blocks of
 * 128 keys, added into int64.  4 query rows share each value row's loads; a key whose weight
 * is 0 in all of them is skipped. */
void pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t vstride, int64_t *o, int64_t ld)
{
    for (int64_t b = 0; b < B; b++) {
        const int8_t *vb = v + b * vstride;
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            int64_t rn = R - r0 < 4 ? R - r0 : 4;
            const int32_t *pr = p + (b * R + r0) * ld;
            int64_t acc[4][256];
            int32_t part[4][256];
            for (int64_t r = 0; r < rn; r++)
                for (int64_t d = 0; d < D; d++)
                    acc[r][d] = 0;
#if defined(__AVX512F__)
            if (D == 64) { /* the common head size: 4 rows x 64 in 16 registers (missing rows weigh 0) */
                for (int64_t j0 = 0; j0 < T; j0 += 128) {
                    int64_t j1 = j0 + 128 < T ? j0 + 128 : T;
                    __m512i a[4][4];
                    for (int r = 0; r < 4; r++)
                        for (int c = 0; c < 4; c++)
                            a[r][c] = _mm512_setzero_si512();
                    for (int64_t j = j0; j < j1; j++) {
                        int32_t pj[4] = {0, 0, 0, 0};
                        for (int64_t r = 0; r < rn; r++)
                            pj[r] = pr[r * ld + j];
                        if (!(pj[0] | pj[1] | pj[2] | pj[3]))
                            continue;
                        const int8_t *vj = vb + j * D;
                        __m512i vv[4];
                        for (int c = 0; c < 4; c++)
                            vv[c] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vj + 16 * c)));
                        for (int r = 0; r < 4; r++) {
                            __m512i pb = _mm512_set1_epi32(pj[r]);
                            for (int c = 0; c < 4; c++)
                                a[r][c] = _mm512_add_epi32(a[r][c], _mm512_mullo_epi32(pb, vv[c]));
                        }
                    }
                    for (int r = 0; r < rn; r++)
                        for (int c = 0; c < 4; c++) {
                            _mm512_storeu_si512(part[r] + 16 * c, a[r][c]);
                            for (int i = 0; i < 16; i++)
                                acc[r][16 * c + i] += part[r][16 * c + i];
                        }
                }
                for (int64_t r = 0; r < rn; r++)
                    for (int64_t d = 0; d < 64; d++)
                        o[(b * R + r0 + r) * D + d] = acc[r][d];
                continue;
            }
#endif
            for (int64_t j0 = 0; j0 < T; j0 += 128) {
                int64_t j1 = j0 + 128 < T ? j0 + 128 : T;
                for (int64_t r = 0; r < rn; r++)
                    for (int64_t d = 0; d < D; d++)
                        part[r][d] = 0;
                for (int64_t j = j0; j < j1; j++) {
                    const int8_t *vj = vb + j * D;
                    int32_t any = 0;
                    for (int64_t r = 0; r < rn; r++)
                        any |= pr[r * ld + j];
                    if (!any)
                        continue;
                    for (int64_t r = 0; r < rn; r++) {
                        int32_t pj = pr[r * ld + j];
                        for (int64_t d = 0; d < D; d++)
                            part[r][d] += pj * (int32_t)vj[d];
                    }
                }
                for (int64_t r = 0; r < rn; r++)
                    for (int64_t d = 0; d < D; d++)
                        acc[r][d] += part[r][d];
            }
            for (int64_t r = 0; r < rn; r++)
                for (int64_t d = 0; d < D; d++)
                    o[(b * R + r0 + r) * D + d] = acc[r][d];
        }
    }
}

/* Integer scores -> integer attention weights, exactly as engine_portable._attend_numpy does it
 * (same IEEE double operations in the same order; build with -ffp-contract=off so that no
 * multiply-add is fused).  For query row r at position pos[r], keys j < T, key j visible
 * when j <= pos[r]:
 *     s      = ((acc * sq[r]) * sk[j]) * inv
 *     d      = min(rint((max_visible(s) - s) * steps), L - 1)
 *     e      = table[d]                        (0 for invisible keys)
 *     p      = rint(e * (sv[j] / svmax[r]))
 *     esum   = sum_j e
 * The scales of keys j < P come from sk0/sv0 (a shared prefix), the others from sk/sv at j - P,
 * so a shared context's scales are read in place, never copied per stream.
 */
static void softmax_rows(const int32_t *acc, const double *sq, const double *sk0, const double *sv0, int64_t P,
                         const double *sk, const double *sv, const double *svmax, const int64_t *pos, int64_t R,
                         int64_t T, double inv, double steps, const int64_t *table, int64_t L, int32_t *p,
                         int64_t *esum, double *sbuf, double *ratio)
{
    int64_t have = 0; /* ratio[j] = sv[j] / ratio_sm is valid for j < have (rows mostly share svmax) */
    double ratio_sm = 0;
    for (int64_t r = 0; r < R; r++) {
        const int32_t *ar = acc + r * T;
        int32_t *pr = p + r * T;
        int64_t vis = pos[r] + 1 < T ? pos[r] + 1 : T, shared = vis < P ? vis : P;
        double qs = sq[r], m = -INFINITY, sm = svmax[r];
        for (int64_t j = 0; j < shared; j++)
            sbuf[j] = (((double)ar[j] * qs) * sk0[j]) * inv;
        for (int64_t j = shared; j < vis; j++)
            sbuf[j] = (((double)ar[j] * qs) * sk[j - P]) * inv;
        for (int64_t j = 0; j < vis; j++)
            m = sbuf[j] > m ? sbuf[j] : m;
        if (sm != ratio_sm)
            have = 0;
        for (int64_t j = have; j < shared; j++)
            ratio[j] = sv0[j] / sm;
        for (int64_t j = have > shared ? have : shared; j < vis; j++)
            ratio[j] = sv[j - P] / sm;
        if (vis > have)
            have = vis;
        ratio_sm = sm;
        int64_t total = 0;
        for (int64_t j = 0; j < vis; j++) {
            double d = nearbyint((m - sbuf[j]) * steps);
            int64_t e = table[d < (double)(L - 1) ? (int64_t)d : L - 1];
            total += e;
            pr[j] = (int32_t)nearbyint((double)e * ratio[j]);
        }
        for (int64_t j = vis; j < T; j++)
            pr[j] = 0;
        esum[r] = total;
    }
}

/* Cumulative frequency tables, exactly as freqs.frequencies + cumsum (read its docstring).
 * logits float32 (n x V); width >= V symbols (ids >= V get frequency 1); table = EXP
 * (L entries, the last 0); cum int64 (n x (width + 1)): cum[0] = 0, cum[width] = total.
 * Float steps: one multiplication by 256 (exact) and rint (round half to even, the
 * default rounding mode, as numpy's rint); everything after is integer.
 */
void freq_cum(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table,
              int64_t L, int64_t total, int32_t *fixed_rows, int64_t *cum, int64_t nt)
{
    const float limit = 16777216.0f; /* 2^24, freqs.LIMIT */
    PARALLEL_FOR(nt)
    for (int64_t i = 0; i < n; i++) {
        const float *lr = logits + i * V;
        int32_t *fixed = fixed_rows + i * V; /* rows are independent: a scratch row each */
        int64_t *c = cum + i * (width + 1);
        int32_t top = INT32_MIN;
        int64_t arg = 0;
        for (int64_t j = 0; j < V; j++) {
            float x = lr[j] * 256.0f;
            if (isnan(x))
                x = -limit;
            x = x > limit ? limit : (x < -limit ? -limit : x);
            int32_t q = (int32_t)nearbyintf(x);
            fixed[j] = q;
            if (q > top) {
                top = q;
                arg = j;
            }
        }
        int64_t wsum = 0;
        for (int64_t j = 0; j < V; j++) {
            int64_t d = (int64_t)top - fixed[j];
            wsum += table[d < L - 1 ? d : L - 1];
        }
        int64_t spread = total - width, fsum = 0;
        c[0] = 0;
        for (int64_t j = 0; j < V; j++) {
            int64_t d = (int64_t)top - fixed[j];
            int64_t f = 1 + table[d < L - 1 ? d : L - 1] * spread / wsum;
            fsum += f;
            c[j + 1] = f; /* frequencies first; summed below once the top one is fixed */
        }
        fsum += width - V;
        c[arg + 1] += total - fsum;
        for (int64_t j = 0; j < V; j++)
            c[j + 1] += c[j];
        for (int64_t j = V; j < width; j++)
            c[j + 1] = c[j] + 1;
    }
}

/* Threaded forms of qk, pv and softmax_p (OpenMP when available, else serial): tasks are
 * whole batches when there are enough of them, otherwise row ranges of each batch.  Each
 * task computes its own outputs with the functions above, so nt never changes a result.
 * FOR_TASKS runs `body` once per task with b (the batch) and r0..r1 (its rows) set. */
#define FOR_TASKS(B, R, nt, body)                                                         \
    do {                                                                                  \
        int64_t rc_ = (B) >= 2 * (nt) || (R) < (nt) ? 1 : (nt);                           \
        PARALLEL_FOR(nt)                                                                  \
        for (int64_t t_ = 0; t_ < (B) * rc_; t_++) {                                      \
            int64_t b = t_ / rc_, r0 = (R) * (t_ % rc_) / rc_, r1 = (R) * (t_ % rc_ + 1) / rc_; \
            body;                                                                         \
        }                                                                                 \
    } while (0)

void qk_mt(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
           int64_t kstride, int32_t *s, int64_t sb, int64_t ld, int64_t nt)
{
    FOR_TASKS(B, R, nt, qk(q + (b * R + r0) * D, k + b * kstride, 1, r1 - r0, T, D, kstride, s + b * sb + r0 * ld, ld));
}

void pv_mt(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
           int64_t vstride, int64_t *o, int64_t pb, int64_t ld, int64_t nt)
{
    FOR_TASKS(B, R, nt, pv(p + b * pb + r0 * ld, v + b * vstride, 1, r1 - r0, T, D, vstride, o + (b * R + r0) * D, ld));
}

/* B = streams x KV heads; own scales sk/sv with a stride per batch, shared-prefix scales
 * sk0/sv0 with strides s0n per stream and s0h per head (s0n = 0: one prefix for all streams). */
void softmax_p_mt(const int32_t *acc, const double *sq, const double *sk0, const double *sv0, int64_t P,
                  int64_t s0n, int64_t s0h, int64_t KV, const double *sk, const double *sv, const double *svmax,
                  const int64_t *pos, int64_t B, int64_t R, int64_t T, int64_t stride, double inv, double steps,
                  const int64_t *table, int64_t L, int32_t *p, int64_t *esum, int64_t nt)
{
    double *scratch = malloc(sizeof(double) * 2 * (T > 0 ? T : 1) * (nt > 0 ? nt : 1));
    if (!scratch) { /* the caller checks esum > 0 (every row sees its own key) */
        for (int64_t i = 0; i < B * R; i++)
            esum[i] = 0;
        return;
    }
    FOR_TASKS(B, R, nt, int64_t i = b * R + r0;
              int64_t me = nt > 1 ? omp_thread() : 0;
              int64_t h0 = (b / KV) * s0n + (b % KV) * s0h;
              softmax_rows(acc + i * T, sq + i, sk0 + h0, sv0 + h0, P, sk + b * stride, sv + b * stride, svmax + i,
                           pos + r0, r1 - r0, T, inv, steps, table, L, p + i * T, esum + i,
                           scratch + 2 * T * me, scratch + 2 * T * me + T));
    free(scratch);
}
