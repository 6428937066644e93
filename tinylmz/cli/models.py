"""`tinylmz model list | path | pull | verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import TinylmzError
from .common import guard

app = typer.Typer(help="List, locate, download and verify models.", no_args_is_help=True,
                  rich_markup_mode=None, pretty_exceptions_enable=False)

def _installed_path(entry) -> Optional[Path]:
    from .. import registry

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


@app.command("list")
@guard
def model_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the models tinylmz knows by name, and whether each is installed."""
    from .. import registry

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


@app.command("path")
@guard
def model_path(
    name: Annotated[Optional[str], typer.Argument(help="Registry name (default: the default model).",
                                                  show_default=False)] = None,
) -> None:
    """Print where a model file is (it must be installed; its sha256 is checked)."""
    from .. import registry

    print(registry.resolve(name).path)


@app.command("pull")
@guard
def model_pull(
    name: Annotated[str, typer.Argument(help="Registry name (see 'tinylmz model list').", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No download progress.")] = False,
) -> None:
    """Download a model from its source into the cache and verify it."""
    from .. import registry

    print(registry.pull(name, progress=not quiet))


@app.command("verify")
@guard
def model_verify(
    spec: Annotated[Optional[str], typer.Argument(help="Registry name or path to a .gguf (default: the default "
                                                       "model).", show_default=False)] = None,
) -> None:
    """Re-hash a model file and check it against the registry."""
    from .. import registry

    m = registry.verify(spec)
    print(f"{m.name}: OK sha256 {m.sha256} ({m.size} bytes) {m.path}")


# ---------------------------------------------------------------------------------------
