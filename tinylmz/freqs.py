"""From logits to integer frequency tables: the one deterministic procedure both engines share.

    L    = rint(float32(logit) * 256)           fixed point, 1/256 nat (exact in float32)
    d    = max(L) - L                           per row, integers >= 0
    w    = EXP[min(d, DMAX + 1)]                EXP[d] = round(2^30 * e^(-d/256)), EXP[DMAX+1] = 0
    f    = 1 + (w * (TOTAL - V)) // sum(w)      every id >= 1
    f[argmax L] += TOTAL - sum(f)               first maximum; the rows now sum to TOTAL exactly

Symbols past the logits (ids >= V_logits: the byte symbols a vocabulary lacks,
see ``tokens.Vocab``) have w = 0, so frequency 1; V above counts them.

TOTAL is 2^28.  ``EXP`` is computed with ``decimal`` at 40 digits, so it is the
same on every machine (its digest is pinned in the tests); nothing here calls a
float transcendental function.  Rounding logits to 1/256 nat changes a
probability by at most a factor e^(1/512) and the floor of 1 costs
V / 2^28 (0.02 % for a 49,152-token vocabulary) of probability mass.
"""

from __future__ import annotations

import decimal
import functools
import hashlib

import numpy as np

SCALE = 256  # fixed-point steps per nat
EXP_BITS = 30
TOTAL_BITS = 28
TOTAL = 1 << TOTAL_BITS


@functools.lru_cache(maxsize=None)
def exp_table() -> np.ndarray:
    """``round(2^30 * e^(-d/256))`` for d = 0.. while positive, then one 0."""
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    one = decimal.Decimal(1 << EXP_BITS)
    step = ctx.exp(ctx.divide(decimal.Decimal(-1), decimal.Decimal(SCALE)))
    vals, e = [], decimal.Decimal(1)
    while True:
        v = int(ctx.multiply(one, e).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
        vals.append(v)
        if v == 0:
            break
        e = ctx.multiply(e, step)
    return np.array(vals, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def exp_table32() -> np.ndarray:
    """``exp_table()`` as int32 (its entries are <= 2^30), as the native kernel reads it."""
    return exp_table().astype(np.int32)


def table_digest() -> str:
    return hashlib.sha256(exp_table().tobytes()).hexdigest()


LIMIT = float(1 << 24)  # |logit| * 256 is clipped here; no real model comes near


def fixed_logits(logits: np.ndarray) -> np.ndarray:
    """Round logits (cast to float32, a correctly rounded step) to 1/256 nat, as int32."""
    x = np.asarray(logits, dtype=np.float32) * np.float32(SCALE)  # exact: a power of two
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=-LIMIT, posinf=LIMIT, neginf=-LIMIT)
    np.clip(x, -LIMIT, LIMIT, out=x)
    return np.rint(x).astype(np.int32)


def row_max(logits: np.ndarray) -> np.ndarray:
    """``fixed_logits(logits).max(axis=-1)`` without converting whole rows: rounding is monotone
    and fmax skips NaN (which rounds to the lowest value, so it is a maximum only of an all-NaN row)."""
    return fixed_logits(np.fmax.reduce(np.asarray(logits, dtype=np.float32), axis=-1))


def fixed_at(row: np.ndarray, x: int) -> int:
    """``fixed_logits(row)[x]`` alone."""
    return int(fixed_logits(row[x : x + 1])[0])


def frequencies(logits: np.ndarray, width: int | None = None) -> np.ndarray:
    """Integer frequency tables, shape (n, width), each row summing to ``TOTAL``.

    ``width`` (default: the logits' width) may exceed the logits' width; the extra symbols get 1.
    """
    logits, width = _rows(logits, width)
    L = fixed_logits(logits)
    n, V = L.shape
    extra, V = width - V, width
    table = exp_table()
    top = L.argmax(axis=1)
    d = (L[np.arange(n), top][:, None] - L).astype(np.int64)
    np.minimum(d, len(table) - 1, out=d)
    w = table[d]
    f = 1 + (w * (TOTAL - V)) // w.sum(axis=1, keepdims=True)
    if extra:
        f = np.concatenate([f, np.ones((n, extra), dtype=f.dtype)], axis=1)
    f[np.arange(n), top] += TOTAL - f.sum(axis=1)
    return f


def _rows(logits: np.ndarray, width: int | None) -> tuple[np.ndarray, int]:
    """Logits as rows, and the table width (checked against TOTAL)."""
    logits = np.atleast_2d(logits)
    width = logits.shape[1] if width is None else width
    if width > TOTAL // 2:
        raise ValueError(f"vocabulary of {width} ids is too large for a total of 2^{TOTAL_BITS}")
    return logits, width


def symbols(logits: np.ndarray, ids: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cum, freq) of each row's id: what the encoder needs (the native kernel builds no whole tables)."""
    from . import kernel

    logits, width = _rows(logits, width)
    if _native() is not None:
        return kernel.freq_sym(logits, ids, width, exp_table32(), TOTAL)
    c = cumulative(logits, width)
    rows = np.arange(len(ids))
    ids = np.asarray(ids, dtype=np.int64)
    cum = c[rows, ids]
    return cum, c[rows, ids + 1] - cum


def pick(logits: np.ndarray, width: int, sym, decode: bool = False, biases=None):
    """One symbol per row without whole tables: (symbols, cum, freq, frequencies of the biased ids).

    ``biases``: per row a pair (ids, fixed-point values) that replace those entries of
    ``fixed_logits(row)`` first (the adaptive models' biased logits; ids < the logits' width).
    ``decode`` False: ``sym`` are the rows' symbols; True: targets in [0, TOTAL), each turned
    into the symbol s with cum[s] <= target < cum[s + 1] (the decoder's search).  The result
    is that of ``cumulative`` on the biased rows, read at the symbol (``pick_reference``).
    """
    from . import kernel

    logits, width = _rows(logits, width)
    n = len(logits)
    nb = np.zeros(n, dtype=np.int64)
    maxb = max([len(b[0]) for b in biases] + [1]) if biases is not None else 1
    bx, bv = np.zeros((n, maxb), dtype=np.int64), np.zeros((n, maxb), dtype=np.int64)
    for i, (xs, vs) in enumerate(biases or ()):
        nb[i] = len(xs)
        bx[i, : len(xs)], bv[i, : len(xs)] = xs, vs
    if _native() is not None:
        return kernel.freq_pick(logits, width, exp_table32(), TOTAL, sym, decode, nb, bx, bv)
    return pick_reference(logits, width, sym, decode, nb, bx, bv)


def pick_reference(logits, width, sym, decode, nb, bx, bv):
    """``pick`` from whole cumulative tables (the definition; the native kernel is checked against it)."""
    L = fixed_logits(np.atleast_2d(logits))
    rows = np.arange(len(L))
    for i in rows:
        L[i, bx[i, : nb[i]]] = bv[i, : nb[i]]
    f = frequencies(np.asarray(L, dtype=np.float32) / np.float32(SCALE), width)  # numpy only
    c = np.zeros((f.shape[0], f.shape[1] + 1), dtype=np.int64)
    np.cumsum(f, axis=1, out=c[:, 1:])
    sym = np.asarray(sym, dtype=np.int64)
    if decode:
        sym = np.array([np.searchsorted(c[i], sym[i], side="right") - 1 for i in rows], dtype=np.int64)
    cum = c[rows, sym]
    fx = np.zeros(bx.shape, dtype=np.int64)
    for i in rows:
        x = bx[i, : nb[i]]
        fx[i, : nb[i]] = c[i, x + 1] - c[i, x]
    return sym, cum, c[rows, sym + 1] - cum, fx


def cumulative(logits: np.ndarray, width: int | None = None) -> np.ndarray:
    """Cumulative tables ``[0, f0, f0+f1, ..., TOTAL]``, shape (n, width+1): what the decoder searches.

    The native kernel computes the same integers in one pass when it is available
    (``_native`` checks it against ``frequencies`` before it is used).
    """
    from . import kernel

    logits, width = _rows(logits, width)
    if _native() is not None:
        return kernel.freq_cum(logits, width, exp_table32(), TOTAL)
    f = frequencies(logits, width)
    c = np.zeros((f.shape[0], f.shape[1] + 1), dtype=np.int64)
    np.cumsum(f, axis=1, out=c[:, 1:])
    return c


def model_bits(logits: np.ndarray, ids: np.ndarray) -> float:
    """Cross-entropy in bits of ``ids`` under the float softmax of ``logits`` (reporting only)."""
    x = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    ids = np.asarray(ids)
    extra = ids >= x.shape[1]
    if extra.any():  # a byte symbol missing from the vocabulary has frequency 1: 28 bits
        return model_bits(x[~extra], ids[~extra]) + TOTAL_BITS * int(extra.sum())
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    return float(((lse - x[np.arange(len(ids)), ids]) / np.log(2)).sum())


@functools.lru_cache(maxsize=None)
def _native():
    """The native kernel, if it builds here and its frequency functions give this module's numbers
    to the bit (ties, NaN and infinities, ids past the logits, biased ids, both search ends)."""
    from . import kernel

    fn = kernel.load()
    return fn if fn is not None and _check_native(fn.lib) else None


def _check_native(lib) -> bool:
    from . import kernel

    rng = np.random.default_rng(3)
    table = exp_table32()
    lg = (rng.standard_normal((3, 700)) * 9).astype(np.float32)
    lg[1, 5:9] = lg[1].max()  # ties for the maximum
    lg[2, :3] = (np.nan, np.inf, -np.inf)
    want = np.cumsum(np.concatenate([np.zeros((3, 1), np.int64), frequencies(lg, 703)], 1), 1)
    if not np.array_equal(kernel.freq_cum(lg, 703, table, TOTAL, lib), want):
        return False
    for ids in ([0, 5, 1], [699, 700, 702], [int(np.argmax(lg[0])), 6, 2]):  # ids past V, the maxima
        cum, f = kernel.freq_sym(lg, np.array(ids), 703, table, TOTAL, lib)
        if not (np.array_equal(cum, want[[0, 1, 2], ids]) and np.array_equal(f, want[[0, 1, 2], np.add(ids, 1)] - cum)):
            return False
    nb, bx, bv = np.array([2, 0, 1]), np.array([[3, 7], [0, 0], [690, 0]]), np.array([[3000, -90], [0, 0], [5000, 0]])
    for ids in ([0, 5, 1], [699, 700, 702], [3, 6, 690]):
        want_t = pick_reference(lg, 703, np.array(ids), False, nb, bx, bv)
        got = kernel.freq_pick(lg, 703, table, TOTAL, np.array(ids), False, nb, bx, bv, lib)
        if not all(np.array_equal(a, b) for a, b in zip(got, want_t)):
            return False
        targets = want_t[1] + want_t[2] // 2  # inside each row's symbol: decodes back to it
        got = kernel.freq_pick(lg, 703, table, TOTAL, targets, True, nb, bx, bv, lib)
        if not all(np.array_equal(a, b) for a, b in zip(got, want_t)):
            return False
    return True
