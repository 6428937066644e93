"""Optional native kernels for the portable engine (and the shared frequency tables).

The C files in ``tinylmz/native/`` (matrix products, attention, elementwise steps,
frequency tables) are compiled on first use with the system C compiler (``$CC`` or
``cc``, ``-O3 -march=native -pthread``, falling back to fewer flags) into one library
in the cache folder, keyed by the sources, the compiler and the CPU, then checked
against the numpy definitions (``elementwise.py``) on random data before use; the
frequency functions are checked by ``freqs.py``, their definition's module.  The matrix and attention
products are integer (lane-wise with AVX-512 VNNI, AVX2 or plain C otherwise), so they
are exact on any machine; the float steps done in C (quantizing and dequantizing,
RMSNorm, RoPE, SwiGLU, softmax weights, frequency tables) are the same IEEE operations
in the same order as numpy's, built with ``-ffp-contract=off``, and the load-time check
compares them bit for bit.  Threads (``native/pool.c``: tasks claimed one at a time, so a thread that
another process delays stalls nobody) split outputs, never sums, so results do not depend
on the thread count.  Without a compiler, or with ``TINYLMZ_NATIVE=0``, the engine uses
numpy alone: the same numbers, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from importlib import resources

import numpy as np


from .threads import available_cpus, set_threads, side_by_side, threads  # noqa: F401 - re-exported


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


@functools.lru_cache(maxsize=None)
def load():
    """The compiled kernel (a ctypes function), or None if it cannot be built or fails its check."""
    if os.environ.get("TINYLMZ_NATIVE", "1") == "0":
        return None
    from .registry import cache_dir

    try:
        folder = resources.files("tinylmz").joinpath("native")
        sources = {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith((".c", ".h"))}
    except OSError:  # an install without the sources: numpy alone (same results, slower)
        return None
    if not any(name.endswith(".c") for name in sources):
        return None
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(cc.encode() + _cpu_id().encode())
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name])
    out = cache_dir() / "native" / f"kernels-{digest.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            for name, data in sources.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            cfiles = [os.path.join(tmp, name) for name in sorted(sources) if name.endswith(".c")]
            so = os.path.join(tmp, "kernels.so")
            for flags in (["-march=native", "-pthread"], ["-pthread"], []):
                # -ffp-contract=off: the float steps must round exactly like numpy's
                r = subprocess.run([cc, "-O3", *flags, "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
                                    *cfiles, "-o", so, "-lm"],
                                   capture_output=True)
                if r.returncode == 0:
                    os.replace(so, out)
                    break
            else:
                return None
    try:
        lib = ctypes.CDLL(str(out))
    except OSError:
        return None
    fn = lib.qgemm
    fn.lib = lib
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    f64 = ctypes.c_double
    lib.qgemm.restype = None
    lib.qgemm.argtypes = [p, i64, i64, p, i64, i64, i64, p, p, p, p]
    lib.qgemm_mt.restype = None
    lib.qgemm_mt.argtypes = [p, i64, i64, p, i64, p, p, p, p, i64]
    lib.qgemm_parallel.restype = i64
    lib.simd_path.restype = ctypes.c_char_p
    lib.qk_mt.restype = lib.pv_mt.restype = lib.softmax_p_mt.restype = None
    lib.qk_mt.argtypes = lib.pv_mt.argtypes = [p, p, i64, i64, i64, i64, i64, p, i64, i64, i64]
    lib.softmax_p_mt.argtypes = [p, p, p, p] + [i64] * 4 + [p] * 4 + [i64] * 4 + [f64, f64, p, i64, p, p, i64]
    lib.qgemm_lanes_available.restype = lib.qgemm_lanes.restype = i64
    lib.qgemm_lanes.argtypes = [p, i64, i64, p, p, i64, p, p, p, p, i64]
    lib.attend1.restype = i64
    lib.attend1.argtypes = [p, p, i64, i64, p, p, i64, p, p, i64, i64, p, p, i64, p, p, i64, i64, p, p, f64, f64,
                            p, i64, p, p, i64]
    lib.decode_step.restype = lib.step_phases.restype = i64
    lib.step_phases.argtypes = [p]
    lib.decode_step.argtypes = [p, p, p, f64, p, p, p, p, p, p, p, p, p, p, i64, i64, i64, i64, i64, p, p, p, p, p,
                                i64, i64, i64, f64, f64, p, i64, p, f64, f64, i64]
    lib.rmsnorm.restype = lib.rope.restype = None
    lib.rmsnorm.argtypes = [p, i64, i64, p, f64, p]
    lib.rope.argtypes = [p, i64, i64, i64, i64, i64, i64, p, p, p]
    lib.quant16.restype = lib.swiglu.restype = None
    lib.quant16.argtypes = [p, i64, i64, f64, p, p]
    lib.swiglu.argtypes = [p, i64, i64, p, f64, f64, p]
    lib.freq_cum.restype = lib.freq_sym.restype = i64
    lib.freq_cum.argtypes = [p, i64, i64, i64, p, i64, i64, p, p, i64]
    lib.freq_sym.argtypes = [p, i64, i64, i64, p, i64, i64, p, p, p, p, i64]
    lib.freq_pick.restype = i64
    lib.freq_pick.argtypes = [p, i64, i64, i64, p, i64, i64, p, p, p, i64, i64, p, p, p, p, p, i64]
    rng = np.random.default_rng(3)
    x = rng.integers(-32767, 32768, (9, 1536)).astype(np.int16)
    x[0], x[1] = 32767, -32767
    w = rng.integers(-127, 128, (1031, 1536)).astype(np.int8)
    w[:3] = -127
    w[3:5] = 127
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    if not all(np.array_equal(_run(fn, x[:n], w, t), want[:n]) for n in (9, 4, 1) for t in (1, 3)):
        return None
    xt, wt = np.ascontiguousarray(x[:5, :1043]), np.ascontiguousarray(w[:7, :1043])  # K past the last full vector
    if not np.array_equal(_run(fn, xt, wt, 1), xt.astype(np.int64) @ wt.T.astype(np.int64)):
        return None
    if lib.qgemm_lanes_available():
        pw = Packed(w, lib)  # 1031 rows: the last block is padded
        if not all(np.array_equal(_run_packed(lib, x[:n], pw, t), want[:n]) for n in (9, 5, 1) for t in (1, 3)):
            return None
    for rows in (5, 9):  # below and above the row count where the key-lane kernels take over
        q = rng.integers(-127, 128, (2, 3, rows, 64)).astype(np.int8)
        k = rng.integers(-127, 128, (2, 3, 40, 64)).astype(np.int8)
        pr = rng.integers(0, 1 << 16, (2, 3, rows, 30)).astype(np.int32)
        pr[0, 0, :, 3] = 1 << 16
        if not (np.array_equal(attn_scores(q, k, 30, lib), q.astype(np.int64) @ k[:, :, :30].transpose(0, 1, 3, 2))
                and np.array_equal(attn_values(pr, k, lib), pr.astype(np.int64) @ k[:, :, :30].astype(np.int64))):
            return None
    # The float steps (dequantization, SwiGLU, ...) must match their numpy definitions to the bit:
    # a compiler that fused or reordered them would break the cross-machine guarantee.  (The
    # frequency functions are checked by freqs.py, their definition's module, before it uses them.)
    from . import elementwise as ew, tables

    xf = rng.standard_normal((5, 1536)) * np.array([[1e-3], [1], [30], [0], [7e4]])
    ws = rng.random(1031) / 127
    xq, sx = ew.quant(xf, 32767)
    want = (xq.astype(np.int64) @ w.T.astype(np.int64)).astype(np.float64) * sx * ws
    if not np.array_equal(qmatmul(xf, w, ws, fn), want):
        return None
    if lib.qgemm_lanes_available() and not np.array_equal(qmatmul(xf, Packed(w, lib), ws, fn), want):
        return None
    gu = np.concatenate([rng.standard_normal((3, 64)) * 9, [[-16.0, 16.0, -17.0, 17.0] * 16]])
    gu = np.concatenate([gu, rng.standard_normal((4, 64))], axis=1)
    sig = tables.sigmoid()
    if not np.array_equal(swiglu(gu, sig, tables.SIG_RANGE, tables.SIG_STEPS, lib), ew.silu(gu[:, :64]) * gu[:, 64:]):
        return None

    xf[3] = 0.0  # an all-zero row: scale 1
    q16, s16 = quant(xf, 127, lib)
    qn, sn = ew.quant(xf, 127)
    g = rng.standard_normal(1536)
    if not (np.array_equal(q16, qn) and np.array_equal(s16, sn)
            and np.array_equal(rmsnorm(xf, g, 1e-5, lib), ew.rmsnorm(xf, g, 1e-5))):
        return None
    xr = rng.standard_normal((2, 3, 11, 4, 16))  # (n, t, heads, dim) and a view with rows apart
    cs, sn_ = rng.standard_normal((11, 6)), rng.standard_normal((11, 6))  # 12 of 16 dims rotated
    for v in (xr[0], xr[0][:, :, :2]):
        if not np.array_equal(rope(v, cs, sn_, lib), ew.rope(v, cs, sn_)):
            return None

    acc = rng.integers(-400000, 400000, (1, 2, 9, 21)).astype(np.int32)
    sq, sk, sv = rng.random((1, 2, 9)) * 1e-3, rng.random((1, 2, 21)) * 0.05, rng.random((1, 2, 21)) * 0.05
    sv[0, 0, 12] = 0.2
    pos = np.arange(12, 21)
    svmax = np.maximum.accumulate(sv, -1)[..., pos]
    p, esum = softmax_p(acc, sq, sk, sv, svmax, pos, 0.125, tables.ATT_STEPS, tables.att_exp(), lib=lib)
    want_p, want_esum = ew.attention_weights(acc.astype(np.float64), sq, sk, sv, svmax, pos, 0.125)
    if not (np.array_equal(p, want_p) and np.array_equal(esum, want_esum)):
        return None

    if lib.qgemm_lanes_available() and not _check_attend1(lib, rng):
        return None

    return fn


def _run(fn, x: np.ndarray, w: np.ndarray, n_threads: int, sx=None, ws=None) -> np.ndarray:
    """Exact products (int64), or with scales sx (n,) and ws (N,) the dequantized float64 ones."""
    n, K = x.shape
    N = w.shape[0]
    out = np.empty((n, N), dtype=np.int64)
    y = None if sx is None else np.empty((n, N), dtype=np.float64)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    # tasks of column tiles claimed by the pool's threads (native/pool.c); qgemm_mt keeps small
    # products, and n_threads <= 1, on this thread
    fn.lib.qgemm_mt(x.ctypes.data, n, K, w.ctypes.data, N, out.ctypes.data, ptr(sx), ptr(ws), ptr(y), n_threads)
    return out if y is None else y


class Packed:
    """An int8 matrix (N x K) laid out for ``qgemm_lanes`` (see native/matmul.c): blocks of 16 rows,
    each a run of 4-column quads, plus the row sums.  N is padded to a multiple of 16 with
    zero rows (their products are computed and dropped)."""

    def __init__(self, q: np.ndarray, lib=None) -> None:
        self.lib = lib or load().lib
        self.n, self.k = q.shape
        n16, k4 = -(-self.n // 16) * 16, -(-self.k // 4)
        if (n16, k4 * 4) != q.shape:
            padded = np.zeros((n16, k4 * 4), dtype=np.int8)
            padded[: self.n, : self.k] = q
            q = padded
        self.p = np.ascontiguousarray(q.reshape(n16 // 16, 16, k4, 4).transpose(0, 2, 1, 3))
        self.wsum = q.sum(axis=1, dtype=np.int32)
        self.n16 = n16
        self.ptrs = (self.p.ctypes.data, self.wsum.ctypes.data)  # read once: .ctypes costs a microsecond

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of the matrix (int8, shape ids.shape + (K,)), read from the packed layout."""
        return self.p[ids // 16, :, ids % 16, :].reshape(*np.shape(ids), -1)[..., : self.k]


def simd() -> str:
    """The instruction-set path the kernel's integer products were built for: ``avx512-vnni``,
    ``avx2``, ``neon-dotprod`` (ARMv8.2 sdot), ``neon``, ``c``; ``numpy`` without a kernel."""
    fn = load()
    return "numpy" if fn is None else fn.lib.simd_path().decode()


def packs() -> bool:
    """Whether the matrix products run on packed weights here (kernel.Packed)."""
    fn = load()
    return fn is not None and bool(fn.lib.qgemm_lanes_available())


def _run_packed(lib, x: np.ndarray, w: Packed, n_threads: int, sx=None, ws=None) -> np.ndarray:
    n, K = x.shape
    assert K == w.k and x.dtype == np.int16 and x.flags.c_contiguous
    out = np.empty((n, w.n16), dtype=np.int64) if sx is None else None
    y = np.empty((n, w.n16), dtype=np.float64) if sx is not None else None
    if sx is not None and w.n16 != w.n:
        ws = np.concatenate([ws, np.zeros(w.n16 - w.n)])
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    if not lib.qgemm_lanes(x.ctypes.data, n, K, *w.ptrs, w.n16, ptr(out), ptr(sx),
                           ptr(ws), ptr(y), n_threads):  # small products: one thread (qgemm_lanes)
        raise MemoryError("out of memory in the matrix product")
    res = out if y is None else y
    return res if w.n16 == w.n else res[:, : w.n]


def qgemm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` exactly, as int64: x int16 (n, K), w int8 (N, K), both C-contiguous."""
    fn = load()
    x = np.ascontiguousarray(x, dtype=np.int16)
    return _run(fn, x, w, threads())


def qmatmul(x: np.ndarray, w, ws: np.ndarray, fn=None) -> np.ndarray:
    """The engine's ``matmul``: float64 rows x quantized to int16 per row, exact products with
    int8 rows w (an array, or ``Packed``), dequantized by the row scales and ``ws`` (float64 (N,)); float64 (n, N)."""
    fn = fn or load()
    q, sx = quant(x, 32767, fn.lib)
    sx = sx[:, 0]
    ws = np.ascontiguousarray(ws, dtype=np.float64)
    if isinstance(w, Packed):
        return _run_packed(fn.lib, q, w, threads(), sx, ws)
    return _run(fn, q, w, threads(), sx, ws)


def quant(x: np.ndarray, levels: int, lib=None) -> tuple[np.ndarray, np.ndarray]:
    """``elementwise.quant`` in C: (q int16, scale float64 (..., 1))."""
    lib = lib or load().lib
    x = np.ascontiguousarray(x, dtype=np.float64)
    K = x.shape[-1]
    q = np.empty(x.shape, dtype=np.int16)
    s = np.empty(x.shape[:-1] + (1,), dtype=np.float64)
    lib.quant16(x.ctypes.data, x.size // K, K, float(levels), q.ctypes.data, s.ctypes.data)
    return q, s


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float, lib=None) -> np.ndarray:
    """``elementwise.rmsnorm`` in C."""
    lib = lib or load().lib
    x = np.ascontiguousarray(x, dtype=np.float64)
    g = np.ascontiguousarray(g, dtype=np.float64)
    out = np.empty_like(x)
    lib.rmsnorm(x.ctypes.data, x.size // x.shape[-1], x.shape[-1], g.ctypes.data, float(eps), out.ctypes.data)
    return out


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, lib=None) -> np.ndarray:
    """``elementwise.rope`` in C; x (n, t, heads, dim) may be a view with rows spaced evenly."""
    lib = lib or load().lib
    n, t, heads, dim = x.shape
    if not (x.dtype == np.float64 and x.strides[3] == 8 and x.strides[2] == dim * 8
            and x.strides[0] == t * x.strides[1]):
        x = np.ascontiguousarray(x, dtype=np.float64)
    cos = np.ascontiguousarray(cos, dtype=np.float64)
    sin = np.ascontiguousarray(sin, dtype=np.float64)
    assert cos.shape == sin.shape and cos.shape[0] == t and 2 * cos.shape[1] <= dim
    out = np.empty((n, t, heads, dim), dtype=np.float64)
    lib.rope(x.ctypes.data, n * t, x.strides[1] // 8, t, heads, dim, cos.shape[1], cos.ctypes.data, sin.ctypes.data,
             out.ctypes.data)
    return out


def swiglu(gu: np.ndarray, table: np.ndarray, rng: float, steps: float, lib=None) -> np.ndarray:
    """``silu(g) * u`` for rows ``gu = [g | u]`` (float64 (..., 2F)), as engine_portable does it."""
    lib = lib or load().lib
    gu = np.ascontiguousarray(gu, dtype=np.float64)
    F = gu.shape[-1] // 2
    out = np.empty(gu.shape[:-1] + (F,), dtype=np.float64)
    lib.swiglu(gu.ctypes.data, gu.size // (2 * F), F, table.ctypes.data, float(rng), float(steps), out.ctypes.data)
    return out


def _nt(work: int) -> int:
    """Threads for an attention kernel call of about ``work`` operations (1 for small ones)."""
    return threads() if work >= 1 << 18 else 1


def attn_scores(q: np.ndarray, k: np.ndarray, end: int, lib=None, out: np.ndarray | None = None) -> np.ndarray:
    """Integer ``q @ k[..., :end, :].T`` per batch: q int8 (n, H, R, D), k int8 (n, H, cap, D) → int32.

    ``out``: an int32 (n, H, R, end) array or view (rows may be parts of wider rows) to write into.
    """
    lib = lib or load().lib
    n, H, R, D = q.shape
    assert k.shape[:2] == (n, H) and k.shape[3] == D and k.strides[-1] == 1 and k.strides[-2] == D
    q = np.ascontiguousarray(q)
    s = np.empty((n, H, R, end), dtype=np.int32) if out is None else out
    assert s.shape == (n, H, R, end) and s.dtype == np.int32 and s.strides[-1] == 4
    assert s.strides[0] == H * s.strides[1] and s.strides[1] == R * s.strides[2]
    kstride = k.strides[1]
    assert k.strides[0] == H * kstride  # batches are evenly spaced
    lib.qk_mt(q.ctypes.data, k.ctypes.data, n * H, R, end, D, kstride, s.ctypes.data, s.strides[1] // 4,
              s.strides[2] // 4, _nt(n * H * R * end * D))
    return s


def attn_values(p: np.ndarray, v: np.ndarray, lib=None) -> np.ndarray:
    """Integer ``p @ v[..., :T, :]`` per batch: p int32 (n, H, R, T), v int8 (n, H, cap, D) → int64.

    p may be a view whose rows are parts of wider rows (read in place).
    """
    lib = lib or load().lib
    n, H, R, T = p.shape
    D = v.shape[3]
    assert D <= 256 and v.strides[-1] == 1 and v.strides[-2] == D and v.strides[0] == H * v.strides[1]
    if not (p.dtype == np.int32 and p.strides[-1] == 4 and p.strides[0] == H * p.strides[1]
            and p.strides[1] == R * p.strides[2]):
        p = np.ascontiguousarray(p, dtype=np.int32)
    o = np.empty((n, H, R, D), dtype=np.int64)
    lib.pv_mt(p.ctypes.data, v.ctypes.data, n * H, R, T, D, v.strides[1], o.ctypes.data, p.strides[1] // 4,
              p.strides[2] // 4, _nt(n * H * R * T * D))
    return o


def _check_attend1(lib, rng) -> bool:
    """attend1 against the separate kernels (checked themselves), with a shared prefix and a row
    tile past the first, some weights of 2^16 and keys beyond some rows' positions."""
    from . import tables

    H, R, P, own = 2, 18, 20, 9
    T = P + own
    q = rng.integers(-127, 128, (H, R, 64)).astype(np.int8)
    kv = [rng.integers(-127, 128, (H, n, 64)).astype(np.int8) for n in (P + 3, own + 2, P + 3, own + 2)]
    sc = [rng.random((H, n)) * 0.05 for n in (P + 3, own + 2, P + 3, own + 2)]
    sc[2][:] = 0.3  # the largest value scale, in the shared part: a row whose top key is there weighs it 2^16
    sq = rng.random((H, R)) * 1e-3
    pos = np.repeat(np.arange(P, T), 2)  # 2 query rows per position, as with 2 heads per kv head
    svmax = np.maximum(sc[2][:, :P].max(-1)[:, None], np.maximum.accumulate(sc[3][:, :own], -1)[:, pos - P])
    table = tables.att_exp()
    o, esum = attend1(q, sq, (kv[1], kv[3], sc[1], sc[3]), (kv[0], kv[2], sc[0], sc[2]), P, T, svmax, pos, 0.125,
                      tables.ATT_STEPS, table, lib)
    one = lambda a: a.reshape(1, *a.shape)  # noqa: E731 - a stream axis with proper strides
    acc = np.empty((1, H, R, T), np.int32)
    attn_scores(one(q), one(kv[1]), own, lib, out=acc[..., P:])
    attn_scores(one(q), one(kv[0]), P, lib, out=acc[..., :P])
    p, es = softmax_p(acc, one(sq), one(sc[1]), one(sc[3]), one(svmax), pos, 0.125, tables.ATT_STEPS, table,
                      (one(sc[0])[..., :P], one(sc[2])[..., :P]), lib)
    pv = attn_values(p[..., P:], one(kv[3]), lib) + attn_values(p[..., :P], one(kv[2]), lib)
    assert (p == 1 << 16).any() and (p[..., P:] > 0).any()
    return bool(np.array_equal(o, pv[0]) and np.array_equal(esum, es[0]))


def fused_attention(head_dim: int, rows: int) -> bool:
    """Whether ``attend1`` runs here for one stream's query rows (AVX-512 VNNI, head size 64)."""
    return head_dim == 64 and rows >= 8 and packs()


def attend1(q: np.ndarray, sq: np.ndarray, own: tuple, shared: tuple | None, P: int, end: int, svmax: np.ndarray,
            pos: np.ndarray, inv: float, steps: float, table: np.ndarray, lib=None) -> tuple[np.ndarray, np.ndarray]:
    """One stream's attention in one pass (see ``attend1`` in native/attention.c): the products
    ``attn_scores``, ``softmax_p`` and ``attn_values`` would give, without the score matrix.

    q int8 (H, R, 64), sq and svmax float64 (H, R), pos int64 (R).  ``own`` = (k, v, sk, sv):
    the stream's cache for one layer, k/v int8 (H, cap, 64) and sk/sv float64 (H, cap);
    ``shared`` likewise for a shared prefix of P positions (or None, P = 0); keys 0..end-1.
    Returns pv int64 (H, R, 64) and esum int64 (H, R).
    """
    lib = lib or load().lib
    H, R, D = q.shape
    assert D == 64
    k1, v1, sk1, sv1 = own
    k0, v0, sk0, sv0 = shared if shared is not None else own
    assert (shared is None) == (P == 0) and 0 <= P < end
    for k, v, sk, sv in ((k0, v0, sk0, sv0), (k1, v1, sk1, sv1)):
        assert k.strides == v.strides and k.strides[2] == 1 and k.strides[1] == D and k.dtype == v.dtype == np.int8
        assert sk.strides == sv.strides and sk.strides[1] == 8 and sk.dtype == sv.dtype == np.float64
    q = np.ascontiguousarray(q, dtype=np.int8)
    sq = np.ascontiguousarray(sq, dtype=np.float64)
    svmax = np.ascontiguousarray(svmax, dtype=np.float64)
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    table = _table32(table)
    o = np.empty((H, R, D), dtype=np.int64)
    esum = np.empty((H, R), dtype=np.int64)
    if not lib.attend1(q.ctypes.data, sq.ctypes.data, H, R, k0.ctypes.data, v0.ctypes.data, k0.strides[0],
                       sk0.ctypes.data, sv0.ctypes.data, sk0.strides[0] // 8, P, k1.ctypes.data, v1.ctypes.data,
                       k1.strides[0], sk1.ctypes.data, sv1.ctypes.data, sk1.strides[0] // 8, end, svmax.ctypes.data,
                       pos.ctypes.data, float(inv), float(steps), table.ctypes.data, len(table), o.ctypes.data,
                       esum.ctypes.data, threads()):
        raise MemoryError("out of memory in the attention kernel")
    return o, esum


def softmax_p(acc: np.ndarray, sq: np.ndarray, sk: np.ndarray, sv: np.ndarray, svmax: np.ndarray,
              pos: np.ndarray, inv: float, steps: float, table: np.ndarray,
              shared: tuple[np.ndarray, np.ndarray] | None = None, lib=None,
              out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer attention weights and their row sums (see ``softmax_rows`` in native/attention.c).

    acc int32 (n, H, R, T); sq, svmax float64 (n, H, R); pos int64 (R).  Key scales: ``shared``
    = (sk0, sv0), float64 (n, H, P) views (a shared prefix, e.g. broadcast over streams), for keys
    0..P-1, and sk, sv float64 (n, H, cap) with cap >= T - P for the rest.
    Returns p int32 (n, H, R, T), written into ``out`` when given (it may be ``acc``), and esum
    int64 (n, H, R).
    """
    lib = lib or load().lib
    n, H, R, T = acc.shape
    assert sk.strides == sv.strides and sk.strides[-1] == 8 and sk.strides[0] == H * sk.strides[1]
    sk0, sv0 = shared if shared is not None else (sk[..., :0], sv[..., :0])
    P = sk0.shape[-1]
    assert sk0.strides == sv0.strides and (P <= 1 or sk0.strides[-1] == 8) and sk0.shape == (n, H, P)
    acc = np.ascontiguousarray(acc, dtype=np.int32)
    sq = np.ascontiguousarray(sq, dtype=np.float64)
    svmax = np.ascontiguousarray(svmax, dtype=np.float64)
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    table = _table32(table)
    # out may be acc itself: each row's scores are all read before its weights are written
    p = np.empty((n, H, R, T), dtype=np.int32) if out is None else out
    assert p.shape == (n, H, R, T) and p.dtype == np.int32 and p.flags.c_contiguous
    esum = np.empty((n, H, R), dtype=np.int64)
    lib.softmax_p_mt(acc.ctypes.data, sq.ctypes.data, sk0.ctypes.data, sv0.ctypes.data, P,
                     sk0.strides[0] // 8, sk0.strides[1] // 8, H, sk.ctypes.data, sv.ctypes.data,
                     svmax.ctypes.data, pos.ctypes.data, n * H, R, T, sk.strides[1] // 8, float(inv), float(steps),
                     table.ctypes.data, len(table), p.ctypes.data, esum.ctypes.data, _nt(n * H * R * T * 16))
    if R and not esum.all():  # every row sees at least its top key (weight 2^16): 0 means malloc failed
        raise MemoryError("out of memory in the attention kernel")
    return p, esum


def decode_step(x: np.ndarray, dims: np.ndarray, table: np.ndarray, eps: float, cos: np.ndarray, sin: np.ndarray,
                own: tuple, o0: int, lo: int, shared: tuple | None, inv: float, steps: float, exp: np.ndarray,
                sig: np.ndarray, sig_range: float, sig_steps: float, laid: tuple | None = None, lib=None) -> None:
    """One decoding step of every layer (native/step.c) for n streams at one position, x (n, E)
    float64 updated in place: what the engine's layer loop does for one position, in one call.

    ``dims`` int64 (n, E, H, KV, D, F, rope pairs, layers, packed); ``table`` int64 (layers, 14) of
    weight addresses (``step_table``); ``own`` = the cache's (k, v, sk, sv, svc) arrays (layers, streams,
    KV, cap[, D]) for these n streams, the new position at index o0, the visible ones from lo;
    ``shared`` likewise for a shared prefix (stream 0 of it, its P positions: views [..., :P]) or None.
    ``laid``: (kp, vp, ks), the own keys and values laid out as ``attend_batches`` reads them
    (native/attention.c: shaped like k, v and sk; ks int32), kept up by the step, or None; with
    it k and v may be None (the cache held laid out only: then n = 1 or the shared prefix is short).
    """
    lib = lib or load().lib
    k, v, sk, sv, svc = own
    exp = _table32(exp)
    D = int(dims[4])
    ls, ns, cap = sk.strides[0] // 8, sk.strides[1] // 8, sk.shape[3]
    for a in (sk, sv, svc):
        assert a.dtype == np.float64 and a.strides == sk.strides and a.strides[2:] == (cap * 8, 8)
    for a in (k, v):  # None: held laid out only
        assert a is None and laid is not None or a.dtype == np.int8 and a.strides == (ls * D, ns * D, cap * D, D, 1)
    assert ns == sk.shape[2] * cap and x.flags.c_contiguous and x.dtype == np.float64 and 0 <= lo <= o0 < cap
    if shared is None:
        k0 = v0 = sk0 = sv0 = svc0 = None
        ls0 = cap0 = P = 0
    else:
        k0, v0, sk0, sv0, svc0 = shared
        ls0, cap0, P = sk0.strides[0] // 8, sk0.strides[2] // 8, sk0.shape[3]
        for a in (sk0, sv0, svc0):
            assert a.strides == sk0.strides and a.strides[2:] == (cap0 * 8, 8)
        for a in (k0, v0):
            assert a.strides[0] == ls0 * D and a.strides[2:] == (cap0 * D, D, 1)
    kp = vp = ks = None
    if laid is not None:
        kp, vp, ks = laid
        assert D == 64 and cap % 16 == 0 and lo % 16 == 0 and packs()
        assert kp.strides == vp.strides == (ls * D, ns * D, cap * D, D, 1) and ks.dtype == np.int32
        assert ks.strides == tuple(st // 2 for st in sk.strides)
        assert all(a.ctypes.data % 64 == 0 for a in laid)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    if not lib.decode_step(x.ctypes.data, dims.ctypes.data, table.ctypes.data, float(eps), cos.ctypes.data,
                           sin.ctypes.data, ptr(k), ptr(v), sk.ctypes.data, sv.ctypes.data,
                           svc.ctypes.data, ptr(kp), ptr(vp), ptr(ks), ls, ns, cap, o0, lo, ptr(k0), ptr(v0),
                           ptr(sk0), ptr(sv0), ptr(svc0), ls0, cap0, P, float(inv), float(steps), exp.ctypes.data,
                           len(exp), sig.ctypes.data, float(sig_range), float(sig_steps), threads()):
        raise MemoryError("out of memory in the decoding step")


STEP_PHASES = ("qkv product", "rope, cache", "scores", "softmax weights", "values", "attention, fused",
               "o product", "gate-up product", "swiglu, down product")


def step_phases(lib=None) -> dict[str, float]:
    """Wall seconds per phase of this thread's ``decode_step`` calls since the last call (which
    resets them): where a decoding step's time goes."""
    lib = lib or load().lib
    out = np.zeros(len(STEP_PHASES))
    assert lib.step_phases(out.ctypes.data) == len(STEP_PHASES)
    return dict(zip(STEP_PHASES, out.tolist()))


def step_table(layers: list[dict], keys=("qkv", "o", "gateup", "down")) -> tuple[np.ndarray, int] | None:
    """The weight addresses ``decode_step`` reads, per layer, and 1 if they are packed (0: int8
    rows); None unless every matrix has one form (packed with whole blocks of 16 rows, or rows).
    The arrays must outlive the table."""
    mats = [layer[k] for layer in layers for k in keys]
    if all(isinstance(m.native, Packed) and m.native.n16 == m.n for m in mats):
        packed = 1
    elif all(isinstance(m.native, np.ndarray) for m in mats):
        packed = 0
    else:
        return None
    rows = []
    for layer in layers:
        row = [layer["attn_norm"].ctypes.data]
        for i, m in enumerate(layer[k] for k in keys):
            if i == 2:
                row.append(layer["ffn_norm"].ctypes.data)
            assert m.scale.dtype == np.float64 and m.scale.flags.c_contiguous
            w = m.native.ptrs if packed else (m.native.ctypes.data, 0)
            row += [*w, m.scale.ctypes.data]
        rows.append(row)
    return np.array(rows, dtype=np.int64), packed


def _table32(table: np.ndarray) -> np.ndarray:
    """An exp table as the kernels read it: int32 (a copy only if it is not one already: callers on
    a hot path pass ``elementwise.EXP32`` or ``freqs.exp_table32()``)."""
    if table.dtype == np.int32 and table.flags.c_contiguous:
        return table
    if len(table) and not 0 <= table.min() <= table.max() <= 1 << 30:
        raise ValueError("the native kernels take exp tables with entries from 0 to 2^30")
    return np.ascontiguousarray(table, dtype=np.int32)


def _freq_table(total: int, table: np.ndarray) -> np.ndarray:
    """The table as int32, after checking that a total of ``total`` fits the kernels' int32 sums."""
    if total > 1 << 30:
        raise ValueError("the native frequency functions take totals and exp tables up to 2^30")
    return _table32(table)


def freq_cum(logits: np.ndarray, width: int, table: np.ndarray, total: int, lib=None) -> np.ndarray:
    """Cumulative frequency tables (n, width + 1) of float32 logits (n, V): ``freqs.cumulative``."""
    lib = lib or load().lib
    table = _freq_table(total, table)
    x = np.ascontiguousarray(logits, dtype=np.float32)
    n, V = x.shape
    cum = np.empty((n, width + 1), dtype=np.int64)
    fixed = np.empty((n, V), dtype=np.int32)
    if not lib.freq_cum(x.ctypes.data, n, V, width, table.ctypes.data, len(table), total, fixed.ctypes.data,
                        cum.ctypes.data, _nt(n * V * 8)):
        raise MemoryError("out of memory in the frequency tables")
    return cum


def freq_pick(logits: np.ndarray, width: int, table: np.ndarray, total: int, sym: np.ndarray, decode: bool,
              nb: np.ndarray, bx: np.ndarray, bv: np.ndarray, lib=None):
    """``freqs.pick`` in C: (symbols, cum, freq, frequencies of the set ids)."""
    lib = lib or load().lib
    table = _freq_table(total, table)
    x = np.ascontiguousarray(logits, dtype=np.float32)
    n, V = x.shape
    sym = np.array(sym, dtype=np.int64)  # a copy: decoding writes the symbols over the targets
    nb = np.ascontiguousarray(nb, dtype=np.int64)
    bx = np.ascontiguousarray(bx, dtype=np.int64).reshape(n, -1)
    bv = np.ascontiguousarray(bv, dtype=np.int32).reshape(n, -1)
    maxb = bx.shape[1]
    assert nb.shape == (n,) and (n == 0 or (nb.max() <= maxb and (bx < V).all() and (bx >= 0).all()))
    assert n == 0 or (sym.min() >= 0 and sym.max() < (total if decode else width))
    cum, freq = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    fx = np.zeros((n, maxb), dtype=np.int64)
    fixed = np.empty((n, V), dtype=np.int32)
    if not lib.freq_pick(x.ctypes.data, n, V, width, table.ctypes.data, len(table), total, nb.ctypes.data,
                         bx.ctypes.data, bv.ctypes.data, maxb, int(decode), sym.ctypes.data, fixed.ctypes.data,
                         cum.ctypes.data, freq.ctypes.data, fx.ctypes.data, _nt(n * V * 8)):
        raise MemoryError("out of memory in the frequency tables")
    return sym, cum, freq, fx


def freq_sym(logits: np.ndarray, ids: np.ndarray, width: int, table: np.ndarray, total: int,
             lib=None) -> tuple[np.ndarray, np.ndarray]:
    """(cum, freq) of ``ids`` under the rows of float32 logits (n, V): ``freqs.symbols``."""
    lib = lib or load().lib
    table = _freq_table(total, table)
    x = np.ascontiguousarray(logits, dtype=np.float32)
    n, V = x.shape
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    assert ids.shape == (n,) and (n == 0 or (ids.min() >= 0 and ids.max() < width))
    cum, freq = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    fixed = np.empty((n, V), dtype=np.int32)
    if not lib.freq_sym(x.ctypes.data, n, V, width, table.ctypes.data, len(table), total, ids.ctypes.data,
                        fixed.ctypes.data, cum.ctypes.data, freq.ctypes.data, _nt(n * V * 8)):
        raise MemoryError("out of memory in the frequency tables")
    return cum, freq
