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
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__)
#define LTR 4 /* rows of x per tile */
#define LTC 2 /* blocks of 16 weight rows per tile */
static inline __attribute__((always_inline)) void lanes_tile(
    const int32_t *xl, const int32_t *xh, int64_t K4, const int8_t *w, int64_t wstride, const int32_t *wsum,
    const int tr, const int tc, int64_t *out, int64_t N, const double *sx, const double *ws, double *y)
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
                                      y ? y + i * N + 16 * b : 0)
/* Blocks b0..b1-1 of 16 weight rows, all n rows of x (given split: xl, xh, n x K4 int32). */
static void lanes_blocks(const int32_t *xl, const int32_t *xh, int64_t n, int64_t K4, const int8_t *wp,
                         const int32_t *wsum, int64_t b0, int64_t b1, int64_t N, int64_t *out,
                         const double *sx, const double *ws, double *y)
{
    int64_t b = b0;
    for (; b + LTC <= b1; b += LTC) {
        const int8_t *wb = wp + b * K4 * 64;
        int64_t i = 0;
        for (; i + LTR <= n; i += LTR)
            LANES_TILE(LTR, LTC);
        for (; i < n; i++)
            LANES_TILE(1, LTC);
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
#endif

/* x (n x K int16) times packed weights (N rows, N a multiple of 16, K4 = ceil(K / 4) quads):
 * out (int64, optional) and y = dequantized (optional), with nt threads splitting blocks of rows
 * of w.  Returns 0 where the kernel lacks this path or memory runs out (nothing written). */
int64_t qgemm_lanes(const int16_t *x, int64_t n, int64_t K, const int8_t *wp, const int32_t *wsum, int64_t N,
                    int64_t *out, const double *sx, const double *ws, double *y, int64_t nt)
{
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__)
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
    if (nt > tiles)
        nt = tiles > 0 ? tiles : 1;
    PARALLEL_FOR(nt)
    for (int64_t t = 0; t < nt; t++) {
        int64_t b0 = tiles * t / nt * LTC, b1 = tiles * (t + 1) / nt * LTC;
        lanes_blocks((const int32_t *)xl, (const int32_t *)xh, n, K4, wp, wsum, b0, b1 < blocks ? b1 : blocks, N,
                     out, sx, ws, y);
    }
    free(xs);
    return 1;
#else
    (void)x; (void)n; (void)K; (void)wp; (void)wsum; (void)N; (void)out; (void)sx; (void)ws; (void)y; (void)nt;
    return 0;
#endif
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

/* RMSNorm as engine_portable.rmsnorm: x quantized to int16 per row (s, q = rint(x / s)),
 * ss = sum q^2 (integers: exact in any order), r = sqrt(s * s * ss / K + eps),
 * out = q * s / r * g, each step one IEEE operation in numpy's order. */
void rmsnorm(const double *x, int64_t n, int64_t K, const double *g, double eps, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        const double *xr = x + i * K;
        double *o = out + i * K, amax = 0.0, ss = 0.0;
        for (int64_t k = 0; k < K; k++) {
            double a = fabs(xr[k]);
            if (a > amax)
                amax = a;
        }
        double s = amax > 0 ? amax / 32767.0 : 1.0;
        for (int64_t k = 0; k < K; k++) {
            o[k] = nearbyint(xr[k] / s);
            ss += o[k] * o[k];
        }
        double r = sqrt(s * s * ss / (double)K + eps);
        for (int64_t k = 0; k < K; k++)
            o[k] = o[k] * s / r * g[k];
    }
}

/* RoPE as engine_portable.rope, rows of `heads` vectors of `dim` (row r starts at x + r * ld):
 * pairs (a, b) = x[2i], x[2i + 1] for i < half become (a c - b s, a s + b c), with c, s the
 * table entries of the row's position (row % t); the rest of each vector is copied. */
void rope(const double *x, int64_t rows, int64_t ld, int64_t t, int64_t heads, int64_t dim, int64_t half,
          const double *cos, const double *sin, double *out)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *c = cos + (r % t) * half, *sn = sin + (r % t) * half;
        for (int64_t h = 0; h < heads; h++) {
            const double *a = x + r * ld + h * dim;
            double *o = out + (r * heads + h) * dim;
            for (int64_t i = 0; i < half; i++) {
                o[2 * i] = a[2 * i] * c[i] - a[2 * i + 1] * sn[i];
                o[2 * i + 1] = a[2 * i] * sn[i] + a[2 * i + 1] * c[i];
            }
            for (int64_t d = 2 * half; d < dim; d++)
                o[d] = a[d];
        }
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

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define KEY_LANES 1
/* Many query rows against the same keys: lanes hold 16 keys, so no horizontal sums.  Each
 * block of 16 keys is transposed into D/4 vectors (lane j = bytes 4c..4c+3 of key j) and
 * multiplied with vpdpbusd, which takes unsigned bytes on one side: q + 128 (|q| <= 127, so
 * 1..255), and the excess 128 * sum_d k[j][d] is subtracted.  Every lane stays below
 * 255 * 127 * D < 2^31 (D <= 256): the same exact integers as the row-by-row path. */
static int qk_keys16(const int8_t *q, const int8_t *kb, int64_t R, int64_t T, int64_t D, int32_t *s, int64_t ld)
{
    int64_t C = D / 4, R8 = (R + 7) / 8 * 8;
    uint32_t *qu = calloc((size_t)(R8 * C), sizeof(uint32_t)); /* padding rows: computed, never stored */
    if (!qu)
        return 0;
    for (int64_t i = 0; i < R * D; i++)
        ((uint8_t *)qu)[i] = (uint8_t)q[i] ^ 0x80;
    __m512i kt[64];
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)D));
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t j0 = 0; j0 < T; j0 += 16) {
        int64_t nk = T - j0 < 16 ? T - j0 : 16;
        __mmask16 m = (__mmask16)((1u << nk) - 1);
        __m512i ksum = _mm512_setzero_si512();
        for (int64_t c = 0; c < C; c++) {
            kt[c] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, kb + j0 * D + 4 * c, 1);
            ksum = _mm512_dpbusd_epi32(ksum, ones, kt[c]); /* 1 * k: sums of signed bytes */
        }
        __m512i corr = _mm512_slli_epi32(ksum, 7);
        for (int64_t r0 = 0; r0 < R8; r0 += 8) {
            const uint32_t *qr = qu + r0 * C;
            __m512i a[8];
            for (int r = 0; r < 8; r++)
                a[r] = _mm512_setzero_si512();
            for (int64_t c = 0; c < C; c++)
                for (int r = 0; r < 8; r++)
                    a[r] = _mm512_dpbusd_epi32(a[r], _mm512_set1_epi32((int)qr[r * C + c]), kt[c]);
            int64_t rn = R - r0 < 8 ? R - r0 : 8;
            for (int64_t r = 0; r < rn; r++)
                _mm512_mask_storeu_epi32(s + (r0 + r) * ld + j0, m, _mm512_sub_epi32(a[r], corr));
        }
    }
    free(qu);
    return 1;
}
#else
#define KEY_LANES 0
#endif

void qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t kstride, int32_t *s, int64_t ld)
{
#if KEY_LANES
    if (R >= 8 && D % 4 == 0 && D <= 256) { /* enough rows to pay for the transposition */
        int64_t b = 0;
        while (b < B && qk_keys16(q + b * R * D, k + b * kstride, R, T, D, s + b * R * ld, ld))
            b++;
        q += b * R * D, k += b * kstride, s += b * R * ld, B -= b; /* the rest (if out of memory) below */
    }
#endif
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
#if KEY_LANES
/* pv for D = 64 and many rows with vpdpbusd: lanes hold values d, and each int32 lane sums
 * the products of 4 keys.  vpdpbusd takes unsigned bytes on one side, so each weight is split
 * into its low byte and its high byte (0 <= p <= 2^16), two sums that are combined as
 * 256 * hi + lo.  The one weight that does not split so, p = 2^16 (high byte 256), is coded
 * as 255 * 256 and the missing 256 * v added on its own.  A block of 128 keys keeps every int32
 * lane below 256 * 128 * 255 * 127 + 128 * 255 * 127 < 2^31 before it is added into int64. */
#define PV_KEYS 128
static int pv_quads64(const int32_t *p, const int8_t *vb, int64_t R, int64_t T, int64_t *o, int64_t ld)
{
    int64_t R2 = (R + 1) / 2 * 2, NQ = PV_KEYS / 4;
    /* vt: per quad of keys, 4 vectors; vector X, 128-bit lane L, dword i holds d = 16 L + 4 X + i */
    __m512i *vt = aligned_alloc(64, sizeof(__m512i) * (size_t)(NQ * 4 + 2 * R2 * NQ / 16 + 2));
    if (!vt)
        return 0;
    uint32_t *plo = (uint32_t *)(vt + NQ * 4), *phi = plo + R2 * NQ;
    for (int64_t i = 0; i < 2 * R2 * NQ; i++)
        plo[i] = 0; /* padding rows weigh 0 */
    for (int64_t i = 0; i < R * 64; i++)
        o[i] = 0;
    const __m512i lo8 = _mm512_set1_epi32(0xFF);
    for (int64_t j0 = 0; j0 < T; j0 += PV_KEYS) {
        int64_t nk = T - j0 < PV_KEYS ? T - j0 : PV_KEYS, nq = (nk + 3) / 4;
        for (int64_t qd = 0; qd < nq; qd++) {
            __m512i x[4];
            for (int i = 0; i < 4; i++)
                x[i] = 4 * qd + i < nk ? _mm512_loadu_si512((const void *)(vb + (j0 + 4 * qd + i) * 64))
                                       : _mm512_setzero_si512();
            __m512i ab0 = _mm512_unpacklo_epi8(x[0], x[1]), ab1 = _mm512_unpackhi_epi8(x[0], x[1]);
            __m512i cd0 = _mm512_unpacklo_epi8(x[2], x[3]), cd1 = _mm512_unpackhi_epi8(x[2], x[3]);
            vt[4 * qd + 0] = _mm512_unpacklo_epi16(ab0, cd0);
            vt[4 * qd + 1] = _mm512_unpackhi_epi16(ab0, cd0);
            vt[4 * qd + 2] = _mm512_unpacklo_epi16(ab1, cd1);
            vt[4 * qd + 3] = _mm512_unpackhi_epi16(ab1, cd1);
        }
        for (int64_t r = 0; r < R; r++)
            for (int64_t jj = 0; jj < nk; jj += 16) {
                __mmask16 m = (__mmask16)(nk - jj >= 16 ? 0xFFFF : (1u << (nk - jj)) - 1);
                __m512i w = _mm512_maskz_loadu_epi32(m, p + r * ld + j0 + jj);
                _mm_storeu_si128((__m128i *)(plo + r * NQ + jj / 4), _mm512_cvtepi32_epi8(_mm512_and_si512(w, lo8)));
                _mm_storeu_si128((__m128i *)(phi + r * NQ + jj / 4), _mm512_cvtusepi32_epi8(_mm512_srli_epi32(w, 8)));
                for (__mmask16 big = _mm512_cmpgt_epi32_mask(w, _mm512_set1_epi32(0xFFFF)); big; big &= big - 1) {
                    const int8_t *vj = vb + (j0 + jj + __builtin_ctz(big)) * 64;
                    for (int d = 0; d < 64; d++)
                        o[r * 64 + d] += 256 * (int64_t)vj[d];
                }
            }
        for (int64_t r0 = 0; r0 < R2; r0 += 2) {
            __m512i lo[2][4], hi[2][4];
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < 4; c++)
                    lo[r][c] = hi[r][c] = _mm512_setzero_si512();
            for (int64_t qd = 0; qd < nq; qd++) {
                __m512i vv[4];
                for (int c = 0; c < 4; c++)
                    vv[c] = _mm512_load_si512(vt + 4 * qd + c);
                for (int r = 0; r < 2; r++) {
                    __m512i bl = _mm512_set1_epi32((int)plo[(r0 + r) * NQ + qd]);
                    __m512i bh = _mm512_set1_epi32((int)phi[(r0 + r) * NQ + qd]);
                    for (int c = 0; c < 4; c++) {
                        lo[r][c] = _mm512_dpbusd_epi32(lo[r][c], bl, vv[c]);
                        hi[r][c] = _mm512_dpbusd_epi32(hi[r][c], bh, vv[c]);
                    }
                }
            }
            int64_t rn = R - r0 < 2 ? R - r0 : 2;
            for (int64_t r = 0; r < rn; r++) {
                __m512i t[4], n[4];
                for (int c = 0; c < 4; c++)
                    t[c] = _mm512_add_epi32(_mm512_slli_epi32(hi[r][c], 8), lo[r][c]);
                /* 4 x 4 transpose of 128-bit lanes: n[L] = lane L of t[0..3] = d 16 L .. 16 L + 15 */
                __m512i t01l = _mm512_shuffle_i32x4(t[0], t[1], 0x44), t23l = _mm512_shuffle_i32x4(t[2], t[3], 0x44);
                __m512i t01h = _mm512_shuffle_i32x4(t[0], t[1], 0xEE), t23h = _mm512_shuffle_i32x4(t[2], t[3], 0xEE);
                n[0] = _mm512_shuffle_i32x4(t01l, t23l, 0x88);
                n[1] = _mm512_shuffle_i32x4(t01l, t23l, 0xDD);
                n[2] = _mm512_shuffle_i32x4(t01h, t23h, 0x88);
                n[3] = _mm512_shuffle_i32x4(t01h, t23h, 0xDD);
                for (int c = 0; c < 4; c++) {
                    int64_t *out = o + (r0 + r) * 64 + 16 * c;
                    __m512i x0 = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(n[c]));
                    __m512i x1 = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(n[c], 1));
                    _mm512_storeu_si512(out, _mm512_add_epi64(_mm512_loadu_si512(out), x0));
                    _mm512_storeu_si512(out + 8, _mm512_add_epi64(_mm512_loadu_si512(out + 8), x1));
                }
            }
        }
    }
    free(vt);
    return 1;
}
#endif

void pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t vstride, int64_t *o, int64_t ld)
{
#if KEY_LANES
    if (R >= 8 && D == 64) { /* enough rows to pay for laying out the values */
        int64_t b = 0;
        while (b < B && pv_quads64(p + b * R * ld, v + b * vstride, R, T, o + b * R * D, ld))
            b++;
        p += b * R * ld, v += b * vstride, o += b * R * D, B -= b;
    }
#endif
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
/* The loops of softmax_rows.  The AVX-512 forms do the same IEEE double operations on 8 keys
 * at a time (the maximum and the integer sum do not depend on order), so their results are
 * the scalar loops' to the bit. */
static void scores(const int32_t *a, double qs, const double *sk, double inv, int64_t j0, int64_t j1, double *out)
{
    int64_t j = j0;
#if defined(__AVX512F__)
    __m512d vq = _mm512_set1_pd(qs), vi = _mm512_set1_pd(inv);
    for (; j + 8 <= j1; j += 8) {
        __m512d x = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(a + j)));
        x = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(x, vq), _mm512_loadu_pd(sk + j)), vi);
        _mm512_storeu_pd(out + j, x);
    }
#endif
    for (; j < j1; j++)
        out[j] = (((double)a[j] * qs) * sk[j]) * inv;
}

static double row_max(const double *x, int64_t n)
{
    double m = -INFINITY;
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512d v = _mm512_set1_pd(-INFINITY);
    for (; j + 8 <= n; j += 8)
        v = _mm512_max_pd(v, _mm512_loadu_pd(x + j));
    m = _mm512_reduce_max_pd(v);
#endif
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* e = table[min(rint((m - s) * steps), L - 1)];  p = rint(e * ratio);  returns sum(e). */
static int64_t weights(const double *s, const double *ratio, int64_t n, double m, double steps,
                       const int64_t *table, int64_t L, int32_t *p)
{
    int64_t total = 0, j = 0;
#if defined(__AVX512F__)
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512d vm = _mm512_set1_pd(m), vs = _mm512_set1_pd(steps), lim = _mm512_set1_pd((double)(L - 1));
    __m256i last = _mm256_set1_epi32((int)(L - 1));
    __m512i sum = _mm512_setzero_si512();
    for (; j + 8 <= n; j += 8) {
        __m512d d = _mm512_roundscale_pd(_mm512_mul_pd(_mm512_sub_pd(vm, _mm512_loadu_pd(s + j)), vs), rnd);
        __mmask8 in = _mm512_cmp_pd_mask(d, lim, _CMP_LT_OQ);
        __m256i i = _mm256_mask_blend_epi32(in, last, _mm512_cvttpd_epi32(d)); /* d >= 0 */
        __m512i e = _mm512_i32gather_epi64(i, (const void *)table, 8);
        sum = _mm512_add_epi64(sum, e);
        __m512d ed = _mm512_cvtepi32_pd(_mm512_cvtepi64_epi32(e)); /* e <= 2^16 */
        __m512d w = _mm512_roundscale_pd(_mm512_mul_pd(ed, _mm512_loadu_pd(ratio + j)), rnd);
        _mm256_storeu_si256((__m256i *)(p + j), _mm512_cvttpd_epi32(w));
    }
    total = _mm512_reduce_add_epi64(sum);
#endif
    for (; j < n; j++) {
        double d = nearbyint((m - s[j]) * steps);
        int64_t e = table[d < (double)(L - 1) ? (int64_t)d : L - 1];
        total += e;
        p[j] = (int32_t)nearbyint((double)e * ratio[j]);
    }
    return total;
}

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
        scores(ar, qs, sk0, inv, 0, shared, sbuf);
        scores(ar, qs, sk - P, inv, shared, vis, sbuf);
        m = row_max(sbuf, vis);
        if (sm != ratio_sm)
            have = 0;
        for (int64_t j = have; j < shared; j++)
            ratio[j] = sv0[j] / sm;
        for (int64_t j = have > shared ? have : shared; j < vis; j++)
            ratio[j] = sv[j - P] / sm;
        if (vis > have)
            have = vis;
        ratio_sm = sm;
        int64_t total = weights(sbuf, ratio, vis, m, steps, table, L, pr);
        for (int64_t j = vis; j < T; j++)
            pr[j] = 0;
        esum[r] = total;
    }
}

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
                           int64_t total, int32_t *fixed, int64_t *F)
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

/* Cumulative tables cum int64 (n x (width + 1)): cum[0] = 0, cum[width] = total (the decoder). */
int64_t freq_cum(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table,
                 int64_t L, int64_t total, int32_t *fixed_rows, int64_t *cum, int64_t nt)
{
    int64_t *F_all = malloc(sizeof(int64_t) * (size_t)(L * (nt > 0 ? nt : 1)));
    if (!F_all)
        return 0;
    PARALLEL_FOR(nt)
    for (int64_t i = 0; i < n; i++) {
        int32_t *fixed = fixed_rows + i * V; /* rows are independent: a scratch row each */
        int64_t *c = cum + i * (width + 1), *F = F_all + L * (nt > 1 ? omp_thread() : 0);
        freq_row_t r = freq_row(logits + i * V, V, width, table, L, total, fixed, F);
        c[0] = 0;
        for (int64_t j = 0; j < V; j++)
            c[j + 1] = c[j] + F[fixed[j]] + (j == r.arg ? r.adjust : 0);
        for (int64_t j = V; j < width; j++)
            c[j + 1] = c[j] + 1;
    }
    free(F_all);
    return 1;
}

/* The encoder's part: for each row i, the cumulative frequency below ids[i] and its frequency. */
int64_t freq_sym(const float *logits, int64_t n, int64_t V, int64_t width, const int64_t *table, int64_t L,
                 int64_t total, const int64_t *ids, int32_t *fixed_rows, int64_t *cum, int64_t *freq, int64_t nt)
{
    int64_t *F_all = malloc(sizeof(int64_t) * (size_t)(L * (nt > 0 ? nt : 1)));
    if (!F_all)
        return 0;
    PARALLEL_FOR(nt)
    for (int64_t i = 0; i < n; i++) {
        int32_t *fixed = fixed_rows + i * V;
        int64_t *F = F_all + L * (nt > 1 ? omp_thread() : 0), id = ids[i], below = 0;
        freq_row_t r = freq_row(logits + i * V, V, width, table, L, total, fixed, F);
        int64_t m = id < V ? id : V;
        for (int64_t j = 0; j < m; j++)
            below += F[fixed[j]];
        below += id - m + (r.arg < id ? r.adjust : 0); /* symbols past V weigh 1 */
        cum[i] = below;
        freq[i] = (id < V ? F[fixed[id]] : 1) + (id == r.arg ? r.adjust : 0);
    }
    free(F_all);
    return 1;
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
