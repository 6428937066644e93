/* NEON kernels for aarch64 (see neon.h): exact integer products, the numbers of the generic
 * paths and of numpy.  Elsewhere this file compiles to nothing but simd_path(). */
#include "common.h"

/* Which instruction-set path the products were built for (kernel.simd() reports it). */
const char *simd_path(void)
{
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return "avx512-vnni";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(TINYLMZ_NEON_DOT)
    return "neon-dotprod";
#elif defined(TINYLMZ_NEON)
    return "neon";
#else
    return "c";
#endif
}

#if defined(TINYLMZ_NEON)

/* a + the 16 products x[i] y[i] of two int8 vectors, summed 4 to an int32 lane.  Each product
 * is at most 128^2 = 2^14 in magnitude (plain NEON holds one in an int16 lane before the
 * pairwise widening add), so a lane takes at most 4 * 2^14 per call. */
static inline int32x4_t dot16(int32x4_t a, int8x16_t x, int8x16_t y)
{
#if defined(TINYLMZ_NEON_DOT)
    return vdotq_s32(a, x, y);
#else
    return vpadalq_s16(vpadalq_s16(a, vmull_s8(vget_low_s8(x), vget_low_s8(y))), vmull_high_s8(x, y));
#endif
}

/* Scores s[r][j] = q[r] . k[j] of one batch, nc = D / 16 vectors per row, 4 keys at a time
 * (their vectors loaded once for all rows, the 4 sums folded into one vector by pairwise adds).
 * |s| <= D * 2^14 <= 2^22 for D <= 256: int32 is exact at every step. */
static inline __attribute__((always_inline)) void qk_batch(const int8_t *q, const int8_t *kb, int64_t R, int64_t T,
                                                           const int nc, int32_t *s, int64_t ld)
{
    const int64_t D = 16 * nc;
    int64_t j = 0;
    for (; j + 4 <= T; j += 4) {
        int8x16_t kv[4][4]; /* D = 64: all 4 keys in 16 registers */
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < nc && c < 4; c++)
                kv[i][c] = vld1q_s8(kb + (j + i) * D + 16 * c);
        for (int64_t r = 0; r < R; r++) {
            int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < nc; c++) {
                int8x16_t qv = vld1q_s8(q + r * D + 16 * c);
                const int8_t *kc = kb + j * D + 16 * c;
                a0 = dot16(a0, qv, nc == 4 ? kv[0][c & 3] : vld1q_s8(kc));
                a1 = dot16(a1, qv, nc == 4 ? kv[1][c & 3] : vld1q_s8(kc + D));
                a2 = dot16(a2, qv, nc == 4 ? kv[2][c & 3] : vld1q_s8(kc + 2 * D));
                a3 = dot16(a3, qv, nc == 4 ? kv[3][c & 3] : vld1q_s8(kc + 3 * D));
            }
            vst1q_s32(s + r * ld + j, vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3)));
        }
    }
    for (; j < T; j++)
        for (int64_t r = 0; r < R; r++) {
            int32x4_t a = vdupq_n_s32(0);
            for (int c = 0; c < nc; c++)
                a = dot16(a, vld1q_s8(q + r * D + 16 * c), vld1q_s8(kb + j * D + 16 * c));
            s[r * ld + j] = vaddvq_s32(a);
        }
}

int neon_qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D, int64_t kstride,
            int32_t *s, int64_t ld)
{
    if (D % 16 || D > 256)
        return 0;
    for (int64_t b = 0; b < B; b++) {
        const int8_t *qb = q + b * R * D, *kb = k + b * kstride;
        int32_t *sb = s + b * R * ld;
        if (D == 64) /* the common head size: its loop bounds known to the compiler */
            qk_batch(qb, kb, R, T, 4, sb, ld);
        else
            qk_batch(qb, kb, R, T, (int)(D / 16), sb, ld);
    }
    return 1;
}

/* Values o[r] = sum_j p[r][j] v[j] for D = 64, both levels (int32 multiply-adds by lane): 4 rows
 * x 16 d in 16 accumulators, 4 keys' weights of a row in one vector.  p <= 2^16 and |v| <= 128
 * make a product at most 2^23, so a block of 128 keys sums below 2^30 in int32; blocks add into
 * int64.  tr: rows (1..4), all of whose weights are read. */
#define PV_BLOCK 128
#define PV_KEY(i)                                                                                   \
    do {                                                                                            \
        int8x16_t v8 = vld1q_s8(vb + (j + i) * 64 + 16 * qd);                                       \
        int16x8_t lo = vmovl_s8(vget_low_s8(v8)), hi = vmovl_high_s8(v8);                           \
        int32x4_t v0 = vmovl_s16(vget_low_s16(lo)), v1 = vmovl_high_s16(lo);                        \
        int32x4_t v2 = vmovl_s16(vget_low_s16(hi)), v3 = vmovl_high_s16(hi);                        \
        for (int r = 0; r < tr; r++) {                                                              \
            a[r][0] = vmlaq_laneq_s32(a[r][0], v0, pw[r], i);                                       \
            a[r][1] = vmlaq_laneq_s32(a[r][1], v1, pw[r], i);                                       \
            a[r][2] = vmlaq_laneq_s32(a[r][2], v2, pw[r], i);                                       \
            a[r][3] = vmlaq_laneq_s32(a[r][3], v3, pw[r], i);                                       \
        }                                                                                           \
    } while (0)

static inline __attribute__((always_inline)) void pv_rows(const int32_t *p, int64_t ld, const int8_t *vb, int64_t T,
                                                          const int tr, int64_t *o)
{
    for (int r = 0; r < tr; r++)
        for (int d = 0; d < 64; d++)
            o[r * 64 + d] = 0;
    for (int64_t j0 = 0; j0 < T; j0 += PV_BLOCK) {
        int64_t j1 = j0 + PV_BLOCK < T ? j0 + PV_BLOCK : T;
        for (int qd = 0; qd < 4; qd++) { /* d = 16 qd .. 16 qd + 15 */
            int32x4_t a[4][4];
            for (int r = 0; r < tr; r++)
                for (int c = 0; c < 4; c++)
                    a[r][c] = vdupq_n_s32(0);
            int64_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                int32x4_t pw[4];
                for (int r = 0; r < tr; r++)
                    pw[r] = vld1q_s32(p + r * ld + j);
                PV_KEY(0);
                PV_KEY(1);
                PV_KEY(2);
                PV_KEY(3);
            }
            for (; j < j1; j++) {
                int32x4_t pw[4];
                for (int r = 0; r < tr; r++)
                    pw[r] = vdupq_n_s32(p[r * ld + j]);
                PV_KEY(0); /* j + 0: this key, its weight in every lane */
            }
            for (int r = 0; r < tr; r++)
                for (int c = 0; c < 4; c++) {
                    int64_t *oc = o + r * 64 + 16 * qd + 4 * c;
                    vst1q_s64(oc, vaddw_s32(vld1q_s64(oc), vget_low_s32(a[r][c])));
                    vst1q_s64(oc + 2, vaddw_high_s32(vld1q_s64(oc + 2), a[r][c]));
                }
        }
    }
}
#undef PV_KEY

int neon_pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D, int64_t vstride,
            int64_t *o, int64_t ld)
{
    if (D != 64)
        return 0;
    for (int64_t b = 0; b < B; b++) {
        const int32_t *pb = p + b * R * ld;
        const int8_t *vb = v + b * vstride;
        int64_t *ob = o + b * R * 64, r = 0;
        for (; r + 4 <= R; r += 4)
            pv_rows(pb + r * ld, ld, vb, T, 4, ob + r * 64);
        for (; r < R; r++)
            pv_rows(pb + r * ld, ld, vb, T, 1, ob + r * 64);
    }
    return 1;
}

#if defined(TINYLMZ_NEON_DOT)
/* The matrix product with sdot.  Each int16 x is split into two int8 planes,
 *     x = 256 h + l + 256 e,   l = the low byte as a signed byte (-128..127),
 *     h = (x - l) / 256 clamped to 127,  e = 1 where the clamp took 256 off, else 0,
 * since (x - l) / 256 reaches 128 for x >= 32640 (a row's largest values: |x| <= 32767).
 * x . w = 256 (h . w) + l . w + 256 (sum of w[k] over the k with e = 1): the last sum is
 * taken from a list of those k per row (usually a few), so it is exact whatever the data.
 * An sdot product is at most 128 * 127 in magnitude and a lane takes 4 per 16 k: over a
 * block of DB = 65536 k a lane stays below 2^14 * 16256 < 2^28.  Blocks add into int64. */
#define DB 65536
#define DTR 4 /* rows of x per tile */
#define DTC 2 /* rows of w per tile */

typedef struct {
    const int8_t *hl; /* per row: h[Kv] then l[Kv] */
    const int32_t *fix; /* per row: up to Kv indices k < Kv with e = 1 */
    const int64_t *nfix;
    int64_t Kv;
} split_t;

static inline __attribute__((always_inline)) void dot_tile(split_t xs, int64_t i, const int8_t *w, int64_t K,
                                                           const int tr, const int tc, int64_t t[DTR][DTC])
{
    const int64_t Kv = xs.Kv;
    const int8_t *hl = xs.hl + i * 2 * Kv;
    for (int r = 0; r < tr; r++)
        for (int c = 0; c < tc; c++)
            t[r][c] = 0;
    for (int64_t k0 = 0; k0 < Kv; k0 += DB) {
        int64_t k1 = k0 + DB < Kv ? k0 + DB : Kv;
        int32x4_t ah[DTR][DTC], al[DTR][DTC];
        for (int r = 0; r < tr; r++)
            for (int c = 0; c < tc; c++)
                ah[r][c] = al[r][c] = vdupq_n_s32(0);
        for (int64_t k = k0; k < k1; k += 16) {
            int8x16_t wv[DTC];
            for (int c = 0; c < tc; c++)
                wv[c] = vld1q_s8(w + c * K + k);
            for (int r = 0; r < tr; r++) {
                int8x16_t h = vld1q_s8(hl + r * 2 * Kv + k), l = vld1q_s8(hl + r * 2 * Kv + Kv + k);
                for (int c = 0; c < tc; c++) {
                    ah[r][c] = vdotq_s32(ah[r][c], h, wv[c]);
                    al[r][c] = vdotq_s32(al[r][c], l, wv[c]);
                }
            }
        }
        for (int r = 0; r < tr; r++)
            for (int c = 0; c < tc; c++)
                t[r][c] += 256 * vaddlvq_s32(ah[r][c]) + vaddlvq_s32(al[r][c]);
    }
}

/* The clamped values' 256 w and the products past the last full vector (k >= Kv), then out. */
static void dot_finish(const int16_t *x, split_t xs, int64_t i, const int8_t *w, int64_t K, int64_t j, int tr,
                       int tc, int64_t t[DTR][DTC], int64_t *out, int64_t N)
{
    for (int r = 0; r < tr; r++)
        for (int c = 0; c < tc; c++) {
            const int8_t *wc = w + (j + c) * K;
            const int32_t *fx = xs.fix + (i + r) * xs.Kv;
            int64_t v = t[r][c];
            for (int64_t f = 0; f < xs.nfix[i + r]; f++)
                v += 256 * (int64_t)wc[fx[f]];
            for (int64_t k = xs.Kv; k < K; k++)
                v += (int32_t)x[(i + r) * K + k] * (int32_t)wc[k];
            out[(i + r) * N + j + c] = v;
        }
}

int neon_qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1, int64_t N,
               int64_t *out)
{
    int64_t Kv = K - K % 16;
    int8_t *hl = malloc((size_t)(2 * n * Kv + 1));
    int32_t *fix = malloc(sizeof(int32_t) * (size_t)(n * Kv + 1));
    int64_t *nfix = malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!hl || !fix || !nfix) {
        free(hl), free(fix), free(nfix);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        int8_t *h = hl + i * 2 * Kv, *l = h + Kv;
        nfix[i] = 0;
        for (int64_t k = 0; k < Kv; k++) {
            int32_t v = x[i * K + k], lo = ((v + 128) & 255) - 128, hi = (v - lo) / 256; /* exact division */
            if (hi > 127) {
                hi = 127;
                fix[i * Kv + nfix[i]++] = (int32_t)k;
            }
            h[k] = (int8_t)hi, l[k] = (int8_t)lo;
        }
    }
    split_t xs = {hl, fix, nfix, Kv};
    int64_t t[DTR][DTC];
    int64_t j = j0;
    for (; j + DTC <= j1; j += DTC) {
        int64_t i = 0;
        for (; i + DTR <= n; i += DTR) {
            dot_tile(xs, i, w + j * K, K, DTR, DTC, t);
            dot_finish(x, xs, i, w, K, j, DTR, DTC, t, out, N);
        }
        for (; i < n; i++) {
            dot_tile(xs, i, w + j * K, K, 1, DTC, t);
            dot_finish(x, xs, i, w, K, j, 1, DTC, t, out, N);
        }
    }
    for (; j < j1; j++)
        for (int64_t i = 0; i < n; i++) {
            dot_tile(xs, i, w + j * K, K, 1, 1, t);
            dot_finish(x, xs, i, w, K, j, 1, 1, t, out, N);
        }
    free(hl), free(fix), free(nfix);
    return 1;
}
#else
int neon_qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1, int64_t N,
               int64_t *out)
{
    (void)x, (void)n, (void)K, (void)w, (void)j0, (void)j1, (void)N, (void)out;
    return 0; /* plain NEON: matmul.c's tiles with neon.h's mac() */
}
#endif
#endif
