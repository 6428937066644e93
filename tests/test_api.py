"""The Python API: lzma-shaped round trips for any bytes, file objects, sizes."""

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinylmz
from tinylmz import api, container
from tinylmz.threads import set_threads

SAMPLES = {
    "text": b"The cat sat on the mat. " * 20,
    "empty": b"",
    "broken_utf8": b"abc \xff\xfe \xc3 caf\xc3\xa9 \xe2\x82 end\x80",
    "nul": b"\x00" * 50 + b"x\x00y",
    "special": b"<|endoftext|><|im_start|>user\nhi<|im_end|>",
    "crlf": b"line one\r\nline two\r\n\r\n",
}


@pytest.mark.parametrize("name", SAMPLES)
def test_roundtrip(name, tiny_model):
    data = SAMPLES[name]
    blob = tinylmz.compress(data, model=str(tiny_model), block_size=64, segment_tokens=16)
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_roundtrip_any_bytes(tiny_model, data):
    blob = tinylmz.compress(data, model=str(tiny_model), block_size=100, segment_tokens=8)
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data


def test_random_binary_grows_by_at_most_256_bytes(tiny_model):
    data = os.urandom(100_000)
    blob = tinylmz.compress(data, model=str(tiny_model))
    assert len(blob) <= len(data) + 256
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data


@pytest.fixture
def no_lzma(monkeypatch):
    """Make lzma lose, so that the (random-weight) tiny model's blocks are model-coded."""
    from tinylmz import codec

    monkeypatch.setattr(codec.lzma, "compress", lambda raw, **kw: raw * 2)


def test_model_blocks_are_used_and_split_into_streams(tiny_model, no_lzma):
    data = b"the the the the the the the the " * 40
    blob = tinylmz.compress(data, model=str(tiny_model), segment_tokens=10)
    blocks = list(container.Reader(io.BytesIO(blob)).blocks())
    assert [b.method for b in blocks] == [container.MODEL]
    n_streams, _ = container.read_varint(blocks[0].payload, 0)
    assert n_streams > 5


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_coded_side_by_side_make_the_same_file(tiny_model, no_lzma, monkeypatch, threads):
    """A writer codes the next blocks while the oldest one's streams finish, and writes blocks in
    order: the file is the one coded block by block."""
    words = (b"the ", b"sea ", b"shells ", b"wood ", b"bits ", b"byte ", b"text ", b"fox ")
    data = b"".join(w * (600 // len(w)) for w in words)  # one word a block: blocks out of order would show
    set_threads(threads)

    def run(in_flight):
        monkeypatch.setattr(api, "IN_FLIGHT", in_flight)
        out = io.BytesIO()
        with api.Compressor(out, model=str(tiny_model), block_size=600, segment_tokens=60) as c:
            for i in range(0, len(data), 700):
                c.write(data[i : i + 700])
        return out.getvalue(), c.stats.methods

    try:
        blob, methods = run(3)
        assert methods.get("model", 0) >= 5, methods  # streams of several blocks in the queue
        assert (blob, methods) == run(0)
    finally:
        set_threads(None)
    assert tinylmz.decompress(blob, model=str(tiny_model)) == data


def test_an_error_drops_the_blocks_in_flight(tiny_model, no_lzma):
    out = io.BytesIO()
    with pytest.raises(KeyError):
        with api.Compressor(out, model=str(tiny_model), block_size=100, segment_tokens=8) as c:
            c.write(b"the cat sat on the mat. " * 40)
            raise KeyError("the caller failed")
    c.close()  # after the error: nothing more is written, and no trailer
    with pytest.raises(tinylmz.FormatError):
        tinylmz.decompress(out.getvalue(), model=str(tiny_model))


def test_block_cut_keeps_utf8_characters_whole():
    from tinylmz.codec import split_point

    buf = "aé€😀".encode() * 10
    for limit in range(1, len(buf)):
        cut = split_point(buf, limit)
        assert limit - 3 <= cut <= limit
        buf[:cut].decode()


def test_open_write_then_read(tiny_model, tmp_path):
    p = tmp_path / "x.tlmz"
    data = b"hello world\n" * 500
    with tinylmz.open(p, "wb", model=str(tiny_model), block_size=1000) as f:
        for i in range(0, len(data), 777):
            f.write(data[i : i + 777])
    with tinylmz.open(p, "rb", model=str(tiny_model)) as f:
        assert f.read(5) == b"hello"
        assert f.read() == data[5:]
    with tinylmz.open(p, model=str(tiny_model)) as f:
        assert b"".join(iter(lambda: f.read(333), b"")) == data


def test_open_rejects_bad_mode(tmp_path):
    with pytest.raises(ValueError):
        tinylmz.open(tmp_path / "x", "a")


def test_lzma_and_stored_blocks_decode_without_a_model(tiny_model, tmp_path):
    data = os.urandom(5000)
    blob = tinylmz.compress(data, model=str(tiny_model))
    # no model given and the tiny model is not in the registry: fine, no block needs it
    assert tinylmz.decompress(blob) == data


def test_model_block_without_model_names_it(tiny_model, no_lzma):
    blob = tinylmz.compress(b"the the the the the " * 30, model=str(tiny_model))
    with pytest.raises(tinylmz.ModelError, match="--model"):
        tinylmz.decompress(blob)


def test_context_must_match(tiny_model):
    ctx = b"time,temp\n10:00,21.5\n"
    blob = tinylmz.compress(b"10:01,21.6\n" * 20, model=str(tiny_model), context=ctx)
    assert tinylmz.decompress(blob, model=str(tiny_model), context=ctx) == b"10:01,21.6\n" * 20
    with pytest.raises(tinylmz.TinylmzError, match="context"):
        tinylmz.decompress(blob, model=str(tiny_model))
    with pytest.raises(tinylmz.TinylmzError, match="context"):
        tinylmz.decompress(blob, model=str(tiny_model), context=b"other")


def test_stats_report_cross_entropy(tiny_model):
    out = io.BytesIO()
    c = api.Compressor(out, model=str(tiny_model), measure=True)
    c.write(b"the quick brown fox " * 30)
    c.close()
    assert c.stats.tokens > 0 and c.stats.model_bits > 0 and c.stats.raw_bytes == 600


# bytes 20000..28000 of ../shared/corpus/alice29.txt (public domain), kept here so that the
# tests need nothing outside the repository
PROSE = os.path.join(os.path.dirname(__file__), "data", "alice29-20000-28000.txt")


@pytest.mark.integration
def test_default_model_english_is_near_cross_entropy(default_model_path):
    text = open(PROSE, "rb").read()  # a few KB of ordinary prose
    out = io.BytesIO()
    c = api.Compressor(out, measure=True)
    c.write(text)
    c.close()
    assert tinylmz.decompress(out.getvalue()) == text
    assert c.stats.methods == {"model": 1}
    # the model-coded payload (streams + their framing) is within 1% of the summed -log2 p
    assert c.stats.coded_bytes * 8 <= c.stats.model_bits * 1.01
    # the whole file, header included (measured: 1.363; the model alone 1.220)
    assert 8 * len(out.getvalue()) / len(text) < 1.4


@pytest.mark.integration
def test_llama_engine_roundtrip(default_model_path):
    text = b"It was the best of times, it was the worst of times."
    blob = tinylmz.compress(text, engine="llama", segment_tokens=64)
    h = container.Reader(io.BytesIO(blob)).header
    assert h.engine["name"] == "llama" and "system_info" in h.engine["params"]
    assert tinylmz.decompress(blob) == text


def test_format_versions_and_threads(tiny_model):
    """Both format versions round-trip; the kernel's thread count never changes a byte."""
    from tinylmz import threads

    data = SAMPLES["text"] * 3
    v2 = tinylmz.compress(data, model=str(tiny_model), threads=1)
    try:
        assert tinylmz.compress(data, model=str(tiny_model), threads=3) == v2
    finally:
        threads.set_threads(None)
    v1 = tinylmz.compress(data, model=str(tiny_model), format_version=1)
    assert (v1[4], v2[4]) == (1, 2) and len(v2) < len(v1)
    assert tinylmz.decompress(v1, model=str(tiny_model)) == tinylmz.decompress(v2, model=str(tiny_model)) == data
    with pytest.raises(tinylmz.TinylmzError, match="format version"):
        tinylmz.compress(data, model=str(tiny_model), format_version=3)
    with pytest.raises(tinylmz.TinylmzError, match="window"):
        tinylmz.compress(data, model=str(tiny_model), window=300)


def test_one_block_file_has_at_most_40_bytes_of_framing(tiny_model):
    """Version 2's fixed overhead: header, block header and end marker of a one-block file."""
    data = os.urandom(3000)  # stored: payload == data
    blob = tinylmz.compress(data, model=str(tiny_model))
    blocks = list(container.Reader(io.BytesIO(blob)).blocks())
    assert [b.method for b in blocks] == [container.STORED]
    assert len(blob) - len(data) <= 40
