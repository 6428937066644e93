#!/usr/bin/env python3
"""Time the portable engine's native kernels on the default model's shapes (a table, no asserts).

Matrix products: int8 rows (the AVX2/plain path, also used where AVX-512 VNNI is missing)
against packed weights (the lane-wise VNNI path), for a record's worth of positions (50),
a decoder step (1, 3, 4 and 7 streams: rows left over from tiles of 4 are tiled too) and the
output layer; attention: one stream's one-pass
kernel (``attend1``) against the separate score / weight / value kernels, for a record
(56 positions after a 1,646-token shared context); the frequency function (``freqs.pick``)
per row of the default model's 49,152 logits, coding and decoding, with and without the
adaptive models' biases.  Each figure is the best of 5 runs.

    python scripts/bench_kernels.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinylmz import kernel, tables  # noqa: E402


def best(f, reps: int = 10) -> float:
    f()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        times.append((time.perf_counter() - t0) / reps)
    return min(times)


def products(threads: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nmatrix products, {threads} thread(s): ms per call (G multiply-adds/s)")
    print(f"{'n x K x N':>20} {'int8 rows':>18} {'packed':>18}")
    for n, K, N in [(50, 576, 960), (50, 576, 3072), (50, 1536, 576), (32, 576, 49152), (1, 576, 3072),
                    (3, 576, 3072), (4, 576, 3072), (7, 576, 3072), (7, 1536, 576), (7, 576, 49152)]:
        x = rng.standard_normal((n, K))
        w = rng.integers(-127, 128, (N, K)).astype(np.int8)
        ws = rng.random(N)
        cells = []
        for op in (w, kernel.Packed(w) if kernel.packs() else None):
            if op is None:
                cells.append("-")
                continue
            t = best(lambda op=op: kernel.qmatmul(x, op, ws))
            cells.append(f"{t * 1e3:.3f} ({n * K * N / t / 1e9:.0f})")
        print(f"{f'{n} x {K} x {N}':>20} {cells[0]:>18} {cells[1]:>18}")


def attention(threads: int) -> None:
    rng = np.random.default_rng(1)
    H, R, P, own, D = 3, 168, 1646, 56, 64
    T = P + own
    q = rng.integers(-127, 128, (H, R, D)).astype(np.int8)
    k0, v0 = (rng.integers(-127, 128, (1, H, P, D)).astype(np.int8) for _ in range(2))
    k1, v1 = (rng.integers(-127, 128, (1, H, own, D)).astype(np.int8) for _ in range(2))
    sk0, sv0 = rng.random((1, H, P)) * 0.01, rng.random((1, H, P)) * 0.05
    sk1, sv1 = rng.random((1, H, own)) * 0.01, rng.random((1, H, own)) * 0.05
    sq = rng.random((1, H, R)) * 0.01
    pos = np.repeat(np.arange(T - R // 3, T), 3)
    svmax = np.maximum(sv0.max(-1)[..., None], np.maximum.accumulate(sv1, -1)[..., pos - P])
    E = tables.att_exp()

    def separate():
        acc = np.empty((1, H, R, T), np.int32)
        kernel.attn_scores(q[None], k1, own, out=acc[..., P:])
        kernel.attn_scores(q[None], k0, P, out=acc[..., :P])
        p, _ = kernel.softmax_p(acc, sq, sk1, sv1, svmax, pos, 0.125, tables.ATT_STEPS, E, (sk0, sv0), out=acc)
        return kernel.attn_values(p[..., P:], v1) + kernel.attn_values(p[..., :P], v0)

    print(f"\nattention of one record ({R} query rows, {T} keys, {P} shared), {threads} thread(s): ms per layer")
    print(f"  separate kernels {best(separate) * 1e3:.3f}")
    if kernel.fused_attention(D, R):
        one = best(lambda: kernel.attend1(q, sq[0], (k1[0], v1[0], sk1[0], sv1[0]), (k0[0], v0[0], sk0[0], sv0[0]),
                                          P, T, svmax[0], pos, 0.125, tables.ATT_STEPS, E))
        print(f"  one pass (attend1) {one * 1e3:.3f}")


def frequencies(threads: int) -> None:
    from tinylmz import freqs

    rng = np.random.default_rng(0)
    n, V = 32, 49152
    logits = (rng.standard_normal((n, V)) * 3).astype(np.float32)
    ids = rng.integers(0, V, n)
    biases = [([int(x) for x in rng.integers(0, V, 3)], [0, 256, -256]) for _ in range(n)]
    targets = freqs.pick(logits, V, ids)[1]
    print(f"\nfrequency function, {n} rows of {V} logits, {threads} thread(s): microseconds per row")
    for name, f in (("code", lambda: freqs.pick(logits, V, ids)),
                    ("decode", lambda: freqs.pick(logits, V, targets, decode=True)),
                    ("code, 3 biased ids", lambda: freqs.pick(logits, V, ids, biases=biases))):
        print(f"  {name:20} {best(f) / n * 1e6:8.1f}")


def main() -> int:
    if kernel.load() is None:
        print("the native kernel is not available here (no C compiler, or TINYLMZ_NATIVE=0)")
        return 1
    print(f"lane-wise (AVX-512 VNNI) paths: {'yes' if kernel.packs() else 'no'}; OpenMP: "
          f"{'yes' if kernel.load().lib.qgemm_parallel() else 'no'}")
    real = kernel.threads
    for nt in sorted({1, real()}):
        kernel.threads = lambda nt=nt: nt
        products(nt)
        attention(nt)
        frequencies(nt)
    kernel.threads = real
    return 0


if __name__ == "__main__":
    sys.exit(main())
