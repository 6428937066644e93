/* Elementwise steps of the forward pass: the same IEEE operations, in the same order, as
 * engine_portable's numpy definitions. */
#include "common.h"

/* max_k |x[k]| (0 for an empty row; NaN entries are skipped).  8 at a time where AVX-512 is
 * there: a maximum does not depend on order, and max_pd(a, m) keeps m where a is NaN, as the
 * scalar test does. */
static double row_absmax(const double *x, int64_t K)
{
    double amax = 0.0;
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512d m = _mm512_setzero_pd();
    for (; k + 8 <= K; k += 8)
        m = _mm512_max_pd(_mm512_abs_pd(_mm512_loadu_pd(x + k)), m);
    amax = _mm512_reduce_max_pd(m);
#endif
    for (; k < K; k++) {
        double a = fabs(x[k]);
        if (a > amax)
            amax = a;
    }
    return amax;
}

/* Per-row symmetric quantization to int16, as elementwise.quant(x, levels):
 * s = max|x| / levels (1 where the row is all zeros), q = rint(x / s). */
void quant16(const double *x, int64_t n, int64_t K, double levels, int16_t *q, double *scale)
{
    for (int64_t i = 0; i < n; i++) {
        const double *xr = x + i * K;
        int16_t *qr = q + i * K;
        double amax = row_absmax(xr, K);
        double s = amax > 0 ? amax / levels : 1.0;
        int64_t k = 0; /* roundscale below rounds half to even, as nearbyint */
#if defined(__AVX512F__) && defined(__AVX512DQ__)
        const __m512d vs = _mm512_set1_pd(s);
        for (; k + 8 <= K; k += 8) {
            __m512d r = _mm512_roundscale_pd(_mm512_div_pd(_mm512_loadu_pd(xr + k), vs),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i *)(qr + k), _mm512_cvtepi64_epi16(_mm512_cvtpd_epi64(r)));
        }
#endif
        for (; k < K; k++)
            qr[k] = (int16_t)nearbyint(xr[k] / s);
        scale[i] = s;
    }
}

/* RMSNorm as elementwise.rmsnorm: x quantized to int16 per row (s, q = rint(x / s)),
 * ss = sum q^2 (integers: exact in any order), r = sqrt(s * s * ss / K + eps),
 * out = q * s / r * g, each step one IEEE operation in numpy's order. */
void rmsnorm(const double *x, int64_t n, int64_t K, const double *g, double eps, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        const double *xr = x + i * K;
        double *o = out + i * K, amax = row_absmax(xr, K), ss = 0.0;
        double s = amax > 0 ? amax / 32767.0 : 1.0;
        int64_t k = 0; /* 8 at a time as in quant16; the sum of squares is of integers < 2^53 */
#if defined(__AVX512F__)
        __m512d vs = _mm512_set1_pd(s), acc = _mm512_setzero_pd();
        for (; k + 8 <= K; k += 8) {
            __m512d q = _mm512_roundscale_pd(_mm512_div_pd(_mm512_loadu_pd(xr + k), vs),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm512_storeu_pd(o + k, q);
            acc = _mm512_add_pd(acc, _mm512_mul_pd(q, q));
        }
        ss = _mm512_reduce_add_pd(acc);
#endif
        for (; k < K; k++) {
            o[k] = nearbyint(xr[k] / s);
            ss += o[k] * o[k];
        }
        double r = sqrt(s * s * ss / (double)K + eps);
        k = 0;
#if defined(__AVX512F__)
        __m512d vr = _mm512_set1_pd(r);
        for (; k + 8 <= K; k += 8)
            _mm512_storeu_pd(o + k, _mm512_mul_pd(_mm512_div_pd(_mm512_mul_pd(_mm512_loadu_pd(o + k), vs), vr),
                                                  _mm512_loadu_pd(g + k)));
#endif
        for (; k < K; k++)
            o[k] = o[k] * s / r * g[k];
    }
}

/* RoPE as elementwise.rope, rows of `heads` vectors of `dim` (row r starts at x + r * ld):
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

/* SwiGLU as elementwise.silu(g) * u, for rows gu = [g | u] of 2 * F doubles:
 *   t = (clip(g, -R, R) + R) * steps;  i = floor(t);  f = t - i
 *   sig = S[i] + (S[i + 1] - S[i]) * f   (0 where g < -R);  out = (g * sig) * u
 */
void swiglu(const double *gu, int64_t n, int64_t F, const double *S, double R, double steps, double *out)
{
    for (int64_t r = 0; r < n; r++) {
        const double *g = gu + r * 2 * F, *u = g + F;
        double *o = out + r * F;
        int64_t k = 0;
#if defined(__AVX512F__) /* the same operations 8 at a time; floor is roundscale toward -inf */
        const __m512d lo = _mm512_set1_pd(-R), hi = _mm512_set1_pd(R), st = _mm512_set1_pd(steps);
        for (; k + 8 <= F; k += 8) {
            __m512d gk = _mm512_loadu_pd(g + k);
            __m512d c = _mm512_min_pd(_mm512_max_pd(gk, lo), hi); /* no NaN here: g is finite */
            __m512d t = _mm512_mul_pd(_mm512_add_pd(c, hi), st);
            __m512d fi = _mm512_roundscale_pd(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            __m512d f = _mm512_sub_pd(t, fi);
            __m256i i = _mm512_cvttpd_epi32(fi);
            __m512d s0 = _mm512_i32gather_pd(i, S, 8), s1 = _mm512_i32gather_pd(i, S + 1, 8);
            __m512d sig = _mm512_add_pd(s0, _mm512_mul_pd(_mm512_sub_pd(s1, s0), f));
            sig = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(gk, lo, _CMP_LT_OQ), sig, _mm512_setzero_pd());
            _mm512_storeu_pd(o + k, _mm512_mul_pd(_mm512_mul_pd(gk, sig), _mm512_loadu_pd(u + k)));
        }
#endif
        for (; k < F; k++) {
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
