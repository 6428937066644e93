"""The ``llama`` engine: llama.cpp through llama-cpp-python (DESIGN §3.2).

Fast, but its logits are reproducible only on the same machine and build:
llama.cpp's results depend on the CPU features it was compiled for, its
version, and how tokens are grouped into calls (batched prompt evaluation and
one-token evaluation differ by up to 1.3 in a logit on SmolLM2 Q4_1).  So:

* every token, prefix included, is evaluated by its own ``llama_decode`` call
  (a batch of one token, on sequence 0, at the next position), and its logits
  are read with ``llama_get_logits_ith(ctx, -1)`` into a float32 copy;
* ``prefill`` evaluates the prefix once from an empty context and saves the
  whole context state (``llama_state_get_data``); every ``stepper`` restores it
  first, so a stream's calls are the same whatever was evaluated before
  (record mode and random access to blocks rely on this);
* ``score`` is not batched: it is the stepper fed the known ids, yielding one
  row per position, so it returns exactly the decoder's logits;
* the runtime fingerprint (``params()``) records everything the logits may
  depend on, and ``check_params`` refuses a file made under another one.

CPU only (``n_gpu_layers=0``, no K/Q/V or op offload), flash attention off, an
f16 KV cache: all set explicitly so that defaults changing cannot change logits
silently.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .errors import EngineMismatch, ModelError
from .tokens import quiet_stderr

__all__ = ["LlamaEngine", "LlamaPrefix", "LlamaStepper", "default_threads"]

GGML_TYPE_F16 = 1

# Fingerprint keys that must match for bit-exact decoding, in the order mismatches are reported.
_CHECKED = (
    "engine_version",
    "llama_cpp_version",
    "system_info",
    "n_ctx",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "n_gpu_layers",
    "flash_attn",
    "type_k",
    "type_v",
)


def default_threads() -> int:
    """Threads used when none are asked for: the CPUs this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _system_info() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    if isinstance(info, bytes):
        info = info.decode("utf-8", errors="replace")
    return " ".join(str(info).split())


def _features(info: str) -> str:
    """The CPU features a system-info line reports as on (``AVX2 AVX512 ...``), for messages."""
    on = [part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    return " ".join(on) if on else info


@dataclass(eq=False)
class LlamaPrefix:
    """A saved llama.cpp context state after evaluating ``ids`` one token per call."""

    ids: tuple[int, ...]
    state: bytes = field(repr=False)
    logits: np.ndarray = field(repr=False)  # (n_vocab,) float32: prediction after the last prefix id
    engine_id: int = field(repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


class LlamaEngine:
    """llama.cpp engine; see the module docstring.

    ``seg_len``: the longest stream (tokens after the prefix) the codec will run;
    ``n_ctx`` defaults to ``seg_len + max_prefix`` rounded up to a multiple of 256.
    Decoders build the engine with ``LlamaEngine.from_params(model_path, params)``.
    """

    name = "llama"
    version = 1
    batch_invariant = False
    max_streams = 1

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_threads: int | None = None,
        seg_len: int,
        max_prefix: int = 64,
        n_ctx: int | None = None,
        n_batch: int = 64,
        n_ubatch: int | None = None,
    ):
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModelError(f'the llama engine needs llama-cpp-python: pip install "tinylmz[llama]" ({e})') from e
        if seg_len < 1:
            raise ValueError("seg_len must be at least 1")
        self._lc = llama_cpp
        self.model_path = str(model_path)
        self.seg_len = int(seg_len)
        self.n_threads = int(n_threads) if n_threads else default_threads()
        self.n_ctx = int(n_ctx) if n_ctx else _round_up(self.seg_len + max(1, max_prefix), 256)
        self.n_batch = int(n_batch)
        self.n_ubatch = int(n_ubatch) if n_ubatch else self.n_batch
        self.n_gpu_layers = 0
        self.flash_attn = False
        self.type_k = GGML_TYPE_F16
        self.type_v = GGML_TYPE_F16
        if not os.path.isfile(self.model_path):
            raise ModelError(f"model file not found: {self.model_path}")
        try:
            with quiet_stderr():
                self._llm = llama_cpp.Llama(
                    model_path=self.model_path,
                    n_gpu_layers=self.n_gpu_layers,
                    n_ctx=self.n_ctx,
                    n_batch=self.n_batch,
                    n_ubatch=self.n_ubatch,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    logits_all=False,
                    offload_kqv=False,
                    op_offload=False,
                    flash_attn=self.flash_attn,
                    type_k=self.type_k,
                    type_v=self.type_v,
                    seed=0,
                    verbose=False,
                )
        except Exception as e:  # llama-cpp-python raises ValueError/RuntimeError on load failure
            raise ModelError(f"llama.cpp cannot load {self.model_path}: {e}") from e
        self.n_ctx = int(self._llm.n_ctx())  # what llama.cpp actually allocated
        self.n_vocab = int(self._llm.n_vocab())
        self._ctx = self._llm._ctx.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(1, 0, 1)
        self._batch.n_tokens = 1
        self._batch.n_seq_id[0] = 1
        self._batch.seq_id[0][0] = 0
        self._batch.logits[0] = 1
        self._lock = threading.RLock()
        self._owner: object | None = None  # the stepper whose stream the context holds
        self._pos = 0
        self._info = _system_info()

    # ---- construction from a recorded fingerprint ----------------------------

    @classmethod
    def from_params(cls, model_path: str | os.PathLike, params: dict) -> "LlamaEngine":
        """The engine a file was made with, rebuilt from its recorded ``params`` (then checked by the caller)."""
        try:
            return cls(
                model_path,
                n_threads=int(params["n_threads"]),
                seg_len=int(params.get("seg_len") or 1),
                n_ctx=int(params["n_ctx"]),
                n_batch=int(params["n_batch"]),
                n_ubatch=int(params.get("n_ubatch") or params["n_batch"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineMismatch(f"llama engine parameters in the file are incomplete or invalid ({e})") from e

    def close(self) -> None:
        batch, self._batch = getattr(self, "_batch", None), None
        if batch is not None:
            self._lc.llama_batch_free(batch)
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    def __del__(self):  # pragma: no cover - interpreter-dependent timing
        try:
            self.close()
        except Exception:
            pass

    # ---- fingerprint ---------------------------------------------------------

    def params(self) -> dict:
        return {
            "engine_version": self.version,
            "llama_cpp_version": str(self._lc.__version__),
            "system_info": self._info,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "flash_attn": self.flash_attn,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "seg_len": self.seg_len,
        }

    def check_params(self, params: dict, *, force: bool = False) -> None:
        if force:
            return
        mine = self.params()
        diff = [k for k in _CHECKED if params.get(k) != mine.get(k)]
        if not diff:
            return
        if {"llama_cpp_version", "system_info"} & set(diff):
            theirs = f"llama.cpp {params.get('llama_cpp_version')} with {_features(str(params.get('system_info')))}"
            here = f"llama.cpp {mine['llama_cpp_version']} with {_features(mine['system_info'])}"
            what = f"this file was made by {theirs}; this machine has {here}"
        else:
            what = "this file was made with llama engine settings " + ", ".join(
                f"{k}={params.get(k)!r} (here {mine.get(k)!r})" for k in diff
            )
        raise EngineMismatch(
            f"{what}; llama-engine files decode only where they were made: "
            "use --engine portable files for portability, or --force to try anyway"
        )

    # ---- evaluation ------------------------------------------------------------

    def _eval(self, token: int) -> None:
        """Evaluate one token at the next position (one llama_decode call)."""
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} outside the model's {self.n_vocab} tokens")
        if self._pos >= self.n_ctx:
            raise ValueError(f"stream longer than the llama engine's context ({self.n_ctx} tokens)")
        b = self._batch
        b.token[0] = token
        b.pos[0] = self._pos
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise ModelError(f"llama.cpp decode failed (code {rc}) at position {self._pos}")
        self._pos += 1

    def _logits(self) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def prefill(self, ids: Sequence[int]) -> LlamaPrefix:
        ids = tuple(int(i) for i in ids)
        if not ids:
            raise ValueError("a prefix needs at least the start token")
        with self._lock:
            self._owner = None
            self._lc.llama_memory_clear(self._mem, True)
            self._pos = 0
            for t in ids:
                self._eval(t)
            logits = self._logits()
            size = self._lc.llama_state_get_size(self._ctx)
            buf = (ctypes.c_uint8 * size)()
            n = self._lc.llama_state_get_data(self._ctx, buf, size)
            state = bytes(memoryview(buf)[:n])
        return LlamaPrefix(ids=ids, state=state, logits=logits, engine_id=id(self))

    def _restore(self, prefix: LlamaPrefix) -> None:
        if prefix.engine_id != id(self):
            raise ValueError("prefix was made by another engine")
        buf = (ctypes.c_uint8 * len(prefix.state)).from_buffer_copy(prefix.state)
        n = self._lc.llama_state_set_data(self._ctx, buf, len(prefix.state))
        if n != len(prefix.state):
            raise ModelError("llama.cpp could not restore the saved prefix state")
        self._pos = prefix.n_tokens

    def stepper(self, prefix: LlamaPrefix, n: int = 1) -> "LlamaStepper":
        if n != 1:
            raise ValueError(f"the llama engine runs one stream at a time (asked for {n})")
        return LlamaStepper(self, prefix)

    def score(self, prefix: LlamaPrefix, ids: Sequence[int]) -> Iterator[np.ndarray]:
        """Logits for every position of ``ids``, one ``(1, n_vocab)`` row at a time.

        Implemented with the stepper (one token per call), so it yields exactly
        what a decoder's stepper sees; it is no faster than stepping.
        """
        ids = [int(i) for i in ids]
        st = self.stepper(prefix, 1)
        for k, t in enumerate(ids):
            yield st.logits()
            if k + 1 < len(ids):
                st.feed([t])


class LlamaStepper:
    """One stream on a ``LlamaEngine``: restores the prefix state, then one token per call.

    Only the engine's most recent stepper (or prefill) may use the context; an
    older stepper raises ``RuntimeError`` rather than return wrong logits.
    """

    def __init__(self, engine: LlamaEngine, prefix: LlamaPrefix):
        self._e = engine
        with engine._lock:
            engine._restore(prefix)
            engine._owner = self
        self._logits = prefix.logits.reshape(1, -1).copy()
        self.n_active = 1

    def _check(self) -> None:
        if self._e._owner is not self:
            raise RuntimeError("this llama stepper's context was taken over by a later stepper or prefill")

    def logits(self) -> np.ndarray:
        if self.n_active == 0:
            return np.empty((0, self._e.n_vocab), dtype=np.float32)
        return self._logits

    def feed(self, ids: Sequence[int]) -> None:
        ids = list(ids)
        if len(ids) > self.n_active:
            raise ValueError(f"{len(ids)} ids fed to {self.n_active} active streams")
        if not ids:
            self.n_active = 0
            return
        e = self._e
        with e._lock:
            self._check()
            e._eval(int(ids[0]))
            self._logits = e._logits().reshape(1, -1)
