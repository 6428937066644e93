/* One decoding step of the whole layer stack, for n streams at one position (t = 1).
 *
 * engine_portable._forward, layer by layer, with the same kernels and the same IEEE operations
 * in the same order (so the same numbers: tests compare the two), but without returning to
 * Python between kernels: a decoder step makes ~40 kernel calls per layer, and their glue cost
 * a quarter of the step.  Weights packed for the lane-wise product (AVX-512 VNNI) or int8 rows
 * (the other paths: AVX2, NEON, plain C), as the engine holds them.
 *
 * Per layer l, with E = n_embd, Q = (H + 2 KV) D, R = H / KV query rows per kv head:
 *   h = rmsnorm(x);  qkv = h @ Wqkv;  q, k = rope(qkv's q, k parts);  v = qkv's v part
 *   k, v quantized to int8 per (stream, head) into the cache at array index o0;
 *   svc[o0] = max(sv[o0], svc[o0 - 1] if o0 > lo)
 *   attention of q (int8 per head) over the shared prefix (P keys) and own keys lo..o0;
 *   x += att @ Wo;  x += swiglu(rmsnorm(x) @ Wgateup) @ Wdown
 */
#include "common.h"
#include <time.h>

/* Wall seconds per phase of this thread's decoding steps since the last step_phases call, which
 * copies them out and resets them (scripts/bench_step.py: where a step's time goes). */
enum { PH_QKV, PH_CACHE, PH_QK, PH_SOFTMAX, PH_PV, PH_ATT, PH_O, PH_GATEUP, PH_DOWN, PH_N };
static _Thread_local double phase_s[PH_N];

int64_t step_phases(double *out)
{
    for (int i = 0; i < PH_N; i++)
        out[i] = phase_s[i], phase_s[i] = 0;
    return PH_N;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Charge the time since *t0 to phase i. */
static inline void lap(int i, double *t0)
{
    double t = now_s();
    phase_s[i] += t - *t0;
    *t0 = t;
}

void quant16(const double *x, int64_t n, int64_t K, double levels, int16_t *q, double *scale);
void rmsnorm(const double *x, int64_t n, int64_t K, const double *g, double eps, double *out);
void rope(const double *x, int64_t rows, int64_t ld, int64_t t, int64_t heads, int64_t dim, int64_t half,
          const double *cos, const double *sin, double *out);
void swiglu(const double *gu, int64_t n, int64_t F, const double *S, double R, double steps, double *out);
int64_t qgemm_lanes(const int16_t *x, int64_t n, int64_t K, const int8_t *wp, const int32_t *wsum, int64_t N,
                    int64_t *out, const double *sx, const double *ws, double *y, int64_t nt);
void qgemm(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t j0, int64_t j1, int64_t N,
           int64_t *out, const double *sx, const double *ws, double *y);
void qgemm_mt(const int16_t *x, int64_t n, int64_t K, const int8_t *w, int64_t N, int64_t *out,
              const double *sx, const double *ws, double *y, int64_t nt);
void qk_mt(const int8_t *q, const int8_t *k, int64_t B, int64_t R, int64_t T, int64_t D, int64_t kstride,
           int32_t *s, int64_t sb, int64_t ld, int64_t nt);
void pv_mt(const int32_t *p, const int8_t *v, int64_t B, int64_t R, int64_t T, int64_t D, int64_t vstride,
           int64_t *o, int64_t pb, int64_t ld, int64_t nt);
void softmax_p_mt(const int32_t *acc, const double *sq, const double *sk0, const double *sv0, int64_t P,
                  int64_t s0n, int64_t s0h, int64_t KV, const double *sk, const double *sv, const double *svmax,
                  const int64_t *pos, int64_t B, int64_t R, int64_t T, int64_t stride, double inv, double steps,
                  const int32_t *table, int64_t L, int32_t *p, int64_t *esum, int64_t nt);
int64_t attend_batches(const int8_t *q, const double *sq, int64_t n, int64_t KV, int64_t R, int64_t D, const int8_t *k0,
                       const int8_t *v0, int64_t kv0, const double *sk0, const double *sv0, int64_t s0, int64_t P,
                       const int8_t *k1, const int8_t *v1, int64_t kvn, int64_t kvh, const double *sk1,
                       const double *sv1, int64_t sn, int64_t sh, int64_t T, const int8_t *kp, const int8_t *vp,
                       const int32_t *ks, const double *svmax, const int64_t *pos, double inv, double steps,
                       const int32_t *table, int64_t L, int64_t *o, int64_t *esum, int64_t nt);

/* Per layer, 14 addresses (kernel.py builds the table): attn_norm, Wqkv (packed and row sums,
 * or int8 rows and 0; scales), Wo (3), ffn_norm, Wgateup (3), Wdown (3). */
enum { W_ANORM, W_QKV, W_QKV_SUM, W_QKV_S, W_O, W_O_SUM, W_O_S, W_FNORM, W_GU, W_GU_SUM, W_GU_S, W_D, W_D_SUM,
       W_D_S, W_FIELDS };

/* y = (q, rows scaled by sx) @ W (N outputs, its scales w[2]) as kernel.qmatmul does it, with the
 * same thread rules; out: int64 scratch for the int8-rows path.  0: out of memory. */
static int product(const int16_t *q, const double *sx, int64_t n, int64_t K, const int64_t *w, int64_t N,
                   int packed, int64_t *out, double *y, int64_t nt)
{
    const double *ws = (const double *)w[2];
    if (packed) /* qgemm_lanes itself runs small products on one thread */
        return (int)qgemm_lanes(q, n, K, (const int8_t *)w[0], (const int32_t *)w[1], N, NULL, sx, ws, y, nt);
    qgemm_mt(q, n, K, (const int8_t *)w[0], N, out, sx, ws, y, nt); /* it runs small products on one thread */
    return 1;
}

/* x += (a quantized per row) @ W. */
static int add_product(double *x, const double *a, int64_t n, int64_t K, const int64_t *w, int64_t N, int packed,
                       int16_t *q, double *sx, int64_t *out, double *y, int64_t nt)
{
    quant16(a, n, K, 32767.0, q, sx);
    if (!product(q, sx, n, K, w, N, packed, out, y, nt))
        return 0;
    for (int64_t i = 0; i < n * N; i++)
        x[i] = x[i] + y[i];
    return 1;
}

/* dims: n, E, H, KV, D, F, half (rope pairs), L (layers), packed (1: packed weights, 0: int8 rows).
 * Cache (own positions, int8 k/v and double sk/sv/svc, each (L, streams, KV, cap[, D])): base
 * addresses, ls / ns = strides of a layer / a stream in elements of the scale arrays (k and v:
 * times D), cap; o0 = array index of the new position, lo = first visible own index.  Optional
 * (NULL: none): kp, vp and ks, the same keys and values laid out for attend_batches, kept up
 * here (lo a multiple of 16, cap too, 64-byte aligned; D = 64); with them ck and cv may be NULL
 * (the cache held laid out only: then the fused attention must apply, n = 1 or P <= 4).
 * Shared prefix (P positions, stream 0 of a cache with capacity cap0; P = 0: none).
 * Returns 0 when memory runs out (x then undefined). */
int64_t decode_step(double *x, const int64_t *dims, const int64_t *wt, double eps, const double *cos,
                    const double *sin, int8_t *ck, int8_t *cv, double *csk, double *csv, double *csvc, int8_t *ckp,
                    int8_t *cvp, int32_t *cks, int64_t ls, int64_t ns, int64_t cap, int64_t o0, int64_t lo,
                    const int8_t *k0, const int8_t *v0,
                    const double *sk0, const double *sv0, const double *svc0, int64_t ls0, int64_t cap0, int64_t P,
                    double inv, double steps, const int32_t *table, int64_t tlen, const double *sig, double sig_range,
                    double sig_steps, int64_t nt)
{
    int64_t n = dims[0], E = dims[1], H = dims[2], KV = dims[3], D = dims[4], F = dims[5], half = dims[6];
    int64_t L = dims[7], packed = dims[8], R = H / KV, Q = (H + 2 * KV) * D, own = o0 + 1 - lo, T = P + own, B = n * KV;
    int64_t wide = Q > 2 * F ? Q : 2 * F, rows = n * H, in = E > F ? E : F;
    in = in > H * D ? in : H * D;
    /* one allocation, cut into regions of whole cache lines */
    size_t sz[] = {sizeof(double) * (size_t)(n * E), sizeof(double) * (size_t)(n * wide),
                   sizeof(double) * (size_t)(n * H * D), sizeof(double) * (size_t)(n * F),
                   sizeof(double) * (size_t)(n * wide), sizeof(double) * (size_t)rows, sizeof(double) * (size_t)rows,
                   sizeof(double) * (size_t)(B * R), sizeof(int16_t) * (size_t)(n * in),
                   sizeof(int16_t) * (size_t)(n * H * D), sizeof(int16_t) * (size_t)(n * H * D),
                   sizeof(int32_t) * (size_t)(B * R * T), sizeof(int64_t) * (size_t)(B * R * D),
                   sizeof(int64_t) * (size_t)(B * R), sizeof(int64_t) * (size_t)R, sizeof(int64_t) * (size_t)(B * R * D),
                   sizeof(int8_t) * (size_t)(B * R * D), sizeof(int32_t) * (size_t)(B * R * P),
                   sizeof(int64_t) * (size_t)(packed ? 1 : n * wide)};
    enum { NREG = sizeof(sz) / sizeof(sz[0]) };
    size_t off[NREG], bytes = 0;
    for (int i = 0; i < NREG; i++) {
        off[i] = bytes;
        bytes += (sz[i] + 63) / 64 * 64;
    }
    char *mem = aligned_alloc(64, bytes);
    if (!mem)
        return 0;
    double *h = (double *)(mem + off[0]), *qkv = (double *)(mem + off[1]), *qr = (double *)(mem + off[2]);
    double *ff = (double *)(mem + off[3]), *y = (double *)(mem + off[4]), *s1 = (double *)(mem + off[5]);
    double *s2 = (double *)(mem + off[6]), *svmax = (double *)(mem + off[7]);
    int16_t *q16 = (int16_t *)(mem + off[8]), *a16 = (int16_t *)(mem + off[9]), *k16 = (int16_t *)(mem + off[10]);
    int32_t *acc = (int32_t *)(mem + off[11]);
    int64_t *pv = (int64_t *)(mem + off[12]), *esum = (int64_t *)(mem + off[13]), *pos = (int64_t *)(mem + off[14]);
    int64_t *pv0 = (int64_t *)(mem + off[15]);
    int8_t *qt = (int8_t *)(mem + off[16]); /* query rows by kv head: (KV, n * R, D) */
    int32_t *at = (int32_t *)(mem + off[17]); /* their scores, then weights, over the shared keys */
    int64_t *prod = (int64_t *)(mem + off[18]); /* exact products of the int8-rows path */
    /* A long shared prefix (a record codec's context) is read once for the rows of all streams,
     * as the layer loop does; a start token or two costs less per stream. */
    int once = n > 1 && P > 4, snt = KV * R * P * D >= 1 << 18 ? nt : 1;
    int8_t *q8 = (int8_t *)a16; /* the query rows as int8, over the values' int16 form (in the cache by then) */
    int64_t ok = 1;
    for (int64_t r = 0; r < R; r++)
        pos[r] = T - 1; /* every row sits at the new position: all T keys visible */
    double t0 = now_s();
    for (int64_t l = 0; l < L && ok; l++) {
        const int64_t *w = wt + l * W_FIELDS;
        int8_t *K8 = ck ? ck + l * ls * D : NULL, *V8 = cv ? cv + l * ls * D : NULL; /* NULL: held laid out only */
        int8_t *KP = ckp ? ckp + l * ls * D : NULL, *VP = cvp ? cvp + l * ls * D : NULL;
        int32_t *KS = cks ? cks + l * ls : NULL;
        double *SK = csk + l * ls, *SV = csv + l * ls, *SVC = csvc + l * ls;
        /* h = rmsnorm(x); qkv = h @ Wqkv */
        rmsnorm(x, n, E, (const double *)w[W_ANORM], eps, h);
        quant16(h, n, E, 32767.0, q16, s1);
        if (!product(q16, s1, n, E, w + W_QKV, Q, packed, prod, qkv, nt)) {
            ok = 0;
            break;
        }
        lap(PH_QKV, &t0);
        /* q and k rotated; k and v quantized per (stream, head) into the cache at o0 */
        rope(qkv, n, Q, 1, H, D, half, cos, sin, qr);
        rope(qkv + H * D, n, Q, 1, KV, D, half, cos, sin, y); /* y: scratch for the rotated keys */
        quant16(y, n * KV, D, 127.0, k16, s1);
        for (int64_t b = 0; b < n; b++) {
            quant16(qkv + b * Q + (H + KV) * D, KV, D, 127.0, a16 + b * KV * D, s2 + b * KV);
            for (int64_t j = 0; j < KV; j++) {
                int64_t c = b * ns + j * cap + o0, i = b * KV + j;
                for (int64_t d = 0; K8 && d < D; d++) {
                    K8[c * D + d] = (int8_t)k16[i * D + d];
                    V8[c * D + d] = (int8_t)a16[i * D + d];
                }
                if (KP) { /* laid out for the lane-wise attention: see attend_batches */
                    int8_t *kb = KP + (c - o0 % 16) * D, *vb = VP + (c - o0 % 4) * D;
                    int32_t sum = 0;
                    for (int64_t d = 0; d < D; d++) {
                        kb[d / 4 * 64 + o0 % 16 * 4 + d % 4] = (int8_t)k16[i * D + d];
                        vb[d % 16 / 4 * 64 + d / 16 * 16 + d % 4 * 4 + o0 % 4] = (int8_t)a16[i * D + d];
                        sum += (int8_t)k16[i * D + d];
                    }
                    KS[c] = 128 * sum;
                }
                SK[c] = s1[i];
                SV[c] = s2[i];
                SVC[c] = o0 > lo && SVC[c - 1] > s2[i] ? SVC[c - 1] : s2[i]; /* np.maximum: no NaN here */
            }
        }
        /* attention: int8 query rows (R per kv head, in head order), the largest visible value scale */
        quant16(qr, n * H, D, 127.0, k16, s1); /* k16 now holds the query rows */
        for (int64_t i = 0; i < n * H * D; i++)
            q8[i] = (int8_t)k16[i];
        for (int64_t b = 0; b < n; b++)
            for (int64_t j = 0; j < KV; j++) {
                double m = SVC[b * ns + j * cap + o0];
                if (P && svc0[l * ls0 + j * cap0 + P - 1] > m)
                    m = svc0[l * ls0 + j * cap0 + P - 1];
                for (int64_t r = 0; r < R; r++)
                    svmax[(b * KV + j) * R + r] = m;
            }
        int64_t work = B * R * T * D, ant = work >= 1 << 18 ? nt : 1;
        lap(PH_CACHE, &t0);
        /* fused, one (stream, kv head) per task, unless one pass over a long shared prefix for all
         * streams' rows reads less */
        if (!once && attend_batches(q8, s1, n, KV, R, D, P ? k0 + l * ls0 * D : NULL, P ? v0 + l * ls0 * D : NULL,
                                    cap0 * D, P ? sk0 + l * ls0 : SK, P ? sv0 + l * ls0 : SV, cap0, P,
                                    K8 ? K8 + lo * D : NULL, V8 ? V8 + lo * D : NULL, ns * D, cap * D, SK + lo, SV + lo,
                                    ns, cap, T,
                                    KP ? KP + lo * D : NULL, VP ? VP + lo * D : NULL, KS ? KS + lo : NULL, svmax,
                                    pos, inv, steps, table, tlen, pv, esum, ant)) {
            lap(PH_ATT, &t0);
        } else if (!K8) { /* a cache held laid out only is for the fused path (the engine sees to it) */
            ok = 0;
            break;
        } else {
            qk_mt(q8, K8 + lo * D, B, R, own, D, cap * D, acc + P, R * T, T, ant);
            if (once) {
                for (int64_t b = 0; b < n; b++)
                    for (int64_t j = 0; j < KV; j++)
                        for (int64_t i = 0; i < R * D; i++)
                            qt[(j * n + b) * R * D + i] = q8[(b * KV + j) * R * D + i];
                qk_mt(qt, k0 + l * ls0 * D, KV, n * R, P, D, cap0 * D, at, n * R * P, P, ant);
                for (int64_t b = 0; b < n; b++)
                    for (int64_t j = 0; j < KV; j++)
                        for (int64_t r = 0; r < R; r++)
                            for (int64_t c = 0; c < P; c++)
                                acc[((b * KV + j) * R + r) * T + c] = at[((j * n + b) * R + r) * P + c];
            }
            for (int64_t b = 0; P && !once && b < n; b++) /* the shared prefix's keys, for each stream's rows */
                qk_mt(q8 + b * KV * R * D, k0 + l * ls0 * D, KV, R, P, D, cap0 * D, acc + b * KV * R * T, R * T, T, snt);
            lap(PH_QK, &t0);
            softmax_p_mt(acc, s1, P ? sk0 + l * ls0 : SK + lo, P ? sv0 + l * ls0 : SV + lo, P, 0, cap0, KV, SK + lo,
                         SV + lo, svmax, pos, B, R, T, cap, inv, steps, table, tlen, acc, esum,
                         B * R * T * 16 >= 1 << 18 ? nt : 1);
            for (int64_t i = 0; i < B * R; i++)
                if (!esum[i]) /* every row sees at least its top key: 0 means malloc failed */
                    ok = 0;
            lap(PH_SOFTMAX, &t0);
            pv_mt(acc + P, V8 + lo * D, B, R, own, D, cap * D, pv, R * T, T, ant);
            if (once) {
                for (int64_t b = 0; b < n; b++)
                    for (int64_t j = 0; j < KV; j++)
                        for (int64_t r = 0; r < R; r++)
                            for (int64_t c = 0; c < P; c++)
                                at[((j * n + b) * R + r) * P + c] = acc[((b * KV + j) * R + r) * T + c];
                pv_mt(at, v0 + l * ls0 * D, KV, n * R, P, D, cap0 * D, pv0, n * R * P, P, ant);
                for (int64_t b = 0; b < n; b++)
                    for (int64_t j = 0; j < KV; j++)
                        for (int64_t i = 0; i < R * D; i++)
                            pv[(b * KV + j) * R * D + i] += pv0[(j * n + b) * R * D + i];
            }
            for (int64_t b = 0; P && !once && b < n; b++) {
                pv_mt(acc + b * KV * R * T, v0 + l * ls0 * D, KV, R, P, D, cap0 * D, pv0, R * T, T, snt);
                for (int64_t i = 0; i < KV * R * D; i++)
                    pv[b * KV * R * D + i] += pv0[i];
            }
            lap(PH_PV, &t0);
        }
        for (int64_t i = 0; i < B * R; i++)
            for (int64_t d = 0; d < D; d++)
                qr[i * D + d] = (double)pv[i * D + d] * svmax[i] / (double)esum[i];
        /* x += att @ Wo;  x += swiglu(rmsnorm(x) @ Wgateup) @ Wdown */
        if (!add_product(x, qr, n, H * D, w + W_O, E, packed, q16, s1, prod, y, nt)) {
            ok = 0;
            break;
        }
        lap(PH_O, &t0);
        rmsnorm(x, n, E, (const double *)w[W_FNORM], eps, h);
        quant16(h, n, E, 32767.0, q16, s1);
        if (!product(q16, s1, n, E, w + W_GU, 2 * F, packed, prod, qkv, nt)) {
            ok = 0;
            break;
        }
        lap(PH_GATEUP, &t0);
        swiglu(qkv, n, F, sig, sig_range, sig_steps, ff);
        if (!add_product(x, ff, n, F, w + W_D, E, packed, q16, s1, prod, y, nt))
            ok = 0;
        lap(PH_DOWN, &t0);
    }
    free(mem);
    return ok;
}
