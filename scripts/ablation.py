#!/usr/bin/env python3
"""What each part of format version 2 buys: compressed sizes of the same files, one part at a time.

    python scripts/ablation.py [FILE ...]      # default: alice29 and the texts below

Rows per file: format 1 (2048-token streams, each token sees its stream's start); format 2's
framing alone (same streams); + 8192-token streams with a 2048-token sliding window; + the
adaptive models; + equal streams (the first block cut into equal streams of at most 8192 tokens:
the default); and xz, zstd, bzip2, brotli.  Columns: bytes, bits per byte,
the model's cross-entropy (float softmax, before the adaptive models).  Sizes only: no timing.

The default texts were never tuned on (they come with Debian and CPython, 20-25 KB of each):
the GNU FDL 1.3 (English legal prose), vim's usr_05.txt (a technical manual), CPython's
textwrap.py (source code), the start of dpkg's changelog (repetitive records).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

UNSEEN = {
    "GFDL-1.3": Path("/usr/share/common-licenses/GFDL-1.3"),
    "vim-usr_05.txt": Path("/usr/share/vim/vim90/doc/usr_05.txt"),
    "textwrap.py": Path(os.__file__).parent / "textwrap.py",
    "dpkg-changelog": Path("/usr/share/doc/dpkg/changelog.gz"),
}
CONFIGS = [
    ("format 1 (2048-token streams)", dict(format_version=1)),
    ("format 2 framing only", dict(segment_tokens=2048, adaptive=0)),
    ("+ 8192-token streams, 2048 window", dict(segment_tokens=8192, adaptive=0)),
    ("+ adaptive models", dict(segment_tokens=8192)),
    ("+ equal streams (the default)", dict()),
]


def texts(args: list[str]) -> list[tuple[str, bytes]]:
    if args:
        return [(Path(a).name, Path(a).read_bytes()) for a in args]
    out = [("alice29.txt", (ROOT.parent / "shared" / "corpus" / "alice29.txt").read_bytes())]
    for name, p in UNSEEN.items():
        if p.exists():
            data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            out.append((name, data[:25000]))
    return out


def main() -> None:
    import brotli
    import zstandard

    from tinylmz import api

    classic = [("xz -9e", lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME)),
               ("zstd -19", lambda d: zstandard.ZstdCompressor(level=19).compress(d)),
               ("bzip2 -9", lambda d: bz2.compress(d, 9)),
               ("brotli -q 11", lambda d: brotli.compress(d, quality=11))]
    print(f"{'file':<16} {'bytes':>7}  {'codec':<36} {'out B':>7} {'bits/B':>7} {'model':>7}")
    for name, data in texts(sys.argv[1:]):
        for label, kw in CONFIGS:
            out = io.BytesIO()
            c = api.Compressor(out, measure=True, **kw)
            c.write(data)
            c.close()
            n = len(out.getvalue())
            print(f"{name:<16} {len(data):>7}  {label:<36} {n:>7} {8 * n / len(data):>7.4f} "
                  f"{c.stats.model_bits / len(data):>7.4f}", flush=True)
        for label, f in classic:
            n = len(f(data))
            print(f"{name:<16} {len(data):>7}  {label:<36} {n:>7} {8 * n / len(data):>7.4f}", flush=True)


if __name__ == "__main__":
    main()
