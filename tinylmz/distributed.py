"""Code a .tlmz stream's blocks on a Dask cluster (``pip install "tinylmz[dask]"``).

Blocks are independent and decode bit-exactly on any machine (DESIGN.md §11), so each
block is a task: the client reads the input, sends its blocks to the workers with at most
``max_in_flight`` of them pending, and writes the results back in order.  The output is
the file ``tinylmz.compress`` writes, byte for byte: the client writes it with the same
``container`` writers, the workers code with the same ``Session.encode_block`` and
``codec.decode_block``, with the Session and header ``api.Compressor`` builds.

    from dask.distributed import Client
    from tinylmz import distributed
    with Client("tcp://scheduler:8786") as client, open("big.txt", "rb") as src, open("big.txt.tlmz", "wb") as dst:
        distributed.compress(client, src, dst)

Workers need tinylmz and the model installed.  Each worker process checks the model file
by sha256 and builds the ``api.Compressor`` (or, to decode, the session ``api.open_reader``
gives) once per stream settings, so the engine loads once; a worker without
the model fails the task with a ``ModelError`` that names the worker, raised again by the
client.  A worker that dies mid-task costs a rerun of its tasks elsewhere (the scheduler
does that, up to ``distributed.scheduler.allowed-failures`` times): coding is
deterministic, so the output does not change.

Many streams share one pipeline (``Pipeline.run`` takes the chained task generators of
``encode_tasks`` / ``decode_tasks``), so the blocks of many small files keep every worker busy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
import threading
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import codec, container
from .errors import EngineMismatch, FormatError, ModelError, TinylmzError

Progress = Callable[[int], None]


class ClusterError(TinylmzError):
    """The cluster could not do the work (scheduler unreachable, a task killed its workers)."""


# --- what a worker needs to know -----------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model by identity: the sha256 decides, the path is where the client saw it (maybe shared)."""

    name: str
    sha256: str
    path: str | None = None


@dataclass(frozen=True)
class Job:
    """What a worker needs to build the ``api.Compressor`` of a stream (sent with every task: small).

    ``options`` are that Compressor's keyword arguments (engine, context, block_size,
    segment_tokens, ...): the worker builds the very object the local path uses, so the
    header and the blocks follow whatever format it writes.
    """

    model: ModelSpec
    options: tuple = ()  # sorted (name, value) pairs
    threads: int | None = None  # kernel threads on the worker (None: its own default)


@dataclass(frozen=True)
class DecodeJob:
    """What a worker needs to decode a stream: its header's bytes and how to find the model."""

    header: bytes
    model: str | None = None  # a path or registry name; None: the registry finds the header's model
    context: bytes | None = None
    force: bool = False  # --force-engine
    threads: int | None = None


def compress_model(model=None) -> ModelSpec:
    """The model to compress with, identified on the client.

    The client needs the file only to hash it.  A registry model that is not installed here is
    fetched like any first use (``registry.resolve``); where that is refused (offline, no index)
    it is named by the registry's sha256, and the workers must have it.
    """
    from . import registry

    try:
        m = registry.resolve(None if model is None else str(model))
        return ModelSpec(m.name, m.sha256, str(m.path))
    except ModelError:
        entry = registry.entries().get(registry.DEFAULT_MODEL if model is None else str(model))
        if entry is None or not entry.sha256:
            raise
        return ModelSpec(entry.name, entry.sha256.lower(), None)


# --- the worker side ---------------------------------------------------------------------

_lock = threading.Lock()  # one block at a time per process: the engine uses all its kernel threads
_cache: dict = {}  # Job/DecodeJob -> Compressor/Session, a few per process


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "this process"


def _local_model(spec: ModelSpec):
    """The worker's file for ``spec``, checked by sha256."""
    from . import registry

    if spec.path and os.path.isfile(spec.path):
        p = Path(spec.path).resolve()
        if registry.file_sha256(p) == spec.sha256:
            return p
    entry = registry.find(spec.sha256)
    if entry is None:
        at = f" (no file with that sha256 at {spec.path})" if spec.path else ""
        raise ModelError(f"model {spec.name} (sha256 {spec.sha256}) is not on this worker{at}: "
                         "install tinylmz and the model on every worker")
    return registry.resolve(entry.name).path  # the registry's message if it is missing or damaged


def _cached(job, build):
    if job.threads is not None:
        from . import kernel

        kernel.set_threads(job.threads)
    if job not in _cache:
        try:
            value = build()
        except (ModelError, EngineMismatch) as e:
            raise type(e)(f"{_where()}: {e}") from None
        if len(_cache) >= 4:
            _cache.pop(next(iter(_cache)))
        _cache[job] = value
    return _cache[job]


def _compressor(job: Job):
    from . import api

    def build():
        c = api.Compressor(io.BytesIO(), model=str(_local_model(job.model)), **dict(job.options))
        c.header.model = {**c.header.model, "name": job.model.name}  # as the client names it
        return c

    return _cached(job, build)


def _decoder(job: DecodeJob):
    from . import api

    def build():
        _, session = api.open_reader(io.BytesIO(job.header), model=job.model, context=job.context, force=job.force)
        return session()  # the model, engine, parameters and start token checked as the local path does

    return _cached(job, build)


def header_task(job: Job) -> container.Header:
    """The header the local path writes for this job (loads the engine)."""
    with _lock:
        return _compressor(job).header


def stream_length_task(job: Job, first: bytes) -> int:
    """The stream length the local path records for a file that starts with block ``first``."""
    with _lock:
        return _compressor(job).stream_length(first)


def encode_task(job: Job, raw: bytes) -> tuple[int, bytes, dict]:
    """(method, payload, the engine params it was coded with) for one block."""
    with _lock:
        c = _compressor(job)
        method, payload = c.session.encode_block(raw)
        return method, payload, c.session.engine.params()


def decode_task(job: DecodeJob, block: container.Block) -> bytes:
    """One model-coded block's bytes, checked against its CRC."""
    with _lock:
        return codec.decode_block(_decoder(job), block)


def ping_task(x=None):
    """A task that does nothing: measures the scheduler round-trip."""
    return x


# --- the client side -----------------------------------------------------------------------


@dataclass
class Task:
    """A step of a stream: ``fn(*args)`` on a worker (or nothing, when ``fn`` is None), then
    ``done(result)`` on the client, in stream order.  ``drain``: finish everything before
    asking for the next task (a stream about to read back what it wrote)."""

    fn: Callable | None = None
    args: tuple = ()
    done: Callable[[object], None] | None = None
    stream: "Stream | None" = None
    drain: bool = False


class Stream:
    """Per-stream failure policy: ``fail(exc)`` returns True when the error ends only this stream."""

    contained: tuple = ()
    failed: BaseException | None = None

    def fail(self, exc: BaseException) -> bool:
        if isinstance(exc, self.contained):
            self.failed = exc
            return True
        return False


class Pipeline:
    """Runs tasks on a Client, ``max_in_flight`` at most, finishing them in submission order."""

    def __init__(self, client, max_in_flight: int | None = None) -> None:
        self.client = client
        if max_in_flight is None:
            max_in_flight = 2 * max(1, sum(client.nthreads().values()))
        self.window = max(1, max_in_flight)
        self._run = uuid.uuid4().hex[:12]
        self._n = 0

    def _submit(self, t: Task):
        self._n += 1
        name = getattr(t.fn, "__name__", "task").replace("_task", "")
        return self.client.submit(t.fn, *t.args, key=f"tinylmz-{name}-{self._run}-{self._n}", pure=False)

    def run(self, tasks: Iterable[Task]) -> None:
        pending: deque = deque()
        remote = 0

        def finish_head() -> None:
            nonlocal remote
            t, fut = pending.popleft()
            if fut is not None:
                remote -= 1
            if t.stream is not None and t.stream.failed is not None:
                if fut is not None:
                    fut.cancel()
                return
            try:
                result = _result(fut) if fut is not None else None
                if t.done is not None:
                    t.done(result)
            except BaseException as e:
                if t.stream is None or not t.stream.fail(e):
                    raise
                for t2, f2 in pending:  # drop the rest of that stream
                    if t2.stream is t.stream and f2 is not None:
                        f2.cancel()

        try:
            for t in tasks:
                if t.stream is not None and t.stream.failed is not None:
                    continue
                pending.append((t, self._submit(t) if t.fn is not None else None))
                remote += t.fn is not None
                while pending and (remote >= self.window or t.drain or pending[0][1] is None):
                    finish_head()
            while pending:
                finish_head()
        finally:
            futures = [f for _, f in pending if f is not None]
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel(futures)


def _result(fut):
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    try:
        return fut.result()
    except KilledWorker as e:  # the scheduler reran it on allowed-failures workers, and each died
        raise ClusterError(f"workers kept dying while running {e.args[0] if e.args else 'a task'}; "
                           "see the workers' logs") from None
    except CommClosedError as e:  # not an OSError of the task itself: those come back as they are
        raise ClusterError(f"lost the connection to the scheduler: {e}") from None


def compress_job(model=None, *, threads: int | None = None, **options) -> Job:
    """The Job for ``api.Compressor(model=model, **options)`` (keyword arguments left out are its defaults)."""
    return Job(compress_model(model), tuple(sorted((k, v) for k, v in options.items() if v is not None)), threads)


def with_option(job: Job, **options) -> Job:
    """``job`` with some of its Compressor options set."""
    merged = {**dict(job.options), **options}
    return dataclasses.replace(job, options=tuple(sorted((k, v) for k, v in merged.items() if v is not None)))


def make_header(client, job: Job) -> container.Header:
    """The header the local path writes for this job, built by a worker (which checks the model)."""
    return _result(client.submit(header_task, job, pure=False))


def _version(header) -> dict:
    """The framing version for the writers, when this container has more than one."""
    v = getattr(header, "version", None)
    return {} if v is None else {"version": v}


def blocks(src, block_size: int) -> Iterator[bytes]:
    """The input cut into blocks exactly as ``api.Compressor`` cuts it (not splitting UTF-8)."""
    buf = bytearray()
    while True:
        chunk = src.read(block_size)
        if not chunk:
            break
        buf += chunk
        while len(buf) > block_size:
            cut = codec.split_point(buf, block_size)
            yield bytes(buf[:cut])
            del buf[:cut]
    if buf:
        yield bytes(buf)


@dataclass
class Totals:
    """What a stream's tasks counted: input bytes and crc32, output bytes."""

    size: int = 0
    crc: int = 0
    written: int = 0
    header: container.Header | None = None  # the header written (its stream length set by the first block)


def encode_tasks(job: Job, header: container.Header, src, out, *, progress: Progress | None = None,
                 stream: Stream | None = None, totals: Totals | None = None) -> Iterator[Task]:
    """Tasks that write ``src`` compressed to ``out``: header, blocks in order, trailer.

    ``job`` and ``header`` are the ones of ``make_header``; where the job leaves the stream length
    to the first block (as the local path does), a worker computes it before the blocks go out,
    and the file's blocks are coded with it (``totals.header`` is the header written)."""
    totals = totals if totals is not None else Totals()
    src_blocks = blocks(src, header.block_size)
    first = next(src_blocks, None)
    if first is not None and len(first) > header.segment_tokens:  # else the header's (Compressor.stream_length)
        got: list = []
        yield Task(stream_length_task, (job, first), got.append, stream, drain=True)
        if stream is not None and stream.failed is not None:
            return
        if got[0] != header.segment_tokens:
            job = with_option(job, segment_tokens=got[0])
            header = dataclasses.replace(header, segment_tokens=got[0])
    totals.header = header
    totals.written += container.write_header(out, header)
    want = header.engine.get("params") or {}
    count = [0]

    def write(raw: bytes, result) -> None:
        method, payload, params = result
        if (params or {}) != want:
            raise EngineMismatch("workers disagree on the engine's parameters (a llama engine on different "
                                 "machines?): use the portable engine on a mixed cluster")
        totals.written += container.write_block(out, method, raw, payload, **_version(header))
        count[0] += 1
        totals.size += len(raw)
        totals.crc = zlib.crc32(raw, totals.crc)
        if progress:
            progress(len(raw))

    for raw in itertools.chain([] if first is None else [first], src_blocks):
        yield Task(encode_task, (job, raw), lambda r, raw=raw: write(raw, r), stream)
        if stream is not None and stream.failed is not None:
            return

    def trailer(_) -> None:
        v = _version(header)
        extra = {**v, "blocks": count[0]} if v else {}
        totals.written += container.write_trailer(out, totals.size, totals.crc, **extra)

    yield Task(None, (), trailer, stream)


def decode_job(header: container.Header, model=None, *, context: bytes | None = None, force: bool = False,
               threads: int | None = None) -> DecodeJob:
    """The DecodeJob for a file with this header (the context is checked here, the model on the workers)."""
    codec.check_context(header, context)
    if model is not None and Path(str(model)).expanduser().is_file():
        model = str(Path(str(model)).expanduser().resolve())  # workers may run elsewhere than here
    raw = io.BytesIO()
    container.write_header(raw, header)
    return DecodeJob(raw.getvalue(), None if model is None else str(model), context or None, force, threads)


def decode_tasks(job: DecodeJob, reader: container.Reader, out=None, *, progress: Progress | None = None,
                 stream: Stream | None = None, totals: Totals | None = None) -> Iterator[Task]:
    """Tasks that decode every block of ``reader`` (model blocks on the workers, lzma and stored
    ones here) and write them to ``out`` in order (or only count them, when ``out`` is None);
    the last one checks the whole-stream checksum."""
    totals = totals if totals is not None else Totals()

    def write(raw: bytes) -> None:
        if out is not None:
            out.write(raw)
            totals.written += len(raw)
        totals.size += len(raw)
        totals.crc = zlib.crc32(raw, totals.crc)
        if progress:
            progress(len(raw))

    for block in reader.blocks():
        if block.method == container.MODEL:
            yield Task(decode_task, (job, block), write, stream)
        else:  # no model needed: not worth a round-trip
            yield Task(None, (), lambda _, block=block: write(codec.decode_block(None, block)), stream)
        if stream is not None and stream.failed is not None:
            return

    def check(_) -> None:
        if reader.trailer != (totals.size, totals.crc):
            raise FormatError("file decodes to the wrong bytes (whole-file checksum mismatch)")

    yield Task(None, (), check, stream)


# --- one stream at a time ------------------------------------------------------------------


def compress(client, src, dst, *, model=None, max_in_flight: int | None = None, threads: int | None = None,
             progress: Progress | None = None, **options) -> Totals:
    """Compress binary file ``src`` into ``dst`` on the cluster: the bytes ``tinylmz.compress`` writes.

    ``options`` are ``tinylmz.compress``'s (engine, context, block_size, segment_tokens, ...);
    ``threads``: kernel threads on every worker.
    """
    job = compress_job(model, threads=threads, **options)
    header = make_header(client, job)
    totals = Totals()
    Pipeline(client, max_in_flight).run(encode_tasks(job, header, src, dst, progress=progress, totals=totals))
    return totals


def decompress(client, src, dst, *, model=None, context: bytes | None = None, force: bool = False,
               max_in_flight: int | None = None, threads: int | None = None,
               progress: Progress | None = None) -> Totals:
    """Decompress .tlmz file ``src`` into ``dst`` on the cluster; raises FormatError on damage."""
    reader = container.Reader(src)
    job = decode_job(reader.header, model, context=context, force=force, threads=threads)
    totals = Totals()
    Pipeline(client, max_in_flight).run(decode_tasks(job, reader, dst, progress=progress, totals=totals))
    return totals


# --- clusters ------------------------------------------------------------------------------


def parse_address(address: str) -> int | None:
    """N for ``local:N``, None for a scheduler address; ValueError for a bad ``local:``."""
    if not address.startswith("local:"):
        return None
    try:
        n = int(address[len("local:"):])
    except ValueError:
        raise ValueError(f"not a worker count: {address!r} (example: local:4)") from None
    if n < 1:
        raise ValueError(f"a local cluster needs at least 1 worker: {address!r}")
    return n


def local_cluster(n: int):
    """A LocalCluster of ``n`` worker processes, one task at a time each, quiet (errors only)."""
    import warnings

    from distributed import LocalCluster

    with warnings.catch_warnings():  # another cluster's HTTP port taken: dask picks another, and says so
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


@contextlib.contextmanager
def connect(address: str, *, timeout: float = 30) -> Iterator:
    """A Client for a scheduler ``address`` (``tcp://host:8786``), or for ``local:N``: a
    LocalCluster of N worker processes on this machine, one task at a time each."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError('running on a cluster needs dask: pip install "tinylmz[dask]"') from None
    n = parse_address(address)
    if n is not None:
        with local_cluster(n) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot reach the scheduler at {address}: {e}") from None
    with client:
        yield client
