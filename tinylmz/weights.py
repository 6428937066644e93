"""Weights for the portable engine: GGUF tensors → per-row int8 matrices, cached on disk.

Every GGUF tensor is dequantized with ``gguf`` (elementwise IEEE float ops) and
requantized per output row: ``s = max|w| / 127``, ``q = rint(w / s)``.  Both
steps are exact functions of the file, so the prepared weights are identical
on every machine.  Attention q/k/v and FFN gate/up are fused into one matrix
each (quantization is per row, so fusing changes nothing).

The result is cached as ``$TINYLMZ_CACHE/portable/<sha256>-v<N>.npz`` (about
the size of the int8 weights; delete the folder to clear it) and loaded
tensor by tensor, so the peak memory of a load is one float32 tensor above
the resident weights.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

PREP_VERSION = 1
KCHUNK = 1024  # longest inner dimension of one exact float32 GEMM (see engine_portable)


@dataclass
class Config:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    rope_dim: int
    rope_base: float
    eps: float

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class QLinear:
    """An int8 matrix (N outputs × K inputs) with per-row scales.

    Held in one form only: packed for the native kernel's lane-wise product where
    the CPU has it (``kernel.Packed``), int8 rows for its other paths, or
    transposed float32 (K, N) for numpy's BLAS (exact: |q| <= 127).
    """

    def __init__(self, q: np.ndarray, scale: np.ndarray, native: bool) -> None:
        from . import kernel

        self.n, self.k = q.shape
        self.q = self.t = self.packed = None
        if native and kernel.packs():
            self.packed = kernel.Packed(q)
        elif native:
            self.q = np.ascontiguousarray(q, dtype=np.int8)
        else:
            self.t = np.ascontiguousarray(q.T, dtype=np.float32)
        self.scale = scale.astype(np.float64)

    @property
    def native(self):
        """The operand of ``kernel.qmatmul`` (None on the numpy path)."""
        return self.packed if self.packed is not None else self.q

    def rows(self, ids: np.ndarray | None = None) -> np.ndarray:
        """The int8 matrix (N, K), or its rows ``ids`` (shape ids.shape + (K,)), whichever form is held."""
        if self.packed is not None:
            return self.packed.rows(np.arange(self.n) if ids is None else ids)
        full = self.q if self.q is not None else self.t.T
        return (full if ids is None else full[ids]).astype(np.int8, copy=False)


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 quantization: (q int8, scale float32)."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _config(reader) -> Config:
    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise ModelError(f"model file lacks {key}")
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ModelError(f"the portable engine runs llama-architecture models, not {arch!r}")
    n_embd = int(field("llama.embedding_length"))
    n_head = int(field("llama.attention.head_count"))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return Config(
        n_layer=int(field("llama.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(field("llama.attention.head_count_kv", n_head)),
        n_ff=int(field("llama.feed_forward_length")),
        n_vocab=n_vocab,
        rope_dim=int(field("llama.rope.dimension_count", n_embd // n_head)),
        rope_base=float(field("llama.rope.freq_base", 10000.0)),
        eps=float(field("llama.attention.layer_norm_rms_epsilon")),
    )


def _prepare(path: Path, out: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path))
    cfg = _config(reader)
    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        t = tensors.get(name)
        if t is None:
            raise ModelError(f"model file lacks tensor {name}")
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(w, dtype=np.float32)

    arrays = {}

    def put(name, w):
        q, s = quantize_rows(w)
        arrays[name + ".q"], arrays[name + ".s"] = q, s

    put("embd", get("token_embd.weight"))
    if "output.weight" in tensors:
        put("head", get("output.weight"))
    arrays["out_norm"] = get("output_norm.weight").reshape(-1)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        arrays[f"{i}.attn_norm"] = get(b + "attn_norm.weight").reshape(-1)
        arrays[f"{i}.ffn_norm"] = get(b + "ffn_norm.weight").reshape(-1)
        put(f"{i}.qkv", np.concatenate([get(b + "attn_q.weight"), get(b + "attn_k.weight"), get(b + "attn_v.weight")]))
        put(f"{i}.o", get(b + "attn_output.weight"))
        put(f"{i}.gateup", np.concatenate([get(b + "ffn_gate.weight"), get(b + "ffn_up.weight")]))
        put(f"{i}.down", get(b + "ffn_down.weight"))
    for k, v in vars(cfg).items():
        arrays["cfg." + k] = np.array(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def cache_path(sha256: str) -> Path:
    from .registry import cache_dir

    return cache_dir() / "portable" / f"{sha256}-v{PREP_VERSION}.npz"


class Weights:
    """Prepared weights of one model: config, norms, and QLinear matrices."""

    def __init__(self, path: Path, sha256: str, native: bool) -> None:
        cached = cache_path(sha256)
        if not cached.exists():
            _prepare(Path(path), cached)
        with np.load(cached) as z:
            names = set(z.files)
            self.cfg = Config(**{k[4:]: z[k].item() for k in names if k.startswith("cfg.")})
            lin = lambda n: QLinear(z[n + ".q"], z[n + ".s"], native)  # noqa: E731
            self.embd_s = z["embd.s"].astype(np.float64)
            if "head.q" in names:
                self.head, self._embd_q = lin("head"), z["embd.q"]
            else:  # tied: the input rows are read from the output matrix, whatever its form (no second copy)
                self.head, self._embd_q = QLinear(z["embd.q"], z["embd.s"], native), None
            self.out_norm = z["out_norm"].astype(np.float64)
            self.layers = []
            for i in range(self.cfg.n_layer):
                self.layers.append(
                    dict(
                        attn_norm=z[f"{i}.attn_norm"].astype(np.float64),
                        ffn_norm=z[f"{i}.ffn_norm"].astype(np.float64),
                        qkv=lin(f"{i}.qkv"),
                        o=lin(f"{i}.o"),
                        gateup=lin(f"{i}.gateup"),
                        down=lin(f"{i}.down"),
                    )
                )

    def embed_rows(self, ids: np.ndarray) -> np.ndarray:
        """The int8 embedding rows of token ids (scales: ``embd_s``)."""
        return self._embd_q[ids] if self._embd_q is not None else self.head.rows(ids)
