"""The tiny test model is deterministic, well-formed, and loads in llama.cpp."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import gguf
import numpy as np
import pytest

import tinymodel
from tinymodel import write_tiny_gguf


def test_deterministic(tmp_path, tiny_model):
    again = write_tiny_gguf(tmp_path / "again.gguf")
    assert again.read_bytes() == tiny_model.read_bytes()
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert other.read_bytes() != tiny_model.read_bytes()


def test_metadata(tiny_model):
    r = gguf.GGUFReader(tiny_model)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == 2
    assert f["llama.embedding_length"] == 64
    assert f["llama.attention.head_count"] == 4
    assert f["llama.attention.head_count_kv"] == 2
    assert f["llama.feed_forward_length"] == 128
    assert f["llama.context_length"] == 512
    assert f["llama.rope.dimension_count"] == 16
    assert f["llama.rope.freq_base"] == 10000.0
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.ggml.bos_token_id"] == 0 and f["tokenizer.ggml.eos_token_id"] == 0

    tokens = f["tokenizer.ggml.tokens"]
    types = f["tokenizer.ggml.token_type"]
    merges = f["tokenizer.ggml.merges"]
    assert tokens[0] == "<|endoftext|>" and types[0] == gguf.TokenType.CONTROL
    b2u = tinymodel.bytes_to_unicode()
    assert tokens[1:257] == [b2u[b] for b in range(256)]
    assert set(types[1:]) == {gguf.TokenType.NORMAL}
    assert len(merges) == tinymodel.N_MERGES and len(tokens) > 300
    assert len(set(tokens)) == len(tokens)
    known = set(tokens)
    for m in merges:  # every merge joins two tokens into a token
        a, b = m.split(" ")
        assert a in known and b in known and a + b in known
    assert f["llama.vocab_size"] == len(tokens)

    t = {x.name: x for x in r.tensors}
    assert "output.weight" not in t  # tied embeddings
    assert [int(n) for n in t["token_embd.weight"].shape] == [64, len(tokens)]
    assert [int(n) for n in t["blk.0.ffn_down.weight"].shape] == [128, 64]
    assert [int(n) for n in t["blk.0.attn_k.weight"].shape] == [64, 32]
    Q = gguf.GGMLQuantizationType
    assert t["token_embd.weight"].tensor_type == Q.Q8_0
    assert t["output_norm.weight"].tensor_type == Q.F32
    assert t["blk.0.attn_q.weight"].tensor_type == Q.Q4_1
    assert t["blk.0.ffn_up.weight"].tensor_type == Q.Q8_0
    assert t["blk.1.ffn_up.weight"].tensor_type == Q.F16
    assert len(t) == 2 + 9 * 2
    emb = gguf.quants.dequantize(t["token_embd.weight"].data, Q.Q8_0)
    assert emb.shape == (len(tokens), 64) and 0.05 < float(np.std(emb)) < 0.2


TEXTS = [
    b"hello world",
    b"The quick brown fox jumps over the lazy dog.",
    b"It was the best of times, 1234 bits!\n\tand \xc3\xa9t\xc3\xa9  spaces   ",
    bytes(range(1, 128)) + "é ü 日本語 🙂".encode(),
]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def test_llama_cpp_tokenizes(llama_cpp, tiny_model):
    llm = llama_cpp.Llama(model_path=str(tiny_model), vocab_only=True, verbose=False)
    for text in TEXTS:
        ids = llm.tokenize(text, add_bos=False, special=False)
        assert ids and all(0 < i < llm.n_vocab() for i in ids)
        assert b"".join(llm.detokenize([i]) for i in ids) == text
    # llama.cpp (like the real model) turns invalid UTF-8 into U+FFFD: callers must not feed raw bytes
    ids = llm.tokenize(b"a\x80b", add_bos=False, special=False)
    assert b"".join(llm.detokenize([i]) for i in ids) == "a\ufffdb".encode()
    # merges are used: common words become single tokens
    assert len(llm.tokenize(b" the", add_bos=False, special=False)) == 1
    assert len(llm.tokenize(b"hello world", add_bos=False, special=False)) < len(b"hello world")


_EVAL_SCRIPT = r"""
import json, sys
import numpy as np
import llama_cpp
import llama_cpp.llama as L
if sys.argv[2] == "no-extra-bufts":  # no AMX / repacked weight buffers
    orig = llama_cpp.llama_model_default_params
    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    L.llama_cpp.llama_model_default_params = params
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=False, logits_all=True)
ids = llm.tokenize(b"hello world, hello there", add_bos=False, special=False)
llm.eval(ids)
logits = np.asarray(llm.scores[: len(ids)])
print(json.dumps({"n_vocab": llm.n_vocab(), "n_embd": llm.n_embd(), "shape": list(logits.shape),
                  "finite": bool(np.isfinite(logits).all()), "std": float(np.std(logits))}))
"""


@pytest.mark.parametrize("mode", ["no-extra-bufts"])  # default buffers: the local AMX build dies on batched eval (see README)
def test_llama_cpp_evals(llama_cpp, tiny_model, mode):
    # In a subprocess: a llama.cpp build that uses CPU features the machine refuses (e.g. AMX
    # tiles in a VM without AMX state) dies with SIGILL, which must not take pytest down.
    r = subprocess.run([sys.executable, "-c", _EVAL_SCRIPT, str(tiny_model), mode],
                       capture_output=True, text=True, timeout=300)
    if r.returncode == -signal.SIGILL:
        pytest.fail("llama.cpp died with SIGILL (illegal instruction) evaluating a model: this build uses CPU "
                    "instructions the machine does not allow (AMX?); rebuild llama-cpp-python with "
                    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX512=ON' (no AMX) or load with use_extra_bufts=False")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    n_vocab = len(tinymodel.vocab()[0])
    assert out["n_vocab"] == n_vocab and out["n_embd"] == 64
    assert out["shape"][1] == n_vocab and out["shape"][0] > 1
    assert out["finite"] and out["std"] > 0
