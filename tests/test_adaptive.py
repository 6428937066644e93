"""The adaptive models (``tinylmz.adaptive``): bit-exact, bounded, and a real range-coder round trip."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tinylmz import adaptive, freqs
from tinylmz.adaptive import AdaptiveBatch, AdaptiveState, Config

V = 300  # logit width of the synthetic "model"
WIDTH = V + 4  # plus byte symbols the vocabulary lacks (no logits)


def synthetic_logits(step: int, history) -> np.ndarray:
    """A deterministic stand-in for the engine: logits that depend on the position and the last token."""
    last = history[-1] if history else 0
    rng = np.random.default_rng([step % 7, last])
    x = rng.normal(0, 3, V).astype(np.float32)
    x[(last * 7 + 3) % V] += 6  # a favourite, so that some rows are confident
    return x


def token_sequence(n: int, seed: int = 1) -> list[int]:
    """Repetitive ids: phrases that recur (what the n-gram and match models are for), with noise."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(0, V, rng.integers(3, 12)).tolist() for _ in range(12)]
    out: list[int] = []
    while len(out) < n:
        out += phrases[int(rng.integers(0, len(phrases)))] if rng.random() < 0.8 else [int(rng.integers(0, WIDTH))]
    return out[:n]


def run(state: AdaptiveState, ids, start: int = 0) -> bytes:
    """Drive a state over ids with synthetic rows; returns every biased row and table it produced."""
    h = hashlib.sha256()
    hist: list[int] = []
    for j, y in enumerate(ids):
        L = state.adjust(freqs.fixed_logits(synthetic_logits(start + j, hist)))
        cum = freqs.cumulative(adaptive.as_logits(L), WIDTH)[0]
        h.update(L.tobytes())
        state.update(y, cum)
        hist.append(y)
    return h.digest()


def test_pinned_digest():
    """The definition in the docstring and FORMAT.md, pinned: any change to it changes these."""
    ids = token_sequence(1500)
    st = AdaptiveState()
    rows = run(st, ids)
    assert hashlib.sha256(rows).hexdigest()[:16] == "098962f3d237830f"
    assert adaptive.digest(st)[:16] == "1cd7041958b05a39"


def test_it_adapts():
    """On a repetitive sequence the biases must save bits: proposals hit, and the biased rows code shorter."""
    ids = token_sequence(3000)
    hist: list[int] = []
    st = AdaptiveState()
    plain = biased = 0.0
    for j, y in enumerate(ids):
        L0 = freqs.fixed_logits(synthetic_logits(j, hist))
        L = st.adjust(L0.copy())
        cum = freqs.cumulative(adaptive.as_logits(L), WIDTH)[0]
        c0 = freqs.cumulative(adaptive.as_logits(L0), WIDTH)[0]
        biased -= np.log2((cum[y + 1] - cum[y]) / freqs.TOTAL)
        plain -= np.log2((c0[y + 1] - c0[y]) / freqs.TOTAL)
        st.update(y, cum)
        hist.append(y)
    assert biased < 0.5 * plain  # 0.27 when written


def test_batched_equals_one_by_one():
    seqs = [token_sequence(n, seed) for n, seed in ((400, 2), (250, 3), (90, 4))]
    alone = []
    for s in seqs:
        st = AdaptiveState()
        run(st, s)
        alone.append(adaptive.digest(st))
    batch = AdaptiveBatch.fresh(3)
    hist = [[] for _ in seqs]
    for step in range(len(seqs[0])):
        k = sum(len(s) > step for s in seqs)
        batch.take(k)
        rows = np.stack([synthetic_logits(step, hist[i]) for i in range(k)])
        L = batch.adjust(freqs.fixed_logits(rows))
        cum = freqs.cumulative(adaptive.as_logits(L), WIDTH)
        ys = [seqs[i][step] for i in range(k)]
        batch.update(ys, cum)
        for i in range(k):
            hist[i].append(ys[i])
        if step + 1 in (len(seqs[1]), len(seqs[2])):  # a stream that ends now keeps its final state
            i = 1 if step + 1 == len(seqs[1]) else 2
            assert adaptive.digest(batch.states[i]) == alone[i]
    assert adaptive.digest(batch.states[0]) == alone[0]


def test_prime_copy_equals_replaying_the_prefix():
    prefix, seq = token_sequence(700, 5), token_sequence(300, 6)
    primed = AdaptiveState()
    primed.prime(prefix)
    before = adaptive.digest(primed)
    a = primed.copy()
    b = AdaptiveState()
    for t in prefix:
        b.observe(t)
    assert adaptive.digest(a) == adaptive.digest(b) == before
    assert run(a, seq) == run(b, seq)
    assert adaptive.digest(a) == adaptive.digest(b)
    assert adaptive.digest(primed) == before  # copies share nothing with the primed state
    c = AdaptiveBatch.fresh(2, primed=primed).states[1]
    assert run(c, seq) == run(primed.copy(), seq)


def test_memory_is_bounded():
    cfg = Config(ngram_bits=10, match_bits=10, hist_bits=9)
    st = AdaptiveState(cfg)
    size = st.nbytes()
    assert size == 4 * (3 * 4 * 2**10 + 2**10 + 2**9) + 16 * cfg.n_classes
    run(st, token_sequence(5000, 7))  # far more tokens than any table has slots
    assert st.nbytes() == size
    assert st.n == 5000 and st.len < 65536


def test_reset_at_stream_start():
    fresh = adaptive.digest(AdaptiveState())
    st = AdaptiveState()
    run(st, token_sequence(500, 8))
    assert adaptive.digest(st) != fresh
    st.reset()
    assert adaptive.digest(st) == fresh
    assert adaptive.digest(AdaptiveBatch.fresh(1).states[0]) == fresh


@pytest.mark.parametrize("bias", [adaptive.BMAX, -adaptive.BMAX])
def test_frequencies_stay_valid_under_extreme_biases(bias):
    st = AdaptiveState()
    st.prime(token_sequence(600, 9))
    for c in range(len(st.B)):
        st.B[c] = bias
    rows = np.stack([synthetic_logits(j, [j]) for j in range(8)])
    rows[0, :] = 1e9  # clipped to 2^24 by fixed_logits: biases must not push past the clip
    batch = AdaptiveBatch([st.copy() for _ in range(8)])
    L = batch.adjust(freqs.fixed_logits(rows))
    assert np.abs(L).max() <= 1 << 24
    assert (L != freqs.fixed_logits(rows)).any()  # the biases were applied
    assert np.array_equal(freqs.fixed_logits(adaptive.as_logits(L)), L)  # exact through float32
    f = freqs.frequencies(adaptive.as_logits(L), WIDTH)
    assert (f >= 1).all() and (f.sum(axis=1) == freqs.TOTAL).all()


def test_range_coder_round_trip():
    """Encode streams with the biases, decode them side by side (batched), get the ids back."""
    seqs = [token_sequence(n, seed) for n, seed in ((600, 10), (600, 11), (257, 12))]
    datas = []
    for s in seqs:
        hist: list[int] = []

        def rows(s=s, hist=hist):
            for j, y in enumerate(s):
                yield synthetic_logits(j, hist)
                hist.append(y)

        datas.append(adaptive.encode_rows(rows(), s, AdaptiveState(), WIDTH))
    plain = sum(len(d) for d in datas)
    got = adaptive.decode_streams(datas, [len(s) for s in seqs],
                                  lambda step, hs: np.stack([synthetic_logits(step, h) for h in hs]),
                                  AdaptiveBatch.fresh(3), WIDTH)
    assert got == seqs
    assert plain > 0


def test_hash_is_the_stated_integer_function():
    assert adaptive._mix(0, 0) == (0x9E3779B1 ^ (0x9E3779B1 >> 15))
    x = ((12345 ^ 7) * 0x9E3779B1) & 0xFFFFFFFF
    assert adaptive._mix(12345, 6) == x ^ (x >> 15)


def test_round_trip_through_the_engine(tiny_model):
    """A real engine (the tiny model): streams scored for the encoder, a lockstep stepper for the
    decoder, every stream's adaptive state primed with a context; the ids come back."""
    from tinylmz import registry
    from tinylmz.engine_portable import PortableEngine

    m = registry.resolve(str(tiny_model))
    eng = PortableEngine(m.path, m.sha256)
    V = eng.n_vocab
    rng = np.random.default_rng(13)
    phrase = rng.integers(1, V, 9).tolist()
    context = (phrase + rng.integers(1, V, 5).tolist()) * 3
    prefix = eng.prefill([1] + context)
    primed = AdaptiveState()
    primed.prime(context)
    seqs = [(phrase * 5)[:40], (rng.integers(1, V, 8).tolist() + phrase * 3)[:33]]
    datas, sizes = [], []
    for s in seqs:
        rows = np.concatenate(list(eng.score(prefix, s)))
        datas.append(adaptive.encode_rows(rows, s, primed.copy(), V))
        sizes.append(len(adaptive.encode_rows(rows, s, AdaptiveState(Config(orders=0, match=False)), V)))
    stepper = eng.stepper(prefix, len(seqs))

    def logits_of(step, hs):
        if step:
            stepper.feed([h[-1] for h in hs])
        return stepper.logits()[: len(hs)]

    got = adaptive.decode_streams(datas, [len(s) for s in seqs], logits_of, AdaptiveBatch.fresh(2, primed=primed), V)
    assert got == seqs
    assert sum(len(d) for d in datas) < sum(sizes)  # the repeats of the context paid


def test_config_round_trips_and_is_bounded():
    cfg = Config(orders=3, ngram_bits=12, match=False)
    assert Config.from_params(cfg.params()) == cfg
    assert all(type(v) is int for v in cfg.params().values())
    for bad in ({"ngram_bits": 40}, {"orders": 9}, {"match": 2}, {"hist_bits": 3}, {"colour": 1}):
        with pytest.raises(ValueError):
            Config.from_params({**Config().params(), **bad})


class SpecModel:
    """FORMAT.md §8 transcribed on its own (plain lists, written from the text, not the module)."""

    def __init__(self, orders=4, ngram_bits=14, match=True, match_min=3, match_bits=14, hist_bits=14,
                 decay=8, prior=32, init=True):
        self.o, self.nb, self.match, self.mm, self.mb, self.H = orders, ngram_bits, match, match_min, match_bits, 1 << hist_bits
        self.decay, self.prior = decay, prior
        self.n, self.hist, self.ptr, self.len = 0, [0] * self.H, 0, 0
        self.tab = [[[0, 0, 0] for _ in range(1 << ngram_bits)] for _ in range(orders)]  # (tok, chk, cnt)
        self.mt = [0] * (1 << match_bits)
        ncls = 96 + 24 * orders
        init_b = (1 << 14, 3 << 13, 1 << 15, 3 << 14, 1 << 16, 3 << 15)
        self.B = [init_b[c % 6] if init else 0 for c in range(ncls)]
        self.C = [0] * ncls
        self.t = []

    def hashes(self):
        hs, h = [], 0
        for k in range(1, min(self.n, max(self.o, self.mm)) + 1):
            x = ((h ^ (self.t[self.n - k] + 1)) * 0x9E3779B1) & 0xFFFFFFFF
            h = x ^ (x >> 15)
            hs.append(h)
        return hs

    def propose(self, L):
        m, n_vocab, props = int(max(L)), len(L), []
        hs = self.hashes()
        if self.len > 0:
            props.append((self.hist[self.ptr % self.H], (min(self.len, 16) - 1) * 6))
        for k in range(1, min(self.o, self.n) + 1):
            tok, chk, cnt = self.tab[k - 1][hs[k - 1] >> (32 - self.nb)]
            if cnt > 0 and chk == hs[k - 1] & 0xFFFF:
                props.append((tok, 96 + ((k - 1) * 4 + min(cnt, 8).bit_length() - 1) * 6))
        props = [(x, c + sum(1 for e in (1, 256, 512, 1024, 2048) if e <= m - int(L[x])))
                 for x, c in props if x < n_vocab]
        Lp = [int(v) for v in L]
        for x in dict.fromkeys(x for x, _ in props):
            Lp[x] = max(-(1 << 24), min(1 << 24, int(L[x]) + sum(self.B[c] >> 8 for z, c in props if z == x)))
        self.props = props
        return np.array(Lp, dtype=np.int32)

    def learn(self, y, cum):
        T = 1 << 28
        for x, c in self.props:
            f = int(cum[x + 1] - cum[x])
            self.C[c] += ((f * (T - f)) >> 28) - (self.C[c] >> self.decay)
            self.B[c] = max(-(1 << 20), min(1 << 20, self.B[c] + ((T * (x == y) - f) * 65536) // (self.C[c] + (T * self.prior >> 4))))
        self.observe(y)

    def observe(self, y):
        hs = self.hashes()
        for k in range(1, min(self.o, self.n) + 1):
            slot = self.tab[k - 1][hs[k - 1] >> (32 - self.nb)]
            q = hs[k - 1] & 0xFFFF
            if slot[1] != q:
                slot[:] = [y, q, 1]
            elif slot[0] == y:
                slot[2] = min(slot[2] + 1, 255)
            else:
                slot[2] >>= 1
                if slot[2] == 0:
                    slot[0], slot[2] = y, 1
        if self.len > 0 and self.hist[self.ptr % self.H] == y:
            self.len, self.ptr = min(self.len + 1, 65535), self.ptr + 1
        else:
            self.len = 0
        self.hist[self.n % self.H] = y
        self.n += 1
        self.t.append(y)
        if self.match and self.n >= self.mm:
            j = self.hashes()[self.mm - 1] >> (32 - self.mb)
            p = self.mt[j]
            if self.len == 0 and p > 0 and self.n - p < self.H:
                l = 0
                for i in range(1, 17):
                    if not (i <= p and self.hist[(p - i) % self.H] == self.hist[(self.n - i) % self.H]):
                        break
                    l += 1
                if l >= self.mm:
                    self.len, self.ptr = l, p
            self.mt[j] = self.n
        if self.len > 0 and self.n - self.ptr >= self.H:
            self.len = 0


@pytest.mark.parametrize("kw", [{}, {"orders": 2, "match_min": 5, "hist_bits": 6, "init": False}])
def test_module_follows_the_written_spec(kw):
    """The module and FORMAT.md §8 transcribed independently give the same biased rows."""
    ids = token_sequence(900, 14)
    st, spec = AdaptiveState(Config(**kw)), SpecModel(**kw)
    spec_ctx = token_sequence(200, 15)
    st.prime(spec_ctx)
    for t in spec_ctx:
        spec.observe(t)
    hist: list[int] = []
    for j, y in enumerate(ids):
        L = freqs.fixed_logits(synthetic_logits(j, hist))
        want = spec.propose(L)
        got = st.adjust(L)
        assert np.array_equal(got, want), j
        cum = freqs.cumulative(adaptive.as_logits(got), WIDTH)[0]
        st.update(y, cum)
        spec.learn(y, cum)
        hist.append(y)
    assert list(st.B) == spec.B and list(st.C) == spec.C


def test_plan_and_pick_equal_adjust_and_whole_tables():
    """The codec's path (``AdaptiveBatch.plan`` -> ``freqs.pick`` -> ``learn``, no whole tables)
    codes every token with the (cum, freq) of the reference path (``adjust`` -> ``cumulative``
    -> ``update``) and leaves the same states."""
    seqs = [token_sequence(n, seed) for n, seed in ((300, 5), (200, 6))]
    ref, fast = AdaptiveBatch.fresh(2), AdaptiveBatch.fresh(2)
    hist = [[] for _ in seqs]
    for step in range(len(seqs[0])):
        k = sum(len(s) > step for s in seqs)
        ref.take(k)
        fast.take(k)
        rows = np.stack([synthetic_logits(step, hist[i]) for i in range(k)]).astype(np.float32)
        ys = [seqs[i][step] for i in range(k)]
        cum = freqs.cumulative(adaptive.as_logits(ref.adjust(freqs.fixed_logits(rows))), WIDTH)
        ref.update(ys, cum)
        _, c, f, fx = freqs.pick(rows, WIDTH, ys, biases=fast.plan(rows))
        rows_ = np.arange(k)
        assert np.array_equal(c, cum[rows_, ys]) and np.array_equal(f, cum[rows_, np.add(ys, 1)] - c)
        targets = c + f // 2
        dec = freqs.pick(rows, WIDTH, targets, decode=True, biases=fast.plan(rows))
        assert dec[0].tolist() == ys
        fast.learn(ys, fx)
        for i in range(k):
            hist[i].append(ys[i])
    assert [adaptive.digest(s) for s in fast.states] == [adaptive.digest(s) for s in ref.states[: len(fast.states)]]
