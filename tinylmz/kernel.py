"""An optional native kernel for the portable engine's integer matrix products.

``_qgemm.c`` is compiled on first use with the system C compiler (``$CC`` or
``cc``, ``-O3 -march=native``) into the cache folder, keyed by the source, the
compiler and the CPU, then checked against numpy on random data before use.
Its arithmetic is integer, so it returns exactly what the numpy path returns;
it is only faster and needs 4× less memory for the weights.  Without a
compiler, or with ``TINYLMZ_NATIVE=0``, the engine uses numpy alone.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np


def threads() -> int:
    """Worker threads for the kernel: ``$TINYLMZ_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("TINYLMZ_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


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
        src = resources.files("tinylmz").joinpath("_qgemm.c").read_bytes()
    except OSError:  # an install without the source: numpy alone (same results, slower)
        return None
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(src + cc.encode() + _cpu_id().encode()).hexdigest()[:16]
    out = cache_dir() / "native" / f"qgemm-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            c = os.path.join(tmp, "qgemm.c")
            with open(c, "wb") as f:
                f.write(src)
            so = os.path.join(tmp, "qgemm.so")
            for flags in (["-march=native"], []):
                # -ffp-contract=off: the float steps of softmax_p must round exactly like numpy's
                r = subprocess.run([cc, "-O3", *flags, "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
                                    c, "-o", so, "-lm"],
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
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    for f in (lib.qgemm, lib.qk, lib.pv):
        f.restype = None
        f.argtypes = [p, i64, i64, p, i64, i64, i64, p] if f is lib.qgemm else [p, p, i64, i64, i64, i64, i64, p]
    f64 = ctypes.c_double
    lib.softmax_p.restype = None
    lib.softmax_p.argtypes = [p] * 6 + [i64] * 4 + [f64, f64, p, i64, p, p]
    rng = np.random.default_rng(3)
    x = rng.integers(-32767, 32768, (9, 1536)).astype(np.int16)
    x[0] = 32767
    w = rng.integers(-127, 128, (1031, 1536)).astype(np.int8)
    w[:3] = -127
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    if not all(np.array_equal(_run(fn, x[:n], w, t), want[:n]) for n in (9, 4, 1) for t in (1, 3)):
        return None
    fn.lib = lib
    q = rng.integers(-127, 128, (2, 3, 5, 64)).astype(np.int8)
    k = rng.integers(-127, 128, (2, 3, 40, 64)).astype(np.int8)
    pr = rng.integers(0, 1 << 16, (2, 3, 5, 30)).astype(np.int32)
    if not (np.array_equal(attn_scores(q, k, 30, lib), q.astype(np.int64) @ k[:, :, :30].transpose(0, 1, 3, 2))
            and np.array_equal(attn_values(pr, k, lib), pr.astype(np.int64) @ k[:, :, :30].astype(np.int64))):
        return None
    return fn


_pool = None


def _run(fn, x: np.ndarray, w: np.ndarray, n_threads: int) -> np.ndarray:
    global _pool
    n, K = x.shape
    N = w.shape[0]
    out = np.empty((n, N), dtype=np.int64)
    args = (x.ctypes.data, n, K, w.ctypes.data)
    if n_threads <= 1 or N < 256:
        fn(*args, 0, N, N, out.ctypes.data)
        return out
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=n_threads)
    bounds = (np.linspace(0, N // 4, n_threads + 1).astype(int) * 4).tolist()
    bounds[-1] = N
    list(_pool.map(lambda ab: fn(*args, int(ab[0]), int(ab[1]), N, out.ctypes.data), zip(bounds[:-1], bounds[1:])))
    return out


def qgemm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` exactly, as int64: x int16 (n, K), w int8 (N, K), both C-contiguous."""
    fn = load()
    x = np.ascontiguousarray(x, dtype=np.int16)
    return _run(fn, x, w, threads())


def attn_scores(q: np.ndarray, k: np.ndarray, end: int, lib=None) -> np.ndarray:
    """Integer ``q @ k[..., :end, :].T`` per batch: q int8 (n, H, R, D), k int8 (n, H, cap, D) → int32."""
    lib = lib or load().lib
    n, H, R, D = q.shape
    assert k.shape[:2] == (n, H) and k.shape[3] == D and k.strides[-1] == 1 and k.strides[-2] == D
    q = np.ascontiguousarray(q)
    s = np.empty((n, H, R, end), dtype=np.int32)
    kstride = k.strides[1]
    assert k.strides[0] == H * kstride  # batches are evenly spaced
    lib.qk(q.ctypes.data, k.ctypes.data, n * H, R, end, D, kstride, s.ctypes.data)
    return s


def attn_values(p: np.ndarray, v: np.ndarray, lib=None) -> np.ndarray:
    """Integer ``p @ v[..., :T, :]`` per batch: p int32 (n, H, R, T), v int8 (n, H, cap, D) → int64."""
    lib = lib or load().lib
    n, H, R, T = p.shape
    D = v.shape[3]
    assert D <= 256 and v.strides[-1] == 1 and v.strides[-2] == D and v.strides[0] == H * v.strides[1]
    p = np.ascontiguousarray(p, dtype=np.int32)
    o = np.empty((n, H, R, D), dtype=np.int64)
    lib.pv(p.ctypes.data, v.ctypes.data, n * H, R, T, D, v.strides[1], o.ctypes.data)
    return o


def softmax_p(acc: np.ndarray, sq: np.ndarray, sk: np.ndarray, sv: np.ndarray, svmax: np.ndarray,
              pos: np.ndarray, inv: float, steps: float, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer attention weights and their row sums (see ``softmax_p`` in _qgemm.c).

    acc int32 (n, H, R, T); sq, svmax float64 (n, H, R); sk, sv float64 (n, H, cap) with cap >= T;
    pos int64 (R).  Returns p int32 (n, H, R, T) and esum int64 (n, H, R).
    """
    lib = load().lib
    n, H, R, T = acc.shape
    assert sk.strides == sv.strides and sk.strides[-1] == 8 and sk.strides[0] == H * sk.strides[1]
    acc = np.ascontiguousarray(acc, dtype=np.int32)
    sq = np.ascontiguousarray(sq, dtype=np.float64)
    svmax = np.ascontiguousarray(svmax, dtype=np.float64)
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    table = np.ascontiguousarray(table, dtype=np.int64)
    p = np.empty((n, H, R, T), dtype=np.int32)
    esum = np.empty((n, H, R), dtype=np.int64)
    lib.softmax_p(acc.ctypes.data, sq.ctypes.data, sk.ctypes.data, sv.ctypes.data, svmax.ctypes.data,
                  pos.ctypes.data, n * H, R, T, sk.strides[1] // 8, float(inv), float(steps),
                  table.ctypes.data, len(table), p.ctypes.data, esum.ctypes.data)
    return p, esum
