/* Exact integer matrix product for the portable engine (tinylmz/kernel.py builds and loads it).
 *
 *   out[i][j] = sum_k x[i][k] * w[j][k]      x int16 (n x K), w int8 (N x K), out int64
 *
 * Integer arithmetic is exact whatever the instruction set, so this kernel gives
 * the same numbers as the numpy path on every machine; it is only faster.
 * Partial sums over 256 products stay below 256 * 32767 * 127 < 2^31 (int32),
 * and are added into int64.  The bulk is done in 4x4 tiles (4 rows of x times
 * 4 rows of w), which the compiler vectorizes with the loads shared.
 */
#include <stdint.h>

#define KB 256

static void tile(const int16_t *x, int64_t K, const int8_t *w, int64_t *o, int64_t N)
{
    int64_t t[4][4] = {{0}};
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        int64_t k1 = k0 + KB < K ? k0 + KB : K;
        int32_t a[4][4] = {{0}};
        for (int64_t k = k0; k < k1; k++) {
            int32_t w0 = w[k], w1 = w[K + k], w2 = w[2 * K + k], w3 = w[3 * K + k];
            for (int r = 0; r < 4; r++) {
                int32_t xv = x[r * K + k];
                a[r][0] += xv * w0;
                a[r][1] += xv * w1;
                a[r][2] += xv * w2;
                a[r][3] += xv * w3;
            }
        }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++)
                t[r][c] += a[r][c];
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            o[r * N + c] = t[r][c];
}

static int64_t row1(const int16_t *xr, const int8_t *wr, int64_t K)
{
    int64_t total = 0;
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        int64_t k1 = k0 + KB < K ? k0 + KB : K;
        int32_t acc = 0;
        for (int64_t k = k0; k < k1; k++)
            acc += (int32_t)xr[k] * (int32_t)wr[k];
        total += acc;
    }
    return total;
}

/* Columns j0..j1-1 of out (so threads can split the weight rows). */
void qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1,
           int64_t N, int64_t *out)
{
    int64_t n4 = n - n % 4, j = j0;
    for (; j + 4 <= j1; j += 4) {
        for (int64_t i = 0; i < n4; i += 4)
            tile(x + i * K, K, w + j * K, out + i * N + j, N);
        for (int64_t i = n4; i < n; i++)
            for (int c = 0; c < 4; c++)
                out[i * N + j + c] = row1(x + i * K, w + (j + c) * K, K);
    }
    for (; j < j1; j++)
        for (int64_t i = 0; i < n; i++)
            out[i * N + j] = row1(x + i * K, w + j * K, K);
}

/* Attention products, batched over B = streams x kv-heads; integer and exact.
 *
 *   qk: s[b][r][j] = sum_d q[b][r][d] * k[b][j][d]     q, k int8; |s| <= D * 127^2 (int32)
 *   pv: o[b][r][d] = sum_j p[b][r][j] * v[b][j][d]     p int32 (<= 2^16), v int8; int64
 *
 * k and v are read with a stride per batch (the cache's capacity), so the
 * cache is used in place without copies.
 */
void qk(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t kstride, int32_t *s)
{
    for (int64_t b = 0; b < B; b++) {
        const int8_t *kb = k + b * kstride;
        for (int64_t r = 0; r < R; r++) {
            const int8_t *qr = q + (b * R + r) * D;
            int32_t *sr = s + (b * R + r) * T;
            for (int64_t j = 0; j < T; j++) {
                const int8_t *kj = kb + j * D;
                int32_t acc = 0;
                for (int64_t d = 0; d < D; d++)
                    acc += (int32_t)qr[d] * (int32_t)kj[d];
                sr[j] = acc;
            }
        }
    }
}

void pv(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D,
        int64_t vstride, int64_t *o)
{
    /* p <= 2^16 and |v| <= 127: 128 products sum below 2^31, so int32 partial sums in blocks of 128 */
    for (int64_t b = 0; b < B; b++) {
        const int8_t *vb = v + b * vstride;
        for (int64_t r = 0; r < R; r++) {
            const int32_t *pr = p + (b * R + r) * T;
            int64_t acc[256];
            int32_t part[256];
            for (int64_t d = 0; d < D; d++)
                acc[d] = 0;
            for (int64_t j0 = 0; j0 < T; j0 += 128) {
                int64_t j1 = j0 + 128 < T ? j0 + 128 : T;
                for (int64_t d = 0; d < D; d++)
                    part[d] = 0;
                for (int64_t j = j0; j < j1; j++) {
                    int32_t pj = pr[j];
                    if (pj == 0)
                        continue;
                    const int8_t *vj = vb + j * D;
                    for (int64_t d = 0; d < D; d++)
                        part[d] += pj * (int32_t)vj[d];
                }
                for (int64_t d = 0; d < D; d++)
                    acc[d] += part[d];
            }
            for (int64_t d = 0; d < D; d++)
                o[(b * R + r) * D + d] = acc[d];
        }
    }
}

/* Integer scores -> integer attention weights, exactly as engine_portable._attend does it in numpy
 * (same IEEE double operations in the same order; build with -ffp-contract=off so that no
 * multiply-add is fused).  For batch b, query row r at position pos[r], keys j < T, key j visible
 * when j <= pos[r]:
 *     s      = ((acc * sq[b][r]) * sk[b][j]) * inv
 *     d      = min(rint((max_visible(s) - s) * steps), L - 1)
 *     e      = table[d]                        (0 for invisible keys)
 *     p      = rint(e * (sv[b][j] / svmax[b][r]))
 *     esum   = sum_j e
 * sk and sv are read with a stride per batch (the cache's capacity).
 */
#include <math.h>

void softmax_p(const int32_t *acc, const double *sq, const double *sk, const double *sv,
               const double *svmax, const int64_t *pos, int64_t B, int64_t R, int64_t T, int64_t stride,
               double inv, double steps, const int64_t *table, int64_t L, int32_t *p, int64_t *esum)
{
    for (int64_t b = 0; b < B; b++) {
        const double *skb = sk + b * stride, *svb = sv + b * stride;
        for (int64_t r = 0; r < R; r++) {
            const int32_t *ar = acc + (b * R + r) * T;
            int32_t *pr = p + (b * R + r) * T;
            int64_t vis = pos[r] + 1 < T ? pos[r] + 1 : T;
            double qs = sq[b * R + r], m = -INFINITY, sm = svmax[b * R + r];
            for (int64_t j = 0; j < vis; j++) {
                double s = (((double)ar[j] * qs) * skb[j]) * inv;
                if (s > m)
                    m = s;
            }
            int64_t total = 0;
            for (int64_t j = 0; j < vis; j++) {
                double s = (((double)ar[j] * qs) * skb[j]) * inv;
                double d = nearbyint((m - s) * steps);
                int64_t e = table[d < (double)(L - 1) ? (int64_t)d : L - 1];
                total += e;
                pr[j] = (int32_t)nearbyint((double)e * (svb[j] / sm));
            }
            for (int64_t j = vis; j < T; j++)
                pr[j] = 0;
            esum[b * R + r] = total;
        }
    }
}
