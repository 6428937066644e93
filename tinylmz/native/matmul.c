/* Exact integer matrix products for the portable engine.
 *
 *   out[i][j] = sum_k x[i][k] * w[j][k]      x int16 (n x K), w int8 (N x K), out int64
 *
 * Integer arithmetic is exact whatever the instruction set, so this kernel gives
 * the same numbers as the numpy path on every machine; it is only faster.
 * The bulk is done in tiles of rows of x times rows of w, with AVX-512 VNNI or
 * AVX2 where the compiler targets them (-march=native) and plain C otherwise.
 */
#include "common.h"

/* tr (<= TR) rows of x times TC rows of w: the loads are shared across the tile.  tr is a
 * constant where it is called, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile_rows(const int16_t *x, int64_t K, const int8_t *w, int64_t *o,
                                                            int64_t N, int tr)
{
    int64_t t[TR][TC] = {{0}};
    int64_t Kv = K - K % VEC;
    for (int64_t k0 = 0; k0 < Kv; k0 += KB) {
        int64_t k1 = k0 + KB < Kv ? k0 + KB : Kv;
        acc_t a[TR][TC];
        for (int r = 0; r < tr; r++)
            for (int c = 0; c < TC; c++)
                a[r][c] = acc_zero();
        for (int64_t k = k0; k < k1; k += VEC) {
            acc_t wv[TC];
            for (int c = 0; c < TC; c++)
                wv[c] = load_w(w + c * K + k);
            for (int r = 0; r < tr; r++) {
                acc_t xv = load_x(x + r * K + k);
                for (int c = 0; c < TC; c++)
                    a[r][c] = mac(a[r][c], xv, wv[c]);
            }
        }
        for (int r = 0; r < tr; r++) {
#if defined(ACC_SUM4) && TC == 4
            acc_sum4(a[r], t[r]);
#else
            for (int c = 0; c < TC; c++)
                t[r][c] += acc_sum(a[r][c]);
#endif
        }
    }
    for (int64_t k = Kv; k < K; k++)
        for (int r = 0; r < tr; r++)
            for (int c = 0; c < TC; c++)
                t[r][c] += (int32_t)x[r * K + k] * (int32_t)w[c * K + k];
    for (int r = 0; r < tr; r++)
        for (int c = 0; c < TC; c++)
            o[r * N + c] = t[r][c];
}

static void tile(const int16_t *x, int64_t K, const int8_t *w, int64_t *o, int64_t N) { tile_rows(x, K, w, o, N, TR); }
static void tile1(const int16_t *x, int64_t K, const int8_t *w, int64_t *o, int64_t N) { tile_rows(x, K, w, o, N, 1); }

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
#ifdef TINYLMZ_NEON
    if (neon_qgemm(x, n, K, w, j0, j1, N, out)) /* sdot, where the compiler targets it */
        j = j1;
    else
#endif
    for (; j + TC <= j1; j += TC) {
        for (int64_t i = 0; i < nr; i += TR)
            tile(x + i * K, K, w + j * K, out + i * N + j, N);
        for (int64_t i = nr; i < n; i++)
            tile1(x + i * K, K, w + j * K, out + i * N + j, N);
    }
    for (; j < j1; j++)
        for (int64_t i = 0; i < n; i++)
            out[i * N + j] = row1(x + i * K, w + j * K, K);
    if (y)
        for (int64_t i = 0; i < n; i++)
            for (j = j0; j < j1; j++)
                y[i * N + j] = ((double)out[i * N + j] * sx[i]) * ws[j];
}

/* qgemm over all N columns with nt threads (pool.c): tasks are contiguous runs of whole
 * column tiles, each written by one thread, so results do not depend on nt. */
int64_t qgemm_parallel(void) { return pool_threaded(); }

typedef struct {
    const int16_t *x;
    int64_t n, K, N, tiles, tasks;
    const int8_t *w;
    int64_t *out;
    const double *sx, *ws;
    double *y;
} qgemm_job;

/* First tile of task t of `tasks` over `tiles` (t = tasks: the end).  With an even number of at
 * least 4 tasks they come in two rounds: the first half of them covers 3/4 of the tiles, the
 * second half the last quarter, so that the thread that ends its first-round task last waits
 * for a short one.  Shared by both product paths. */
static int64_t task_edge(int64_t tiles, int64_t tasks, int64_t t)
{
    int64_t half = tasks / 2, first = tiles * 3 / 4;
    if (tasks < 4 || tasks % 2)
        return tiles * t / tasks;
    return t <= half ? first * t / half : first + (tiles - first) * (t - half) / half;
}

/* Up to 8 rows (a decoder step of a few streams), two long tasks per thread, each a run of
 * consecutive tiles (task_edge): with pool_tasks' 8 per thread, 7-row products took a quarter
 * to a third longer on the packed path, and threading one- or two-row products made a
 * one-stream step slower there.  More rows are arithmetic and gain from the finer split (20
 * rows: two rounds took 1.5 times as long). */
static int64_t product_tasks(int64_t tiles, int64_t n, int64_t nt)
{
    return nt > 1 && tiles >= 2 * nt && n <= 8 ? 2 * nt : pool_tasks(tiles, nt);
}

static void qgemm_task(void *p, int64_t c, int64_t me)
{
    const qgemm_job *j = p;
    (void)me;
    int64_t j0 = task_edge(j->tiles, j->tasks, c) * TC;
    int64_t j1 = c == j->tasks - 1 ? j->N : task_edge(j->tiles, j->tasks, c + 1) * TC;
    qgemm(j->x, j->n, j->K, j->w, j0, j1, j->N, j->out, j->sx, j->ws, j->y);
}

/* The thread rule of int8-rows products, in one place (as qgemm_lanes has its own): products
 * under 2^17 multiply-adds run on the calling thread (a hand-off costs more than they take),
 * the others in product_tasks.  Before, products under 2^22 ran on one thread, which on AVX2
 * (no VNNI) left a one-stream decoder step's products, and a 7-stream step's qkv and o
 * products, on one core. */
void qgemm_mt(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t N, int64_t *out,
              const double *sx, const double *ws, double *y, int64_t nt)
{
    int64_t tiles = N / TC;
    if (n * N * K < 1 << 17 || tiles < 2)
        nt = 1;
    if (nt <= 1) {
        qgemm(x, n, K, w, 0, N, N, out, sx, ws, y);
        return;
    }
    qgemm_job j = {x, n, K, N, tiles, product_tasks(tiles, n, nt), w, out, sx, ws, y};
    pool_for(j.tasks, nt, qgemm_task, &j);
}

/* The same product with outputs in the vector lanes (AVX-512 VNNI): no horizontal sums.
 *
 * Weights are packed once (kernel.pack) in blocks of 16 rows: block b, quad kq holds
 * w[16 b + l][4 kq .. 4 kq + 3] in int32 lane l.  Each int16 x is split into bytes,
 * x = 256 hi + lo (lo = x & 255, hi = x >> 8), and vpdpbusd multiplies unsigned bytes by
 * signed ones, so hi enters as hi + 128 and 128 * sum_k w[j][k] (wsum) is taken off again:
 *     x . w = 256 (sum (hi + 128) w - 128 wsum) + sum lo w.
 * Each int32 lane sums at most K * 255 * 127 < 2^31 for K <= 2^16 (the caller checks K);
 * the final value is formed in int64.  Exact integers: the same numbers as qgemm. */
int64_t qgemm_lanes_available(void)
{
#if LANES
    return 1;
#else
    return 0;
#endif
}

#if LANES
#define LTR 4 /* rows of x per tile */

#define LTC 2 /* blocks of 16 weight rows per tile */
static inline __attribute__((always_inline)) void lanes_tile(
    const int32_t *xl, const int32_t *xh, int64_t K4, const int8_t *w, int64_t wstride, const int32_t *wsum,
    const int tr, const int tc, int64_t *out, int64_t N, const double *sx, const double *ws, double *y, int pf)
{
    __m512i al[LTR][LTC], ah[LTR][LTC];
    for (int r = 0; r < tr; r++)
        for (int c = 0; c < tc; c++)
            al[r][c] = ah[r][c] = _mm512_setzero_si512();
    if (tr == 4 && tc == 2) { /* the main tile, written out: GCC keeps these 16 sums in registers */
        __m512i l00 = al[0][0], l01 = al[0][1], l10 = al[1][0], l11 = al[1][1];
        __m512i l20 = al[2][0], l21 = al[2][1], l30 = al[3][0], l31 = al[3][1];
        __m512i h00 = ah[0][0], h01 = ah[0][1], h10 = ah[1][0], h11 = ah[1][1];
        __m512i h20 = ah[2][0], h21 = ah[2][1], h30 = ah[3][0], h31 = ah[3][1];
        const int8_t *w1 = w + wstride;
        for (int64_t kq = 0; kq < K4; kq++) {
            /* the weights two tiles on (4 * wstride): their fetch from memory overlaps these
             * products (prefetches never fault, past the matrix's end too; one tile on measured the same) */
            if (pf) {
                _mm_prefetch((const char *)(w + 4 * wstride + kq * 64), _MM_HINT_T0);
                _mm_prefetch((const char *)(w1 + 4 * wstride + kq * 64), _MM_HINT_T0);
            }
            __m512i w0 = _mm512_loadu_si512((const void *)(w + kq * 64));
            __m512i v1 = _mm512_loadu_si512((const void *)(w1 + kq * 64));
            __m512i b;
#define ROW(r, l0, l1, h0, h1)                                                      \
            b = _mm512_set1_epi32(xl[r * K4 + kq]);                                 \
            l0 = _mm512_dpbusd_epi32(l0, b, w0), l1 = _mm512_dpbusd_epi32(l1, b, v1);  \
            b = _mm512_set1_epi32(xh[r * K4 + kq]);                                 \
            h0 = _mm512_dpbusd_epi32(h0, b, w0), h1 = _mm512_dpbusd_epi32(h1, b, v1);
            ROW(0, l00, l01, h00, h01)
            ROW(1, l10, l11, h10, h11)
            ROW(2, l20, l21, h20, h21)
            ROW(3, l30, l31, h30, h31)
#undef ROW
        }
        al[0][0] = l00, al[0][1] = l01, al[1][0] = l10, al[1][1] = l11;
        al[2][0] = l20, al[2][1] = l21, al[3][0] = l30, al[3][1] = l31;
        ah[0][0] = h00, ah[0][1] = h01, ah[1][0] = h10, ah[1][1] = h11;
        ah[2][0] = h20, ah[2][1] = h21, ah[3][0] = h30, ah[3][1] = h31;
    } else
    for (int64_t kq = 0; kq < K4; kq++) {
        __m512i wv[LTC];
        for (int c = 0; c < tc && pf; c++)
            _mm_prefetch((const char *)(w + (tc + c) * wstride + kq * 64), _MM_HINT_T0);
        for (int c = 0; c < tc; c++)
            wv[c] = _mm512_loadu_si512((const void *)(w + c * wstride + kq * 64));
        for (int r = 0; r < tr; r++) {
            __m512i bl = _mm512_set1_epi32(xl[r * K4 + kq]), bh = _mm512_set1_epi32(xh[r * K4 + kq]);
            for (int c = 0; c < tc; c++) {
                al[r][c] = _mm512_dpbusd_epi32(al[r][c], bl, wv[c]);
                ah[r][c] = _mm512_dpbusd_epi32(ah[r][c], bh, wv[c]);
            }
        }
    }
    for (int c = 0; c < tc; c++) {
        __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(wsum + 16 * c)), 7);
        for (int r = 0; r < tr; r++) {
            __m512i h = _mm512_sub_epi32(ah[r][c], corr);
            for (int half = 0; half < 2; half++) {
                __m256i h8 = half ? _mm512_extracti64x4_epi64(h, 1) : _mm512_castsi512_si256(h);
                __m256i l8 = half ? _mm512_extracti64x4_epi64(al[r][c], 1) : _mm512_castsi512_si256(al[r][c]);
                __m512i v = _mm512_add_epi64(_mm512_slli_epi64(_mm512_cvtepi32_epi64(h8), 8), _mm512_cvtepi32_epi64(l8));
                int64_t j = 16 * c + 8 * half;
                if (out)
                    _mm512_storeu_si512((void *)(out + r * N + j), v);
                if (y) /* ((double)acc * sx[i]) * ws[j], as numpy; |acc| < 2^53 converts exactly */
                    _mm512_storeu_pd(y + r * N + j, _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(v),
                                                                               _mm512_set1_pd(sx[r])),
                                                                 _mm512_loadu_pd(ws + j)));
            }
        }
    }
}

#define LANES_TILE(tr, tc) lanes_tile(xl + i * K4, xh + i * K4, K4, wb, K4 * 64, wsum + 16 * b, tr, tc, \
                                      out ? out + i * N + 16 * b : 0, N, sx ? sx + i : 0, ws ? ws + 16 * b : 0, \
                                      y ? y + i * N + 16 * b : 0, i == 0) /* the first row tile prefetches */
/* Blocks b0..b1-1 of 16 weight rows, all n rows of x (given split: xl, xh, n x K4 int32). */
static void lanes_blocks(const int32_t *xl, const int32_t *xh, int64_t n, int64_t K4, const int8_t *wp,
                         const int32_t *wsum, int64_t b0, int64_t b1, int64_t N, int64_t *out,
                         const double *sx, const double *ws, double *y)
{
    /* Rows in tiles of 4, the rest in tiles of 3 (6 = 3 + 3), 2 or 1: a tile of 1 or 2 rows has
     * too few independent sums to hide the products' latency. */
    int64_t full = n % 4 == 2 && n > 2 ? n - 6 : n - n % 4;
    int64_t b = b0;
    for (; b + LTC <= b1; b += LTC) {
        const int8_t *wb = wp + b * K4 * 64;
        int64_t i = 0;
        for (; i < full; i += LTR)
            LANES_TILE(LTR, LTC);
        for (; i < n; i += 3)
            switch (n - i) {
            case 1: LANES_TILE(1, LTC); break;
            case 2: LANES_TILE(2, LTC); break;
            default: LANES_TILE(3, LTC); break;
            }
    }
    for (; b < b1; b++) {
        const int8_t *wb = wp + b * K4 * 64;
        int64_t i = 0;
        for (; i + LTR <= n; i += LTR)
            LANES_TILE(LTR, 1);
        for (; i < n; i++)
            LANES_TILE(1, 1);
    }
}
typedef struct {
    const int32_t *xl, *xh;
    int64_t n, K4;
    const int8_t *wp;
    const int32_t *wsum;
    int64_t blocks, tiles, tasks, N;
    int64_t *out;
    const double *sx, *ws;
    double *y;
} lanes_job;

static void lanes_task(void *p, int64_t t, int64_t me)
{
    const lanes_job *j = p;
    (void)me;
    int64_t b0 = task_edge(j->tiles, j->tasks, t) * LTC, b1 = task_edge(j->tiles, j->tasks, t + 1) * LTC;
    lanes_blocks(j->xl, j->xh, j->n, j->K4, j->wp, j->wsum, b0, b1 < j->blocks ? b1 : j->blocks, j->N, j->out,
                 j->sx, j->ws, j->y);
}
#endif


/* x (n x K int16) times packed weights (N rows, N a multiple of 16, K4 = ceil(K / 4) quads):
 * out (int64, optional) and y = dequantized (optional), with up to nt threads splitting blocks
 * of rows of w.  Returns 0 where the kernel lacks this path or memory runs out (nothing written). */
int64_t qgemm_lanes(const int16_t *x, int64_t n, int64_t K, const int8_t *wp, const int32_t *wsum, int64_t N,
                    int64_t *out, const double *sx, const double *ws, double *y, int64_t nt)
{
#if LANES
    int64_t K4 = (K + 3) / 4;
    if (N % 16 || K > 65536)
        return 0;
    uint8_t *xs = aligned_alloc(64, (size_t)((2 * n * K4 * 4 + 127) / 64 * 64)); /* a multiple of 64 (C11) */
    if (!xs)
        return 0;
    uint8_t *xl = xs, *xh = xs + n * K4 * 4;
    for (int64_t i = 0; i < n; i++) {
        const int16_t *xi = x + i * K;
        uint8_t *li = xl + i * K4 * 4, *hi = xh + i * K4 * 4;
        for (int64_t k = 0; k < K; k++) {
            li[k] = (uint8_t)(xi[k] & 255);
            hi[k] = (uint8_t)((xi[k] >> 8) + 128);
        }
        for (int64_t k = K; k < K4 * 4; k++)
            li[k] = 0, hi[k] = 128; /* x = 0 */
    }
    int64_t blocks = N / 16, tiles = (blocks + LTC - 1) / LTC;
    /* Products of one or two rows are bound by reading the weights, and threads pay for them
     * from 2^17 multiply-adds; more rows from 2^20 on. */
    int small = n <= 2;
    if (n * N * K < (small ? 1 << 17 : 1 << 20))
        nt = 1;
    int64_t tasks = product_tasks(tiles, n, nt);
    lanes_job j = {(const int32_t *)xl, (const int32_t *)xh, n, K4, wp, wsum, blocks, tiles, tasks, N, out, sx, ws, y};
    pool_for(j.tasks, nt, lanes_task, &j);
    free(xs);
    return 1;
#else
    (void)x; (void)n; (void)K; (void)wp; (void)wsum; (void)N; (void)out; (void)sx; (void)ws; (void)y; (void)nt;
    return 0;
#endif
}

