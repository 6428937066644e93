"""The kernels' thread pool and the thread-count governor: results never depend on threads."""

import ctypes
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tinylmz import kernel, threads


@pytest.fixture(autouse=True)
def _auto_threads():
    yield
    threads.set_threads(None)


def test_pool_products_equal_for_every_thread_count():
    rng = np.random.default_rng(1)
    x = rng.integers(-32767, 32768, (7, 1536)).astype(np.int16)
    w = rng.integers(-127, 128, (2052, 1536)).astype(np.int8)
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    for nt in (1, 2, 3, 5, 16):
        threads.set_threads(nt)
        assert np.array_equal(kernel.qgemm(x, w), want), nt


def _pool_calls():
    """``pool_calls(i)``: how many jobs worker i of the kernel's pool has run."""
    fn = kernel.load()
    assert fn is not None, "the native kernel did not build"
    calls = fn.lib.pool_calls
    calls.restype, calls.argtypes = ctypes.c_int64, [ctypes.c_int64]
    return calls


def _worker_called(calls, before: int) -> bool:
    """Whether worker 1 has run a job since its count was ``before`` (a busy machine may hold it back a while)."""
    deadline = time.monotonic() + 5
    while calls(1) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    return calls(1) > before


def test_decoder_step_products_are_threaded_and_equal():
    """Products of 1, 2 and 7 rows by a 576-wide layer (a decoder step's: 1 or 7 streams) go to
    the pool (on AVX2 or NEON they once ran on one core under 2^22 multiply-adds) and give the
    same integers for every thread count, in the two rounds of long tasks as in one."""
    calls = _pool_calls()
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (1536, 576)).astype(np.int8)
    for n in (1, 2, 7):
        x = rng.integers(-32767, 32768, (n, 576)).astype(np.int16)
        want = x.astype(np.int64) @ w.T.astype(np.int64)
        for nt in (1, 2, 3, 4):
            threads.set_threads(nt)
            assert np.array_equal(kernel.qgemm(x, w), want), (n, nt)
    threads.set_threads(2)
    x = rng.integers(-32767, 32768, (1, 576)).astype(np.int16)
    kernel.qgemm(x, w)  # worker 1 exists now
    before = calls(1)
    for _ in range(50):
        kernel.qgemm(x, w)
    assert _worker_called(calls, before)


def test_pool_calls_only_the_workers_a_job_uses():
    """A pool started with 3 threads, then run with 2: its third worker is never woken (it once
    was, in place of the second, and took the CPU of the two that worked)."""
    calls = _pool_calls()
    rng = np.random.default_rng(4)
    x = rng.integers(-32767, 32768, (7, 1536)).astype(np.int16)
    w = rng.integers(-127, 128, (2052, 1536)).astype(np.int8)
    threads.set_threads(3)
    kernel.qgemm(x, w)  # workers 1 and 2 exist now
    time.sleep(0.01)
    before = calls(1), calls(2)
    threads.set_threads(2)
    for _ in range(50):
        kernel.qgemm(x, w)
    assert _worker_called(calls, before[0])
    assert calls(2) == before[1]


def test_pool_serves_two_callers_at_once():
    """Two Python threads calling the kernel together: one gets the pool, the other runs alone."""
    rng = np.random.default_rng(2)
    x = rng.integers(-32767, 32768, (6, 1024)).astype(np.int16)
    w = rng.integers(-127, 128, (4096, 1024)).astype(np.int8)
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    threads.set_threads(2)
    bad = []

    def loop():
        for _ in range(40):
            if not np.array_equal(kernel.qgemm(x, w), want):
                bad.append(1)

    ts = [threading.Thread(target=loop) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_products_equal_with_cores_taken(tmp_path):
    """Busy processes on every core (the case that once made 2 threads 10x slower): same integers."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        rng = np.random.default_rng(3)
        x = rng.integers(-32767, 32768, (9, 576)).astype(np.int16)
        w = rng.integers(-127, 128, (1536, 576)).astype(np.int8)
        want = x.astype(np.int64) @ w.T.astype(np.int64)
        threads.set_threads(4)
        assert all(np.array_equal(kernel.qgemm(x, w), want) for _ in range(200))
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_set_threads_and_environment(monkeypatch):
    monkeypatch.delenv("TINYLMZ_THREADS", raising=False)
    assert threads.fixed() is None and threads.threads() == threads.available_cpus()
    monkeypatch.setenv("TINYLMZ_THREADS", "3")
    assert threads.fixed() == 3 and threads.threads() == 3
    threads.set_threads(1)  # wins over the environment
    assert threads.threads() == 1
    with pytest.raises(ValueError):
        threads.set_threads(0)
    monkeypatch.setenv("TINYLMZ_THREADS", "many")
    threads.set_threads(None)
    with pytest.raises(ValueError, match="TINYLMZ_THREADS"):
        threads.threads()


def test_threads_side_by_side_share_the_cores():
    """Segments scored side by side take an equal share of the cores, counted at each call: the
    last one left takes them all."""
    threads.set_threads(4)
    both, first_left, seen = threading.Barrier(2), threading.Event(), {}

    def stays():
        with threads.side_by_side():
            both.wait()
            seen["two"] = threads.threads()
            both.wait()
            first_left.wait()
            seen["alone"] = threads.threads()

    def leaves():
        with threads.side_by_side():
            both.wait()
            seen["other"] = threads.threads()
            both.wait()
        first_left.set()

    ts = [threading.Thread(target=stays), threading.Thread(target=leaves)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == {"two": 2, "other": 2, "alone": 4}
    assert threads.threads() == 4


def test_available_cpus_follow_the_affinity_mask():
    """The CPUs a process may use are read again after a second at most (they are cached: a
    decoder asks twice per step), so a narrowed affinity mask is seen."""
    code = (
        "import os, time\n"
        "from tinylmz import threads\n"
        "cpus = sorted(os.sched_getaffinity(0))\n"
        "print(threads.available_cpus(), len(cpus))\n"
        "os.sched_setaffinity(0, cpus[:1])\n"
        "time.sleep(1.1)\n"
        "print(threads.available_cpus())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, after = r.stdout.split("\n")[:2]
    seen, mask = map(int, first.split())
    assert seen <= mask and int(after) == 1


def test_governor_keeps_the_cheapest_count_and_keeps_trying_neighbours():
    g = threads.Governor()
    cost = {1: 1.0, 2: 0.6, 3: 0.5, 4: 2.0}  # seconds per unit: 4 threads on 4 cores, one of them taken
    picks = []
    for _ in range(400):
        nt = g.choose(5, 4)
        picks.append(nt)
        g.record(nt, 5, cost[nt])
    tail = picks[100:]
    assert max(set(tail), key=tail.count) == 3
    assert tail.count(3) > 0.85 * len(tail)
    assert {2, 4} <= set(tail)  # the neighbours are still measured now and then
    # the load changes: 1 thread becomes the cheapest, and the governor follows
    cost.update({1: 0.1, 2: 0.2})
    for _ in range(400):
        nt = g.choose(5, 4)
        g.record(nt, 5, cost[nt])
    assert [g.choose(5, 4) for _ in range(20)].count(1) >= 15


def test_governor_is_off_when_the_count_is_fixed(tiny_model):
    from tinylmz import registry
    from tinylmz.engine_portable import PortableEngine

    m = registry.resolve(str(tiny_model))
    e = PortableEngine(m.path, m.sha256)
    threads.set_threads(2)
    pre = e.prefill([1, 2, 3])
    e.score(pre, [4, 5, 6]).__next__()
    assert e.governor.cost == {}
    threads.set_threads(None)
    list(e.score(pre, [4, 5, 6]))
    assert threads.available_cpus() == 1 or e.governor.cost
