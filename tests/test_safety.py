"""Never lose data: atomic outputs, damaged-input fuzzing, interruption, inputs surviving failures."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinylmz
from tinylmz import container, safeio
from tinylmz.errors import TinylmzError
from test_cli import DAMAGE, TEXT, assert_one_line_error, env, no_temp_files, tlmz
from tinymodel import TRAINING_TEXT, write_tiny_gguf

# --- safeio -------------------------------------------------------------------------------


def test_atomic_output_commit(tmp_path):
    target = tmp_path / "out"
    with safeio.AtomicOutput(target) as out:
        out.write(b"hello")
        assert not target.exists()
        assert out.temp.parent == tmp_path and out.temp.exists()
        out.commit()
    assert target.read_bytes() == b"hello"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_without_commit_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with safeio.AtomicOutput(target) as out:
            out.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with safeio.AtomicOutput(target) as out:  # forgetting commit also leaves nothing
        out.write(b"partial")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_never_overwrites_without_permission(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"precious")
    with pytest.raises(safeio.OutputExists):
        safeio.AtomicOutput(target)
    # a file that appears while the output is being written is not replaced either
    target.unlink()
    with safeio.AtomicOutput(target) as out:
        out.write(b"new")
        target.write_bytes(b"appeared meanwhile")
        with pytest.raises(safeio.OutputExists):
            out.commit()
    assert target.read_bytes() == b"appeared meanwhile"
    assert list(tmp_path.iterdir()) == [target]
    with safeio.AtomicOutput(target, overwrite=True) as out:
        out.write(b"new")
        out.commit()
    assert target.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_interrupted(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with safeio.AtomicOutput(target) as out:
            out.write(b"x" * 1000)
            raise KeyboardInterrupt
    with pytest.raises(safeio.Interrupted):
        with safeio.AtomicOutput(target) as out:
            out.write(b"x" * 1000)
            raise safeio.Interrupted(signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []


def test_critical_defers_signals():
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    try:
        # SIGUSR1 is not in the deferred set: a sanity check that signals get through at all
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert got == [1]
        with pytest.raises(KeyboardInterrupt):
            with safeio.critical():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                got.append("still running")  # the interrupt waits for the critical section
        assert got == [1, "still running"]
    finally:
        signal.signal(signal.SIGUSR1, old)


# --- fuzzing damaged files through the API ----------------------------------------------------


@pytest.fixture(scope="module")
def sample(tiny_model) -> tuple[bytes, bytes]:
    raw = TEXT[:150] + random.Random(5).randbytes(60) + b"ab" * 60 + TEXT[150:260]
    data = tinylmz.compress(raw, model=tiny_model, block_size=128)
    r = container.Reader(io.BytesIO(data))
    methods = {container.METHODS[b.method] for b in r.blocks()}
    assert methods == {"model", "lzma", "stored"}, methods
    return raw, data


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, pos, value in ops:
        if not b:
            break
        p = pos % (len(b) + (kind == "insert"))
        if kind == "flip":
            b[p % len(b)] ^= 1 << (value % 8)
        elif kind == "set":
            b[p % len(b)] = value
        elif kind == "insert":
            b.insert(p, value)
        elif kind == "delete":
            del b[p % len(b)]
        elif kind == "truncate":
            del b[p % len(b):]
    return bytes(b)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                         st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=3)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_fuzz_mutated_files(sample, tiny_model, ops):
    raw, data = sample
    bad = _mutate(data, ops)
    t = time.monotonic()
    try:
        out = tinylmz.decompress(bad, model=tiny_model)
    except TinylmzError:
        pass  # FormatError and friends: the only acceptable failure
    else:
        assert out == raw, "a damaged file decoded to different bytes without an error"
    assert time.monotonic() - t < 60


@pytest.fixture(scope="module")
def sample_v1(sample, tiny_model) -> tuple[bytes, bytes]:
    raw, _ = sample
    return raw, tinylmz.compress(raw, model=tiny_model, block_size=128, format_version=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 1 << 16), bit=st.integers(0, 7))
def test_fuzz_single_bit_flips_always_detected_v1(sample_v1, tiny_model, pos, bit):
    """Version 1 checks every header, payload and trailer byte with a CRC: any flip is an error."""
    raw, data = sample_v1
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    with pytest.raises(TinylmzError):
        tinylmz.decompress(bytes(b), model=tiny_model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 1 << 16), bit=st.integers(0, 7))
def test_fuzz_single_bit_flips_never_give_wrong_bytes_v2(sample, tiny_model, pos, bit):
    """Version 2 checks the decoded bytes: a flip is an error unless it decodes to the original
    (a bit of a stream's last byte the coder does not use)."""
    raw, data = sample
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    try:
        out = tinylmz.decompress(bytes(b), model=tiny_model)
    except TinylmzError:
        return
    assert out == raw


@settings(max_examples=40, deadline=None)
@given(junk=st.binary(max_size=200))
def test_fuzz_random_bytes_and_forged_headers(tiny_model, junk):
    for data in (junk, container.MAGIC + junk, container.MAGIC + bytes([container.VERSION]) + junk):
        with pytest.raises(TinylmzError):
            tinylmz.decompress(data, model=tiny_model)


# --- interruption -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_text() -> bytes:
    return (TRAINING_TEXT * (200_000 // len(TRAINING_TEXT) + 1)).encode()


def _start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinylmz.cli", *map(str, args)], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_temp(p: subprocess.Popen, d: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if [q for q in d.iterdir() if q.name.startswith(".tinylmz-")]:
            time.sleep(0.3)  # well inside the work
            return
        if p.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {p.communicate()}")
        time.sleep(0.02)
    p.kill()
    pytest.fail("no temporary file appeared")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("rm", [False, True])
def test_interrupted_compress_leaves_nothing(tmp_path, tiny_model, big_text, sig, rm):
    src = tmp_path / "big.txt"
    src.write_bytes(big_text)
    p = _start(["compress", "-m", tiny_model, *(["--rm"] if rm else []), src], tmp_path)
    _wait_for_temp(p, tmp_path)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert b"Traceback" not in err
    assert err.decode().startswith("tinylmz: error:")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["big.txt"]
    assert src.read_bytes() == big_text


def test_interrupted_forced_compress_keeps_old_output(tmp_path, tiny_model, big_text):
    src = tmp_path / "big.txt"
    src.write_bytes(big_text)
    (tmp_path / "big.txt.tlmz").write_bytes(b"old output")
    p = _start(["compress", "-f", "-m", tiny_model, src], tmp_path)
    _wait_for_temp(p, tmp_path)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode != 0
    assert (tmp_path / "big.txt.tlmz").read_bytes() == b"old output"
    assert no_temp_files(tmp_path) and src.read_bytes() == big_text


# --- the input survives every failure ------------------------------------------------------------


def test_input_survives_every_failure(tmp_path, tiny_model):
    """With --rm (the flag that deletes inputs), every failing run leaves its input byte for byte."""
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    ctx = tmp_path / "ctx.txt"
    ctx.write_bytes(TEXT[:100])
    work = tmp_path / "w"
    work.mkdir()

    def check(args, path: Path, content: bytes, code: int = 1, extra=()):
        r = tlmz(*args)
        assert_one_line_error(r, code)
        assert path.read_bytes() == content, args
        assert sorted(q.name for q in work.iterdir()) == sorted([path.name, *extra]), args

    src = work / "a.txt"
    src.write_bytes(TEXT)
    # compress failures
    check(["compress", "--rm", "-m", tmp_path / "missing.gguf", src], src, TEXT)
    check(["compress", "--rm", "-m", tiny_model, "--context", tmp_path / "nope", src], src, TEXT)
    check(["compress", "--rm", "-m", tiny_model, "--engine", "nope", src], src, TEXT, code=2)
    check(["compress", "--rm", "-m", tiny_model, "-B", "0", src], src, TEXT, code=2)
    (work / "a.txt.tlmz").write_bytes(b"existing")
    check(["compress", "--rm", "-m", tiny_model, src], src, TEXT, extra=["a.txt.tlmz"])
    assert (work / "a.txt.tlmz").read_bytes() == b"existing"
    (work / "a.txt.tlmz").unlink()
    src.rename(tmp_path / "a.txt")
    src = tmp_path / "a.txt"

    # decompress failures
    good = tinylmz.compress(TEXT, model=tiny_model, context=TEXT[:100])
    packed = work / "p.tlmz"
    for name, (mutate, _) in sorted(DAMAGE.items()):
        bad = mutate(good)
        packed.write_bytes(bad)
        check(["decompress", "--rm", "-m", tiny_model, "--context", ctx, packed], packed, bad)
    packed.write_bytes(good)
    check(["decompress", "--rm", "-m", other, "--context", ctx, packed], packed, good)
    check(["decompress", "--rm", "-m", tiny_model, packed], packed, good)  # missing context
    check(["decompress", "--rm", "-m", tiny_model, "--context", src, packed], packed, good)  # wrong context
    (work / "p").write_bytes(b"existing")
    check(["decompress", "--rm", "-m", tiny_model, "--context", ctx, packed], packed, good, extra=["p"])
    assert (work / "p").read_bytes() == b"existing"
    (work / "p").unlink()
    # and finally the successful run does remove it
    assert tlmz("decompress", "--rm", "-m", tiny_model, "--context", ctx, packed).code == 0
    assert (work / "p").read_bytes() == TEXT and not packed.exists()
