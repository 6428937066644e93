#!/usr/bin/env python3
"""Print a digest of the portable engine's logits for a fixed input: compare two machines in one line.

    python scripts/logits_digest.py [--model NAME|PATH]

Prints ``<sha256 of the logits> <sha256 of the prepared weights> <engine version>``; two machines
whose lines match will decode each other's files.
"""

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tinylmz import registry  # noqa: E402
from tinylmz.engine_portable import VERSION, PortableEngine  # noqa: E402
from tinylmz.tokens import Tokenizer  # noqa: E402

TEXT = b"The quick brown fox jumps over the lazy dog. Alice was beginning to get very tired.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry name or GGUF path (default: the default model)")
    args = ap.parse_args()
    m = registry.resolve(args.model)
    eng = PortableEngine(m.path, m.sha256)
    tok = Tokenizer(m.path)
    ids = tok.encode(TEXT)
    logits = np.concatenate(list(eng.score(eng.prefill([tok.vocab.start_id]), ids)))
    w = hashlib.sha256()
    for layer in eng.w.layers:
        for lin in (layer["qkv"], layer["o"], layer["gateup"], layer["down"]):
            w.update(np.ascontiguousarray(lin.rows()).tobytes())
    print(hashlib.sha256(logits.tobytes()).hexdigest(), w.hexdigest()[:16], f"portable-v{VERSION}")


if __name__ == "__main__":
    main()
