"""The ``tinylmz`` command line: round trips, stdin/stdout, safety flags, info/test, exit codes.

Most commands run in-process through ``cli.run`` (fast: the tiny model is loaded once);
the ones that need a real process (shell pipelines, exit codes as seen by a shell,
tracebacks) run ``python -m tinylmz.cli``.
"""

from __future__ import annotations

import io
import json
import os
import random
import shlex
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinylmz import cli, container
from tinymodel import TRAINING_TEXT, write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
TEXT = TRAINING_TEXT.encode()[:700]


@dataclass
class Result:
    code: int
    out: bytes
    err: str


def tlmz(*args, stdin: bytes = b"") -> Result:
    """Run the CLI in-process with the given stdin; capture stdout (bytes) and stderr (text)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    # stderr is a real file (with a descriptor), like a process's: code that silences fd 2
    # around llama.cpp calls then silences llama-cpp-python's logger here too.
    err = tempfile.TemporaryFile("w+", encoding="utf-8")
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = inp, out, err
    try:
        code = cli.run([str(a) for a in args], install_signals=False)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        out.flush()
        err.flush()
    err.seek(0)
    text = err.read()
    err.close()
    return Result(code, out.buffer.getvalue(), text)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def proc(*args, stdin: bytes = b"", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinylmz.cli", *map(str, args)], input=stdin,
                          capture_output=True, env=env(), cwd=cwd, timeout=300)


def assert_one_line_error(r, code: int = 1) -> None:
    err = r.err if isinstance(r, Result) else r.stderr.decode()
    rc = r.code if isinstance(r, Result) else r.returncode
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinylmz: error: "), err


def no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.startswith(".tinylmz-")]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("other") / "other.gguf", seed=1)


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_model) -> tuple[bytes, bytes]:
    """(original, .tlmz bytes) with several blocks (model-coded and stored)."""
    raw = TEXT[:400] + random.Random(3).randbytes(200) + TEXT[400:]
    d = tmp_path_factory.mktemp("good")
    (d / "x").write_bytes(raw)
    r = tlmz("compress", "-m", tiny_model, "-B", "256", d / "x")
    assert r.code == 0, r.err
    return raw, (d / "x.tlmz").read_bytes()


# --- round trips --------------------------------------------------------------------------

CASES = {
    "text": TEXT,
    "invalid-utf8": TEXT[:200] + b"\xff\xfe\xc3(\x80" + TEXT[200:300] + b"\xe2\x82" + TEXT[300:400],
    "binary": random.Random(0).randbytes(20000),
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_files(tmp_path, tiny_model, name):
    raw = CASES[name]
    src = tmp_path / "data.bin"
    src.write_bytes(raw)
    r = tlmz("compress", "-m", tiny_model, src)
    assert r.code == 0, r.err
    assert src.read_bytes() == raw  # input kept by default
    packed = tmp_path / "data.bin.tlmz"
    assert len(packed.read_bytes()) <= len(raw) + 256
    src.unlink()
    r = tlmz("decompress", "-m", tiny_model, packed)
    assert r.code == 0, r.err
    assert src.read_bytes() == raw
    assert packed.exists()
    assert no_temp_files(tmp_path)


def test_round_trip_stdin_stdout_in_process(tiny_model):
    r = tlmz("compress", "-m", tiny_model, stdin=CASES["invalid-utf8"])
    assert r.code == 0, r.err
    back = tlmz("decompress", "-m", tiny_model, "-", stdin=r.out)
    assert back.code == 0, back.err
    assert back.out == CASES["invalid-utf8"]


def test_shell_pipeline(tmp_path, tiny_model):
    src = tmp_path / "in.txt"
    src.write_bytes(CASES["invalid-utf8"])
    py = shlex.quote(sys.executable)
    m = shlex.quote(str(tiny_model))
    cmd = (f"cat {shlex.quote(str(src))} | {py} -m tinylmz.cli compress -m {m} "
           f"| {py} -m tinylmz.cli decompress -m {m} > {shlex.quote(str(tmp_path / 'out.txt'))}")
    r = subprocess.run(["sh", "-c", cmd], env=env(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_bytes() == src.read_bytes()
    assert "Traceback" not in r.stderr.decode()


def test_stdout_flag_keeps_input_and_writes_no_file(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    r = tlmz("compress", "-m", tiny_model, "-c", src)
    assert r.code == 0, r.err
    assert r.out.startswith(container.MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    (tmp_path / "p.tlmz").write_bytes(r.out)
    d = tlmz("decompress", "-m", tiny_model, "-c", tmp_path / "p.tlmz")
    assert d.code == 0 and d.out == TEXT
    assert not (tmp_path / "p").exists()


def test_output_option(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    assert tlmz("compress", "-m", tiny_model, "-o", tmp_path / "z.bin", src).code == 0
    assert (tmp_path / "z.bin").read_bytes().startswith(container.MAGIC)
    # a file without the .tlmz suffix needs -o
    r = tlmz("decompress", "-m", tiny_model, tmp_path / "z.bin")
    assert_one_line_error(r, 2)
    assert tlmz("decompress", "-m", tiny_model, "-o", tmp_path / "back.txt", tmp_path / "z.bin").code == 0
    assert (tmp_path / "back.txt").read_bytes() == TEXT


def test_force_needed_to_overwrite(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    out = tmp_path / "a.txt.tlmz"
    out.write_bytes(b"precious")
    r = tlmz("compress", "-m", tiny_model, src)
    assert_one_line_error(r)
    assert "exists" in r.err
    assert out.read_bytes() == b"precious" and src.read_bytes() == TEXT
    assert no_temp_files(tmp_path)
    assert tlmz("compress", "-m", tiny_model, "-f", src).code == 0
    assert out.read_bytes().startswith(container.MAGIC)
    # decompress: same rule
    r = tlmz("decompress", "-m", tiny_model, out)
    assert_one_line_error(r)
    assert src.read_bytes() == TEXT
    src.write_bytes(b"other")
    assert tlmz("decompress", "-m", tiny_model, "-f", out).code == 0
    assert src.read_bytes() == TEXT


def test_rm_removes_input_only_on_success(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    r = tlmz("compress", "-m", tiny_model, "--rm", src)
    assert r.code == 0, r.err
    assert not src.exists()
    packed = tmp_path / "a.txt.tlmz"
    r = tlmz("decompress", "-m", tiny_model, "--rm", packed)
    assert r.code == 0, r.err
    assert src.read_bytes() == TEXT and not packed.exists()

    # failures keep the input: output exists (no -f) ...
    (tmp_path / "a.txt.tlmz").write_bytes(b"keep me")
    assert_one_line_error(tlmz("compress", "-m", tiny_model, "--rm", src))
    assert src.read_bytes() == TEXT and (tmp_path / "a.txt.tlmz").read_bytes() == b"keep me"
    # ... a damaged file on decompress ...
    good = tlmz("compress", "-m", tiny_model, "-c", src).out
    bad = bytearray(good)
    bad[-30] ^= 0x10
    (tmp_path / "b.tlmz").write_bytes(bytes(bad))
    assert_one_line_error(tlmz("decompress", "-m", tiny_model, "--rm", tmp_path / "b.tlmz"))
    assert (tmp_path / "b.tlmz").read_bytes() == bytes(bad) and not (tmp_path / "b").exists()
    assert no_temp_files(tmp_path)


def test_rm_with_stdout_is_usage_error(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    assert_one_line_error(tlmz("compress", "-m", tiny_model, "--rm", "-c", src), 2)
    assert src.read_bytes() == TEXT


def test_verify_flag(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    r = tlmz("compress", "-m", tiny_model, "--verify", "-v", src)
    assert r.code == 0, r.err
    assert "verified" in r.err
    r = tlmz("compress", "-m", tiny_model, "--verify", "-c", src)  # verify through a temp file
    assert r.code == 0 and r.out == (tmp_path / "a.txt.tlmz").read_bytes()


def test_verbose_reports(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    r = tlmz("compress", "-m", tiny_model, "-v", src)
    assert r.code == 0, r.err
    for word in ("tiny.gguf", "portable", "bits/byte", "cross-entropy", "overhead"):
        assert word in r.err
    r = tlmz("compress", "-m", tiny_model, "-q", "-c", src)
    assert r.err == ""


def test_block_size_option(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    assert tlmz("compress", "-m", tiny_model, "-B", "100", src).code == 0
    info = json.loads(tlmz("info", "--json", tmp_path / "a.txt.tlmz").out)
    assert info["block_size"] == 100 and info["blocks"]["count"] == 7
    assert tlmz("decompress", "-m", tiny_model, "-c", tmp_path / "a.txt.tlmz").out == TEXT
    assert_one_line_error(tlmz("compress", "-B", "0", src), 2)
    assert_one_line_error(tlmz("compress", "-B", "banana", src), 2)
    assert_one_line_error(tlmz("compress", "-B", "17M", src), 2)


# --- info and test --------------------------------------------------------------------------


def test_cli_and_api_share_the_default_segment_length():
    from tinylmz import codec

    assert cli.DEFAULT_SEGMENT_TOKENS == codec.DEFAULT_SEGMENT_TOKENS


def test_info_json(tmp_path, tiny_model, good):
    raw, data = good
    f = tmp_path / "g.tlmz"
    f.write_bytes(data)
    r = tlmz("info", "--json", f)
    assert r.code == 0, r.err
    d = json.loads(r.out)
    sha = _sha256(tiny_model)
    header = container.Reader(io.BytesIO(data)).header
    # version 1 names the model and its whole sha256; version 2 its id (the sha256's first 8 bytes)
    assert d["model"]["id"] == sha[:16] and d["model"]["sha256"] in (sha, None)
    assert d["model"]["name"] in ("tiny.gguf", None)
    assert d["engine"]["name"] == "portable"
    assert d["block_size"] == 256 and d["segment_tokens"] == header.segment_tokens
    assert d["original_size"] == len(raw) and d["compressed_size"] == len(data)
    assert d["original_crc32"] == f"{zlib.crc32(raw):08x}"
    assert d["bits_per_byte"] == pytest.approx(8 * len(data) / len(raw))
    assert d["blocks"]["count"] == sum(d["blocks"]["methods"].values()) >= -(-len(raw) // 256)
    assert d["blocks"]["methods"]["model"] >= 1
    assert d["format_version"] == container.VERSION and d["context"] is None
    text = tlmz("info", f)
    assert text.code == 0 and b"bits per byte" in text.out and sha[:16].encode() in text.out


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cli_writes_the_api_file(tmp_path, tiny_model, good):
    import tinylmz

    raw, data = good
    assert data == tinylmz.compress(raw, model=tiny_model, block_size=256)


def test_info_does_not_need_the_model(tmp_path, good):
    f = tmp_path / "g.tlmz"
    f.write_bytes(good[1])
    r = proc("info", "--json", f)  # fresh process: no model was ever loaded, none given
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["original_size"] == len(good[0])


def test_test_command(tmp_path, tiny_model, good):
    f = tmp_path / "g.tlmz"
    f.write_bytes(good[1])
    r = tlmz("test", "-m", tiny_model, f)
    assert r.code == 0, r.err
    assert b"OK" in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tlmz"]
    bad = bytearray(good[1])
    bad[len(bad) // 2] ^= 1
    f.write_bytes(bytes(bad))
    assert_one_line_error(tlmz("test", "-m", tiny_model, f))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tlmz"]


# --- damage and exit codes -----------------------------------------------------------------


def _hlen(data: bytes) -> int:
    return struct.unpack("<H", data[5:7])[0]


def _newer_version(data: bytes) -> bytes:
    b = bytearray(data)
    b[4] = container.VERSION + 1
    if data[4] == 1:  # version 1: a valid header CRC, so that only the version is wrong
        h = _hlen(data)
        b[7 + h : 11 + h] = struct.pack("<I", zlib.crc32(bytes(b[: 7 + h])))
    return bytes(b)


def _blocks(data: bytes) -> list:
    """The file's blocks as the container reads them (offsets of any format version)."""
    return list(container.Reader(io.BytesIO(data)).blocks())


def _payload_start(data: bytes) -> int:
    b = _blocks(data)[0]
    return data.index(b.payload, b.offset)


def _trailer_byte(data: bytes) -> int:
    """A byte of the end: version 1's trailer; version 2's total CRC, or its END byte (one block: no CRC)."""
    if data[4] == 1:
        return len(data) - 10
    return len(data) - 2 if len(_blocks(data)) > 1 else len(data) - 1


def _flip(pos_fn):
    def f(data: bytes) -> bytes:
        b = bytearray(data)
        b[pos_fn(data)] ^= 0x04
        return bytes(b)

    return f


# mutation -> (mutate, words of the message: alternatives separated by |)
DAMAGE = {
    "not-tlmz": (lambda d: b"hello, this is plain text\n" * 3, "not a .tlmz"),
    "empty": (lambda d: b"", "empty"),
    "truncated-header": (lambda d: d[:20], "truncated"),
    "truncated-body": (lambda d: d[: len(d) // 2], ""),
    "truncated-trailer": (lambda d: d[:-5], "truncated"),
    "flip-header": (_flip(lambda d: 12), "header"),
    "flip-block-header": (_flip(lambda d: _blocks(d)[0].offset + 1), "block 0"),
    "flip-payload": (_flip(lambda d: _payload_start(d) + 5), "block 0"),
    "flip-trailer": (_flip(_trailer_byte), "trailer|whole-file"),
    "newer-version": (_newer_version, "version"),
    "trailing-garbage": (lambda d: d + b"\0", "after the end"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["decompress", "test"])
def test_damaged_files_fail_cleanly(tmp_path, tiny_model, good, case, command):
    mutate, words = DAMAGE[case]
    bad = mutate(good[1])
    f = tmp_path / "bad.tlmz"
    f.write_bytes(bad)
    r = tlmz(command, "-m", tiny_model, f)
    assert_one_line_error(r)
    assert any(w.lower() in r.err.lower() for w in words.split("|")), r.err
    assert f.read_bytes() == bad  # the input survives byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tlmz"]  # no output, no temp file


@pytest.mark.parametrize("case", ["flip-header", "truncated-trailer", "newer-version", "not-tlmz"])
def test_info_on_damaged_files(tmp_path, good, case):
    f = tmp_path / "bad.tlmz"
    f.write_bytes(DAMAGE[case][0](good[1]))
    assert_one_line_error(tlmz("info", f))


def test_newer_version_names_the_version(tmp_path, good, tiny_model):
    f = tmp_path / "v.tlmz"
    f.write_bytes(_newer_version(good[1]))
    r = tlmz("decompress", "-m", tiny_model, f)
    assert_one_line_error(r)
    assert f"version {container.VERSION + 1}" in r.err and "upgrade" in r.err


def test_missing_input(tmp_path, tiny_model):
    for cmd in ("compress", "decompress", "test", "info"):
        r = tlmz(cmd, "-m", tiny_model, tmp_path / "nope.tlmz") if cmd != "info" else tlmz(cmd, tmp_path / "nope.tlmz")
        assert_one_line_error(r)
        assert "nope.tlmz" in r.err
    assert list(tmp_path.iterdir()) == []


def test_wrong_model(tmp_path, tiny_model, good, other_model):
    f = tmp_path / "g.tlmz"
    f.write_bytes(good[1])
    r = tlmz("decompress", "-m", other_model, f)
    assert_one_line_error(r)
    assert ("tiny.gguf" in r.err or _sha256(tiny_model)[:16] in r.err) and "different model" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tlmz"]
    r = tlmz("decompress", "-m", tmp_path / "missing.gguf", f)
    assert_one_line_error(r)


def test_context(tmp_path, tiny_model):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT[300:])
    ctx = tmp_path / "ctx.txt"
    ctx.write_bytes(TEXT[:300])
    assert tlmz("compress", "-m", tiny_model, "--context", ctx, src).code == 0
    packed = tmp_path / "a.txt.tlmz"
    src.unlink()
    # missing context
    r = tlmz("decompress", "-m", tiny_model, packed)
    assert_one_line_error(r)
    assert "--context" in r.err
    # wrong context
    (tmp_path / "wrong.txt").write_bytes(TEXT[:299])
    assert_one_line_error(tlmz("decompress", "-m", tiny_model, "--context", tmp_path / "wrong.txt", packed))
    # context file that does not exist
    assert_one_line_error(tlmz("decompress", "-m", tiny_model, "--context", tmp_path / "nope", packed))
    assert not src.exists() and no_temp_files(tmp_path)
    assert tlmz("decompress", "-m", tiny_model, "--context", ctx, packed).code == 0
    assert src.read_bytes() == TEXT[300:]
    # a context given for a file made without one
    plain = tlmz("compress", "-m", tiny_model, "-c", src).out
    (tmp_path / "plain.tlmz").write_bytes(plain)
    assert_one_line_error(tlmz("decompress", "-m", tiny_model, "--context", ctx, "-c", tmp_path / "plain.tlmz"))


@pytest.mark.parametrize("args", [
    ["compress", "--no-such-option"],
    ["compress", "--engine", "gpu"],
    ["compress", "--segment-tokens", "0"],
    ["frobnicate"],
    ["compress", "--rm", "--keep", "x"],
])
def test_usage_errors_exit_2(args):
    assert_one_line_error(tlmz(*args), 2)


def test_real_process_exit_codes_and_no_traceback(tmp_path, tiny_model, good):
    (tmp_path / "bad.tlmz").write_bytes(good[1][:-3])
    r = proc("decompress", "-m", tiny_model, tmp_path / "bad.tlmz")
    assert_one_line_error(r, 1)
    r = proc("compress", tmp_path / "missing")
    assert_one_line_error(r, 1)
    r = proc("compress", "--bogus")
    assert_one_line_error(r, 2)
    r = proc("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("tinylmz ")
    r = proc("--help")
    assert r.returncode == 0
    for word in (b"compress", b"decompress", b"info", b"test", b"model"):
        assert word in r.stdout
    r = proc("compress", "--help")
    for word in (b"--rm", b"--verify", b"--force", b"--stdout", b"--block-size", b"doubles"):
        assert word in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tlmz"]


def test_refuses_terminal_output_and_suffix(tmp_path, tiny_model):
    src = tmp_path / "x.tlmz"
    src.write_bytes(TEXT)
    r = tlmz("compress", "-m", tiny_model, src)  # already has the suffix
    assert_one_line_error(r)
    assert not (tmp_path / "x.tlmz.tlmz").exists()


def test_model_commands(tiny_model):
    r = tlmz("model", "list")
    assert r.code == 0 and b"smollm2-135m-instruct-q4_1" in r.out
    rows = json.loads(tlmz("model", "list", "--json").out)
    assert {"name", "source", "size", "installed"} <= set(rows[0])
    r = tlmz("model", "verify", tiny_model)
    assert r.code == 0 and b"OK" in r.out
    assert_one_line_error(tlmz("model", "path", "no-such-model"))
    assert_one_line_error(tlmz("model", "pull", "no-such-model"))


# --- several files, directories, threads -------------------------------------------------------


def test_several_files_and_directories(tmp_path, tiny_model):
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "b.bin").write_bytes(CASES["binary"][:3000])
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "c.txt").write_bytes(TEXT[:100])
    (d / "sub" / "e.txt").write_bytes(TEXT[100:400])
    (d / "sub" / "old.tlmz").write_bytes(b"not touched by compress -r")
    r = tlmz("compress", "-m", tiny_model, "-B", "256", tmp_path / "a.txt", tmp_path / "b.bin")
    assert r.code == 0, r.err
    for name in ("a.txt", "b.bin"):
        raw = (tmp_path / name).read_bytes()
        assert (tmp_path / (name + ".tlmz")).read_bytes() == tinylmz_compress(raw, tiny_model, 256)
    # a directory needs -r; with it, every file under it (not the .tlmz ones)
    r = tlmz("compress", "-m", tiny_model, d)
    assert_one_line_error(r)
    assert "-r" in r.err
    r = tlmz("compress", "-m", tiny_model, "-r", "--rm", d)
    assert r.code == 0, r.err
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) == [
        "c.txt.tlmz", "sub/e.txt.tlmz", "sub/old.tlmz"]
    r = tlmz("decompress", "-m", tiny_model, "-r", d)  # only the .tlmz files: old.tlmz fails alone
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "old.tlmz" in r.err, r.err
    assert (d / "c.txt").read_bytes() == TEXT[:100] and (d / "sub" / "e.txt").read_bytes() == TEXT[100:400]
    r = tlmz("test", "-m", tiny_model, tmp_path / "a.txt.tlmz", d / "c.txt.tlmz")
    assert r.code == 0 and r.out.count(b": OK (") == 2


def tinylmz_compress(raw: bytes, model, block_size: int) -> bytes:
    import tinylmz

    return tinylmz.compress(raw, model=model, block_size=block_size)


def test_a_failing_file_does_not_stop_the_others(tmp_path, tiny_model):
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "c.txt").write_bytes(TEXT[:50])
    (tmp_path / "c.txt.tlmz").write_bytes(b"keep")
    r = tlmz("compress", "-m", tiny_model, tmp_path / "nope.txt", tmp_path / "c.txt", tmp_path / "a.txt")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 2 and "nope.txt" in lines[0] and "c.txt.tlmz" in lines[1], r.err
    assert (tmp_path / "a.txt.tlmz").exists() and (tmp_path / "c.txt.tlmz").read_bytes() == b"keep"
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("args", [
    ["compress", "-o", "out.tlmz", "a", "b"],
    ["compress", "-c", "a", "b"],
    ["decompress", "-c", "a.tlmz", "b.tlmz"],
    ["compress", "-", "a"],
    ["compress", "-T", "0", "a"],
])
def test_several_files_usage_errors(args):
    assert_one_line_error(tlmz(*args), 2)


def test_threads_option_does_not_change_the_output(tmp_path, tiny_model):
    from tinylmz import threads

    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    outs = []
    try:
        for n in ("1", "3"):
            r = tlmz("compress", "-T", n, "-m", tiny_model, "-c", src)
            assert r.code == 0, r.err
            assert threads.fixed() == int(n)  # kernel.set_threads was called
            outs.append(r.out)
            back = tlmz("decompress", "-T", n, "-m", tiny_model, "-c", "-", stdin=r.out)
            assert back.code == 0 and back.out == TEXT
    finally:
        threads.set_threads(None)
    assert outs[0] == outs[1]


def test_help_explains_the_new_options():
    for cmd in ("compress", "decompress", "test"):
        r = proc(cmd, "--help")
        assert r.returncode == 0
        text = b" ".join(r.stdout.split())
        for word in (b"--threads", b"never depends on it", b"--scheduler", b"local:N", b"TINYLMZ_SCHEDULER",
                     b"--recursive"):
            assert word in text, (cmd, word)
    for cmd in (["records", "compress"], ["records", "decompress"], ["records", "get"]):
        r = proc(*cmd, "--help")
        assert b"--threads" in r.stdout and b"--scheduler" not in r.stdout


def test_format_window_and_adaptive_options(tiny_model, tmp_path):
    """--format, --window and --adaptive reach the file's header, and every combination decodes."""
    import io

    src = tmp_path / "t.txt"
    src.write_bytes(b"The quick brown fox jumps over the lazy dog. " * 30)
    for args, want in ((["--format", "1"], (1, None, 0)), (["-W", "512", "-s", "1000"], (2, 512, 1)),
                       (["--no-adaptive"], (2, 2048, 0))):
        out = tmp_path / "t.tlmz"
        r = tlmz("compress", "-f", "-m", tiny_model, *args, src, "-o", out)
        assert r.code == 0, r.err
        rd = container.Reader(io.BytesIO(out.read_bytes()))
        assert (rd.version, rd.header.window, rd.header.adaptive) == want
        r = tlmz("decompress", "-f", "-m", tiny_model, out, "-o", tmp_path / "back.txt")
        assert r.code == 0, r.err
        assert (tmp_path / "back.txt").read_bytes() == src.read_bytes()
    assert_one_line_error(tlmz("compress", "-f", "-m", tiny_model, "-W", "600", src, "-o", tmp_path / "x.tlmz"))
