"""tinylmz.tokens: exact bytes <-> ids (DESIGN §2)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylmz.errors import ModelError
from tinylmz.tokens import (
    TOKEN_CONTROL,
    Tokenizer,
    Vocab,
    bytes_to_unicode,
    read_gguf_metadata,
    utf8_runs,
)

import tinymodel

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_vocab(tiny_model) -> Vocab:
    return Vocab.from_gguf(tiny_model)


@pytest.fixture(scope="module")
def tiny_tok(tiny_model, tiny_vocab) -> Tokenizer:
    return Tokenizer(tiny_model, tiny_vocab)


@pytest.fixture(scope="module")
def real_vocab(default_model_path) -> Vocab:
    return Vocab.from_gguf(default_model_path)


@pytest.fixture(scope="module")
def real_tok(default_model_path, real_vocab) -> Tokenizer:
    return Tokenizer(default_model_path, real_vocab)


def roundtrip(tok: Tokenizer, data: bytes) -> np.ndarray:
    ids = tok.encode(data)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == data
    assert tok.vocab.decode(ids.tolist()) == data
    return ids


# ---------------------------------------------------------------- metadata reader


def test_metadata_reader_matches_gguf_reader(tiny_model):
    r = gguf.GGUFReader(tiny_model)
    mine = read_gguf_metadata(tiny_model)
    assert set(mine) == set(r.fields) - {k for k in r.fields if k.startswith("GGUF.")}
    f = r.fields["tokenizer.ggml.tokens"]
    assert [t.decode("utf-8") for t in mine["tokenizer.ggml.tokens"]] == f.contents()
    assert mine["tokenizer.ggml.token_type"] == r.fields["tokenizer.ggml.token_type"].contents()
    assert mine["tokenizer.ggml.model"] == b"gpt2"
    assert mine["llama.context_length"] == 512
    only = read_gguf_metadata(tiny_model, ["tokenizer.ggml.model", "no.such.key"])
    assert only == {"tokenizer.ggml.model": b"gpt2"}


@pytest.mark.parametrize("content", [b"", b"GGML", b"GGUF\x03\x00\x00\x00" + b"\xff" * 8 + b"\x05" + b"\x00" * 7])
def test_bad_files_raise_model_error(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelError):
        Vocab.from_gguf(p)


def test_missing_file_raises_model_error(tmp_path):
    with pytest.raises(ModelError):
        Vocab.from_gguf(tmp_path / "absent.gguf")


def test_truncated_file_raises_model_error(tmp_path, tiny_model):
    p = tmp_path / "cut.gguf"
    p.write_bytes(tiny_model.read_bytes()[:3000])
    with pytest.raises(ModelError):
        Vocab.from_gguf(p)


# ---------------------------------------------------------------- vocab (tiny model)


def test_tiny_vocab_pieces(tiny_vocab):
    tokens, types, _ = tinymodel.vocab()
    v = tiny_vocab
    assert v.model == "gpt2"
    assert v.n_vocab == v.n_symbols == len(tokens) == len(v.pieces)
    assert v.start_id == 0 and v.pieces[0] == b""  # <|endoftext|> is CONTROL: spells nothing
    inv = {c: b for b, c in tinymodel.bytes_to_unicode().items()}
    for i, t in enumerate(tokens[1:], 1):
        assert v.pieces[i] == bytes(inv[c] for c in t)
    assert v.extra_bytes == b""
    assert [v.pieces[i] for i in v.byte_ids] == [bytes([b]) for b in range(256)]
    assert (v.piece_len == [len(p) for p in v.pieces]).all()
    assert bytes_to_unicode() == tinymodel.bytes_to_unicode()


def test_vocab_decode_numpy_and_list(tiny_vocab):
    ids = tiny_vocab.byte_ids[np.frombuffer(b"hi\x00", dtype=np.uint8)]
    assert tiny_vocab.decode(ids) == tiny_vocab.decode(ids.tolist()) == b"hi\x00"
    assert tiny_vocab.decode([]) == b""
    with pytest.raises(ValueError):
        tiny_vocab.decode([tiny_vocab.n_symbols])


def test_spm_vocab_pieces():
    tokens = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)] + ["\u2581the".encode(), "é".encode(), b"<tag>"]
    types = [2, 3, 3] + [6] * 256 + [1, 1, 4]
    pieces = [Vocab._piece("llama", t, ty) for t, ty in zip(tokens, types)]
    v = Vocab(pieces, types, model="llama", start_id=1)
    assert v.pieces[:3] == [b"", b"", b""]
    assert [v.pieces[i] for i in v.byte_ids] == [bytes([b]) for b in range(256)]
    assert list(v.byte_ids) == list(range(3, 259))
    assert v.pieces[259:] == [b" the", "é".encode(), b"<tag>"]


def test_vocab_missing_bytes_get_extra_symbols():
    # A vocabulary with no token for 0x00 and 0xff: they become extra symbols n_vocab, n_vocab+1.
    b2u = bytes_to_unicode()
    tokens = [b"<|endoftext|>"] + [b2u[b].encode() for b in range(1, 255)] + ["\u0120the".encode()]
    types = [TOKEN_CONTROL] + [1] * 255
    pieces = [Vocab._piece("gpt2", t, ty) for t, ty in zip(tokens, types)]
    v = Vocab(pieces, types, model="gpt2", start_id=0)
    assert v.n_vocab == 256 and v.extra_bytes == b"\x00\xff" and v.n_symbols == 258
    assert v.byte_ids[0] == 256 and v.byte_ids[255] == 257
    assert v.pieces[255] == b" the"
    assert v.decode([256, 1, 257]) == b"\x00\x01\xff"
    logits = np.array([[1.0] * 255 + [-3.0], [0.5] * 256], dtype=np.float32)
    padded = v.pad_logits(logits)
    assert padded.shape == (2, 258) and (padded[:, :256] == logits).all()
    assert (padded[0, 256:] == -3.0).all() and (padded[1, 256:] == 0.5).all()
    with pytest.raises(ValueError):
        v.pad_logits(np.zeros((1, 10), dtype=np.float32))


def test_pad_logits_noop_for_complete_vocab(tiny_vocab):
    x = np.zeros((3, tiny_vocab.n_vocab), dtype=np.float32)
    assert tiny_vocab.pad_logits(x) is x


# ---------------------------------------------------------------- utf8 runs


def test_utf8_runs():
    assert utf8_runs(b"") == []
    assert utf8_runs(b"abc") == [(True, b"abc")]
    assert utf8_runs(b"ab\xff\xfecd\xe2\x82") == [(True, b"ab"), (False, b"\xff\xfe"), (True, b"cd"), (False, b"\xe2\x82")]
    assert utf8_runs(b"\xed\xa0\x80x") == [(False, b"\xed\xa0\x80"), (True, b"x")]  # surrogate: invalid
    assert utf8_runs("é😀".encode()) == [(True, "é😀".encode())]


@given(st.binary(max_size=300))
def test_utf8_runs_partition(data):
    runs = utf8_runs(data)
    assert b"".join(r for _, r in runs) == data
    for valid, r in runs:
        assert r
        if valid:
            r.decode("utf-8")


# ---------------------------------------------------------------- tokenizer (tiny model)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_roundtrip_arbitrary_bytes(tiny_tok, data):
    roundtrip(tiny_tok, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_roundtrip_arbitrary_text(tiny_tok, text):
    roundtrip(tiny_tok, text.encode("utf-8"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(st.text(alphabet="ab \r\n\t\x00é😀<|>", max_size=30), st.binary(max_size=4)), max_size=12))
def test_roundtrip_mixed(tiny_tok, parts):
    data = b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in parts)
    roundtrip(tiny_tok, data)


SPECIAL_CASES = [
    b"",
    b"\xff\xfe",
    b"abc\xe2\x82",  # truncated multibyte at the end
    b"\xe2\x82abc",
    b"\x80\x80x\xbf",  # lone continuation bytes
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # encoded surrogate
    b"\x00",
    b"a\x00\x00b\x00",
    b"line one\r\nline two\r\n\r\n",
    b"\r",
    "emoji 😀👍🏽 and é ü 中文".encode(),
    b" " * 64,
    b"=" * 64,
    b"<|endoftext|>",
    b"x<|endoftext|>y <|endoftext|>",
    bytes(range(256)),
]


@pytest.mark.parametrize("data", SPECIAL_CASES)
def test_special_cases_tiny(tiny_tok, data):
    ids = roundtrip(tiny_tok, data)
    assert tiny_tok.vocab.start_id not in ids.tolist()
    if not data:
        assert len(ids) == 0


def test_uses_bpe_merges(tiny_tok):
    text = tinymodel.TRAINING_TEXT.encode()[:2000]
    ids = roundtrip(tiny_tok, text)
    assert len(ids) < 0.8 * len(text)  # merges are used, not one byte per token


def test_encode_accepts_bytearray_and_memoryview(tiny_tok):
    assert tiny_tok.decode(tiny_tok.encode(bytearray(b"hello"))) == b"hello"
    assert tiny_tok.decode(tiny_tok.encode(memoryview(b"hello"))) == b"hello"


def test_fallback_when_backend_misspells(tiny_model, tiny_vocab):
    """A back end that returns wrong ids must not lose a byte: split, then bytes."""

    class Liar:
        def tokenize(self, run):
            return [int(tiny_vocab.byte_ids[ord("z")])] * len(run) if b"q" in run else [int(tiny_vocab.byte_ids[b]) for b in run]

    tok = Tokenizer(tiny_model, tiny_vocab)
    tok._backend = Liar()
    data = b"hello world, " * 5 + b"q" + b" more text here" * 3
    ids = roundtrip(tok, data)
    assert len(ids) == len(data)
    assert tok.n_fallback_runs > 0


def test_decode_never_builds_a_backend(tiny_model, tiny_vocab):
    tok = Tokenizer(tiny_model, tiny_vocab)
    assert tok.decode([1, 2, 3]) == tiny_vocab.decode([1, 2, 3])
    assert tok._backend is None


def test_default_backend_is_tokenizers(tiny_tok):
    tiny_tok.encode(b"x")
    assert tiny_tok.backend.name == "tokenizers"


def test_unknown_backend_name(tiny_model):
    with pytest.raises(ValueError):
        Tokenizer(tiny_model, backend="sentencepiece")


# ---------------------------------------------------------------- real model


@pytest.mark.integration
def test_real_vocab(real_vocab):
    v = real_vocab
    assert v.model == "gpt2" and v.n_vocab == 49152
    assert v.start_id == 0 and v.pieces[0] == b""
    # SmolLM2 has no token for these 21 byte values; they get extra symbols.
    assert v.extra_bytes == bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2] + list(range(0xF5, 0x100)))
    assert v.n_symbols == 49152 + 21
    assert [v.pieces[i] for i in v.byte_ids] == [bytes([b]) for b in range(256)]
    assert v.piece_len.max() > 32  # long pieces exist (llama-cpp-python's detokenize would drop them)


@pytest.mark.integration
@pytest.mark.parametrize("data", SPECIAL_CASES + [b"a\x04b\x1dc", b"tab\tsep\x0bv\x0c", b"\xff" * 10])
def test_special_cases_real(real_tok, data):
    ids = roundtrip(real_tok, data)
    assert real_tok.vocab.start_id not in ids.tolist()


@pytest.mark.integration
def test_long_tokens_real(real_tok):
    """Pieces longer than 32 bytes (which llama-cpp-python's detokenize drops) round-trip."""
    for data in (b" " * 64, b"=" * 64, b"-" * 80, b"#" * 100):
        ids = roundtrip(real_tok, data)
        assert max(len(real_tok.vocab.pieces[i]) for i in ids) == 64, data[:4]
    ids = roundtrip(real_tok, b"\n" * 40)
    assert len(ids) <= 10


@pytest.mark.integration
def test_english_uses_bpe(real_tok):
    text = (
        b"Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
        b"nothing to do: once or twice she had peeped into the book her sister was reading, but it had "
        b"no pictures or conversations in it, 'and what is the use of a book,' thought Alice 'without "
        b"pictures or conversations?' So she was considering in her own mind (as well as she could, for "
        b"the hot day made her feel very sleepy and stupid), whether the pleasure of making a daisy-chain "
        b"would be worth the trouble of getting up and picking the daisies, when suddenly a White Rabbit "
        b"with pink eyes ran close by her.\r\n"
    )
    ids = roundtrip(real_tok, text)
    bpt = len(text) / len(ids)
    assert 3.5 <= bpt <= 5.0, bpt
    assert real_tok.n_fallback_runs == 0


@pytest.mark.integration
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_roundtrip_arbitrary_bytes_real(real_tok, data):
    roundtrip(real_tok, data)


@pytest.mark.integration
def test_pieces_match_llama_token_to_piece(default_model_path, real_vocab):
    """Spot check: our pieces agree with llama.cpp's own token_to_piece where that is defined."""
    import llama_cpp

    from tinylmz.tokens import quiet_stderr

    with quiet_stderr():
        llm = llama_cpp.Llama(model_path=str(default_model_path), vocab_only=True, verbose=False)
    vocab_ptr = llama_cpp.llama_model_get_vocab(llm.model)
    buf = (llama_cpp.ctypes.c_char * 256)()
    rng = random.Random(0)
    sample = list(range(0, 600)) + rng.sample(range(600, real_vocab.n_vocab), 3000)
    long_ids = [i for i in range(real_vocab.n_vocab) if real_vocab.piece_len[i] > 32]
    sample += long_ids
    checked = 0
    for i in sample:
        if real_vocab.token_type[i] == TOKEN_CONTROL:
            continue
        n = llama_cpp.llama_token_to_piece(vocab_ptr, i, buf, len(buf), 0, True)
        assert n >= 0, i
        assert bytes(buf[:n]) == real_vocab.pieces[i], (i, bytes(buf[:n]), real_vocab.pieces[i])
        checked += 1
    assert checked > 3500 and long_ids
    llm.close()


# ---------------------------------------------------------------- tokenizers back end == llama.cpp
#
# The default back end (Hugging Face tokenizers behind a re-creation of llama.cpp's
# pre-tokenizer, tinylmz/bpe.py) must give llama.cpp's ids: these tests need the llama extra
# (CI installs it).

ROOT = Path(__file__).resolve().parent.parent
TEXT_FILES = sorted((ROOT / "tests" / "data").glob("*.txt"))
_ALICE = ROOT.parent / "shared" / "corpus" / "alice29.txt"  # the benchmark file, where the checkout has it
if _ALICE.is_file():
    TEXT_FILES.append(_ALICE)

TRICKY = [
    b"0 1 12 123 1234 12345 3.14159 1,000,000 -42 +7e10 0x1F 2026-12-02T13:37:00Z v1.2.3",
    "\u0661\u0662\u0663 \u00b2\u00b3 \u216b \u0967\u0968 \uff11\uff12".encode(),  # Arabic-Indic, superscript, Roman, Devanagari, fullwidth digits
    b"a  b   c    d\t\te \t f\n\n\ng   \n  h \x0b\x0c i\r\n\r\n  \r\n",
    b"trailing spaces   ",
    b"   leading spaces",
    b"\n" * 7 + b" " * 9 + b"\t" * 3,
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷 中文字符 日本語のテキスト 한국어 Ελληνικά русский עברית العربية".encode(),
    "combining e\u0301 a\u0308 \u00a0nbsp\u2003em\u3000ideographic \u200bzwsp \u2028ls \x85nel \x1cfs".encode(),
    b"<|endoftext|>",
    b"text<|endoftext|>more <|im_start|>user\nhi<|im_end|> <repo_name> <|endoftext|",
    b"I'll don't we've they're 'S' THEY'RE it's ''quoted'' '",
    b"line one\r\nline two\r\n\r\nline four\rold mac\n",
    b"broken \xff\xfe utf-8 \xe2\x82 and \xc3( and \xed\xa0\x80 surrogate, \xf0\x9f\x98 cut",
    b"ctrl \x00\x01\x04\x06\x13\x1d\x1f\x7f end",
    b"def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\tif x == -1: pass\n",
    "\U00010d40\U00010d41  \U00010d42 Unicode 16 digits (not digits to llama.cpp)".encode(),
    "\U0002ebf0\U0002ebf1 Unicode 15.1 ideographs, \U00040000 plane 4".encode(),
    b"=" * 100 + b"-" * 33 + b" " * 70 + b"#" * 5,
]


@pytest.fixture(scope="module")
def llama_cpp():
    import llama_cpp  # the llama extra; CI installs it, so this is never skipped there

    return llama_cpp


@pytest.fixture(scope="module")
def tiny_llama_tok(llama_cpp, tiny_model, tiny_vocab) -> Tokenizer:
    return Tokenizer(tiny_model, tiny_vocab, backend="llama")


@pytest.fixture(scope="module")
def real_llama_tok(llama_cpp, default_model_path, real_vocab) -> Tokenizer:
    return Tokenizer(default_model_path, real_vocab, backend="llama")


def same_ids(a: Tokenizer, b: Tokenizer, data: bytes) -> np.ndarray:
    ids = roundtrip(a, data)
    assert a.backend.name == "tokenizers" and b.backend.name == "llama.cpp"
    ref = b.encode(data)
    if ids.tolist() != ref.tolist():
        i = next((k for k, (x, y) in enumerate(zip(ids.tolist(), ref.tolist())) if x != y), min(len(ids), len(ref)))
        pytest.fail(f"ids differ from llama.cpp's at token {i}: {ids[i:i + 8].tolist()} vs {ref[i:i + 8].tolist()}")
    return ids


@pytest.mark.parametrize("data", SPECIAL_CASES + TRICKY + [tinymodel.TRAINING_TEXT.encode()])
def test_tiny_same_ids_as_llama(tiny_tok, tiny_llama_tok, data):
    same_ids(tiny_tok, tiny_llama_tok, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120) | st.text(alphabet=" \t\n\r\x0b0123456789aA'sé😀.,-_<|>\u00a0\u3000", max_size=60))
def test_tiny_backend_matches_llama_on_text(tiny_tok, tiny_llama_tok, text):
    # The back ends themselves (no fallback in between), on any valid text.
    if any("\ud800" <= c <= "\udfff" for c in text):
        return  # surrogates are not valid UTF-8: they never reach a back end
    run = text.encode("utf-8")
    assert tiny_tok.backend.tokenize(run) == tiny_llama_tok.backend.tokenize(run)


def _pre_text() -> bytes:
    return b"".join(TRICKY[:8]) + tinymodel.TRAINING_TEXT.encode()[:1500]


@pytest.mark.parametrize("pre", sorted(__import__("tinylmz.bpe", fromlist=["PRE_TYPES"]).PRE_TYPES))
def test_every_supported_pre_type_matches_llama(llama_cpp, tmp_path, pre):
    """Each pre-tokenizer name the built-in back end accepts gives llama.cpp's ids."""
    path = tinymodel.write_tiny_gguf(tmp_path / f"{pre}.gguf", pre=pre)
    ours, ref = Tokenizer(path, backend="tokenizers"), Tokenizer(path, backend="llama")
    assert ours.backend.pre == pre
    same_ids(ours, ref, _pre_text())


@pytest.mark.parametrize("pre", [None, "default", "llama3", "qwen2", "deepseek-llm"])
def test_unsupported_pre_type_is_a_clear_error(tmp_path, pre):
    path = tinymodel.write_tiny_gguf(tmp_path / "m.gguf", pre=pre)
    tok = Tokenizer(path, backend="tokenizers")
    with pytest.raises(ModelError, match=r"pre-tokenizer .* not supported .*tinylmz\[llama\]"):
        tok.encode(b"hello")


def test_unsupported_pre_type_falls_back_to_llama_when_installed(llama_cpp, tmp_path):
    path = tinymodel.write_tiny_gguf(tmp_path / "m.gguf", pre="llama3")
    tok = Tokenizer(path)  # auto
    roundtrip(tok, b"hello world 123")
    assert tok.backend.name == "llama.cpp"


def test_sentencepiece_vocab_is_a_clear_error(tmp_path):
    from tinylmz.bpe import HFBackend

    with pytest.raises(ModelError, match=r"'llama' is not supported .*tinylmz\[llama\]"):
        HFBackend({"tokenizer.ggml.model": b"llama", "tokenizer.ggml.tokens": [b"a"]}, user_defined={})


def test_user_defined_tokens_split_like_llama(llama_cpp, tmp_path):
    """USER_DEFINED tokens are matched in text (longest first) by llama.cpp even with special=False."""
    path = tinymodel.write_tiny_gguf(tmp_path / "ud.gguf", user_defined=["<tag>", "<tag><tag>", "wood"])
    ours, ref = Tokenizer(path, backend="tokenizers"), Tokenizer(path, backend="llama")
    data = b"a <tag> b<tag><tag><tag>c woodchuck wood <ta <tag>\n<|endoftext|>"
    ids = same_ids(ours, ref, data)
    tag2 = ours.vocab.n_vocab - 2
    assert tag2 in ids.tolist() and ours.vocab.start_id not in ids.tolist()


def test_unicode_classes_are_llama_cpps(llama_cpp):
    """The letter/number/whitespace classes of tinylmz/unicode_classes.py are llama.cpp's, code point by code point."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_unicode_classes
    finally:
        sys.path.pop(0)
    from tinylmz import unicode_classes

    ref = gen_unicode_classes.classes()
    for name, ranges in ref.items():
        ours = [tuple(int(x, 16) for x in (item.split("-") * 2)[:2]) for item in getattr(unicode_classes, name).split()]
        assert ours == ranges, name


def test_default_install_needs_no_llama_cpp(tiny_model, tmp_path):
    """With llama_cpp unimportable, the default tokenizer and the portable engine still compress and decompress."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"  # import llama_cpp now raises ImportError
        "import tinylmz\n"
        "from tinylmz.tokens import Tokenizer\n"
        f"m = {str(tiny_model)!r}\n"
        "data = 'The quick brown fox <|endoftext|> 123\\n'.encode() * 20 + b'\\xff'\n"
        "blob = tinylmz.compress(data, model=m)\n"
        "assert tinylmz.decompress(blob, model=m) == data\n"
        "try:\n"
        "    Tokenizer(m, backend='llama').encode(b'xy')\n"
        "except tinylmz.ModelError as e:\n"
        "    print('ERR', e)\n"
        "from tinylmz.engine_llama import LlamaEngine\n"
        "try:\n"
        "    LlamaEngine(m, seg_len=16)\n"
        "except tinylmz.ModelError as e:\n"
        "    print('ERR', e)\n"
        "print('llama_cpp' in sys.modules and sys.modules['llama_cpp'] is not None)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[-1] == "False"
    for line in lines[-3:-1]:  # the tokenizer's and the engine's message: one line naming the extra
        assert line.startswith("ERR ") and 'pip install "tinylmz[llama]"' in line, line


@pytest.mark.integration
@pytest.mark.parametrize("path", TEXT_FILES, ids=[p.name for p in TEXT_FILES])
def test_real_same_ids_as_llama_on_files(real_tok, real_llama_tok, path):
    ids = same_ids(real_tok, real_llama_tok, path.read_bytes())
    assert real_tok.n_fallback_runs == 0 and len(ids) > 1000


@pytest.mark.integration
@pytest.mark.parametrize("data", SPECIAL_CASES + TRICKY)
def test_real_same_ids_as_llama_tricky(real_tok, real_llama_tok, data):
    ids = same_ids(real_tok, real_llama_tok, data)
    assert real_tok.vocab.start_id not in ids.tolist()


@pytest.mark.integration
def test_real_same_ids_as_llama_every_code_point(real_tok, real_llama_tok):
    """Code points in contexts where their class (letter, digit, space, other) decides the split.

    All of planes 0 and 1 (every script, the Unicode 16 digits where tokenizers' own classes
    and llama.cpp's disagree) and every 13th code point above.  Characters whose UTF-8 uses a
    byte the vocabulary lacks (planes 4-11 for SmolLM2) never reach a back end (Tokenizer
    splits them off), and there the two do differ: llama.cpp keeps the unknown character as a
    symbol that blocks merges, tokenizers drops it first and merges its neighbours.
    """
    ours, ref = real_tok.backend, real_llama_tok.backend
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and (c < 0x20000 or c % 13 == 0)
           and not real_tok._split.fullmatch(chr(c))]
    bad = []

    def text(group):
        return "".join(f"x{c} {c}{c}1{c}  {c}.{c}" for c in map(chr, group)).encode()

    for i in range(0, len(cps), 4096):
        group = cps[i : i + 4096]
        if ours.tokenize(text(group)) != ref.tokenize(text(group)):
            bad += [c for c in group if ours.tokenize(text([c])) != ref.tokenize(text([c]))]
    assert not bad, [hex(c) for c in bad[:20]]
