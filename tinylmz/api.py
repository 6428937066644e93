"""The Python API, in the shape of the stdlib ``lzma`` module.

    data = tinylmz.compress(b"...")            # bytes -> .tlmz bytes
    tinylmz.decompress(data)                   # and back
    with tinylmz.open("x.tlmz", "wb") as f:    # file objects, streamed block by block
        f.write(b"...")
"""

from __future__ import annotations

import builtins
import collections
import functools
import io
import os
import zlib
from typing import Callable, Iterator

from . import codec, container
from .codec import DEFAULT_BLOCK_SIZE, DEFAULT_ENGINE, DEFAULT_SEGMENT_TOKENS, Session, Stats
from .container import Header
from .errors import FormatError, TinylmzError
from .threads import set_threads

Progress = Callable[[int], None]  # called with a number of input bytes done
IN_FLIGHT = 2  # blocks a writer codes at once, besides the one it has just cut (their streams queue)


@functools.lru_cache(maxsize=2)
def _engine(model_sha: str, model_path: str, model_name: str, engine: str, segment_tokens: int,
            params_key: str | None):
    import json

    from .registry import ResolvedModel

    model = ResolvedModel(path=model_path, name=model_name, sha256=model_sha, size=os.path.getsize(model_path))
    params = json.loads(params_key) if params_key else None
    return model, codec.make_engine(engine, model, segment_tokens=segment_tokens, params=params)


@functools.lru_cache(maxsize=8)
def _session(model_sha: str, model_path: str, model_name: str, engine: str, segment_tokens: int,
             context: bytes | None, params_key: str | None, window: int | None, adaptive: int = 0):
    # the portable engine does not depend on the segment length: one engine (and one copy of
    # the weights) serves every segment length and window
    seg_key, key = (segment_tokens, params_key) if engine != "portable" else (0, None)  # checked by the caller
    model, eng = _engine(model_sha, model_path, model_name, engine, seg_key, key)
    return Session(model, eng, segment_tokens=segment_tokens, context=context, window=window, adaptive=adaptive)


def get_session(model, engine: str, segment_tokens: int, context: bytes | None, params: dict | None = None,
                window: int | None = None, adaptive: int = 0) -> Session:
    """A cached Session (loading an engine takes seconds; reuse it across calls)."""
    import json

    key = json.dumps(params, sort_keys=True) if params is not None else None
    return _session(model.sha256, str(model.path), model.name, engine, segment_tokens, context or None, key, window,
                    adaptive)


class Compressor:
    """Writes a .tlmz stream to ``fileobj``: ``write()`` bytes, then ``close()``.

    ``format_version`` 2 (the default) gives each token a sliding window of ``window``
    tokens of its stream (streams of ``segment_tokens``) and compact framing; 1 writes the
    first format (streams of ``segment_tokens`` tokens, each token seeing its whole stream).
    Without ``segment_tokens``, a format-2 writer sets it from the first block
    (``codec.stream_length``: equal streams of at most 8192 tokens) and writes the header then.
    Blocks are coded side by side, up to ``IN_FLIGHT`` + 1 at once, and written in order; ``close()``
    waits for them, and leaving a ``with`` block on an exception stops them (no trailer is written).
    """

    def __init__(self, fileobj, *, model=None, engine: str | None = None, context: bytes | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, segment_tokens: int | None = None,
                 window: int | None = None, format_version: int = container.VERSION, adaptive: int | None = None,
                 progress: Progress | None = None, measure: bool = False) -> None:
        from . import registry

        if format_version not in container.SUPPORTED:
            raise TinylmzError(f"format version must be one of {', '.join(map(str, container.SUPPORTED))}")
        if not 0 < block_size <= container.MAX_BLOCK:
            raise TinylmzError(f"block size must be between 1 and {container.MAX_BLOCK}")
        engine = engine or DEFAULT_ENGINE
        self._balance = False
        if format_version == 1 or engine != "portable":  # windows are the portable engine's
            if window is not None and format_version == 1:
                raise TinylmzError("a window needs format version 2")
            window = None
            if adaptive and (format_version == 1 or engine != "portable"):
                raise TinylmzError("adaptive models need format version 2 and the portable engine")
            adaptive = 0
            segment_tokens = segment_tokens or DEFAULT_SEGMENT_TOKENS  # whole streams in view: short ones
        else:
            adaptive = codec.V2_ADAPTIVE if adaptive is None else adaptive
            self._balance = not segment_tokens  # the first block sets the stream length (codec.stream_length)
            segment_tokens = segment_tokens or codec.V2_SEGMENT_TOKENS
            window = window or codec.V2_WINDOW
            if window < 2 * codec.WINDOW_STEP or window % codec.WINDOW_STEP:
                raise TinylmzError(f"window must be a multiple of {codec.WINDOW_STEP} tokens, at least "
                                   f"{2 * codec.WINDOW_STEP}")
            if window >= segment_tokens:
                window = None  # every token sees its whole stream anyway
        if segment_tokens < 1:
            raise TinylmzError("segment length must be at least 1 token")
        resolved = registry.resolve(model if model is None else str(model))
        self.session = get_session(resolved, engine, segment_tokens, context, window=window, adaptive=adaptive)
        self._settings = (resolved, engine, context, window, adaptive)
        self.version = format_version
        self.header = Header(
            model={"name": resolved.name, "sha256": resolved.sha256},
            engine={"name": self.session.engine.name, "params": self.session.engine.params()},
            block_size=block_size,
            segment_tokens=segment_tokens,
            start_id=self.session.vocab.start_id,
            context=codec.context_identity(context),
            version=format_version,
            window=window,
            adaptive=adaptive,
        )
        self._f = fileobj
        self._buf = bytearray()
        self._total = 0
        self._crc = 0
        self._blocks = 0
        self._pending: collections.deque = collections.deque()  # codec.PendingBlock, oldest first
        self._progress = progress
        self._measure = measure
        self.stats = Stats()
        self.size = 0 if self._balance else container.write_header(fileobj, self.header)  # else at the first block
        self._closed = False

    def write(self, data) -> int:
        self._buf += data
        bs = self.header.block_size
        while len(self._buf) > bs:
            cut = codec.split_point(self._buf, bs)
            self._emit(bytes(self._buf[:cut]))
            del self._buf[:cut]
        return len(data)

    def stream_length(self, first: bytes) -> int:
        """The stream length this writer records for a stream whose first block is ``first``."""
        return self._stream_length(first)[0]

    def _stream_length(self, first: bytes):
        """(the length, the block's ids where they were needed for it)."""
        nominal = self.header.segment_tokens
        if not self._balance or len(first) <= nominal:  # given, format 1, or a block's tokens never outnumber its bytes
            return nominal, None
        ids = self.session.tokenizer.encode(first)
        return codec.stream_length(len(ids), nominal, self.header.window), ids

    def _settle(self, first: bytes):
        """Choose the stream length from the first block (or none), write the header; the block's ids if made."""
        seg, ids = self._stream_length(first)
        self._balance = False
        if seg != self.header.segment_tokens:
            resolved, engine, context, window, adaptive = self._settings
            self.session = get_session(resolved, engine, seg, context, window=window, adaptive=adaptive)
            self.header.segment_tokens = seg
        self.size += container.write_header(self._f, self.header)
        return ids

    def _emit(self, raw: bytes) -> None:
        ids = self._settle(raw) if self._balance else None
        self._pending.append(self.session.submit_block(raw, self._measure, self._progress, ids))
        # blocks in flight keep every segment worker busy across block boundaries
        while len(self._pending) > IN_FLIGHT or (self._pending and self._pending[0].done()):
            self._write_next()

    def _write_next(self) -> None:
        block = self._pending[0]
        try:
            method, payload = block.result(self.stats)
        except BaseException:
            self._abandon()
            raise
        self._pending.popleft()
        self.size += container.write_block(self._f, method, block.raw, payload, self.version)
        self._blocks += 1
        self._total += len(block.raw)
        self._crc = zlib.crc32(block.raw, self._crc)

    def _abandon(self) -> None:
        """After an error: stop coding the blocks in flight."""
        for block in self._pending:
            block.cancel()
        self._pending.clear()
        self._closed = True

    def close(self) -> None:
        if self._closed:
            return
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()
        while self._pending:
            self._write_next()
        if self._balance:
            self._settle(b"")
        self.size += container.write_trailer(self._f, self._total, self._crc, self.version, self._blocks)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self._abandon()


def open_reader(fileobj, *, model=None, context: bytes | None = None, force: bool = False):
    """(container.Reader, Session or None): the header is read and the model/engine/context checked.

    The session is only built (model loaded) when the stream has a model-coded block,
    so lzma/stored-only files decode without the model.
    """
    reader = container.Reader(fileobj)
    h = reader.header
    codec.check_context(h, context)

    def session() -> Session:
        model_file = codec.resolve_for_header(h, model)
        s = get_session(model_file, h.engine["name"], h.segment_tokens, context, h.engine.get("params"), h.window,
                        h.adaptive)
        s.engine.check_params(h.engine.get("params") or {}, force=force)
        if s.vocab.start_id != h.start_id:
            raise FormatError("header start token does not match the model")
        return s

    return reader, session


def _groups(blocks, segment_tokens: int, window: int | None = None,
            position_bytes: Callable[[], int] = lambda: codec.POSITION_BYTES) -> Iterator[list]:
    """Consecutive blocks whose model-coded streams' caches fit ``codec.DECODE_BYTES`` together
    (``position_bytes()``: a stream's bytes per cached position, asked at the first model block).

    A read error (a damaged block header) is raised only after the blocks before it.
    """
    group, cost, each = [], 0, None
    per_stream = segment_tokens if window is None else min(segment_tokens, window + 2 * codec.WINDOW_STEP)
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            break
        except TinylmzError:
            if group:
                yield group
            raise
        need = 0
        if block.method == container.MODEL:
            try:
                streams = container.read_varint(block.payload, 0)[0]
            except (TinylmzError, IndexError, ValueError):
                streams = 1  # damaged: reported when it is decoded
            each = position_bytes() if each is None else each
            need = max(1, min(streams, 1 << 16)) * per_stream * each  # the lockstep's cache: streams x longest
        if group and cost + need > codec.DECODE_BYTES:
            yield group
            group, cost = [], 0
        group.append(block)
        cost += need
    if group:
        yield group


def iter_decompress(fileobj, *, model=None, context: bytes | None = None, force: bool = False,
                    progress: Progress | None = None) -> Iterator[bytes]:
    """Yield the original bytes block by block; raises FormatError on any damage.

    Several blocks are decoded side by side (their streams in one model call per step), up
    to a bounded number of stream positions, so output arrives a group of blocks at a time.
    """
    reader, make_session = open_reader(fileobj, model=model, context=context, force=force)
    session = None
    total, crc = 0, 0

    def position_bytes() -> int:  # the engine loads at the first model-coded block, not before
        nonlocal session
        session = session or make_session()
        ask = getattr(session.engine, "position_bytes", None)
        return ask(session.window) if ask else codec.POSITION_BYTES

    for group in _groups(iter(reader.blocks()), reader.header.segment_tokens, reader.header.window, position_bytes):
        if session is None and any(b.method == container.MODEL for b in group):
            session = make_session()
        for block, raw in zip(group, codec.decode_blocks(session, group, progress)):
            if progress and block.method != container.MODEL:
                progress(len(raw))
            total += len(raw)
            crc = zlib.crc32(raw, crc)
            yield raw
    if reader.trailer != (total, crc):
        raise FormatError("file decodes to the wrong bytes (whole-file checksum mismatch)")


def compress(data: bytes, *, model=None, engine: str | None = None, context: bytes | None = None,
             block_size: int = DEFAULT_BLOCK_SIZE, segment_tokens: int | None = None, window: int | None = None,
             format_version: int = container.VERSION, adaptive: int | None = None,
             threads: int | None = None) -> bytes:
    """Compress ``data`` into .tlmz bytes (default model, portable engine, format version 2).

    ``threads``: kernel threads (default: chosen by measuring; the output never depends on it).
    """
    if threads is not None:
        set_threads(threads)
    out = io.BytesIO()
    with Compressor(out, model=model, engine=engine, context=context, block_size=block_size,
                    segment_tokens=segment_tokens, window=window, format_version=format_version,
                    adaptive=adaptive) as c:
        c.write(data)
    return out.getvalue()


def decompress(data: bytes, *, model=None, context: bytes | None = None, force: bool = False,
               threads: int | None = None) -> bytes:
    """Decompress .tlmz bytes; raises FormatError / ModelError / EngineMismatch."""
    if threads is not None:
        set_threads(threads)
    return b"".join(iter_decompress(io.BytesIO(data), model=model, context=context, force=force))


class TinylmzFile(io.BufferedIOBase):
    """A file object over a .tlmz file: mode "rb" reads the original bytes, "wb" compresses."""

    def __init__(self, filename, mode: str = "rb", **kwargs) -> None:
        if mode in ("r", "rb"):
            mode = "rb"
        elif mode in ("w", "wb", "x", "xb"):
            mode = mode[0] + "b"
        else:
            raise ValueError(f"invalid mode {mode!r}")
        self._own = isinstance(filename, (str, bytes, os.PathLike))
        self._fp = builtins.open(filename, mode) if self._own else filename
        self._mode = mode
        if mode == "rb":
            self._blocks = iter_decompress(self._fp, **kwargs)
            self._pending = b""
            self._eof = False
        else:
            self._writer = Compressor(self._fp, **kwargs)

    def readable(self) -> bool:
        return self._mode == "rb"

    def writable(self) -> bool:
        return self._mode != "rb"

    def write(self, data) -> int:
        if self._mode == "rb":
            raise io.UnsupportedOperation("not writable")
        return self._writer.write(bytes(data))

    def read(self, size: int = -1) -> bytes:
        if self._mode != "rb":
            raise io.UnsupportedOperation("not readable")
        chunks = [self._pending]
        have = len(self._pending)
        while (size is None or size < 0 or have < size) and not self._eof:
            try:
                b = next(self._blocks)
            except StopIteration:
                self._eof = True
                break
            chunks.append(b)
            have += len(b)
        data = b"".join(chunks)
        if size is None or size < 0:
            self._pending = b""
            return data
        self._pending = data[size:]
        return data[:size]

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._mode != "rb":
                self._writer.close()
        finally:
            if self._own:
                self._fp.close()
            super().close()


def open(filename, mode: str = "rb", **kwargs) -> TinylmzFile:  # noqa: A001 - mirrors lzma.open
    """Open a .tlmz file in binary mode ("rb" or "wb"), like ``lzma.open``."""
    return TinylmzFile(filename, mode, **kwargs)
