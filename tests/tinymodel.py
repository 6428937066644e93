"""A tiny, deterministic llama-architecture GGUF for tests (loads in llama.cpp).

2 layers, n_embd 64, 4 heads / 2 kv heads (head_dim 16), n_ff 128, ctx 512, and a
byte-level BPE tokenizer like GPT-2/SmolLM2: token 0 ``<|endoftext|>`` (CONTROL),
256 byte tokens, then merges learned from ``TRAINING_TEXT``.  Tensor types are mixed
(F32 norms, Q8_0 embeddings, Q4_1 attention, Q8_0 / F16 FFN) to exercise dequantizers.
Embeddings are tied (no ``output.weight``), like SmolLM2.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 128
N_CTX = 512
N_MERGES = 200
EOT = "<|endoftext|>"

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A small language model reads the text
one token at a time and guesses what comes next; the better the guess, the fewer bits
the arithmetic coder needs to store it. Compression is prediction, and prediction is
understanding, or at least the part of understanding that can be measured in bits.
In the beginning there was the byte, and the byte was eight bits, and the bits were
either zero or one. Then there were words, and sentences, and paragraphs, and books.
She sells sea shells by the sea shore; the shells she sells are surely sea shells.
How much wood would a woodchuck chuck if a woodchuck could chuck wood? He would chuck
as much wood as a woodchuck could chuck if a woodchuck could chuck wood.
Peter Piper picked a peck of pickled peppers. Where is the peck of pickled peppers
that Peter Piper picked? The rain in Spain stays mainly in the plain.
It was the best of times, it was the worst of times, it was the age of wisdom, it was
the age of foolishness, it was the epoch of belief, it was the epoch of incredulity,
it was the season of light, it was the season of darkness, it was the spring of hope,
it was the winter of despair. We had everything before us, we had nothing before us.
To be, or not to be, that is the question: whether it is nobler in the mind to suffer
the slings and arrows of outrageous fortune, or to take arms against a sea of troubles
and by opposing end them. All the world is a stage, and all the men and women merely
players; they have their exits and their entrances, and one man in his time plays many
parts. The model, the tokenizer and the coder must agree on every single bit, or the
decoder will produce nonsense instead of the original text. Hello world, hello there!
"""

# GPT-2 style pre-tokenizer (ASCII approximation of llama.cpp's "smollm" regex: digits
# are split one by one).
_PRETOK = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(text: str = TRAINING_TEXT, n_merges: int = N_MERGES) -> tuple[list[str], list[str]]:
    """Return (tokens, merges): the 256 byte tokens then one token per learned merge.

    Deterministic: the most frequent adjacent pair wins, ties broken by the pair itself.
    """
    b2u = bytes_to_unicode()
    byte_tokens = [b2u[b] for b in range(256)]
    words = Counter(tuple(b2u[b] for b in w.encode("utf-8")) for w in _PRETOK.findall(text))
    tokens = list(byte_tokens)
    known = set(tokens)
    merges: list[str] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        new = a + b
        if new not in known:
            tokens.append(new)
            known.add(new)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return tokens, merges


def vocab(user_defined: Sequence[str] = ()) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token_types, merges) of the tiny model's tokenizer.

    ``user_defined`` texts are appended as USER_DEFINED tokens (llama.cpp matches them in
    text even with ``special=False``; the built-in tokenizer must do the same)."""
    bpe_tokens, merges = learn_bpe()
    tokens = [EOT] + bpe_tokens + list(user_defined)
    types = ([int(gguf.TokenType.CONTROL)] + [int(gguf.TokenType.NORMAL)] * len(bpe_tokens)
             + [int(gguf.TokenType.USER_DEFINED)] * len(user_defined))
    return tokens, types, merges


def _add(w: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: Q) -> None:
    """Add a numpy tensor (numpy shape = reversed GGUF shape) quantized to ``qtype``."""
    data = data.astype(np.float32)
    if qtype in (Q.F32, Q.F16):
        w.add_tensor(name, quantize(data, qtype))
    else:
        w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


def write_tiny_gguf(path: str | Path, *, seed: int = 0, n_embd: int = N_EMBD, n_head: int = N_HEAD,
                    n_head_kv: int = N_HEAD_KV, pre: str | None = "smollm",
                    user_defined: Sequence[str] = ()) -> Path:
    """Write the tiny model to ``path`` (same bytes for the same seed) and return it.

    ``n_embd``/``n_head``/``n_head_kv`` change its shape (e.g. 128/2/1: heads of 64, the real
    models' size, which the native kernel's lane-wise attention paths need).  ``pre`` is its
    ``tokenizer.ggml.pre`` (None: no such key), ``user_defined`` extra USER_DEFINED tokens."""
    path = Path(path)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)
    tokens, types, merges = vocab(user_defined)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(path, "llama")
    w.add_type("model")
    w.add_name("tinylmz test model")
    w.add_license("apache-2.0")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def norm(n: int) -> np.ndarray:
        return 1.0 + 0.05 * rng.standard_normal(n)

    def mat(rows: int, cols: int, std: float = 0.08) -> np.ndarray:
        return std * rng.standard_normal((rows, cols))

    _add(w, "token_embd.weight", mat(n_vocab, n_embd, 0.1), Q.Q8_0)
    _add(w, "output_norm.weight", norm(n_embd), Q.F32)
    kv = n_head_kv * head_dim
    for i in range(N_LAYER):
        p = f"blk.{i}."
        ffn_type = Q.Q8_0 if i == 0 else Q.F16
        _add(w, p + "attn_norm.weight", norm(n_embd), Q.F32)
        _add(w, p + "attn_q.weight", mat(n_embd, n_embd), Q.Q4_1)
        _add(w, p + "attn_k.weight", mat(kv, n_embd), Q.Q4_1)
        _add(w, p + "attn_v.weight", mat(kv, n_embd), Q.Q4_1)
        _add(w, p + "attn_output.weight", mat(n_embd, n_embd), Q.Q4_1)
        _add(w, p + "ffn_norm.weight", norm(n_embd), Q.F32)
        _add(w, p + "ffn_gate.weight", mat(N_FF, n_embd), ffn_type)
        _add(w, p + "ffn_up.weight", mat(N_FF, n_embd), ffn_type)
        _add(w, p + "ffn_down.weight", mat(n_embd, N_FF), ffn_type)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(write_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
