"""Record mode: many short records (CSV lines, JSON objects, log messages), each decodable alone.

A data logger keeps a *context* — a few KB of typical records — that both
sides feed to the model before every record.  The model state after the
context (start token + context tokens, a KV-cache snapshot: ``Session.prefix``)
is computed once per codec and reused, so a record costs only its own tokens.
Each record is coded as independent range-coder stream(s) that start from that
prefix; a frame therefore decodes alone given the same context, model and
engine, and many frames decode side by side (``decompress_many``: one model
call advances up to ``engine.max_streams`` frames).

Frame format (version 1)
------------------------

All multi-byte integers little-endian; ``varint`` is LEB128 (7 bits per byte,
low group first, high bit = more), as in the .tlmz container::

    frame   = tag:u8 ctx_id:u16 check:u8 body
    tag     = version << 4 | method          version = 1
    check   = crc32(record) & 0xFF           (zlib.crc32 of the decoded record)
    method 0, MODEL:   body = varint(n_tokens) len_1 .. len_{k-1} stream_1 .. stream_k
    method 1, STORED:  body = the record bytes as is (length = rest of the frame)

* ``ctx_id`` = the first two bytes (read as u16 little-endian) of
  ``sha256(b"tinylmz-records\\0" + json)`` where ``json`` is the canonical
  (sorted keys, no spaces) JSON of ``{"context": sha256(context) hex,
  "engine": engine name, "model": sha256(model file) hex, "params": engine
  params, "segment": S}``.  A frame whose ``ctx_id`` differs from the decoder's
  is rejected (it was made with another context, model, engine or engine
  version); as it is a 16-bit hash, a wrong combination slips through with
  probability 2^-16, and the check byte then catches 255 in 256 of those.
* MODEL: the record's ``n_tokens`` token ids (tokenized by the model's own
  tokenizer; ids' byte pieces concatenate to the record) are cut into
  ``k = ceil(n_tokens / S)`` streams of ``S`` tokens (the last one shorter);
  ``S`` is the codec's ``segment_tokens`` (default 1024, so a record of up to
  1024 tokens is one stream and ``k = 1`` needs no ``len`` fields).  Each
  stream is coded from the shared prefix by the range coder of ``rangecoder.py``
  with the frequency tables of ``freqs.py`` (exactly as a .tlmz segment);
  ``len_i = varint(byte length of stream i)`` for every stream but the last,
  which takes the rest of the frame.  ``n_tokens = 0`` is the empty record.
* STORED: used for records the model cannot beat (binary data, the empty
  record): the encoder emits whichever frame is shorter (STORED on ties), so a
  frame is never more than 4 bytes longer than its record.
* Decoders reject: an unknown version or method, a ctx_id mismatch, a
  truncated varint, a stream table that does not fit the frame, a range-coder
  stream that is corrupt or has bytes left over after its last symbol, and a
  check-byte mismatch.  Damage is therefore detected except with probability
  about 2^-8 (the check byte), never by reading out of bounds.

Header overhead: 5 bytes for a model-coded record of under 128 tokens (tag,
ctx_id, check, one varint byte), 4 bytes for a stored one.

Record log (``.tlmzr``) format (version 1)
------------------------------------------

A file of records for the CLI (``tinylmz records compress / decompress /
get``).  The input bytes are split at ``\\n``: each line *without* its newline
is one record (so the newline costs nothing), and a flag says whether the
input ended with a newline, which makes the round trip exact for files with or
without a final newline (an empty input has no records; ``b"\\n"`` is one empty
record)::

    log     = header frame_entry* index trailer
    header  = "TLMR" version:u8 hlen:u16 hbody[hlen] hcrc:u32      hcrc = crc32(magic .. hbody)
    hbody   = model_sha256[32] name_len:u8 name engine_len:u8 engine
              varint(params_len) params_json context_sha256[32] varint(context_size)
              varint(segment_tokens) ctx_id:u16 varint(index_step)
    frame_entry = varint(frame_len) frame
    index   = offset:u64 of frame_entry i*index_step, i = 0 .. ceil(n/index_step)-1
              (offsets from the first byte of the header)
    trailer = n_records:u64 index_offset:u64 flags:u8 data_crc:u32 tcrc:u32 "TLMR"
              flags bit 0: the input did NOT end with a newline
              data_crc = crc32 of the whole original input
              tcrc = crc32(index .. data_crc)

``read_record`` reads the trailer and index, seeks to the indexed entry at or
before record ``n`` and skips at most ``index_step - 1`` length prefixes, so it
decodes one frame only.  ``read_log`` decodes frames side by side in batches.

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
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from . import freqs
from .codec import DEFAULT_ENGINE
from .container import read_varint, varint
from .errors import EngineMismatch, FormatError, ModelError, TinylmzError
from .rangecoder import Decoder

VERSION = 1
MODEL, STORED = 0, 1
METHODS = {MODEL: "model", STORED: "stored"}
DEFAULT_SEGMENT_TOKENS = 1024
HEADER_BYTES = 4  # tag + ctx_id + check; a MODEL frame adds its varint token count
# Text is always tried with the model; bytes that are not UTF-8 and tokenize
# to more than this many tokens per byte are binary and stored without a model call.
MAX_TOKENS_PER_BYTE = 0.6
_ID_SALT = b"tinylmz-records\0"


def _crc8(record: bytes) -> int:
    return zlib.crc32(record) & 0xFF


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def context_id(context_sha256: str, model_sha256: str, engine: str, params: dict, segment_tokens: int) -> int:
    """The 16-bit id a frame carries (see the module docstring)."""
    ident = json.dumps(
        {"context": context_sha256, "engine": engine, "model": model_sha256, "params": params or {},
         "segment": int(segment_tokens)},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    return int.from_bytes(hashlib.sha256(_ID_SALT + ident).digest()[:2], "little")


@dataclass
class _Parsed:
    method: int
    check: int
    raw: bytes = b""  # STORED
    n_tokens: int = 0  # MODEL
    streams: list = None  # MODEL: [(token count, bytes)]


class RecordCodec:
    """Compress and decompress short records against a shared context.

    ``model``: None (the default model), a registry name, a .gguf path or a
    ``registry.ResolvedModel``.  ``engine``: "portable" (default) or "llama".
    ``segment_tokens``: records longer than this many tokens are coded as
    several streams inside one frame (not rejected).  ``params``: engine
    parameters recorded in a log header (to rebuild a llama engine).
    """

    def __init__(self, context: bytes, *, model=None, engine: str | None = None,
                 segment_tokens: int = DEFAULT_SEGMENT_TOKENS, params: dict | None = None) -> None:
        from . import api, registry

        if segment_tokens < 1:
            raise TinylmzError("segment length must be at least 1 token")
        self.context = bytes(context or b"")
        if isinstance(model, registry.ResolvedModel):
            self.model = model
        else:
            self.model = registry.resolve(None if model is None else str(model))
        self.engine_name = engine or DEFAULT_ENGINE
        self.segment_tokens = int(segment_tokens)
        # The llama engine sizes its context window from the session's segment length:
        # leave room for the context (tokens <= bytes) in front of a record's stream.
        seg = self.segment_tokens + (len(self.context) if self.engine_name == "llama" else 0)
        self.session = api.get_session(self.model, self.engine_name, seg, self.context or None, params)
        self.engine = self.session.engine
        self.vocab = self.session.vocab
        self.params = self.engine.params()
        self.context_sha256 = hashlib.sha256(self.context).hexdigest()
        self.id = context_id(self.context_sha256, self.model.sha256, self.engine.name, self.params,
                             self.segment_tokens)
        self._id_bytes = struct.pack("<H", self.id)

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

    # -- compression -----------------------------------------------------------------------

    def compress(self, record: bytes, *, ids: np.ndarray | None = None) -> bytes:
        """One frame for ``record`` (the shorter of model-coded and stored)."""
        record = bytes(record)
        head = bytes([VERSION << 4 | STORED]) + self._id_bytes + bytes([_crc8(record)])
        best = head + record
        if not record:
            return best
        if ids is None:
            ids = self.tokenize(record)
        if len(ids) > MAX_TOKENS_PER_BYTE * len(record) and not _is_utf8(record):
            return best
        coded = self._model_frame(record, ids)
        return coded if len(coded) < len(best) else best

    def _model_frame(self, record: bytes, ids: np.ndarray) -> bytes:
        """The MODEL frame of ``record`` (tokens ``ids``), whatever its size."""
        streams = self.session.encode_streams(self.session.segments(ids))[0]
        body = bytearray(varint(len(ids)))
        for s in streams[:-1]:
            body += varint(len(s))
        for s in streams:
            body += s
        return bytes([VERSION << 4 | MODEL]) + self._id_bytes + bytes([_crc8(record)]) + bytes(body)

    # -- decompression ---------------------------------------------------------------------

    def _parse(self, frame: bytes, where: str) -> _Parsed:
        frame = bytes(frame)
        if len(frame) < HEADER_BYTES:
            raise FormatError(f"{where} is truncated ({len(frame)} bytes; a frame has at least {HEADER_BYTES})")
        tag = frame[0]
        version, method = tag >> 4, tag & 0x0F
        if version != VERSION:
            raise FormatError(f"{where} has record format version {version}; this tinylmz reads version {VERSION}")
        if method not in METHODS:
            raise FormatError(f"{where} has unknown method {method}")
        fid = struct.unpack_from("<H", frame, 1)[0]
        if fid != self.id:
            raise TinylmzError(
                f"{where} was made with another context, model or engine (context id {fid:04x}; "
                f"this codec's id is {self.id:04x} for {self.describe()}): pass the context, model "
                "and engine the frame was made with"
            )
        check = frame[3]
        if method == STORED:
            return _Parsed(STORED, check, raw=frame[HEADER_BYTES:])
        n, pos = read_varint(frame, HEADER_BYTES)
        seg = self.segment_tokens
        k = -(-n // seg)
        if k > len(frame):  # every stream but an empty one needs >= 0 bytes; a table needs k-1 varints
            raise FormatError(f"{where} is damaged (token count {n} does not fit the frame)")
        lens = []
        for _ in range(k - 1):
            b, pos = read_varint(frame, pos)
            lens.append(b)
        if pos + sum(lens) > len(frame):
            raise FormatError(f"{where} is damaged (stream table does not fit the frame)")
        if k == 0 and pos != len(frame):
            raise FormatError(f"{where} is damaged (bytes after an empty record)")
        streams = []
        for i in range(k):
            b = lens[i] if i < k - 1 else len(frame) - pos
            streams.append((min(seg, n - i * seg), frame[pos : pos + b]))
            pos += b
        return _Parsed(MODEL, check, n_tokens=n, streams=streams)

    def decompress(self, frame: bytes) -> bytes:
        """The record of one frame; raises TinylmzError (FormatError on damage)."""
        return self.decompress_many([frame])[0]

    def decompress_many(self, frames: list[bytes], *, progress=None) -> list[bytes]:
        """Decode frames side by side: streams sorted by token count (longest first) are
        advanced in lockstep in groups of ``engine.max_streams``; results in input order.

        ``progress(n)`` is called with the number of tokens decoded at each step.
        """
        parsed = [self._parse(f, f"record frame {i}" if len(frames) > 1 else "record frame")
                  for i, f in enumerate(frames)]
        jobs = [(cnt, data, fi, si) for fi, p in enumerate(parsed) if p.method == MODEL
                for si, (cnt, data) in enumerate(p.streams)]
        jobs.sort(key=lambda j: -j[0])  # stable: ties keep frame order
        ids: dict[tuple[int, int], np.ndarray] = {}
        errors: dict[int, str] = {}
        width = self.engine.max_streams
        for g in range(0, len(jobs), width):
            group = jobs[g : g + width]
            outs, errs = self._decode_group([d for _, d, _, _ in group], [c for c, _, _, _ in group], progress)
            for (_, _, fi, si), out, err in zip(group, outs, errs):
                ids[fi, si] = out
                if err and fi not in errors:
                    errors[fi] = err
        records = []
        for fi, p in enumerate(parsed):
            where = f"record frame {fi}" if len(frames) > 1 else "record frame"
            if fi in errors:
                raise FormatError(f"{where} is damaged ({errors[fi]})")
            if p.method == STORED:
                rec = p.raw
            else:
                parts = [ids[fi, si] for si in range(len(p.streams))]
                try:
                    rec = self.vocab.decode(np.concatenate(parts) if parts else [])
                except ValueError as e:
                    raise FormatError(f"{where} is damaged ({e})") from None
            if _crc8(rec) != p.check:
                raise FormatError(f"{where} decodes to the wrong bytes (check byte mismatch): it is damaged")
            records.append(rec)
        return records

    def _decode_group(self, datas, counts, progress) -> tuple[list[np.ndarray], list[str | None]]:
        """Lockstep decoding as ``Session._decode_group`` (same calls, same order), but a damaged
        stream is marked and kept in step (fed the start token) instead of failing the group,
        and every stream must end exactly at its last byte."""
        s = self.session
        decs = [Decoder(d) for d in datas]
        out = [np.zeros(c, dtype=np.int64) for c in counts]
        errs: list[str | None] = [None] * len(datas)
        if not counts or counts[0] == 0:
            return out, errs
        stepper = s.engine.stepper(s.prefix, len(datas))
        for step in range(counts[0]):
            active = sum(c > step for c in counts)
            cum = freqs.cumulative(stepper.logits()[:active], s.width)
            feed = []
            for i in range(active):
                t = s.vocab.start_id
                if errs[i] is None:
                    try:
                        t = decs[i].decode(cum[i])
                    except ValueError as e:
                        errs[i] = str(e)
                        t = s.vocab.start_id
                out[i][step] = t
                feed.append(t)
            if progress:
                progress(active)
            nxt = sum(c > step + 1 for c in counts)
            if nxt:
                stepper.feed(s._input[feed[:nxt]].tolist())
        for i, d in enumerate(decs):
            if errs[i] is None and counts[i] and d._pos < len(datas[i]):
                errs[i] = f"{len(datas[i]) - d._pos} bytes left over after the last token"
        return out, errs


# ---- record logs ---------------------------------------------------------------------------

LOG_MAGIC = b"TLMR"
LOG_VERSION = 1
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
    if head[4] != LOG_VERSION:
        raise FormatError(f"record log version {head[4]} is not supported (this tinylmz reads {LOG_VERSION})")
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
                   {"sha256": csha, "size": csize}, seg, cid, step, header_size=7 + hlen + 4)


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
        raise TinylmzError(f"record log was made with a context of {info.context['size']} bytes "
                           f"(sha256 {info.context['sha256'][:16]}…); this one has {len(codec.context)} bytes "
                           f"(sha256 {codec.context_sha256[:16]}…): pass the same --context")
    if info.engine["name"] != codec.engine.name:
        raise EngineMismatch(f"record log was made with the {info.engine['name']} engine, not {codec.engine.name}")
    codec.engine.check_params(info.engine["params"] or {}, force=force)
    if info.segment_tokens != codec.segment_tokens:
        raise TinylmzError(f"record log uses segments of {info.segment_tokens} tokens, this codec {codec.segment_tokens}")
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
    methods = {"model": 0, "stored": 0}
    ended = True
    for rec, nl in _lines(lines):
        if n % index_step == 0:
            index.append(pos)
        frame = codec.compress(rec)
        entry = varint(len(frame)) + frame
        out.write(entry)
        pos += len(entry)
        frame_total += len(frame)
        methods[METHODS[frame[0] & 0x0F]] += 1
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
