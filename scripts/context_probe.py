#!/usr/bin/env python3
"""Where long context stops paying: a stream's cold start, and positions far from its start (a table).

    OPENBLAS_NUM_THREADS=1 python scripts/context_probe.py [FILE] [--window 2048] [--every 6400]

Scores FILE (default alice29) as one long stream with a sliding window (the encoder's
``score``), then, at every ``--every`` tokens b:
  * cold start: the tokens b..b+2047 scored as a new stream (start token only) against the same
    tokens in the long stream, where they see the window's 1,793-2,048 tokens before them;
  * far from the start: the tokens b+2048..b+4095 of a stream started at b against the same
    tokens in the long stream.  Both see the same window of text; they differ only in the
    distance to the stream's start token (every token attends to it) and in absolute position.
Sizes are -log2 p of the float softmax (the model's cross-entropy, before the adaptive models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinylmz import registry  # noqa: E402
from tinylmz.codec import Session, make_engine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(ROOT.parent / "shared" / "corpus" / "alice29.txt"))
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--every", type=int, default=6400, help="tokens between probes (default: format 2's streams)")
    args = ap.parse_args()
    m = registry.resolve(None)
    engine = make_engine("portable", m, segment_tokens=8192)
    s = Session(m, engine, segment_tokens=8192, window=args.window)
    ids = s.tokenizer.encode(Path(args.file).read_bytes())

    def bits(seg: np.ndarray) -> np.ndarray:
        out, done = [], 0
        for chunk in engine.score(s.prefix, s._input[seg], window=args.window):
            x = chunk.astype(np.float64)
            top = x.max(1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(x - top).sum(1))
            out.append((lse - x[np.arange(len(x)), seg[done : done + len(x)]]) / np.log(2))
            done += len(x)
        return np.concatenate(out)

    long = bits(ids)
    print(f"{Path(args.file).name}: {len(ids)} tokens; one stream, window {args.window}: {long.sum() / 8:,.0f} bytes")
    print(f"{'b':>6}  cold start at b: extra bytes in its first 128 / 512 / 2048 tokens   "
          f"tokens b+2048..b+4095 in a stream started at b / at 0")
    for b in range(args.every, len(ids) - 4096, args.every):
        cold = bits(ids[b : b + 2048])
        extra = [(cold[:n].sum() - long[b : b + n].sum()) / 8 for n in (128, 512, 2048)]
        near = bits(ids[b : b + 4096])[2048:].sum()
        far = long[b + 2048 : b + 4096].sum()
        print(f"{b:>6}  {extra[0]:>28.0f} / {extra[1]:.0f} / {extra[2]:.0f} {'':>22}"
              f"{near / 8:>7,.0f} B / {far / 8:,.0f} B ({100 * (far / near - 1):+.1f} %)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
