"""Several blocks decoded side by side: the same bytes as one at a time, and damage still found per block."""

import io

import pytest

import tinylmz
from tinylmz import api, codec, container
from tinylmz.errors import FormatError

from tinymodel import TRAINING_TEXT

TEXT = TRAINING_TEXT.encode() * 2  # prose, in blocks too short for lzma to beat the tiny model


def _blocks(blob: bytes) -> list[container.Block]:
    return list(container.Reader(io.BytesIO(blob)).blocks())


def test_groups_are_bounded_and_cover_every_block(tiny_model, monkeypatch):
    blob = tinylmz.compress(TEXT, model=str(tiny_model), block_size=512, segment_tokens=32)
    blocks = _blocks(blob)
    assert sum(b.method == container.MODEL for b in blocks) >= 4
    monkeypatch.setattr(codec, "DECODE_BYTES", 32 * 12 * 1000)
    asked = []
    groups = list(api._groups(iter(blocks), 32, position_bytes=lambda: asked.append(1) or 1000))
    assert asked == [1]  # once, at the first model-coded block
    assert [b.index for g in groups for b in g] == [b.index for b in blocks]
    assert 1 < len(groups) < len(blocks)  # side by side, yet bounded
    for g in groups:
        streams = sum(container.read_varint(b.payload, 0)[0] for b in g if b.method == container.MODEL)
        assert len(g) == 1 or streams * 32 * 1000 <= codec.DECODE_BYTES


@pytest.mark.parametrize("positions", [1, 32 * 12, 10**9])
def test_side_by_side_equals_one_by_one(tiny_model, monkeypatch, positions):
    blob = tinylmz.compress(TEXT, model=str(tiny_model), block_size=512, segment_tokens=32)
    monkeypatch.setattr(codec, "DECODE_BYTES", positions * codec.POSITION_BYTES)
    assert tinylmz.decompress(blob, model=str(tiny_model)) == TEXT


def test_decode_payloads_equals_decode_payload(tiny_model):
    blob = tinylmz.compress(TEXT, model=str(tiny_model), block_size=700, segment_tokens=24)
    blocks = [b for b in _blocks(blob) if b.method == container.MODEL]
    reader, make = api.open_reader(io.BytesIO(blob), model=str(tiny_model))
    s = make()
    together = s.decode_payloads([(b.payload, b.raw_len) for b in blocks])
    assert len(blocks) >= 3
    assert together == [s.decode_payload(b.payload, b.raw_len) for b in blocks]
    assert all(len(raw) == b.raw_len for raw, b in zip(together, blocks))


def test_damaged_block_in_a_group_is_named_and_blocks_before_it_arrive(tiny_model):
    blob = bytearray(tinylmz.compress(TEXT, model=str(tiny_model), block_size=512, segment_tokens=32))
    blocks = _blocks(bytes(blob))
    bad = next(b for b in blocks[2:] if b.method == container.MODEL)
    # a byte in the middle of the block's coded streams (its header stays valid)
    payload_at = bytes(blob).index(bad.payload, bad.offset)
    blob[payload_at + len(bad.payload) // 2] ^= 0x5A
    got = []
    with pytest.raises(FormatError, match=f"block {bad.index}"):
        for raw in tinylmz.iter_decompress(io.BytesIO(bytes(blob)), model=str(tiny_model)):
            got.append(raw)
    assert b"".join(got) == TEXT[: sum(b.raw_len for b in blocks[: bad.index])]


def test_llama_engine_files_still_decode_with_many_blocks(tiny_model):
    """llama.cpp is not batch invariant: its blocks must be decoded exactly as they were coded (per block)."""
    pytest.importorskip("llama_cpp")
    blob = tinylmz.compress(TEXT, model=str(tiny_model), engine="llama", block_size=512, segment_tokens=32)
    assert sum(b.method == container.MODEL for b in _blocks(blob)) >= 4
    assert tinylmz.decompress(blob, model=str(tiny_model)) == TEXT
