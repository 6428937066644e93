"""tinylmz.distributed and ``--scheduler`` on a real LocalCluster of worker processes (no mocks).

The tiny model and small blocks give many blocks in a few seconds.  Every output is compared
byte for byte with what the local path writes.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tinylmz
from tinylmz import distributed  # needs the "dask" extra (part of "test")
from tinylmz.errors import FormatError, ModelError
from test_cli import TEXT, assert_one_line_error, env, no_temp_files, tlmz
from tinymodel import TRAINING_TEXT

BLOCK = 256
# text and binary, so that model, lzma and stored blocks all occur
DATA = TEXT + random.Random(5).randbytes(600) + TRAINING_TEXT.encode()[700:1500] + b"\x00" * 700


def _cluster(n: int = 2):
    from distributed import Client

    cluster = distributed.local_cluster(n)
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def client():
    cluster, c = _cluster(2)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def test_blocks_on_two_workers_make_the_local_file(client, tiny_model):
    local = tinylmz.compress(DATA, model=tiny_model, block_size=BLOCK)
    out = io.BytesIO()
    totals = distributed.compress(client, io.BytesIO(DATA), out, model=tiny_model, block_size=BLOCK, max_in_flight=3)
    assert out.getvalue() == local
    assert totals.size == len(DATA) and totals.written == len(local)
    # both workers coded blocks: the pipeline really spreads them
    counts = client.run(lambda: sum(1 for k in distributed._cache))
    assert len(counts) == 2 and all(n >= 1 for n in counts.values())
    back = io.BytesIO()
    distributed.decompress(client, io.BytesIO(local), back, model=tiny_model)
    assert back.getvalue() == DATA


def test_context_and_empty_input(client, tiny_model):
    ctx = TEXT[:200]
    local = tinylmz.compress(DATA[:1500], model=tiny_model, block_size=BLOCK, context=ctx)
    out = io.BytesIO()
    distributed.compress(client, io.BytesIO(DATA[:1500]), out, model=tiny_model, block_size=BLOCK, context=ctx)
    assert out.getvalue() == local
    back = io.BytesIO()
    distributed.decompress(client, io.BytesIO(local), back, model=tiny_model, context=ctx)
    assert back.getvalue() == DATA[:1500]
    out = io.BytesIO()
    distributed.compress(client, io.BytesIO(b""), out, model=tiny_model)
    assert out.getvalue() == tinylmz.compress(b"", model=tiny_model)


def test_damaged_file_fails_on_the_cluster(client, tiny_model):
    blob = bytearray(tinylmz.compress(DATA, model=tiny_model, block_size=BLOCK))
    blob[len(blob) // 3] ^= 0x20
    with pytest.raises(FormatError):
        distributed.decompress(client, io.BytesIO(bytes(blob)), io.BytesIO(), model=tiny_model)


def test_worker_without_the_model(client, tiny_model, tmp_path):
    # the client sees the model file, the workers do not: the worker's error comes back as one line
    gone = tmp_path / "gone.gguf"
    shutil.copy(tiny_model, gone)
    job = distributed.compress_job(gone, block_size=BLOCK)
    gone.unlink()
    with pytest.raises(ModelError) as e:
        distributed.make_header(client, job)
    msg = str(e.value)
    assert msg.startswith("worker tcp://") and "gone.gguf" in msg and job.model.sha256 in msg
    assert "\n" not in msg and "Traceback" not in msg
    # decoding without --model: the workers' registry does not know the tiny model
    blob = tinylmz.compress(TEXT, model=tiny_model)
    with pytest.raises(ModelError) as e:
        distributed.decompress(client, io.BytesIO(blob), io.BytesIO())
    assert str(e.value).startswith("worker tcp://") and "--model" in str(e.value)


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(DATA)
    (root / "sub" / "b.bin").write_bytes(DATA[::-1])
    (root / "sub" / "deeper" / "c.txt").write_bytes(TEXT[:300])
    (root / "empty").write_bytes(b"")


def test_cli_directory_on_the_cluster(client, tiny_model, tmp_path):
    """-r with --scheduler: every file's output is the local path's, and it comes back."""
    address = client.scheduler.address
    _tree(tmp_path / "d")
    originals = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    r = tlmz("compress", "-r", "-m", tiny_model, "-B", BLOCK, "--scheduler", address, "--rm", tmp_path / "d")
    assert r.code == 0, r.err
    for p, raw in originals.items():
        assert not p.exists()  # --rm: verified on the cluster, then removed
        assert Path(str(p) + ".tlmz").read_bytes() == tinylmz.compress(raw, model=tiny_model, block_size=BLOCK), p
    r = tlmz("test", "-r", "-m", tiny_model, "--scheduler", address, tmp_path / "d")
    assert r.code == 0 and r.out.count(b": OK") == len(originals), r.err
    r = tlmz("decompress", "-r", "-m", tiny_model, "--scheduler", address, tmp_path / "d")
    assert r.code == 0, r.err
    for p, raw in originals.items():
        assert p.read_bytes() == raw
    assert all(no_temp_files(d) for d in [tmp_path / "d", tmp_path / "d" / "sub", tmp_path / "d" / "sub" / "deeper"])


def test_cli_cluster_errors_are_per_file(client, tiny_model, tmp_path):
    address = client.scheduler.address
    (tmp_path / "a.txt").write_bytes(DATA)
    (tmp_path / "b.txt").write_bytes(TEXT)
    (tmp_path / "b.txt.tlmz").write_bytes(b"precious")
    r = tlmz("compress", "-m", tiny_model, "-B", BLOCK, "--scheduler", address,
             tmp_path / "a.txt", tmp_path / "missing.txt", tmp_path / "b.txt")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("tinylmz: error: ") for line in lines), r.err
    assert "missing.txt" in lines[0] and "b.txt.tlmz" in lines[1] and "exists" in lines[1]
    assert (tmp_path / "a.txt.tlmz").read_bytes() == tinylmz.compress(DATA, model=tiny_model, block_size=BLOCK)
    assert (tmp_path / "b.txt.tlmz").read_bytes() == b"precious"
    # a damaged file among good ones: only it fails, and leaves nothing
    bad = bytearray((tmp_path / "a.txt.tlmz").read_bytes())
    bad[len(bad) // 2] ^= 1
    (tmp_path / "bad.tlmz").write_bytes(bytes(bad))
    (tmp_path / "a.txt").unlink()
    r = tlmz("decompress", "-m", tiny_model, "--scheduler", address, tmp_path / "bad.tlmz", tmp_path / "a.txt.tlmz")
    assert r.code == 1 and "bad.tlmz" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert (tmp_path / "a.txt").read_bytes() == DATA and not (tmp_path / "bad").exists()
    assert no_temp_files(tmp_path)


def test_killed_worker_costs_a_retry_not_the_output(tiny_model):
    """SIGKILL a worker process while it codes a block: the scheduler reruns the block elsewhere."""
    cluster, client = _cluster(2)
    try:
        data = (TRAINING_TEXT.encode() * 8)[:12_000]
        block = 600
        local = tinylmz.compress(data, model=tiny_model, block_size=block)
        pids = client.run(os.getpid)
        done: list[int] = []
        result: dict = {}

        def work():
            out = io.BytesIO()
            try:
                distributed.compress(client, io.BytesIO(data), out, model=tiny_model, block_size=block,
                                     progress=done.append)
                result["out"] = out.getvalue()
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                result["error"] = e

        t = threading.Thread(target=work)
        t.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and t.is_alive():
            if done:  # the engine is loaded and blocks flow: kill one that is coding right now
                busy = client.run(lambda dask_worker: len(dask_worker.state.executing))
                victim = next((a for a, n in busy.items() if n), None)
            time.sleep(0.05)
        assert victim is not None, "no worker was busy"
        os.kill(pids[victim], signal.SIGKILL)
        t.join(300)
        assert "error" not in result, result.get("error")
        assert result["out"] == local
        assert sum(done) == len(data)  # every block written once, the rerun one included
        client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
        assert pids[victim] not in client.run(os.getpid).values()
    finally:
        client.close()
        cluster.close()


def test_interrupted_cluster_run_leaves_no_output(tmp_path, tiny_model):
    """SIGINT to a `--scheduler local:2` run: exit 130, only the input is left."""
    src = tmp_path / "big.txt"
    big = (TRAINING_TEXT * 40).encode()
    src.write_bytes(big)
    p = subprocess.Popen([sys.executable, "-m", "tinylmz.cli", "compress", "-m", str(tiny_model), "-B", "1K",
                          "--scheduler", "local:2", str(src)], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not [q for q in tmp_path.iterdir() if q.name.startswith(".tinylmz-")]:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # blocks in flight
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err), 130)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["big.txt"]
    assert src.read_bytes() == big


def test_scheduler_local_n_from_the_environment(tmp_path, tiny_model):
    """TINYLMZ_SCHEDULER=local:2 in a real process: the same file as without it."""
    (tmp_path / "a.txt").write_bytes(DATA)
    e = {**env(), "TINYLMZ_SCHEDULER": "local:2"}
    r = subprocess.run([sys.executable, "-m", "tinylmz.cli", "compress", "-m", str(tiny_model), "-B", str(BLOCK),
                        "-T", "1", str(tmp_path / "a.txt")], env=e, capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert (tmp_path / "a.txt.tlmz").read_bytes() == tinylmz.compress(DATA, model=tiny_model, block_size=BLOCK)
    r = subprocess.run([sys.executable, "-m", "tinylmz.cli", "compress", "--scheduler", "local:x", "a.txt"],
                       env=env(), cwd=tmp_path, capture_output=True, timeout=300)
    assert_one_line_error(r, 2)


def test_first_block_sets_the_stream_length_on_the_cluster(client, tiny_model, tmp_path):
    """A first block longer than one stream: a worker sets the stream length as the local path
    does (codec.stream_length), from the API and from the CLI (which verifies with it)."""
    from tinylmz import codec, container

    data = TRAINING_TEXT.encode() * 28
    local = tinylmz.compress(data, model=tiny_model, block_size=24576)
    assert container.Reader(io.BytesIO(local)).header.segment_tokens < codec.V2_SEGMENT_TOKENS
    out = io.BytesIO()
    totals = distributed.compress(client, io.BytesIO(data), out, model=tiny_model, block_size=24576)
    assert out.getvalue() == local and totals.header.segment_tokens < codec.V2_SEGMENT_TOKENS
    (tmp_path / "big.txt").write_bytes(data)
    (tmp_path / "small.txt").write_bytes(data[:3000])
    r = tlmz("compress", "-m", tiny_model, "-B", 24576, "--scheduler", client.scheduler.address, "--rm",
             tmp_path / "big.txt", tmp_path / "small.txt")
    assert r.code == 0, r.err
    assert (tmp_path / "big.txt.tlmz").read_bytes() == local
    assert (tmp_path / "small.txt.tlmz").read_bytes() == tinylmz.compress(data[:3000], model=tiny_model,
                                                                          block_size=24576)
