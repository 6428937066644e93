"""The ``tinylmz`` command line, with gzip/xz/zstd habits.

    tinylmz compress FILE...         # -> FILE.tlmz each, FILE kept (unless --rm); -r for directories
    tinylmz decompress FILE.tlmz...  # -> FILE
    cat x | tinylmz compress | tinylmz decompress > y
    tinylmz test FILE.tlmz... ; tinylmz info FILE.tlmz [--json] ; tinylmz model list
    tinylmz compress --scheduler local:4 big/   # blocks coded by a Dask cluster

Exit status: 0 success, 1 error (damaged or foreign data, wrong/missing model,
engine mismatch, I/O error), 2 bad usage, 130 interrupted (Ctrl-C; 128+N for
signal N).  Errors are one line ``tinylmz: error: ...`` on stderr.

Safety (never lose data): outputs are written to a temporary file in the target's
directory and renamed into place only when complete (and fsynced); an existing
file is never replaced without ``-f``; ``--rm`` deletes the input only after
its output is complete and, for compression, verified by decompressing it.
Interrupting (SIGINT, SIGTERM, SIGHUP) leaves no temporary or partial file.

Modules: ``common`` (errors, exit codes, progress, shared options), ``files``
(compress/decompress/test/info), ``cluster`` (the same on a Dask cluster),
``models`` (``model ...``), ``records`` (``records ...``).
"""

from __future__ import annotations

import sys
from typing import Annotated, List, Optional

import typer

from .. import __version__, safeio
from . import files, models, records
from .common import _ABORTS, DEFAULT_SEGMENT_TOKENS, SUFFIX, _cx, err, guard, os_message, quiet_stdout  # noqa: F401

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
for _name, _fn in files.COMMANDS.items():
    app.command(_name)(guard(_fn))
app.add_typer(models.app, name="model")
app.add_typer(records.app, name="records")


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
        err(e.format_message() + hint)
        return 2
    except _cx.ClickException as e:
        err(e.format_message())
        return e.exit_code
    except _ABORTS:
        err("interrupted")
        return 130
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except safeio.Interrupted as e:
        err(f"terminated by signal {e.signum}")
        return 128 + e.signum
    except BrokenPipeError:
        quiet_stdout()
        return 141
    except OSError as e:
        err(os_message(e))
        return 1
    return rv if isinstance(rv, int) else 0


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point (``tinylmz``)."""
    code = run(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    except (OSError, ValueError):
        pass
    sys.exit(code)
