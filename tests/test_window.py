"""Sliding windows (format version 2): the same numbers however the engine is asked."""

import numpy as np
import pytest

import tinylmz
from tinylmz import container, registry
from tinylmz.engine_portable import WINDOW_STEP, PortableEngine, window_start

IDS = np.random.default_rng(0).integers(1, 400, 1400)


def _engine(path, native=None):
    m = registry.resolve(str(path))
    return PortableEngine(m.path, m.sha256, native=native)


def _scored(e, prefix_ids, ids, window):
    return np.concatenate(list(e.score(e.prefill(prefix_ids), ids, window=window)))


def _stepped(e, prefix_ids, ids, window, n=3):
    st = e.stepper(e.prefill(prefix_ids), n, window=window)
    rows = [st.logits()[1]]
    for t in ids[:-1]:
        st.feed([t] * n)
        rows.append(st.logits()[1])
    return np.array(rows)


def test_window_start():
    assert [window_start(q, 512) for q in (0, 255, 256, 511, 512, 767, 768)] == [0, 0, 0, 0, 256, 256, 512]
    for q in range(0, 3000, 37):  # every token sees between window - step + 1 and window own tokens
        seen = q - window_start(q, 1024) + 1
        assert min(q + 1, 1024 - WINDOW_STEP + 1) <= seen <= 1024


@pytest.mark.parametrize("window", [512, 768])
@pytest.mark.parametrize("prefix", [[0], list(range(1, 80))])  # a lone start token, and a shared context
def test_batched_equals_incremental(tiny_model, window, prefix):
    e = _engine(tiny_model)
    assert np.array_equal(_scored(e, prefix, IDS, window), _stepped(e, prefix, IDS, window))


@pytest.mark.parametrize("window", [None, 512])
def test_native_equals_numpy(tiny_model, window):
    a = _scored(_engine(tiny_model, native=True), [0], IDS[:900], window)
    b = _scored(_engine(tiny_model, native=False), [0], IDS[:900], window)
    assert np.array_equal(a, b)


def test_fused_attention_with_a_window(wide_model):
    """Heads of 64 take the kernel's one-pass attention for one stream; the stepper does not."""
    e = _engine(wide_model)
    assert np.array_equal(_scored(e, [0], IDS[:1100], 512), _stepped(e, [0], IDS[:1100], 512, n=2))


def test_window_changes_only_what_it_hides(tiny_model):
    e = _engine(tiny_model)
    full, win = _scored(e, [0], IDS, None), _scored(e, [0], IDS, 512)
    # row i predicts own token i from own tokens 0..i-1: the last of those is own index i - 1
    first = next(i for i in range(1, len(IDS)) if window_start(i - 1, 512) > 0)
    assert np.array_equal(full[:first], win[:first])
    assert not np.array_equal(full[first:], win[first:])


def test_memory_is_bounded_by_the_window(tiny_model):
    e = _engine(tiny_model)
    st = e.stepper(e.prefill([0]), 2, window=512)
    for t in IDS[:1400]:
        st.feed([t, t])
    assert st.cache.k.shape[3] <= 512 + 2 * WINDOW_STEP and st.cache.drop > 0


@pytest.fixture
def no_lzma(monkeypatch):
    """Make lzma lose, so that the (random-weight) tiny model's blocks are model-coded."""
    from tinylmz import codec

    monkeypatch.setattr(codec.lzma, "compress", lambda raw, **kw: raw * 2)


def test_round_trip_with_windows_and_many_blocks(tiny_model, no_lzma):
    from tinymodel import TRAINING_TEXT

    data = TRAINING_TEXT.encode() * 6  # blocks of ~1,600 tokens: streams longer than the window
    blob = tinylmz.compress(data, model=str(tiny_model), block_size=4096, segment_tokens=1200, window=512)
    r = container.Reader(__import__("io").BytesIO(blob))
    assert r.version == 2 and r.header.window == 512
    assert all(b.method == container.MODEL for b in r.blocks())
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data


@pytest.mark.parametrize("context", [None, b"A context the adaptive models are primed with. " * 4])
def test_round_trip_with_adaptive_models(tiny_model, no_lzma, context):
    from tinymodel import TRAINING_TEXT

    data = TRAINING_TEXT.encode() * 2  # the second copy repeats the first: the match model's case
    on = tinylmz.compress(data, model=str(tiny_model), segment_tokens=1500, window=512, context=context)
    off = tinylmz.compress(data, model=str(tiny_model), segment_tokens=1500, window=512, context=context, adaptive=0)
    assert container.Reader(__import__("io").BytesIO(on)).header.adaptive == 1
    assert container.Reader(__import__("io").BytesIO(off)).header.adaptive == 0
    assert len(on) < 0.9 * len(off)
    for blob in (on, off):
        assert tinylmz.decompress(blob, model=str(tiny_model), context=context) == data


def test_unknown_adaptive_set_is_refused(tiny_model):
    blob = bytearray(tinylmz.compress(b"hello there", model=str(tiny_model)))
    import zlib
    import struct

    h = container.Header.read_v2(iter_take(bytes(blob[5:])))
    h.adaptive = 5
    body = container.MAGIC + b"\x02" + h.to_bytes()
    rest = bytes(blob[5 + len(h.to_bytes()) + 2 :])
    forged = body + struct.pack("<H", zlib.crc32(body) & 0xFFFF) + rest
    with pytest.raises(tinylmz.TinylmzError, match="adaptive"):
        tinylmz.decompress(forged, model=str(tiny_model))


def iter_take(buf: bytes):
    pos = [0]

    def take(n):
        b = buf[pos[0] : pos[0] + n]
        pos[0] += n
        return b

    return take


def test_the_first_block_sets_equal_streams(tiny_model, no_lzma):
    """Without ``segment_tokens`` a first block longer than one stream is cut into equal streams
    (codec.stream_length, recorded in the header) and later blocks use that length; a length the
    caller gives is kept, and a file whose first block fits one stream keeps the nominal length."""
    import io

    from tinymodel import TRAINING_TEXT
    from tinylmz import api, codec

    data = TRAINING_TEXT.encode() * 28
    bs = 24576
    first = data[: codec.split_point(data, bs)]
    session = api.get_session(registry.resolve(str(tiny_model)), "portable", codec.V2_SEGMENT_TOKENS, None)
    tokens = len(session.tokenizer.encode(first))
    assert codec.V2_SEGMENT_TOKENS < tokens <= 2 * codec.V2_SEGMENT_TOKENS  # the case: two streams
    want = codec.stream_length(tokens)
    assert want % WINDOW_STEP == 0 and tokens / 2 < want < codec.V2_SEGMENT_TOKENS
    blob = tinylmz.compress(data, model=str(tiny_model), block_size=bs)
    reader, get = api.open_reader(io.BytesIO(blob), model=str(tiny_model))
    assert reader.header.segment_tokens == want
    blocks = list(reader.blocks())
    assert len(blocks) == 3 and all(b.method == container.MODEL for b in blocks)
    lengths = [t for t, _ in get().stream_plan(blocks[0].payload, blocks[0].raw_len)]
    assert lengths == [want, tokens - want]
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data
    given = tinylmz.compress(data, model=str(tiny_model), block_size=bs, segment_tokens=codec.V2_SEGMENT_TOKENS)
    assert container.Reader(io.BytesIO(given)).header.segment_tokens == codec.V2_SEGMENT_TOKENS
    small = tinylmz.compress(data[:5000], model=str(tiny_model))
    assert container.Reader(io.BytesIO(small)).header.segment_tokens == codec.V2_SEGMENT_TOKENS
    assert container.Reader(io.BytesIO(tinylmz.compress(b"", model=str(tiny_model)))).header.segment_tokens \
        == codec.V2_SEGMENT_TOKENS
