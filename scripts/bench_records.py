#!/usr/bin/env python3
"""Benchmark record mode (``tinylmz.records``) against zstd and brotli on synthetic logger data.

Generates (seeded, deterministic) sensor CSV and JSON-lines logs of 40-120 byte
records; the context is the header line + the first ``--context-records``
records; the next ``-n`` records are compressed one at a time by

* tinylmz record mode (default model, portable engine unless ``--engine``);
* zstd -19 with a dictionary trained on the context records (falls back to a
  raw-content dictionary of the context when training fails; the table says
  which), smallest frame: no magic number, no dictionary id, no checksum;
* zstd -19 and brotli -q 11 without a dictionary.

and decompressed (tinylmz: one at a time for a few records, and side by side
with ``decompress_many``).  ``--json`` prints the results as JSON.

    python scripts/bench_records.py -n 200
    python scripts/bench_records.py -n 24 --data log --load 1     # also with one core taken
    python scripts/bench_records.py --gen csv -n 20 > sample.csv    # just the data
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STATUSES = ["OK"] * 17 + ["WARN_BATT", "RETRY", "ERR_SENSOR"]


def _devices(rng: random.Random, k: int = 8) -> list[dict]:
    return [{"id": f"sensor-{rng.randrange(1, 9999):04d}", "t": rng.uniform(15, 28), "h": rng.uniform(30, 70),
             "bat": rng.uniform(3.5, 4.2), "rssi": rng.randrange(-90, -50), "fw": rng.choice(["1.4.2", "1.5.0"])}
            for _ in range(k)]


def _readings(rng: random.Random, n: int):
    """``n`` (unix time, device) pairs: a random device of 8, its values drifted since its last reading."""
    devs = _devices(rng)
    t = 1714557600  # 2024-05-01T10:00:00Z
    for _ in range(n):
        d = rng.choice(devs)
        t += rng.randrange(1, 20)
        d["t"] += rng.gauss(0, 0.15)
        d["h"] = min(99.0, max(5.0, d["h"] + rng.gauss(0, 0.4)))
        d["bat"] -= rng.uniform(0, 0.002)
        yield t, d


def gen_csv(n: int, seed: int = 1) -> list[bytes]:
    """Header line + ``n`` CSV records (timestamp, device, temperature, humidity, battery, rssi, status)."""
    rng = random.Random(seed)
    out = [b"timestamp,device,temp_c,humidity,battery_v,rssi_dbm,status"]
    for t, d in _readings(rng, n):
        rssi = d["rssi"] + rng.randrange(-3, 4)
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        out.append(f"{ts},{d['id']},{d['t']:.2f},{d['h']:.1f},{d['bat']:.3f},{rssi},{rng.choice(STATUSES)}".encode())
    return out


def gen_jsonl(n: int, seed: int = 2) -> list[bytes]:
    """``n`` JSON-lines records (no header line: the first element is b"" for symmetry with gen_csv)."""
    rng = random.Random(seed)
    out = [b""]
    for t, d in _readings(rng, n):
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)), "dev": d["id"], "temp": round(d["t"], 2),
               "hum": round(d["h"], 1), "bat": round(d["bat"], 3), "st": rng.choice(STATUSES).lower()}
        if rng.random() < 0.2:
            rec["rssi"] = d["rssi"] + rng.randrange(-3, 4)
        if rng.random() < 0.05:
            rec["fw"] = d["fw"]
        out.append(json.dumps(rec, separators=(",", ":")).encode())
    return out


def gen_log(n: int, seed: int = 3) -> list[bytes]:
    """``n`` text log lines of about 80 bytes (readings, with some warnings and errors); no header."""
    rng = random.Random(seed)
    out = [b""]
    for t, d in _readings(rng, n):
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
        u = rng.random()
        if u < 0.85:
            msg = (f"INFO {d['id']} temp={d['t']:.2f}C hum={d['h']:.1f}% bat={d['bat']:.3f}V "
                   f"rssi={d['rssi'] + rng.randrange(-3, 4)} ok")
        elif u < 0.95:
            msg = (f"WARN {d['id']} weak signal (rssi={d['rssi'] - rng.randrange(12, 20)}), "
                   f"upload deferred {rng.choice([30, 60, 120])}s")
        else:
            msg = f"ERROR {d['id']} sensor read timeout after {rng.randrange(100, 900)}ms, retry {rng.randrange(1, 4)}"
        out.append(f"{ts} {msg}".encode())
    return out


GENERATORS = {"csv": gen_csv, "jsonl": gen_jsonl, "log": gen_log}


def dataset(kind: str, n: int, n_context: int) -> tuple[bytes, list[bytes], list[bytes]]:
    """(context, context sample records, test records)."""
    lines = GENERATORS[kind](n_context + n)
    header, recs = lines[0], lines[1:]
    sample, test = recs[:n_context], recs[n_context:]
    context = b"".join(x + b"\n" for x in ([header] if header else []) + sample)
    return context, sample, test


def bench_zstd(context: bytes, sample: list[bytes], test: list[bytes]) -> list[dict]:
    import zstandard as zstd

    rows = []
    kind = "trained"
    raw = zstd.ZstdCompressionDict(context, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    try:
        d = zstd.train_dictionary(max(256, len(context)), sample + [context], level=19)
        d.precompute_compress(level=19)
    except zstd.ZstdError as e:
        kind = f"raw-content (training failed: {e})"
        d = raw
    variants = [(f"zstd-19 + {kind.split(' ')[0]} dict", d, True)]
    if d is not raw:
        variants.append(("zstd-19 + raw-content dict", raw, True))
    variants.append(("zstd-19", None, False))
    for name, dd, magicless in variants:
        kw = dict(level=19, write_checksum=False, write_dict_id=False)
        if magicless:
            kw["compression_params"] = zstd.ZstdCompressionParameters.from_level(
                19, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=False, write_dict_id=False,
                write_content_size=True)
            kw = {"compression_params": kw["compression_params"]}
        c = zstd.ZstdCompressor(dict_data=dd, **kw) if dd is not None else zstd.ZstdCompressor(**kw)
        t0 = time.perf_counter()
        frames = [c.compress(r) for r in test]
        dt = time.perf_counter() - t0
        dparams = {"dict_data": dd} if dd is not None else {}
        dec = zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS if magicless else zstd.FORMAT_ZSTD1, **dparams)
        t0 = time.perf_counter()
        back = [dec.decompress(f) for f in frames]
        ddt = time.perf_counter() - t0
        assert back == test
        rows.append({"method": name, "bytes_per_record": sum(map(len, frames)) / len(test),
                     "compress_rec_s": len(test) / dt, "decompress_rec_s": len(test) / ddt})
    rows[0]["dictionary"] = kind
    return rows


def bench_brotli(test: list[bytes]) -> dict:
    import brotli

    t0 = time.perf_counter()
    frames = [brotli.compress(r, quality=11) for r in test]
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert [brotli.decompress(f) for f in frames] == test
    ddt = time.perf_counter() - t0
    return {"method": "brotli-11", "bytes_per_record": sum(map(len, frames)) / len(test),
            "compress_rec_s": len(test) / dt, "decompress_rec_s": len(test) / ddt}


def bench_tinylmz(context: bytes, test: list[bytes], model, engine: str, profile: bool, n_single: int) -> dict:
    from tinylmz.records import RecordCodec, frame_method

    t0 = time.perf_counter()
    codec = RecordCodec(context, model=model, engine=engine)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    codec.prepare()
    t_prefix = time.perf_counter() - t0
    ctx_tokens = codec.session.prefix.n_tokens
    n_tokens = sum(len(codec.tokenize(r)) for r in test)

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    frames = [codec.compress(r) for r in test]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof:
        prof.disable()
        _print_profile(prof, "compress")

    t0 = time.perf_counter()
    single = [codec.decompress(f) for f in frames[:n_single]]
    dt1 = time.perf_counter() - t0
    assert single == test[:n_single]

    if profile:
        prof = __import__("cProfile").Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    back = codec.decompress_many(frames)
    ddt, dcpu = time.perf_counter() - t0, time.process_time() - c0
    if prof:
        prof.disable()
        _print_profile(prof, "decompress_many")
    assert back == test
    methods = {}
    for f in frames:
        methods[frame_method(f)] = methods.get(frame_method(f), 0) + 1
    return {"method": f"tinylmz records ({codec.engine.name}, {codec.model.name})",
            "bytes_per_record": sum(map(len, frames)) / len(test),
            "compress_rec_s": len(test) / dt, "decompress_rec_s": n_single / dt1 if n_single else None,
            "decompress_many_rec_s": len(test) / ddt, "decompress_many_tok_s": n_tokens / ddt,
            "tokens_per_record": n_tokens / len(test), "context_tokens": ctx_tokens,
            # CPU seconds (all threads) per record: comparable across runs on a shared machine
            "compress_cpu_ms": 1000 * cpu / len(test), "decompress_many_cpu_ms": 1000 * dcpu / len(test),
            "load_s": t_load, "prefix_s": t_prefix, "methods": methods}


def _print_profile(prof, what: str) -> None:
    import io
    import pstats

    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    print(f"--- profile: {what} (by own time) ---", file=sys.stderr)
    print("\n".join(s.getvalue().splitlines()[:40]), file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="test records per data set (default 200)")
    ap.add_argument("--context-records", type=int, default=30, help="sample records in the context (default 30)")
    ap.add_argument("--data", choices=[*GENERATORS, "both", "all"], default="all",
                    help="data set: csv, jsonl, log (~80-byte text lines), both (csv and jsonl) or all (default)")
    ap.add_argument("--model", default=None, help="model name or .gguf path (default model)")
    ap.add_argument("--engine", default="portable")
    ap.add_argument("--single", type=int, default=10, help="records decompressed one at a time (default 10)")
    ap.add_argument("--profile", action="store_true", help="cProfile the tinylmz runs (to stderr)")
    ap.add_argument("--no-tinylmz", action="store_true")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="also run tinylmz while N busy-loop processes hold cores (another program on the machine)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--gen", choices=list(GENERATORS), help="only print -n generated lines (with header) and exit")
    a = ap.parse_args(argv)
    if a.gen:
        lines = GENERATORS[a.gen](a.n)
        sys.stdout.buffer.write(b"".join(x + b"\n" for x in lines if x))
        return 0
    if a.load:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench import busy  # the same busy-loop processes as bench.py's --load
    results = []
    kinds = {"both": ["csv", "jsonl"], "all": list(GENERATORS)}.get(a.data, [a.data])
    for kind in kinds:
        context, sample, test = dataset(kind, a.n, a.context_records)
        info = {"data": kind, "records": len(test), "context_bytes": len(context),
                "avg_record_bytes": sum(map(len, test)) / len(test),
                "min_record_bytes": min(map(len, test)), "max_record_bytes": max(map(len, test))}
        rows = []
        if not a.no_tinylmz:
            rows.append(bench_tinylmz(context, test, a.model, a.engine, a.profile, min(a.single, len(test))))
            if a.load:
                with busy(a.load):
                    row = bench_tinylmz(context, test, a.model, a.engine, False, min(a.single, len(test)))
                rows.append({**row, "method": f"{row['method'][:34]} +{a.load} busy"})
        rows += bench_zstd(context, sample, test)
        rows.append(bench_brotli(test))
        results.append({**info, "rows": rows})
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"\n{r['data']}: {r['records']} records, {r['avg_record_bytes']:.1f} bytes avg "
              f"({r['min_record_bytes']}-{r['max_record_bytes']}), context {r['context_bytes']} bytes")
        print(f"{'method':44} {'B/record':>9} {'ratio':>6} {'comp rec/s':>11} {'dec rec/s':>10}")
        for row in r["rows"]:
            dec = row.get("decompress_rec_s")
            print(f"{row['method'][:44]:44} {row['bytes_per_record']:9.2f} "
                  f"{row['bytes_per_record'] / r['avg_record_bytes']:6.3f} {row['compress_rec_s']:11.1f} "
                  f"{dec if dec is None else format(dec, '10.1f'):>10}")
        for row in r["rows"]:
            if "decompress_many_tok_s" in row:
                print(f"  tinylmz: decompress_many {row['decompress_many_rec_s']:.1f} records/s, "
                      f"{row['decompress_many_tok_s']:.1f} tokens/s; CPU per record: compress "
                      f"{row['compress_cpu_ms']:.0f} ms, decompress_many {row['decompress_many_cpu_ms']:.0f} ms; "
                      f"{row['tokens_per_record']:.1f} tokens/record, "
                      f"context {row['context_tokens']} tokens "
                      f"(prefill {row['prefix_s']:.2f} s, load {row['load_s']:.2f} s); methods {row['methods']}")
            if "dictionary" in row:
                print(f"  zstd dictionary: {row['dictionary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
