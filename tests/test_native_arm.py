"""The native kernel's NEON paths (tinylmz/native/neon.c) and the rules they share with the others.

The exactness tests run on every machine (each exercises whatever path the CPU has, at the
inputs where NEON's splits and tails are fragile); the path test runs on arm64 only, natively
or under emulation (scripts/arm_check.sh runs this file in an arm64 userland).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinylmz import kernel

ARM = platform.machine() in ("aarch64", "arm64")


def _lib():
    fn = kernel.load()
    if fn is None:
        pytest.fail("the native kernel did not build here; a C compiler is a documented requirement")
    return fn


def test_kernel_builds_the_neon_path_the_cpu_has():
    """On arm64 the products run on NEON, with sdot where the CPU and compiler have it."""
    if not ARM:
        pytest.skip("not an arm64 machine")
    path = kernel.simd()
    assert path in ("neon", "neon-dotprod"), path
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    features = next((x for x in cpuinfo.splitlines() if x.startswith("Features")), "")
    # -march=native reads /proc/cpuinfo: under qemu-user it shows the host's (x86) lines, and $CC may set -march
    if features and "CC" not in os.environ:
        assert path == ("neon-dotprod" if "asimddp" in features.split() else "neon")


def test_simd_path_is_reported():
    assert kernel.simd() in ("avx512-vnni", "avx2", "neon-dotprod", "neon", "c")


@pytest.mark.parametrize("K", [7, 16, 1043, 4133])
def test_matrix_product_exact_near_the_largest_values(K):
    """sdot splits x = 256 h + l and clamps h for x >= 32640: rows made of such values, whole rows
    of +-32767 and tails past the last full vector must still give the exact product."""
    fn = _lib()
    rng = np.random.default_rng(K)
    n, N = 9, 11
    x = rng.integers(-32767, 32768, (n, K)).astype(np.int16)
    x[0], x[1], x[2] = 32767, -32767, rng.integers(32600, 32768, K)
    x[3, ::2] = 32640  # the smallest clamped value
    x[4] = rng.integers(-32767, -32600, K)
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0], w[1] = 127, -127
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    for rows in (9, 4, 3, 1):
        assert np.array_equal(kernel._run(fn, np.ascontiguousarray(x[:rows]), w, 1), want[:rows])
    out = np.zeros((n, N), np.int64)  # a column range, as one thread's share
    fn(x.ctypes.data, n, K, w.ctypes.data, 3, 8, N, out.ctypes.data, None, None, None)
    assert np.array_equal(out[:, 3:8], want[:, 3:8]) and not out[:, :3].any() and not out[:, 8:].any()


@pytest.mark.parametrize("D", [16, 24, 48, 64, 128])
def test_attention_scores_exact_for_head_sizes(D):
    """Scores 4 keys at a time, a tail of 1-3 keys, int8 extremes (-128 included) and head sizes
    that do and do not fit the 16-byte vectors."""
    lib = _lib().lib
    rng = np.random.default_rng(D)
    for T in (1, 3, 4, 7, 130):
        q = rng.integers(-128, 128, (2, 2, 5, D)).astype(np.int8)
        k = rng.integers(-128, 128, (2, 2, T + 3, D)).astype(np.int8)
        q[0, 0], k[0, 0] = -128, -128
        q[1, 1, 0], k[1, 1, :2] = 127, -128
        want = q.astype(np.int64) @ k[:, :, :T].astype(np.int64).transpose(0, 1, 3, 2)
        assert np.array_equal(kernel.attn_scores(q, k, T, lib), want), T


@pytest.mark.parametrize("T", [1, 5, 128, 129, 300])
def test_attention_values_exact_across_blocks(T):
    """Values in int32 blocks of 128 keys: weights of 2^16 against values of -128 at every key
    (the largest sums), 1-3 rows past a multiple of 4, and a tail of keys."""
    lib = _lib().lib
    rng = np.random.default_rng(T)
    for R in (1, 4, 7):
        p = rng.integers(0, (1 << 16) + 1, (2, 2, R, T)).astype(np.int32)
        v = rng.integers(-128, 128, (2, 2, T + 2, 64)).astype(np.int8)
        p[0, 0], v[0, 0] = 1 << 16, -128
        p[1, 0, :, ::3] = 0
        want = p.astype(np.int64) @ v[:, :, :T].astype(np.int64)
        assert np.array_equal(kernel.attn_values(p, v, lib), want), R


def test_kernel_has_no_fused_multiply_add():
    """The float steps must round like numpy's separate IEEE operations: the library is built with
    -ffp-contract=off (gcc fuses a * b + c by default, on aarch64 even without -march)."""
    fn = _lib()
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("no objdump here")
    so = fn.lib._name
    asm = subprocess.run([objdump, "-d", so], capture_output=True, text=True, timeout=120).stdout
    assert asm, "objdump could not read the kernel"
    pattern = r"\sf(n)?m(add|sub)\s|\sfml[as]\s" if ARM else r"\svf(n)?m(add|sub)"
    fused = [line for line in asm.splitlines() if re.search(pattern, line)]
    assert not fused, fused[:5]

