#!/usr/bin/env python3
"""One side of scripts/arm_check.sh: the same steps on x86 and in the arm64 userland.

    python scripts/arm_side.py [--tokens MODE FILE] STEP ARGS...

Steps: ``digest MODEL`` (scripts/logits_digest.py's line), ``compress MODEL SRC OUT`` and
``decompress MODEL SRC OUT`` (the ``tinylmz`` command), ``golden TINY TAG...`` (decode
tests/golden/*.TAG.tlmz, TAG tiny or smollm2, and compare with the originals), ``kernel`` (whether the native kernel passed its load-time
check, and its SIMD path).  MODEL is a registry name, ``default`` or a .gguf path.

``--tokens record FILE`` saves every (bytes, ids) pair the tokenizer is asked for;
``--tokens auto FILE`` tokenizes as tinylmz does when it can, and otherwise replays the
recorded pairs (an unrecorded input is an error).  Decoding never tokenizes; the replay
exists for a tinylmz whose tokenizer needs llama-cpp-python, which takes a long build on arm64.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOLDEN_TAGS = {"tiny": "tests/tinymodel.py's model", "smollm2": "the default model"}


def _hook_tokens(mode: str, path: Path) -> None:
    from tinylmz import errors, tokens

    real = tokens.Tokenizer.encode
    if mode == "record":
        seen = json.loads(path.read_text()) if path.exists() else {}

        def encode(self, data):
            ids = real(self, data)
            seen[bytes(data).hex()] = [int(i) for i in ids]
            path.write_text(json.dumps(seen))
            return ids
    else:
        import numpy as np

        def encode(self, data):
            try:
                return real(self, data)
            except errors.ModelError as e:
                if "llama-cpp-python" not in str(e):
                    raise
                if not getattr(tokens, "_replaying", False):
                    print(f"tokens: replayed from {path.name} ({e})", file=sys.stderr)
                    tokens._replaying = True
                table = json.loads(path.read_text())
                key = bytes(data).hex()
                if key not in table:
                    raise
                return np.array(table[key], dtype=np.int32)
    tokens.Tokenizer.encode = encode


def _model(spec: str) -> str | None:
    return None if spec == "default" else spec


def main(argv: list[str]) -> int:
    if argv[:1] == ["--tokens"]:
        _hook_tokens(argv[1], Path(argv[2]))
        argv = argv[3:]
    step, args = argv[0], argv[1:]
    if step == "digest":
        model = _model(args[0])
        sys.argv = ["logits_digest.py"] + ([] if model is None else ["--model", model])
        runpy.run_path(str(ROOT / "scripts" / "logits_digest.py"), run_name="__main__")
        return 0
    if step in ("compress", "decompress"):
        from tinylmz.cli import main as cli

        model, src, out = args
        cli([step, src, "-o", out, "-f"] + ([] if _model(model) is None else ["-m", model]))
        return 0
    if step == "golden":  # golden files decode to their originals: golden TINY_GGUF TAG...
        import tinylmz

        tiny, tags = args[0], set(args[1:])
        bad = 0
        for path in sorted((ROOT / "tests" / "golden").glob("*.tlmz")):
            tag = next((t for t in GOLDEN_TAGS if f".{t}." in path.name), None)  # NAME.TAG[.vN].tlmz
            if tag not in tags:
                continue
            original = path.name[: path.name.index(f".{tag}.")]
            ok = tinylmz.decompress(path.read_bytes(), model=tiny if tag == "tiny" else None) == (
                path.parent / original).read_bytes()
            bad += not ok
            print(f"{'ok' if ok else 'MISMATCH'} {path.name} ({GOLDEN_TAGS[tag]})")
        return 1 if bad else 0
    if step == "kernel":
        from tinylmz import kernel

        print("loaded" if kernel.load() is not None else "failed", kernel.simd())
        return 0
    if step == "tiny-model":  # the tests' tiny GGUF, written the same way on both sides
        sys.path.insert(0, str(ROOT / "tests"))
        from tinymodel import write_tiny_gguf

        write_tiny_gguf(Path(args[0]))
        return 0
    raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
