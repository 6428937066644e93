#!/usr/bin/env python3
"""Write the golden .tlmz files of the current format version in tests/golden/ (portable engine).

    python scripts/make_golden.py [--real]

Run only for a deliberate format or engine change: the tests compare new
output against these bytes, so regenerating them *is* the format change and
the commit must say so.  ``--real`` also writes the default model's goldens.
Version 1 goldens (``NAME.TAG.tlmz``) are frozen: old files must keep decoding,
and the version 1 writer must keep writing them; this script never touches them.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tinylmz  # noqa: E402
from tinymodel import write_tiny_gguf  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"
# name -> (block_size, segment_tokens, window) for the tiny model; the real model uses its defaults
CASES = {"prose.txt": (256, 48, None), "code.py": (4096, 64, None), "broken.bin": (4096, 1024, None),
         "long.txt": (4096, 1024, 512)}
VERSION = tinylmz.container.VERSION
REAL = {"long.txt": {"window": 512}}  # the default model: defaults, but a window that long.txt outgrows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="also write goldens for the default model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_gguf(Path(tmp) / "tiny.gguf")
        for name, (bs, seg, win) in CASES.items():
            data = (GOLDEN / name).read_bytes()
            blob = tinylmz.compress(data, model=str(tiny), block_size=bs, segment_tokens=seg, window=win)
            (GOLDEN / f"{name}.tiny.v{VERSION}.tlmz").write_bytes(blob)
            print(f"{name}.tiny.v{VERSION}.tlmz", len(data), "->", len(blob))
    if args.real:
        for name in CASES:
            data = (GOLDEN / name).read_bytes()
            blob = tinylmz.compress(data, **REAL.get(name, {}))
            (GOLDEN / f"{name}.smollm2.v{VERSION}.tlmz").write_bytes(blob)
            print(f"{name}.smollm2.v{VERSION}.tlmz", len(data), "->", len(blob))


if __name__ == "__main__":
    main()
