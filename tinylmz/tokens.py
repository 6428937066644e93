"""Exact bytes <-> token ids (DESIGN §2).

The decoder never tokenizes: an id stands for a fixed byte string (its *piece*),
taken from the GGUF vocabulary, and decoding is plain concatenation of pieces.
The encoder may therefore emit any ids whose pieces concatenate to the input;
it tokenizes valid UTF-8 runs as llama.cpp does (so the model sees the token
sequences it was trained on) and uses single-byte tokens for everything else.
By default that is Hugging Face ``tokenizers`` built from the GGUF's vocabulary
and merges behind llama.cpp's pre-tokenizer (``tinylmz.bpe``: same ids as
llama.cpp, no compiler needed); llama.cpp itself is the reference and the
back end for vocabularies the first does not cover.  Tokenizing may change
between library versions; decoding never depends on it.

Piece table rules (``Vocab.pieces``), per ``tokenizer.ggml.model``:

* ``gpt2`` (byte-level BPE): NORMAL token text maps back to bytes through the
  inverse of GPT-2's ``bytes_to_unicode`` table (a character outside that table
  stands for its own UTF-8 encoding).
* ``llama`` (SentencePiece): BYTE tokens ``<0xNN>`` are that byte; other NORMAL
  pieces are their UTF-8 text with U+2581 ``▁`` replaced by a space.
* Whatever the model: CONTROL, UNKNOWN and UNUSED tokens are ``b""`` (they never
  stand for input bytes); USER_DEFINED tokens are their UTF-8 text as stored.

Bytes the vocabulary cannot spell as a single token (SmolLM2's byte-level BPE
has no token for 21 byte values: 0x04 0x06 0x13 0x14 0x16 0x1d 0xc0 0xc1
0xf1 0xf2 0xf5..0xff) get *extra symbols*: ids ``n_vocab, n_vocab+1, ...`` in
increasing byte order, one byte each (``Vocab.extra_bytes``).  The model has no
logits for them; ``Vocab.pad_logits`` appends one column per extra symbol equal
to the row's smallest logit (deterministic, so encoder and decoder agree), and
the codec sizes its frequency tables by ``Vocab.n_symbols``.

The table is built from the GGUF metadata alone, read by a small key/value
parser (``read_gguf_metadata``) that stops before the tensor descriptors; this
takes milliseconds where ``gguf.GGUFReader`` needs seconds on the default
model.  It is never built from llama.cpp's detokenizer, which drops pieces
longer than 32 bytes and rewrites invalid UTF-8.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import sys
import threading
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .errors import ModelError

__all__ = [
    "Vocab",
    "Tokenizer",
    "read_gguf_metadata",
    "utf8_runs",
    "quiet_stderr",
    "bytes_to_unicode",
    "TOKEN_NORMAL",
    "TOKEN_UNKNOWN",
    "TOKEN_CONTROL",
    "TOKEN_USER_DEFINED",
    "TOKEN_UNUSED",
    "TOKEN_BYTE",
]

# llama.cpp / gguf token types (tokenizer.ggml.token_type)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# --------------------------------------------------------------------------
# GGUF metadata (key/value section only)
# --------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
# value type -> struct format (scalars)
_SCALAR = {
    0: "B",  # UINT8
    1: "b",  # INT8
    2: "H",  # UINT16
    3: "h",  # INT16
    4: "I",  # UINT32
    5: "i",  # INT32
    6: "f",  # FLOAT32
    7: "?",  # BOOL
    10: "Q",  # UINT64
    11: "q",  # INT64
    12: "d",  # FLOAT64
}
_STRING = 8
_ARRAY = 9


def read_gguf_metadata(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict:
    """Read the key/value metadata of a GGUF file (v2/v3, little-endian).

    Returns ``{key: value}`` for ``keys`` (all keys when ``None``).  Strings
    come back as ``bytes`` (undecoded, exactly as stored); arrays as lists.
    Values of keys not asked for are skipped without being decoded.
    Raises ``ModelError`` on anything that is not a readable GGUF file.
    """
    wanted = None if keys is None else set(keys)
    try:
        with open(path, "rb") as f:
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as e:  # empty file
                raise ModelError(f"{path}: not a GGUF file (empty)") from e
    except OSError as e:
        raise ModelError(f"cannot open model {path}: {e.strerror or e}") from e
    try:
        return _parse_kv(mm, wanted, str(path))
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: damaged GGUF metadata ({e})") from e
    finally:
        mm.close()


def _parse_kv(buf, wanted: set | None, name: str) -> dict:
    if buf[:4] != _GGUF_MAGIC:
        raise ModelError(f"{name}: not a GGUF file (bad magic)")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise ModelError(f"{name}: unsupported GGUF version {version} (need 2 or 3, little-endian)")
    _n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    out: dict = {}
    unpack_from = struct.unpack_from

    def read_str(p: int) -> tuple[bytes, int]:
        (n,) = unpack_from("<Q", buf, p)
        p += 8
        if p + n > len(buf):
            raise ValueError("string runs past end of file")
        return bytes(buf[p : p + n]), p + n

    def skip_str(p: int) -> int:
        (n,) = unpack_from("<Q", buf, p)
        p += 8 + n
        if p > len(buf):
            raise ValueError("string runs past end of file")
        return p

    def read_value(t: int, p: int, keep: bool):
        if t in _SCALAR:
            fmt = "<" + _SCALAR[t]
            size = struct.calcsize(fmt)
            return (unpack_from(fmt, buf, p)[0] if keep else None), p + size
        if t == _STRING:
            if keep:
                return read_str(p)
            return None, skip_str(p)
        if t == _ARRAY:
            et, n = unpack_from("<IQ", buf, p)
            p += 12
            if et in _SCALAR:
                fmt = _SCALAR[et]
                size = struct.calcsize(fmt)
                if p + n * size > len(buf):
                    raise ValueError("array runs past end of file")
                vals = list(unpack_from(f"<{n}{fmt}", buf, p)) if keep else None
                return vals, p + n * size
            if et == _STRING:
                if keep:
                    vals = []
                    append = vals.append
                    for _ in range(n):
                        (ln,) = unpack_from("<Q", buf, p)
                        p += 8
                        append(bytes(buf[p : p + ln]))
                        p += ln
                    if p > len(buf):
                        raise ValueError("array runs past end of file")
                    return vals, p
                for _ in range(n):
                    (ln,) = unpack_from("<Q", buf, p)
                    p += 8 + ln
                if p > len(buf):
                    raise ValueError("array runs past end of file")
                return None, p
            if et == _ARRAY:
                vals = []
                for _ in range(n):
                    v, p = read_value(_ARRAY, p, keep)
                    vals.append(v)
                return (vals if keep else None), p
            raise ValueError(f"unknown array element type {et}")
        raise ValueError(f"unknown value type {t}")

    for _ in range(n_kv):
        key_b, pos = read_str(pos)
        key = key_b.decode("utf-8")
        (t,) = unpack_from("<I", buf, pos)
        pos += 4
        keep = wanted is None or key in wanted
        val, pos = read_value(t, pos, keep)
        if keep:
            out[key] = val
            if wanted is not None and len(out) == len(wanted):
                break
    return out


# --------------------------------------------------------------------------
# GPT-2 byte <-> unicode table
# --------------------------------------------------------------------------


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=None)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _gpt2_piece(text: str) -> bytes:
    inv = _unicode_to_byte()
    try:
        return bytes(inv[c] for c in text)
    except KeyError:
        # Character outside the byte table: it stands for its own UTF-8 bytes.
        return b"".join(bytes([inv[c]]) if c in inv else c.encode("utf-8") for c in text)


_SPM_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")


# --------------------------------------------------------------------------
# Vocab
# --------------------------------------------------------------------------

_VOCAB_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
)


class Vocab:
    """Exact byte piece of every token id of a GGUF model.

    Attributes: ``pieces`` (list of bytes, indexed by symbol id, length
    ``n_symbols``), ``piece_len`` (int32 array), ``token_type`` (int32 array,
    model tokens only), ``byte_ids`` (int32 array of 256: the single-byte symbol
    of each byte value), ``extra_bytes`` (byte values with no model token, in
    the order of their extra ids ``n_vocab + k``), ``start_id`` (the id every
    stream starts from: ``<|endoftext|>`` if present, else the BOS id),
    ``n_vocab`` (model tokens = logit width), ``n_symbols`` (``n_vocab`` +
    extra symbols = frequency-table width), ``model`` (``"gpt2"``/``"llama"``).
    """

    def __init__(self, pieces: Sequence[bytes], token_type: Sequence[int], *, model: str, start_id: int):
        self.model = model
        self.pieces: list[bytes] = list(pieces)
        self.n_vocab = len(self.pieces)
        self.token_type = np.asarray(token_type, dtype=np.int32)
        if len(self.token_type) != self.n_vocab:
            raise ModelError(f"vocabulary has {self.n_vocab} tokens but {len(self.token_type)} token types")
        self.piece_len = np.fromiter((len(p) for p in self.pieces), dtype=np.int32, count=self.n_vocab)
        if not 0 <= start_id < self.n_vocab:
            raise ModelError(f"start token id {start_id} outside the vocabulary of {self.n_vocab}")
        self.start_id = int(start_id)
        self.byte_ids, self.extra_bytes = self._find_byte_ids()
        # Extra symbols n_vocab.. spell the bytes the model's vocabulary cannot.
        self.pieces.extend(bytes([b]) for b in self.extra_bytes)
        self.n_symbols = self.n_vocab + len(self.extra_bytes)
        if self.extra_bytes:
            self.piece_len = np.concatenate([self.piece_len, np.ones(len(self.extra_bytes), dtype=np.int32)])

    # ---- construction -----------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "Vocab":
        meta = read_gguf_metadata(path, _VOCAB_KEYS)
        try:
            model = meta["tokenizer.ggml.model"].decode("utf-8")
            tokens: list[bytes] = meta["tokenizer.ggml.tokens"]
        except KeyError as e:
            raise ModelError(f"{path}: GGUF file has no tokenizer ({e.args[0]} missing)") from None
        types = meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise ModelError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
        pieces = [cls._piece(model, t, ty) for t, ty in zip(tokens, types)]
        start_id = None
        for i, t in enumerate(tokens):
            if t == b"<|endoftext|>":
                start_id = i
                break
        if start_id is None:
            start_id = meta.get("tokenizer.ggml.bos_token_id")
        if start_id is None:
            raise ModelError(f"{path}: vocabulary has neither <|endoftext|> nor a BOS token")
        return cls(pieces, types, model=model, start_id=int(start_id))

    @staticmethod
    def _piece(model: str, raw: bytes, ttype: int) -> bytes:
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED):
            return b""
        if ttype == TOKEN_USER_DEFINED:
            return raw
        text = raw.decode("utf-8", errors="surrogateescape")
        if model == "llama":  # SentencePiece
            if ttype == TOKEN_BYTE:
                m = _SPM_BYTE.match(text)
                if m:
                    return bytes([int(m.group(1), 16)])
            return raw.replace("\u2581".encode("utf-8"), b" ")
        if model == "gpt2":
            return _gpt2_piece(text)
        raise ModelError(f"unsupported tokenizer model {model!r} (need 'gpt2' or 'llama')")

    def _find_byte_ids(self) -> tuple[np.ndarray, bytes]:
        """Single-byte token of each byte value; values without one get extra ids ``n_vocab + k``."""
        byte_ids = np.full(256, -1, dtype=np.int64)
        # Prefer BYTE tokens, then NORMAL, then anything else; lowest id first.
        rank = {TOKEN_BYTE: 0, TOKEN_NORMAL: 1}
        best = [9] * 256
        for i, p in enumerate(self.pieces):
            if len(p) == 1:
                r = rank.get(int(self.token_type[i]), 2)
                b = p[0]
                if r < best[b]:
                    best[b] = r
                    byte_ids[b] = i
        missing = bytes(int(b) for b in np.nonzero(byte_ids < 0)[0])
        for k, b in enumerate(missing):
            byte_ids[b] = self.n_vocab + k
        return byte_ids.astype(np.int32), missing

    # ---- use ----------------------------------------------------------------

    def pad_logits(self, logits: np.ndarray) -> np.ndarray:
        """Widen logits ``(..., n_vocab)`` to ``(..., n_symbols)``.

        Each extra symbol gets the row's smallest logit (as likely as the least
        likely model token).  Returns ``logits`` itself when there is nothing to add.
        """
        k = len(self.extra_bytes)
        if k == 0:
            return logits
        if logits.shape[-1] != self.n_vocab:
            raise ValueError(f"logits have {logits.shape[-1]} columns, the vocabulary {self.n_vocab}")
        low = logits.min(axis=-1, keepdims=True)
        return np.concatenate([logits, np.broadcast_to(low, logits.shape[:-1] + (k,))], axis=-1)

    def decode(self, ids: Iterable[int]) -> bytes:
        """Concatenate the pieces of ``ids`` (no tokenizer involved)."""
        pieces = self.pieces
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        try:
            return b"".join([pieces[i] for i in ids])
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < self.n_vocab)
            raise ValueError(f"token id {bad} outside the {self.n_symbols} symbols") from None

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """One single-byte token per byte (always possible)."""
        return self.byte_ids[np.frombuffer(data, dtype=np.uint8)]

    def __len__(self) -> int:
        return self.n_symbols

    def __repr__(self) -> str:
        return f"Vocab(model={self.model!r}, n_vocab={self.n_vocab}, n_symbols={self.n_symbols}, start_id={self.start_id})"


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

# Invalid UTF-8 bytes become lone surrogates U+DC80..U+DCFF under surrogateescape.
_ESCAPED = re.compile("[\udc80-\udcff]+")


def utf8_runs(data: bytes, pattern: "re.Pattern[str]" = _ESCAPED) -> list[tuple[bool, bytes]]:
    """Split ``data`` into maximal valid-UTF-8 runs ``(True, run)`` and the rest ``(False, run)``.

    Linear time.  Invalid UTF-8 (surrogate code points included, as in Python)
    and any character ``pattern`` also matches go to the ``False`` runs.
    """
    text = data.decode("utf-8", errors="surrogateescape")
    out: list[tuple[bool, bytes]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((True, text[pos : m.start()].encode("utf-8")))
        out.append((False, m.group().encode("utf-8", errors="surrogateescape")))
        pos = m.end()
    if pos < len(text):
        out.append((True, text[pos:].encode("utf-8")))
    return out


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level writes to fd 2 (llama.cpp's load chatter) for the duration."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    try:
        saved = os.dup(fd)
    except OSError:  # no fd 2 at all
        yield
        return
    try:
        sys.stderr.flush()
    except Exception:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _char_boundary(run: bytes, i: int) -> int:
    """A split point near ``i`` that does not cut a UTF-8 character (0 if none before ``i``)."""
    while 0 < i < len(run) and 0x80 <= run[i] < 0xC0:
        i -= 1
    return i


_BPE_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def _split_pattern(extra_bytes: bytes) -> "re.Pattern[str]":
    """Invalid UTF-8 plus every character whose encoding uses a byte in ``extra_bytes``.

    Only ASCII and lead bytes are looked at (a missing continuation byte would need a
    scattered set; the verified fallback covers it).
    """
    parts = ["\udc80-\udcff"]
    for b in extra_bytes:
        if b < 0x80:
            parts.append(re.escape(chr(b)))
        elif 0xC2 <= b <= 0xDF:  # 2-byte lead: U+0080..U+07FF
            lo = (b - 0xC0) << 6
            parts.append(f"{re.escape(chr(lo))}-{re.escape(chr(lo + 0x3F))}")
        elif 0xE0 <= b <= 0xEF:  # 3-byte lead
            lo = max((b - 0xE0) << 12, 0x800)
            parts.append(f"{re.escape(chr(lo))}-{re.escape(chr(((b - 0xE0) << 12) + 0xFFF))}")
        elif 0xF0 <= b <= 0xF4:  # 4-byte lead
            lo = max((b - 0xF0) << 18, 0x10000)
            parts.append(f"{re.escape(chr(lo))}-{re.escape(chr(min(((b - 0xF0) << 18) + 0x3FFFF, 0x10FFFF)))}")
    return re.compile(f"[{''.join(parts)}]+") if len(parts) > 1 else _ESCAPED


class Tokenizer:
    """Bytes -> ids whose pieces concatenate to exactly those bytes.

    Valid UTF-8 runs go to a tokenizer back end (``tinylmz.bpe``), built lazily on the
    first ``encode`` (decoding never builds one): ``backend="tokenizers"`` (Hugging Face
    ``tokenizers`` from the GGUF's vocabulary and merges, llama.cpp's ids without
    llama.cpp), ``"llama"`` (llama.cpp itself, the ``llama`` extra), or ``"auto"``
    (default: ``tokenizers`` where it supports the vocabulary, else llama.cpp if
    installed, else a ``ModelError`` naming the extra).  Neither turns literal
    ``<|endoftext|>`` text into a control id.  Invalid bytes, and any run whose ids do
    not spell it back exactly, become single-byte tokens.  ``encode`` never fails on any
    input and never loses a byte.
    """

    BACKENDS = ("auto", "tokenizers", "llama")

    def __init__(self, model_path: str | os.PathLike, vocab: Vocab | None = None, *, backend: str = "auto"):
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r} (choose {', '.join(self.BACKENDS)})")
        self.model_path = str(model_path)
        self.vocab = vocab if vocab is not None else Vocab.from_gguf(self.model_path)
        self.backend_name = backend
        self._backend = None
        self._lock = threading.Lock()
        self.n_fallback_runs = 0  # runs the back end could not spell exactly (diagnostics)
        # Characters whose UTF-8 needs a byte the vocabulary has no token for are never handed to
        # the back end (both drop them, e.g. U+0004): they are split off like invalid bytes and
        # spelled with extra symbols.
        self._split = _split_pattern(self.vocab.extra_bytes)

    @property
    def backend(self):
        """The back end (built on first use)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self):
        from . import bpe

        v = self.vocab
        if self.backend_name == "llama":
            return bpe.LlamaBackend(self.model_path, v.n_vocab)
        meta = read_gguf_metadata(self.model_path, _BPE_KEYS)
        user = {p: i for i, p in enumerate(v.pieces[: v.n_vocab])
                if v.token_type[i] == TOKEN_USER_DEFINED and p and i != v.start_id}
        try:
            return bpe.HFBackend(meta, user_defined=user, path=self.model_path)
        except ModelError:
            if self.backend_name == "auto" and bpe.llama_available():
                return bpe.LlamaBackend(self.model_path, v.n_vocab)
            raise

    def _encode_run(self, run: bytes) -> list[int]:
        """Ids for a valid UTF-8 run via the back end, verified.

        If the ids do not spell the run exactly, the run is split in two at a character
        boundary and each half retried, down to byte tokens for runs of at most 16 bytes,
        so one odd character costs little compression.
        """
        vocab = self.vocab
        if len(run) == 1:
            return [int(vocab.byte_ids[run[0]])]
        ids = self.backend.tokenize(run)
        pieces = vocab.pieces
        try:
            ids = [i for i in ids if 0 <= i < vocab.n_vocab and pieces[i]]  # drop ids that spell nothing
            ok = b"".join([pieces[i] for i in ids]) == run
        except TypeError:
            ok = False
        if ok:
            return ids
        self.n_fallback_runs += 1
        if len(run) > 16:
            mid = _char_boundary(run, len(run) // 2)
            if 0 < mid < len(run):
                return self._encode_run(run[:mid]) + self._encode_run(run[mid:])
        return vocab.byte_ids[np.frombuffer(run, dtype=np.uint8)].tolist()

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids (int32) whose pieces concatenate to exactly ``data``."""
        data = bytes(data)
        vocab = self.vocab
        out: list[int] = []
        for valid, run in utf8_runs(data, self._split):
            if valid:
                out.extend(self._encode_run(run))
            else:
                out.extend(vocab.byte_ids[np.frombuffer(run, dtype=np.uint8)].tolist())
        ids = np.asarray(out, dtype=np.int32)
        if vocab.decode(out) != data:  # the one invariant everything rests on
            raise AssertionError("tokenizer produced ids that do not spell the input")
        return ids

    def decode(self, ids: Iterable[int]) -> bytes:
        return self.vocab.decode(ids)
