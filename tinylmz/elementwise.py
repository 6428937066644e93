"""The portable engine's elementwise steps in numpy: their definitions.

Quantization per row, RMSNorm, SiLU, RoPE and the integer attention weights, each with
correctly rounded IEEE operations in a fixed order and table look-ups (``tables.py``) instead
of transcendental functions.  ``engine_portable`` runs them (or the native kernel's versions,
``native/elementwise.c`` and ``native/attention.c``, which ``kernel.load`` checks against these
bit for bit before it lets anything use them).
"""

from __future__ import annotations

import numpy as np

from . import tables

EXP = tables.att_exp()
EXP32 = EXP.astype(np.int32)  # the same entries (<= 2^16) as the native kernels read them
SIG = tables.sigmoid()


def quant(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric quantization of the last axis: (integer-valued float64, scale float64)."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    s = np.where(amax > 0, amax / levels, 1.0)
    return np.rint(x / s), s


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    xq, s = quant(x, 32767)
    ss = (xq * xq).sum(axis=-1, keepdims=True)  # integers < 2^53: exact in any order
    r = np.sqrt(s * s * ss / x.shape[-1] + eps)
    return xq * s / r * g


def silu(g: np.ndarray) -> np.ndarray:
    """g * sigmoid(g), the sigmoid interpolated linearly on a 1/64 grid over [-16, 16]."""
    t = (np.clip(g, -tables.SIG_RANGE, tables.SIG_RANGE) + tables.SIG_RANGE) * tables.SIG_STEPS
    i = np.floor(t)
    f = t - i
    i = i.astype(np.int64)
    sig = SIG[i] + (SIG[i + 1] - SIG[i]) * f
    sig = np.where(g < -tables.SIG_RANGE, 0.0, sig)
    return g * sig


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (GGUF llama layout); x (..., t, heads, dim), cos/sin (t, dim/2)."""
    half = cos.shape[-1]
    a, b = x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.copy()
    out[..., 0 : 2 * half : 2] = a * c - b * s
    out[..., 1 : 2 * half : 2] = a * s + b * c
    return out


def attention_weights(acc, sq, sk, sv, svmax, pos, inv) -> tuple[np.ndarray, np.ndarray]:
    """Integer attention weights from integer scores: the definition ``kernel.softmax_p`` follows.

    acc (n, H, R, T) scores of query rows at positions ``pos`` (R,) against keys 0..T-1 (key j
    visible when j <= pos); sq (n, H, R) query scales; sk, sv (n, H, T) key and value scales;
    svmax (n, H, R) the largest visible value scale.  Returns p (float64, integers <= 2^16) and
    their row sums esum (n, H, R).
    """
    s = acc * sq[..., None] * sk[:, :, None, :] * inv
    visible = np.arange(acc.shape[-1])[None, :] <= pos[:, None]
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    d = np.minimum(np.rint((m - s) * tables.ATT_STEPS), len(EXP) - 1).astype(np.int64)
    e = EXP[d]  # masked entries hit the final 0
    p = np.rint(e * (sv[:, :, None, :] / svmax[..., None]))
    return p, e.sum(axis=-1)
