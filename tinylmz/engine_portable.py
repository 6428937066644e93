"""The portable engine: a llama forward pass whose every result is defined by the algorithm.

Rules (DESIGN §3.1), and how each step keeps them:

* Matrix products only over integers.  Activations are quantized per token to
  int16 and split into two int8 halves (``x = 256*hi + lo``, |hi|, |lo| <= 128);
  weights are int8 per output row (``weights.py``).  Each half is multiplied in
  float32 BLAS with the inner dimension cut into chunks of at most 1024, so
  every partial sum is an integer below 128*127*1024 < 2^24 and exact in any
  order: BLAS kernel, thread count and batch shape cannot change it.
  Attention uses int8 q and k (64 * 127^2 < 2^24) and integer softmax weights
  times int8 v in float64 (sums < 2^53).
* Everything else is elementwise IEEE ``+ - * /`` and ``sqrt``, ``rint``,
  max/min, exact integer sums, and table look-ups (``tables.py``): no exp, log
  or trig at inference time.
* RMSNorm's sum of squares is taken over the int16-quantized row (exact in
  float64); softmax is ``exp`` from a table indexed by ``rint(Δ·1024)`` with
  exact integer row sums; SiLU interpolates a sigmoid table; RoPE reads cos/sin
  from an exact rotation table.

Results therefore do not depend on how positions are grouped into calls: the
encoder evaluates a whole segment at once (``score``) and the decoder one token
per stream per step (``stepper``), and both see identical logits.  ``_forward``'s
layer loop is the definition; with the native kernel a one-position call runs the
same steps for all layers in one native call (``native/step.c``; tests compare).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import kernel, tables, threads
from .elementwise import EXP32, SIG, attention_weights, quant, rmsnorm, rope, silu
from .errors import EngineMismatch, TinylmzError
from .weights import KCHUNK, QLinear, Weights

VERSION = 1
HEAD_ROWS = 32  # rows per slice of the output layer (memory only)
SHARE_MIN = 64  # prefixes of at least this many tokens are shared by streams, not copied
CHUNK = 256  # positions per call in ``score`` (memory bound only; results do not depend on it)
WINDOW_STEP = 256  # a window moves in steps of this many positions (format version 2)


def _aligned(shape: tuple, dtype) -> np.ndarray:
    """Zeros on a 64-byte boundary (the lane-wise kernels load whole vectors)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.zeros(size + 64, dtype=np.uint8)
    off = -buf.ctypes.data % 64
    return buf[off : off + size].view(dtype).reshape(shape)


def window_start(q: int, window: int) -> int:
    """First own index visible to own token q: the window moves in steps of WINDOW_STEP, so
    every token sees between ``window - WINDOW_STEP + 1`` and ``window`` of its stream's tokens
    (all of them near the start), and the encoder's chunks of WINDOW_STEP share one start."""
    return max(0, (q // WINDOW_STEP + 1) * WINDOW_STEP - window)


def check_float_environment() -> None:
    """Refuse to run where float arithmetic is not plain IEEE (FTZ/DAZ, inexact BLAS)."""
    tiny = np.array([1e-38], dtype=np.float32)
    if (tiny * np.float32(1e-3))[0] == 0 or (np.array([5e-324]) * 1.0)[0] == 0:
        raise TinylmzError("denormals are flushed to zero in this process; the portable engine needs IEEE arithmetic")
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 129, (4, KCHUNK))
    b = rng.integers(-127, 128, (KCHUNK, 8))
    if not np.array_equal((a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64), a @ b):
        raise TinylmzError("float32 BLAS is not exact on integers here (reduced-precision mode?)")


def matmul(x: np.ndarray, w: QLinear) -> np.ndarray:
    """``x @ W.T`` for float64 rows x, with x quantized to int16 per row; exact integer products."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    if w.native is not None:  # the same steps in C (kernel.qmatmul), fused
        y = kernel.qmatmul(x, w.native, w.scale)
    else:
        xq, sx = quant(x, 32767)
        y = _blas_products(xq, w) * sx * w.scale  # exact integer products: |acc| < 2^53
    return y.reshape(*shape[:-1], w.n)


def _blas_products(xq: np.ndarray, w: QLinear) -> np.ndarray:
    """Exact ``xq @ W.T`` through float32 BLAS: int16 rows split into int8 halves, K in chunks."""
    hi = np.rint(xq / 256)  # exact halving by a power of two, then round half even
    lo = xq - 256 * hi
    both = np.concatenate([hi, lo]).astype(np.float32)
    n = len(xq)
    pieces = -(-w.k // KCHUNK)
    step = -(-w.k // pieces)
    # every partial sum is an integer of magnitude <= step * 128 * 127: exact in float32 below 2^24
    if step * 128 * 127 >= 1 << 24 or np.abs(both).max(initial=0) > 128:
        raise TinylmzError("exactness bound of the float32 products violated")
    acc = None
    for k0 in range(0, w.k, step):
        part = (both[:, k0 : k0 + step] @ w.t[k0 : k0 + step]).astype(np.float64)
        acc = part if acc is None else acc + part
    return acc[:n] * 256 + acc[n:]


class Cache:
    """int8 keys/values with per-(token, head) scales, for ``n`` streams.

    A cache may sit on a ``shared`` one: a single stream holding positions
    0..base-1 that every stream here continues (a record codec's context).  Its
    own arrays then hold positions base, base+1, ...; nothing is copied per
    stream, and attention reads the shared keys once for all streams.

    With a ``window`` (format version 2) a stream's token at own index q (q = 0 is
    the first token after the prefix) sees the whole prefix and its own tokens from
    ``window_start(q)`` on; positions no token can see again are dropped from the
    front of the arrays (``drop`` counts them), so memory stays bounded.
    """

    def __init__(self, cfg, n: int, cap: int, shared: "Cache | None" = None) -> None:
        L, H, D = cfg.n_layer, cfg.n_head_kv, cfg.head_dim
        self.shared = shared
        self.base = shared.len if shared is not None else 0
        self.k = np.zeros((L, n, H, cap, D), dtype=np.int8)
        self.v = np.zeros((L, n, H, cap, D), dtype=np.int8)
        self.sk = np.ones((L, n, H, cap))
        self.sv = np.ones((L, n, H, cap))
        self.svc = np.ones((L, n, H, cap))  # running maximum of sv from the window's start (attention needs it)
        self.len = self.base  # positions covered, shared ones included
        self.drop = 0  # own positions dropped from the front of the arrays
        self.window = None  # None: every position visible (format version 1)
        self.lo = 0  # array index of the first own key visible to the current call
        self.laid = None  # (kp, vp, ks): the own keys and values laid out for decode_step, or None

    @property
    def cap(self) -> int:
        """Own positions the arrays hold."""
        return self.sk.shape[3]

    def lay_out(self) -> None:
        """Hold the own keys and values laid out for the lane-wise attention instead of as rows
        (``kernel.decode_step`` keeps them up; ``k`` and ``v`` are then None): the decoder does not
        lay out the whole window again at every step, and the cache is no larger.  Only on a cache
        with no own positions yet, a capacity that is a multiple of 16 and heads of 64."""
        if self.len == self.base and self.cap % 16 == 0 and self.k.shape[4] == 64:
            self.laid = (_aligned(self.k.shape, np.int8), _aligned(self.k.shape, np.int8),
                         _aligned(self.sk.shape, np.int32))
            self.k = self.v = None

    def unlay(self) -> None:
        """Back to rows (for the layer loop, which reads them): the inverse of the layout
        decode_step writes (keys: blocks of 16 positions, byte d // 4 * 64 + (c % 16) * 4 + d % 4;
        values: quads of 4, byte d % 16 // 4 * 64 + d // 16 * 16 + d % 4 * 4 + c % 4)."""
        if self.laid is None:
            return
        kp, vp, _ = self.laid
        L, n, H, cap, D = kp.shape
        if self.k is None:
            k = kp.reshape(L, n, H, cap // 16, 16, 16, 4).transpose(0, 1, 2, 3, 5, 4, 6)
            v = vp.reshape(L, n, H, cap // 4, 4, 4, 4, 4).transpose(0, 1, 2, 3, 7, 5, 4, 6)
            self.k, self.v = k.reshape(L, n, H, cap, D), v.reshape(L, n, H, cap, D)
        self.laid = None

    def sv_max(self, li: int) -> np.ndarray:
        """Largest value scale of each head of stream 0 in layer ``li`` (for a shared prefix)."""
        return self.svc[li, 0, :, self.len - self.base - 1]

    def grow(self, end: int) -> None:
        """Make room for positions up to ``end``."""
        have = self.cap
        cap = end - self.base - self.drop
        if cap <= have:
            return
        def pad(a, fill):  # into one new array: no temporary fill block (its first touch is what a grow costs)
            out = np.empty(a.shape[:3] + (cap,) + a.shape[4:], a.dtype)
            out[:, :, :, :have] = a
            out[:, :, :, have:] = fill
            return out

        if self.laid is not None and cap % 16:
            self.unlay()  # laid out in whole blocks of 16 only
        if self.k is not None:
            self.k, self.v = pad(self.k, 0), pad(self.v, 0)
        self.sk, self.sv, self.svc = pad(self.sk, 1), pad(self.sv, 1), pad(self.svc, 1)
        if self.laid is not None:
            laid = []
            for a in self.laid:
                b = _aligned(a.shape[:3] + (cap,) + a.shape[4:], a.dtype)
                b[:, :, :, :have] = a  # the rest: zeros already
                laid.append(b)
            self.laid = tuple(laid)

    def take(self, n: int) -> "Cache":
        """The first ``n`` streams (views, no copy)."""
        c = object.__new__(Cache)
        c.k, c.v = (None, None) if self.k is None else (self.k[:, :n], self.v[:, :n])
        c.sk, c.sv, c.svc = self.sk[:, :n], self.sv[:, :n], self.svc[:, :n]
        c.shared, c.base, c.len, c.drop, c.window, c.lo = self.shared, self.base, self.len, self.drop, self.window, self.lo
        c.laid = None if self.laid is None else tuple(a[:, :n] for a in self.laid)
        return c

    def slide(self, q0: int, t: int) -> None:
        """Before own tokens q0..q0+t-1 (one window start for all of them) are run: set ``lo``,
        drop what no later token sees, and restart the running value-scale maximum at the window."""
        if self.window is None:
            self.lo = 0
            return
        start = window_start(q0, self.window)
        assert window_start(q0 + t - 1, self.window) == start, "a call may not straddle a window step"
        have = q0 - self.drop  # own positions held
        if start - self.drop >= WINDOW_STEP and have > 0:  # drop in steps: one copy per step of positions
            d = start - self.drop
            for a in (self.k, self.v, self.sk, self.sv, self.svc):
                for layer in () if a is None else a:  # a layer at a time: numpy's copy of the overlap is small
                    layer[:, :, : have - d] = layer[:, :, d:have]  # (whole: 250 MB of fresh pages, 7 streams)
            top = min(-(-have // 16) * 16, self.cap)  # laid out: in whole blocks of 16 (d: of 256)
            for a in self.laid or ():
                for layer in a:
                    layer[:, :, : top - d] = layer[:, :, d:top]
            self.drop = start
            have -= d
        lo = start - self.drop
        if lo != self.lo or q0 % WINDOW_STEP == 0:
            if have > lo:  # the visible cached positions' running maximum, from the window's start
                self.svc[:, :, :, lo:have] = np.maximum.accumulate(self.sv[:, :, :, lo:have], axis=-1)
        self.lo = lo

    def repeat(self, n: int, cap: int) -> "Cache":
        """A new cache of ``n`` streams, each a copy of stream 0 of this one, with room for ``cap``."""
        assert self.shared is None
        c = object.__new__(Cache)
        t = self.len
        shape = lambda a: (a.shape[0], n, a.shape[2], cap) + a.shape[4:]  # noqa: E731
        c.k, c.v = np.zeros(shape(self.k), np.int8), np.zeros(shape(self.v), np.int8)
        c.sk, c.sv, c.svc = np.ones(shape(self.sk)), np.ones(shape(self.sv)), np.ones(shape(self.svc))
        for a, b in ((c.k, self.k), (c.v, self.v), (c.sk, self.sk), (c.sv, self.sv), (c.svc, self.svc)):
            a[:, :, :, :t] = b[:, :1, :, :t]
        c.shared, c.base, c.len, c.drop, c.window, c.lo, c.laid = None, 0, t, 0, None, 0, None
        return c

    def branch(self, cfg, n: int, cap: int, window: int | None = None) -> "Cache":
        """``n`` streams continuing this one (stream 0), with room for ``cap`` more positions.

        Short prefixes are copied into each stream; long ones are shared.  Either way the
        results are the same integers (tests compare them); sharing only saves time and memory.
        """
        if self.len < SHARE_MIN and window is None:
            return self.repeat(n, self.len + cap)
        c = Cache(cfg, n, cap, shared=self)  # with a window the prefix is always shared: it never slides
        c.window = window
        return c


@dataclass
class PortablePrefix:
    cache: Cache
    logits: np.ndarray  # (V,) logits after the last prefix token
    n_tokens: int


class PortableEngine:
    """Bit-exact llama inference in numpy; see the module docstring for the rules."""

    name = "portable"
    version = VERSION
    batch_invariant = True
    max_streams = 64

    def __init__(self, model_path: Path, sha256: str, native: bool | None = None) -> None:
        check_float_environment()
        self.native = kernel.load() is not None if native is None else native
        self.w = Weights(model_path, sha256, self.native)
        self.cfg = self.w.cfg
        self.n_vocab = self.cfg.n_vocab
        self.rope = tables.Rope(self.cfg.rope_dim, self.cfg.rope_base)
        self.inv_sqrt_d = 1.0 / np.sqrt(np.float64(self.cfg.head_dim))
        # the native kernel's versions of the elementwise steps (same numbers, checked when it loads)
        self._norm, self._rope, self._quant = (kernel.rmsnorm, kernel.rope, kernel.quant) if self.native else (
            rmsnorm, rope, quant)
        self.governor = threads.Governor()  # the kernel's thread count, chosen by measuring
        # a decoding step's layers in one native call (the same numbers as the layer loop)
        self._steps = kernel.step_table(self.w.layers) if self.native else None
        self._scratch = threading.local()  # per thread (segments score side by side): attention scores

    def _scores_buffer(self, shape: tuple) -> np.ndarray:
        """An int32 array of ``shape`` from memory this thread reuses: an encoder's scores are ~20 MB
        per layer, and fresh pages cost their zeroing every call."""
        size = int(np.prod(shape))
        buf = getattr(self._scratch, "acc", None)
        if buf is None or buf.size < size:
            buf = self._scratch.acc = np.empty(size, dtype=np.int32)
        return buf[:size].reshape(shape)

    def params(self) -> dict:
        return {"version": VERSION}

    def segment_workers(self) -> int:
        """How many segments an encoder may score side by side (each call then uses one core).

        Only with the native kernel: its results never depend on threads.  numpy's BLAS
        would start its own threads in each worker and oversubscribe the cores.
        """
        return kernel.threads() if self.native else 1

    def side_by_side(self):
        """Context manager: this thread's kernel calls share the cores with the others inside one."""
        return kernel.side_by_side()

    def check_params(self, params: dict, *, force: bool = False) -> None:
        if params.get("version") != VERSION:
            raise EngineMismatch(
                f"file needs portable engine v{params.get('version')}, this tinylmz has v{VERSION}"
            )

    # -- the forward pass ------------------------------------------------------------------

    def forward(self, ids: np.ndarray, cache: Cache, out: np.ndarray | None = None) -> np.ndarray:
        """Run tokens ``ids`` (n streams × t positions) after ``cache.len`` cached ones; logits (n, t, V).

        ``out``: float32 rows (at least n*t) to write the logits into (one stream only), so that a
        caller scoring chunk after chunk reuses its memory (fresh pages cost their zeroing)."""
        with self.governor.run(ids.size):
            return self._forward(ids, cache, out)

    def _forward(self, ids: np.ndarray, cache: Cache, out: np.ndarray | None = None) -> np.ndarray:
        cfg, w = self.cfg, self.w
        n, t = ids.shape
        p0 = cache.len
        assert out is None or (n == 1 and len(out) >= t and out.dtype == np.float32)
        if cache.window is not None and t > 1:  # one window start per call: split at the window's steps
            q0 = p0 - cache.base
            cut = (q0 // WINDOW_STEP + 1) * WINDOW_STEP - q0
            if cut < t:
                if out is not None:
                    self._forward(ids[:, :cut], cache, out[:cut])
                    self._forward(ids[:, cut:], cache, out[cut:t])
                    return out[:t].reshape(1, t, -1)
                return np.concatenate([self._forward(ids[:, :cut], cache), self._forward(ids[:, cut:], cache)], axis=1)
        cache.slide(p0 - cache.base, t)
        o0 = p0 - cache.base - cache.drop  # where position p0 goes in the cache's own arrays
        cache.grow(p0 + t)
        self.rope.ensure(p0 + t)
        cos, sin = self.rope.cos[p0 : p0 + t], self.rope.sin[p0 : p0 + t]
        H, KV, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        x = w.embed_rows(ids).astype(np.float64) * w.embd_s[ids][..., None]
        one_call = t == 1 and self._steps is not None  # one position: every layer in one native call
        if one_call:
            x = np.ascontiguousarray(x.reshape(n, -1))
            self._step(x, cache, o0, p0)
        else:
            cache.unlay()  # the layer loop reads rows and does not keep the layout up
        for li, layer in enumerate(() if one_call else w.layers):
            h = self._norm(x, layer["attn_norm"], cfg.eps)
            qkv = matmul(h, layer["qkv"])
            q = self._rope(qkv[..., : H * D].reshape(n, t, H, D), cos, sin)
            k = self._rope(qkv[..., H * D : (H + KV) * D].reshape(n, t, KV, D), cos, sin)
            v = qkv[..., (H + KV) * D :].reshape(n, t, KV, D)
            kq, sk = self._quant(k, 127)
            vq, sv = self._quant(v, 127)
            cache.k[li, :, :, o0 : o0 + t] = kq.transpose(0, 2, 1, 3)
            cache.v[li, :, :, o0 : o0 + t] = vq.transpose(0, 2, 1, 3)
            cache.sk[li, :, :, o0 : o0 + t] = sk[..., 0].transpose(0, 2, 1)
            cache.sv[li, :, :, o0 : o0 + t] = sv[..., 0].transpose(0, 2, 1)
            run = np.maximum.accumulate(sv[..., 0].transpose(0, 2, 1), axis=-1)  # exact: a maximum
            if o0 > cache.lo:  # continue the running maximum of the visible cached positions
                run = np.maximum(run, cache.svc[li, :, :, o0 - 1 : o0])
            cache.svc[li, :, :, o0 : o0 + t] = run
            att = self._attend(q, cache, li, p0 + t)
            x = x + matmul(att.reshape(n, t, H * D), layer["o"])
            h = self._norm(x, layer["ffn_norm"], cfg.eps)
            gu = matmul(h, layer["gateup"])
            x = x + matmul(self._swiglu(gu), layer["down"])
        cache.len = p0 + t
        h = self._norm(x, w.out_norm, cfg.eps).reshape(n * t, -1)
        # The vocabulary-wide head in slices of rows bounds the temporaries; float32 logits are
        # what the frequency function reads anyway (it casts to float32 first).
        logits = np.empty((n * t, w.head.n), dtype=np.float32) if out is None else out[:t]
        for i in range(0, n * t, HEAD_ROWS):
            logits[i : i + HEAD_ROWS] = matmul(h[i : i + HEAD_ROWS], w.head)
        return logits.reshape(n, t, -1)

    def _step(self, x: np.ndarray, cache: Cache, o0: int, p0: int) -> None:
        """The layer loop below for one position of n streams, in C (``kernel.decode_step``)."""
        cfg, sh, P = self.cfg, cache.shared, cache.base
        table, packed = self._steps
        dims = np.array([x.shape[0], cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff,
                         self.rope.cos.shape[1], cfg.n_layer, packed], dtype=np.int64)
        shared = None if sh is None else tuple(a[:, :1, :, :P] for a in (sh.k, sh.v, sh.sk, sh.sv, sh.svc))
        kernel.decode_step(x, dims, table, cfg.eps, self.rope.cos[p0], self.rope.sin[p0],
                           (cache.k, cache.v, cache.sk, cache.sv, cache.svc), o0, cache.lo, shared, self.inv_sqrt_d,
                           tables.ATT_STEPS, EXP32, SIG, tables.SIG_RANGE, tables.SIG_STEPS, cache.laid)

    def _swiglu(self, gu: np.ndarray) -> np.ndarray:
        if self.native:  # the same arithmetic in C (kernel.swiglu)
            return kernel.swiglu(gu, SIG, tables.SIG_RANGE, tables.SIG_STEPS)
        return silu(gu[..., : self.cfg.n_ff]) * gu[..., self.cfg.n_ff :]

    def _attend(self, q: np.ndarray, cache: Cache, li: int, end: int) -> np.ndarray:
        """Causal attention of q (n, t, H, D) at positions end-t..end-1 over the cache."""
        cfg = self.cfg
        n, t, H, D = q.shape
        KV = cfg.n_head_kv
        G = H // KV
        R = t * G
        qq, sq = self._quant(q, 127)
        # (n, KV, t*G, D): query rows grouped under their kv head
        qq = qq.reshape(n, t, KV, G, D).transpose(0, 2, 1, 3, 4).reshape(n, KV, R, D)
        sq = sq.reshape(n, t, KV, G).transpose(0, 2, 1, 3).reshape(n, KV, R, 1)
        pos = np.repeat(np.arange(end - t, end), G)  # position of each query row
        P, sh = cache.base, cache.shared
        # max of the value scales over the visible keys (queries sit past any shared prefix)
        svmax = cache.svc[li][:, :, pos - P - cache.drop]  # (n, KV, R)
        if sh is not None:
            svmax = np.maximum(svmax, sh.sv_max(li)[None, :, None])
        # The own keys visible to this call start at array index cache.lo: from here on, key
        # index j < P is the shared prefix and j >= P the visible own keys, in position order.
        lo, shift = cache.lo, cache.drop + cache.lo
        kv = (cache.k[li][:, :, lo:], cache.v[li][:, :, lo:], cache.sk[li][:, :, lo:], cache.sv[li][:, :, lo:])
        pos, end = pos - shift, end - shift
        own = end - P
        if not self.native:
            return self._attend_numpy(qq, sq, pos, kv, sh, P, li, end, svmax, n, t, G, D)
        # the same arithmetic in C, without the temporaries
        ck, cv, csk, csv = kv
        q8 = qq.astype(np.int8)
        if n == 1 and kernel.fused_attention(D, R):  # one stream (the encoder's case): one fused pass
            shared = None if sh is None else (sh.k[li, 0], sh.v[li, 0], sh.sk[li, 0], sh.sv[li, 0])
            pv, esum = kernel.attend1(q8[0], sq[0, ..., 0], (ck[0], cv[0], csk[0], csv[0]), shared, P, end, svmax[0],
                                      pos, self.inv_sqrt_d, tables.ATT_STEPS, EXP32)
            return self._merge((pv.astype(np.float64) * svmax[0, ..., None] / esum[..., None])[None], n, t, G, D)
        acc = self._scores_buffer((n, KV, R, end))  # scores of keys 0..end-1, then their weights
        kernel.attn_scores(q8, ck, own, out=acc[..., P:])
        if sh is not None and n == 1:
            kernel.attn_scores(q8, sh.k[li, :1], P, out=acc[..., :P])
        elif sh is not None:  # one pass over the shared keys for the query rows of all streams
            rows = q8.transpose(1, 0, 2, 3).reshape(1, KV, n * R, D)
            acc[..., :P] = kernel.attn_scores(rows, sh.k[li, :1], P).reshape(KV, n, R, P).transpose(1, 0, 2, 3)
        shared = None if sh is None else tuple(np.broadcast_to(a[li, :1, :, :P], (n, KV, P)) for a in (sh.sk, sh.sv))
        p, esum = kernel.softmax_p(acc, sq[..., 0], csk, csv, svmax, pos, self.inv_sqrt_d,
                                   tables.ATT_STEPS, EXP32, shared, out=acc)  # weights over the scores, in place
        pv = kernel.attn_values(p[..., P:], cv)
        # exact integer sums: splitting them between shared and own keys changes nothing
        if sh is not None and n == 1:
            pv += kernel.attn_values(p[..., :P], sh.v[li, :1])
        elif sh is not None:
            rows = p[..., :P].transpose(1, 0, 2, 3).reshape(1, KV, n * R, P)
            pv += kernel.attn_values(rows, sh.v[li, :1]).reshape(KV, n, R, D).transpose(1, 0, 2, 3)
        return self._merge(pv.astype(np.float64) * svmax[..., None] / esum[..., None], n, t, G, D)

    def _attend_numpy(self, qq, sq, pos, kv, sh, P, li, end, svmax, n, t, G, D) -> np.ndarray:
        own = end - P
        keys, values, sk, sv = (a[:, :, :own] for a in kv)
        if sh is not None:  # the reference path: materialize the prefix in every stream
            both = lambda a, b: np.concatenate(  # noqa: E731
                [np.broadcast_to(a[li, :1, :, :P], (n,) + b.shape[1:2] + (P,) + b.shape[3:]), b], axis=2)
            keys, values = both(sh.k, keys), both(sh.v, values)
            sk, sv = both(sh.sk, sk), both(sh.sv, sv)
        # |q.k| <= 64 * 127^2 < 2^24: exact in float32 BLAS
        acc = (qq.astype(np.float32) @ keys.astype(np.float32).transpose(0, 1, 3, 2)).astype(np.float64)
        p, esum = attention_weights(acc, sq[..., 0], sk, sv, svmax, pos, self.inv_sqrt_d)
        pv = p @ values.astype(np.float64)  # integers below 2^53: exact
        return self._merge(pv * svmax[..., None] / esum[..., None], n, t, G, D)

    @staticmethod
    def _merge(out: np.ndarray, n: int, t: int, G: int, D: int) -> np.ndarray:
        """(n, KV, t*G, D) → (n, t, H, D)."""
        KV = out.shape[1]
        return out.reshape(n, KV, t, G, D).transpose(0, 2, 1, 3, 4).reshape(n, t, KV * G, D)

    # -- the Engine protocol ---------------------------------------------------------------

    def prefill(self, ids: Sequence[int]) -> PortablePrefix:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            raise ValueError("a prefix needs at least the start token")
        cache = Cache(self.cfg, 1, len(ids))
        logits = None
        for i in range(0, len(ids), CHUNK):
            logits = self.forward(ids[None, i : i + CHUNK], cache)
        return PortablePrefix(cache, logits[0, -1], len(ids))

    def score(self, prefix: PortablePrefix, ids: Sequence[int], window: int | None = None,
              reuse: bool = False) -> Iterator[np.ndarray]:
        """Logits rows for each of ``ids`` (the row before it), in chunks.  ``reuse``: the chunks are
        views of two buffers that later chunks overwrite, for a caller that is done with each chunk
        before it asks for the next one after it (saves the zeroing of ~50 MB of fresh pages a chunk)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        cap = len(ids) if window is None else min(len(ids), window + 2 * WINDOW_STEP)
        cache = prefix.cache.branch(self.cfg, 1, cap, window)
        prev = prefix.logits[None]
        bufs = [None, None]
        for k, i in enumerate(range(0, len(ids) - 1, CHUNK)):
            t = min(CHUNK, len(ids) - 1 - i)
            if reuse and bufs[k % 2] is None:
                bufs[k % 2] = np.empty((t, self.w.head.n), dtype=np.float32)
            out = self.forward(ids[None, i : i + t], cache, bufs[k % 2] if reuse else None)[0]
            yield prev  # the row before the call's first position, then the call's rows but its last:
            if len(out) > 1:  # two chunks, not one concatenated copy (256 rows of the vocabulary each call)
                yield out[:-1]
            prev = out[-1:]
        yield prev

    def stepper(self, prefix: PortablePrefix, n: int, window: int | None = None) -> "PortableStepper":
        return PortableStepper(self, prefix, n, window)

    def lays_out(self, window: int | None, n: int = 1, prefix: int = 1) -> bool:
        """Whether a stepper holds its keys and values laid out for the fused attention
        (``kernel.decode_step`` with ``attend_batches``: AVX-512 VNNI, heads of 64, at most 16
        query rows per kv head; a long prefix shared by several streams takes the other path)."""
        cfg = self.cfg
        return (window is not None and self._steps is not None and kernel.packs() and cfg.head_dim == 64
                and cfg.n_head // cfg.n_head_kv <= 16 and (n == 1 or prefix <= 4))

    def position_bytes(self, window: int | None = None) -> int:
        """Bytes a stepper holds per cached position of one stream: int8 keys and values and three
        float64 scales per layer and kv head, and an int32 key sum where they are laid out."""
        per = 2 * self.cfg.head_dim + 3 * 8 + (4 if self.lays_out(window) else 0)
        return self.cfg.n_layer * self.cfg.n_head_kv * per


class PortableStepper:
    def __init__(self, engine: PortableEngine, prefix: PortablePrefix, n: int, window: int | None = None) -> None:
        self.engine = engine
        self.cache = prefix.cache.branch(engine.cfg, n, 64, window)
        if engine.lays_out(window, n, prefix.cache.len):
            self.cache.lay_out()  # a window's worth of keys is laid out once, not at every step
        self._logits = np.repeat(prefix.logits[None], n, axis=0)

    def logits(self) -> np.ndarray:
        return self._logits

    def feed(self, ids: Sequence[int]) -> None:
        n = len(ids)
        if n < self._logits.shape[0]:
            self.cache = self.cache.take(n)
        c = self.cache
        if c.len >= c.base + c.drop + c.cap:  # grow by doubling; with a window by 4, up to what it holds
            room = 2 * c.cap if c.window is None else max(c.cap + 1, min(4 * c.cap, c.window + 2 * WINDOW_STEP))
            c.grow(c.base + c.drop + room)
        self._logits = self.engine.forward(np.asarray(ids, dtype=np.int64)[:, None], self.cache)[:, 0]
