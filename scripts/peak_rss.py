#!/usr/bin/env python3
"""Peak memory of compressing and decompressing one file, each in a fresh process.

    python scripts/peak_rss.py FILE [--engine portable|llama] [--bytes N]

Prints the compressed size, seconds and peak RSS (MB) of each direction.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import resource, sys, time, tinylmz
mode, src, dst, engine = sys.argv[1:5]
data = open(src, 'rb').read()
t = time.time()
out = tinylmz.compress(data, engine=engine) if mode == 'c' else tinylmz.decompress(data)
dt = time.time() - t
open(dst, 'wb').write(out)
print(len(out), round(dt, 1), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def run(mode, src, dst, engine):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", CHILD, mode, src, dst, engine], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(r.stderr.strip().splitlines()[-1])
    return r.stdout.split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--engine", default="portable")
    ap.add_argument("--bytes", type=int, default=None, help="use only the first N bytes")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in")
        with open(a.file, "rb") as f, open(src, "wb") as g:
            g.write(f.read(a.bytes) if a.bytes else f.read())
        size = os.path.getsize(src)
        c = run("c", src, src + ".tlmz", a.engine)
        d = run("d", src + ".tlmz", src + ".out", a.engine)
        ok = open(src, "rb").read() == open(src + ".out", "rb").read()
        print(f"{a.file} ({size} bytes, {a.engine}): compressed {c[0]} bytes")
        print(f"  compress   {c[1]:>7} s   peak RSS {c[2]:>5} MB")
        print(f"  decompress {d[1]:>7} s   peak RSS {d[2]:>5} MB   round trip {'ok' if ok else 'FAILED'}")


if __name__ == "__main__":
    main()
