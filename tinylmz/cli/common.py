"""What every command shares: one-line errors and exit codes, sizes, progress, I/O helpers."""

from __future__ import annotations

import functools
import os
import struct
import sys
import zlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx
_EXITS = tuple({typer.Exit, getattr(_cx, "Exit", typer.Exit)})
_ABORTS = tuple({typer.Abort, getattr(_cx, "Abort", typer.Abort)})

from .. import safeio
from ..errors import EngineMismatch, FormatError, ModelError, TinylmzError

# codec.DEFAULT_SEGMENT_TOKENS, repeated so that --help needs no numpy (a test keeps them equal)
DEFAULT_SEGMENT_TOKENS = 2048

SUFFIX = ".tlmz"
COPY_CHUNK = 1 << 20

class Engine(str, Enum):
    portable = "portable"
    llama = "llama"


def err(msg: str) -> None:
    msg = " ".join(str(msg).split())  # always one line
    try:
        print(f"tinylmz: error: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def os_message(e: OSError) -> str:
    if isinstance(e, safeio.OutputExists):
        return e.strerror or str(e)
    what = e.strerror or str(e) or type(e).__name__
    if e.filename is not None:
        return f"{e.filename}: {what}"
    return what


class Fail(Exception):
    """A user-facing error raised by the CLI itself (exit status ``code``)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def contained(e: BaseException) -> bool:
    """Whether an error ends only the file at hand (the others go on, like gzip), not the run.

    Errors of a file (missing, damaged, output exists) are; a model, engine or cluster
    problem would fail every file the same way, and interruption stops everything.
    """
    if isinstance(e, (ModelError, EngineMismatch, BrokenPipeError)) or type(e).__name__ == "ClusterError":
        return False
    return isinstance(e, (Fail, TinylmzError, OSError))


def message(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an error of a command."""
    if isinstance(e, Fail):
        return str(e), e.code
    if isinstance(e, TinylmzError):
        return str(e) or type(e).__name__, 1
    if isinstance(e, OSError):
        return os_message(e), 1
    if isinstance(e, MemoryError):
        return "out of memory", 1
    return f"internal error: {type(e).__name__}: {e} (set TINYLMZ_DEBUG=1 for a traceback)", 1


def guard(fn: Callable) -> Callable:
    """Turn every expected failure of a command into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (*_EXITS, *_ABORTS, _cx.ClickException):
            raise
        except KeyboardInterrupt:
            err("interrupted; no output written")
            raise typer.Exit(130) from None
        except safeio.Interrupted as e:
            err(f"terminated by signal {e.signum}; no output written")
            raise typer.Exit(128 + e.signum) from None
        except BrokenPipeError:
            quiet_stdout()
            raise typer.Exit(141) from None
        except Exception as e:  # a bug (not Fail/TinylmzError/OSError): still one line, unless debugging
            if not isinstance(e, (Fail, TinylmzError, OSError, MemoryError)) and os.environ.get("TINYLMZ_DEBUG"):
                raise
            text, code = message(e)
            err(text)
            raise typer.Exit(code) from None

    return wrapper


def quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------
# helpers


def parse_size(text: str) -> int:
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
    from ..container import MAX_BLOCK

    if not 0 < n <= MAX_BLOCK:
        raise typer.BadParameter(f"must be between 1 and {MAX_BLOCK} bytes (16M)", param_hint="--block-size")
    return n


def is_stdio(p: Optional[Path]) -> bool:
    return p is None or str(p) == "-"


def read_context(path: Optional[Path]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class ProgressBar:
    """A rich progress bar on stderr (only on a terminal and without -q); ``callback`` or None."""

    def __init__(self, enabled: bool, total: Optional[int], description: str) -> None:
        self.enabled = enabled
        self.total = total
        self.description = description
        self._progress = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
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


def show_progress(quiet: bool) -> bool:
    try:
        return not quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def chunks(f, size: int) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


def peek_trailer(path: Path) -> Optional[int]:
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


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_fingerprint(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def bpb(coded: int, raw: int) -> str:
    return f"{8 * coded / raw:.3f}" if raw else "n/a"


def isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def report(e: BaseException, file: Optional[Path], many: bool) -> int:
    """Print a file's error (named when there are several files); its exit status."""
    text, code = message(e)
    if many and file is not None and str(file) not in text:
        text = f"{file}: {text}"
    err(text)
    return code


def set_threads(n: Optional[int]) -> None:
    """-T/--threads: the kernel thread count of this process (results never depend on it)."""
    if n is not None:
        from .. import kernel

        kernel.set_threads(n)


# options several commands share (typer reads them from the annotations)
FORCE_HELP = "Overwrite existing output files (and allow terminal output)."
STDOUT_HELP = "Write to standard output; keep the input (implied when reading standard input)."
QUIET_HELP = "No progress bar and no messages except errors."
_THREADS_HELP = ("Threads of the model's native kernels in this process (default: $TINYLMZ_THREADS, else chosen "
                 "by measuring, at most the CPUs available).  The output never depends on it.")
Threads = Annotated[Optional[int], typer.Option("--threads", "-T", min=1, metavar="N", show_default=False,
                                                help=_THREADS_HELP)]
FileThreads = Annotated[Optional[int], typer.Option(
    "--threads", "-T", min=1, metavar="N", show_default=False,
    help=_THREADS_HELP[:-len("  The output never depends on it.")] + "  With --scheduler: the count on every worker "
    "(local:N workers default to 1).  The output never depends on it.")]
Scheduler = Annotated[Optional[str], typer.Option(
    "--scheduler", metavar="ADDRESS", envvar="TINYLMZ_SCHEDULER", show_default=False,
    help="Code the blocks of all FILES on a Dask cluster: a scheduler address (tcp://host:8786), or local:N "
    "to start N worker processes on this machine, one block at a time each.  Needs tinylmz[dask]; every "
    "worker needs tinylmz and the model.  The output is byte-identical to coding here.  "
    "Default: $TINYLMZ_SCHEDULER, else no cluster.")]
Recursive = Annotated[bool, typer.Option(
    "--recursive", "-r", help="Operate on the files inside directories given as FILES (and their subdirectories).")]
