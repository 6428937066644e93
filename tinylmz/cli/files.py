"""compress, decompress, test, info: one file, several (like gzip), directories with -r.

Each file is done on its own: an error in one (missing, damaged, output exists) is
reported in one line naming it and the others go on; the exit status is then 1.  A model,
engine or cluster error, or an interruption, stops the run.  With ``--scheduler`` the
blocks of all files go to a Dask cluster (``cluster.py``); here they are coded in-process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from .. import safeio
from ..errors import FormatError
from .common import (COPY_CHUNK, FORCE_HELP, QUIET_HELP, STDOUT_HELP, SUFFIX, Engine, Fail,
                     FileThreads, ProgressBar, Recursive, Scheduler, _cx, bpb, chunks, contained, guard, input_fingerprint,
                     is_stdio, isatty, parse_size, peek_trailer, read_context, report, same_file, say, set_threads,
                     show_progress)

Progress = Optional[Callable[[int], None]]


@dataclass
class Options:
    """What a command was asked, shared by every file it works on."""

    output: Optional[Path] = None
    to_stdout: bool = False
    force: bool = False
    rm: bool = False
    verify: bool = False
    recursive: bool = False
    model: Optional[str] = None
    engine: str = "portable"
    context: Optional[bytes] = None
    block_size: int = 0
    segment_tokens: Optional[int] = None  # None: the API's default
    window: Optional[int] = None
    format_version: Optional[int] = None
    adaptive: Optional[int] = None
    force_engine: bool = False
    threads: Optional[int] = None
    verbose: bool = False
    quiet: bool = False
    many: bool = False  # several files: name the file in every message

    def compressor(self) -> dict:
        """Keyword arguments for ``api.Compressor`` (those not given keep its defaults)."""
        kw = dict(engine=self.engine, context=self.context, block_size=self.block_size,
                  segment_tokens=self.segment_tokens, window=self.window, format_version=self.format_version,
                  adaptive=self.adaptive)
        return {k: v for k, v in kw.items() if v is not None}


def expand(files: Optional[List[Path]], recursive: bool, *, compressed: bool) -> List[Optional[Path]]:
    """The inputs (None: standard input).  With -r a directory stands for the files under it,
    in sorted order: for compress those without the .tlmz suffix, for decompress those with it
    (symbolic links and tinylmz's own temporary files are skipped)."""
    if not files:
        return [None]
    out: List[Optional[Path]] = []
    for f in files:
        if is_stdio(f):
            out.append(None)
        elif recursive and f.is_dir():
            for root, dirs, names in os.walk(f):
                dirs.sort()
                for name in sorted(names):
                    p = Path(root) / name
                    if name.startswith(safeio.TEMP_PREFIX) or p.is_symlink() or not p.is_file():
                        continue
                    if name.endswith(SUFFIX) == compressed:
                        out.append(p)
        else:
            out.append(f)
    if None in out and len(out) > 1:
        raise _cx.UsageError("'-' (standard input) cannot be given with other files")
    return out


def run_files(inputs: List[Optional[Path]], one: Callable[[Optional[Path], Progress], None], opts: Options,
              scheduler: Optional[str], cluster_run: Callable, total: Optional[int], what: str) -> None:
    """Run ``one`` for each input (or ``cluster_run`` for all of them) under one progress bar;
    exit 1 (or the worst status) if any file failed."""
    status = 0
    with ProgressBar(show_progress(opts.quiet), total, what) as bar:
        if scheduler:
            status = cluster_run(scheduler, inputs, opts, bar.callback)
        else:
            for f in inputs:
                try:
                    one(f, opts, bar.callback)
                except Exception as e:
                    if not contained(e):
                        raise
                    status = max(status, report(e, f, opts.many))
    if status:
        raise typer.Exit(status)


def _sizes(inputs: List[Optional[Path]], size_of: Callable[[Path], Optional[int]]) -> Optional[int]:
    total = 0
    for f in inputs:
        n = None if f is None else size_of(f)
        if n is None:
            return None
        total += n
    return total


def _file_size(p: Path) -> Optional[int]:
    try:
        return p.stat().st_size
    except OSError:
        return None


def _open_input(file: Optional[Path]):
    return safeio.stdin_binary() if file is None else open(file, "rb")


# --- compress ------------------------------------------------------------------------------------


def compress_target(file: Optional[Path], opts: Options) -> Optional[Path]:
    """Check an input; its output file (None: standard output)."""
    if file is not None:
        if not file.exists():
            raise FileNotFoundError(2, "No such file or directory", str(file))
        if file.is_dir():
            raise Fail(f"{file} is a directory (use -r for the files in it)")
        if file.name.endswith(SUFFIX) and not opts.force and opts.output is None and not opts.to_stdout:
            raise Fail(f"{file} already has the {SUFFIX} suffix (use -f to compress it anyway)")
    if opts.to_stdout:
        return None
    target = opts.output if opts.output is not None else Path(str(file) + SUFFIX)
    if file is not None and same_file(file, target):
        raise Fail(f"input and output are the same file: {file}")
    return target


class _Counting:
    """Write-through wrapper counting bytes (works for pipes, which cannot tell())."""

    def __init__(self, f) -> None:
        self.f = f
        self.n = 0

    def write(self, b) -> int:
        self.f.write(b)
        self.n += len(b)
        return len(b)


def _compress_stream(src, out, opts: Options, progress: Progress):
    from ..api import Compressor

    size, crc = 0, 0
    sink = _Counting(out)
    with Compressor(sink, model=opts.model, progress=progress, measure=opts.verbose, **opts.compressor()) as comp:
        for chunk in chunks(src, opts.block_size):  # an error or a signal stops the blocks in flight
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
            comp.write(chunk)
    comp.out_size = sink.n
    return comp, size, crc


def _verify(compressed, model_path, context: Optional[bytes], size: int, crc: int, progress: Progress) -> None:
    """Decompress ``compressed`` (a readable, seekable file) and compare with the input's size and crc32."""
    from ..api import iter_decompress

    compressed.seek(0)
    n, c = 0, 0
    for raw in iter_decompress(compressed, model=model_path, context=context, progress=progress):
        n += len(raw)
        c = zlib.crc32(raw, c)
    check_verified(n, c, size, crc)


def check_verified(n: int, c: int, size: int, crc: int) -> None:
    if (n, c) != (size, crc):
        raise FormatError(f"verification failed: the output decodes to {n} bytes (crc {c:08x}), "
                          f"the input has {size} bytes (crc {crc:08x}); nothing was written")


def compress_one(file: Optional[Path], opts: Options, progress: Progress) -> None:
    """Compress one input here (the file ``tinylmz.compress`` makes), atomically."""
    target = compress_target(file, opts)
    src = _open_input(file)
    try:
        before = None if file is None else input_fingerprint(file)
        t0 = time.monotonic()
        if target is not None:
            with safeio.AtomicOutput(target, overwrite=opts.force, copy_stat_from=file) as out:
                comp, size, crc = _compress_stream(src, out, opts, progress)
                if opts.verify:
                    out.flush()
                    with open(out.temp, "rb") as check:
                        _verify(check, comp.session.model.path, opts.context, size, crc, progress)
                if file is not None and input_fingerprint(file) != before:
                    raise Fail(f"{file} changed while it was being compressed; nothing was written")
                out.commit()
                if opts.rm:
                    safeio.remove_input(file)
        else:
            sink = safeio.stdout_binary()
            if opts.verify:  # buffer on disk (not memory), verify, then copy out
                with tempfile.TemporaryFile(prefix=safeio.TEMP_PREFIX) as tmp:
                    comp, size, crc = _compress_stream(src, tmp, opts, progress)
                    _verify(tmp, comp.session.model.path, opts.context, size, crc, progress)
                    copy_out(tmp, sink)
            else:
                comp, size, crc = _compress_stream(src, sink, opts, progress)
            sink.flush()
    finally:
        if file is not None:
            src.close()
    if opts.verbose:
        _report_compress(comp, file, target, size, time.monotonic() - t0, opts.verify)


def copy_out(tmp, sink) -> None:
    tmp.seek(0)
    for b in chunks(tmp, COPY_CHUNK):
        sink.write(b)


def _report_compress(comp, file, target, size, seconds, verified) -> None:
    s = comp.stats
    h = comp.header
    out = comp.out_size
    say(f"{'<stdin>' if file is None else file} -> {'<stdout>' if target is None else target}")
    say(f"  model     {h.model['name']} (sha256 {h.model['sha256'][:16]}…)")
    params = h.engine.get("params") or {}
    say(f"  engine    {h.engine['name']}" + (f" {json.dumps(params, sort_keys=True)}" if params else ""))
    ratio = f"{100 * out / size:.1f}%" if size else "n/a"
    say(f"  size      {size} -> {out} bytes ({ratio}), {bpb(out, size)} bits/byte")
    methods = ", ".join(f"{k} {v}" for k, v in sorted(s.methods.items())) or "none"
    say(f"  blocks    {sum(s.methods.values())} ({methods}), block size {h.block_size}, "
        f"segment {h.segment_tokens} tokens")
    if s.tokens and s.model_bits > 0:
        ce_bytes = s.model_bits / 8
        say(f"  model     {s.tokens} tokens, cross-entropy {s.model_bits / max(s.raw_bytes, 1):.3f} bits/byte "
            f"({ce_bytes:.0f} bytes)")
        if set(s.methods) == {"model"}:
            say(f"  overhead  coder {100 * (s.coded_bytes / ce_bytes - 1):+.2f}%, "
                f"whole file {100 * (out / ce_bytes - 1):+.2f}% over the cross-entropy")
        else:
            say("  overhead  n/a: lzma or stored beat the model on some blocks")
    else:
        say("  model     not used: no block looked like text to it (binary or empty input)")
    say(f"  time      {seconds:.2f} s ({size / max(seconds, 1e-9) / 1024:.1f} KiB/s)"
        + ("; verified" if verified else ""))


def compress_cmd(
    files: Annotated[Optional[List[Path]], typer.Argument(
        metavar="FILE", help="Files to compress, each to FILE.tlmz; '-' or nothing reads standard input and "
        "writes standard output.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="OUT", help="Output file (default: FILE.tlmz; '-' for standard output); "
        "one input only.", show_default=False)] = None,
    stdout: Annotated[bool, typer.Option("--stdout", "-c", help=STDOUT_HELP + "  One input only.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
    rm: Annotated[bool, typer.Option("--rm", help=(
        "Delete each input after its output is complete and verified (implies --verify).")
    )] = False,
    keep: Annotated[bool, typer.Option("--keep", "-k", help="Keep the input (the default; for gzip habits).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help=(
        "Decompress each output and compare it with its input before keeping it.  "
        "Default only with --rm: with the portable engine it doubles the time.")
    )] = False,
    recursive: Recursive = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help="Model: a registry name (see 'tinylmz model list') or a path to a .gguf file.  "
        "Default: smollm2-135m-instruct-q4_1.", show_default=False)] = None,
    engine: Annotated[Engine, typer.Option(
        "--engine", "-e", help="portable: bit-exact on every machine (default).  llama: llama.cpp, one token "
        "per call (slower than portable with its native kernels); files decode only where the same llama.cpp "
        "build and CPU features are found.",
        case_sensitive=False)] = Engine.portable,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help="A file of text the model reads before the data (a dictionary-like primer); "
        "decompressing needs the same file.", show_default=False)] = None,
    block_size: Annotated[str, typer.Option(
        "--block-size", "-B", metavar="SIZE", help="Bytes of input per independent block (e.g. 65536, 64K, 1M; at most 16M).  "
        "Memory use is bounded by it; blocks are what --scheduler spreads over the workers.")] = "64K",
    segment_tokens: Annotated[Optional[int], typer.Option(
        "--segment-tokens", "-s", min=1, metavar="N", show_default=False,
        help="Tokens per independently coded stream inside a block (longer: better compression, slower to "
        "decompress: fewer streams advance side by side).  Default: format 2 cuts the first block into equal streams "
        "of at most 8192 (a 64K block of prose: 3 of 6400) and uses that length throughout; format 1: 2048.")] = None,
    window: Annotated[Optional[int], typer.Option(
        "--window", "-W", min=512, metavar="N", show_default=False,
        help="Format 2: tokens of its stream each token sees (a multiple of 256; default 2048).  Larger: "
        "slightly smaller output, more attention work per token.")] = None,
    format_version: Annotated[Optional[int], typer.Option(
        "--format", min=1, max=2, metavar="1|2", show_default=False,
        help="Format version to write (default 2: sliding windows, adaptive models, compact framing; "
        "1: the first format).  Every version is read.")] = None,
    adaptive: Annotated[Optional[bool], typer.Option(
        "--adaptive/--no-adaptive", show_default=False,
        help="Format 2: in-stream n-gram and match models mixed with the model (default: on).")] = None,
    threads: FileThreads = None,
    scheduler: Scheduler = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Print the model, engine, sizes, bits per byte, the model's cross-entropy and the coding overhead "
        "(stderr; with --scheduler: sizes and time only)."))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Compress each FILE to FILE.tlmz (or standard input to standard output).

    Each output is written to a temporary file next to it and renamed into place only when
    complete; an existing file is never replaced without -f, and inputs are kept unless --rm.
    A file that fails is reported and the others go on (exit status 1).
    """
    bs = parse_size(block_size)
    if rm and keep:
        raise _cx.UsageError("--rm and --keep contradict each other")
    inputs = expand(files, recursive, compressed=False)
    from_stdin = inputs == [None]
    to_stdout = stdout or (output is not None and str(output) == "-") or (from_stdin and output is None)
    if len(inputs) > 1 and (output is not None or stdout):
        raise _cx.UsageError("-o and -c take a single input file")
    if rm and (from_stdin or to_stdout):
        raise _cx.UsageError("--rm needs an input file and an output file (not standard input/output)")
    if output is not None and str(output) != "-" and stdout:
        raise _cx.UsageError("-o and -c contradict each other")
    if to_stdout and not force and isatty(sys.stdout):
        raise Fail("refusing to write compressed data to a terminal (use -c with a redirection, or -f)")
    set_threads(threads)
    opts = Options(output=None if to_stdout else output, to_stdout=to_stdout, force=force, rm=rm,
                   verify=verify or rm, recursive=recursive, model=model, engine=engine.value,
                   context=read_context(context), block_size=bs, segment_tokens=segment_tokens, window=window,
                   format_version=format_version, adaptive=None if adaptive is None else int(adaptive),
                   threads=threads,
                   verbose=verbose, quiet=quiet, many=len(inputs) > 1 or recursive)
    total = _sizes(inputs, _file_size)
    from . import cluster

    run_files(inputs, compress_one, opts, scheduler, cluster.compress_files,
              None if total is None else total * (2 if opts.verify else 1),
              "compressing" + (" and verifying" if opts.verify else ""))


# --- decompress and test ----------------------------------------------------------------------------


def check_input(file: Optional[Path]) -> None:
    if file is not None:
        if not file.exists():
            raise FileNotFoundError(2, "No such file or directory", str(file))
        if file.is_dir():
            raise Fail(f"{file} is a directory (use -r for the files in it)")


def decompress_target(file: Optional[Path], opts: Options) -> Optional[Path]:
    """Check an input; its output file (None: standard output)."""
    check_input(file)
    if opts.to_stdout:
        return None
    if opts.output is not None:
        target = opts.output
    elif file.name.endswith(SUFFIX) and len(file.name) > len(SUFFIX):
        target = file.with_name(file.name[: -len(SUFFIX)])
    else:
        raise Fail(f"{file}: unknown suffix (expected {SUFFIX}); name the output with -o", code=2)
    if file is not None and same_file(file, target):
        raise Fail(f"input and output are the same file: {file}")
    return target


def decompress_one(file: Optional[Path], opts: Options, progress: Progress) -> None:
    from ..api import iter_decompress

    target = decompress_target(file, opts)
    src = _open_input(file)
    t0 = time.monotonic()
    n = 0
    try:
        blocks = iter_decompress(src, model=opts.model, context=opts.context, force=opts.force_engine,
                                 progress=progress)
        if target is not None:
            with safeio.AtomicOutput(target, overwrite=opts.force, copy_stat_from=file) as out:
                for raw in blocks:
                    out.write(raw)
                    n += len(raw)
                out.commit()
                if opts.rm:
                    safeio.remove_input(file)
        else:
            sink = safeio.stdout_binary()
            for raw in blocks:
                sink.write(raw)
                n += len(raw)
            sink.flush()
    finally:
        if file is not None:
            src.close()
    if opts.verbose:
        report_decompress(file, target, n, time.monotonic() - t0)


def report_decompress(file, target, n: int, dt: float) -> None:
    insize = None if file is None else os.path.getsize(file) if file.exists() else None
    say(f"{'<stdin>' if file is None else file} -> {'<stdout>' if target is None else target}: {n} bytes"
        + (f" from {insize} ({bpb(insize, n)} bits/byte)" if insize is not None else "")
        + f", {dt:.2f} s ({n / max(dt, 1e-9) / 1024:.1f} KiB/s)")


def test_one(file: Optional[Path], opts: Options, progress: Progress) -> None:
    from ..api import iter_decompress

    check_input(file)
    src = _open_input(file)
    n = 0
    try:
        for raw in iter_decompress(src, model=opts.model, context=opts.context, force=opts.force_engine,
                                   progress=progress):
            n += len(raw)
    finally:
        if file is not None:
            src.close()
    report_tested(file, n, opts)


def report_tested(file: Optional[Path], n: int, opts: Options) -> None:
    if not opts.quiet:
        print(f"{'<stdin>' if file is None else file}: OK ({n} bytes)")


_MODEL_HELP = "Model file (or registry name) if the one the file names is not in the registry."
_CONTEXT_HELP = "The context file given when compressing."


def decompress_cmd(
    files: Annotated[Optional[List[Path]], typer.Argument(
        metavar="FILE", help=".tlmz files, each to FILE without .tlmz; '-' or nothing reads standard input "
        "and writes standard output.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="OUT", help="Output file (default: FILE without .tlmz; '-' for standard output); "
        "one input only.", show_default=False)] = None,
    stdout: Annotated[bool, typer.Option("--stdout", "-c", help=STDOUT_HELP + "  One input only.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
    rm: Annotated[bool, typer.Option("--rm", help=(
        "Delete each .tlmz file after its output is complete (every block and the whole-file checksum verified)."
    ))] = False,
    keep: Annotated[bool, typer.Option("--keep", "-k", help="Keep the input (the default).")] = False,
    recursive: Recursive = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help=_MODEL_HELP, show_default=False)] = None,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help=_CONTEXT_HELP, show_default=False)] = None,
    force_engine: Annotated[bool, typer.Option("--force-engine", help=(
        "Try to decode llama-engine files even if this machine's llama.cpp fingerprint differs "
        "(may fail with a checksum error; nothing wrong is ever written)."))] = False,
    threads: FileThreads = None,
    scheduler: Scheduler = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print sizes and speed (stderr).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Decompress each FILE.tlmz to FILE (or standard input to standard output).

    Every block and the whole file are checked against their checksums; an output file appears
    only when all of it decoded correctly.  To standard output, data is streamed block by block
    and a damaged block stops the stream with exit status 1.  A file that fails is reported and
    the others go on (exit status 1).
    """
    if rm and keep:
        raise _cx.UsageError("--rm and --keep contradict each other")
    if output is not None and str(output) != "-" and stdout:
        raise _cx.UsageError("-o and -c contradict each other")
    inputs = expand(files, recursive, compressed=True)
    from_stdin = inputs == [None]
    to_stdout = stdout or (output is not None and str(output) == "-") or (from_stdin and output is None)
    if len(inputs) > 1 and (output is not None or stdout):
        raise _cx.UsageError("-o and -c take a single input file")
    if rm and (from_stdin or to_stdout):
        raise _cx.UsageError("--rm needs an input file and an output file (not standard input/output)")
    if from_stdin and not force and isatty(sys.stdin):
        raise Fail("refusing to read compressed data from a terminal (use a redirection, or -f)")
    set_threads(threads)
    opts = Options(output=None if to_stdout else output, to_stdout=to_stdout, force=force, rm=rm,
                   recursive=recursive, model=model, context=read_context(context), force_engine=force_engine,
                   threads=threads, verbose=verbose, quiet=quiet, many=len(inputs) > 1 or recursive)
    from . import cluster

    run_files(inputs, decompress_one, opts, scheduler, cluster.decompress_files, _sizes(inputs, peek_trailer),
              "decompressing")


def test_cmd(
    files: Annotated[List[Path], typer.Argument(
        metavar="FILE", help=".tlmz files ('-' for standard input).", show_default=False)],
    recursive: Recursive = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help=_MODEL_HELP, show_default=False)] = None,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help=_CONTEXT_HELP, show_default=False)] = None,
    force_engine: Annotated[bool, typer.Option("--force-engine", help=(
        "Try llama-engine files even if the llama.cpp fingerprint differs."))] = False,
    threads: FileThreads = None,
    scheduler: Scheduler = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
) -> None:
    """Decode each FILE.tlmz completely and check every checksum; writes nothing."""
    inputs = expand(files, recursive, compressed=True)
    set_threads(threads)
    opts = Options(recursive=recursive, model=model, context=read_context(context), force_engine=force_engine,
                   threads=threads, quiet=quiet, many=len(inputs) > 1 or recursive)
    from . import cluster

    run_files(inputs, test_one, opts, scheduler, cluster.test_files, _sizes(inputs, peek_trailer), "testing")


# --- info --------------------------------------------------------------------------------------------


def _info(path: Path) -> dict:
    """Everything the container says about a file, without the model (blocks are checked, not decoded)."""
    from .. import container

    with open(path, "rb") as f:
        reader = container.Reader(f)
        h = reader.header
        methods: dict[str, int] = {}
        raw_total = 0
        payload_total = 0
        count = 0
        for block in reader.blocks():
            name = container.METHODS[block.method]
            methods[name] = methods.get(name, 0) + 1
            raw_total += block.raw_len
            payload_total += len(block.payload)
            count += 1
        original, crc = reader.trailer
        if original != raw_total:
            raise FormatError(f"trailer says {original} bytes but the blocks hold {raw_total} (file is damaged)")
        size = reader.pos
    return {
        "file": str(path),
        "format_version": reader.version,
        # version 1 names the model and its sha256, version 2 only its id (the sha256's first 8 bytes)
        "model": {"name": h.model.get("name") or _registry_name(h.model["id"]), "sha256": h.model.get("sha256"),
                  "id": h.model.get("id")},
        "engine": {"name": h.engine["name"], "params": h.engine.get("params") or {}},
        "block_size": h.block_size,
        "segment_tokens": h.segment_tokens,
        "window": h.window,
        "adaptive": h.adaptive,
        "context": h.context,
        "compressed_size": size,
        "original_size": original,
        "original_crc32": f"{crc:08x}",
        "ratio": (size / original) if original else None,
        "bits_per_byte": (8 * size / original) if original else None,
        "blocks": {"count": count, "methods": methods, "payload_bytes": payload_total},
    }


def _registry_name(model_id: str) -> Optional[str]:
    """The registry's name for a version 2 model id (the file itself is not needed)."""
    from .. import registry

    entry = registry.find_id(model_id)
    return entry.name if entry else None


def info_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .tlmz file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (one JSON object).")] = False,
) -> None:
    """Show what a .tlmz file holds (model, engine, sizes, blocks); does not need the model."""
    d = _info(file)
    if as_json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return
    ctx = d["context"]
    params = d["engine"]["params"]
    rows = [
        ("file", d["file"]),
        ("format", f"version {d['format_version']}"),
        ("model", d["model"]["name"] or "(not in the registry: pass it with --model PATH)"),
        ("model sha256", d["model"]["sha256"]) if d["model"]["sha256"] else ("model id", d["model"]["id"]),
        ("engine", d["engine"]["name"] + (f" {json.dumps(params, sort_keys=True)}" if params else "")),
        ("block size", f"{d['block_size']} bytes"),
        ("segment", f"{d['segment_tokens']} tokens"
         + (f", window {d['window']}" if d.get("window") else "")
         + (f", adaptive models set {d['adaptive']}" if d.get("adaptive") else "")),
        ("context", "none" if not ctx else f"{ctx['size']} bytes, sha256 {ctx['sha256']}"),
        ("original", f"{d['original_size']} bytes (crc32 {d['original_crc32']})"),
        ("compressed", f"{d['compressed_size']} bytes"
         + (f" ({100 * d['ratio']:.1f}%)" if d["ratio"] is not None else "")),
        ("bits per byte", f"{d['bits_per_byte']:.3f}" if d["bits_per_byte"] is not None else "n/a"),
        ("blocks", f"{d['blocks']['count']} ("
         + (", ".join(f"{k} {v}" for k, v in sorted(d["blocks"]["methods"].items())) or "none") + ")"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


COMMANDS = {"compress": compress_cmd, "decompress": decompress_cmd, "test": test_cmd, "info": info_cmd}
