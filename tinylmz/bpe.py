"""Tokenizer back ends for ``tinylmz.tokens.Tokenizer``: text run -> model token ids.

Two back ends give the same ids on the pre-tokenizer types listed in ``PRE_TYPES``
(tests compare them on real text and on every code point):

* ``HFBackend`` (default; no compiler needed): Hugging Face ``tokenizers``' BPE built
  from the GGUF's own ``tokenizer.ggml.tokens`` and ``tokenizer.ggml.merges``, behind a
  re-creation of llama.cpp's pre-tokenizer for ``tokenizer.ggml.pre``: the same
  regular expressions, applied one after the other as llama.cpp does, with the letter,
  number and whitespace classes spelled out from llama.cpp's own Unicode tables
  (``unicode_classes``) instead of the regex library's ``\\p{L}``/``\\p{N}``/``\\s``,
  whose Unicode version differs (tokenizers 0.23 knows the Unicode 16 digits, llama.cpp
  does not) and would change ids from one tokenizers release to the next.
  USER_DEFINED tokens are split off first, longest first, as llama.cpp does even with
  ``parse_special=False``; CONTROL tokens (``<|endoftext|>``) are never matched as text.
* ``LlamaBackend`` (the ``llama`` extra): llama.cpp's tokenizer, the model loaded
  vocab-only, ``special=False``.  The reference, and the back end for vocabularies the
  first does not cover (SentencePiece, other pre-tokenizers).

Either may return ids that do not spell the run (characters the vocabulary lacks are
dropped): the caller verifies and falls back.
"""

from __future__ import annotations

import atexit
from functools import lru_cache

from . import unicode_classes
from .errors import ModelError

__all__ = ["PRE_TYPES", "HFBackend", "LlamaBackend", "LLAMA_EXTRA_HINT", "pre_regexes", "llama_available"]

LLAMA_EXTRA_HINT = 'pip install "tinylmz[llama]"'

# llama.cpp's GPT-2 expression; \p{L}, \p{N}, \s stand for llama.cpp's classes (see _classes).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_DIGIT = r"\p{N}"

# tokenizer.ggml.pre -> expressions, as in llama.cpp's llama-vocab.cpp (llama-cpp-python 0.3.36).
# llama.cpp writes the GPT-2 expression without its final "|\s+" and matches it with a
# hand-written splitter that behaves as if it were there.
_SMOLLM = (_DIGIT, _GPT2)
_GPT2_ONLY = (_GPT2,)
PRE_TYPES: dict[str, tuple[str, ...]] = {
    **{name: _SMOLLM for name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")},
    **{name: _GPT2_ONLY for name in ("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais")},
}


def _class_body(spec: str) -> str:
    """Onig character-class body (no brackets) for ``unicode_classes`` ranges ``"lo-hi cp ..."``."""
    parts = []
    for item in spec.split():
        lo, _, hi = item.partition("-")
        parts.append(f"\\x{{{lo}}}" + (f"-\\x{{{hi}}}" if hi else ""))
    return "".join(parts)


@lru_cache(maxsize=None)
def _classes() -> dict[str, str]:
    return {
        "L": _class_body(unicode_classes.LETTER),
        "N": _class_body(unicode_classes.NUMBER),
        "W": _class_body(unicode_classes.WHITESPACE),
    }


def pre_regexes(pre: str) -> tuple[str, ...]:
    """llama.cpp's pre-tokenizer expressions for ``pre``, with its own Unicode classes spelled out."""
    try:
        exprs = PRE_TYPES[pre]
    except KeyError:
        raise ModelError(
            f"pre-tokenizer {pre!r} is not supported by the built-in tokenizer "
            f"(supported: {', '.join(sorted(PRE_TYPES))}); {LLAMA_EXTRA_HINT} to tokenize with llama.cpp"
        ) from None
    c = _classes()
    out = []
    for e in exprs:
        # Negated class first: it contains the others' spellings.
        e = e.replace(r"[^\s\p{L}\p{N}]", f"[^{c['W']}{c['L']}{c['N']}]").replace(r"(?!\S)", f"(?![^{c['W']}])")
        e = e.replace(r"\p{L}", f"[{c['L']}]").replace(r"\p{N}", f"[{c['N']}]").replace(r"\s", f"[{c['W']}]")
        out.append(e)
    return tuple(out)


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class HFBackend:
    """BPE of Hugging Face ``tokenizers`` behind llama.cpp's pre-tokenizer (module docstring)."""

    name = "tokenizers"

    def __init__(self, meta: dict, *, user_defined: dict[bytes, int], path: str = "model"):
        try:
            import tokenizers
            from tokenizers import Regex, models, pre_tokenizers
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ModelError(f"the tokenizer needs the tokenizers package ({e})") from e
        model = (meta.get("tokenizer.ggml.model") or b"").decode("utf-8", "replace")
        if model != "gpt2":
            raise ModelError(
                f"{path}: tokenizer model {model!r} is not supported by the built-in tokenizer (byte-level BPE "
                f"'gpt2' only); {LLAMA_EXTRA_HINT} to tokenize with llama.cpp"
            )
        pre_raw = meta.get("tokenizer.ggml.pre")
        pre = pre_raw.decode("utf-8", "replace") if pre_raw is not None else "default"
        regexes = pre_regexes(pre)
        merges_raw = meta.get("tokenizer.ggml.merges")
        if not merges_raw:
            raise ModelError(f"{path}: GGUF file has no tokenizer.ggml.merges (needed for BPE); {LLAMA_EXTRA_HINT}")
        vocab: dict[str, int] = {}
        for i, raw in enumerate(meta["tokenizer.ggml.tokens"]):
            t = _text(raw)
            if t is not None:
                vocab[t] = i  # a repeated text keeps its last id, as llama.cpp's token_to_id does
        merges = []
        for raw in merges_raw:
            m = _text(raw)
            k = m.find(" ", 1) if m else -1  # llama.cpp splits at the first space after the first character
            if k < 0:
                continue
            a, b = m[:k], m[k + 1 :]
            # tokenizers refuses merges outside the vocabulary; llama.cpp could never emit their result as one id
            if a in vocab and b in vocab and a + b in vocab:
                merges.append((a, b))
        bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False,
                         byte_fallback=False, ignore_merges=False)
        tk = tokenizers.Tokenizer(bpe)
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)]
        )
        self._tk = tk
        self.pre = pre
        self.version = tokenizers.__version__
        # Longest first, as llama.cpp's tokenizer_st_partition does.
        self._user = sorted(user_defined.items(), key=lambda kv: (-len(kv[0]), kv[1]))

    def tokenize(self, run: bytes) -> list[int]:
        """Ids for valid UTF-8 ``run`` (unverified)."""
        frags: list[bytes | int] = [run]
        for text, tid in self._user:  # split off USER_DEFINED token texts, left to right
            out: list[bytes | int] = []
            for f in frags:
                if isinstance(f, int) or text not in f:
                    out.append(f)
                    continue
                parts = f.split(text)
                for j, p in enumerate(parts):
                    if j:
                        out.append(tid)
                    if p:
                        out.append(p)
            frags = out
        ids: list[int] = []
        encode = self._tk.encode
        for f in frags:
            if isinstance(f, int):
                ids.append(f)
            else:
                ids.extend(encode(f.decode("utf-8"), add_special_tokens=False).ids)
        return ids


class LlamaBackend:
    """llama.cpp's tokenizer (``special=False``), loaded vocab-only."""

    name = "llama.cpp"

    def __init__(self, model_path: str, n_vocab: int):
        from .tokens import quiet_stderr

        try:
            import llama_cpp
        except ImportError as e:
            raise ModelError(f"tokenizing with llama.cpp needs llama-cpp-python: {LLAMA_EXTRA_HINT} ({e})") from e
        try:
            with quiet_stderr():
                llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
        except Exception as e:  # llama-cpp-python raises ValueError/RuntimeError
            raise ModelError(f"llama.cpp cannot load the vocabulary of {model_path}: {e}") from e
        if llm.n_vocab() != n_vocab:
            raise ModelError(f"llama.cpp sees {llm.n_vocab()} tokens in {model_path}, the GGUF metadata {n_vocab}")
        self._llm = llm
        self.version = llama_cpp.__version__
        # free it before interpreter teardown, when llama-cpp-python's __del__ would fail noisily
        atexit.register(llm.close)

    def tokenize(self, run: bytes) -> list[int]:
        return self._llm.tokenize(run, add_bos=False, special=False)


def llama_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True

