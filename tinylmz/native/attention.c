#include "common.h"

/* Attention products, batched over B = streams x kv-heads; integer and exact.
 *
 *   qk: s[b][r][j] = sum_d q[b][r][d] * k[b][j][d]     q, k int8; |s| <= D * 127^2 (int32)
 *   pv: o[b][r][d] = sum_j p[b][r][j] * v[b][j][d]     p int32 (<= 2^16), v int8; int64
 *
 * k and v are read with a stride per batch (the cache's capacity), so the
 * cache is used in place without copies; rows of s and p have a stride ld (>= T),
 * so scores can be written into, and weights read from, part of a wider row.
 */

/* Dot products of int8 vectors of length D stay below D * 127^2 < 2^31 for D <= 2^17, so
 * int32 is exact everywhere here.  The SIMD paths widen to int16 and use the same mac() as
 * the matrix product; 4 query rows share each key's loads. */
#if defined(__AVX2__) && VEC == 16
/* AVX2, D = 64: rn (<= 3) rows against keys j0.. in fours; the 4 keys' sums of each row are
 * formed together (horizontal adds; a dot product fits in int32).  Returns the keys done. */
static inline __attribute__((always_inline)) int64_t qk_fours(const int16_t *q16, const int8_t *kb, int rn,
                                                              int64_t T, int32_t *s, int64_t ld)
{
    int64_t j = 0;
    for (; j + 4 <= T; j += 4) {
        __m256i a[3][4];
        for (int r = 0; r < rn; r++)
            for (int kk = 0; kk < 4; kk++)
                a[r][kk] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++)
            for (int kk = 0; kk < 4; kk++) {
                __m256i kv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(kb + (j + kk) * 64 + 16 * c)));
                for (int r = 0; r < rn; r++)
                    a[r][kk] = _mm256_add_epi32(
                        a[r][kk], _mm256_madd_epi16(kv, _mm256_loadu_si256((const __m256i *)(q16 + r * 64 + 16 * c))));
            }
        for (int r = 0; r < rn; r++) {
            __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[r][0], a[r][1]), _mm256_hadd_epi32(a[r][2], a[r][3]));
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            _mm_storeu_si128((__m128i *)(s + r * ld + j), t);
        }
    }
    return j;
}
#endif

static void qk_rows(const int16_t *q16, const int8_t *kb, int64_t R, int64_t T, int64_t D, int32_t *s, int64_t ld)
{
#if VEC > 1
    acc_t kv[256 / VEC];
#if defined(__AVX2__) && VEC == 16
    if (D == 64 && T >= 4) { /* keys in fours; the 1-3 left over by the loop below */
        int64_t done = 0;
        for (int64_t r0 = 0; r0 < R; r0 += 3) {
            int64_t rn = R - r0 < 3 ? R - r0 : 3;
            const int16_t *qr = q16 + r0 * 64;
            int32_t *sr = s + r0 * ld;
            done = rn == 3 ? qk_fours(qr, kb, 3, T, sr, ld) : rn == 2 ? qk_fours(qr, kb, 2, T, sr, ld)
                                                                    : qk_fours(qr, kb, 1, T, sr, ld);
        }
        kb += done * D, s += done, T -= done;
    }
#endif
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

#if LANES
#include <string.h>
/* Lane-wise attention for D = 64 and many query rows (AVX-512 VNNI): no horizontal sums.
 *
 * Scores: keys are transposed into blocks of 16 (kt: per block, vector c holds bytes
 * 4c..4c+3 of the block's 16 keys, one key per lane) and multiplied with vpdpbusd, which
 * takes unsigned bytes on one side: q + 128 (|q| <= 127, so 1..255), and the excess
 * 128 * sum_d k[j][d] (corr) is subtracted.  A lane stays below 255 * 127 * 64 < 2^31.
 *
 * Values: keys are taken 4 at a time (vt: per quad 4 vectors; vector X, 128-bit lane L,
 * dword i holds the quad's 4 values of d = 16 L + 4 X + i) and each weight is split into its
 * low and high byte (0 <= p <= 2^16), two vpdpbusd sums combined as 256 hi + lo.  The one
 * weight that does not split so, p = 2^16 (high byte 256), is coded as 255 * 256 and the
 * missing 256 v added on its own.  128 keys sum below 256 * 128 * 255 * 127 + 128 * 255 * 127
 * < 2^31 in int32 before they are added into int64.
 *
 * Both give the same exact integers as the row-by-row paths. */

typedef struct {
    const int8_t *a, *b;
    int64_t P;
} keys_t; /* key (or value row) j: a + 64 j for j < P, else b + 64 (j - P) */

static inline const int8_t *key_at(keys_t k, int64_t j) { return j < k.P ? k.a + 64 * j : k.b + 64 * (j - k.P); }

#define PF_KEYS 64 /* keys (64-byte rows) read ahead of their use */
#define PF_LAID 128 /* vectors of laid-out keys or values read ahead of their use */

/* kt: 16 vectors per block of 16 keys, corr: one per block ((T + 15) / 16 blocks).  A block is
 * the 16 x 16 dword matrix of its keys (key l = row l) transposed in registers. */
static void pack_keys(keys_t k, int64_t T, __m512i *kt, __m512i *corr)
{
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t j0 = 0; j0 < T; j0 += 16) {
        __m512i a[16], t[16];
        for (int l = 0; l < 16 && j0 + PF_KEYS + l < T; l++) /* the keys from memory in time */
            _mm_prefetch((const char *)key_at(k, j0 + PF_KEYS + l), _MM_HINT_T0);
        for (int l = 0; l < 16; l++)
            a[l] = j0 + l < T ? _mm512_loadu_si512((const void *)key_at(k, j0 + l)) : _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) { /* per 128-bit lane: dwords of key pairs interleaved */
            t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
        }
        for (int g = 0; g < 4; g++) { /* a[4g + c] lane L: dword 4L + c of keys 4g .. 4g + 3 */
            a[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
            a[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
            a[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
            a[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
        }
        for (int c = 0; c < 4; c++) { /* 4 x 4 transpose of 128-bit lanes: kt[4L + c] lane g = a[4g + c] lane L */
            __m512i p0 = _mm512_shuffle_i32x4(a[c], a[4 + c], 0x44), p1 = _mm512_shuffle_i32x4(a[c], a[4 + c], 0xEE);
            __m512i p2 = _mm512_shuffle_i32x4(a[8 + c], a[12 + c], 0x44);
            __m512i p3 = _mm512_shuffle_i32x4(a[8 + c], a[12 + c], 0xEE);
            kt[j0 + c] = _mm512_shuffle_i32x4(p0, p2, 0x88);
            kt[j0 + 4 + c] = _mm512_shuffle_i32x4(p0, p2, 0xDD);
            kt[j0 + 8 + c] = _mm512_shuffle_i32x4(p1, p3, 0x88);
            kt[j0 + 12 + c] = _mm512_shuffle_i32x4(p1, p3, 0xDD);
        }
        __m512i sum = _mm512_setzero_si512();
        for (int c = 0; c < 16; c++)
            sum = _mm512_dpbusd_epi32(sum, ones, kt[j0 + c]); /* 1 * k: sums of signed bytes */
        corr[j0 / 16] = _mm512_slli_epi32(sum, 7);
    }
}

/* q ^ 0x80 (= q + 128 as unsigned bytes) for R rows of 64, zero rows up to a multiple of 8. */
static void unsigned_rows(const int8_t *q, int64_t R, uint32_t *qu)
{
    int64_t R8 = (R + 7) / 8 * 8;
    for (int64_t i = 0; i < R * 64; i++)
        ((uint8_t *)qu)[i] = (uint8_t)q[i] ^ 0x80;
    for (int64_t i = R * 64; i < R8 * 64; i++)
        ((uint8_t *)qu)[i] = 0; /* padding rows: computed, never stored */
}

/* Scores of N (<= 8) rows against one block of 16 keys; N is a constant where it is called, so
 * the accumulators stay in registers and no padding row is computed. */
static inline __attribute__((always_inline)) void score_block(const uint32_t *qr, int N, const __m512i *kt,
                                                                __m512i corr, int32_t *s, int64_t ld, __mmask16 m)
{
    __m512i a[8];
    for (int r = 0; r < N; r++)
        a[r] = _mm512_setzero_si512();
    for (int c = 0; c < 16; c++) {
        __m512i kv = _mm512_load_si512((const void *)(kt + c));
        for (int r = 0; r < N; r++)
            a[r] = _mm512_dpbusd_epi32(a[r], _mm512_set1_epi32((int)qr[r * 16 + c]), kv);
    }
    for (int r = 0; r < N; r++)
        _mm512_mask_storeu_epi32(s + r * ld, m, _mm512_sub_epi32(a[r], corr));
}

#define SCORE_BLOCK(N)                                                                                          \
    static void score_block_##N(const uint32_t *qr, const __m512i *kt, __m512i corr, int32_t *s, int64_t ld,   \
                                __mmask16 m) { score_block(qr, N, kt, corr, s, ld, m); }
SCORE_BLOCK(1) SCORE_BLOCK(2) SCORE_BLOCK(3) SCORE_BLOCK(4) SCORE_BLOCK(5) SCORE_BLOCK(6) SCORE_BLOCK(7)
SCORE_BLOCK(8)
static void (*const score_blocks[9])(const uint32_t *, const __m512i *, __m512i, int32_t *, int64_t, __mmask16) = {
    NULL, score_block_1, score_block_2, score_block_3, score_block_4, score_block_5, score_block_6, score_block_7,
    score_block_8};

/* s[r][j] = q[r] . k[j] for r < R, j < T, from unsigned_rows and pack_keys. */
static void scores_rows(const uint32_t *qu, int64_t R, const __m512i *kt, const __m512i *corr, int64_t T,
                        int32_t *s, int64_t ld)
{
    for (int64_t j0 = 0; j0 < T; j0 += 16) {
        for (int c = 0; c < 16 && j0 + PF_LAID < T; c++)
            _mm_prefetch((const char *)(kt + j0 + PF_LAID + c), _MM_HINT_T0);
        __mmask16 m = (__mmask16)(T - j0 >= 16 ? 0xFFFF : (1u << (T - j0)) - 1);
        for (int64_t r0 = 0; r0 < R; r0 += 8)
            score_blocks[R - r0 < 8 ? R - r0 : 8](qu + r0 * 16, kt + j0, corr[j0 / 16], s + r0 * ld + j0, ld, m);
    }
}

/* vt: 4 vectors per quad of values ((T + 3) / 4 quads). */
static void pack_values(keys_t v, int64_t T, __m512i *vt)
{
    for (int64_t qd = 0; qd < (T + 3) / 4; qd++) {
        __m512i x[4];
        for (int i = 0; i < 4 && 4 * qd + PF_KEYS + i < T; i++)
            _mm_prefetch((const char *)key_at(v, 4 * qd + PF_KEYS + i), _MM_HINT_T0);
        for (int i = 0; i < 4; i++)
            x[i] = 4 * qd + i < T ? _mm512_loadu_si512((const void *)key_at(v, 4 * qd + i)) : _mm512_setzero_si512();
        __m512i ab0 = _mm512_unpacklo_epi8(x[0], x[1]), ab1 = _mm512_unpackhi_epi8(x[0], x[1]);
        __m512i cd0 = _mm512_unpacklo_epi8(x[2], x[3]), cd1 = _mm512_unpackhi_epi8(x[2], x[3]);
        vt[4 * qd + 0] = _mm512_unpacklo_epi16(ab0, cd0);
        vt[4 * qd + 1] = _mm512_unpackhi_epi16(ab0, cd0);
        vt[4 * qd + 2] = _mm512_unpacklo_epi16(ab1, cd1);
        vt[4 * qd + 3] = _mm512_unpackhi_epi16(ab1, cd1);
    }
}

#define PV_KEYS 128 /* keys per int32 block */
#define PV_QUADS (PV_KEYS / 4)

/* out[d] += 256 hi + lo for d < 64, from one row's lane-wise sums (vector X, 128-bit lane L,
 * dword i: d = 16 L + 4 X + i). */
static inline void add_row_sums(__m512i l0, __m512i l1, __m512i l2, __m512i l3, __m512i h0, __m512i h1, __m512i h2,
                                __m512i h3, int64_t *out)
{
    __m512i t[4] = {_mm512_add_epi32(_mm512_slli_epi32(h0, 8), l0), _mm512_add_epi32(_mm512_slli_epi32(h1, 8), l1),
                    _mm512_add_epi32(_mm512_slli_epi32(h2, 8), l2), _mm512_add_epi32(_mm512_slli_epi32(h3, 8), l3)};
    /* 4 x 4 transpose of 128-bit lanes: n[L] = lane L of t[0..3] = d 16 L .. 16 L + 15 */
    __m512i t01l = _mm512_shuffle_i32x4(t[0], t[1], 0x44), t23l = _mm512_shuffle_i32x4(t[2], t[3], 0x44);
    __m512i t01h = _mm512_shuffle_i32x4(t[0], t[1], 0xEE), t23h = _mm512_shuffle_i32x4(t[2], t[3], 0xEE);
    __m512i n[4] = {_mm512_shuffle_i32x4(t01l, t23l, 0x88), _mm512_shuffle_i32x4(t01l, t23l, 0xDD),
                    _mm512_shuffle_i32x4(t01h, t23h, 0x88), _mm512_shuffle_i32x4(t01h, t23h, 0xDD)};
    for (int c = 0; c < 4; c++) {
        __m512i x0 = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(n[c]));
        __m512i x1 = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(n[c], 1));
        _mm512_storeu_si512(out + 16 * c, _mm512_add_epi64(_mm512_loadu_si512(out + 16 * c), x0));
        _mm512_storeu_si512(out + 16 * c + 8, _mm512_add_epi64(_mm512_loadu_si512(out + 16 * c + 8), x1));
    }
}

/* Value byte d of key j in pack_values' layout (quad j / 4 from vector j & ~3). */
static inline int8_t laid_value(const __m512i *vt, int64_t j, int d)
{
    return ((const int8_t *)(vt + (j & ~(int64_t)3)))[d % 16 / 4 * 64 + d / 16 * 16 + d % 4 * 4 + j % 4];
}

/* o[r] = sum_j p[r][j] v[j] (int64, r < R, j < T) from pack_values' layout vt, which is all it
 * reads (the rare weights of 2^16 too, a byte at a time).  plo, phi: scratch of PV_QUADS dwords
 * per row. */
static void values_rows(const int32_t *p, int64_t ld, int64_t R, int64_t T, const __m512i *vt, int64_t *o,
                        uint32_t *plo, uint32_t *phi)
{
    const __m512i lo8 = _mm512_set1_epi32(0xFF), top = _mm512_set1_epi32(0xFFFF);
    for (int64_t i = 0; i < R * 64; i++)
        o[i] = 0;
    for (int64_t j0 = 0; j0 < T; j0 += PV_KEYS) {
        int64_t nk = T - j0 < PV_KEYS ? T - j0 : PV_KEYS, nq = (nk + 3) / 4;
        for (int64_t r = 0; r < R; r++)
            for (int64_t jj = 0; jj < nk; jj += 16) {
                __mmask16 m = (__mmask16)(nk - jj >= 16 ? 0xFFFF : (1u << (nk - jj)) - 1);
                __m512i w = _mm512_maskz_loadu_epi32(m, p + r * ld + j0 + jj);
                _mm_storeu_si128((__m128i *)(plo + r * PV_QUADS + jj / 4), _mm512_cvtepi32_epi8(_mm512_and_si512(w, lo8)));
                _mm_storeu_si128((__m128i *)(phi + r * PV_QUADS + jj / 4), _mm512_cvtusepi32_epi8(_mm512_srli_epi32(w, 8)));
                for (__mmask16 big = _mm512_cmpgt_epi32_mask(w, top); big; big &= big - 1) {
                    int64_t j = j0 + jj + __builtin_ctz(big);
                    for (int d = 0; d < 64; d++)
                        o[r * 64 + d] += 256 * (int64_t)laid_value(vt, j, d);
                }
            }
        const __m512i *vb = vt + j0; /* 4 vectors per quad: quad j0 / 4 starts at vector j0 */
        for (int64_t r0 = 0; r0 + 1 < R; r0 += 2) {
            /* 2 rows x 4 vectors of low-byte and high-byte sums */
            __m512i l00 = _mm512_setzero_si512(), l01 = l00, l02 = l00, l03 = l00, l10 = l00, l11 = l00, l12 = l00;
            __m512i l13 = l00, h00 = l00, h01 = l00, h02 = l00, h03 = l00, h10 = l00, h11 = l00, h12 = l00, h13 = l00;
            const uint32_t *lo0 = plo + r0 * PV_QUADS, *hi0 = phi + r0 * PV_QUADS;
            for (int64_t qd = 0; qd < nq; qd++) {
                const __m512i *vq = vb + 4 * qd;
                if (r0 == 0 && j0 + PF_LAID + 4 * qd < T)
                    for (int c = 0; c < 4; c++)
                        _mm_prefetch((const char *)(vq + PF_LAID + c), _MM_HINT_T0);
                __m512i v0 = _mm512_load_si512((const void *)vq), v1 = _mm512_load_si512((const void *)(vq + 1));
                __m512i v2 = _mm512_load_si512((const void *)(vq + 2)), v3 = _mm512_load_si512((const void *)(vq + 3));
                __m512i b = _mm512_set1_epi32((int)lo0[qd]);
                l00 = _mm512_dpbusd_epi32(l00, b, v0); l01 = _mm512_dpbusd_epi32(l01, b, v1);
                l02 = _mm512_dpbusd_epi32(l02, b, v2); l03 = _mm512_dpbusd_epi32(l03, b, v3);
                b = _mm512_set1_epi32((int)hi0[qd]);
                h00 = _mm512_dpbusd_epi32(h00, b, v0); h01 = _mm512_dpbusd_epi32(h01, b, v1);
                h02 = _mm512_dpbusd_epi32(h02, b, v2); h03 = _mm512_dpbusd_epi32(h03, b, v3);
                b = _mm512_set1_epi32((int)lo0[PV_QUADS + qd]);
                l10 = _mm512_dpbusd_epi32(l10, b, v0); l11 = _mm512_dpbusd_epi32(l11, b, v1);
                l12 = _mm512_dpbusd_epi32(l12, b, v2); l13 = _mm512_dpbusd_epi32(l13, b, v3);
                b = _mm512_set1_epi32((int)hi0[PV_QUADS + qd]);
                h10 = _mm512_dpbusd_epi32(h10, b, v0); h11 = _mm512_dpbusd_epi32(h11, b, v1);
                h12 = _mm512_dpbusd_epi32(h12, b, v2); h13 = _mm512_dpbusd_epi32(h13, b, v3);
            }
            add_row_sums(l00, l01, l02, l03, h00, h01, h02, h03, o + r0 * 64);
            add_row_sums(l10, l11, l12, l13, h10, h11, h12, h13, o + (r0 + 1) * 64);
        }
        if (R % 2) { /* the odd last row alone, not paired with a row of zeros */
            __m512i l0 = _mm512_setzero_si512(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
            const uint32_t *lo0 = plo + (R - 1) * PV_QUADS, *hi0 = phi + (R - 1) * PV_QUADS;
            for (int64_t qd = 0; qd < nq; qd++) {
                const __m512i *vq = vb + 4 * qd;
                __m512i v0 = _mm512_load_si512((const void *)vq), v1 = _mm512_load_si512((const void *)(vq + 1));
                __m512i v2 = _mm512_load_si512((const void *)(vq + 2)), v3 = _mm512_load_si512((const void *)(vq + 3));
                __m512i b = _mm512_set1_epi32((int)lo0[qd]);
                l0 = _mm512_dpbusd_epi32(l0, b, v0); l1 = _mm512_dpbusd_epi32(l1, b, v1);
                l2 = _mm512_dpbusd_epi32(l2, b, v2); l3 = _mm512_dpbusd_epi32(l3, b, v3);
                b = _mm512_set1_epi32((int)hi0[qd]);
                h0 = _mm512_dpbusd_epi32(h0, b, v0); h1 = _mm512_dpbusd_epi32(h1, b, v1);
                h2 = _mm512_dpbusd_epi32(h2, b, v2); h3 = _mm512_dpbusd_epi32(h3, b, v3);
            }
            add_row_sums(l0, l1, l2, l3, h0, h1, h2, h3, o + (R - 1) * 64);
        }
    }
}

/* qk and pv of one batch through the helpers above (0: out of memory, nothing written). */
static int qk_lanes(const int8_t *q, const int8_t *k, int64_t R, int64_t T, int32_t *s, int64_t ld)
{
    int64_t blocks = (T + 15) / 16, R8 = (R + 7) / 8 * 8;
    __m512i *buf = aligned_alloc(64, 64 * (size_t)(blocks * 17 + R8));
    if (!buf)
        return 0;
    keys_t kk = {k, k, T};
    pack_keys(kk, T, buf, buf + blocks * 16);
    unsigned_rows(q, R, (uint32_t *)(buf + blocks * 17));
    scores_rows((const uint32_t *)(buf + blocks * 17), R, buf, buf + blocks * 16, T, s, ld);
    free(buf);
    return 1;
}

static int pv_lanes(const int32_t *p, const int8_t *v, int64_t R, int64_t T, int64_t *o, int64_t ld)
{
    int64_t quads = (T + 3) / 4;
    __m512i *buf = aligned_alloc(64, 64 * (size_t)(quads * 4 + (2 * R * PV_QUADS + 15) / 16));
    if (!buf)
        return 0;
    keys_t vv = {v, v, T};
    pack_values(vv, T, buf);
    uint32_t *plo = (uint32_t *)(buf + quads * 4);
    values_rows(p, ld, R, T, buf, o, plo, plo + R * PV_QUADS);
    free(buf);
    return 1;
}
#endif

void qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t kstride, int32_t *s, int64_t ld)
{
#ifdef TINYLMZ_NEON
    if (neon_qk(q, k, B, R, T, D, kstride, s, ld))
        return;
#endif
#if LANES
    if (D == 64) { /* the transposition pays from one row on (3 per kv head when decoding) */
        int64_t b = 0;
        while (b < B && qk_lanes(q + b * R * D, k + b * kstride, R, T, s + b * R * ld, ld))
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

#if defined(__AVX2__) && VEC == 16
/* AVX2, D = 64: o[r] = sum_j p[r][j] v[j] for rn (<= 3) rows, keys in pairs: vpmaddwd multiplies
 * the int16 pairs (v[j][d], v[j+1][d]) by int16 pairs of weights.  A weight (0 <= p <= 2^16) is
 * split into min(p, C) and min(p - C, C) for C = 32767 (the second product only where a pair
 * has one), and the rest, p - 2C <= 2, is added on its own.  Per block of 128 keys an int32
 * lane sums at most 64 pairs of 2 x 2 products of C * 128 (< 2^31).  A pair that weighs 0 in
 * every row is skipped.  Exact integers: the same numbers as the loop in pv. */
static inline __attribute__((always_inline)) void pv_pairs(const int32_t *p, int64_t ld, const int8_t *v, int rn,
                                                           int64_t T, int64_t *o)
{
    enum { C = 32767 };
    uint32_t pp[3][64], px[3][64]; /* per row, pair i: the two weights' parts, p[2i] | p[2i + 1] << 16 */
    for (int64_t i = 0; i < rn * 64; i++)
        o[i] = 0;
    for (int64_t j0 = 0; j0 < T; j0 += 128) {
        int64_t nk = T - j0 < 128 ? T - j0 : 128, np = (nk + 1) / 2;
        int big = 0, huge = 0;
        const __m256i cap = _mm256_set1_epi32(C), zero = _mm256_setzero_si256();
        for (int r = 0; r < rn; r++) {
            const int32_t *pr = p + r * ld + j0;
            int64_t i = 0;
            for (; 2 * i + 16 <= nk; i += 8) { /* 16 weights: split, packed to int16 in order */
                __m256i a = _mm256_loadu_si256((const __m256i *)(pr + 2 * i));
                __m256i b = _mm256_loadu_si256((const __m256i *)(pr + 2 * i + 8));
                __m256i xa = _mm256_max_epi32(_mm256_sub_epi32(a, cap), zero);
                __m256i xb = _mm256_max_epi32(_mm256_sub_epi32(b, cap), zero);
                __m256i x = _mm256_packs_epi32(xa, xb); /* saturates at C: the rest is p - 2C */
                big |= !_mm256_testz_si256(x, x);
                huge |= !_mm256_testz_si256(_mm256_or_si256(_mm256_cmpgt_epi32(xa, cap), _mm256_cmpgt_epi32(xb, cap)),
                                            _mm256_set1_epi32(-1));
                __m256i w = _mm256_packs_epi32(_mm256_min_epi32(a, cap), _mm256_min_epi32(b, cap));
                _mm256_storeu_si256((__m256i *)(pp[r] + i), _mm256_permute4x64_epi64(w, 0xD8));
                _mm256_storeu_si256((__m256i *)(px[r] + i), _mm256_permute4x64_epi64(x, 0xD8));
            }
            for (; i < np; i++) {
                int32_t a = pr[2 * i], b = 2 * i + 1 < nk ? pr[2 * i + 1] : 0;
                int32_t xa = a > C ? a - C : 0, xb = b > C ? b - C : 0;
                big |= xa > 0 || xb > 0;
                huge |= xa > C || xb > C;
                pp[r][i] = (uint32_t)(a > C ? C : a) | (uint32_t)(b > C ? C : b) << 16;
                px[r][i] = (uint32_t)(xa > C ? C : xa) | (uint32_t)(xb > C ? C : xb) << 16;
            }
        }
        for (int h = 0; h < 2; h++) { /* dims 32 h .. 32 h + 31: rows x 4 vectors of 8 lanes */
            __m256i a[3][4];
            for (int r = 0; r < rn; r++)
                for (int c = 0; c < 4; c++)
                    a[r][c] = _mm256_setzero_si256();
            for (int64_t i = 0; i < np; i++) {
                uint32_t w[3] = {pp[0][i], rn > 1 ? pp[1][i] : 0, rn > 2 ? pp[2][i] : 0};
                if (!(w[0] | w[1] | w[2]))
                    continue;
                const int8_t *v0 = v + (j0 + 2 * i) * 64 + 32 * h;
                __m128i x0 = _mm_loadu_si128((const __m128i *)v0), x1 = _mm_loadu_si128((const __m128i *)(v0 + 16));
                __m128i y0 = _mm_setzero_si128(), y1 = y0; /* no key after the last one */
                if (j0 + 2 * i + 1 < T) {
                    y0 = _mm_loadu_si128((const __m128i *)(v0 + 64));
                    y1 = _mm_loadu_si128((const __m128i *)(v0 + 80));
                }
                __m256i vv[4] = {_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, y0)),
                                 _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, y0)),
                                 _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x1, y1)),
                                 _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x1, y1))};
                for (int r = 0; r < rn; r++) {
                    __m256i b = _mm256_set1_epi32((int)w[r]);
                    for (int c = 0; c < 4; c++)
                        a[r][c] = _mm256_add_epi32(a[r][c], _mm256_madd_epi16(vv[c], b));
                }
                if (!big)
                    continue;
                uint32_t x[3] = {px[0][i], rn > 1 ? px[1][i] : 0, rn > 2 ? px[2][i] : 0};
                if (!(x[0] | x[1] | x[2]))
                    continue;
                for (int r = 0; r < rn; r++) {
                    __m256i b = _mm256_set1_epi32((int)x[r]);
                    for (int c = 0; c < 4; c++)
                        a[r][c] = _mm256_add_epi32(a[r][c], _mm256_madd_epi16(vv[c], b));
                }
            }
            for (int r = 0; r < rn; r++)
                for (int c = 0; c < 4; c++) {
                    int64_t *out = o + r * 64 + 32 * h + 8 * c;
                    __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(a[r][c]));
                    __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(a[r][c], 1));
                    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)out), lo));
                    _mm256_storeu_si256((__m256i *)(out + 4),
                                        _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(out + 4)), hi));
                }
        }
        for (int r = 0; huge && r < rn; r++) /* what is left above 2C */
            for (int64_t j = 0; j < nk; j++) {
                int64_t e = (int64_t)p[r * ld + j0 + j] - 2 * C;
                const int8_t *vj = v + (j0 + j) * 64;
                for (int d = 0; e > 0 && d < 64; d++)
                    o[r * 64 + d] += e * vj[d];
            }
    }
}
#endif

void pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t vstride, int64_t *o, int64_t ld)
{
#ifdef TINYLMZ_NEON
    if (neon_pv(p, v, B, R, T, D, vstride, o, ld))
        return;
#endif
#if LANES
    if (D == 64) { /* laying out the values pays from one row on */
        int64_t b = 0;
        while (b < B && pv_lanes(p + b * R * ld, v + b * vstride, R, T, o + b * R * D, ld))
            b++;
        p += b * R * ld, v += b * vstride, o += b * R * D, B -= b;
    }
#endif
    for (int64_t b = 0; b < B; b++) {
        const int8_t *vb = v + b * vstride;
#if defined(__AVX2__) && VEC == 16
        if (D == 64) {
            for (int64_t r0 = 0; r0 < R; r0 += 3) {
                const int32_t *pr = p + (b * R + r0) * ld;
                int64_t *ob = o + (b * R + r0) * D;
                if (R - r0 >= 3)
                    pv_pairs(pr, ld, vb, 3, T, ob);
                else if (R - r0 == 2)
                    pv_pairs(pr, ld, vb, 2, T, ob);
                else
                    pv_pairs(pr, ld, vb, 1, T, ob);
            }
            continue;
        }
#endif
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
/* out[j] = ((a[j] * qs) * sk[j]) * inv for j0 <= j < j1; returns the maximum of m and them. */
static double scores(const int32_t *a, double qs, const double *sk, double inv, int64_t j0, int64_t j1, double *out,
                     double m)
{
    int64_t j = j0;
#if defined(__AVX512F__)
    __m512d vq = _mm512_set1_pd(qs), vi = _mm512_set1_pd(inv), mx = _mm512_set1_pd(m);
    for (; j + 8 <= j1; j += 8) {
        __m512d x = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(a + j)));
        x = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(x, vq), _mm512_loadu_pd(sk + j)), vi);
        _mm512_storeu_pd(out + j, x);
        mx = _mm512_max_pd(mx, x);
    }
    m = _mm512_reduce_max_pd(mx);
#elif defined(__AVX2__)
    __m256d vq = _mm256_set1_pd(qs), vi = _mm256_set1_pd(inv), mx = _mm256_set1_pd(m);
    for (; j + 4 <= j1; j += 4) {
        __m256d x = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(a + j)));
        x = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(x, vq), _mm256_loadu_pd(sk + j)), vi);
        _mm256_storeu_pd(out + j, x);
        mx = _mm256_max_pd(mx, x);
    }
    __m128d h = _mm_max_pd(_mm256_castpd256_pd128(mx), _mm256_extractf128_pd(mx, 1));
    h = _mm_max_pd(h, _mm_unpackhi_pd(h, h));
    m = _mm_cvtsd_f64(h);
#endif
    for (; j < j1; j++) {
        out[j] = (((double)a[j] * qs) * sk[j]) * inv;
        m = out[j] > m ? out[j] : m;
    }
    return m;
}

/* e = table[min(rint((m - s) * steps), L - 1)];  p = rint(e * ratio);  returns sum(e).
 * table: the exp table, int32 (its entries are <= 2^16): half the bytes of int64 ones. */
static int64_t weights(const double *s, const double *ratio, int64_t n, double m, double steps,
                       const int32_t *table, int64_t L, int32_t *p)
{
    int64_t total = 0, j = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512d vm = _mm512_set1_pd(m), vs = _mm512_set1_pd(steps), lim = _mm512_set1_pd((double)(L - 1));
    __m512i sum = _mm512_setzero_si512();
    for (; j + 8 <= n; j += 8) {
        __m512d d = _mm512_roundscale_pd(_mm512_mul_pd(_mm512_sub_pd(vm, _mm512_loadu_pd(s + j)), vs), rnd);
        __mmask8 in = _mm512_cmp_pd_mask(d, lim, _CMP_LT_OQ); /* the others weigh table[L - 1] = 0 */
        __m256i e = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), in, _mm512_cvttpd_epi32(d), table, 4);
        sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(e));
        __m512d w = _mm512_roundscale_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(e), _mm512_loadu_pd(ratio + j)), rnd);
        _mm256_storeu_si256((__m256i *)(p + j), _mm512_cvttpd_epi32(w));
    }
    total = _mm512_reduce_add_epi64(sum);
#elif defined(__AVX2__)
    /* m >= s[j]: d >= 0, so table[min(d, L - 1)] is the scalar loop's entry */
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256d vm = _mm256_set1_pd(m), vs = _mm256_set1_pd(steps), lim = _mm256_set1_pd((double)(L - 1));
    __m256i sum = _mm256_setzero_si256();
    for (; j + 4 <= n; j += 4) {
        __m256d d = _mm256_round_pd(_mm256_mul_pd(_mm256_sub_pd(vm, _mm256_loadu_pd(s + j)), vs), rnd);
        __m128i e = _mm_i32gather_epi32(table, _mm256_cvttpd_epi32(_mm256_min_pd(d, lim)), 4);
        sum = _mm256_add_epi64(sum, _mm256_cvtepi32_epi64(e));
        __m256d w = _mm256_round_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(e), _mm256_loadu_pd(ratio + j)), rnd);
        _mm_storeu_si128((__m128i *)(p + j), _mm256_cvttpd_epi32(w));
    }
    int64_t part[4];
    _mm256_storeu_si256((__m256i *)part, sum);
    total = part[0] + part[1] + part[2] + part[3];
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
                         int64_t T, double inv, double steps, const int32_t *table, int64_t L, int32_t *p,
                         int64_t *esum, double *sbuf, double *ratio)
{
    int64_t have = 0; /* ratio[j] = sv[j] / ratio_sm is valid for j < have (rows mostly share svmax) */
    double ratio_sm = 0;
    for (int64_t r = 0; r < R; r++) {
        const int32_t *ar = acc + r * T;
        int32_t *pr = p + r * T;
        int64_t vis = pos[r] + 1 < T ? pos[r] + 1 : T, shared = vis < P ? vis : P;
        double qs = sq[r], m = -INFINITY, sm = svmax[r];
        m = scores(ar, qs, sk0, inv, 0, shared, sbuf, m);
        m = scores(ar, qs, sk - P, inv, shared, vis, sbuf, m);
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

/* Threaded forms of qk, pv and softmax_p (pool.c): tasks are whole batches when there are
 * enough of them, otherwise row ranges of each batch.  Each task computes its own outputs
 * with the functions above, so nt never changes a result. */
typedef struct {
    const void *a;       /* q (int8) or p (int32) */
    const int8_t *kv;    /* k or v */
    int64_t B, R, T, D, stride, ab, ld, rc;
    void *o;             /* s (int32) or o (int64) */
    /* softmax_p only */
    const double *sq, *sk0, *sv0, *sk, *sv, *svmax, *scratch_unused;
    int64_t P, s0n, s0h, KV;
    const int64_t *pos;
    const int32_t *table;
    double inv, steps;
    int64_t L;
    int32_t *p;
    int64_t *esum;
    double *scratch;
} att_job;

static int64_t row_splits(int64_t B, int64_t R, int64_t nt)
{
    if (nt <= 1 || R < 2)
        return 1;
    int64_t want = (pool_tasks(B * R, nt) + B - 1) / B; /* tasks per batch */
    return want < 1 ? 1 : (want > R ? R : want);
}

/* qk and pv lay out a batch's keys or values in every task (as much work as the products for a
 * few rows), and softmax_p divides its value scales once for rows that share them, so tasks
 * split a batch's rows only when there are fewer batches than threads. */
static int64_t batch_splits(int64_t B, int64_t R, int64_t nt)
{
    return B >= nt ? 1 : row_splits(B, R, nt);
}

#define TASK_ROWS(j, t) int64_t b = t / j->rc, r0 = j->R * (t % j->rc) / j->rc, r1 = j->R * (t % j->rc + 1) / j->rc

static void qk_task(void *p, int64_t t, int64_t me)
{
    const att_job *j = p;
    (void)me;
    TASK_ROWS(j, t);
    qk((const int8_t *)j->a + (b * j->R + r0) * j->D, j->kv + b * j->stride, 1, r1 - r0, j->T, j->D, j->stride,
       (int32_t *)j->o + b * j->ab + r0 * j->ld, j->ld);
}

void qk_mt(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
           int64_t kstride, int32_t *s, int64_t sb, int64_t ld, int64_t nt)
{
    att_job j = {.a = q, .kv = k, .B = B, .R = R, .T = T, .D = D, .stride = kstride, .ab = sb, .ld = ld,
                 .rc = batch_splits(B, R, nt), .o = s};
    pool_for(B * j.rc, nt, qk_task, &j);
}

static void pv_task(void *p, int64_t t, int64_t me)
{
    const att_job *j = p;
    (void)me;
    TASK_ROWS(j, t);
    pv((const int32_t *)j->a + b * j->ab + r0 * j->ld, j->kv + b * j->stride, 1, r1 - r0, j->T, j->D, j->stride,
       (int64_t *)j->o + (b * j->R + r0) * j->D, j->ld);
}

void pv_mt(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
           int64_t vstride, int64_t *o, int64_t pb, int64_t ld, int64_t nt)
{
    att_job j = {.a = p, .kv = v, .B = B, .R = R, .T = T, .D = D, .stride = vstride, .ab = pb, .ld = ld,
                 .rc = batch_splits(B, R, nt), .o = o};
    pool_for(B * j.rc, nt, pv_task, &j);
}

static void softmax_task(void *p, int64_t t, int64_t me)
{
    const att_job *j = p;
    TASK_ROWS(j, t);
    int64_t i = b * j->R + r0, T = j->T;
    int64_t h0 = (b / j->KV) * j->s0n + (b % j->KV) * j->s0h;
    softmax_rows((const int32_t *)j->a + i * T, j->sq + i, j->sk0 + h0, j->sv0 + h0, j->P, j->sk + b * j->stride,
                 j->sv + b * j->stride, j->svmax + i, j->pos + r0, r1 - r0, T, j->inv, j->steps, j->table, j->L,
                 j->p + i * T, j->esum + i, j->scratch + 2 * T * me, j->scratch + 2 * T * me + T);
}

/* B = streams x KV heads; own scales sk/sv with a stride per batch, shared-prefix scales
 * sk0/sv0 with strides s0n per stream and s0h per head (s0n = 0: one prefix for all streams). */
void softmax_p_mt(const int32_t *acc, const double *sq, const double *sk0, const double *sv0, int64_t P,
                  int64_t s0n, int64_t s0h, int64_t KV, const double *sk, const double *sv, const double *svmax,
                  const int64_t *pos, int64_t B, int64_t R, int64_t T, int64_t stride, double inv, double steps,
                  const int32_t *table, int64_t L, int32_t *p, int64_t *esum, int64_t nt)
{
    if (nt < 1)
        nt = 1;
    double *scratch = malloc(sizeof(double) * 2 * (T > 0 ? T : 1) * nt);
    if (!scratch) { /* the caller checks esum > 0 (every row sees its own key) */
        for (int64_t i = 0; i < B * R; i++)
            esum[i] = 0;
        return;
    }
    att_job j = {.a = acc, .B = B, .R = R, .T = T, .stride = stride, .rc = batch_splits(B, R, nt), .sq = sq,
                 .sk0 = sk0, .sv0 = sv0, .sk = sk, .sv = sv, .svmax = svmax, .P = P, .s0n = s0n, .s0h = s0h,
                 .KV = KV, .pos = pos, .table = table, .inv = inv, .steps = steps, .L = L, .p = p, .esum = esum,
                 .scratch = scratch};
    pool_for(B * j.rc, nt, softmax_task, &j);
    free(scratch);
}

/* Attention of one stream, fused (LANES only; returns 0 elsewhere or out of memory, nothing
 * written): for each kv head, the keys and values (a shared prefix k0/v0 of P positions, then
 * the stream's own k1/v1) are laid out once, and each tile of ATT_ROWS query rows goes through
 * scores, softmax weights and values while its scores are in cache.  Per head h (strides in
 * elements): q (KV x R x 64), sq and svmax (KV x R), k0/v0 + h kv0, sk0/sv0 + h s0, and
 * k1/v1 + h kv1, sk1/sv1 + h s1; pos (R, increasing): key j is visible to row r when
 * j <= pos[r].  Out: o (KV x R x 64) int64 and esum (KV x R), the numbers that qk, softmax_p
 * and pv give. */
#define ATT_ROWS 16
#if LANES
/* The arguments of attend1 and attend_batches (attend1: one stream, kvn = sn = 0, no kp). */
typedef struct {
    const int8_t *q;
    const double *sq;
    int64_t KV, R;
    const int8_t *k0, *v0;
    int64_t kv0;
    const double *sk0, *sv0;
    int64_t s0, P;
    const int8_t *k1, *v1;
    int64_t kvn, kvh;
    const double *sk1, *sv1;
    int64_t sn, sh, T;
    const int8_t *kp, *vp;
    const int32_t *ks;
    const double *svmax;
    const int64_t *pos;
    double inv, steps;
    const int32_t *table;
    int64_t L;
    int64_t *o, *esum;
    __m512i *buf;
    int64_t blocks, quads, tiles, per_head, per_thread;
} attend_job;

static void attend_pack_task(void *p, int64_t h, int64_t me)
{
    const attend_job *j = p;
    (void)me;
    __m512i *hb = j->buf + h * j->per_head;
    keys_t kk = {j->k0 + h * j->kv0, j->k1 + h * j->kvh, j->P}, vv = {j->v0 + h * j->kv0, j->v1 + h * j->kvh, j->P};
    pack_keys(kk, j->T, hb, hb + j->blocks * 16);
    pack_values(vv, j->T, hb + j->blocks * 17);
}

static void attend_tile_task(void *p, int64_t task, int64_t me)
{
    const attend_job *j = p;
    int64_t T = j->T, R = j->R, blocks = j->blocks;
    int64_t h = task / j->tiles, r0 = task % j->tiles * ATT_ROWS, rn = R - r0 < ATT_ROWS ? R - r0 : ATT_ROWS;
    int64_t Tt = j->pos[r0 + rn - 1] + 1 < T ? j->pos[r0 + rn - 1] + 1 : T; /* keys any row of the tile sees */
    __m512i *hb = j->buf + h * j->per_head, *tb = j->buf + j->KV * j->per_head + me * j->per_thread;
    uint32_t *qu = (uint32_t *)tb;
    int32_t *s = (int32_t *)(tb + ATT_ROWS);
    double *sbuf = (double *)(s + ATT_ROWS * T), *ratio = sbuf + T;
    uint32_t *plo = (uint32_t *)(ratio + T), *phi = plo + ATT_ROWS * PV_QUADS;
    int64_t i = h * R + r0;
    unsigned_rows(j->q + i * 64, rn, qu);
    scores_rows(qu, rn, hb, hb + blocks * 16, Tt, s, Tt);
    softmax_rows(s, j->sq + i, j->sk0 + h * j->s0, j->sv0 + h * j->s0, j->P, j->sk1 + h * j->sh, j->sv1 + h * j->sh,
                 j->svmax + i, j->pos + r0, rn, Tt, j->inv, j->steps, j->table, j->L, s, j->esum + i, sbuf,
                 ratio); /* weights over the scores */
    values_rows(s, Tt, rn, Tt, hb + blocks * 17, j->o + i * 64, plo, phi);
}

/* Attention of the decoding step (D = 64), fused per (stream, kv head): each task scores,
 * weights and values its batch's R rows (R <= ATT_ROWS) while they are in cache.  Keys are the
 * shared prefix (k0, P positions, head stride kv0; scales sk0/sv0, head stride s0) and the
 * stream's own keys (k1 + b kvn + h kvh, scales sk1/sv1 + b sn + h sh), T in all.  q, sq,
 * svmax, o, esum: batch-major (b, h, r).
 *
 * The own keys and values come laid out already when kp is given (the decoder's cache in that
 * form, kept up by decode_step, at the offsets k1 and v1 would have, which are then not read
 * and may be NULL; keys in pack_keys' blocks of 16, values in pack_values' quads, ks the blocks'
 * corr, 128 times each key's byte sum, int32; 64-byte aligned, own key 0 at a block's start).
 * Otherwise, and for the prefix, a task lays them out in its own buffer: with a window of 2,048
 * that was 40 % of the attention's time.  The prefix and the own keys are laid out apart (each
 * from a block's start). */
static void attend_batch_task(void *p, int64_t t, int64_t me)
{
    const attend_job *j = p;
    int64_t T = j->T, R = j->R, P = j->P, own = T - P, b = t / j->KV, h = t % j->KV, i = t * R;
    __m512i *kt = j->buf + me * j->per_thread, *corr = kt + j->blocks * 16, *vt = corr + j->blocks;
    uint32_t *qu = (uint32_t *)(vt + j->blocks * 16);
    int32_t *s = (int32_t *)(qu + ATT_ROWS * 16);
    double *sbuf = (double *)(s + ATT_ROWS * T), *ratio = sbuf + T;
    uint32_t *plo = (uint32_t *)(ratio + T), *phi = plo + ATT_ROWS * PV_QUADS;
    int64_t *o = j->o + i * 64, *o0 = (int64_t *)(phi + ATT_ROWS * PV_QUADS); /* o0: the prefix's part */
    /* k1, v1: the own rows, laid out here (NULL where kp gives them laid out) */
    const int8_t *k1 = j->kp ? NULL : j->k1 + b * j->kvn + h * j->kvh, *v1 = j->kp ? NULL : j->v1 + b * j->kvn + h * j->kvh;
    keys_t k0 = {P ? j->k0 + h * j->kv0 : NULL, NULL, P}, v0 = {P ? j->v0 + h * j->kv0 : NULL, NULL, P};
    keys_t ko = {k1, NULL, own}, vo = {v1, NULL, own};
    const __m512i *kto = kt, *co = corr, *vto = vt; /* the own keys and values laid out */
    if (j->kp) {
        kto = (const __m512i *)(j->kp + b * j->kvn + h * j->kvh);
        co = (const __m512i *)(j->ks + b * j->sn + h * j->sh);
        vto = (const __m512i *)(j->vp + b * j->kvn + h * j->kvh);
    }
    unsigned_rows(j->q + i * 64, R, qu);
    if (P) { /* the prefix's keys, then the own ones, each laid out here unless given so */
        pack_keys(k0, P, kt, corr);
        scores_rows(qu, R, kt, corr, P, s, T);
    }
    if (!j->kp)
        pack_keys(ko, own, kt, corr);
    scores_rows(qu, R, kto, co, own, s + P, T);
    softmax_rows(s, j->sq + i, j->sk0 + h * j->s0, j->sv0 + h * j->s0, P, j->sk1 + b * j->sn + h * j->sh,
                 j->sv1 + b * j->sn + h * j->sh, j->svmax + i, j->pos, R, T, j->inv, j->steps, j->table, j->L, s,
                 j->esum + i, sbuf, ratio);
    if (!j->kp)
        pack_values(vo, own, vt);
    values_rows(s + P, T, R, own, vto, o, plo, phi);
    if (P) { /* exact integer sums: the prefix's part added to the own keys' */
        pack_values(v0, P, vt);
        values_rows(s, T, R, P, vt, o0, plo, phi);
        for (int64_t x = 0; x < R * 64; x++)
            o[x] += o0[x];
    }
}
#endif

int64_t attend_batches(const int8_t *q, const double *sq, int64_t n, int64_t KV, int64_t R, int64_t D, const int8_t *k0,
                       const int8_t *v0, int64_t kv0, const double *sk0, const double *sv0, int64_t s0, int64_t P,
                       const int8_t *k1, const int8_t *v1, int64_t kvn, int64_t kvh, const double *sk1,
                       const double *sv1, int64_t sn, int64_t sh, int64_t T, const int8_t *kp, const int8_t *vp,
                       const int32_t *ks, const double *svmax, const int64_t *pos, double inv, double steps,
                       const int32_t *table, int64_t L, int64_t *o, int64_t *esum, int64_t nt)
{
#if LANES
    if (R > ATT_ROWS || D != 64)
        return 0;
    int64_t blocks = (T + 15) / 16; /* (T + 3) / 4 quads of 4 vectors fit in blocks * 16 vectors */
    int64_t per_thread = blocks * 33 + ATT_ROWS +
                         (ATT_ROWS * T * 4 + 2 * T * 8 + 2 * ATT_ROWS * PV_QUADS * 4 + ATT_ROWS * 64 * 8 + 63) / 64;
    if (nt < 1)
        nt = 1;
    __m512i *buf = aligned_alloc(64, 64 * (size_t)(nt * per_thread));
    if (!buf)
        return 0;
    attend_job j = {q, sq, KV, R, k0, v0, kv0, sk0, sv0, s0, P, k1, v1, kvn, kvh, sk1, sv1, sn, sh, T, kp, vp, ks,
                    svmax, pos, inv, steps, table, L, o, esum, buf, blocks, 0, 0, 0, per_thread};
    pool_for(n * KV, nt, attend_batch_task, &j);
    free(buf);
    return 1;
#else
    (void)q, (void)sq, (void)n, (void)KV, (void)R, (void)D, (void)k0, (void)v0, (void)kv0, (void)sk0, (void)sv0, (void)s0;
    (void)P, (void)k1, (void)v1, (void)kvn, (void)kvh, (void)sk1, (void)sv1, (void)sn, (void)sh, (void)T;
    (void)kp, (void)vp, (void)ks;
    (void)svmax, (void)pos, (void)inv, (void)steps, (void)table, (void)L, (void)o, (void)esum, (void)nt;
    return 0;
#endif
}

int64_t attend1(const int8_t *q, const double *sq, int64_t KV, int64_t R, const int8_t *k0, const int8_t *v0,
                int64_t kv0, const double *sk0, const double *sv0, int64_t s0, int64_t P, const int8_t *k1,
                const int8_t *v1, int64_t kv1, const double *sk1, const double *sv1, int64_t s1, int64_t T,
                const double *svmax, const int64_t *pos, double inv, double steps, const int32_t *table, int64_t L,
                int64_t *o, int64_t *esum, int64_t nt)
{
#if LANES
    int64_t blocks = (T + 15) / 16, quads = (T + 3) / 4, tiles = (R + ATT_ROWS - 1) / ATT_ROWS;
    int64_t per_head = blocks * 17 + quads * 4; /* vectors: kt, corr, vt */
    /* per thread: scores (ATT_ROWS x T int32), sbuf and ratio (T doubles each), plo/phi, q rows */
    int64_t per_thread = (ATT_ROWS * T * 4 + 2 * T * 8 + 2 * ATT_ROWS * PV_QUADS * 4 + 63) / 64 + ATT_ROWS;
    if (nt < 1)
        nt = 1;
    __m512i *buf = aligned_alloc(64, 64 * (size_t)(KV * per_head + nt * per_thread));
    if (!buf)
        return 0;
    attend_job j = {q, sq, KV, R, k0, v0, kv0, sk0, sv0, s0, P, k1, v1, 0, kv1, sk1, sv1, 0, s1, T, NULL, NULL, NULL,
                    svmax, pos, inv, steps, table, L, o, esum, buf, blocks, quads, tiles, per_head, per_thread};
    pool_for(KV, nt, attend_pack_task, &j);
    pool_for(KV * tiles, nt, attend_tile_task, &j);
    free(buf);
    return 1;
#else
    (void)q, (void)sq, (void)KV, (void)R, (void)k0, (void)v0, (void)kv0, (void)sk0, (void)sv0, (void)s0, (void)P;
    (void)k1, (void)v1, (void)kv1, (void)sk1, (void)sv1, (void)s1, (void)T, (void)svmax, (void)pos, (void)inv;
    (void)steps, (void)table, (void)L, (void)o, (void)esum, (void)nt;
    return 0;
#endif
}
