#!/usr/bin/env python3
"""Time one decoder step of the default model against the memory it reads (a table, no asserts).

A decoder step advances every stream of a lockstep group by one position: it reads all the
weights once and each stream's keys and values.  For n streams whose windows are full (format
2: 2,048 positions), this fills a stepper with random tokens, then times steps with 1 and 2
kernel threads, and prints ms per step, tokens/s, and the bytes a step reads over its time
beside the rate this machine streams memory at (numpy threads taking the maximum of parts of a
256 MB byte array; numpy's reductions release the GIL); then, per row, the milliseconds of a
step that each phase of the native step took (``kernel.step_phases``; the rest of a step is
the output layer and Python).

    OPENBLAS_NUM_THREADS=1 python scripts/bench_step.py [--streams 1,7] [--steps 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinylmz import codec, kernel, registry, threads  # noqa: E402
from tinylmz.engine_portable import PortableEngine  # noqa: E402
from tinylmz.tokens import Tokenizer  # noqa: E402


def stream_rate(n: int, mb: int = 256) -> float:
    """GB/s of reading a byte array in ``n`` numpy threads (its maximum; best of 5)."""
    a = np.ones(mb << 20, dtype=np.uint8)
    parts = np.array_split(a, n)
    with ThreadPoolExecutor(n) as ex:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            list(ex.map(np.max, parts))
            best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,7", help="stream counts, comma-separated")
    ap.add_argument("--steps", type=int, default=40, help="steps timed per thread count")
    ap.add_argument("--window", type=int, default=codec.V2_WINDOW)
    args = ap.parse_args()
    m = registry.resolve(None)
    eng = PortableEngine(m.path, m.sha256)
    cfg = eng.cfg
    weights = sum(lin.n * lin.k for layer in eng.w.layers for lin in layer.values() if hasattr(lin, "k"))
    weights += eng.w.head.n * eng.w.head.k
    kv_per_stream = cfg.n_layer * 2 * cfg.n_head_kv * cfg.head_dim * args.window  # int8 keys and values
    print(f"memory: {stream_rate(1):.0f} GB/s with 1 thread, {stream_rate(2):.0f} GB/s with 2 (numpy reads)")
    print(f"a step reads {weights / 1e6:.0f} MB of int8 weights and {kv_per_stream / 1e6:.1f} MB of int8 keys "
          f"and values per stream (window {args.window})")
    print(f"{'streams':>7} {'threads':>7} {'ms/step':>8} {'tokens/s':>8} {'GB/s read':>9}")
    rng = np.random.default_rng(0)
    start = Tokenizer(m.path).vocab.start_id
    phases = []
    for n in (int(s) for s in args.streams.split(",")):
        st = eng.stepper(eng.prefill([start]), n, window=args.window)
        for _ in range(args.window + 2 * codec.WINDOW_STEP):
            st.feed(rng.integers(100, 20000, n).tolist())
        for nt in (1, 2):
            threads.set_threads(nt)
            if eng.native:
                kernel.step_phases()  # reset
            ts = []
            for _ in range(args.steps):
                ids = rng.integers(100, 20000, n).tolist()
                t = time.perf_counter()
                st.feed(ids)
                ts.append(time.perf_counter() - t)
            ms = float(np.median(ts)) * 1e3
            print(f"{n:7d} {nt:7d} {ms:8.2f} {n / ms * 1e3:8.0f} {(weights + n * kv_per_stream) / ms / 1e6:9.1f}")
            if eng.native:
                phases.append((n, nt, kernel.step_phases()))
    threads.set_threads(None)
    if phases:
        print("\nms per step in each phase of the native step (mean over the timed steps)")
        print(f"{'phase':>22} " + " ".join(f"{f'{n}s {nt}t':>7}" for n, nt, _ in phases))
        for name in kernel.STEP_PHASES:
            print(f"{name:>22} " + " ".join(f"{ph[name] / args.steps * 1e3:7.2f}" for _, _, ph in phases))
        print(f"{'all phases':>22} " + " ".join(f"{sum(ph.values()) / args.steps * 1e3:7.2f}" for _, _, ph in phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
