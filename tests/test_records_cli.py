"""`tinylmz records compress / decompress / get` through a real process and shell pipes."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = b"".join(b"2026-11-29T10:%02d:00,dev%d,%.1f,OK\n" % (i, i % 3, 20 + i / 10) for i in range(30))
CONTEXT = b"time,device,temp,status\n" + LOG[:200]


def _tinylmz(args, tiny_model, stdin=b"", check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tinylmz.cli", *args, "--model", str(tiny_model)], input=stdin,
                       capture_output=True, env=env, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def test_records_roundtrip_and_get(tiny_model, tmp_path):
    ctx = tmp_path / "ctx.csv"
    ctx.write_bytes(CONTEXT)
    log = tmp_path / "log.csv"
    log.write_bytes(LOG[:-1])  # no final newline: must survive too
    out = tmp_path / "log.tlmzr"
    _tinylmz(["records", "compress", str(log), "--context", str(ctx), "-o", str(out), "-q"], tiny_model)
    r = _tinylmz(["records", "decompress", str(out), "--context", str(ctx)], tiny_model)
    assert r.stdout == LOG[:-1]
    r = _tinylmz(["records", "get", str(out), "7", "--context", str(ctx)], tiny_model)
    assert r.stdout == LOG.splitlines(keepends=True)[7]
    r = _tinylmz(["records", "get", str(out), "99", "--context", str(ctx)], tiny_model, check=False)
    assert r.returncode == 1 and b"does not exist" in r.stderr and b"Traceback" not in r.stderr


def test_records_stdin_stdout_and_wrong_context(tiny_model, tmp_path):
    ctx = tmp_path / "ctx.csv"
    ctx.write_bytes(CONTEXT)
    r = _tinylmz(["records", "compress", "--context", str(ctx), "-q"], tiny_model, stdin=LOG)
    blob = tmp_path / "x.tlmzr"
    blob.write_bytes(r.stdout)
    assert _tinylmz(["records", "decompress", str(blob), "--context", str(ctx)], tiny_model).stdout == LOG
    other = tmp_path / "other.csv"
    other.write_bytes(b"something else\n")
    r = _tinylmz(["records", "decompress", str(blob), "--context", str(other)], tiny_model, check=False)
    assert r.returncode == 1 and b"context" in r.stderr and len(r.stderr.splitlines()) == 1
