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


def _model(c, r):
    """The model-coded frame (the tiny random model rarely beats "stored": force it)."""
    return c._model_frame(r, c.tokenize(r))


def test_round_trip_single(codec):
    for r in RECORDS + [b"", BINARY, b"\n\n", b"a\r\nb", b"z" * 100]:
        f = codec.compress(r)
        assert codec.decompress(f) == r
        if r:
            assert codec.decompress(_model(codec, r)) == r


def test_frame_layout(codec):
    assert codec.compress(b"") == b""
    for r in RECORDS + [BINARY, b"z" * 100]:
        check = zlib.crc32(codec.key + r) & 0xFF
        assert codec.check(r) == check
        f = codec.compress(r)
        kind = records.frame_method(f)
        if kind == "stored":
            assert f == bytes([records.STORED, check]) + r
        elif kind == "deflate":
            assert f[:2] == bytes([records.DEFLATE, check]) and zlib.decompress(f[2:], -15) == r
        assert len(f) <= len(r) + 2  # never more than 2 bytes over
        m = _model(codec, r)
        assert m[0] >= records.FIRST_MODEL_BYTE and records.frame_method(m) == "model"
        # no header: the stream alone (method symbol, end flags, tokens, end, check)
        assert codec.decompress(m) == r
    assert records.frame_method(codec.compress(b"z" * 100)) == "deflate"


def test_first_byte_of_model_streams(codec):
    """The method symbol keeps a one-stream frame's first byte off the tags 0x00-0x11."""
    rng = random.Random(4)
    for _ in range(40):
        r = bytes(rng.choice(b"0123456789,.:-TZ") for _ in range(rng.randrange(1, 12)))
        assert _model(codec, r)[0] >= records.FIRST_MODEL_BYTE
    from tinylmz.rangecoder import Encoder

    lowest = Encoder()
    lowest.encode(records.METHOD_C0, records.TOTAL - records.METHOD_C0, records.TOTAL)
    for _ in range(30):  # the lowest symbol of every later table
        lowest.encode(0, 1, records.TOTAL)
    assert lowest.finish()[0] == records.FIRST_MODEL_BYTE


def test_empty_and_binary_are_stored(codec):
    f = codec.compress(BINARY)
    assert records.frame_method(f) == "stored" and len(f) == len(BINARY) + 2
    assert codec.decompress(f) == BINARY
    assert codec.decompress(b"") == b""


def test_end_frequency():
    T, lo = records.TOTAL, records.END_MIN
    assert records.end_frequency(1) == lo and records.end_frequency(T - 1) == T - 1 - ((T - 1) >> 4)
    assert records.end_frequency(1 << 24) == (1 << 24) - (1 << 20)  # 15/16 of the newline's
    assert all(lo <= records.end_frequency(f) <= T - T // 16 for f in (1, 2, 17, lo, 3 << 25, T - 1))


def test_exact_end_property():
    """Every stream ``Encoder.finish`` makes ends exactly; any other ending is refused."""
    from tinylmz.rangecoder import Decoder, Encoder

    rng = random.Random(9)
    for trial in range(300):
        total = rng.choice([2, 256, 1 << 20, records.TOTAL])
        syms = []
        for _ in range(rng.randrange(0, 40)):
            f = rng.choice([1, total // 2, total - 1, rng.randrange(1, total)]) or 1
            syms.append((rng.randrange(0, total - f + 1), f))
        enc = Encoder()
        for c, f in syms:
            enc.encode(c, f, total)
        data = enc.finish()

        def ends_exactly(d: bytes) -> bool:
            dec = Decoder(d)
            for c, f in syms:
                if not c <= dec.target(total) < c + f:
                    return False
                dec.consume(c, f)
            return records.exact_end(dec, d)

        assert ends_exactly(data)
        assert not ends_exactly(data + bytes([rng.randrange(1, 256)]))
        if data:
            wrong = bytearray(data)
            wrong[-1] ^= 1 << rng.randrange(8)
            try:
                assert not ends_exactly(bytes(wrong).rstrip(b"\0")) or bytes(wrong).rstrip(b"\0") == data
            except ValueError:  # the decoder itself saw a corrupt stream
                pass


def test_top_level_api(codec):
    import tinylmz

    assert tinylmz.RecordCodec is RecordCodec and "RecordCodec" in tinylmz.__all__
    assert issubclass(records.ContextMismatch, tinylmz.TinylmzError)
    with pytest.raises(tinylmz.FormatError):
        codec.decompress(b"\x05")


def test_decompress_many_equals_individual(codec):
    rng = random.Random(3)
    recs = RECORDS + [b"", BINARY] + [bytes(rng.choice(b"0123456789,.") for _ in range(rng.randrange(1, 30)))
                                        for _ in range(10)]
    frames = [codec.compress(r) for r in recs] + [_model(codec, r) for r in recs if r]
    want = recs + [r for r in recs if r]
    assert codec.decompress_many(frames) == want == [codec.decompress(f) for f in frames]
    assert codec.decompress_many([]) == []


def test_decompress_many_groups(tiny_model, monkeypatch):
    c = RecordCodec(CONTEXT, model=tiny_model)
    recs = [b"line %d " % i * (i % 4 + 1) for i in range(11)]
    frames = [_model(c, r) for r in recs]
    monkeypatch.setattr(c.engine, "max_streams", 3)  # several lockstep groups, streams ending mid-group
    assert c.decompress_many(frames) == recs
    assert c.decompress_many(frames[::-1]) == recs[::-1]


def test_long_record_is_split_into_streams(tiny_model):
    c = RecordCodec(CONTEXT, model=tiny_model, segment_tokens=4)
    long = b"2024-05-01T10:13:00Z,sensor-1,22.3,OK and then some more text"
    ids = c.tokenize(long)
    assert len(ids) > 8 and len(ids) % 4  # three or more streams, the last one short
    f = _model(c, long)
    assert f[0] == records.MULTI and f[1] == (len(ids) - 1) // 4
    assert c.decompress(f) == long
    exact = c.vocab.decode(ids[:8])  # 8 tokens: one full stream and a last one of 4
    g = _model(c, exact)
    assert g[0] == records.MULTI and g[1] == 1 and c.decompress(g) == exact
    assert c.decompress_many([f, _model(c, b"ab"), c.compress(b"ab"), g, f]) == [long, b"ab", b"ab", exact, long]
    assert c.decompress_many([_model(c, r) for r in RECORDS]) == RECORDS
    # another segment length is another codec identity
    assert c.key != RecordCodec(CONTEXT, model=tiny_model).key


def test_wrong_context_rejected(codec, tiny_model):
    other = RecordCodec(CONTEXT + b"2024-05-01T10:12:00Z,sensor-0,20.0,OK\n", model=tiny_model)
    f = _model(codec, RECORDS[0])
    with pytest.raises(FormatError, match="another context, model or engine"):
        other.decompress(f)
    with pytest.raises(FormatError, match="record frame 1 .*another context"):
        other.decompress_many([other.compress(b"a"), f])
    rng = random.Random(6)
    recs = [bytes(rng.choice(b"0123456789,.:-TZ") for _ in range(rng.randrange(1, 40))) for _ in range(40)]
    frames = [_model(codec, r) for r in recs] + [codec.compress(r) for r in recs]
    wrong = 0
    for f, r in zip(frames, recs + recs):
        try:
            wrong += other.decompress(f) != r
        except FormatError:
            pass
    assert wrong == 0
    passed = sum(1 for f in frames if _decodes(other, f))  # stored frames check their codec too
    assert passed <= 1, passed


def _decodes(c, f) -> bool:
    try:
        c.decompress(f)
        return True
    except FormatError:
        return False


def test_wrong_model_rejected(codec, tmp_path):
    from tinymodel import write_tiny_gguf

    m2 = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    other = RecordCodec(CONTEXT, model=m2)
    assert other.key != codec.key
    with pytest.raises(FormatError, match="another context, model or engine"):
        other.decompress(_model(codec, RECORDS[1]))
    # a log names the exact mismatch
    buf = io.BytesIO()
    write_log([b"a\nb\n"], buf, codec)
    buf.seek(0)
    with pytest.raises(TinylmzError, match="different model"):
        list(read_log(buf, other))
    buf.seek(0)
    with pytest.raises(records.ContextMismatch, match="same --context"):
        list(read_log(buf, RecordCodec(b"other", model=codec.model)))


def test_identity_covers_every_part():
    base = ("c" * 64, "m" * 64, "portable", {"version": 1}, 1024)
    keys = {records.identity(*base)}
    for i, alt in enumerate(("d" * 64, "n" * 64, "llama", {"version": 2}, 512)):
        args = list(base)
        args[i] = alt
        keys.add(records.identity(*args))
    assert len(keys) == 6
    assert records.context_id(*base) == int.from_bytes(records.identity(*base)[:2], "little")


def test_bad_frames(codec):
    m = _model(codec, RECORDS[0])
    s = bytes([records.STORED, codec.check(b"x")]) + b"x"
    assert codec.decompress(m) == RECORDS[0] and codec.decompress(s) == b"x"
    with pytest.raises(FormatError, match="unknown kind 0x03"):
        codec.decompress(b"\x03" + m)
    with pytest.raises(FormatError, match="truncated"):
        codec.decompress(s[:1])
    with pytest.raises(FormatError, match="check mismatch"):
        codec.decompress(s + b"y")
    with pytest.raises(FormatError, match="deflate"):
        codec.decompress(bytes([records.DEFLATE, 0]) + b"\xff\xff")
    for tail in (b"\x01", b"\x01\x02", b"\x01" * 12):  # bytes after the stream's exact end
        with pytest.raises(FormatError, match="does not end where"):
            codec.decompress(m + tail)
    with pytest.raises(FormatError):
        codec.decompress(m[:-1])
    with pytest.raises(FormatError, match="stream table"):
        codec.decompress(bytes([records.MULTI, 1, 0x7F]) + m)
    with pytest.raises(FormatError, match="stream table"):
        codec.decompress(bytes([records.MULTI, 0]) + m)
    with pytest.raises(TypeError, match="str"):
        codec.compress("text")
    with pytest.raises(TypeError, match="int"):
        codec.compress(5)  # bytes(5) would be five zero bytes: refused
    assert codec.decompress(bytearray(m)) == codec.decompress(memoryview(m)) == RECORDS[0]


def test_garbage_stops_early(codec, tiny_model):
    """A stream that never codes the end stops at S tokens or 16 bytes past its end, never later."""
    rng = random.Random(8)
    seen = set()
    for c, size in ((RecordCodec(CONTEXT, model=tiny_model, segment_tokens=6), 20), (codec, 2)):
        for _ in range(15):
            f = bytes([rng.randrange(records.FIRST_MODEL_BYTE, 256)]) + bytes(rng.randrange(256) for _ in range(size))
            try:
                c.decompress(f)
            except FormatError as e:
                seen.add(str(e).split("(")[-1])
    assert any("within 6 tokens" in s for s in seen) and any("past the end" in s for s in seen), seen


def test_mutated_frames_decode_right_or_raise(codec):
    rng = random.Random(11)
    recs = RECORDS[:3]
    frames = [_model(codec, r) for r in recs] + [codec.compress(r) for r in recs]
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
    # an 8-bit check lets ~1/256 of damaged frames through (fewer: the exact end catches most)
    assert wrong <= 2


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
    assert log[:5] == b"TLMR" + bytes([records.LOG_VERSION]) and records.LOG_VERSION == 2
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
    assert all(records.frame_method(f) == "model" for f in frames)
    assert c.decompress_many(frames) == recs
    assert c.decompress(frames[1]) == recs[1]
    d = zstd.ZstdCompressionDict(SENSOR_CONTEXT, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    z = zstd.ZstdCompressor(level=19, dict_data=d, write_checksum=False, write_dict_id=False)
    zsize = sum(len(z.compress(r)) for r in recs)
    assert sum(map(len, frames)) <= zsize / 3, (list(map(len, frames)), zsize)


# ---- golden files: frames and logs of earlier record format versions still decode ----------

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


def _golden_check(tag: str, model, min_saved: int) -> None:
    import json

    man = json.loads((GOLDEN / f"records-v1.{tag}.json").read_text())
    ctx = man["context"].encode()
    codecs = {}
    for f in man["frames"]:
        seg = f["segment_tokens"]
        if seg not in codecs:
            codecs[seg] = RecordCodec(ctx, model=model, segment_tokens=seg)
        assert codecs[seg].decompress(bytes.fromhex(f["frame"])) == bytes.fromhex(f["record"])
    saved = []  # version 2 against version 1, model-coded frames of the same records
    for f in man["frames"]:
        old = bytes.fromhex(f["frame"])
        if old[0] == 0x10 and f["segment_tokens"] == 1024:
            saved.append(len(old) - len(codecs[1024]._model_frame(bytes.fromhex(f["record"]),
                                                                   codecs[1024].tokenize(bytes.fromhex(f["record"])))))
    assert saved and min(saved) >= min_saved, saved
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
    _golden_check("tiny", tiny_model, 2)


@pytest.mark.integration
def test_golden_v1_default_model(default_model_path):
    _golden_check("smollm2", default_model_path, 3)
