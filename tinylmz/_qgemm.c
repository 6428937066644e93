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
