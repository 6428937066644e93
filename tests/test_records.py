"""Record mode: short records against a shared context, frames, record logs."""

from __future__ import annotations

import io
import random
import zlib

import pytest

from tinylmz import records
from tinylmz.errors import FormatError, TinylmzError
from tinylmz.records import RecordCodec, read_log, read_log_info, read_record, write_log

CONTEXT = b"timestamp,device,temp_c,status\n" + b"".join(
    b"2024-05-01T10:%02d:00Z,sensor-%d,%d.%d,OK\n" % (i, i % 3, 20 + i % 4, i % 10) for i in range(12)
)
RECORDS = [
    b"2024-05-01T10:13:00Z,sensor-1,22.3,OK",
    b"2024-05-01T10:14:00Z,sensor-2,23.4,WARN",
    b'{"ts":"2024-05-01T10:15:00Z","dev":"sensor-0","temp":21.5}',
    b"x",
    "caf\u00e9 \u00fc \u2603".encode(),
]
BINARY = bytes(range(256))[::7] + b"\x00\xff\xfe"


@pytest.fixture(scope="module")
def codec(tiny_model):
    return RecordCodec(CONTEXT, model=tiny_model)


def test_round_trip_single(codec):
    for r in RECORDS + [b"", BINARY, b"\n\n", b"a\r\nb"]:
        f = codec.compress(r)
        assert codec.decompress(f) == r


def test_frame_header(codec):
    for r in RECORDS:
        f = codec.compress(r)
        assert f[0] >> 4 == records.VERSION
        assert int.from_bytes(f[1:3], "little") == codec.id
        assert f[3] == zlib.crc32(r) & 0xFF
        if f[0] & 0x0F == records.STORED:
            assert f[4:] == r
        else:  # header overhead: tag, id, check, one varint byte for < 128 tokens
            n, pos = records.read_varint(f, 4)
            assert n == len(codec.tokenize(r)) and pos == 5
        assert len(f) <= len(r) + records.HEADER_BYTES  # never more than 4 bytes over


def test_empty_and_binary_are_stored(codec):
    assert codec.compress(b"") == bytes([records.VERSION << 4 | records.STORED]) + codec.id.to_bytes(2, "little") + b"\x00"
    f = codec.compress(BINARY)
    assert f[0] & 0x0F == records.STORED and len(f) == len(BINARY) + 4
    assert codec.decompress(f) == BINARY


def test_decompress_many_equals_individual(codec):
    rng = random.Random(3)
    recs = RECORDS + [b"", BINARY] + [bytes(rng.choice(b"0123456789,.") for _ in range(rng.randrange(1, 30)))
                                        for _ in range(10)]
    frames = [codec.compress(r) for r in recs]
    assert codec.decompress_many(frames) == recs == [codec.decompress(f) for f in frames]
    assert codec.decompress_many([]) == []


def test_decompress_many_groups(tiny_model, monkeypatch):
    c = RecordCodec(CONTEXT, model=tiny_model)
    recs = [b"line %d " % i * (i % 4 + 1) for i in range(11)]
    frames = [c._model_frame(r, c.tokenize(r)) for r in recs]
    monkeypatch.setattr(c.engine, "max_streams", 3)  # several lockstep groups
    assert c.decompress_many(frames) == recs


def test_long_record_is_split_into_streams(tiny_model):
    c = RecordCodec(CONTEXT, model=tiny_model, segment_tokens=4)
    long = b"2024-05-01T10:13:00Z,sensor-1,22.3,OK and then some more text"
    ids = c.tokenize(long)
    assert len(ids) > 8 and len(ids) % 4  # three or more streams, the last one short
    f = c._model_frame(long, ids)  # the tiny random model cannot beat "stored": force model coding
    assert f[0] & 0x0F == records.MODEL
    assert c.decompress(f) == long
    g = c._model_frame(b"ab", c.tokenize(b"ab"))
    assert c.decompress_many([f, g, c.compress(b"ab"), f]) == [long, b"ab", b"ab", long]
    assert c.decompress_many([c._model_frame(r, c.tokenize(r)) for r in RECORDS]) == RECORDS
    # another segment length is another codec identity
    assert c.id != RecordCodec(CONTEXT, model=tiny_model).id


def test_wrong_context_rejected(codec, tiny_model):
    f = codec.compress(RECORDS[0])
    other = RecordCodec(CONTEXT + b"2024-05-01T10:12:00Z,sensor-0,20.0,OK\n", model=tiny_model)
    with pytest.raises(TinylmzError, match="another context, model or engine"):
        other.decompress(f)
    with pytest.raises(TinylmzError, match="another context"):
        other.decompress_many([other.compress(b"a"), f])


def test_wrong_model_rejected(codec, tmp_path):
    from tinymodel import write_tiny_gguf

    m2 = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    other = RecordCodec(CONTEXT, model=m2)
    assert other.id != codec.id
    with pytest.raises(TinylmzError, match="context id"):
        other.decompress(codec.compress(RECORDS[1]))
    # a log names the exact mismatch
    buf = io.BytesIO()
    write_log([b"a\nb\n"], buf, codec)
    buf.seek(0)
    with pytest.raises(TinylmzError, match="different model"):
        list(read_log(buf, other))
    buf.seek(0)
    with pytest.raises(TinylmzError, match="same --context"):
        list(read_log(buf, RecordCodec(b"other", model=codec.model)))


def test_context_id_covers_every_part():
    base = ("c" * 64, "m" * 64, "portable", {"version": 1}, 1024)
    ids = {records.context_id(*base)}
    for i, alt in enumerate(("d" * 64, "n" * 64, "llama", {"version": 2}, 512)):
        args = list(base)
        args[i] = alt
        ids.add(records.context_id(*args))
    assert len(ids) == 6


def test_bad_frames(codec):
    f = codec.compress(RECORDS[0])
    with pytest.raises(FormatError, match="truncated"):
        codec.decompress(f[:3])
    with pytest.raises(FormatError, match="version"):
        codec.decompress(bytes([2 << 4]) + f[1:])
    with pytest.raises(FormatError, match="method"):
        codec.decompress(bytes([records.VERSION << 4 | 7]) + f[1:])
    with pytest.raises(FormatError):
        codec.decompress(f + b"\x01\x02")  # a wrong record
    m = codec._model_frame(RECORDS[0], codec.tokenize(RECORDS[0]))
    assert codec.decompress(m) == RECORDS[0]
    try:  # bytes below the coder's precision: harmless, or caught
        assert codec.decompress(m + b"\x01\x02") == RECORDS[0]
    except FormatError:
        pass
    with pytest.raises(FormatError, match="left over|check byte"):
        codec.decompress(m + b"\x01" * 12)
    with pytest.raises(FormatError, match="does not fit"):
        codec.decompress(m[:4] + b"\xff\x7f")


def test_mutated_frames_decode_right_or_raise(codec):
    rng = random.Random(11)
    recs = RECORDS[:3]
    frames = [codec._model_frame(r, codec.tokenize(r)) for r in recs] + [codec.compress(r) for r in recs]
    recs = recs * 2
    wrong = 0
    for trial in range(120):
        i = rng.randrange(len(frames))
        f = bytearray(frames[i])
        kind = trial % 3
        if kind == 0:
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del f[rng.randrange(len(f)) :]
        else:
            f.insert(rng.randrange(len(f) + 1), rng.randrange(256))
        try:
            out = codec.decompress(bytes(f))
        except TinylmzError:
            continue
        if out != recs[i]:
            wrong += 1
    # a 1-byte check lets ~1/256 of damaged frames through; allow a little slack
    assert wrong <= 3


def _log(codec, data: bytes, **kw) -> bytes:
    buf = io.BytesIO()
    stats = write_log(io.BytesIO(data), buf, codec, **kw)
    assert stats["records"] == len(data.split(b"\n")) - (data.endswith(b"\n") or not data)
    assert stats["log_bytes"] == len(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    b"", b"\n", b"a", b"a\n", b"\n\n", b"a\nb", b"a\nb\n", b"a\n\nb\n\n",
])
def test_log_round_trip_edges(codec, data):
    log = _log(codec, data)
    assert b"".join(read_log(io.BytesIO(log), codec)) == data
    lines = data.splitlines(keepends=True)
    assert read_log_info(io.BytesIO(log)).n_records == len(lines)
    for n, line in enumerate(lines):
        assert read_record(io.BytesIO(log), codec, n) == line


def test_log_index_and_batches(codec):
    rng = random.Random(5)
    lines = [b"2024-05-01T10:%02d:00Z,sensor-%d,%d.%d,OK" % (i % 60, rng.randrange(3), 20 + i % 4, i % 10)
             for i in range(23)]
    lines[7] = BINARY.replace(b"\n", b"")
    lines[9] = b""
    data = b"\n".join(lines)  # no final newline
    log = _log(codec, data, index_step=4)
    info = read_log_info(io.BytesIO(log))
    assert info.n_records == 23 and info.index_step == 4 and info.flags & records.NO_FINAL_NEWLINE
    assert b"".join(read_log(io.BytesIO(log), codec, batch=5)) == data
    # chunks that split lines anywhere give the same log
    chunks = [data[i : i + 13] for i in range(0, len(data), 13)]
    buf = io.BytesIO()
    write_log(chunks, buf, codec, index_step=4)
    assert buf.getvalue() == log
    f = io.BytesIO(log)
    for n in (0, 3, 4, 7, 9, 22, 13):
        f.seek(0)  # read_record reads the log that starts at the file position
        assert read_record(f, codec, n) == lines[n] + (b"\n" if n < 22 else b"")
    with pytest.raises(TinylmzError, match="does not exist"):
        read_record(io.BytesIO(log), codec, 23)


def test_log_damage_detected(codec):
    data = b"".join(r.replace(b"\n", b"") + b"\n" for r in RECORDS * 3)
    log = _log(codec, data)
    with pytest.raises(FormatError, match="magic"):
        list(read_log(io.BytesIO(b"XXXX" + log[4:]), codec))
    with pytest.raises(FormatError):
        list(read_log(io.BytesIO(log[:-5]), codec))
    rng = random.Random(2)
    for _ in range(40):
        b = bytearray(log)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            out = b"".join(read_log(io.BytesIO(bytes(b)), codec))
        except TinylmzError:
            continue
        assert out == data  # the whole-input crc catches what a check byte misses


def test_codec_for_log(codec, tiny_model):
    log = _log(codec, b"a,b\nc,d\n")
    c = records.codec_for_log(io.BytesIO(log), CONTEXT, model=tiny_model)
    assert c.id == codec.id
    assert b"".join(read_log(io.BytesIO(log), c)) == b"a,b\nc,d\n"


# ---- the real model ----------------------------------------------------------------------

SENSOR_CONTEXT = b"timestamp,device,temp_c,humidity,battery_v,status\n" + b"".join(
    b"2024-05-01T10:%02d:%02dZ,sensor-%04d,%d.%02d,%d.%d,3.%03d,OK\n"
    % (i // 4, i * 13 % 60, 1000 + i % 4 * 17, 19 + i % 5, i * 7 % 100, 40 + i % 9, i % 10, 900 - i)
    for i in range(24)
)


@pytest.mark.integration
def test_real_model_records(default_model_path):
    import zstandard as zstd

    c = RecordCodec(SENSOR_CONTEXT, model=default_model_path)
    recs = [b"2024-05-01T10:06:05Z,sensor-1017,22.41,45.3,3.876,OK",
            b"2024-05-01T10:06:19Z,sensor-1034,20.07,47.8,3.875,WARN_BATT",
            b"2024-05-01T10:06:30Z,sensor-1000,19.88,41.2,3.874,OK"]
    frames = [c.compress(r) for r in recs]
    assert all(f[0] & 0x0F == records.MODEL for f in frames)
    assert c.decompress_many(frames) == recs
    assert c.decompress(frames[1]) == recs[1]
    d = zstd.ZstdCompressionDict(SENSOR_CONTEXT, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    z = zstd.ZstdCompressor(level=19, dict_data=d, write_checksum=False, write_dict_id=False)
    zsize = sum(len(z.compress(r)) for r in recs)
    assert sum(map(len, frames)) <= zsize / 2, (list(map(len, frames)), zsize)


# ---- golden files: frames and logs of earlier record format versions still decode ----------

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


def _golden_check(tag: str, model) -> None:
    import json

    man = json.loads((GOLDEN / f"records-v1.{tag}.json").read_text())
    ctx = man["context"].encode()
    codecs = {}
    for f in man["frames"]:
        seg = f["segment_tokens"]
        if seg not in codecs:
            codecs[seg] = RecordCodec(ctx, model=model, segment_tokens=seg)
        assert codecs[seg].decompress(bytes.fromhex(f["frame"])) == bytes.fromhex(f["record"])
    c = codecs[1024]
    frames = [bytes.fromhex(f["frame"]) for f in man["frames"] if f["segment_tokens"] == 1024]
    assert c.decompress_many(frames) == [bytes.fromhex(f["record"]) for f in man["frames"] if f["segment_tokens"] == 1024]
    log = (GOLDEN / man["log"]["file"]).read_bytes()
    original = (GOLDEN / man["log"]["original"]).read_bytes()
    assert b"".join(read_log(io.BytesIO(log), c)) == original
    parts = original.split(b"\n")  # records are split at b"\n" only (not at b"\r")
    lines = [x + b"\n" for x in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    assert len(lines) == read_log_info(io.BytesIO(log)).n_records
    for n in sorted({0, min(4, len(lines) - 1), len(lines) - 1}):
        assert read_record(io.BytesIO(log), c, n) == lines[n]


def test_golden_v1_tiny(tiny_model):
    _golden_check("tiny", tiny_model)


@pytest.mark.integration
def test_golden_v1_default_model(default_model_path):
    _golden_check("smollm2", default_model_path)
