"""Golden files pin the format and the portable engine's outputs.

If one of these fails after a change, the change alters compressed bytes: a
format change.  Regenerate with ``scripts/make_golden.py --real`` only on purpose,
and say so in the commit.
"""

from pathlib import Path

import pytest

import tinylmz
from tinylmz import container

GOLDEN = Path(__file__).parent / "golden"
NAMES = ["prose.txt", "code.py", "broken.bin"]


def _check(name: str, tag: str, model) -> None:
    original = (GOLDEN / name).read_bytes()
    golden = (GOLDEN / f"{name}.{tag}.tlmz").read_bytes()
    assert tinylmz.decompress(golden, model=model) == original
    h = container.Reader(__import__("io").BytesIO(golden)).header
    again = tinylmz.compress(original, model=model, block_size=h.block_size, segment_tokens=h.segment_tokens)
    assert again == golden, f"{name}: compressed bytes changed (a format change?)"


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_goldens(name, tiny_model):
    _check(name, "tiny", str(tiny_model))


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_default_model_goldens(name, default_model_path):
    _check(name, "smollm2", None)


@pytest.mark.integration
def test_default_model_goldens_use_the_model():
    for name in NAMES:
        with open(GOLDEN / f"{name}.smollm2.tlmz", "rb") as f:
            assert all(b.method == container.MODEL for b in container.Reader(f).blocks())
