/* Shared by the native kernels (tinylmz/kernel.py compiles every .c file here into one library).
 *
 * Every kernel returns exact integers, or the same IEEE double operations in numpy's order
 * (the library is built with -ffp-contract=off), so its results never depend on the machine,
 * the instruction set or the thread count; kernel.py checks them against numpy when it loads.
 */
#ifndef TINYLMZ_COMMON_H
#define TINYLMZ_COMMON_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Threads split outputs, never sums: pool.c runs the tasks (each writes its own outputs). */
#include "pool.h"


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
/* t[c] += acc_sum(a[c]) for c < 4, in vectors: lanes widened to int64 before any two are
 * added (a lane may hold up to 2^30), then the 4 sums side by side. */
#define ACC_SUM4 1
static inline void acc_sum4(const acc_t *a, int64_t *t)
{
    __m256i s[4];
    for (int c = 0; c < 4; c++)
        s[c] = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(a[c])),
                                _mm256_cvtepi32_epi64(_mm256_extracti128_si256(a[c], 1)));
    __m256i p01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s[0], s[1]), _mm256_unpackhi_epi64(s[0], s[1]));
    __m256i p23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s[2], s[3]), _mm256_unpackhi_epi64(s[2], s[3]));
    __m256i r = _mm256_add_epi64(_mm256_permute2x128_si256(p01, p23, 0x20), _mm256_permute2x128_si256(p01, p23, 0x31));
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)t), r));
}
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "neon.h" /* NEON: mac() for the tiles (vmlal_s16), and neon.c's kernels; bounds there */
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


/* Lane-wise integer kernels (outputs or keys in the vector lanes, vpdpbusd): AVX-512 with VNNI. */
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__)
#define LANES 1
#else
#define LANES 0
#endif

#endif
