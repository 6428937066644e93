"""--scheduler: the blocks of every file through one pipeline on a Dask cluster.

The per-file rules are those of the local path (``files.py``): the same checks and
messages, outputs through ``safeio.AtomicOutput`` (committed only when complete, and
verified with --verify/--rm), inputs removed only after that.  What differs is who codes
the blocks: ``tinylmz.distributed`` sends them to the workers, a bounded number at a time,
across file boundaries, so many small files keep every worker busy.  Each file's output is
opened when its first block is sent and committed when its last result is written; an
error in one file aborts only that file's output.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from .. import safeio
from .common import Fail, bpb, contained, input_fingerprint, report, say
from .files import (Options, check_input, check_verified, compress_target, copy_out, decompress_target,
                    report_decompress, report_tested)


class FileStream:
    """One file's resources and failure state (a ``distributed.Stream``)."""

    def __init__(self, file: Optional[Path], opts: Options) -> None:
        self.file = file
        self.opts = opts
        self.failed: Optional[BaseException] = None
        self.status = 0
        self._closers: List[Callable[[], None]] = []

    def fail(self, e: BaseException) -> bool:
        """A file's own error: report it, drop its output, let the others go on."""
        if not contained(e):
            return False
        self.failed = e
        self.close()
        self.status = report(e, self.file, self.opts.many)
        return True

    def hold(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    def guarded(self, tasks: Iterator) -> Iterator:
        """``tasks``, with errors raised while making them handled like errors of their results."""
        try:
            yield from tasks
        except BaseException as e:
            if not self.fail(e):
                raise


def _open(file: Optional[Path], stream: FileStream):
    if file is None:
        return safeio.stdin_binary()
    f = open(file, "rb")
    stream.hold(f.close)
    return f


def _atomic(target: Path, file: Optional[Path], opts: Options, stream: FileStream) -> safeio.AtomicOutput:
    out = safeio.AtomicOutput(target, overwrite=opts.force, copy_stat_from=file)
    out.__enter__()
    stream.hold(out.abort)
    return out


@contextlib.contextmanager
def _client(address: str):
    from .. import distributed

    try:
        local = distributed.parse_address(address)
    except ValueError as e:
        raise Fail(f"--scheduler: {e}", code=2) from None
    with distributed.connect(address) as client:
        yield client, local


def _run(address: str, inputs, opts: Options, make_tasks) -> int:
    """Run every file's tasks through one pipeline; the worst per-file exit status."""
    from .. import distributed

    if not inputs:  # -r on an empty directory: no cluster needed
        return 0
    with _client(address) as (client, local):
        threads = opts.threads if opts.threads is not None else (1 if local is not None else None)
        streams: List[FileStream] = []

        make_tasks.start(client, threads, opts)

        def tasks():
            for f in inputs:
                s = FileStream(f, opts)
                streams.append(s)
                yield from s.guarded(make_tasks(s, f, opts))

        try:
            distributed.Pipeline(client).run(tasks())
        finally:
            for s in streams:
                s.close()
        return max((s.status for s in streams), default=0)


# --- compress ------------------------------------------------------------------------------------


class _Compress:
    def __init__(self, progress) -> None:
        self.progress = progress

    def start(self, client, threads, opts: Options) -> None:
        """One Job and header for all files (made by a worker, as the local path makes them; a file
        whose first block sets another stream length gets its own), and the job that decodes them
        again for --verify."""
        from .. import distributed

        self.threads = threads
        self.job = distributed.compress_job(opts.model, threads=threads, **opts.compressor())
        self.header = distributed.make_header(client, self.job)
        self.check_job = distributed.decode_job(self.header, self.job.model.path or opts.model, context=opts.context,
                                                threads=threads)

    def __call__(self, s: FileStream, file: Optional[Path], opts: Options) -> Iterator:
        from .. import container, distributed
        from ..distributed import Task

        job, header, check_job = self.job, self.header, self.check_job
        target = compress_target(file, opts)
        src = _open(file, s)
        before = None if file is None else input_fingerprint(file)
        t0 = time.monotonic()
        tmp = None
        if target is not None:
            out = _atomic(target, file, opts, s)
        elif opts.verify:  # on disk, not in memory, until verified
            out = tmp = tempfile.TemporaryFile(prefix=safeio.TEMP_PREFIX)
            s.hold(tmp.close)
        else:
            out = safeio.stdout_binary()
        totals = distributed.Totals()
        yield from distributed.encode_tasks(job, header, src, out, progress=self.progress, stream=s, totals=totals)
        if s.failed:
            return
        if opts.verify:
            yield Task(None, (), lambda _: out.flush(), s, drain=True)  # all written: now read it back
            if s.failed:
                return
            if totals.header != header:  # this file's stream length, set by its first block
                check_job = distributed.decode_job(totals.header, self.job.model.path or opts.model,
                                                   context=opts.context, threads=self.threads)
            back = tmp if tmp is not None else open(out.temp, "rb")
            if back is not tmp:
                s.hold(back.close)
            back.seek(0)
            decoded = distributed.Totals()
            yield from distributed.decode_tasks(check_job, container.Reader(back), None, progress=self.progress,
                                                stream=s, totals=decoded)
            yield Task(None, (), lambda _: check_verified(decoded.size, decoded.crc, totals.size, totals.crc), s)

        def finish(_) -> None:
            if file is not None and input_fingerprint(file) != before:
                raise Fail(f"{file} changed while it was being compressed; nothing was written")
            if target is not None:
                out.commit()
                if opts.rm:
                    safeio.remove_input(file)
            else:
                sink = safeio.stdout_binary()
                if tmp is not None:
                    copy_out(tmp, sink)
                sink.flush()
            s.close()
            if opts.verbose:
                dt = time.monotonic() - t0
                size, n = totals.size, totals.written
                ratio = f" ({100 * n / size:.1f}%)" if size else ""
                say(f"{'<stdin>' if file is None else file} -> {'<stdout>' if target is None else target}: "
                    f"{size} -> {n} bytes{ratio}, {bpb(n, size)} bits/byte")
                say(f"  time      {dt:.2f} s ({size / max(dt, 1e-9) / 1024:.1f} KiB/s) on the cluster"
                    + ("; verified" if opts.verify else ""))

        yield Task(None, (), finish, s)


def compress_files(address: str, inputs, opts: Options, progress) -> int:
    return _run(address, inputs, opts, _Compress(progress))


# --- decompress and test ----------------------------------------------------------------------------


class _Decode:
    def __init__(self, progress, write: bool) -> None:
        self.progress = progress
        self.write = write

    def start(self, client, threads, opts: Options) -> None:
        self.threads = threads

    def __call__(self, s: FileStream, file: Optional[Path], opts: Options) -> Iterator:
        from .. import container, distributed
        from ..distributed import Task

        if self.write:
            target = decompress_target(file, opts)
        else:
            check_input(file)
            target = None
        src = _open(file, s)
        t0 = time.monotonic()
        reader = container.Reader(src)
        job = distributed.decode_job(reader.header, opts.model, context=opts.context, force=opts.force_engine,
                                     threads=self.threads)
        out = None
        if self.write:
            out = _atomic(target, file, opts, s) if target is not None else safeio.stdout_binary()
        totals = distributed.Totals()
        yield from distributed.decode_tasks(job, reader, out, progress=self.progress, stream=s, totals=totals)
        if s.failed:
            return

        def finish(_) -> None:
            if not self.write:
                s.close()
                report_tested(file, totals.size, opts)
                return
            if target is not None:
                out.commit()
            else:
                out.flush()
            s.close()
            if target is not None and opts.rm:
                safeio.remove_input(file)
            if opts.verbose:
                report_decompress(file, target, totals.size, time.monotonic() - t0)

        yield Task(None, (), finish, s)


def decompress_files(address: str, inputs, opts: Options, progress) -> int:
    return _run(address, inputs, opts, _Decode(progress, write=True))


def test_files(address: str, inputs, opts: Options, progress) -> int:
    return _run(address, inputs, opts, _Decode(progress, write=False))
