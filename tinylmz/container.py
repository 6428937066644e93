"""The .tlmz container: header, independent blocks, trailer.  ``FORMAT.md`` is the spec.

    file    = MAGIC version:u8 hlen:u16 header hcrc:u32  block*  END trailer
    block   = method:u8 raw_len:u32 payload_len:u32 raw_crc:u32 payload_crc:u32 bcrc:u32 payload
    trailer = total_len:u64 total_crc:u32 tcrc:u32

All integers little-endian; every crc is zlib.crc32.  ``hcrc`` covers the
magic through the header (layout in ``Header.to_bytes``), ``bcrc`` the 17 bytes of the block header before it,
``tcrc`` the END byte and the 12 bytes of the trailer.  Sizes are checked
against the limits in the header before anything is allocated, so a forged
length cannot make the reader allocate more than one block.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from .errors import FormatError

MAGIC = b"TLMZ"
VERSION = 1
SUPPORTED = (1,)
MAX_HEADER = 0xFFFF
MAX_BLOCK = 1 << 24  # largest block_size a writer may choose

END, MODEL, LZMA, STORED = 0, 1, 2, 3
METHODS = {MODEL: "model", LZMA: "lzma", STORED: "stored"}
_BLOCK = struct.Struct("<BIIII")
_TRAILER = struct.Struct("<QI")


@dataclass
class Header:
    model: dict  # {"name", "sha256"}
    engine: dict  # {"name", "params"}
    block_size: int
    segment_tokens: int
    start_id: int
    context: dict | None = None  # {"sha256", "size"} of the shared context, if any

    def to_bytes(self) -> bytes:
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

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Header":
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
        if not 0 < block_size <= MAX_BLOCK or segment_tokens < 1:
            raise FormatError("header is malformed (impossible block or segment size)")
        return cls({"name": name, "sha256": sha}, {"name": eng, "params": params}, block_size, segment_tokens,
                   start_id, context)


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
    head = MAGIC + bytes([VERSION]) + struct.pack("<H", len(body)) + body
    out.write(head + struct.pack("<I", zlib.crc32(head)))
    return len(head) + 4


def write_block(out, method: int, raw: bytes, payload: bytes) -> int:
    h = _BLOCK.pack(method, len(raw), len(payload), zlib.crc32(raw), zlib.crc32(payload))
    out.write(h + struct.pack("<I", zlib.crc32(h)) + payload)
    return len(h) + 4 + len(payload)


def write_trailer(out, total_len: int, total_crc: int) -> int:
    t = bytes([END]) + _TRAILER.pack(total_len, total_crc)
    out.write(t + struct.pack("<I", zlib.crc32(t)))
    return len(t) + 4


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
        (hlen,) = struct.unpack("<H", _read(f, 2, "the header", 5))
        body = _read(f, hlen, "the header", 7)
        (hcrc,) = struct.unpack("<I", _read(f, 4, "the header", 7 + hlen))
        if zlib.crc32(MAGIC + bytes([version]) + struct.pack("<H", hlen) + body) != hcrc:
            raise FormatError("header is damaged (checksum mismatch)")
        self.version = version
        self.header = Header.from_bytes(body)
        self.pos = 11 + hlen
        self.trailer: tuple[int, int] | None = None

    def blocks(self):
        """Yield each Block with its payload checked; sets ``trailer`` at the end."""
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
                if self.f.read(1):
                    raise FormatError(f"unexpected data after the end of the stream (at byte {self.pos})")
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
