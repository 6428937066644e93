"""Record mode: many short records (CSV lines, JSON objects, log messages), each decodable alone.

A data logger keeps a *context* — a few KB of typical records — that both
sides feed to the model before every record.  The model state after the
context (start token + context tokens, a KV-cache snapshot: ``Session.prefix``)
is computed once per codec and reused, so a record costs only its own tokens.
Each record is coded as an independent range-coder stream that starts from
that prefix; a frame therefore decodes alone given the same context, model and
engine, and many frames decode side by side (``decompress_many``: one model
call advances up to ``engine.max_streams`` frames).

Frames (version 2; ``FORMAT.md`` §7 specifies them bit by bit)
--------------------------------------------------------------

A frame carries no header: the codec (its context, model, engine and segment
length) is the caller's, or the record log's header.  Its first byte tells the
kind::

    b""                         the empty record
    0x00 check:u8 record        STORED
    0x01 check:u8 deflate       DEFLATE (raw zlib stream)
    0x02 ...                    MODEL, a record of more than S tokens (several streams)
    0x10, 0x11                  a version-1 frame (still decoded)
    0x12 .. 0xFF                MODEL: one range-coder stream

A MODEL stream codes, with the range coder of ``rangecoder.py``: a *method*
symbol (fixed table; it keeps the stream's first byte >= 0x12), then for each
token a binary *end* flag (its probability taken from the model's probability
of ``"\\n"``, what follows a record in a context of lines) and the token (the
frequency table of ``freqs.py``, as in a .tlmz stream), then the end flag set,
then an 8-bit ``check`` (uniform).  ``check = crc32(key + record) & 0xFF``
where ``key`` is the 32-byte identity of the codec (context, model, engine and
its parameters, segment length).  The decoder also requires the stream to end
exactly as the encoder ends it (the shortest value in the final interval) and
to read at most 16 bytes past its end.

Guarantee: a damaged frame, or one decoded with another context, model, engine
or segment length, raises ``FormatError`` except with probability about 2^-8
(the check; the exact-end rule and the overrun bound reject many such frames
before it: 14 of 32 log-line frames decoded against a CSV context).  No frame is ever read out of bounds or decoded past ``S`` tokens.

Overhead beyond the tokens' own cost: the 8-bit check, ~0.3 bits of end flags and
method symbol, and the coder's final byte (1.35 bytes in all on 80-byte log lines);
2 bytes for a stored or deflated record, 0 for the empty record.

Record logs (``.tlmzr``, version 2): a header naming the model, engine, context
and segment length, then ``varint(frame_len) frame`` per line, an index of every
64th entry's offset and a trailer (record count, whole-input CRC).  Version-1
logs (version-1 frames) still decode.  ``FORMAT.md`` §7 has the layout.

API
---

    codec = RecordCodec(context, model=None, engine=None)
    frame = codec.compress(record)        # bytes -> frame
    codec.decompress(frame)               # frame -> bytes
    codec.decompress_many(frames)         # list of frames -> list of records, side by side

    write_log(lines, out, codec)          # -> dict of stats
    read_log(f, codec)                    # iterator over the original lines (with their b"\\n")
    read_record(f, codec, n)              # line n alone (with its b"\\n" unless it is the unterminated last line)
    read_log_info(f) ; codec_for_log(f, context, model=None)
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from . import freqs
from .codec import DEFAULT_ENGINE
from .container import read_varint, varint
from .errors import EngineMismatch, FormatError, ModelError, TinylmzError
from .rangecoder import Decoder, Encoder

VERSION = 2
DEFAULT_SEGMENT_TOKENS = 1024
# Text is always tried with the model; bytes that are not UTF-8 and tokenize
# to more than this many tokens per byte are binary and stored without a model call.
MAX_TOKENS_PER_BYTE = 0.6
_ID_SALT = b"tinylmz-records\0"

# Frame tags (first byte).  A MODEL stream's first byte is >= FIRST_MODEL_BYTE.
STORED, DEFLATE, MULTI = 0x00, 0x01, 0x02
V1_TAGS = (0x10, 0x11)  # version << 4 | method of version-1 frames
FIRST_MODEL_BYTE = 0x12
TOTAL = freqs.TOTAL
# Method symbol: RESERVED = [0, C0), MODEL = [C0, TOTAL).  Coding MODEL puts the stream's value
# at or above (2^36 - 1) * C0 / 2^64 > 0x12 / 256, so its first byte is >= 0x12 (cost 0.11 bits).
METHOD_C0 = 0x13 << 20
CHECK_BITS = 8
END_MIN = 1 << 16  # the end flag's frequency is at least this: an end costs at most 12 bits
END_SHIFT = 4  # the end flag gets 15/16 of the newline symbol's frequency
MAX_OVERRUN = 16  # bytes a MODEL stream's decoder may read past its end (zeros)
DEFLATE_MIN = 16  # shorter records are not worth a deflate attempt

# Version 1 (decode only): tag:u8 ctx_id:u16 check:u8 body
V1_MODEL, V1_STORED = 0, 1
V1_HEADER = 4


class ContextMismatch(TinylmzError):
    """A record log was made with another context or segment length than the codec's."""


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _bytes(data, what: str) -> bytes:
    """``data`` as bytes; bytes-like objects only (as the stdlib compressors take)."""
    if isinstance(data, str):
        raise TypeError(f"{what} must be bytes, not str (encode it first)")
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}") from None


def identity(context_sha256: str, model_sha256: str, engine: str, params: dict, segment_tokens: int) -> bytes:
    """The codec's 32-byte identity: ``sha256(salt + canonical JSON of what the frames depend on)``."""
    ident = json.dumps(
        {"context": context_sha256, "engine": engine, "model": model_sha256, "params": params or {},
         "segment": int(segment_tokens)},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    return hashlib.sha256(_ID_SALT + ident).digest()


def context_id(context_sha256: str, model_sha256: str, engine: str, params: dict, segment_tokens: int) -> int:
    """The 16-bit id of version-1 frames and log headers: the identity's first two bytes (little-endian)."""
    return int.from_bytes(identity(context_sha256, model_sha256, engine, params, segment_tokens)[:2], "little")


def end_frequency(f_newline: int) -> int:
    """Frequency (of TOTAL) of the end flag at a position where the newline symbol has ``f_newline``."""
    return max(f_newline - (f_newline >> END_SHIFT), END_MIN)  # <= 15/16 of TOTAL: "continue" keeps >= 1/16


def exact_end(dec: Decoder, data: bytes) -> bool:
    """Whether ``data`` ends exactly as ``Encoder.finish`` ends a stream in the decoder's final interval.

    The decoder has read ``pos`` bytes (zeros past the end); the encoder's interval at that
    scale is ``[low, low + range)`` with ``low = value(data[:pos]) - code``.  ``finish`` writes
    the multiple of the largest power ``2^b`` (b <= 64) in it, as ``pos`` bytes, and drops
    trailing zeros.
    """
    pos = dec._pos
    low = int.from_bytes(data[:pos].ljust(pos, b"\0"), "big") - dec.code
    high = low + dec.range
    for b in range(64, -1, -1):
        v = -((-low) >> b) << b
        if v < high:
            break
    if v >> (8 * pos):
        return False
    return v.to_bytes(pos, "big").rstrip(b"\0") == data


@dataclass
class _Stream:
    """One range-coder stream of a frame, to be decoded."""

    data: bytes
    count: int | None  # known token count; None: the stream codes end flags, the end and the check
    method: bool = False  # starts with the method symbol (a one-stream MODEL frame)
    ids: list = field(default_factory=list)
    check: int | None = None  # decoded check value
    error: str | None = None


@dataclass
class _Frame:
    v1: bool
    record: bytes | None = None  # known without the model (empty, STORED, DEFLATE)
    check: int | None = None  # expected check (STORED, DEFLATE, version 1)
    streams: list = field(default_factory=list)


def frame_method(frame: bytes) -> str:
    """"empty", "stored", "deflate" or "model" (what ``compress`` chose)."""
    if not frame:
        return "empty"
    b = frame[0]
    if b in V1_TAGS:
        return "model" if b & 0x0F == V1_MODEL else "stored"
    return {STORED: "stored", DEFLATE: "deflate"}.get(b, "model")


class RecordCodec:
    """Compress and decompress short records against a shared context.

    ``model``: None (the default model), a registry name, a .gguf path or a
    ``registry.ResolvedModel``.  ``engine``: "portable" (default) or "llama".
    ``segment_tokens``: records longer than this many tokens are coded as
    several streams inside one frame (not rejected).  ``params``: engine
    parameters recorded in a log header (to rebuild a llama engine).

    Frames carry no copy of the context's identity: decode them with a codec
    made with the same context, model, engine and segment length (a mismatch
    raises ``FormatError`` except with probability about 2^-8).
    """

    def __init__(self, context: bytes, *, model=None, engine: str | None = None,
                 segment_tokens: int = DEFAULT_SEGMENT_TOKENS, params: dict | None = None) -> None:
        from . import api, registry

        if segment_tokens < 1:
            raise TinylmzError("segment length must be at least 1 token")
        self.context = _bytes(context or b"", "context")
        if isinstance(model, registry.ResolvedModel):
            self.model = model
        else:
            self.model = registry.resolve(None if model is None else str(model))
        self.engine_name = engine or DEFAULT_ENGINE
        self.segment_tokens = int(segment_tokens)
        # The llama engine sizes its context window from the session's segment length:
        # leave room for the context (tokens <= bytes; the window has room for the start token
        # and a stream's end position besides).
        seg = self.segment_tokens + (len(self.context) if self.engine_name == "llama" else 0)
        self.session = api.get_session(self.model, self.engine_name, seg, self.context or None, params)
        self.engine = self.session.engine
        self.vocab = self.session.vocab
        self.params = self.engine.params()
        self.context_sha256 = hashlib.sha256(self.context).hexdigest()
        self.key = identity(self.context_sha256, self.model.sha256, self.engine.name, self.params,
                            self.segment_tokens)
        self.id = int.from_bytes(self.key[:2], "little")  # version-1 frames and log headers
        self._key_crc = zlib.crc32(self.key)
        self._newline = int(self.vocab.byte_ids[0x0A])  # the symbol of b"\n" (FORMAT.md §4)

    # -- helpers ---------------------------------------------------------------------------

    def describe(self) -> str:
        return (f"context of {len(self.context)} bytes (sha256 {self.context_sha256[:16]}…), "
                f"model {self.model.name} (sha256 {self.model.sha256[:16]}…), "
                f"engine {self.engine.name} {json.dumps(self.params, sort_keys=True)}, "
                f"segment {self.segment_tokens}")

    def prepare(self) -> None:
        """Evaluate the context now (otherwise the first record pays for it)."""
        self.session.prefix  # noqa: B018 - computed and cached on first access

    def tokenize(self, record: bytes) -> np.ndarray:
        return self.session.tokenizer.encode(record) if record else np.zeros(0, np.int32)

    def check(self, record: bytes) -> int:
        """The frame check of ``record``: ``crc32(key + record) & 0xFF``."""
        return zlib.crc32(record, self._key_crc) & ((1 << CHECK_BITS) - 1)

    # -- compression -----------------------------------------------------------------------

    def compress(self, record: bytes, *, ids: np.ndarray | None = None) -> bytes:
        """One frame for ``record``: the shortest of model-coded, deflate and stored (stored on ties)."""
        record = _bytes(record, "record")
        if not record:
            return b""
        best = bytes([STORED, self.check(record)]) + record
        if len(record) >= DEFLATE_MIN:
            z = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = bytes([DEFLATE, self.check(record)]) + z.compress(record) + z.flush()
            if len(packed) < len(best):
                best = packed
        if ids is None:
            ids = self.tokenize(record)
        if len(ids) > MAX_TOKENS_PER_BYTE * len(record) and not _is_utf8(record):
            return best
        coded = self._model_frame(record, ids)
        return coded if coded is not None and len(coded) < len(best) else best

    def _model_frame(self, record: bytes, ids: np.ndarray) -> bytes | None:
        """The MODEL frame of ``record`` (tokens ``ids``), whatever its size; None in the rare
        case that its stream would need more than MAX_OVERRUN bytes read past its end."""
        ids = np.asarray(ids, dtype=np.int64)
        check = self.check(record)
        seg = self.segment_tokens
        if len(ids) <= seg:
            return self._end_stream(ids, check, method=True)
        full = (len(ids) - 1) // seg  # streams of exactly S tokens; the last one has 1..S
        head = self.session.encode_streams([ids[i : i + seg] for i in range(0, full * seg, seg)])[0]
        last = self._end_stream(ids[full * seg :], check, method=False)
        if last is None:
            return None
        out = bytearray([MULTI]) + varint(full)
        for s in head:
            out += varint(len(s))
        return bytes(out + b"".join(head) + last)

    def _logit_rows(self, ids: np.ndarray) -> Iterator[np.ndarray]:
        """Logits after the prefix and ids[:j], j = 0..len(ids) (one row more than ids), in chunks."""
        s = self.session
        feed = s._input[ids]
        if self.engine.batch_invariant:
            yield from self.engine.score(s.prefix, np.append(feed, s.vocab.start_id))
            return
        stepper = self.engine.stepper(s.prefix, 1)  # drive it exactly as the decoder will
        for j in range(len(ids) + 1):
            yield np.array(stepper.logits()[:1])
            if j < len(ids):
                stepper.feed([int(feed[j])])

    def _row_numbers(self, rows: np.ndarray, real: np.ndarray) -> tuple:
        """(cum, freq) of each row's token (``real``: one per row but maybe the last) and every row's
        frequency of the newline (which sets its end flag), from one pass over each row."""
        nl, w = self._newline, self.session.width
        if nl >= rows.shape[1]:  # a byte symbol past the logits: frequency 1
            cum, fr = freqs.symbols(rows[: len(real)], real, w) if len(real) else ((), ())
            return cum, fr, np.ones(len(rows), dtype=np.int64)
        # the newline "biased" to its own logit leaves the table as it is and reports its frequency
        biases = [([nl], [v]) for v in freqs.fixed_logits(rows[:, nl]).tolist()]
        _, cum, fr, fx = freqs.pick(rows, w, np.append(real, nl)[: len(rows)], biases=biases)
        return cum[: len(real)], fr[: len(real)], fx[:, 0]

    def _end_stream(self, ids: np.ndarray, check: int, *, method: bool) -> bytes | None:
        """Range-code [method], (end flag, token) per id, the end flag set, the check."""
        w, n = self.session.width, len(ids)
        syms: list[tuple[int, int, int]] = [(METHOD_C0, TOTAL - METHOD_C0, TOTAL)] if method else []
        done = 0
        for chunk in self._logit_rows(ids):
            for rows in np.array_split(chunk, -(-len(chunk) // 32)):  # bounded (rows x vocabulary) tables
                k = len(rows)
                real = ids[done : done + k]
                cum, fr, f_nl = self._row_numbers(rows, real)
                for j, (fn, c, f) in enumerate(zip(f_nl.tolist(), list(cum) + [None], list(fr) + [None])):
                    e = end_frequency(fn)
                    if done + j < n:
                        syms += [(0, TOTAL - e, TOTAL), (int(c), int(f), TOTAL)]
                    else:
                        syms.append((TOTAL - e, e, TOTAL))
                done += k
        assert done == n + 1
        syms.append((check, 1, 1 << CHECK_BITS))
        enc = Encoder()
        for c, f, t in syms:
            enc.encode(c, f, t)
        data = enc.finish()
        # The decoder's view, without the model: the same symbols, an exact end, the overrun bound.
        dec = Decoder(data)
        for c, f, t in syms:
            v = dec.target(t)
            assert c <= v < c + f
            dec.consume(c, f)
        assert exact_end(dec, data) and (not method or data[0] >= FIRST_MODEL_BYTE)
        return data if dec.overrun <= MAX_OVERRUN else None

    # -- decompression ---------------------------------------------------------------------

    def _parse(self, frame: bytes, where: str) -> _Frame:
        if not frame:
            return _Frame(False, record=b"")
        tag = frame[0]
        if tag >= FIRST_MODEL_BYTE:
            return _Frame(False, streams=[_Stream(frame, None, method=True)])
        if tag in V1_TAGS:
            return self._parse_v1(frame, where)
        if tag in (STORED, DEFLATE):
            if len(frame) < 2:
                raise FormatError(f"{where} is truncated (a {frame_method(frame)} frame has at least 2 bytes)")
            body = frame[2:]
            if tag == DEFLATE:
                z = zlib.decompressobj(-15)
                try:
                    body = z.decompress(body)
                except zlib.error:
                    raise FormatError(f"{where} is damaged (deflate data)") from None
                if not z.eof or z.unused_data:
                    raise FormatError(f"{where} is damaged (deflate data does not end at the frame's end)")
            return _Frame(False, record=body, check=frame[1])
        if tag == MULTI:
            return self._parse_multi(frame, where)
        raise FormatError(f"{where} has unknown kind 0x{tag:02x} (made by a newer tinylmz?)")

    def _parse_multi(self, frame: bytes, where: str) -> _Frame:
        try:
            full, pos = read_varint(frame, 1)
            if not 1 <= full < len(frame):
                raise ValueError
            lens = []
            for _ in range(full):
                b, pos = read_varint(frame, pos)
                lens.append(b)
        except (ValueError, IndexError):
            raise FormatError(f"{where} is damaged (stream table)") from None
        if pos + sum(lens) > len(frame):
            raise FormatError(f"{where} is damaged (stream table does not fit the frame)")
        streams = []
        for b in lens:
            streams.append(_Stream(frame[pos : pos + b], self.segment_tokens))
            pos += b
        streams.append(_Stream(frame[pos:], None))
        return _Frame(False, streams=streams)

    def _parse_v1(self, frame: bytes, where: str) -> _Frame:
        """Version 1: tag:u8 ctx_id:u16 check:u8, then the record (STORED) or
        varint(n_tokens) len_1 .. len_{k-1} stream_1 .. stream_k (MODEL)."""
        if len(frame) < V1_HEADER:
            raise FormatError(f"{where} is truncated ({len(frame)} bytes; a version-1 frame has at least {V1_HEADER})")
        (fid,) = struct.unpack_from("<H", frame, 1)
        if fid != self.id:
            raise FormatError(
                f"{where} was made with another context, model or engine (context id {fid:04x}; "
                f"this codec's id is {self.id:04x} for {self.describe()}): pass the context, model "
                "and engine the frame was made with"
            )
        check = frame[3]
        if frame[0] & 0x0F == V1_STORED:
            return _Frame(True, record=frame[V1_HEADER:], check=check)
        try:
            n, pos = read_varint(frame, V1_HEADER)
        except (ValueError, IndexError):
            raise FormatError(f"{where} is damaged (token count)") from None
        seg = self.segment_tokens
        k = -(-n // seg)
        if k > len(frame):  # a table needs k-1 varints of >= 1 byte
            raise FormatError(f"{where} is damaged (token count {n} does not fit the frame)")
        lens = []
        try:
            for _ in range(k - 1):
                b, pos = read_varint(frame, pos)
                lens.append(b)
        except (ValueError, IndexError):
            raise FormatError(f"{where} is damaged (stream table)") from None
        if pos + sum(lens) > len(frame):
            raise FormatError(f"{where} is damaged (stream table does not fit the frame)")
        if k == 0 and pos != len(frame):
            raise FormatError(f"{where} is damaged (bytes after an empty record)")
        streams = []
        for i in range(k):
            b = lens[i] if i < k - 1 else len(frame) - pos
            streams.append(_Stream(frame[pos : pos + b], min(seg, n - i * seg)))
            pos += b
        return _Frame(True, check=check, streams=streams)

    def decompress(self, frame: bytes) -> bytes:
        """The record of one frame; raises ``FormatError`` if it is damaged or was made by another codec."""
        return self.decompress_many([frame])[0]

    def decompress_many(self, frames: list[bytes], *, progress=None) -> list[bytes]:
        """Decode frames side by side (up to ``engine.max_streams`` streams per model call);
        results in input order.  ``progress(n)`` is called with the tokens decoded at each step.
        """
        frames = [_bytes(f, "frame") for f in frames]
        wheres = [f"record frame {i}" if len(frames) > 1 else "record frame" for i in range(len(frames))]
        parsed = [self._parse(f, w) for f, w in zip(frames, wheres)]
        # Streams of known length first, longest first; then streams that end with an end
        # flag, longest frames first: a group's stepper drops finished streams from its end.
        streams = [s for p in parsed for s in p.streams]
        streams.sort(key=lambda s: (s.count is None, -(s.count or 0), -len(s.data)))
        width = self.engine.max_streams
        for g in range(0, len(streams), width):
            self._decode_group(streams[g : g + width], progress)
        return [self._record(p, w) for p, w in zip(parsed, wheres)]

    def _record(self, p: _Frame, where: str) -> bytes:
        """A parsed and decoded frame's record, checked."""
        for s in p.streams:
            if s.error:
                raise FormatError(f"{where} is damaged or was made with another context, model or engine "
                                  f"({s.error})")
        rec = p.record
        if rec is None:
            try:
                rec = self.vocab.decode([t for s in p.streams for t in s.ids])
            except ValueError as e:
                raise FormatError(f"{where} is damaged ({e})") from None
        if p.v1:
            if zlib.crc32(rec) & 0xFF != p.check:
                raise FormatError(f"{where} decodes to the wrong bytes (check byte mismatch): it is damaged")
            return rec
        want = p.check if p.check is not None else p.streams[-1].check if p.streams else None
        if want is not None and self.check(rec) != want:
            raise FormatError(f"{where} is damaged or was made with another context, model or engine "
                              "(check mismatch)")
        return rec

    def _decode_group(self, group: list[_Stream], progress) -> None:
        """Decode ``group`` in lockstep (one model call per step for all its live streams).

        A stream that ends, or fails, while streams after it still run is fed the start
        token (its logits are ignored) so that the rest stay in step; finished streams at
        the end of the group are dropped.  Errors are recorded per stream, not raised.
        """
        s, seg, nl = self.session, self.segment_tokens, self._newline
        decs = [Decoder(st.data) for st in group]
        live = [True] * len(group)
        for i, st in enumerate(group):
            if st.count == 0:
                live[i] = False
            elif st.method:
                try:
                    v = decs[i].target(TOTAL)
                    if v < METHOD_C0:
                        raise ValueError("reserved method symbol")
                    decs[i].consume(METHOD_C0, TOTAL - METHOD_C0)
                except ValueError as e:
                    st.error, live[i] = str(e), False
        n = len(group)
        while n and not live[n - 1]:
            n -= 1
        if not n:
            return
        stepper = self.engine.stepper(s.prefix, n)
        while True:
            rows = [i for i in range(n) if live[i]]
            cum = freqs.cumulative(stepper.logits()[rows], s.width)
            tokens = 0
            for k, i in enumerate(rows):
                st, d = group[i], decs[i]
                try:
                    if st.count is None:
                        e = end_frequency(int(cum[k, nl + 1] - cum[k, nl]))
                        if d.target(TOTAL) >= TOTAL - e:
                            d.consume(TOTAL - e, e)
                            st.check = d.target(1 << CHECK_BITS)
                            d.consume(st.check, 1)
                            if d.overrun > MAX_OVERRUN or not exact_end(d, st.data):
                                raise ValueError("the stream does not end where its last symbol does")
                            live[i] = False
                            continue
                        d.consume(0, TOTAL - e)
                        if len(st.ids) == seg:
                            raise ValueError(f"no end of record within {seg} tokens")
                    st.ids.append(d.decode(cum[k]))
                    tokens += 1
                    if st.count is None and d.overrun > MAX_OVERRUN:
                        raise ValueError(f"more than {MAX_OVERRUN} bytes read past the end")
                    if len(st.ids) == st.count:
                        if not exact_end(d, st.data):
                            raise ValueError("the stream does not end where its last token does")
                        live[i] = False
                except ValueError as err:
                    st.error, live[i] = str(err), False
            if progress and tokens:
                progress(tokens)
            while n and not live[n - 1]:
                n -= 1
            if not n:
                return
            start = s.vocab.start_id
            stepper.feed([int(s._input[group[i].ids[-1]]) if live[i] else start for i in range(n)])


# ---- record logs ---------------------------------------------------------------------------

LOG_MAGIC = b"TLMR"
LOG_VERSION = 2  # version 2 logs hold version-2 frames; version 1 logs (version-1 frames) still read
LOG_VERSIONS = (1, 2)
INDEX_STEP = 64
BATCH = 64
_TRAILER = struct.Struct("<QQBII4s")  # n_records, index_offset, flags, data_crc, tcrc, magic
NO_FINAL_NEWLINE = 1


@dataclass
class LogInfo:
    model: dict  # {"name", "sha256"}
    engine: dict  # {"name", "params"}
    context: dict  # {"sha256", "size"}
    segment_tokens: int
    ctx_id: int
    index_step: int
    n_records: int = 0
    index_offset: int = 0
    flags: int = 0
    data_crc: int = 0
    header_size: int = 0
    version: int = LOG_VERSION


def _header_bytes(codec: RecordCodec, index_step: int) -> bytes:
    name = codec.model.name.encode()[:255]
    eng = codec.engine.name.encode()[:255]
    params = json.dumps(codec.params, sort_keys=True, separators=(",", ":")).encode()
    body = bytearray(bytes.fromhex(codec.model.sha256))
    body += bytes([len(name)]) + name + bytes([len(eng)]) + eng + varint(len(params)) + params
    body += bytes.fromhex(codec.context_sha256) + varint(len(codec.context))
    body += varint(codec.segment_tokens) + struct.pack("<H", codec.id) + varint(index_step)
    if len(body) > 0xFFFF:
        raise TinylmzError("engine parameters too long for a record log header")
    head = LOG_MAGIC + bytes([LOG_VERSION]) + struct.pack("<H", len(body)) + bytes(body)
    return head + struct.pack("<I", zlib.crc32(head))


def _read_exact(f, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise FormatError(f"record log is truncated (in the {what})")
    return b


def _read_header(f) -> LogInfo:
    head = f.read(7)
    if len(head) < 4 or head[:4] != LOG_MAGIC:
        raise FormatError("not a tinylmz record log (bad magic)")
    if len(head) < 7:
        raise FormatError("record log is truncated (in the header)")
    if head[4] not in LOG_VERSIONS:
        raise FormatError(f"record log version {head[4]} is not supported (this tinylmz reads versions "
                          f"{', '.join(map(str, LOG_VERSIONS))}: upgrade tinylmz)")
    (hlen,) = struct.unpack_from("<H", head, 5)
    body = _read_exact(f, hlen, "header")
    (hcrc,) = struct.unpack("<I", _read_exact(f, 4, "header"))
    if zlib.crc32(head + body) != hcrc:
        raise FormatError("record log header is damaged (checksum mismatch)")
    try:
        p = 0
        msha = body[p : p + 32].hex(); p += 32
        name = body[p + 1 : p + 1 + body[p]].decode("utf-8", "replace"); p += 1 + body[p]
        eng = body[p + 1 : p + 1 + body[p]].decode("utf-8", "replace"); p += 1 + body[p]
        plen, p = read_varint(body, p)
        params = json.loads(body[p : p + plen]); p += plen
        csha = body[p : p + 32].hex(); p += 32
        csize, p = read_varint(body, p)
        seg, p = read_varint(body, p)
        (cid,) = struct.unpack_from("<H", body, p); p += 2
        step, p = read_varint(body, p)
    except (IndexError, ValueError, struct.error):
        raise FormatError("record log header is damaged") from None
    if step < 1 or seg < 1:
        raise FormatError("record log header is damaged (zero index step or segment)")
    return LogInfo({"name": name, "sha256": msha}, {"name": eng, "params": params},
                   {"sha256": csha, "size": csize}, seg, cid, step, header_size=7 + hlen + 4, version=head[4])


def _read_trailer(f, base: int, info: LogInfo) -> list[int]:
    """Fill ``info`` from the trailer; return the index (absolute file offsets)."""
    end = f.seek(0, 2)
    if end - base < info.header_size + _TRAILER.size:
        raise FormatError("record log is truncated (no trailer)")
    f.seek(end - _TRAILER.size)
    n, ioff, flags, dcrc, tcrc, magic = _TRAILER.unpack(_read_exact(f, _TRAILER.size, "trailer"))
    if magic != LOG_MAGIC:
        raise FormatError("record log is truncated or damaged (no trailer)")
    n_index = -(-n // info.index_step)
    if not info.header_size <= ioff or ioff + 8 * n_index != end - base - _TRAILER.size:
        raise FormatError("record log trailer is damaged (index does not fit)")
    f.seek(base + ioff)
    raw = _read_exact(f, 8 * n_index, "index")
    if zlib.crc32(raw + _TRAILER.pack(n, ioff, flags, dcrc, 0, magic)[:21]) != tcrc:
        raise FormatError("record log index or trailer is damaged (checksum mismatch)")
    info.n_records, info.index_offset, info.flags, info.data_crc = n, ioff, flags, dcrc
    index = list(struct.unpack(f"<{n_index}Q", raw))
    if any(not info.header_size <= o < ioff for o in index) or index != sorted(index):
        raise FormatError("record log index is damaged")
    return [base + o for o in index]


def read_log_info(fileobj) -> LogInfo:
    """Header and trailer of a record log (seekable file object at the start of the log)."""
    base = fileobj.tell()
    info = _read_header(fileobj)
    _read_trailer(fileobj, base, info)
    fileobj.seek(base)
    return info


def codec_for_log(fileobj, context: bytes, *, model=None) -> RecordCodec:
    """The RecordCodec a log needs: its model found by sha256 (or ``model``), its engine and params."""
    from . import registry

    base = fileobj.tell()
    info = _read_header(fileobj)
    fileobj.seek(base)
    need = info.model["sha256"]
    if model is not None:
        resolved = model if isinstance(model, registry.ResolvedModel) else registry.resolve(str(model))
    else:
        entry = registry.find(need)
        if entry is None:
            raise ModelError(f"record log was made with model {info.model['name']} (sha256 {need}), "
                             "which is not in the registry: pass it with --model PATH")
        resolved = registry.resolve(entry.name)
    params = info.engine["params"] if info.engine["name"] == "llama" else None
    codec = RecordCodec(context, model=resolved, engine=info.engine["name"],
                        segment_tokens=info.segment_tokens, params=params)
    _check_log(info, codec)
    return codec


def _check_log(info: LogInfo, codec: RecordCodec, force: bool = False) -> None:
    """Name the first mismatch between a log's header and a codec."""
    if info.model["sha256"] != codec.model.sha256:
        raise ModelError(f"record log was made with model {info.model['name']} (sha256 {info.model['sha256']}); "
                         f"{codec.model.path} is a different model")
    if info.context["sha256"] != codec.context_sha256:
        raise ContextMismatch(f"record log was made with a context of {info.context['size']} bytes "
                           f"(sha256 {info.context['sha256'][:16]}…); this one has {len(codec.context)} bytes "
                           f"(sha256 {codec.context_sha256[:16]}…): pass the same --context")
    if info.engine["name"] != codec.engine.name:
        raise EngineMismatch(f"record log was made with the {info.engine['name']} engine, not {codec.engine.name}")
    codec.engine.check_params(info.engine["params"] or {}, force=force)
    if info.segment_tokens != codec.segment_tokens:
        raise ContextMismatch(f"record log uses segments of {info.segment_tokens} tokens, this codec {codec.segment_tokens}")
    if info.ctx_id != codec.id:
        raise EngineMismatch(f"record log context id {info.ctx_id:04x} does not match this codec's {codec.id:04x} "
                             f"({codec.describe()})")


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """(record, ended_with_newline) for the concatenation of ``chunks`` split at b"\\n"."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        if b"\n" not in chunk:
            continue
        parts = buf.split(b"\n")
        buf = parts.pop()
        for p in parts:
            yield p, True
    if buf:
        yield buf, False


def write_log(lines: Iterable[bytes], out, codec: RecordCodec, *, index_step: int = INDEX_STEP,
              progress=None) -> dict:
    """Write a record log of ``lines`` to ``out`` (any writable binary file object; need not seek).

    ``lines``: an iterable of bytes (the lines of a file, or any chunks): their
    concatenation is the input, and each newline-terminated piece (and a final
    unterminated one) is one record.  Returns stats: records, raw bytes, log
    bytes, frame bytes, methods.  ``progress(raw_bytes)`` is called per record.
    """
    head = _header_bytes(codec, index_step)
    out.write(head)
    pos = len(head)
    index, n, crc, raw_total, frame_total = [], 0, 0, 0, 0
    methods = {"model": 0, "deflate": 0, "stored": 0, "empty": 0}
    ended = True
    for rec, nl in _lines(lines):
        if n % index_step == 0:
            index.append(pos)
        frame = codec.compress(rec)
        entry = varint(len(frame)) + frame
        out.write(entry)
        pos += len(entry)
        frame_total += len(frame)
        methods[frame_method(frame)] += 1
        line = rec + b"\n" if nl else rec
        crc = zlib.crc32(line, crc)
        raw_total += len(line)
        ended = nl
        n += 1
        if progress:
            progress(len(line))
    raw_index = struct.pack(f"<{len(index)}Q", *index)
    flags = 0 if ended else NO_FINAL_NEWLINE
    fields = _TRAILER.pack(n, pos, flags, crc, 0, LOG_MAGIC)[:21]
    tcrc = zlib.crc32(raw_index + fields)
    out.write(raw_index + _TRAILER.pack(n, pos, flags, crc, tcrc, LOG_MAGIC))
    pos += len(raw_index) + _TRAILER.size
    return {"records": n, "raw_bytes": raw_total, "log_bytes": pos, "frame_bytes": frame_total, "methods": methods}


def _read_entry(f, where: str) -> bytes:
    n = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise FormatError(f"record log is truncated (at {where})")
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
        if shift > 63:
            raise FormatError(f"record log is damaged (bad length at {where})")
    return n


def _open(fileobj, codec: RecordCodec, force: bool):
    base = fileobj.tell()
    info = _read_header(fileobj)
    _check_log(info, codec, force)
    index = _read_trailer(fileobj, base, info)
    return base, info, index


def read_log(fileobj, codec: RecordCodec, *, batch: int = BATCH, force: bool = False,
             progress=None) -> Iterator[bytes]:
    """Yield the original lines (each with its b"\\n", as in the input), decoding ``batch``
    frames side by side at a time; ``b"".join(read_log(...))`` is the original input.

    ``fileobj`` must be seekable (the trailer is read first).  Raises TinylmzError on
    any mismatch or damage (the whole-input checksum is verified at the end).
    """
    base, info, _ = _open(fileobj, codec, force)
    fileobj.seek(base + info.header_size)
    end = base + info.index_offset
    crc, done = 0, 0
    while done < info.n_records:
        frames = []
        for _ in range(min(batch, info.n_records - done)):
            k = _read_entry(fileobj, f"record {done + len(frames)}")
            if fileobj.tell() + k > end:
                raise FormatError(f"record log is damaged (record {done + len(frames)} runs past the index)")
            frames.append(fileobj.read(k))
        try:
            recs = codec.decompress_many(frames, progress=progress)
        except FormatError as e:
            raise FormatError(f"record log, records {done}..{done + len(frames) - 1}: {e}") from None
        for i, rec in enumerate(recs):
            last = done + i == info.n_records - 1
            line = rec if last and info.flags & NO_FINAL_NEWLINE else rec + b"\n"
            crc = zlib.crc32(line, crc)
            yield line
        done += len(frames)
    if fileobj.tell() != end:
        raise FormatError("record log is damaged (frames do not end at the index)")
    if crc != info.data_crc:
        raise FormatError("record log decodes to the wrong bytes (whole-input checksum mismatch)")


def read_record(fileobj, codec: RecordCodec, n: int, *, force: bool = False) -> bytes:
    """Line ``n`` (0-based; with its b"\\n" unless it is an unterminated last line), decoding one frame."""
    base, info, index = _open(fileobj, codec, force)
    if not 0 <= n < info.n_records:
        raise TinylmzError(f"record {n} does not exist (the log has {info.n_records} records: 0..{info.n_records - 1})")
    fileobj.seek(index[n // info.index_step])
    end = base + info.index_offset
    for i in range(n - n % info.index_step, n):
        k = _read_entry(fileobj, f"record {i}")
        fileobj.seek(k, 1)
    k = _read_entry(fileobj, f"record {n}")
    if fileobj.tell() + k > end:
        raise FormatError(f"record log is damaged (record {n} runs past the index)")
    frame = _read_exact(fileobj, k, f"record {n}")
    try:
        rec = codec.decompress(frame)
    except FormatError as e:
        raise FormatError(f"record log, record {n}: {e}") from None
    last = n == info.n_records - 1
    return rec if last and info.flags & NO_FINAL_NEWLINE else rec + b"\n"
