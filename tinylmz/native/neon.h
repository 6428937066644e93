/* NEON (aarch64) forms of the integer products; common.h includes this on aarch64.
 *
 * Two levels, chosen by what the compiler targets (-march=native on the board):
 *   - plain NEON (ARMv8.0, e.g. Cortex-A72, Raspberry Pi 4): the generic tile loops of
 *     matmul.c get a mac() of vmlal_s16 (int16 x int16 widened into int32 lanes), and
 *     neon_qk() multiplies int8 by int8 with vmull_s8 / vpadalq_s16;
 *   - with the dot product (__ARM_FEATURE_DOTPROD, ARMv8.2, e.g. Cortex-A76, Raspberry Pi 5):
 *     neon_qgemm() and neon_qk() use sdot (vdotq_s32: four int8 x int8 products summed
 *     into each int32 lane).
 *
 * All of them return exact integers, the numbers numpy's int64 products give; the bounds
 * that keep every int32 lane from overflowing are given where each sums.
 *
 * Generic mac(): a lane takes 2 products per call, VEC / 8 = 1 call per 8 k, so KB / 4 products
 * per block of KB = 1024: 256 * 32767 * 127 < 2^30.
 */
#ifndef TINYLMZ_NEON_H
#define TINYLMZ_NEON_H
#include <arm_neon.h>

#define TINYLMZ_NEON 1
#ifdef __ARM_FEATURE_DOTPROD
#define TINYLMZ_NEON_DOT 1
#endif

#define KB 1024
#define VEC 8 /* int16 lanes per vector */
#define TR 4
#define TC 4
/* One type for the generic loops: accumulators are int32x4, loaded x and widened w are
 * int16x8 reinterpreted (free) so that tile() can hold them in acc_t variables. */
typedef int32x4_t acc_t;
static inline acc_t acc_zero(void) { return vdupq_n_s32(0); }
static inline acc_t load_x(const int16_t *p) { return vreinterpretq_s32_s16(vld1q_s16(p)); }
static inline acc_t load_w(const int8_t *p) { return vreinterpretq_s32_s16(vmovl_s8(vld1_s8(p))); }
static inline acc_t mac(acc_t a, acc_t x, acc_t w)
{
    int16x8_t x16 = vreinterpretq_s16_s32(x), w16 = vreinterpretq_s16_s32(w);
    return vmlal_high_s16(vmlal_s16(a, vget_low_s16(x16), vget_low_s16(w16)), x16, w16);
}
static inline int64_t acc_sum(acc_t a) { return vaddlvq_s32(a); }

/* neon.c.  neon_qgemm: columns j0..j1-1 of out = x w^T exactly (as qgemm in matmul.c);
 * returns 0 (nothing written) where it has no path (no dot product) or memory runs out.
 * neon_qk: qk (attention.c) for D a multiple of 16, neon_pv: pv for D = 64; 0 otherwise. */
int neon_qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1, int64_t N,
               int64_t *out);
int neon_qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D, int64_t kstride,
            int32_t *s, int64_t ld);
int neon_pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D, int64_t vstride,
            int64_t *o, int64_t ld);
#endif
