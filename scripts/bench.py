#!/usr/bin/env python3
"""Benchmark tinylmz against xz, zstd, bzip2 and brotli on the same files, in one run.

For each file and codec: original and compressed bytes, bits per byte, compress
and decompress speed (KB/s, 1 KB = 1000 bytes) and peak RSS; for tinylmz also
the model's cross-entropy in bits per byte (``Compressor(measure=True)``) and
the overhead over it, and the model load time.  Columns: "ovh %" is the whole
file over the cross-entropy, "coder ovh %" the model-coded payloads alone
(range coder + frequency quantization), "hdr+ B" the bytes around them
(header, block framing, stream tables, trailer); the last two only when every
block is model-coded.

Codecs:

* ``tinylmz-portable`` (format version 2, the default), ``tinylmz-portable-v1``
  (format version 1, as files were written before), ``tinylmz-llama``: the
  default model on each engine.  The llama row is also the llama.cpp baseline:
  the llama engine evaluates one token per ``llama_decode`` call, as a file that
  must decode the same way has to;
* ``xz`` (lzma preset 9 | PRESET_EXTREME), ``zstd`` (-19, ``zstandard``),
  ``bzip2`` (-9, ``bz2``), ``brotli`` (-q 11, ``brotli``).

Every codec and direction runs in its own subprocess, so the peak RSS is that
codec's alone (the child reports its own ``ru_maxrss``; it includes the Python
interpreter, ~10-20 MB).  Timing excludes interpreter start and the import of
the codec's Python module but includes model load (also shown alone as
"load s", compress side).  The tinylmz compress time includes the float
cross-entropy measurement (a softmax per token, small next to the model).
Every round trip is checked (decompressed == original); a failure is marked in
the table and makes the exit status 1.

For tinylmz the table also gives tokens per second each way, and the header the
hardware's limit: the model's multiply-adds per token (its weight matrices) and
the native kernel's measured int16 x int8 product rate on all cores, whose ratio
is the most tokens per second the matrix products allow (attention not counted).
``--load N`` runs every tinylmz row twice, the second time while N busy-loop
processes hold cores, and prints the loaded speed as a share of the idle one.

    python scripts/bench.py                       # corpus + 4 KB / 16 KB excerpts of alice29
    python scripts/bench.py --quick               # the 4 KB excerpt only
    python scripts/bench.py a.txt b.bin --engines portable --codecs xz,zstd --json out.json --plot out.png
    python scripts/bench.py --engines portable,portable-v1 --codecs '' --load 1 alice29.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
EXCERPTS = (4096, 16384)
CLASSIC = ("xz", "zstd", "bzip2", "brotli")
ENGINES = ("portable", "portable-v1", "llama")


# -- codecs (run in the child; each returns bytes and a dict of extras) ------------------------


def xz(direction: str, data: bytes, opts: dict):
    import lzma

    if direction == "c":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME), {}
    return lzma.decompress(data), {}


def zstd(direction: str, data: bytes, opts: dict):
    import zstandard

    if direction == "c":
        return zstandard.ZstdCompressor(level=19).compress(data), {}
    return zstandard.ZstdDecompressor().decompress(data), {}


def bzip2(direction: str, data: bytes, opts: dict):
    import bz2

    if direction == "c":
        return bz2.compress(data, 9), {}
    return bz2.decompress(data), {}


def brotli(direction: str, data: bytes, opts: dict):
    import brotli as br

    if direction == "c":
        return br.compress(data, quality=11), {}
    return br.decompress(data), {}


def tinylmz(direction: str, data: bytes, opts: dict):
    """Default model on ``opts["engine"]``; the session (model load) is timed alone as ``load_s``."""
    import io

    from tinylmz import api

    t0 = time.perf_counter()
    if direction == "c":
        out = io.BytesIO()
        sizes = {k: opts[k] for k in ("block_size", "segment_tokens", "window") if opts.get(k)}  # else defaults
        engine, _, v = opts["engine"].partition("-v")
        c = api.Compressor(out, engine=engine, measure=True, format_version=int(v or api.container.VERSION),
                           **sizes)
        load = time.perf_counter() - t0
        c.write(data)
        c.close()
        s = c.stats
        return out.getvalue(), {"load_s": load, "model_bits": s.model_bits, "tokens": s.tokens,
                                "payload_bytes": s.coded_bytes, "methods": s.methods,
                                "segment_tokens": c.header.segment_tokens, "block_size": c.header.block_size}
    reader, make_session = api.open_reader(io.BytesIO(data))
    if any(b.method == api.container.MODEL for b in reader.blocks()):
        make_session()  # cached: the decompress below reuses it
    load = time.perf_counter() - t0
    return api.decompress(data), {"load_s": load}


def _import_for(codec: str) -> None:
    """Import the codec's module before the clock starts (interpreter/import time is not the codec's)."""
    mod = {"xz": "lzma", "zstd": "zstandard", "bzip2": "bz2", "brotli": "brotli"}.get(codec, "tinylmz.api")
    __import__(mod)


def codec_fn(codec: str):
    return tinylmz if codec.startswith("tinylmz-") else globals()[codec]


def child(direction: str, codec: str, src: str, dst: str, result: str, opts: dict) -> None:
    """Run one codec in one direction on file ``src`` -> ``dst``; write timing/RSS JSON to ``result``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if codec.startswith("tinylmz-"):
        opts = dict(opts, engine=codec.split("-", 1)[1])
    _import_for(codec)
    data = Path(src).read_bytes()
    t0 = time.perf_counter()
    out, extra = codec_fn(codec)(direction, data, opts)
    seconds = time.perf_counter() - t0
    Path(dst).write_bytes(out)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    Path(result).write_text(json.dumps({"seconds": seconds, "rss_mb": rss_kb / 1024, **extra}))


# -- parent ------------------------------------------------------------------------------------


def run_child(direction: str, codec: str, src: Path, dst: Path, opts: dict) -> dict:
    """Run ``child`` in a fresh interpreter; {"error": ...} if it failed."""
    result = dst.with_suffix(dst.suffix + ".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", direction, codec, str(src), str(dst),
           str(result), json.dumps(opts)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not result.exists():
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:]  # the exception line
        return {"error": f"{direction} exited {p.returncode}: " + " | ".join(tail)}
    return json.loads(result.read_text())


def bench_one(path: Path, codec: str, opts: dict, tmp: Path) -> dict:
    """Compress then decompress ``path`` with ``codec``; the row for the table/JSON."""
    raw = path.read_bytes()
    stem = tmp / f"{path.name}.{codec}"
    blob_path, back_path = stem.with_suffix(".blob"), stem.with_suffix(".out")
    row = {"file": str(path), "name": path.name, "codec": codec, "raw_bytes": len(raw), "ok": False}
    c = run_child("c", codec, path, blob_path, opts)
    if "error" in c:
        return {**row, "error": c["error"]}
    d = run_child("d", codec, blob_path, back_path, opts)
    size = blob_path.stat().st_size
    n = max(len(raw), 1)
    row.update(
        coded_bytes=size,
        bpb=8 * size / n,
        compress_s=c["seconds"],
        compress_kbps=len(raw) / 1000 / c["seconds"] if c["seconds"] else float("inf"),
        compress_rss_mb=c["rss_mb"],
        load_s=c.get("load_s"),
    )
    if "model_bits" in c:
        bits = c["model_bits"]
        all_model = set(c["methods"]) == {"model"}  # else the payloads are not all model-coded
        row.update(model_bpb=bits / n, tokens=c["tokens"], methods=c["methods"],
                   segment_tokens=c["segment_tokens"], block_size=c["block_size"],
                   overhead_pct=100 * (8 * size / bits - 1) if bits else None,
                   coder_overhead_pct=100 * (8 * c["payload_bytes"] / bits - 1) if bits and all_model else None,
                   container_bytes=size - c["payload_bytes"] if all_model else None)
    if "error" in d:
        return {**row, "error": d["error"]}
    row.update(
        decompress_s=d["seconds"],
        decompress_kbps=len(raw) / 1000 / d["seconds"] if d["seconds"] else float("inf"),
        decompress_rss_mb=d["rss_mb"],
        decompress_load_s=d.get("load_s"),
    )
    if back_path.read_bytes() == raw:
        row["ok"] = True
    else:
        row["error"] = "ROUND TRIP MISMATCH: decompressed bytes differ from the original"
    return row


@contextlib.contextmanager
def busy(n: int):
    """n processes spinning in a loop (another program holding cores) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def limits() -> dict:
    """The model's multiply-adds per token and the kernel's product rate (a child process: RSS stays low)."""
    code = (
        "import json, time, numpy as np\n"
        "from tinylmz import registry, kernel, threads\n"
        "from tinylmz.tokens import read_gguf_metadata\n"
        "m = registry.resolve(None)\n"
        "import gguf\n"
        "r = gguf.GGUFReader(str(m.path))\n"
        "macs = sum(int(np.prod(t.shape)) for t in r.tensors if len(t.shape) == 2 and 'token_embd' not in t.name)\n"
        "if not any('output.weight' == t.name for t in r.tensors):\n"
        "    macs += int(np.prod(next(t.shape for t in r.tensors if t.name == 'token_embd.weight')))\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((16, 576)); w = rng.integers(-127, 128, (1536, 576)).astype(np.int8)\n"
        "pw = kernel.Packed(w) if kernel.packs() else w; ws = np.ones(1536)\n"
        "out = {'macs_per_token': macs}\n"
        "for nt in (1, threads.available_cpus()):\n"
        "    threads.set_threads(nt); kernel.qmatmul(x, pw, ws)\n"
        "    t = time.perf_counter(); k = 0\n"
        "    while time.perf_counter() - t < 1.0: kernel.qmatmul(x, pw, ws); k += 1\n"
        "    out[f'gmacs_{nt}'] = k * 16 * 1536 * 576 / (time.perf_counter() - t) / 1e9\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    peak = max(v for k, v in out.items() if k.startswith("gmacs_"))
    out["limit_tokens_s"] = peak * 1e9 / out["macs_per_token"]
    return out


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "python": platform.python_version(),
            "platform": platform.platform(),
            **{p: version(p) for p in ("numpy", "llama-cpp-python", "zstandard", "brotli")}}


def inputs(args, tmp: Path) -> list[Path]:
    """The files to benchmark: the given ones or the corpus, plus the alice29 excerpts."""
    given = [Path(f) for f in args.files]
    base = given or sorted(p for p in CORPUS.glob("*") if p.is_file())
    if not base:
        sys.exit(f"no input files (none given, none in {CORPUS})")
    src = next((p for p in base if p.name == "alice29.txt"), base[0])
    sizes = EXCERPTS[:1] if args.quick else (() if given else EXCERPTS)
    excerpts = []
    for k in sizes:
        e = tmp / "excerpts" / f"{src.stem}-{k // 1024}k{src.suffix}"
        e.parent.mkdir(exist_ok=True)
        e.write_bytes(src.read_bytes()[:k])
        excerpts.append(e)
    return excerpts if args.quick else base + excerpts


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _speed(x) -> str:
    """KB/s with three significant digits at most (tinylmz on small files runs well under 1 KB/s)."""
    return "-" if x is None else format(x, ",.0f" if x >= 100 else ".3g")


def _tokens(r: dict) -> str:
    t = r.get("tokens")
    if not t or not r.get("compress_s") or not r.get("decompress_s"):
        return "-"
    return f"{t / r['compress_s']:.0f}/{t / r['decompress_s']:.0f}"


def _share(r: dict) -> str:
    if "compress_share" not in r and "decompress_share" not in r:
        return "-"
    return f"{_f(100 * r.get('compress_share', 0), '.0f')}%/{_f(100 * r.get('decompress_share', 0), '.0f')}%"


def print_table(rows: list[dict], info: dict, command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 220)
    console.print(f"[bold]command:[/] {command}")
    console.print(f"[bold]machine:[/] {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
                  f"Python {info['python']}, numpy {info['numpy']}, llama-cpp-python {info['llama-cpp-python']}, "
                  f"zstandard {info['zstandard']}, brotli {info['brotli']}")
    if info.get("macs_per_token"):
        cores = sorted(k for k in info if k.startswith("gmacs_"))
        rates = ", ".join(f"{info[k]:.0f} G/s on {k.split('_')[1]} core(s)" for k in cores)
        console.print(f"[bold]limit:[/] {info['macs_per_token'] / 1e6:.0f} M multiply-adds per token (weights); "
                      f"kernel int16 x int8 products {rates}: at most {info['limit_tokens_s']:,.0f} tokens/s")
    t = Table(show_lines=False)
    for col, just in [("file", "left"), ("codec", "left"), ("orig B", "right"), ("comp B", "right"),
                      ("bits/B", "right"), ("model bits/B", "right"), ("ovh %", "right"),
                      ("coder ovh %", "right"), ("hdr+ B", "right"),
                      ("comp KB/s", "right"), ("decomp KB/s", "right"), ("tok/s c/d", "right"),
                      ("busy share c/d", "right"), ("load s", "right"),
                      ("RSS MB c/d", "right"), ("round trip", "left")]:
        t.add_column(col, justify=just)
    last = None
    for r in rows:
        if last is not None and r["file"] != last:
            t.add_section()
        last = r["file"]
        status = "[green]ok[/]" if r["ok"] else f"[bold red]FAIL: {r.get('error', '?')}[/]"
        t.add_row(r["name"], r["codec"], str(r["raw_bytes"]), _f(r.get("coded_bytes"), "d"),
                  _f(r.get("bpb"), ".3f"), _f(r.get("model_bpb"), ".3f"), _f(r.get("overhead_pct"), "+.2f"),
                  _f(r.get("coder_overhead_pct"), "+.2f"), _f(r.get("container_bytes"), "d"),
                  _speed(r.get("compress_kbps")), _speed(r.get("decompress_kbps")),
                  _tokens(r), _share(r), _f(r.get("load_s"), ".2f"),
                  f"{_f(r.get('compress_rss_mb'), '.0f')}/{_f(r.get('decompress_rss_mb'), '.0f')}", status)
    console.print(t)
    console.print("KB = 1000 bytes; speeds include model load; RSS = peak of the compress / decompress process")
    failed = [r for r in rows if not r["ok"]]
    if failed:
        console.print(f"[bold red]!!! {len(failed)} of {len(rows)} runs FAILED (see the round trip column) !!![/]")


def plot(rows: list[dict], out: str) -> None:
    """Bits per byte vs compress KB/s (log x) per codec, for the largest file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    biggest = max(rows, key=lambda r: r["raw_bytes"])["file"]
    pts = [r for r in rows if r["file"] == biggest and r.get("bpb") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = False
    for r in pts:
        marker = "o" if r["ok"] else "x"
        ax.scatter(r["compress_kbps"], r["bpb"], marker=marker, s=50)
        ax.annotate(r["codec"], (r["compress_kbps"], r["bpb"]), textcoords="offset points", xytext=(6, 4))
        if r.get("model_bpb") is not None:  # the model's cross-entropy: what an ideal coder would reach
            ax.scatter(r["compress_kbps"], r["model_bpb"], marker="_", s=120, color="gray",
                       label=None if labelled else "model cross-entropy (tinylmz)")
            labelled = True
    if labelled:
        ax.legend(loc="best", fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("compress speed (KB/s, log scale)")
    ax.set_ylabel("bits per byte")
    ax.set_title(f"{Path(biggest).name} ({pts[0]['raw_bytes'] if pts else 0:,} bytes)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        direction, codec, src, dst, result, opts = argv[1:7]
        child(direction, codec, src, dst, result, json.loads(opts))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=f"files to benchmark (default: {CORPUS}/* plus excerpts)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="tinylmz engines, comma-separated ('' for none)")
    ap.add_argument("--codecs", default=",".join(CLASSIC), help="classic codecs, comma-separated ('' for none)")
    ap.add_argument("--segment-tokens", type=int, default=None, help="tinylmz segment length (default: tinylmz's)")
    ap.add_argument("--block-size", type=int, default=None, help="tinylmz block size (default: tinylmz's)")
    ap.add_argument("--window", type=int, default=None, help="tinylmz window, format version 2 (default: tinylmz's)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="also run each tinylmz row while N busy-loop processes hold cores")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--plot", metavar="OUT.png", help="plot bits/byte vs compress KB/s for the largest file")
    ap.add_argument("--quick", action="store_true", help="only the first 4 KB of alice29 (or of the first file)")
    args = ap.parse_args(argv)

    engines = [e for e in args.engines.split(",") if e]
    codecs = [c for c in args.codecs.split(",") if c]
    bad = [e for e in engines if e not in ENGINES] + [c for c in codecs if c not in CLASSIC]
    if bad:
        ap.error(f"unknown engine/codec {bad}: engines {ENGINES}, codecs {CLASSIC}")
    all_codecs = [f"tinylmz-{e}" for e in engines] + codecs
    # Nothing heavy is imported here before the children run: Linux children inherit the parent's
    # ru_maxrss at fork, so a big parent would inflate every child's peak RSS.
    opts = {"segment_tokens": args.segment_tokens, "block_size": args.block_size, "window": args.window}
    command = shlex.join([sys.executable, sys.argv[0], *argv])
    info = machine()
    if engines:
        info.update(limits())
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinylmz-bench-") as d:
        tmp = Path(d)
        for path in inputs(args, tmp):
            for codec in all_codecs:
                print(f"  {path.name}: {codec} ...", file=sys.stderr, flush=True)
                rows.append(bench_one(path, codec, opts, tmp))
                if args.load and codec.startswith("tinylmz-"):
                    print(f"  {path.name}: {codec} with {args.load} busy process(es) ...", file=sys.stderr, flush=True)
                    with busy(args.load):
                        row = bench_one(path, codec, opts, tmp)
                    idle = rows[-1]
                    row["codec"] = f"{codec} +{args.load} busy"
                    for k in ("compress_kbps", "decompress_kbps"):
                        if row.get(k) and idle.get(k):
                            row[k.replace("kbps", "share")] = row[k] / idle[k]
                    rows.append(row)
    print_table(rows, info, command)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "machine": info, "options": opts,
                                               "results": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
