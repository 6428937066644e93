#!/usr/bin/env python3
"""Gain of each adaptive model (``tinylmz.adaptive``) over the model alone, in bits per byte.

Two steps, so that the model runs once per text:

    python scripts/bench_adaptive.py dump     # engine logits -> /tmp/tinylmz-adaptive/<name>.npz (minutes)
    python scripts/bench_adaptive.py table    # adaptive models on the dumps: the table (seconds)

``dump`` scores each text with the default model (portable engine) in cold
segments of ``--segment`` tokens (default 2048, today's streams) and keeps, per
position, the top-K fixed-point logits (``freqs.fixed_logits``) with their ids,
the true id and its logit, the row's maximum and its exact integer weight sum
(``sum EXP[max - L]``, the denominator of ``freqs.frequencies``).  That is
enough to recompute the coded cost of the true token after biases are added to
a few candidates: a candidate outside the top K (rare) is given the K-th logit,
an upper bound.  ``table`` is therefore an estimate (from ``freqs``' integers);
``table --check N`` instead runs real range-coder round trips through
``adaptive`` on the first N tokens of each text (runs the model; decodes the
streams side by side with ``AdaptiveBatch``) and times the adaptive calls on
real rows.

Columns: model alone, then each component added in turn.  Two stream
layouts: "reset" resets the adaptive state with each model segment (they see
nothing the model does not); "carry" keeps one adaptive state over the whole
text while the model restarts every segment (what a sliding window or a
record-mode context gives: the adaptive state outlives the model's window).

Texts (none is tuned on): alice29 bytes 50000-75000 (prose), the GNU FDL 1.3
(English legal prose), vim's usr_05.txt (technical manual), CPython's
textwrap.py (source code), the start of Debian's dpkg changelog (repetitive
records).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DUMPS = Path("/tmp/tinylmz-adaptive")
K = 256
_PY = Path(os.__file__).parent
TEXTS = {
    "alice29[50K:75K]": (ROOT.parent / "shared" / "corpus" / "alice29.txt", 50000, 75000),
    "GFDL-1.3 (prose)": (Path("/usr/share/common-licenses/GFDL-1.3"), 0, 25000),
    "vim usr_05 (tech)": (Path("/usr/share/vim/vim90/doc/usr_05.txt"), 0, 25000),
    "textwrap.py (code)": (_PY / "textwrap.py", 0, 25000),
    "dpkg changelog (log)": (Path("/usr/share/doc/dpkg/changelog.gz"), 0, 25000),
}


def text_bytes(name: str) -> bytes:
    path, a, b = TEXTS[name]
    data = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        data = gzip.decompress(data)
    return data[a:b]


def slug(name: str) -> str:
    return name.split(" ")[0].replace("[", "_").replace("]", "").replace(":", "-")


def session(segment: int):
    from tinylmz import api, registry

    return api.get_session(registry.resolve(None), "portable", segment, None)


def dump(args) -> None:
    from tinylmz import freqs

    DUMPS.mkdir(exist_ok=True)
    sess = session(args.segment)
    table = freqs.exp_table()
    for name in TEXTS:
        out = DUMPS / f"{slug(name)}-s{args.segment}.npz"
        if out.exists():
            print(f"{name}: {out} exists")
            continue
        raw = text_bytes(name)
        ids = sess.tokenizer.encode(raw).astype(np.int64)
        rows = {k: [] for k in ("top_id", "top_L", "mx", "wsum", "true_L")}
        t0 = time.time()
        for seg in sess.segments(ids):
            done = 0
            for chunk in sess.engine.score(sess.prefix, sess._input[seg]):
                L = freqs.fixed_logits(chunk)
                n = len(L)
                part = seg[done : done + n]
                mx = L.max(axis=1)
                d = np.minimum(mx[:, None].astype(np.int64) - L, len(table) - 1)
                rows["wsum"].append(table[d].sum(axis=1))
                rows["mx"].append(mx)
                top = np.argpartition(-L, K, axis=1)[:, :K]
                rows["top_id"].append(top.astype(np.int32))
                rows["top_L"].append(np.take_along_axis(L, top, axis=1))
                tl = np.where(part < L.shape[1], L[np.arange(n), np.minimum(part, L.shape[1] - 1)], -(1 << 24))
                rows["true_L"].append(tl.astype(np.int32))
                done += n
        np.savez(out, ids=ids, n_bytes=len(raw), segment=args.segment, width=sess.width,
                 n_logits=sess.engine.n_vocab, **{k: np.concatenate(v) for k, v in rows.items()})
        print(f"{name}: {len(raw)} bytes, {len(ids)} tokens, {time.time() - t0:.0f} s -> {out}", flush=True)


def load(name: str, segment: int) -> dict:
    with np.load(DUMPS / f"{slug(name)}-s{segment}.npz") as z:
        return {k: z[k] for k in z.files}


def simulate(d: dict, cfg, layout: str) -> tuple[float, float]:
    """(coded bits, seconds in the adaptive calls) of one dump under ``cfg`` (None: the model alone)."""
    from tinylmz import adaptive, freqs

    ids = d["ids"].tolist()
    width, nl, seg = int(d["width"]), int(d["n_logits"]), int(d["segment"])
    scale = float(freqs.TOTAL - width)
    mx, wsum, true_L = d["mx"].tolist(), (d["wsum"] / float(1 << 30)).tolist(), d["true_L"].tolist()
    top_id, top_L = d["top_id"], d["top_L"]
    kth = top_L.min(axis=1).tolist()
    bits, spent, st = 0.0, 0.0, None
    for j, y in enumerate(ids):
        if y >= nl:
            bits += freqs.TOTAL_BITS
            if st is not None:
                st.update(y, fx=[])
            continue
        m = mx[j]
        if cfg is None:
            fy = 1 + int(np.exp((true_L[j] - m) / 256) / wsum[j] * scale)
            bits -= np.log2(fy / freqs.TOTAL)
            continue
        if st is None or (layout == "reset" and j % seg == 0):
            st = adaptive.AdaptiveState(cfg)
        tid, tl = top_id[j], top_L[j]

        def logit(x):
            if x == y:
                return true_L[j]
            hit = np.flatnonzero(tid == x)
            return int(tl[hit[0]]) if len(hit) else kth[j]

        t0 = time.thread_time()
        xs, vals = st.plan(m, logit, nl)
        spent += time.thread_time() - t0
        W = wsum[j]
        old = [logit(x) for x in xs]
        for a, b in zip(old, vals):
            W += np.exp((b - m) / 256) - np.exp((a - m) / 256)
        fx = [1 + int(np.exp((v - m) / 256) / W * scale) for v in vals]
        Ly = vals[xs.index(y)] if y in xs else true_L[j]
        fy = 1 + int(np.exp((Ly - m) / 256) / W * scale)
        bits -= np.log2(min(fy, freqs.TOTAL) / freqs.TOTAL)
        t0 = time.thread_time()
        st.update(y, fx=fx)
        spent += time.thread_time() - t0
    return bits, spent


VARIANTS = {
    "model": None,
    "+ngram": dict(match=False),
    "+match": dict(orders=0),
    "+both": dict(),
}


def table(args) -> None:
    from tinylmz import adaptive

    over = dict(kv.split("=") for kv in args.set)
    over = {k: int(v) for k, v in over.items()}
    names = list(TEXTS)
    print(f"segments of {args.segment} tokens; bits per byte; config {adaptive.Config(**over).params()}")
    print(f"{'layout':7} {'variant':8} " + " ".join(f"{n:>19}" for n in names) + "   CPU us/token")
    dumps = {n: load(n, args.segment) for n in names}
    for layout in args.layouts.split(","):
        for var, kw in VARIANTS.items():
            if args.variants and var not in args.variants.split(","):
                continue
            if layout == "carry" and kw is None:
                continue
            cfg = None if kw is None else adaptive.Config(**{**over, **kw})
            cells, tok, sec = [], 0, 0.0
            for n in names:
                b, s = simulate(dumps[n], cfg, layout)
                cells.append(f"{b / int(dumps[n]['n_bytes']):19.4f}")
                tok += len(dumps[n]["ids"])
                sec += s
            print(f"{layout:7} {var:8} " + " ".join(cells) + f"   {1e6 * sec / tok:8.1f}", flush=True)


def check(args) -> None:
    """Real round trips: the first ``args.check`` ids of each text, one stream each, encoded with
    and without the adaptive models, the adaptive streams decoded side by side through the engine."""
    from tinylmz import adaptive, freqs
    from tinylmz.rangecoder import Encoder

    sess = session(args.segment)
    cfg = adaptive.Config(**{k: int(v) for k, v in (kv.split("=") for kv in args.set)})
    streams, seqs = [], []
    print(f"round trip, first {args.check} tokens of each text as one stream (bytes coded):")
    for name in TEXTS:
        ids = sess.tokenizer.encode(text_bytes(name))[: args.check].astype(np.int64)
        rows = np.concatenate(list(sess.engine.score(sess.prefix, sess._input[ids])))
        enc = Encoder()
        for row, y in zip(rows, ids.tolist()):
            cum = freqs.cumulative(row, sess.width)[0]
            enc.encode(int(cum[y]), int(cum[y + 1] - cum[y]), freqs.TOTAL)
        plain = enc.finish()
        data = adaptive.encode_rows(rows, ids, adaptive.AdaptiveState(cfg), sess.width)
        st, spent = adaptive.AdaptiveState(cfg), 0.0  # again, timing only the adaptive calls
        for row, y in zip(rows, ids.tolist()):
            L0 = freqs.fixed_logits(row)
            t0 = time.thread_time()
            L = st.adjust(L0)
            spent += time.thread_time() - t0
            cum = freqs.cumulative(adaptive.as_logits(L), sess.width)[0]
            t0 = time.thread_time()
            st.update(y, cum)
            spent += time.thread_time() - t0
        print(f"  {name:22} model {len(plain):6d}  adaptive {len(data):6d}  "
              f"({100 * (len(data) / len(plain) - 1):+.2f} %)  adjust+update {1e6 * spent / len(ids):.1f} CPU us/token", flush=True)
        streams.append(data)
        seqs.append(ids.tolist())
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    stepper = sess.engine.stepper(sess.prefix, len(order))

    def logits_of(step, hs):
        if step:
            stepper.feed(sess._input[[h[-1] for h in hs]].tolist())
        return stepper.logits()[: len(hs)]

    got = adaptive.decode_streams([streams[i] for i in order], [len(seqs[i]) for i in order], logits_of,
                                  adaptive.AdaptiveBatch.fresh(len(order), cfg), sess.width)
    ok = all(g == seqs[i] for g, i in zip(got, order))
    print("  decoded side by side:", "identical" if ok else "MISMATCH")
    if not ok:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--segment", type=int, default=2048)
    t = sub.add_parser("table")
    t.add_argument("--segment", type=int, default=2048)
    t.add_argument("--check", type=int, default=0)
    t.add_argument("--layouts", default="reset,carry")
    t.add_argument("--variants", default="", help="comma-separated subset of: " + ",".join(VARIANTS))
    t.add_argument("--set", nargs="*", default=[], help="Config overrides, e.g. rate=4 limit=127")
    args = p.parse_args()
    if args.cmd == "dump":
        dump(args)
    elif args.check:
        check(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
