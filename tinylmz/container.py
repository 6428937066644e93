"""The .tlmz container: header, independent blocks, trailer.  ``FORMAT.md`` is the spec.

Version 2 (written by default; ~38 bytes of framing for a one-block file):

    file    = MAGIC 0x02 header hcrc:u16  block*  END [total_crc:u32 if 2+ blocks]
    block   = method:u8 varint(raw_len) varint(payload_len) raw_crc:u32 payload

Version 1 (still read, and written on request):

    file    = MAGIC 0x01 hlen:u16 header hcrc:u32  block*  END trailer
    block   = method:u8 raw_len:u32 payload_len:u32 raw_crc:u32 payload_crc:u32 bcrc:u32 payload
    trailer = total_len:u64 total_crc:u32 tcrc:u32

All integers little-endian; every crc is zlib.crc32 (``hcrc`` of version 2 its low 16
bits).  Version 2 keeps one CRC per block, of the original bytes: a damaged size or
payload shows as that block decoding to the wrong bytes.  Sizes are checked against
the limits in the header before anything is allocated, so a forged length cannot make
the reader allocate more than one block.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from .errors import FormatError

MAGIC = b"TLMZ"
VERSION = 2  # written by default
SUPPORTED = (1, 2)
MAX_HEADER = 0xFFFF
MAX_BLOCK = 1 << 24  # largest block_size a writer may choose

END, MODEL, LZMA, STORED = 0, 1, 2, 3
ENGINES = ("portable", "llama")  # version 2: the engine byte indexes this
MODEL_ID_BYTES = 8  # version 2 names the model by the first 8 bytes of its sha256
METHODS = {MODEL: "model", LZMA: "lzma", STORED: "stored"}
_BLOCK = struct.Struct("<BIIII")
_TRAILER = struct.Struct("<QI")


@dataclass
class Header:
    model: dict  # {"sha256": 64 hex (version 1) or None, "id": 16 hex, "name": str or None}
    engine: dict  # {"name", "params"}
    block_size: int
    segment_tokens: int
    start_id: int
    context: dict | None = None  # {"sha256", "size"} of the shared context (version 2: 16 hex of it)
    version: int = VERSION
    window: int | None = None  # version 2: own tokens a stream's token sees (None: all)
    adaptive: int = 0  # version 2: the in-file adaptive models (0: none; FORMAT.md §7)

    def __post_init__(self) -> None:
        sha = self.model.get("sha256")
        if sha and not self.model.get("id"):
            self.model = {**self.model, "id": sha[: 2 * MODEL_ID_BYTES]}

    def to_bytes(self) -> bytes:
        return self._v1() if self.version == 1 else self._v2()

    def _v1(self) -> bytes:
        name = self.model["name"].encode()[:255]
        eng = self.engine["name"].encode()
        params = json.dumps(self.engine.get("params") or {}, sort_keys=True, separators=(",", ":")).encode()
        out = bytearray(bytes.fromhex(self.model["sha256"]))
        out += bytes([len(name)]) + name + bytes([len(eng)]) + eng
        out += varint(len(params)) + params
        out += varint(self.block_size) + varint(self.segment_tokens) + varint(self.start_id)
        if self.context:
            out += b"\x01" + bytes.fromhex(self.context["sha256"]) + varint(self.context["size"])
        else:
            out += b"\x00"
        return bytes(out)

    def _v2(self) -> bytes:
        out = bytearray(bytes.fromhex(self.model["id"]))
        name, params = self.engine["name"], self.engine.get("params") or {}
        out.append(ENGINES.index(name))
        if name == "portable":
            out += varint(int(params.get("version", 1)))
        else:  # llama: the runtime fingerprint, as compact JSON
            raw = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
            out += varint(len(raw)) + raw
        out += varint(self.block_size) + varint(self.segment_tokens) + varint(self.start_id)
        out += varint(self.window or 0)
        flags = (1 if self.context else 0) | (self.adaptive << 1)
        out += varint(flags)
        if self.context:
            out += bytes.fromhex(self.context["sha256"])[:MODEL_ID_BYTES] + varint(self.context["size"])
        return bytes(out)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Header":
        """A version 1 header body."""
        try:
            sha = raw[:32].hex()
            pos = 32
            name = raw[pos + 1 : pos + 1 + raw[pos]].decode()
            pos += 1 + raw[pos]
            eng = raw[pos + 1 : pos + 1 + raw[pos]].decode()
            pos += 1 + raw[pos]
            n, pos = read_varint(raw, pos)
            params = json.loads(raw[pos : pos + n])
            pos += n
            block_size, pos = read_varint(raw, pos)
            segment_tokens, pos = read_varint(raw, pos)
            start_id, pos = read_varint(raw, pos)
            context = None
            if raw[pos] == 1:
                csize, end = read_varint(raw, pos + 33)
                context = {"sha256": raw[pos + 1 : pos + 33].hex(), "size": csize}
                pos = end
            else:
                pos += 1
            if pos != len(raw) or len(sha) != 64 or not isinstance(params, dict):
                raise ValueError("length mismatch")
        except (ValueError, IndexError, UnicodeDecodeError, FormatError) as e:
            raise FormatError(f"header is malformed ({e})") from None
        _check_sizes(block_size, segment_tokens)
        return cls({"name": name, "sha256": sha}, {"name": eng, "params": params}, block_size, segment_tokens,
                   start_id, context, version=1)

    @classmethod
    def read_v2(cls, take) -> "Header":
        """A version 2 header, read with ``take(n)`` (n bytes of the file, or FormatError)."""
        def var() -> int:
            n = shift = 0
            while True:
                b = take(1)[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    return n
                if shift > 63:
                    raise FormatError("header is malformed (varint too long)")

        model_id = take(MODEL_ID_BYTES).hex()
        e = take(1)[0]
        if e >= len(ENGINES):
            raise FormatError(f"header is malformed (unknown engine {e})")
        name = ENGINES[e]
        if name == "portable":
            params = {"version": var()}
        else:
            n = var()
            if n > MAX_HEADER:
                raise FormatError("header is malformed (engine parameters too long)")
            try:
                params = json.loads(take(n))
            except ValueError:
                raise FormatError("header is malformed (engine parameters)") from None
            if not isinstance(params, dict):
                raise FormatError("header is malformed (engine parameters)")
        block_size, segment_tokens, start_id, window, flags = var(), var(), var(), var(), var()
        context = None
        if flags & 1:
            cid = take(MODEL_ID_BYTES).hex()
            context = {"sha256": cid, "size": var()}
        _check_sizes(block_size, segment_tokens)
        return cls({"sha256": None, "id": model_id, "name": None}, {"name": name, "params": params}, block_size,
                   segment_tokens, start_id, context, version=2, window=window or None, adaptive=flags >> 1)


def _check_sizes(block_size: int, segment_tokens: int) -> None:
    if not 0 < block_size <= MAX_BLOCK or segment_tokens < 1:
        raise FormatError("header is malformed (impossible block or segment size)")


@dataclass
class Block:
    method: int
    raw_len: int
    raw_crc: int
    payload: bytes
    offset: int = 0  # where the block starts in the file (for messages)
    index: int = 0


def write_header(out, header: Header) -> int:
    body = header.to_bytes()
    if header.version == 1:
        head = MAGIC + bytes([1]) + struct.pack("<H", len(body)) + body
        out.write(head + struct.pack("<I", zlib.crc32(head)))
        return len(head) + 4
    head = MAGIC + bytes([header.version]) + body
    out.write(head + struct.pack("<H", zlib.crc32(head) & 0xFFFF))
    return len(head) + 2


def write_block(out, method: int, raw: bytes, payload: bytes, version: int = 1) -> int:
    if version == 1:
        h = _BLOCK.pack(method, len(raw), len(payload), zlib.crc32(raw), zlib.crc32(payload))
        out.write(h + struct.pack("<I", zlib.crc32(h)) + payload)
        return len(h) + 4 + len(payload)
    h = bytes([method]) + varint(len(raw)) + varint(len(payload)) + struct.pack("<I", zlib.crc32(raw))
    out.write(h + payload)
    return len(h) + len(payload)


def write_trailer(out, total_len: int, total_crc: int, version: int = 1, blocks: int = 0) -> int:
    if version == 1:
        t = bytes([END]) + _TRAILER.pack(total_len, total_crc)
        out.write(t + struct.pack("<I", zlib.crc32(t)))
        return len(t) + 4
    # one block: its own CRC covers the whole input
    t = bytes([END]) + (struct.pack("<I", total_crc) if blocks > 1 else b"")
    out.write(t)
    return len(t)


def _read(f, n: int, what: str, pos: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise FormatError(f"file is truncated in {what} (at byte {pos + len(b)})")
    return b


class Reader:
    """Reads and checks a .tlmz stream: ``header``, then ``blocks()``, then ``trailer``."""

    def __init__(self, f) -> None:
        self.f = f
        self.pos = 0
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            if not magic:
                raise FormatError("file is empty, not a .tlmz file")
            raise FormatError("not a .tlmz file (bad magic)")
        version = _read(f, 1, "the header", 4)[0]
        if version not in SUPPORTED:
            if version > VERSION:
                raise FormatError(f"file is format version {version}; this tinylmz reads up to {VERSION}: upgrade tinylmz")
            raise FormatError(f"unknown format version {version}")
        self.version = version
        self.trailer: tuple[int, int] | None = None
        if version == 1:
            (hlen,) = struct.unpack("<H", _read(f, 2, "the header", 5))
            body = _read(f, hlen, "the header", 7)
            (hcrc,) = struct.unpack("<I", _read(f, 4, "the header", 7 + hlen))
            if zlib.crc32(MAGIC + bytes([version]) + struct.pack("<H", hlen) + body) != hcrc:
                raise FormatError("header is damaged (checksum mismatch)")
            self.header = Header.from_bytes(body)
            self.pos = 11 + hlen
            return
        seen = bytearray(MAGIC + bytes([version]))

        def take(n: int) -> bytes:
            b = _read(f, n, "the header", len(seen))
            seen.extend(b)
            return b

        try:
            header = Header.read_v2(take)
        except FormatError as e:  # a damaged header fails its parse or its CRC: say which first
            if "truncated" in str(e):
                raise
            raise FormatError(f"header is damaged ({e})") from None
        (hcrc,) = struct.unpack("<H", _read(f, 2, "the header", len(seen)))
        if zlib.crc32(bytes(seen)) & 0xFFFF != hcrc:
            raise FormatError("header is damaged (checksum mismatch)")
        self.header = header
        self.pos = len(seen) + 2

    def blocks(self):
        """Yield each Block with its payload checked (version 1) or sized (2); sets ``trailer`` at the end."""
        yield from (self._blocks_v1() if self.version == 1 else self._blocks_v2())

    def _blocks_v1(self):
        index = 0
        limit = self.header.block_size
        while True:
            start = self.pos
            m = _read(self.f, 1, f"block {index}", start)
            if m[0] == END:
                t = _read(self.f, _TRAILER.size + 4, "the trailer", start + 1)
                total_len, total_crc = _TRAILER.unpack(t[: _TRAILER.size])
                if zlib.crc32(m + t[: _TRAILER.size]) != struct.unpack("<I", t[_TRAILER.size :])[0]:
                    raise FormatError("trailer is damaged (checksum mismatch)")
                self.pos = start + 1 + len(t)
                self._expect_end()
                self.trailer = (total_len, total_crc)
                return
            rest = _read(self.f, _BLOCK.size + 3, f"block {index} header", start + 1)
            h = m + rest[: _BLOCK.size - 1]
            method, raw_len, plen, raw_crc, pcrc = _BLOCK.unpack(h)
            if zlib.crc32(h) != struct.unpack("<I", rest[_BLOCK.size - 1 :])[0]:
                raise FormatError(f"block {index} header is damaged (checksum mismatch at byte {start})")
            if method not in METHODS or raw_len > limit or plen > raw_len + 1024:
                raise FormatError(f"block {index} header is damaged (at byte {start})")
            payload = _read(self.f, plen, f"block {index}", start + 1 + len(rest))
            if zlib.crc32(payload) != pcrc:
                raise FormatError(f"block {index} is damaged (payload checksum mismatch, block at byte {start})")
            self.pos = start + 1 + len(rest) + plen
            yield Block(method, raw_len, raw_crc, payload, start, index)
            index += 1

    def _blocks_v2(self):
        index, total, first_crc = 0, 0, 0
        limit = self.header.block_size
        while True:
            start = self.pos
            m = _read(self.f, 1, f"block {index}", start)[0]
            if m == END:
                self.pos = start + 1
                if index > 1:
                    (want,) = struct.unpack("<I", _read(self.f, 4, "the trailer", start + 1))
                    self.pos += 4
                    self._expect_end()
                    self.trailer = (total, want)
                else:
                    self._expect_end()
                    self.trailer = (total, first_crc)  # one block: its CRC is the whole input's
                return
            if m not in METHODS:
                raise FormatError(f"block {index} header is damaged (at byte {start})")
            self.pos = start + 1
            raw_len = self._varint(f"block {index} header", limit)
            plen = self._varint(f"block {index} header", raw_len + 1024)
            (raw_crc,) = struct.unpack("<I", _read(self.f, 4, f"block {index} header", self.pos))
            self.pos += 4
            payload = _read(self.f, plen, f"block {index}", self.pos)
            self.pos += plen
            total += raw_len
            if index == 0:
                first_crc = raw_crc
            yield Block(m, raw_len, raw_crc, payload, start, index)
            index += 1

    def _varint(self, what: str, limit: int) -> int:
        n = shift = 0
        while True:
            b = _read(self.f, 1, what, self.pos)[0]
            self.pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 63:
                raise FormatError(f"{what} is damaged (at byte {self.pos})")
        if n > limit:
            raise FormatError(f"{what} is damaged (a size past the header's limits, at byte {self.pos})")
        return n

    def _expect_end(self) -> None:
        if self.f.read(1):
            raise FormatError(f"unexpected data after the end of the stream (at byte {self.pos})")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise FormatError("varint is truncated or too long")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos
