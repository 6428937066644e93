"""Blocks of bytes ⇄ coded blocks: tokens → engine → frequencies → range coder.

A block's tokens are cut into segments of ``segment_tokens``; each segment is
an independent stream that starts from the shared prefix (start token + the
optional context) and is coded on its own.  The decoder advances all streams
of a block in lockstep (one model call per step for up to ``max_streams``
streams).  A block the model cannot beat is stored with lzma or as is.
"""

from __future__ import annotations

import lzma
import threading
import zlib
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import container, freqs
from .container import LZMA, MODEL, STORED, Header, read_varint, varint
from .engine_portable import WINDOW_STEP  # noqa: F401 - the window's unit, for callers
from .errors import FormatError, ModelError, TinylmzError
from .rangecoder import Decoder, Encoder

DEFAULT_ENGINE = "portable"
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_SEGMENT_TOKENS = 2048  # format version 1
# Format version 2 defaults, measured on alice29 (64 KB blocks, no adaptive models): streams of
# 4096 / 8192 / 16384 tokens with a 2048-token window gave 1.117 / 1.108 / 1.116 bits per byte
# (positions past the model's 8192-token training context cost more than the cold starts saved).
V2_SEGMENT_TOKENS = 8192  # tokens per stream ...
V2_WINDOW = 2048  # ... each seeing at most this many tokens of its stream (4096: ~0.8 % smaller, 2x the attention)
BALANCE_SLACK = 3  # percent: later blocks of a file run a little longer in tokens than its first


def stream_length(tokens: int, nominal: int = V2_SEGMENT_TOKENS, window: int | None = V2_WINDOW) -> int:
    """The stream length a format-2 file records when its writer was given none, for a first
    block of ``tokens`` ids.

    ``nominal`` where one stream holds them; else the block cut into as many equal streams as
    ``nominal`` needs (BALANCE_SLACK percent more, rounded up to a window step, at most
    ``nominal``).  A 64 KB block of prose is ~18,000 tokens: 3 streams of 6,400 instead of
    8,192 + 8,192 + 1,600, the same number of cold starts (the same size) and a fifth fewer
    decoder steps, each of which reads the weights once for all its streams.
    """
    if tokens <= nominal:
        return nominal
    n = -(-tokens // nominal)
    seg = -(-tokens * (100 + BALANCE_SLACK) // (100 * n))
    seg = min(nominal, -(-seg // WINDOW_STEP) * WINDOW_STEP)
    return seg if window is None or seg > window else nominal


def _adaptive_default():
    from .adaptive import Config

    return Config()


ADAPTIVE_SETS = {0: None, 1: _adaptive_default}  # header flags >> 1: the adaptive models (FORMAT.md §8)
V2_ADAPTIVE = 1
# Encoder-only shortcut: blocks whose tokenization is mostly single bytes are
# binary; the model cannot help and would take a model call per byte.
MAX_TOKENS_PER_BYTE = 0.6
# Decoder: the key/value cache of the streams advanced together (36,864 positions of SmolLM2-135M's
# int8 cache, ~500 MB): blocks are grouped to fit it.  POSITION_BYTES: one position of that cache,
# for engines that do not say (``position_bytes``).
POSITION_BYTES = 13680
DECODE_BYTES = 36864 * POSITION_BYTES
FREQ_ROWS = 32  # positions turned into frequency tables at once (memory: FREQ_ROWS x V x 8 bytes, a few times)


@dataclass
class Stats:
    """What the encoder saw, for ``-v`` and benchmarks."""

    raw_bytes: int = 0
    tokens: int = 0
    coded_bytes: int = 0  # model-coded payloads only
    model_bits: float = 0.0  # -log2 p of the coded ids under the float softmax (if measured)
    methods: dict = field(default_factory=dict)


def make_engine(name: str, model, *, segment_tokens: int, params: dict | None = None):
    """Build engine ``name`` for a resolved model; ``params`` from a file header when decoding."""
    if name == "portable":
        from .engine_portable import PortableEngine

        return PortableEngine(model.path, model.sha256)
    if name == "llama":
        from .engine_llama import LlamaEngine

        if params is not None:
            return LlamaEngine.from_params(model.path, params)
        return LlamaEngine(model.path, seg_len=segment_tokens)
    raise TinylmzError(f"unknown engine {name!r} (choose portable or llama)")


class Session:
    """One model, one engine, one prefix: codes and decodes blocks."""

    def __init__(self, model, engine, *, segment_tokens: int, context: bytes | None = None,
                 window: int | None = None, adaptive: int = 0) -> None:
        from .tokens import Tokenizer, Vocab

        self.model = model
        self.engine = engine
        self.vocab = Vocab.from_gguf(model.path)
        if self.vocab.n_vocab != engine.n_vocab:
            raise ModelError("the model's vocabulary and its output layer differ in size")
        self.width = self.vocab.n_symbols  # frequency-table width: tokens + missing byte symbols
        # A byte symbol the vocabulary lacks is fed to the model as the start token.
        self._input = np.arange(self.width)
        self._input[self.vocab.n_vocab :] = self.vocab.start_id
        self._tokenizer = None
        self._Tokenizer = Tokenizer
        self.segment_tokens = segment_tokens
        self.window = window  # format version 2: own tokens each token sees (None: the whole stream)
        # keyword only when set: engines without windows (llama) keep their signature
        self._win = {} if window is None else {"window": window}
        self.context = context or b""
        self._prefix = None
        if adaptive not in ADAPTIVE_SETS:
            raise FormatError(f"unknown adaptive-model set {adaptive} (this tinylmz knows {sorted(ADAPTIVE_SETS)})")
        self.adaptive = adaptive  # format version 2: the in-stream adaptive models (0: none)
        self._primed = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._Tokenizer(self.model.path, self.vocab)
        return self._tokenizer

    def prefix_ids(self) -> list[int]:
        ids = self.tokenizer.encode(self.context).tolist() if self.context else []
        return [self.vocab.start_id] + ids

    def adaptive_state(self):
        """A fresh adaptive state for one stream (primed with the context's tokens), or None."""
        if not self.adaptive:
            return None
        if self._primed is None:
            from .adaptive import AdaptiveState

            st = AdaptiveState(ADAPTIVE_SETS[self.adaptive]())
            st.prime(self.prefix_ids()[1:])  # the context's tokens (the start token is every stream's)
            self._primed = st
        return self._primed.copy()

    @property
    def prefix(self):
        if self._prefix is None:
            self._prefix = self.engine.prefill(self.prefix_ids())
        return self._prefix

    # -- encoding ----------------------------------------------------------------------

    def encode_block(self, raw: bytes, stats: Stats | None = None, measure: bool = False,
                     progress: Callable[[int], None] | None = None, ids: np.ndarray | None = None) -> tuple[int, bytes]:
        """(method, payload) for one block, the smallest of model / lzma / stored (``ids``: its
        tokens, where the caller has them already)."""
        return self.submit_block(raw, measure, progress, ids).result(stats)

    def submit_block(self, raw: bytes, measure: bool = False, progress: Callable[[int], None] | None = None,
                     ids: np.ndarray | None = None) -> "PendingBlock":
        """Start coding one block; ``result()`` of what it returns waits for it.

        Its streams queue behind those of blocks submitted before, so the segment workers
        move on to the next block while a block's last stream is still being scored (a 64 KB
        block of prose is 3 streams: on 2 cores, coded one block at a time, its third stream
        ran alone)."""
        best = (STORED, raw)
        packed = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME) if raw else b""
        if len(packed) < len(best[1]):
            best = (LZMA, packed)
        if ids is None:
            ids = self.tokenizer.encode(raw) if raw else np.zeros(0, np.int32)
        if progress:
            progress = _serialized(_per_token(progress, len(raw), len(ids)))
        jobs, stop = [], threading.Event()
        if 0 < len(ids) <= MAX_TOKENS_PER_BYTE * len(raw):
            jobs = self.submit_streams(self.segments(ids), measure, progress, stop)
        elif progress:
            progress(len(ids))
        last = len(ids) - (len(jobs) - 1) * self.segment_tokens if jobs else 0  # the last stream's tokens
        return PendingBlock(raw, best, len(ids) if jobs else 0, jobs, last, stop)

    def segments(self, ids: np.ndarray) -> list[np.ndarray]:
        s = self.segment_tokens
        return [ids[i : i + s] for i in range(0, len(ids), s)]

    def encode_streams(self, segs: list[np.ndarray], measure: bool = False, progress=None) -> tuple[list[bytes], float]:
        """Range-code each segment as its own stream from the prefix; (streams, model bits if measured)."""
        results = [job.result() for job in self.submit_streams(segs, measure, progress)]
        return [r[0] for r in results], sum(r[1] for r in results)

    def submit_streams(self, segs: list[np.ndarray], measure: bool = False, progress=None,
                       stop: threading.Event | None = None) -> list[Future]:
        """Futures of (stream bytes, model bits) for each segment, coded as its own stream from the
        prefix (``stop``, once set, ends the segments being scored at their next chunk).

        Segments are independent, so an engine whose results do not depend on how it is
        called (``batch_invariant``) scores several side by side in the process's segment
        workers, sharing the cores (one each while all are busy); otherwise, or with one
        worker, they are coded here, now.
        """
        if not self.engine.batch_invariant:  # drive it exactly as the decoder will
            streams, bits = self._lockstep(segs, measure, progress)
            return [_done((s, bits if i == 0 else 0.0)) for i, s in enumerate(streams)]
        prefix = self.prefix
        workers = self.engine.segment_workers()
        if workers <= 1:
            return [_done(self._encode_segment(prefix, seg, measure, progress)) for seg in segs]

        def one(seg):
            with self.engine.side_by_side():
                return self._encode_segment(prefix, seg, measure, progress, stop)

        pool = _segment_pool(workers)
        return [pool.submit(one, seg) for seg in segs]

    def _encode_segment(self, prefix, seg: np.ndarray, measure: bool, progress, stop=None) -> tuple[bytes, float]:
        enc, done, bits = Encoder(), 0, 0.0
        state = self.adaptive_state()
        for chunk in self.engine.score(prefix, self._input[seg], reuse=True, **self._win):
            if stop is not None and stop.is_set():
                raise CancelledError
            # frequency tables are (rows x vocabulary) int64: a few rows at a time bounds memory
            for rows in np.array_split(chunk, -(-len(chunk) // FREQ_ROWS)):
                part = seg[done : done + len(rows)]
                if state is None:
                    cum, freq = freqs.symbols(rows, part, self.width)
                    enc.encode_many(cum, freq, freqs.TOTAL)
                else:  # row by row: each row's biases depend on the tokens before it
                    _encode_adaptive(enc, state, rows, part, self.width)
                if measure:
                    bits += freqs.model_bits(rows, part)
                done += len(rows)
                if progress:
                    progress(len(rows))
        return enc.finish(), bits

    def _lockstep(self, segs, measure, progress):
        """Encode segments the way the decoder will decode them (for engines that need it)."""
        streams, bits = [], 0.0
        for g in range(0, len(segs), self.engine.max_streams):
            group = segs[g : g + self.engine.max_streams]
            encs = [Encoder() for _ in group]
            stepper = self.engine.stepper(self.prefix, len(group), **self._win)
            for step in range(len(group[0])):
                active = sum(len(s) > step for s in group)
                logits = stepper.logits()[:active]
                ids = np.array([s[step] for s in group[:active]])
                cum, freq = freqs.symbols(logits, ids, self.width)
                for e, c, f in zip(encs, cum.tolist(), freq.tolist()):
                    e.encode(c, f, freqs.TOTAL)
                if measure:
                    bits += freqs.model_bits(logits, ids)
                if progress:
                    progress(active)
                nxt = sum(len(s) > step + 1 for s in group)
                if nxt:
                    stepper.feed(self._input[ids[:nxt]].tolist())
            streams += [e.finish() for e in encs]
        return streams, bits

    # -- decoding ----------------------------------------------------------------------

    def stream_plan(self, payload: bytes, raw_len: int) -> list[tuple[int, bytes]]:
        """The streams of a model-coded payload: (tokens, coded bytes) each, checked against ``raw_len``."""
        n, pos = read_varint(payload, 0)
        last, pos = read_varint(payload, pos)
        if not 0 < n <= raw_len or not 0 < last <= self.segment_tokens:
            raise FormatError("stream table is damaged")
        sizes = []
        for _ in range(n - 1):
            b, pos = read_varint(payload, pos)
            sizes.append(b)
        rest = len(payload) - pos - sum(sizes)
        if rest < 0 or self.segment_tokens * (n - 1) + last > raw_len:
            raise FormatError("stream table does not match the payload")
        sizes.append(rest)
        plan = []
        for i, b in enumerate(sizes):
            plan.append((self.segment_tokens if i < n - 1 else last, payload[pos : pos + b]))
            pos += b
        return plan

    def decode_payload(self, payload: bytes, raw_len: int, progress=None) -> bytes:
        """Inverse of ``stream_table`` over ``encode_streams``."""
        return self.decode_payloads([(payload, raw_len)], progress)[0]

    def decode_payloads(self, items: list[tuple[bytes, int]], progress=None) -> list[bytes]:
        """Decode several blocks' payloads ((payload, raw_len) each) with their streams side by side.

        All streams of all the blocks join one lockstep (longest first, up to ``max_streams`` per
        model call): a model call costs much the same for 1 stream as for 10, so the more streams
        advance together, the faster; results do not depend on the grouping.
        """
        try:
            plans = [self.stream_plan(p, n) for p, n in items]
            streams = [(t, d) for plan in plans for t, d in plan]
            if progress:
                progress = _per_token(progress, sum(n for _, n in items), sum(t for t, _ in streams))
            order = sorted(range(len(streams)), key=lambda k: -streams[k][0])  # stable: the encoder's order kept
            ids: list = [None] * len(streams)
            g = self.engine.max_streams
            for i in range(0, len(order), g):
                part = order[i : i + g]
                got = self._decode_group([streams[k][1] for k in part], [streams[k][0] for k in part], progress)
                for k, out in zip(part, got):
                    ids[k] = out
        except ValueError as e:
            raise FormatError(f"coded stream is damaged ({e})") from None
        out, k = [], 0
        for plan in plans:
            out.append(self.vocab.decode(np.concatenate(ids[k : k + len(plan)])))
            k += len(plan)
        return out

    def _decode_group(self, datas, counts, progress) -> list[np.ndarray]:
        decs = [Decoder(d) for d in datas]
        out = [np.zeros(c, dtype=np.int64) for c in counts]
        if not counts or counts[0] == 0:
            return out
        stepper = self.engine.stepper(self.prefix, len(datas), **self._win)
        states = None
        if self.adaptive:
            from .adaptive import AdaptiveBatch

            states = AdaptiveBatch([self.adaptive_state() for _ in datas])
        total = freqs.TOTAL
        for step in range(counts[0]):
            active = sum(c > step for c in counts)
            rows = stepper.logits()[:active]
            biases = None
            if states is not None:
                states.take(active)
                biases = states.plan(rows)
            targets = [decs[i].target(total) for i in range(active)]
            ids, cum, freq, fx = freqs.pick(rows, self.width, targets, decode=True, biases=biases)
            ids = ids.tolist()
            for d, c, f in zip(decs, cum.tolist(), freq.tolist()):
                d.consume(c, f)
            if states is not None:
                states.learn(ids, fx)
            for i, t in enumerate(ids):
                out[i][step] = t
            if progress:
                progress(active)
            nxt = sum(c > step + 1 for c in counts)
            if nxt:
                stepper.feed(self._input[ids[:nxt]].tolist())
        return out


def _encode_adaptive(enc: Encoder, state, rows: np.ndarray, ids: np.ndarray, width: int) -> None:
    """Code ``ids`` (one per row of float logits) with the adaptive models' biases, row by row:
    each row's biases depend on what the models learnt from the tokens before it."""
    tops = freqs.row_max(rows).tolist()
    V = rows.shape[1]
    for row, top, y in zip(rows, tops, ids.tolist()):
        xs, vals = state.plan(top, lambda x: freqs.fixed_at(row, x), V)
        _, cum, freq, fx = freqs.pick(row[None], width, [y], biases=[(xs, vals)])
        enc.encode(int(cum[0]), int(freq[0]), freqs.TOTAL)
        state.update(y, fx=fx[0].tolist())


def _per_token(progress: Callable[[int], None], n_bytes: int, n_tokens: int) -> Callable[[int], None]:
    """Turn a bytes-done callback into a tokens-done one (progress bars count input bytes)."""
    done = [0, 0]

    def tick(tokens: int) -> None:
        done[0] += tokens
        b = n_bytes * done[0] // max(n_tokens, 1)
        progress(b - done[1])
        done[1] = b

    return tick


def stream_table(streams: list[bytes], last: int) -> bytes:
    """A model-coded payload: stream count, the last stream's tokens, the bytes of each stream
    but the last, the streams.  Every stream but the last has ``segment_tokens`` tokens and the
    last one's bytes run to the payload's end, so the table holds only what cannot be inferred."""
    out = bytearray(varint(len(streams)) + varint(last))
    for data in streams[:-1]:
        out += varint(len(data))
    for data in streams:
        out += data
    return bytes(out)


class PendingBlock:
    """A block whose streams are being coded (``Session.submit_block``)."""

    def __init__(self, raw: bytes, best: tuple[int, bytes], tokens: int, jobs: list[Future], last: int,
                 stop: threading.Event) -> None:
        self.raw, self._best, self._tokens, self._jobs, self._last, self._stop = raw, best, tokens, jobs, last, stop

    def done(self) -> bool:
        return all(j.done() for j in self._jobs)

    def cancel(self) -> None:
        """Stop coding (after an error: the block will not be written)."""
        self._stop.set()
        for j in self._jobs:
            j.cancel()

    def result(self, stats: Stats | None = None) -> tuple[int, bytes]:
        """(method, payload): the smallest of model / lzma / stored; ``stats`` counts the block."""
        best = self._best
        if self._jobs:
            results = [j.result() for j in self._jobs]
            streams, bits = [r[0] for r in results], sum(r[1] for r in results)
            coded = stream_table(streams, self._last)
            if len(coded) < len(best[1]):
                best = (MODEL, coded)
            if stats is not None:
                stats.tokens += self._tokens
                stats.model_bits += bits
        if stats is not None:
            stats.raw_bytes += len(self.raw)
            stats.methods[container.METHODS[best[0]]] = stats.methods.get(container.METHODS[best[0]], 0) + 1
            if best[0] == MODEL:
                stats.coded_bytes += len(best[1])
        return best


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _segment_pool(workers: int) -> ThreadPoolExecutor:
    """The process's segment workers (one pool for every session: they share the cores)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != workers:
            if _pool is not None:
                _pool[1].shutdown(wait=False)  # its queued segments still run
            _pool = (workers, ThreadPoolExecutor(workers, thread_name_prefix="tinylmz-segment"))
        return _pool[1]


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def _serialized(progress: Callable[[int], None]) -> Callable[[int], None]:
    """``progress`` callable from the segment workers (one at a time)."""
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            progress(n)

    return tick


def decode_block(session: Session | None, block: container.Block, progress=None, raw: bytes | None = None) -> bytes:
    """Decode and verify one block (``session`` may be None for lzma/stored blocks; ``raw``: already decoded)."""
    where = f"block {block.index} (at byte {block.offset})"
    if raw is not None:
        pass
    elif block.method == STORED:
        raw = block.payload
    elif block.method == LZMA:
        try:
            raw = lzma.decompress(block.payload)
        except lzma.LZMAError:
            raise FormatError(f"{where} is damaged (lzma data)") from None
    else:
        raw = session.decode_payload(block.payload, block.raw_len, progress)
    if len(raw) != block.raw_len or zlib.crc32(raw) != block.raw_crc:
        raise FormatError(f"{where} decodes to the wrong bytes (checksum mismatch)")
    return raw


def decode_blocks(session: Session | None, blocks: list[container.Block], progress=None) -> Iterator[bytes]:
    """Decode and verify several blocks, yielding each one's bytes in order.

    Their model-coded streams advance side by side (``Session.decode_payloads``).  If that
    fails, the blocks are decoded again one by one, so every block before the first damaged
    one is still delivered and the error names that block.
    """
    # An engine that is not batch invariant must be called exactly as its encoder was: per block.
    if sum(b.method == MODEL for b in blocks) > 1 and session.engine.batch_invariant:
        model = [b for b in blocks if b.method == MODEL]
        try:
            raws = dict(zip((b.index for b in model),
                            session.decode_payloads([(b.payload, b.raw_len) for b in model], progress)))
            checked = [decode_block(session, b, progress, raw=raws.get(b.index)) for b in blocks]
        except TinylmzError:
            pass  # found below, block by block
        else:
            yield from checked
            return
    for b in blocks:
        yield decode_block(session, b, progress)


def split_point(buf: bytes | bytearray, limit: int) -> int:
    """Largest cut <= limit that does not split a UTF-8 sequence (when one is there)."""
    if len(buf) <= limit:
        return len(buf)
    for cut in range(limit, max(limit - 4, 0), -1):
        if buf[cut] & 0xC0 != 0x80:
            return cut
    return limit


def resolve_for_header(header: Header, model_spec: str | Path | None):
    """Find the model file a header names (by sha256, or by its first 8 bytes in version 2), or the
    one the user gave, and check it."""
    from . import registry

    need, mid = header.model.get("sha256"), header.model["id"]
    entry = registry.find(need) if need else registry.find_id(mid)
    name = header.model.get("name") or (entry.name if entry else None) or "?"
    what = f"model {name} (sha256 {need})" if need else f"model {name} (id {mid})"
    if model_spec is not None:
        model = registry.resolve(str(model_spec))
        if (need and model.sha256 != need) or not model.sha256.startswith(mid):
            raise ModelError(f"file was made with {what}; {model.path} is a different model")
        return model
    if entry is None:
        raise ModelError(f"file was made with {what}, which is not in the registry: pass it with --model PATH")
    return registry.resolve(entry.name)


def context_identity(context: bytes | None) -> dict | None:
    if not context:
        return None
    import hashlib

    return {"sha256": hashlib.sha256(context).hexdigest(), "size": len(context)}


def check_context(header: Header, context: bytes | None) -> None:
    need = header.context
    have = context_identity(context)
    if need is None and have is not None:
        raise TinylmzError("file was made without a context; do not pass --context")
    # version 2 stores the first 8 bytes of the context's sha256
    if need is not None and (have is None or not have["sha256"].startswith(str(need.get("sha256")))):
        raise TinylmzError(
            f"file was made with a context of {need.get('size')} bytes (sha256 {str(need.get('sha256'))[:16]}…): pass the same --context"
        )
