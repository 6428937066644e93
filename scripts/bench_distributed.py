"""Scaling of tinylmz on a Dask LocalCluster: 1 vs 2 (or more) single-threaded workers.

    OPENBLAS_NUM_THREADS=1 python scripts/bench_distributed.py                 # 512 KB, 1 and 2 workers
    python scripts/bench_distributed.py --size 64K --block-size 16K --workers 1,2 --json out.json

The input is a concatenation of different texts (alice29, the license texts in
/usr/share/common-licenses, Python's standard library sources), cut to ``--size``: good
for throughput, not a ratio benchmark.  For each worker count it starts a fresh
LocalCluster (workers: 1 task and 1 kernel thread each) and measures

* startup: the cluster up, in seconds;
* round-trip: the median of 30 trivial tasks one after another (the per-task overhead of
  the scheduler, which each block pays once);
* model load: the first task on each worker (checks the model, loads the engine);
* compress: ``tinylmz.distributed.compress`` of the whole input, engines already loaded;

and prints KB/s, the scaling against the first worker count, and from what input size
the cluster pays (its startup against the time the extra workers save; the workers load
the model side by side, which one process must do too).  The files
made with each worker count are compared byte for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinylmz import distributed  # noqa: E402
from tinylmz.cli.common import parse_size  # noqa: E402


def corpus(size: int) -> tuple[bytes, list[str]]:
    """``size`` bytes of different texts, and the files they came from."""
    sources = [ROOT.parent / "shared" / "corpus" / "alice29.txt", Path("/work/shared/corpus/alice29.txt")]
    paths = [p for p in sources if p.is_file()][:1]
    paths += sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file() and not p.is_symlink())
    paths += sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out, used = bytearray(), []
    for p in paths:
        if len(out) >= size:
            break
        try:
            out += p.read_bytes()
        except OSError:
            continue
        used.append(str(p))
    if len(out) < size:
        raise SystemExit(f"only {len(out)} bytes of text found")
    return bytes(out[:size]), used


def measure(n: int, data: bytes, model, block_size: int) -> dict:
    from distributed import Client

    t0 = time.monotonic()
    cluster = distributed.local_cluster(n)
    client = Client(cluster)
    try:
        client.wait_for_workers(n)
        startup = time.monotonic() - t0
        rtts = []
        for i in range(30):
            t = time.monotonic()
            client.submit(distributed.ping_task, i, pure=False).result()
            rtts.append(time.monotonic() - t)
        job = distributed.compress_job(model, threads=1, block_size=block_size)
        loads = []
        for addr in sorted(client.scheduler_info()["workers"]):
            t = time.monotonic()
            client.submit(distributed.header_task, job, workers=[addr], allow_other_workers=False, pure=False).result()
            loads.append(time.monotonic() - t)
        out = io.BytesIO()
        t = time.monotonic()
        distributed.compress(client, io.BytesIO(data), out, model=model, threads=1, block_size=block_size)
        seconds = time.monotonic() - t
    finally:
        client.close()
        cluster.close()
    return {"workers": n, "seconds": seconds, "kb_s": len(data) / 1024 / seconds, "startup_s": startup,
            "roundtrip_ms": 1000 * statistics.median(rtts), "load_s": loads, "out": out.getvalue()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512K", help="input size (default 512K)")
    ap.add_argument("--block-size", default="64K", help="block size (default 64K)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--model", default=None, help="registry name or .gguf path (default: the default model)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    size = parse_size(args.size) if args.size[-1:].isalpha() else int(args.size)
    block_size = parse_size(args.block_size)
    data, used = corpus(size)
    print(f"input: {len(data)} bytes from {len(used)} files ({used[0]} ...), block size {block_size}, "
          f"{-(-len(data) // block_size)} blocks", flush=True)
    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        rows.append(measure(n, data, args.model, block_size))
        print(f"  {n} worker(s): {rows[-1]['seconds']:.1f} s", flush=True)
    same = all(r["out"] == rows[0]["out"] for r in rows)
    base = rows[0]
    print()
    print("| workers | seconds | KB/s | scaling | startup s | round-trip ms | model load s per worker |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        r["scaling"] = r["kb_s"] / base["kb_s"]
        print(f"| {r['workers']} | {r['seconds']:.1f} | {r['kb_s']:.2f} | {r['scaling']:.2f}x | {r['startup_s']:.1f} "
              f"| {r['roundtrip_ms']:.1f} | {', '.join(f'{x:.1f}' for x in r['load_s'])} |")
    print()
    print(f"outputs identical across worker counts: {same} ({len(base['out'])} bytes)")
    for r in rows[1:]:
        # the workers load the model side by side, as one process would: what a cluster adds is its
        # startup, against the time the extra workers save
        saved_per_kb = 1 / base["kb_s"] - 1 / r["kb_s"]
        if saved_per_kb > 0:
            print(f"{r['workers']} workers against {base['workers']} pay from about "
                  f"{r['startup_s'] / saved_per_kb:.0f} KB of input (cluster startup {r['startup_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps({"size": len(data), "block_size": block_size, "identical": same,
                                         "rows": [{k: v for k, v in r.items() if k != "out"} for r in rows]},
                                        indent=2))
    if not same:
        raise SystemExit("outputs differ between worker counts")


if __name__ == "__main__":
    main()
