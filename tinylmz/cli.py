"""The ``tinylmz`` command line, with gzip/xz/zstd habits.

    tinylmz compress FILE            # -> FILE.tlmz, FILE kept (unless --rm)
    tinylmz decompress FILE.tlmz     # -> FILE
    cat x | tinylmz compress | tinylmz decompress > y
    tinylmz test FILE.tlmz ; tinylmz info FILE.tlmz [--json] ; tinylmz model list

Exit status: 0 success, 1 error (damaged or foreign data, wrong/missing model,
engine mismatch, I/O error), 2 bad usage, 130 interrupted (Ctrl-C; 128+N for
signal N).  Errors are one line ``tinylmz: error: ...`` on stderr.

Safety (never lose data): outputs are written to a temporary file in the target's
directory and renamed into place only when complete (and fsynced); an existing
file is never replaced without ``-f``; ``--rm`` deletes the input only after
its output is complete and, for compression, verified by decompressing it.
Interrupting (SIGINT, SIGTERM, SIGHUP) leaves no temporary or partial file.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, List, Optional

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx
_EXITS = tuple({typer.Exit, getattr(_cx, "Exit", typer.Exit)})
_ABORTS = tuple({typer.Abort, getattr(_cx, "Abort", typer.Abort)})

from . import __version__, safeio
from .errors import FormatError, TinylmzError

# codec.DEFAULT_SEGMENT_TOKENS, repeated so that --help needs no numpy (a test keeps them equal)
DEFAULT_SEGMENT_TOKENS = 2048

SUFFIX = ".tlmz"
COPY_CHUNK = 1 << 20

app = typer.Typer(
    name="tinylmz",
    help="Lossless compression with a small language model and a range coder.\n\n"
    "Files are compressed with a GGUF model (default: smollm2-135m-instruct-q4_1); "
    "decompressing needs the same model file.  Blocks the model cannot shrink fall back to lzma or are stored, "
    "so output is never more than a few hundred bytes larger than the input.",
    epilog="Exit status: 0 ok, 1 error (bad data, model, engine or I/O), 2 bad usage, 130 interrupted.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
model_app = typer.Typer(help="List, locate, download and verify models.", no_args_is_help=True,
                        rich_markup_mode=None, pretty_exceptions_enable=False)
app.add_typer(model_app, name="model")


class Engine(str, Enum):
    portable = "portable"
    llama = "llama"


def _err(msg: str) -> None:
    msg = " ".join(str(msg).split())  # always one line
    try:
        print(f"tinylmz: error: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _os_message(e: OSError) -> str:
    if isinstance(e, safeio.OutputExists):
        return e.strerror or str(e)
    what = e.strerror or str(e) or type(e).__name__
    if e.filename is not None:
        return f"{e.filename}: {what}"
    return what


class _Fail(Exception):
    """A user-facing error raised by the CLI itself (exit status ``code``)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def _guard(fn: Callable) -> Callable:
    """Turn every expected failure of a command into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (*_EXITS, *_ABORTS, _cx.ClickException):
            raise
        except _Fail as e:
            _err(str(e))
            raise typer.Exit(e.code) from None
        except TinylmzError as e:
            _err(str(e) or type(e).__name__)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _err("interrupted; no output written")
            raise typer.Exit(130) from None
        except safeio.Interrupted as e:
            _err(f"terminated by signal {e.signum}; no output written")
            raise typer.Exit(128 + e.signum) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(141) from None
        except OSError as e:
            _err(_os_message(e))
            raise typer.Exit(1) from None
        except MemoryError:
            _err("out of memory")
            raise typer.Exit(1) from None
        except Exception as e:  # a bug: still one line, unless debugging
            if os.environ.get("TINYLMZ_DEBUG"):
                raise
            _err(f"internal error: {type(e).__name__}: {e} (set TINYLMZ_DEBUG=1 for a traceback)")
            raise typer.Exit(1) from None

    return wrapper


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------
# helpers


def _parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64KiB``, ``1M`` -> bytes (binary multiples)."""
    t = text.strip().upper().replace("IB", "").rstrip("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        n = int(t) * mult
    except ValueError:
        raise typer.BadParameter(f"not a size: {text!r} (examples: 65536, 64K, 1M)", param_hint="--block-size") from None
    from .container import MAX_BLOCK

    if not 0 < n <= MAX_BLOCK:
        raise typer.BadParameter(f"must be between 1 and {MAX_BLOCK} bytes (16M)", param_hint="--block-size")
    return n


def _is_stdio(p: Optional[Path]) -> bool:
    return p is None or str(p) == "-"


def _read_context(path: Optional[Path]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class _ProgressBar:
    """A rich progress bar on stderr (only on a terminal and without -q); ``callback`` or None."""

    def __init__(self, enabled: bool, total: Optional[int], description: str) -> None:
        self.enabled = enabled
        self.total = total
        self.description = description
        self._progress = None
        self._task = None

    def __enter__(self) -> "_ProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    @property
    def callback(self) -> Optional[Callable[[int], None]]:
        if self._progress is None:
            return None
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _show_progress(quiet: bool) -> bool:
    try:
        return not quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _chunks(f, size: int) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


def _peek_trailer(path: Path) -> Optional[int]:
    """The original size from a .tlmz file's trailer (for the progress bar), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 17:
                return None
            f.seek(-17, os.SEEK_END)
            t = f.read(17)
    except OSError:
        return None
    if t[0] != 0 or zlib.crc32(t[:13]) != struct.unpack("<I", t[13:])[0]:
        return None
    return struct.unpack("<Q", t[1:9])[0]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _input_fingerprint(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _verify(compressed, model_path, context: Optional[bytes], size: int, crc: int, show: bool) -> None:
    """Decompress ``compressed`` (a readable, seekable file) and compare with the input's size and crc32."""
    from .api import iter_decompress

    compressed.seek(0)
    n, c = 0, 0
    with _ProgressBar(show, size, "verifying") as bar:
        for raw in iter_decompress(compressed, model=model_path, context=context, progress=bar.callback):
            n += len(raw)
            c = zlib.crc32(raw, c)
    if (n, c) != (size, crc):
        raise FormatError(f"verification failed: the output decodes to {n} bytes (crc {c:08x}), "
                          f"the input has {size} bytes (crc {crc:08x}); nothing was written")


def _bpb(coded: int, raw: int) -> str:
    return f"{8 * coded / raw:.3f}" if raw else "n/a"


# ---------------------------------------------------------------------------------------
# commands


def _version_callback(value: bool) -> None:
    if value:
        print(f"tinylmz {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Lossless compression with a small language model and a range coder."""


_FORCE_HELP = "Overwrite existing output files (and allow terminal output)."
_STDOUT_HELP = "Write to standard output; keep the input (implied when reading standard input)."
_QUIET_HELP = "No progress bar and no messages except errors."


@app.command("compress")
@_guard
def compress_cmd(
    file: Annotated[Optional[Path], typer.Argument(
        metavar="FILE", help="File to compress; '-' or nothing reads standard input and writes standard output.",
        show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="OUT", help="Output file (default: FILE.tlmz; '-' for standard output).",
        show_default=False)] = None,
    stdout: Annotated[bool, typer.Option("--stdout", "-c", help=_STDOUT_HELP)] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=_FORCE_HELP)] = False,
    rm: Annotated[bool, typer.Option("--rm", help=(
        "Delete the input after the output is complete and verified (implies --verify).")
    )] = False,
    keep: Annotated[bool, typer.Option("--keep", "-k", help="Keep the input (the default; for gzip habits).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help=(
        "Decompress the output and compare it with the input before keeping it.  "
        "Default only with --rm: with the portable engine it doubles the time.")
    )] = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help="Model: a registry name (see 'tinylmz model list') or a path to a .gguf file.  "
        "Default: smollm2-135m-instruct-q4_1.", show_default=False)] = None,
    engine: Annotated[Engine, typer.Option(
        "--engine", "-e", help="portable: bit-exact on every machine (default).  llama: llama.cpp, faster, "
        "but files decode only where the same llama.cpp build and CPU features are found.",
        case_sensitive=False)] = Engine.portable,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help="A file of text the model reads before the data (a dictionary-like primer); "
        "decompressing needs the same file.", show_default=False)] = None,
    block_size: Annotated[str, typer.Option(
        "--block-size", "-B", metavar="SIZE", help="Bytes of input per independent block (e.g. 65536, 64K, 1M; at most 16M).  "
        "Memory use is bounded by it.")] = "64K",
    segment_tokens: Annotated[int, typer.Option(
        "--segment-tokens", "-s", min=1, metavar="N", help="Tokens per independently coded stream inside a block "
        "(longer: better compression, slower).")] = DEFAULT_SEGMENT_TOKENS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Print the model, engine, sizes, bits per byte, the model's cross-entropy and the coding overhead "
        "(stderr)."))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_QUIET_HELP)] = False,
) -> None:
    """Compress FILE to FILE.tlmz (or standard input to standard output).

    The output is written to a temporary file next to it and renamed into place only when
    complete; an existing file is never replaced without -f, and the input is kept unless --rm.
    """
    from . import container

    bs = _parse_size(block_size)
    if rm and keep:
        raise _cx.UsageError("--rm and --keep contradict each other")
    from_stdin = _is_stdio(file)
    to_stdout = stdout or (output is not None and str(output) == "-") or (from_stdin and output is None)
    if rm and (from_stdin or to_stdout):
        raise _cx.UsageError("--rm needs an input file and an output file (not standard input/output)")
    if output is not None and str(output) != "-" and stdout:
        raise _cx.UsageError("-o and -c contradict each other")
    verify = verify or rm
    show = _show_progress(quiet)

    if not from_stdin:
        if not file.exists():
            raise FileNotFoundError(2, "No such file or directory", str(file))
        if file.is_dir():
            raise _Fail(f"{file} is a directory")
        if file.name.endswith(SUFFIX) and not force and output is None and not to_stdout:
            raise _Fail(f"{file} already has the {SUFFIX} suffix (use -f to compress it anyway)")
    if to_stdout and not force and _isatty(sys.stdout):
        raise _Fail("refusing to write compressed data to a terminal (use -c with a redirection, or -f)")
    target = None if to_stdout else (output if output is not None else Path(str(file) + SUFFIX))
    if target is not None and not from_stdin and _same_file(file, target):
        raise _Fail(f"input and output are the same file: {file}")
    ctx = _read_context(context)

    src = safeio.stdin_binary() if from_stdin else open(file, "rb")
    try:
        before = None if from_stdin else _input_fingerprint(file)
        total = None if from_stdin else before[0]
        t0 = time.monotonic()
        if target is not None:
            with safeio.AtomicOutput(target, overwrite=force, copy_stat_from=None if from_stdin else file) as out:
                comp, size, crc = _compress_stream(src, out, model, engine.value, ctx, bs, segment_tokens,
                                                   verbose, show, total)
                if verify:
                    out.flush()
                    with open(out.temp, "rb") as check:
                        _verify(check, comp.session.model.path, ctx, size, crc, show)
                if not from_stdin and _input_fingerprint(file) != before:
                    raise _Fail(f"{file} changed while it was being compressed; nothing was written")
                out.commit()
                if rm:
                    safeio.remove_input(file)
        else:
            sink = safeio.stdout_binary()
            if verify:  # buffer on disk (not memory), verify, then copy out
                with tempfile.TemporaryFile(prefix=safeio.TEMP_PREFIX) as tmp:
                    comp, size, crc = _compress_stream(src, tmp, model, engine.value, ctx, bs, segment_tokens,
                                                       verbose, show, total)
                    _verify(tmp, comp.session.model.path, ctx, size, crc, show)
                    tmp.seek(0)
                    for b in _chunks(tmp, COPY_CHUNK):
                        sink.write(b)
            else:
                comp, size, crc = _compress_stream(src, sink, model, engine.value, ctx, bs, segment_tokens,
                                                   verbose, show, total)
            sink.flush()
    finally:
        if not from_stdin:
            src.close()
    if verbose:
        _report_compress(comp, file, target, size, time.monotonic() - t0, verify, container)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Counting:
    """Write-through wrapper counting bytes (works for pipes, which cannot tell())."""

    def __init__(self, f) -> None:
        self.f = f
        self.n = 0

    def write(self, b) -> int:
        self.f.write(b)
        self.n += len(b)
        return len(b)


def _compress_stream(src, out, model, engine, ctx, block_size, segment_tokens, measure, show, total):
    from .api import Compressor

    size, crc = 0, 0
    sink = _Counting(out)
    with _ProgressBar(show, total, "compressing") as bar:
        comp = Compressor(sink, model=model, engine=engine, context=ctx, block_size=block_size,
                          segment_tokens=segment_tokens, progress=bar.callback, measure=measure)
        for chunk in _chunks(src, block_size):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
            comp.write(chunk)
        comp.close()
    comp.out_size = sink.n
    return comp, size, crc


def _report_compress(comp, file, target, size, seconds, verified, container) -> None:
    s = comp.stats
    h = comp.header
    out = comp.out_size
    src = "<stdin>" if file is None or str(file) == "-" else str(file)
    dst = "<stdout>" if target is None else str(target)
    _say(f"{src} -> {dst}")
    _say(f"  model     {h.model['name']} (sha256 {h.model['sha256'][:16]}…)")
    params = h.engine.get("params") or {}
    _say(f"  engine    {h.engine['name']}" + (f" {json.dumps(params, sort_keys=True)}" if params else ""))
    ratio = f"{100 * out / size:.1f}%" if size else "n/a"
    _say(f"  size      {size} -> {out} bytes ({ratio}), {_bpb(out, size)} bits/byte")
    methods = ", ".join(f"{k} {v}" for k, v in sorted(s.methods.items())) or "none"
    _say(f"  blocks    {sum(s.methods.values())} ({methods}), block size {h.block_size}, "
         f"segment {h.segment_tokens} tokens")
    if s.tokens and s.model_bits > 0:
        ce_bytes = s.model_bits / 8
        _say(f"  model     {s.tokens} tokens, cross-entropy {s.model_bits / max(s.raw_bytes, 1):.3f} bits/byte "
             f"({ce_bytes:.0f} bytes)")
        if set(s.methods) == {"model"}:
            _say(f"  overhead  coder {100 * (s.coded_bytes / ce_bytes - 1):+.2f}%, "
                 f"whole file {100 * (out / ce_bytes - 1):+.2f}% over the cross-entropy")
        else:
            _say("  overhead  n/a: lzma or stored beat the model on some blocks")
    else:
        _say("  model     not used: no block looked like text to it (binary or empty input)")
    _say(f"  time      {seconds:.2f} s ({size / max(seconds, 1e-9) / 1024:.1f} KiB/s)"
         + ("; verified" if verified else ""))


@app.command("decompress")
@_guard
def decompress_cmd(
    file: Annotated[Optional[Path], typer.Argument(
        metavar="FILE", help="A .tlmz file; '-' or nothing reads standard input and writes standard output.",
        show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="OUT", help="Output file (default: FILE without .tlmz; '-' for standard output).",
        show_default=False)] = None,
    stdout: Annotated[bool, typer.Option("--stdout", "-c", help=_STDOUT_HELP)] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=_FORCE_HELP)] = False,
    rm: Annotated[bool, typer.Option("--rm", help=(
        "Delete the .tlmz file after the output is complete (every block and the whole-file checksum verified)."
    ))] = False,
    keep: Annotated[bool, typer.Option("--keep", "-k", help="Keep the input (the default).")] = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help="Model file (or registry name) if the one the file names is not in the registry.",
        show_default=False)] = None,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help="The context file given when compressing.", show_default=False)] = None,
    force_engine: Annotated[bool, typer.Option("--force-engine", help=(
        "Try to decode llama-engine files even if this machine's llama.cpp fingerprint differs "
        "(may fail with a checksum error; nothing wrong is ever written)."))] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print sizes and speed (stderr).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_QUIET_HELP)] = False,
) -> None:
    """Decompress FILE.tlmz to FILE (or standard input to standard output).

    Every block and the whole file are checked against their checksums; the output file appears
    only when all of it decoded correctly.  To standard output, data is streamed block by block
    and a damaged block stops the stream with exit status 1.
    """
    from .api import iter_decompress

    if rm and keep:
        raise _cx.UsageError("--rm and --keep contradict each other")
    if output is not None and str(output) != "-" and stdout:
        raise _cx.UsageError("-o and -c contradict each other")
    from_stdin = _is_stdio(file)
    to_stdout = stdout or (output is not None and str(output) == "-") or (from_stdin and output is None)
    if rm and (from_stdin or to_stdout):
        raise _cx.UsageError("--rm needs an input file and an output file (not standard input/output)")
    if from_stdin and not force and _isatty(sys.stdin):
        raise _Fail("refusing to read compressed data from a terminal (use a redirection, or -f)")
    target = None
    if not from_stdin:
        if not file.exists():
            raise FileNotFoundError(2, "No such file or directory", str(file))
        if file.is_dir():
            raise _Fail(f"{file} is a directory")
    if not to_stdout:
        if output is not None:
            target = output
        elif file.name.endswith(SUFFIX) and len(file.name) > len(SUFFIX):
            target = file.with_name(file.name[: -len(SUFFIX)])
        else:
            raise _cx.UsageError(f"{file}: unknown suffix (expected {SUFFIX}); name the output with -o")
        if not from_stdin and _same_file(file, target):
            raise _Fail(f"input and output are the same file: {file}")
    ctx = _read_context(context)
    show = _show_progress(quiet)
    total = None if from_stdin else _peek_trailer(file)
    src = safeio.stdin_binary() if from_stdin else open(file, "rb")
    t0 = time.monotonic()
    n = 0
    try:
        with _ProgressBar(show, total, "decompressing") as bar:
            blocks = iter_decompress(src, model=model, context=ctx, force=force_engine, progress=bar.callback)
            if target is not None:
                with safeio.AtomicOutput(target, overwrite=force,
                                         copy_stat_from=None if from_stdin else file) as out:
                    for raw in blocks:
                        out.write(raw)
                        n += len(raw)
                    out.commit()
                    if rm:
                        safeio.remove_input(file)
            else:
                sink = safeio.stdout_binary()
                for raw in blocks:
                    sink.write(raw)
                    n += len(raw)
                sink.flush()
    finally:
        if not from_stdin:
            src.close()
    if verbose:
        dt = time.monotonic() - t0
        insize = None if from_stdin else os.path.getsize(file) if file.exists() else None
        _say(f"{'<stdin>' if from_stdin else file} -> {'<stdout>' if target is None else target}: {n} bytes"
             + (f" from {insize} ({_bpb(insize, n)} bits/byte)" if insize is not None else "")
             + f", {dt:.2f} s ({n / max(dt, 1e-9) / 1024:.1f} KiB/s)")


@app.command("test")
@_guard
def test_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .tlmz file ('-' for standard input).", show_default=False)],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|PATH", help="Model file (or registry name) if the one the file names is not in the registry.",
        show_default=False)] = None,
    context: Annotated[Optional[Path], typer.Option(
        "--context", metavar="FILE", help="The context file given when compressing.", show_default=False)] = None,
    force_engine: Annotated[bool, typer.Option("--force-engine", help=(
        "Try llama-engine files even if the llama.cpp fingerprint differs."))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
) -> None:
    """Decode FILE.tlmz completely and check every checksum; writes nothing."""
    from .api import iter_decompress

    from_stdin = _is_stdio(file)
    ctx = _read_context(context)
    show = _show_progress(quiet)
    src = safeio.stdin_binary() if from_stdin else open(file, "rb")
    n = 0
    try:
        with _ProgressBar(show, None if from_stdin else _peek_trailer(file), "testing") as bar:
            for raw in iter_decompress(src, model=model, context=ctx, force=force_engine, progress=bar.callback):
                n += len(raw)
    finally:
        if not from_stdin:
            src.close()
    if not quiet:
        print(f"{'<stdin>' if from_stdin else file}: OK ({n} bytes)")


def _info(path: Path) -> dict:
    """Everything the container says about a file, without the model (blocks are checked, not decoded)."""
    from . import container

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
        "model": {"name": h.model["name"], "sha256": h.model["sha256"]},
        "engine": {"name": h.engine["name"], "params": h.engine.get("params") or {}},
        "block_size": h.block_size,
        "segment_tokens": h.segment_tokens,
        "context": h.context,
        "compressed_size": size,
        "original_size": original,
        "original_crc32": f"{crc:08x}",
        "ratio": (size / original) if original else None,
        "bits_per_byte": (8 * size / original) if original else None,
        "blocks": {"count": count, "methods": methods, "payload_bytes": payload_total},
    }


@app.command("info")
@_guard
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
        ("model", d["model"]["name"]),
        ("model sha256", d["model"]["sha256"]),
        ("engine", d["engine"]["name"] + (f" {json.dumps(params, sort_keys=True)}" if params else "")),
        ("block size", f"{d['block_size']} bytes"),
        ("segment", f"{d['segment_tokens']} tokens"),
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


# --- models ------------------------------------------------------------------------------


def _installed_path(entry) -> Optional[Path]:
    from . import registry

    try:
        return registry._entry_path(entry)
    except TinylmzError:
        return None


def _human(n: int) -> str:
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@model_app.command("list")
@_guard
def model_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the models tinylmz knows by name, and whether each is installed."""
    from . import registry

    rows = []
    for e in registry.entries().values():
        p = _installed_path(e)
        rows.append({"name": e.name, "source": e.source, "size": e.size, "installed": p is not None,
                     "path": str(p) if p else None, "default": e.name == registry.DEFAULT_MODEL,
                     "description": e.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = [("NAME", "SOURCE", "SIZE", "INSTALLED", "DESCRIPTION")]
    for r in rows:
        table.append((r["name"] + (" (default)" if r["default"] else ""), r["source"], _human(r["size"]),
                      "yes" if r["installed"] else "no", r["description"]))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])


@model_app.command("path")
@_guard
def model_path(
    name: Annotated[Optional[str], typer.Argument(help="Registry name (default: the default model).",
                                                  show_default=False)] = None,
) -> None:
    """Print where a model file is (it must be installed; its sha256 is checked)."""
    from . import registry

    print(registry.resolve(name).path)


@model_app.command("pull")
@_guard
def model_pull(
    name: Annotated[str, typer.Argument(help="Registry name (see 'tinylmz model list').", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No download progress.")] = False,
) -> None:
    """Download a model from its source into the cache and verify it."""
    from . import registry

    print(registry.pull(name, progress=not quiet))


@model_app.command("verify")
@_guard
def model_verify(
    spec: Annotated[Optional[str], typer.Argument(help="Registry name or path to a .gguf (default: the default "
                                                       "model).", show_default=False)] = None,
) -> None:
    """Re-hash a model file and check it against the registry."""
    from . import registry

    m = registry.verify(spec)
    print(f"{m.name}: OK sha256 {m.sha256} ({m.size} bytes) {m.path}")


# ---------------------------------------------------------------------------------------


records_app = typer.Typer(help="Record logs: one independently decodable frame per line, against a shared context.",
                          no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)
app.add_typer(records_app, name="records")

_CTX_HELP = "A file of typical records (a header line and samples) that the model reads before every record."


def _records_io(file: Optional[Path], output: Optional[Path], force: bool):
    """(input binary file, output context manager) for the records commands: stdin/stdout or atomic files."""
    import contextlib

    src = sys.stdin.buffer if _is_stdio(file) else open(file, "rb")
    if _is_stdio(output):
        return src, contextlib.nullcontext(sys.stdout.buffer)
    return src, safeio.AtomicOutput(output, overwrite=force)


@records_app.command("compress")
@_guard
def records_compress_cmd(
    file: Optional[Path] = typer.Argument(None, help="Log to compress ('-' or nothing: standard input)."),
    context: Path = typer.Option(..., "--context", help=_CTX_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .tlmzr file (default: standard output)."),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite an existing output file."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Registry name or .gguf path."),
    engine: Engine = typer.Option(Engine.portable, "-e", "--engine", help="portable (default) or llama."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Compress a log, one frame per line, with an index for reading single records (`records get`)."""
    from . import records

    codec = records.RecordCodec(_read_context(context), model=model, engine=engine.value)
    src, out_cm = _records_io(file, output, force)
    with src, out_cm as out, _ProgressBar(_show_progress(quiet), None, "records") as bar:
        stats = records.write_log(_chunks(src, COPY_CHUNK), out, codec, progress=bar.callback)
        if hasattr(out, "commit"):
            out.commit()
    if not quiet:
        _say(f"{stats['records']} records, {stats['raw_bytes']} -> {stats['log_bytes']} bytes "
             f"({stats['frame_bytes'] / max(stats['records'], 1):.1f} bytes per frame)")


@records_app.command("decompress")
@_guard
def records_decompress_cmd(
    file: Path = typer.Argument(..., help="A .tlmzr record log."),
    context: Path = typer.Option(..., "--context", help="The context file given when compressing."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: standard output)."),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite an existing output file."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model file if not in the registry."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Decode every record of a log (many frames per model call) and check the whole-log checksum."""
    from . import records

    with open(file, "rb") as f:
        codec = records.codec_for_log(f, _read_context(context), model=model)
        _, out_cm = _records_io(None, output, force)
        with out_cm as out, _ProgressBar(_show_progress(quiet), None, "records") as bar:
            for line in records.read_log(f, codec, progress=bar.callback):
                out.write(line)
            if hasattr(out, "commit"):
                out.commit()


@records_app.command("get")
@_guard
def records_get_cmd(
    file: Path = typer.Argument(..., help="A .tlmzr record log."),
    n: int = typer.Argument(..., help="Record number, from 0."),
    context: Path = typer.Option(..., "--context", help="The context file given when compressing."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model file if not in the registry."),
) -> None:
    """Print record N alone (decodes only that frame, found through the index)."""
    from . import records

    with open(file, "rb") as f:
        codec = records.codec_for_log(f, _read_context(context), model=model)
        sys.stdout.buffer.write(records.read_record(f, codec, n))


def run(argv: Optional[List[str]] = None, *, install_signals: bool = True) -> int:
    """Run the command line; returns the exit status (never raises for expected errors)."""
    if install_signals:
        safeio.install_signal_handlers()
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="tinylmz", standalone_mode=False)
    except _cx.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `tinylmz` / `tinylmz model`: show the help
            e.show()
            return 2
        hint = ""
        if e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        _err(e.format_message() + hint)
        return 2
    except _cx.ClickException as e:
        _err(e.format_message())
        return e.exit_code
    except _ABORTS:
        _err("interrupted")
        return 130
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except safeio.Interrupted as e:
        _err(f"terminated by signal {e.signum}")
        return 128 + e.signum
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except OSError as e:
        _err(_os_message(e))
        return 1
    return rv if isinstance(rv, int) else 0


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point (``tinylmz``)."""
    code = run(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    except (OSError, ValueError):
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
