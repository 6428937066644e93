"""Logits → integer frequencies: fixed total, every id >= 1, deterministic tables."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinylmz import freqs

# Pinned: changing the table changes every .tlmz file (a format change).
EXP_TABLE_SHA256 = "b2986656289d675a"


def test_exp_table_is_pinned():
    assert freqs.table_digest().startswith(EXP_TABLE_SHA256)
    t = freqs.exp_table()
    assert t[0] == 1 << 30 and t[-1] == 0 and (np.diff(t) <= 0).all()


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 300)),
                  elements=st.floats(-1e4, 1e4, width=32) | st.sampled_from([np.inf, -np.inf, np.nan])))
def test_rows_sum_to_total_and_every_id_is_codable(logits):
    f = freqs.frequencies(logits)
    assert (f.sum(axis=1) == freqs.TOTAL).all()
    assert (f >= 1).all()


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 300)),
                  elements=st.floats(-1e9, 1e9, width=32) | st.sampled_from([np.inf, -np.inf, np.nan, 0.0])),
       st.integers(0, 5))
def test_native_tables_equal_the_numpy_definition(logits, extra):
    from tinylmz import kernel

    assert kernel.load() is not None, "the native kernel did not build (a C compiler is a requirement)"
    width = logits.shape[1] + extra
    f = freqs.frequencies(logits, width)
    want = np.concatenate([np.zeros((len(f), 1), np.int64), np.cumsum(f, axis=1)], axis=1)
    assert np.array_equal(kernel.freq_cum(logits, width, freqs.exp_table(), freqs.TOTAL), want)
    # the encoder's form: one symbol per row (every id in turn, the argmax and the extra ones included)
    for shift in range(width):
        ids = (np.arange(len(f)) * 7 + shift) % width
        cum, freq = kernel.freq_sym(logits, ids, width, freqs.exp_table(), freqs.TOTAL)
        rows = np.arange(len(f))
        assert np.array_equal(cum, want[rows, ids]) and np.array_equal(freq, f[rows, ids])


def test_extra_symbols_get_one():
    f = freqs.frequencies(np.zeros((2, 5), np.float32), width=8)
    assert f.shape == (2, 8) and (f[:, 5:] == 1).all() and (f.sum(1) == freqs.TOTAL).all()


def test_close_to_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (64, 49152)).astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.array([rng.choice(49152, p=row) for row in p])  # ids the model expects
    cum, freq = freqs.symbols(logits, ids)
    coded = -np.log2(freq / freqs.TOTAL).sum()
    ideal = freqs.model_bits(logits, ids)
    assert abs(coded - ideal) < 0.002 * ideal + 0.05


def test_symbols_matches_cumulative():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (6, 700)).astype(np.float32)
    ids = rng.integers(0, 700, 6)
    cum, freq = freqs.symbols(logits, ids)
    c = freqs.cumulative(logits)
    assert (c[np.arange(6), ids] == cum).all() and (c[np.arange(6), ids + 1] - cum == freq).all()


def test_float64_and_float32_logits_agree():
    x = np.random.default_rng(2).normal(0, 3, (3, 100))
    assert np.array_equal(freqs.frequencies(x), freqs.frequencies(x.astype(np.float32)))


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 300)),
                  elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([np.inf, -np.inf, np.nan, 0.0])),
       st.integers(0, 3), st.data())
def test_pick_equals_whole_tables(logits, extra, data):
    """freqs.pick (native) codes and decodes exactly as the cumulative tables of the biased rows."""
    from tinylmz import kernel

    assert kernel.load() is not None
    n, V = logits.shape
    width = V + extra
    biases = []
    for _ in range(n):
        xs = data.draw(st.lists(st.integers(0, V - 1), max_size=5, unique=True))
        vs = data.draw(st.lists(st.integers(-(1 << 24), 1 << 24), min_size=len(xs), max_size=len(xs)))
        biases.append((xs, vs))
    nb = np.array([len(x) for x, _ in biases])
    bx, bv = np.zeros((n, 5), np.int64), np.zeros((n, 5), np.int64)
    for i, (xs, vs) in enumerate(biases):
        bx[i, : len(xs)], bv[i, : len(xs)] = xs, vs
    ids = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=n, max_size=n)))
    want = freqs.pick_reference(logits, width, ids, False, nb, bx, bv)
    got = freqs.pick(logits, width, ids, biases=biases)
    assert all(np.array_equal(a, b) for a, b in zip(want[:3], got[:3]))
    assert all(np.array_equal(want[3][i, : nb[i]], got[3][i, : nb[i]]) for i in range(n))
    # every target inside a symbol's interval decodes to that symbol, at both ends of it
    for t in (want[1], want[1] + want[2] - 1):
        dec = freqs.pick(logits, width, t, decode=True, biases=biases)
        assert np.array_equal(dec[0], ids) and np.array_equal(dec[1], want[1]) and np.array_equal(dec[2], want[2])
    assert np.array_equal(freqs.row_max(logits), freqs.fixed_logits(logits).max(axis=1))


def test_native_frequency_functions_refuse_totals_their_int32_tables_cannot_hold():
    """The native passes keep frequencies and exp entries in int32: a total above 2^30 is refused
    with a clear error instead of wrapping around."""
    from tinylmz import kernel

    assert kernel.load() is not None
    lg = np.zeros((1, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="2\\^30"):
        kernel.freq_cum(lg, 10, freqs.exp_table(), 1 << 31)
    with pytest.raises(ValueError, match="2\\^30"):
        kernel.freq_sym(lg, np.array([3]), 10, freqs.exp_table() * 4, freqs.TOTAL)
    assert kernel.freq_cum(lg, 10, freqs.exp_table(), freqs.TOTAL)[0, -1] == freqs.TOTAL
