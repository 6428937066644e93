"""The portable engine: identical results however it is asked, wherever it runs."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinylmz import elementwise, engine_portable, registry
from tinylmz.engine_portable import PortableEngine

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("Alice was beginning to get very tired of sitting by her sister on the bank, "
        "and of having nothing to do: once or twice she had peeped into the book. ").encode() * 2


def _engine(path, native=None):
    m = registry.resolve(str(path))
    return PortableEngine(m.path, m.sha256, native=native)


def _ids(n, seed=0, vocab=400):
    return np.random.default_rng(seed).integers(1, vocab, n)


@pytest.mark.parametrize("window", [None, engine_portable.WINDOW_STEP])
def test_scoring_into_reused_buffers_gives_the_same_rows(tiny_model, monkeypatch, window):
    """``score(reuse=True)`` (the encoder's way: two buffers, each chunk consumed before the next)
    yields the rows of a plain ``score``, chunk for chunk, across window steps and chunk sizes."""
    eng = _engine(tiny_model)
    pre = eng.prefill([0, 5])
    ids = _ids(3 * engine_portable.WINDOW_STEP + 11)
    monkeypatch.setattr(engine_portable, "CHUNK", 100)  # chunks that straddle the window's steps
    plain = list(eng.score(pre, ids, window=window))
    reused = [c.copy() for c in eng.score(pre, ids, window=window, reuse=True)]
    assert len(plain) == len(reused) > 6
    assert all(np.array_equal(a, b) for a, b in zip(plain, reused))
    assert sum(map(len, reused)) == len(ids)


def test_batched_equals_incremental(tiny_model, monkeypatch):
    eng = _engine(tiny_model)
    pre = eng.prefill([0, 5, 9])
    ids = _ids(40)
    whole = np.concatenate(list(eng.score(pre, ids)))
    monkeypatch.setattr(engine_portable, "CHUNK", 7)  # other chunking, same numbers
    chunked = np.concatenate(list(eng.score(pre, ids)))
    st = eng.stepper(pre, 3)  # three streams in lockstep, the first is ours
    other = _ids(40, seed=1)
    steps = []
    for i in range(40):
        steps.append(st.logits()[0].copy())
        st.feed([ids[i], other[i], other[-i]] if i < 20 else [ids[i], other[i]])
    assert np.array_equal(whole, chunked)
    assert np.array_equal(whole, np.array(steps))


@pytest.mark.parametrize("native", [True, False])
def test_shared_prefix_equals_copied_prefix(tiny_model, monkeypatch, native):
    """A long prefix (a record codec's context) is shared by all streams, not copied: same numbers."""
    eng = _engine(tiny_model, native=native)
    pre = eng.prefill([0] + _ids(engine_portable.SHARE_MIN + 17, seed=5).tolist())
    ids, other = _ids(30), _ids(30, seed=1)

    def run():
        whole = np.concatenate(list(eng.score(pre, ids)))
        st = eng.stepper(pre, 3)
        steps = []
        for i in range(30):
            steps.append(st.logits()[:2].copy())
            st.feed([ids[i], other[i], other[-i]] if i < 12 else [ids[i], other[i]])
        return whole, np.array(steps)

    shared_whole, shared_steps = run()
    monkeypatch.setattr(engine_portable, "SHARE_MIN", 10**9)  # copy the prefix into every stream instead
    copied_whole, copied_steps = run()
    assert np.array_equal(shared_whole, copied_whole) and np.array_equal(shared_steps, copied_steps)
    assert np.array_equal(shared_whole, shared_steps[:, 0])


def test_shared_prefix_native_equals_numpy(tiny_model):
    prefix = [0] + _ids(engine_portable.SHARE_MIN + 3, seed=6).tolist()
    out = []
    for native in (True, False):
        eng = _engine(tiny_model, native=native)
        st = eng.stepper(eng.prefill(prefix), 2)
        st.feed([7, 8])
        out.append(np.concatenate([np.concatenate(list(eng.score(eng.prefill(prefix), _ids(20)))), st.logits()]))
    assert np.array_equal(out[0], out[1])


def test_prefix_then_tokens_equals_longer_prefix(tiny_model):
    eng = _engine(tiny_model)
    a = np.concatenate(list(eng.score(eng.prefill([0]), [7, 8, 9, 10])))
    b = np.concatenate(list(eng.score(eng.prefill([0, 7, 8]), [9, 10])))
    assert np.array_equal(a[2:], b)


def test_native_kernel_equals_numpy(tiny_model):
    from tinylmz import kernel

    if kernel.load() is None:
        pytest.fail("the native kernel did not build here; a C compiler is a documented requirement")
    ids = _ids(60)
    a, b = _engine(tiny_model, native=True), _engine(tiny_model, native=False)
    la = np.concatenate(list(a.score(a.prefill([0]), ids)))
    lb = np.concatenate(list(b.score(b.prefill([0]), ids)))
    assert np.array_equal(la, lb)


def test_native_kernel_is_exact_at_the_extremes():
    from tinylmz import kernel

    for K in (1536, 4133):  # several int32 blocks, and a tail past the last full vector
        x = np.full((5, K), -32767, np.int16)
        w = np.full((9, K), 127, np.int8)
        assert (kernel.qgemm(x, w) == -32767 * 127 * K).all()
        assert (kernel.qgemm(-x, w) == 32767 * 127 * K).all()


def test_kernel_builds_for_this_cpu():
    """A compile error in the fast paths would fall back to plainer flags without a word: where the
    CPU has AVX-512 VNNI (Linux tells), the lane-wise paths and the thread pool must be built."""
    from tinylmz import kernel

    fn = kernel.load()
    assert fn is not None, "the native kernel did not build (a C compiler is a requirement)"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.exists() and os.uname().machine == "x86_64":  # under qemu-user, arm64 reads the x86 host's
        line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    if {"avx512_vnni", "avx512bw", "avx512dq"} <= flags:
        assert kernel.packs() and kernel.fused_attention(64, 8)
        assert fn.lib.qgemm_parallel() == 1  # built with -pthread, the first set of flags tried
    else:
        assert not kernel.packs()


def test_packed_product_is_exact():
    """The lane-wise product on packed weights (AVX-512 VNNI) equals the integer product, padding included."""
    from tinylmz import kernel
    from tinylmz.weights import QLinear

    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (37, 4133)).astype(np.int8)  # 37 rows: a padded block; 4133: a padded quad
    x = rng.integers(-32767, 32768, (9, 4133)).astype(np.int16)
    w[:3], w[3:5], x[0], x[1] = -127, 127, 32767, -32767  # the largest products, both signs
    if not kernel.packs():  # no VNNI here: the engine must hold int8 rows, not packed ones
        lin = QLinear(w, np.ones(37, np.float32), native=True)
        assert lin.packed is None and lin.native is lin.q
        return
    # 37 rows: 2 tiles of 32; 1000 rows: 32 tiles, cut between threads in two rounds of tasks
    for w, x in ((w, x), (rng.integers(-127, 128, (1000, 700)).astype(np.int8), x[:, :700].copy())):
        pw = kernel.Packed(w)
        want = x.astype(np.int64) @ w.T.astype(np.int64)
        for n in range(1, 10):  # every tiling of the rows: 4s, then 3, 2 (also 3 + 3) or 1
            for t in (1, 2, 3, 5):  # x and -x in turn: a tile left out cannot show the last call's numbers
                for sign in (-1, 1):
                    got = kernel._run_packed(pw.lib, np.ascontiguousarray(sign * x[:n]), pw, t)
                    assert np.array_equal(got, sign * want[:n]), (n, t)
    assert np.array_equal(QLinear(w, np.ones(len(w), np.float32), native=True).rows(), w)


@pytest.mark.parametrize("R,T", [(1, 1), (1, 40), (3, 2049), (5, 30), (7, 33), (8, 1), (13, 17), (40, 130), (150, 300)])
def test_attention_products_are_exact(R, T):
    """qk and pv (the key-lane kernels, 1 to 8 rows per block of keys) equal int64 products, at the extremes too."""
    from tinylmz import kernel

    rng = np.random.default_rng(R * 1000 + T)
    q = rng.integers(-127, 128, (2, 3, R, 64)).astype(np.int8)
    k = rng.integers(-127, 128, (2, 3, T + 7, 64)).astype(np.int8)
    q[0, 0, :2], k[0, 0, :3] = -127, -127
    k[1, 2, :2] = 127
    want = q.astype(np.int64) @ k[:, :, :T].astype(np.int64).transpose(0, 1, 3, 2)
    assert np.array_equal(kernel.attn_scores(q, k, T), want)
    p = rng.integers(0, 1 << 16, (2, 3, R, T)).astype(np.int32)
    p[0, 0, 0], p[1, 1, :, ::2] = 1 << 16, 0  # the largest weight (a high byte of 256), and zeros
    p[1, 2, -1, -1] = 1 << 16
    p[0, 1, :, :6] = [32766, 32767, 32768, 65534, 65535, 65536][: min(T, 6)]  # where the AVX2 kernel splits weights
    want = p.astype(np.int64) @ k[:, :, :T].astype(np.int64)
    assert np.array_equal(kernel.attn_values(p, k), want)


@pytest.mark.parametrize("shared", [False, True])
def test_fused_attention_equals_numpy(wide_model, monkeypatch, shared):
    """Heads of 64: the encoder's one-pass attention (kernel.attend1, where the CPU has it) and the
    decoder's kernels give the numpy engine's logits, with a shared prefix or a copied one."""
    from tinylmz import kernel

    prefix = [0] + _ids(engine_portable.SHARE_MIN + 21, seed=8).tolist()
    if not shared:
        monkeypatch.setattr(engine_portable, "SHARE_MIN", 10**9)
    calls = []
    real = kernel.attend1
    monkeypatch.setattr(kernel, "attend1", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = _ids(45, seed=9)  # 44 positions x 2 query heads: several row tiles, a partial one
    out = []
    for native in (True, False):
        eng = _engine(wide_model, native=native)
        pre = eng.prefill(prefix)
        st = eng.stepper(pre, 2)
        steps = []
        for i in range(12):
            steps.append(st.logits().copy())
            st.feed([ids[i], ids[-i]])
        out.append((np.concatenate(list(eng.score(pre, ids))), np.array(steps)))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
    assert np.array_equal(out[0][0][:12], out[0][1][:, 0])
    assert bool(calls) == kernel.fused_attention(64, 8)


def test_softmax_weights_equal_the_numpy_definition():
    """The vectorized weight kernel rounds exactly as engine_portable._attend_numpy, shared scales included."""
    from tinylmz import kernel, tables

    rng = np.random.default_rng(4)
    n, H, R, P, own = 2, 3, 12, 37, 5
    T = P + own
    acc = rng.integers(-400000, 400000, (n, H, R, T)).astype(np.int32)
    acc[0, 0, 0, :3] = acc[0, 0, 0, 3]  # ties for the maximum
    sq = rng.random((n, H, R)) * 1e-3
    sk, sv = rng.random((n, H, 8)) * 0.05, rng.random((n, H, 8)) * 0.05
    sk0, sv0 = rng.random((1, H, P)) * 0.05, rng.random((1, H, P)) * 0.05
    sv0[0, 1, 4] = 0.2  # the largest value scale: its key may weigh exactly 2^16
    pos = np.repeat(np.arange(T - R // 3, T), 3)
    svmax = np.maximum.accumulate(np.concatenate([np.broadcast_to(sv0, (n, H, P)), sv[..., :own]], -1), -1)[..., pos]
    E = tables.att_exp()
    p, esum = kernel.softmax_p(acc, sq, sk, sv, svmax, pos, 0.125, tables.ATT_STEPS, E,
                               tuple(np.broadcast_to(a, (n, H, P)) for a in (sk0, sv0)))
    skk = np.concatenate([np.broadcast_to(sk0, (n, H, P)), sk[..., :own]], -1)
    svv = np.concatenate([np.broadcast_to(sv0, (n, H, P)), sv[..., :own]], -1)
    want_p, want_esum = elementwise.attention_weights(acc.astype(np.float64), sq, skk, svv, svmax, pos, 0.125)
    assert np.array_equal(p, want_p) and np.array_equal(esum, want_esum)
    assert (p == 1 << 16).any()


FORBIDDEN = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "sinh", "cosh", "sin", "cos",
             "tan", "arctan", "power", "float_power", "sigmoid", "erf", "pow", "sqrt_approx"}


@pytest.mark.parametrize("module", ["engine_portable.py", "weights.py", "kernel.py", "freqs.py"])
def test_no_transcendental_calls_in_inference_code(module):
    tree = ast.parse((ROOT / "tinylmz" / module).read_text())
    report_only = {"model_bits"}  # freqs.model_bits measures cross-entropy for -v; it never feeds the coder
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name in report_only:
            fn.body = []
    bad = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in FORBIDDEN
                and isinstance(node.value, ast.Name) and node.value.id in {"np", "numpy", "math", "cmath", "scipy"}):
            bad.append(f"{module}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            bad.append(f"{module}:{node.lineno} **")
    assert not bad, bad


def test_forward_pass_runs_with_transcendentals_removed(tiny_model, monkeypatch):
    eng = _engine(tiny_model)
    pre = eng.prefill([0])
    want = np.concatenate(list(eng.score(pre, _ids(20))))

    def boom(*a, **k):
        raise AssertionError("transcendental function called at inference time")

    for name in ["exp", "exp2", "expm1", "log", "log2", "log1p", "tanh", "sin", "cos", "power"]:
        monkeypatch.setattr(np, name, boom)
        monkeypatch.setattr(math, name if hasattr(math, name) else "exp", boom)
    got = np.concatenate(list(eng.score(eng.prefill([0]), _ids(20))))
    assert np.array_equal(want, got)


# -- the same bytes under every BLAS / SIMD / thread setting -----------------------------------

ENVS = [
    {},
    {"OPENBLAS_NUM_THREADS": "1", "TINYLMZ_THREADS": "1"},
    {"OPENBLAS_NUM_THREADS": "2", "TINYLMZ_THREADS": "3"},
    {"OPENBLAS_CORETYPE": "Haswell"},
    {"OPENBLAS_CORETYPE": "Sandybridge", "TINYLMZ_NATIVE": "0"},
    {"OPENBLAS_CORETYPE": "Prescott", "TINYLMZ_NATIVE": "0"},
    {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4", "TINYLMZ_NATIVE": "0"},
    {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4", "OPENBLAS_CORETYPE": "Prescott"},
]

CHILD = r"""
import hashlib, sys, numpy as np, tinylmz
from tinylmz import registry
from tinylmz.engine_portable import PortableEngine
model, data_path, ref_path = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(data_path, 'rb').read()
blob = tinylmz.compress(data, model=model, segment_tokens=48, block_size=300)
m = registry.resolve(model)
eng = PortableEngine(m.path, m.sha256)
logits = np.concatenate(list(eng.score(eng.prefill([0]), list(range(3, 60)))))
if ref_path != '-':
    assert tinylmz.decompress(open(ref_path, 'rb').read(), model=model) == data
print(hashlib.sha256(blob).hexdigest(), hashlib.sha256(logits.tobytes()).hexdigest())
sys.stdout.flush()
open(data_path + '.out', 'wb').write(blob)
"""


def _child(env_extra, model, data_path, ref="-"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "NPY_", "TINYLMZ_NATIVE", "TINYLMZ_THREADS"))}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data_path), str(ref)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (env_extra, r.stderr[-2000:])
    return r.stdout.split()[-2:]


def _across_envs(model, tmp_path, data, envs):
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    ref_hashes = _child(envs[0], model, src)
    ref = tmp_path / "ref.tlmz"
    ref.write_bytes((tmp_path / "data.bin.out").read_bytes())
    for env in envs[1:]:
        assert _child(env, model, src, ref) == ref_hashes, env  # same bytes, and it decodes the reference


def test_identical_bytes_across_blas_simd_and_threads(tiny_model, tmp_path):
    _across_envs(tiny_model, tmp_path, TEXT + b"\xff\xfe\x00 caf\xc3\xa9", ENVS)


@pytest.mark.integration
def test_identical_bytes_across_settings_real_model(default_model_path, tmp_path):
    _across_envs(default_model_path, tmp_path, TEXT[:200], [ENVS[0], ENVS[2], ENVS[6]])


def test_digest_script_is_stable(tiny_model):
    r = [subprocess.run([sys.executable, str(ROOT / "scripts" / "logits_digest.py"), "--model", str(tiny_model)],
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
         for _ in range(2)]
    assert r[0].returncode == 0, r[0].stderr
    assert r[0].stdout == r[1].stdout and len(r[0].stdout.split()[0]) == 64


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("prefix_len,window,n", [(1, engine_portable.WINDOW_STEP, 3),
                                                 (engine_portable.SHARE_MIN + 5, None, 3), (3, None, 3),
                                                 (engine_portable.SHARE_MIN + 5, engine_portable.WINDOW_STEP, 1),
                                                 (engine_portable.SHARE_MIN + 5, None, 1)])
def test_decode_step_in_one_call_equals_the_layer_loop(wide_model, monkeypatch, prefix_len, window, n, packed):
    """A decoding step's layers in one native call (kernel.decode_step): the same logits as the
    layer-by-layer loop, with a start-token prefix and a sliding window, a shared long prefix,
    and a short prefix copied into each stream; streams ending on the way; with the weights
    packed (AVX-512 VNNI: then, with a window, the step keeps the keys and values laid out for
    its attention, across the window's slides) and as int8 rows (the kernel's other paths, ARM's
    among them)."""
    from tinylmz import kernel

    if kernel.load() is None:
        pytest.fail("the native kernel did not build here; a C compiler is a documented requirement")
    if packed and not kernel.packs():
        pytest.skip("this CPU has no lane-wise products (AVX-512 VNNI): weights are never packed here")
    if not packed:
        monkeypatch.setattr(kernel, "packs", lambda: False)  # the engine then holds int8 rows
    eng = _engine(wide_model)
    assert eng._steps is not None and eng._steps[1] == int(packed)
    table = eng._steps
    prefix = [0] + _ids(prefix_len - 1, seed=3).tolist()
    fused_pre = eng.prefill(prefix)  # a one-token prefix is a one-position call too
    eng._steps = None
    pre = eng.prefill(prefix)
    eng._steps = table
    assert np.array_equal(fused_pre.logits, pre.logits)
    fused, loop = eng.stepper(pre, n, window=window), eng.stepper(pre, n, window=window)
    assert (fused.cache.laid is not None) == (packed and window is not None)
    steps = engine_portable.WINDOW_STEP + 40  # past the first slide of the window
    ids = _ids(n * steps, seed=4).reshape(steps, n)
    calls = []
    real = kernel.decode_step
    try:
        kernel.decode_step = lambda *a, **k: calls.append(1) or real(*a, **k)
        for i, row in enumerate(ids):
            row = row[: n if i < steps - 30 else max(1, n - 1)].tolist()
            eng._steps = table
            fused.feed(row)
            eng._steps = None
            loop.feed(row)
            assert np.array_equal(fused.logits(), loop.logits()), f"step {i}"
    finally:
        kernel.decode_step = real
        eng._steps = table
    assert len(calls) == steps
    assert (fused.cache.laid is not None) == (packed and window is not None)  # kept up to the end
    if fused.cache.laid is not None:  # held laid out only; laid back into rows, the layer loop's
        c, have = fused.cache, fused.cache.len - fused.cache.base - fused.cache.drop
        assert c.k is None and c.v is None and loop.cache.laid is None
        c.unlay()
        for a, b in ((c.k, loop.cache.k), (c.v, loop.cache.v)):
            assert np.array_equal(a[..., :have, :], b[..., :have, :])


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("window", [None, engine_portable.WINDOW_STEP])
def test_position_bytes_are_what_a_stepper_holds(wide_model, monkeypatch, window, packed):
    """``position_bytes``, by which the decoder groups blocks (codec.DECODE_BYTES), is what a
    stepper's cache holds per position and stream; laid out (AVX-512 VNNI, with a window) it
    holds the keys and values that way only, not as rows too."""
    from tinylmz import kernel

    if packed and not kernel.packs():
        pytest.skip("this CPU has no lane-wise products (AVX-512 VNNI): weights are never packed here")
    if not packed:
        monkeypatch.setattr(kernel, "packs", lambda: False)
    eng = _engine(wide_model)
    st = eng.stepper(eng.prefill([0]), 2, window=window)
    for row in _ids(2 * 300, seed=6).reshape(300, 2):
        st.feed(row.tolist())
    c = st.cache
    laid = packed and window is not None
    assert (c.laid is not None) == laid == (c.k is None) == eng.lays_out(window)
    arrays = [a for a in (c.k, c.v, c.sk, c.sv, c.svc, *(c.laid or ())) if a is not None]
    assert all(a.shape[:4] == c.sk.shape for a in arrays)
    assert sum(a.nbytes for a in arrays) == eng.position_bytes(window) * 2 * c.cap


def test_step_phases_account_for_the_native_steps(wide_model):
    """kernel.step_phases: every phase of the native step is timed (attention as one fused phase
    where the kernel fuses it, else in three), the phases add up to no more
    than the steps' wall time, and reading them resets them."""
    import time

    from tinylmz import kernel

    if kernel.load() is None:
        pytest.fail("the native kernel did not build here; a C compiler is a documented requirement")
    eng = _engine(wide_model)
    assert eng._steps is not None
    st = eng.stepper(eng.prefill([0]), 2)
    kernel.step_phases()
    t = time.perf_counter()
    for row in _ids(20, seed=5).reshape(10, 2):
        st.feed(row.tolist())
    wall = time.perf_counter() - t
    ph = kernel.step_phases()
    assert list(ph) == list(kernel.STEP_PHASES)
    separate = ("scores", "softmax weights", "values")
    # attend_batches: AVX-512 VNNI, head size 64, at most 16 query rows per kv head
    fused = kernel.packs() and eng.cfg.head_dim == 64 and eng.cfg.n_head // eng.cfg.n_head_kv <= 16
    assert (ph["attention, fused"] > 0) == fused, ph
    assert all((v > 0) != (fused and k in separate) for k, v in ph.items() if k != "attention, fused"), ph
    assert sum(ph.values()) <= wall
    assert all(v == 0 for v in kernel.step_phases().values())


def test_the_kernel_imports_nothing_above_it():
    """Data flows one way: the native kernel's module (its load-time self-check included) imports
    neither the engine nor the frequency function; their definitions are checked against it from
    elementwise.py (imported by the kernel) and freqs.py (which imports the kernel)."""
    import ast

    tree = ast.parse((ROOT / "tinylmz" / "kernel.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {a.name for a in node.names}
    assert names == {"elementwise", "registry", "tables", "threads"}, names
