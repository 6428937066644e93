"""Output files that are either complete or absent (never lose data).

``AtomicOutput(target)`` writes into a temporary file next to ``target`` (same
directory, so the final rename cannot cross filesystems), and only
``commit()`` makes it visible: flush, fsync, then link/rename onto ``target``
and fsync the directory.  Anything else -- an exception, Ctrl-C, SIGTERM --
removes the temporary file, and ``target`` is left exactly as it was.

Without ``overwrite`` an existing ``target`` is never replaced: the final step
is ``os.link`` (fails if the name exists), so even a file created meanwhile by
another process is safe.

``install_signal_handlers()`` makes SIGTERM and SIGHUP raise ``Interrupted``
(SIGINT already raises KeyboardInterrupt), so the same cleanup runs for every
way a user stops the program.  ``critical()`` defers those signals around the
few steps that must not be cut in half (creating/removing the temporary file,
the commit and the removal of the input): a signal that arrives there takes
effect right after the step, never in the middle of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path

TEMP_PREFIX = ".tinylmz-"
TEMP_SUFFIX = ".part"
_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                             getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(BaseException):
    """Raised by the SIGTERM/SIGHUP handler (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


class OutputExists(FileExistsError):
    """The output file exists and overwriting was not allowed."""


def _raise_interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP raise ``Interrupted`` (main thread only; a no-op elsewhere)."""
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _raise_interrupted)
        except (ValueError, OSError):  # not the main thread, or not allowed
            pass
    # SIGINT keeps Python's default handler (KeyboardInterrupt), or SIG_IGN if the
    # parent started us with it ignored (a background job of a non-interactive shell).


@contextlib.contextmanager
def critical():
    """Defer SIGINT/SIGTERM/SIGHUP while the body runs; the first one is acted on right after it.

    Done with Python-level handlers, not ``pthread_sigmask``: numpy/OpenBLAS and llama.cpp
    start threads, and the kernel may deliver a process signal to any of them, but Python
    always runs its handlers in the main thread.  Outside the main thread this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def defer(signum, frame):  # noqa: ARG001
        pending.append(signum)

    saved = {}
    for sig in _SIGNALS:
        try:
            handler = signal.getsignal(sig)
            if handler in (signal.SIG_IGN, None):
                continue  # ignored stays ignored; None: installed outside Python, leave it
            saved[sig] = signal.signal(sig, defer)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            sig = pending[0]
            handler = saved.get(sig)
            if callable(handler):
                handler(sig, None)  # KeyboardInterrupt / Interrupted / an outer critical()'s defer
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicOutput:
    """A binary file object for ``target`` that only appears there on ``commit()``.

        with AtomicOutput("x.tlmz", overwrite=False) as out:   # raises OutputExists first
            out.write(...)
            out.commit()          # without it, nothing is left behind
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = False,
                 copy_stat_from: str | os.PathLike | None = None) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.copy_stat_from = copy_stat_from
        self.committed = False
        self.file = None
        self.temp: Path | None = None
        if not overwrite and os.path.lexists(self.target):
            raise OutputExists(errno_eexist(), f"{self.target} already exists (use -f to overwrite)")

    def __enter__(self) -> "AtomicOutput":
        """Create the temporary file (signals deferred, so it is always either recorded or absent)."""
        directory = self.target.parent if str(self.target.parent) else Path(".")
        try:
            with critical():
                fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX + self.target.name[:64] + ".",
                                            suffix=TEMP_SUFFIX)
                self.temp = Path(name)
                self.file = os.fdopen(fd, "wb")
        except BaseException:  # a signal delivered when the mask is lifted
            self._discard()
            raise
        return self

    # file-object surface used by the Compressor and the CLI
    def write(self, data) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def commit(self) -> None:
        """Make the output visible under ``target`` (complete, synced) or raise and leave nothing."""
        if self.committed:
            return
        with critical():
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                if self.copy_stat_from is not None:
                    _copy_stat(self.copy_stat_from, self.temp)
                if self.overwrite:
                    os.replace(self.temp, self.target)
                else:
                    try:
                        os.link(self.temp, self.target)
                    except FileExistsError:
                        raise OutputExists(errno_eexist(), f"{self.target} already exists (use -f to overwrite)") from None
                    except OSError:
                        # filesystems without hard links: check, then rename (small race window)
                        if os.path.lexists(self.target):
                            raise OutputExists(errno_eexist(), f"{self.target} already exists (use -f to overwrite)") from None
                        os.replace(self.temp, self.target)
                    else:
                        os.unlink(self.temp)
                self.committed = True
                _fsync_dir(self.target.parent if str(self.target.parent) else Path("."))
            except BaseException:
                self._discard()
                raise

    def _discard(self) -> None:
        with critical():
            try:
                if self.file is not None and not self.file.closed:
                    self.file.close()
            except OSError:
                pass
            if self.temp is not None and not self.committed:
                try:
                    os.unlink(self.temp)
                except FileNotFoundError:
                    pass

    def abort(self) -> None:
        """Remove the temporary file (a no-op after ``commit``)."""
        if not self.committed:
            self._discard()

    def __exit__(self, *exc) -> None:
        self.abort()


def errno_eexist() -> int:
    import errno

    return errno.EEXIST


def _copy_stat(src, dst) -> None:
    """Copy permission bits and times (like gzip/xz); failure to do so is not an error."""
    try:
        st = os.stat(src)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


def remove_input(path: str | os.PathLike) -> None:
    """Delete an input file after its output was committed (deferred signals while doing so)."""
    with critical():
        os.unlink(path)


def stdout_binary():
    """The binary stdout stream."""
    return sys.stdout.buffer


def stdin_binary():
    return sys.stdin.buffer
