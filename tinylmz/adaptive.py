"""In-stream adaptation: a token n-gram model and a match model, mixed into the model's logits.

Both models learn from the stream as it is coded and *propose* a few candidate
next tokens.  Each proposal falls into a *class*; the class's learned bias is
added to the candidate's fixed-point logit (``freqs.fixed_logits``, 1/256 nat)
before the shared frequency procedure (FORMAT.md §3), which is unchanged, as is
the decoder's symbol search.  Biases of several proposals of one token add up
(a product of experts).  Every state and update is integer; nothing depends on
the machine.  Tables have a fixed size set by ``Config``; the state is reset at
each stream start and may first be *primed* with the tokens of a record-mode
context (``prime``), then copied for each stream (``copy``).

Use, per stream (the encoder; the decoder does the same with ``AdaptiveBatch``
for its lockstep streams, one call per step)::

    st = AdaptiveState(Config())            # or primed.copy()
    for each position:  L = freqs.fixed_logits(logits_row)
                        st.adjust(L)        # biases a few entries of L, in place
                        cum = freqs.cumulative(as_logits(L), width)[0]
                        code y with cum;  st.update(y, cum)

``encode_rows`` and ``decode_streams`` are that loop, as references and for tests.  The codec
gets the same numbers without whole tables: ``plan`` gives the ids to bias and their biased
values, ``freqs.pick`` codes (or finds) the symbol and returns those ids' frequencies, and
``update(y, fx=...)`` learns from them (tests compare both paths).

Definition (integers; ``>>`` is an arithmetic shift and ``//`` floor division,
both rounding toward minus infinity; ``M32 = 2^32 - 1``; ``H = 2^hist_bits``).

State: ``n`` (tokens seen), ``hist[H]`` (token i at ``hist[i mod H]``); per n-gram
order k = 1..orders a table of ``2^ngram_bits`` slots (``tok``, ``chk``, ``cnt``);
the match table ``mt[2^match_bits]`` (positions); the match ``ptr`` and ``len``;
per class c a bias ``B[c]`` (1/65536 nat) and a curvature ``C[c]`` (units of
TOTAL = 2^28).  At a stream start everything is 0 but ``B[c] = INIT[c mod 6]``
(``INIT = (2^14, 3*2^13, 2^15, 3*2^14, 2^16, 3*2^15)``: 0.25 .. 1.5 nat; all 0 if
``init`` is off).  Classes: 96 match classes, then 24 per n-gram order.

Context hashes, after n tokens ``t[0..n-1]``::

    h_0 = 0;  h_k = mix(h_(k-1), t[n-k])   for k = 1 .. min(n, max(orders, match_min))
    mix(h, t) = x ^ (x >> 15)   where  x = ((h ^ (t + 1)) * 0x9E3779B1) & M32

A hash h addresses slot ``h >> (32 - bits)`` of a table of ``2^bits``; n-gram
slots also keep a check ``h & 0xFFFF``.

Proposals, in this order, for the row's logits ``L`` (ids < n_logits, ``m = max L``):

1. match, if ``len > 0``: token ``hist[ptr mod H]``, class ``(min(len, 16) - 1) * 6 + gb``;
2. n-gram order k = 1..min(orders, n): slot s of h_k; if ``cnt[s] > 0`` and
   ``chk[s] == h_k & 0xFFFF``: token ``tok[s]``, class ``96 + ((k-1)*4 + cb)*6 + gb``,
   ``cb = bit_length(min(cnt[s], 8)) - 1`` (counts 1, 2-3, 4-7, 8+);

where ``gb`` = the number of the edges ``(1, 256, 512, 1024, 2048)`` that are
``<= m - L[x]`` (0: x is a maximum).  A proposal of an id >= n_logits is
dropped.  Each distinct proposed x (in order of first proposal) gets
``L'[x] = clamp(L[x] + sum of (B[c] >> 8) over its proposals, -2^24, 2^24)``;
every other id keeps ``L[x]``.  The row is coded with the §3 table of ``L'``.

Update with the coded token y; ``f`` is the frequency of x in that table.
For each proposal (x, c), in order::

    C[c] += (f * (TOTAL - f)) >> 28  -  (C[c] >> decay)
    B[c]  = clamp(B[c] + ((TOTAL * [x == y] - f) << 16) // (C[c] + (TOTAL * prior >> 4)),  -2^20, 2^20)

(an online Newton step on the class's log-loss: a class learns fast while its
tokens are rare for the model).  Then the tables learn y (``observe``; ``prime``
does only this):

1. each n-gram order k = 1..min(orders, n), with the hashes of the context before y:
   slot s, check q = h_k & 0xFFFF.  If ``chk[s] != q``: ``chk, tok, cnt = q, y, 1``;
   elif ``tok[s] == y``: ``cnt = min(cnt + 1, 255)``; else ``cnt >>= 1`` and, if 0, ``tok, cnt = y, 1``;
2. match: if ``len > 0`` and ``hist[ptr mod H] == y``: ``len = min(len + 1, 65535)``,
   ``ptr += 1``; else ``len = 0``;
3. ``hist[n mod H] = y;  n += 1``; recompute h_1.. for the new context;
4. if the match model is on and ``n >= match_min``: j = slot of h_match_min in ``mt``;
   p = mt[j]; if ``len == 0 and p > 0 and n - p < H``: l = the number of i = 1, 2, .. 16
   (stopping at the first failure) with ``i <= p`` and ``hist[(p-i) mod H] == hist[(n-i) mod H]``;
   if ``l >= match_min``: ``len, ptr = l, p``.  Then ``mt[j] = n``;
5. if ``len > 0`` and ``n - ptr >= H``: ``len = 0``.
"""

from __future__ import annotations

import array
from dataclasses import asdict, dataclass

import numpy as np

from . import freqs

LIMIT = 1 << 24  # logit clip, as freqs.fixed_logits
BMAX = 1 << 20  # bias clip (1/65536 nat): 16 nats
GAPS = (1, 256, 512, 1024, 2048)  # gap-bucket edges, 1/256 nat
N_MATCH_CLASSES = 16 * 6
M32 = 0xFFFFFFFF
# Initial biases by gap bucket (1/65536 nat): proposals the model rates low are usually
# worth more than it thinks; a fixed start saves each stream relearning that.
INIT = (1 << 14, 3 << 13, 1 << 15, 3 << 14, 1 << 16, 3 << 15)


_BOUNDS = (("orders", 0, 8), ("ngram_bits", 4, 22), ("match", 0, 1), ("match_min", 1, 16),
           ("match_bits", 4, 22), ("hist_bits", 4, 22), ("decay", 0, 30), ("prior", 1, 1 << 16), ("init", 0, 1))


@dataclass(frozen=True)
class Config:
    """Table sizes and rates; part of the format (a file records them)."""

    orders: int = 4  # n-gram orders 1..orders (0: no n-gram model)
    ngram_bits: int = 14
    match: bool = True
    match_min: int = 3  # tokens hashed to find a match (and the shortest match used)
    match_bits: int = 14
    hist_bits: int = 14
    decay: int = 8  # curvature memory: H loses H >> decay per event
    prior: int = 32  # H0 = TOTAL * prior / 16: the curvature a class starts with
    init: bool = True  # start the biases at INIT[gap bucket] (else 0)

    def __post_init__(self) -> None:
        # a file's header names the config: bound what it can make a decoder allocate
        for name, lo, hi in _BOUNDS:
            v = getattr(self, name)
            if not isinstance(v, (int, bool)) or not lo <= v <= hi:
                raise ValueError(f"adaptive config: {name} = {v!r} outside {lo}..{hi}")

    def params(self) -> dict:
        """The config as a dict of small integers (for a file header)."""
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_params(cls, params: dict) -> "Config":
        """Inverse of ``params``; rejects unknown names and out-of-range values (ValueError)."""
        unknown = set(params) - {f for f, _, _ in _BOUNDS}
        if unknown:
            raise ValueError(f"adaptive config: unknown parameters {sorted(unknown)}")
        kw = {k: int(v) for k, v in params.items()}
        for k in ("match", "init"):
            if k in kw:
                if kw[k] not in (0, 1):
                    raise ValueError(f"adaptive config: {k} must be 0 or 1")
                kw[k] = bool(kw[k])
        return cls(**kw)

    @property
    def n_classes(self) -> int:
        return N_MATCH_CLASSES + self.orders * 4 * 6


def _mix(h: int, t: int) -> int:
    x = ((h ^ (t + 1)) * 0x9E3779B1) & M32
    return x ^ (x >> 15)


def _gap_bucket(d: int) -> int:
    for i, e in enumerate(GAPS):
        if d < e:
            return i
    return 5


class AdaptiveState:
    """One stream's adaptive models.  ``adjust`` a row, code with it, then ``update`` with the token."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = cfg = config or Config()
        self._nh = max(cfg.orders, cfg.match_min if cfg.match else 0)
        self._h0 = (freqs.TOTAL * cfg.prior) >> 4
        self.reset()

    def reset(self) -> None:
        """The state at a stream start (tables sized once by the config)."""
        cfg = self.config
        size = 1 << cfg.ngram_bits
        self.n = 0
        self.hist = array.array("i", bytes(4 << cfg.hist_bits))
        self.tok = [array.array("i", bytes(4 * size)) for _ in range(cfg.orders)]
        self.chk = [array.array("i", bytes(4 * size)) for _ in range(cfg.orders)]
        self.cnt = [array.array("i", bytes(4 * size)) for _ in range(cfg.orders)]
        self.mt = array.array("i", bytes(4 << cfg.match_bits))
        self.ptr = 0
        self.len = 0
        self.B = array.array("q", bytes(8 * cfg.n_classes))
        self.C = array.array("q", bytes(8 * cfg.n_classes))
        for c in range(cfg.n_classes):
            self.B[c] = INIT[c % 6] if cfg.init else 0
        self._h = []  # h_1 .. h_nh of the current context
        self._pending = None  # (sources, xs) from the last plan

    def copy(self) -> "AdaptiveState":
        new = object.__new__(AdaptiveState)
        new.config, new._nh, new._h0 = self.config, self._nh, self._h0
        new.n, new.ptr, new.len = self.n, self.ptr, self.len
        new.hist, new.mt, new.B, new.C = (array.array(a.typecode, a) for a in (self.hist, self.mt, self.B, self.C))
        new.tok = [array.array("i", a) for a in self.tok]
        new.chk = [array.array("i", a) for a in self.chk]
        new.cnt = [array.array("i", a) for a in self.cnt]
        new._h = list(self._h)
        new._pending = None
        return new

    def nbytes(self) -> int:
        """Bytes held by the tables (fixed by the config)."""
        arrs = [self.hist, self.mt, self.B, self.C, *self.tok, *self.chk, *self.cnt]
        return sum(a.itemsize * len(a) for a in arrs)

    def prime(self, ids) -> None:
        """Feed a context's tokens to the tables (no bias learning: there are no frequencies for them)."""
        for t in np.asarray(ids, dtype=np.int64).tolist():
            self.observe(t)

    # -- proposals --------------------------------------------------------------------------------

    def proposals(self) -> list[tuple[int, int]]:
        """(token, class without the gap bucket) of each proposal, in the defined order."""
        cfg, out = self.config, []
        if self.len > 0:
            out.append((self.hist[self.ptr & ((1 << cfg.hist_bits) - 1)], (min(self.len, 16) - 1) * 6))
        shift = 32 - cfg.ngram_bits
        for k in range(min(cfg.orders, self.n)):
            h = self._h[k]
            s = h >> shift
            c = self.cnt[k][s]
            if c > 0 and self.chk[k][s] == h & 0xFFFF:
                out.append((self.tok[k][s], N_MATCH_CLASSES + (k * 4 + min(c, 8).bit_length() - 1) * 6))
        return out

    def plan(self, m: int, logit, n_logits: int) -> tuple[list[int], list[int]]:
        """Distinct proposed ids and their biased logits; ``logit(x)`` gives L[x], ``m`` = max L."""
        sources, xs, L0, Lx, B = [], [], [], [], self.B
        for x, c in self.proposals():
            if x >= n_logits:
                continue
            if x in xs:
                i = xs.index(x)
            else:
                i = len(xs)
                xs.append(x)
                v = int(logit(x))
                L0.append(v)
                Lx.append(v)
            d = m - L0[i]  # the gap bucket, from the unbiased logit
            c += 0 if d < 1 else 1 if d < 256 else 2 if d < 512 else 3 if d < 1024 else 4 if d < 2048 else 5
            sources.append((i, c))
            Lx[i] += B[c] >> 8
        self._pending = (sources, xs)
        return xs, [LIMIT if v > LIMIT else -LIMIT if v < -LIMIT else v for v in Lx]

    def adjust(self, L: np.ndarray, m: int | None = None) -> np.ndarray:
        """Bias one row of fixed-point logits (int32, ids < n_logits) in place and return it.

        ``m`` is the row's maximum when the caller has it (saves a pass over the row)."""
        xs, vals = self.plan(int(L.max()) if m is None else m, L.__getitem__, len(L))
        for x, v in zip(xs, vals):
            L[x] = v
        return L

    # -- learning ---------------------------------------------------------------------------------

    def update(self, y: int, cum: np.ndarray | None = None, fx=None) -> None:
        """Learn from coded token ``y``: the biases from the frequencies of the last ``plan``'s ids
        (``fx`` in the order of ``plan``'s ids, or read from the row's cumulative table ``cum``),
        then the tables (``observe``)."""
        pend, self._pending = self._pending, None
        if pend is not None and pend[0]:
            sources, xs = pend
            if fx is None:
                fx = [int(cum[x + 1]) - int(cum[x]) for x in xs]
            T = freqs.TOTAL
            B, C, h0, dec = self.B, self.C, self._h0, self.config.decay
            for i, c in sources:
                f = fx[i]
                C[c] += ((f * (T - f)) >> freqs.TOTAL_BITS) - (C[c] >> dec)
                b = B[c] + ((((T if xs[i] == y else 0) - f) << 16) // (C[c] + h0))
                B[c] = BMAX if b > BMAX else -BMAX if b < -BMAX else b
        self.observe(y)

    def observe(self, y: int) -> None:
        """The tables learn token ``y`` (n-gram slots, match, history, context hashes)."""
        cfg = self.config
        shift = 32 - cfg.ngram_bits
        k = 0
        for h, tok, chk, cnt in zip(self._h[: cfg.orders], self.tok, self.chk, self.cnt):
            s = h >> shift
            q = h & 0xFFFF
            if chk[s] != q:
                chk[s] = q
                tok[s] = y
                cnt[s] = 1
            elif tok[s] == y:
                if cnt[s] < 255:
                    cnt[s] += 1
            elif cnt[s] > 1:
                cnt[s] >>= 1
            else:
                tok[s] = y
                cnt[s] = 1
        hmask = (1 << cfg.hist_bits) - 1
        hist = self.hist
        if self.len > 0 and hist[self.ptr & hmask] == y:
            if self.len < 65535:
                self.len += 1
            self.ptr += 1
        else:
            self.len = 0
        n = self.n
        hist[n & hmask] = y
        n = self.n = n + 1
        # context hashes for the next token: h_k = mix(h_(k-1), t[n-k])
        h, hs = 0, []
        for k in range(1, min(self._nh, n) + 1):
            x = ((h ^ (hist[(n - k) & hmask] + 1)) * 0x9E3779B1) & M32
            h = x ^ (x >> 15)
            hs.append(h)
        self._h = hs
        if cfg.match and n >= cfg.match_min:
            j = hs[cfg.match_min - 1] >> (32 - cfg.match_bits)
            mt = self.mt
            p = mt[j]
            if self.len == 0 and p > 0 and n - p <= hmask:
                lim = min(16, p)
                i = 1
                while i <= lim and hist[(p - i) & hmask] == hist[(n - i) & hmask]:
                    i += 1
                if i - 1 >= cfg.match_min:
                    self.len, self.ptr = i - 1, p
            mt[j] = n
        if self.len > 0 and n - self.ptr > hmask:
            self.len = 0


class AdaptiveBatch:
    """``n`` streams side by side (the decoder's lockstep): one call per step for all of them."""

    def __init__(self, states: list[AdaptiveState]) -> None:
        self.states = states

    @classmethod
    def fresh(cls, n: int, config: Config | None = None, primed: AdaptiveState | None = None) -> "AdaptiveBatch":
        """n states: copies of ``primed`` (a state after a context), or new ones."""
        if primed is not None:
            return cls([primed.copy() for _ in range(n)])
        return cls([AdaptiveState(config) for _ in range(n)])

    def adjust(self, L: np.ndarray) -> np.ndarray:
        """Bias ``L`` (k, V) int32 in place (row i for stream i, the first k streams) and return it."""
        out = L
        mx = out.max(axis=1).tolist()
        V = out.shape[1]
        for i, st in enumerate(self.states[: len(out)]):
            row = out[i]
            xs, vals = st.plan(mx[i], row.__getitem__, V)
            for x, v in zip(xs, vals):
                row[x] = v
        return out

    def update(self, ys, cum: np.ndarray) -> None:
        """Learn tokens ``ys`` (one per stream of the last ``adjust``) with those rows' cumulative tables."""
        for st, y, c in zip(self.states, ys, cum):
            st.update(int(y), c)

    def plan(self, rows: np.ndarray) -> list[tuple[list[int], list[int]]]:
        """Per stream (the first k, one row of float logits each): the ids to bias and their biased
        fixed-point logits, for ``freqs.pick`` (the same numbers ``adjust`` writes)."""
        tops = freqs.row_max(rows).tolist()
        V = rows.shape[1]
        return [st.plan(top, lambda x, row=row: freqs.fixed_at(row, x), V)
                for st, row, top in zip(self.states, rows, tops)]

    def learn(self, ys, fx: np.ndarray) -> None:
        """Learn tokens ``ys`` after ``plan``, given the frequencies of the planned ids (``freqs.pick``)."""
        for st, y, f in zip(self.states, ys, fx.tolist()):
            st.update(int(y), fx=f)

    def take(self, k: int) -> None:
        """Keep the first k streams (the others have ended)."""
        del self.states[k:]


def as_logits(L: np.ndarray) -> np.ndarray:
    """Fixed-point logits back to float32 that ``freqs.fixed_logits`` maps to exactly ``L`` (|L| <= 2^24)."""
    return np.asarray(L, dtype=np.float32) / np.float32(freqs.SCALE)


def digest(state: AdaptiveState) -> str:
    """sha256 of every state bit (tests compare states with it)."""
    import hashlib

    h = hashlib.sha256(repr((state.config, state.n, state.ptr, state.len, state._h)).encode())
    for a in (state.hist, state.mt, state.B, state.C, *state.tok, *state.chk, *state.cnt):
        h.update(a.tobytes())
    return h.hexdigest()


def encode_rows(rows, ids, state: AdaptiveState, width: int) -> bytes:
    """Reference encoder of one stream: ``rows`` yields the engine's float logits, one row per id.

    The call sequence the codec follows: fixed-point row -> ``adjust`` -> §3 table of the
    biased row -> code the id -> ``update`` with the id and that table.
    """
    from .rangecoder import Encoder

    enc = Encoder()
    for row, y in zip(rows, ids):
        y = int(y)
        cum = freqs.cumulative(as_logits(state.adjust(freqs.fixed_logits(row))), width)[0]
        enc.encode(int(cum[y]), int(cum[y + 1] - cum[y]), freqs.TOTAL)
        state.update(y, cum)
    return enc.finish()


def decode_streams(datas: list[bytes], counts: list[int], logits_of, batch: AdaptiveBatch, width: int) -> list[list[int]]:
    """Reference lockstep decoder of several streams (longest first, as the codec orders them).

    ``logits_of(step, histories)`` returns the engine's (k, V) float logits for the k active streams.
    """
    from .rangecoder import Decoder

    decs = [Decoder(d) for d in datas]
    out: list[list[int]] = [[] for _ in datas]
    for step in range(counts[0] if counts else 0):
        k = sum(c > step for c in counts)
        batch.take(k)
        L = batch.adjust(freqs.fixed_logits(logits_of(step, out[:k])))
        cum = freqs.cumulative(as_logits(L), width)
        ys = [decs[i].decode(cum[i]) for i in range(k)]
        batch.update(ys, cum)
        for i, y in enumerate(ys):
            out[i].append(y)
    return out
