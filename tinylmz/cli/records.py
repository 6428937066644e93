"""`tinylmz records compress | decompress | get`: logs of short records against a shared context."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .. import safeio
from .common import COPY_CHUNK, Engine, ProgressBar, Threads, chunks, guard, is_stdio, read_context, say, set_threads, show_progress

app = typer.Typer(help="Record logs: one independently decodable frame per line, against a shared context.",
                  no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)

_CTX_HELP = "A file of typical records (a header line and samples) that the model reads before every record."


def _records_io(file: Optional[Path], output: Optional[Path], force: bool):
    """(input binary file, output context manager) for the records commands: stdin/stdout or atomic files."""
    import contextlib

    src = sys.stdin.buffer if is_stdio(file) else open(file, "rb")
    if is_stdio(output):
        return src, contextlib.nullcontext(sys.stdout.buffer)
    return src, safeio.AtomicOutput(output, overwrite=force)


@app.command("compress")
@guard
def records_compress_cmd(
    file: Optional[Path] = typer.Argument(None, help="Log to compress ('-' or nothing: standard input)."),
    context: Path = typer.Option(..., "--context", help=_CTX_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .tlmzr file (default: standard output)."),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite an existing output file."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Registry name or .gguf path."),
    engine: Engine = typer.Option(Engine.portable, "-e", "--engine", help="portable (default) or llama."),
    threads: Threads = None,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Compress a log, one frame per line, with an index for reading single records (`records get`)."""
    from .. import records

    set_threads(threads)
    codec = records.RecordCodec(read_context(context), model=model, engine=engine.value)
    src, out_cm = _records_io(file, output, force)
    with src, out_cm as out, ProgressBar(show_progress(quiet), None, "records") as bar:
        stats = records.write_log(chunks(src, COPY_CHUNK), out, codec, progress=bar.callback)
        if hasattr(out, "commit"):
            out.commit()
    if not quiet:
        say(f"{stats['records']} records, {stats['raw_bytes']} -> {stats['log_bytes']} bytes "
             f"({stats['frame_bytes'] / max(stats['records'], 1):.1f} bytes per frame)")


@app.command("decompress")
@guard
def records_decompress_cmd(
    file: Path = typer.Argument(..., help="A .tlmzr record log."),
    context: Path = typer.Option(..., "--context", help="The context file given when compressing."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: standard output)."),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite an existing output file."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model file if not in the registry."),
    threads: Threads = None,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Decode every record of a log (many frames per model call) and check the whole-log checksum."""
    from .. import records

    set_threads(threads)
    with open(file, "rb") as f:
        codec = records.codec_for_log(f, read_context(context), model=model)
        _, out_cm = _records_io(None, output, force)
        with out_cm as out, ProgressBar(show_progress(quiet), None, "records") as bar:
            for line in records.read_log(f, codec, progress=bar.callback):
                out.write(line)
            if hasattr(out, "commit"):
                out.commit()


@app.command("get")
@guard
def records_get_cmd(
    file: Path = typer.Argument(..., help="A .tlmzr record log."),
    n: int = typer.Argument(..., help="Record number, from 0."),
    context: Path = typer.Option(..., "--context", help="The context file given when compressing."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model file if not in the registry."),
    threads: Threads = None,
) -> None:
    """Print record N alone (decodes only that frame, found through the index)."""
    from .. import records

    set_threads(threads)
    with open(file, "rb") as f:
        codec = records.codec_for_log(f, read_context(context), model=model)
        sys.stdout.buffer.write(records.read_record(f, codec, n))
