"""tinylmz.engine_llama: the llama.cpp engine (DESIGN §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from tinylmz.engine_llama import LlamaEngine
from tinylmz.errors import EngineMismatch, ModelError
from tinylmz.tokens import Tokenizer, Vocab

SEG = 128
IDS = [5, 17, 200, 3, 99, 1, 42, 42, 7, 300, 12, 8]


@pytest.fixture(scope="module")
def tiny_vocab(tiny_model) -> Vocab:
    return Vocab.from_gguf(tiny_model)


@pytest.fixture(scope="module")
def engine(tiny_model) -> LlamaEngine:
    e = LlamaEngine(tiny_model, seg_len=SEG, n_threads=1)
    yield e
    e.close()


def run_stream(engine: LlamaEngine, prefix, ids) -> np.ndarray:
    """Logits before each id and after the last one: shape (len(ids) + 1, n_vocab)."""
    st = engine.stepper(prefix, 1)
    rows = [st.logits()[0].copy()]
    for t in ids:
        st.feed([t])
        rows.append(st.logits()[0].copy())
    return np.stack(rows)


def test_attributes(engine, tiny_vocab):
    assert engine.name == "llama" and engine.version == 1
    assert engine.batch_invariant is False and engine.max_streams == 1
    assert engine.n_vocab == tiny_vocab.n_vocab
    assert engine.n_ctx >= SEG + 1 and engine.n_ctx % 256 == 0


def test_logits_shape_and_finite(engine, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id])
    assert p.n_tokens == 1
    st = engine.stepper(p, 1)
    x = st.logits()
    assert x.shape == (1, engine.n_vocab) and x.dtype == np.float32 and np.isfinite(x).all()
    st.feed([10])
    y = st.logits()
    assert y.shape == (1, engine.n_vocab) and not np.array_equal(x, y)
    st.feed([])  # the stream ends
    assert st.logits().shape == (0, engine.n_vocab)


def test_same_prefix_reused_gives_identical_logits(engine, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id, 50, 60])
    a = run_stream(engine, p, IDS)
    run_stream(engine, p, [9, 9, 9, 9, 9])  # something else in between
    b = run_stream(engine, p, IDS)
    assert np.array_equal(a, b)
    # a prefix of the stream gives the first rows exactly
    c = run_stream(engine, p, IDS[:4])
    assert np.array_equal(a[:5], c)


def test_prefix_reuse_equals_fresh_run(engine, tiny_model, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id])
    run_stream(engine, p, list(range(100, 140)))  # dirty the context
    reused = run_stream(engine, p, IDS)
    fresh_engine = LlamaEngine(tiny_model, seg_len=SEG, n_threads=1)
    try:
        fresh = run_stream(fresh_engine, fresh_engine.prefill([tiny_vocab.start_id]), IDS)
    finally:
        fresh_engine.close()
    assert np.array_equal(reused, fresh)


def test_two_fresh_engines_agree(tiny_model, tiny_vocab):
    out = []
    for _ in range(2):
        e = LlamaEngine(tiny_model, seg_len=SEG, n_threads=1)
        try:
            out.append(run_stream(e, e.prefill([tiny_vocab.start_id, 7]), IDS))
        finally:
            e.close()
    assert np.array_equal(out[0], out[1])


def test_prefill_then_stepper_equals_longer_prefill(engine, tiny_vocab):
    """Both evaluate one token per call, so where the prefix ends does not matter."""
    start = tiny_vocab.start_id
    a = run_stream(engine, engine.prefill([start]), IDS)
    b = run_stream(engine, engine.prefill([start] + IDS[:3]), IDS[3:])
    assert np.array_equal(a[3:], b)


def test_score_equals_stepper(engine, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id])
    rows = np.concatenate(list(engine.score(p, IDS)))
    assert rows.shape == (len(IDS), engine.n_vocab)
    assert np.array_equal(rows, run_stream(engine, p, IDS)[: len(IDS)])
    assert list(engine.score(p, [])) == []


def test_old_stepper_refuses_after_takeover(engine, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id])
    s1 = engine.stepper(p, 1)
    s1.feed([3])
    engine.stepper(p, 1)
    with pytest.raises(RuntimeError):
        s1.feed([4])


def test_bad_requests(engine, tiny_model, tiny_vocab):
    p = engine.prefill([tiny_vocab.start_id])
    with pytest.raises(ValueError):
        engine.stepper(p, 2)
    with pytest.raises(ValueError):
        engine.prefill([])
    st = engine.stepper(p, 1)
    with pytest.raises(ValueError):
        st.feed([engine.n_vocab])
    with pytest.raises(ValueError):
        st.feed([1, 2])
    other = LlamaEngine(tiny_model, seg_len=SEG, n_threads=1)
    try:
        with pytest.raises(ValueError):
            other.stepper(p, 1)
    finally:
        other.close()


def test_context_overflow_is_an_error(tiny_model, tiny_vocab):
    e = LlamaEngine(tiny_model, seg_len=4, n_ctx=8, n_threads=1)
    try:
        assert e.n_ctx >= 8  # llama.cpp may round the context up; params() records what it allocated
        st = e.stepper(e.prefill([tiny_vocab.start_id]), 1)
        for _ in range(e.n_ctx - 1):
            st.feed([5])
        with pytest.raises(ValueError, match="context"):
            st.feed([5])
    finally:
        e.close()


def test_missing_model_is_model_error(tmp_path):
    with pytest.raises(ModelError):
        LlamaEngine(tmp_path / "nope.gguf", seg_len=SEG)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError):
        LlamaEngine(bad, seg_len=SEG)


# ---------------------------------------------------------------- fingerprint


def test_params_fingerprint(engine):
    import llama_cpp

    p = engine.params()
    assert p["llama_cpp_version"] == llama_cpp.__version__
    assert p["system_info"] and "|" in p["system_info"]
    assert p["n_threads"] == 1 and p["n_ctx"] == engine.n_ctx and p["n_batch"] == engine.n_batch
    assert p["flash_attn"] is False and p["n_gpu_layers"] == 0
    assert p["engine_version"] == engine.version
    engine.check_params(p)  # its own fingerprint is fine
    engine.check_params(dict(p, seg_len=p["seg_len"] + 1))  # seg_len alone does not change logits


@pytest.mark.parametrize(
    "change, words",
    [
        ({"system_info": "CPU : SSE3 = 1 | AVX2 = 1 |"}, ["AVX2", "this machine has", "--engine portable", "--force"]),
        ({"llama_cpp_version": "0.2.0"}, ["0.2.0", "this machine has"]),
        ({"n_threads": 3}, ["n_threads=3"]),
        ({"n_ctx": 4096}, ["n_ctx=4096"]),
        ({"n_batch": 512}, ["n_batch=512"]),
        ({"flash_attn": True}, ["flash_attn"]),
        ({"engine_version": 99}, ["engine_version"]),
    ],
)
def test_fingerprint_mismatch(engine, change, words):
    theirs = dict(engine.params(), **change)
    with pytest.raises(EngineMismatch) as ei:
        engine.check_params(theirs)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg
    engine.check_params(theirs, force=True)  # --force skips the check


def test_from_params_rebuilds_same_engine(engine, tiny_model, tiny_vocab):
    p = engine.params()
    e2 = LlamaEngine.from_params(tiny_model, p)
    try:
        assert e2.params() == p
        e2.check_params(p)
        a = run_stream(engine, engine.prefill([tiny_vocab.start_id]), IDS)
        b = run_stream(e2, e2.prefill([tiny_vocab.start_id]), IDS)
        assert np.array_equal(a, b)
    finally:
        e2.close()
    with pytest.raises(EngineMismatch):
        LlamaEngine.from_params(tiny_model, {"n_threads": 1})


# ---------------------------------------------------------------- real model


@pytest.mark.integration
def test_real_model_cross_entropy(default_model_path):
    vocab = Vocab.from_gguf(default_model_path)
    tok = Tokenizer(default_model_path, vocab)
    text = (
        b"Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
        b"nothing to do: once or twice she had peeped into the book her sister was reading."
    )
    ids = tok.encode(text).tolist()
    e = LlamaEngine(default_model_path, seg_len=256, n_threads=1)  # 1: robust on a loaded 2-core box
    try:
        p = e.prefill([vocab.start_id])
        logits = np.concatenate(list(e.score(p, ids))).astype(np.float64)
        again = np.concatenate(list(e.score(p, ids)))
        assert np.array_equal(logits.astype(np.float32), again)
    finally:
        e.close()
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    bits = -logp[np.arange(len(ids)), ids] / np.log(2)
    assert bits.mean() < 6.0, bits.mean()
    assert bits.sum() / len(text) < 2.0  # bits per byte
