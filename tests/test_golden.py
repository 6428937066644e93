"""Golden files pin the format and the portable engine's outputs.

If one of these fails after a change, the change alters compressed bytes: a
format change.  Regenerate with ``scripts/make_golden.py --real`` only on purpose,
and say so in the commit.
"""

import io
from pathlib import Path

import pytest

import tinylmz
from tinylmz import container

GOLDEN = Path(__file__).parent / "golden"
NAMES = ["prose.txt", "code.py", "broken.bin"]  # version 1 goldens (frozen)
NAMES_V2 = NAMES + ["long.txt"]  # long.txt: streams longer than their window


def _check(name: str, tag: str, model) -> None:
    """The golden file decodes, and the writer of its version makes it again byte for byte."""
    original = (GOLDEN / name).read_bytes()
    golden = (GOLDEN / f"{name}.{tag}.tlmz").read_bytes()
    assert tinylmz.decompress(golden, model=model) == original
    h = container.Reader(io.BytesIO(golden)).header
    again = tinylmz.compress(original, model=model, block_size=h.block_size, segment_tokens=h.segment_tokens,
                             window=h.window, format_version=h.version)
    assert again == golden, f"{name}: compressed bytes changed (a format change?)"


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_goldens_v1(name, tiny_model):
    _check(name, "tiny", str(tiny_model))


@pytest.mark.parametrize("name", NAMES_V2)
def test_tiny_model_goldens_v2(name, tiny_model):
    _check(name, "tiny.v2", str(tiny_model))


def test_goldens_pin_their_versions_and_windows():
    for name in NAMES:
        with open(GOLDEN / f"{name}.tiny.tlmz", "rb") as f:
            assert container.Reader(f).version == 1
    with open(GOLDEN / "long.txt.tiny.v2.tlmz", "rb") as f:
        r = container.Reader(f)
        assert r.version == 2 and r.header.window == 512 and r.header.segment_tokens == 1024


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_default_model_goldens_v1(name, default_model_path):
    _check(name, "smollm2", None)


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES_V2)
def test_default_model_goldens_v2(name, default_model_path):
    _check(name, "smollm2.v2", None)


@pytest.mark.integration
def test_default_model_goldens_use_the_model():
    for name in NAMES:
        for tag in ("smollm2", "smollm2.v2"):
            with open(GOLDEN / f"{name}.{tag}.tlmz", "rb") as f:
                assert all(b.method == container.MODEL for b in container.Reader(f).blocks())
