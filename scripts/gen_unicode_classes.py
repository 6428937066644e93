"""Regenerate tinylmz/unicode_classes.py from llama.cpp's own Unicode tables.

The built-in tokenizer (tinylmz.tokens) splits text with llama.cpp's pre-tokenizer
rules; for its ids to equal llama.cpp's, its letter/number/whitespace classes must be
llama.cpp's, not those of whatever Unicode version the regex library carries.  This
reads them from llama.cpp's exported ``unicode_cpt_flags_from_cpt`` (needs the
``llama`` extra):  python scripts/gen_unicode_classes.py > tinylmz/unicode_classes.py
"""

from __future__ import annotations

import ctypes
import pathlib
import sys

import llama_cpp

# struct unicode_cpt_flags (llama.cpp src/unicode.h): bit 1 NUMBER, bit 2 LETTER, bit 8 WHITESPACE
NUMBER, LETTER, WHITESPACE = 0x0002, 0x0004, 0x0100


def flags_function():
    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libllama.so"))
    f = lib._Z26unicode_cpt_flags_from_cptj  # unicode_cpt_flags_from_cpt(uint32_t), returns a uint16 struct
    f.restype, f.argtypes = ctypes.c_uint16, [ctypes.c_uint32]
    return f


def ranges(cps: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def classes() -> dict[str, list[tuple[int, int]]]:
    f = flags_function()
    flags = [f(c) for c in range(0x110000)]
    return {name: ranges([c for c, v in enumerate(flags) if v & bit])
            for name, bit in (("NUMBER", NUMBER), ("LETTER", LETTER), ("WHITESPACE", WHITESPACE))}


def main() -> None:
    w = sys.stdout.write
    w('"""Unicode classes of llama.cpp\'s pre-tokenizer (generated: scripts/gen_unicode_classes.py).\n\n')
    w(f"Source: llama-cpp-python {llama_cpp.__version__}, ``unicode_cpt_flags_from_cpt`` (Unicode 15.1 tables).\n")
    w("Inclusive code point ranges, as hex ``lo-hi`` (or ``cp``) separated by spaces.\n")
    w('"""\n\n')
    for name, rs in classes().items():
        items = [f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in rs]
        w(f"{name} = (\n")
        for i in range(0, len(items), 10):
            w(f'    "{" ".join(items[i:i + 10])} "\n')
        w(")\n")


if __name__ == "__main__":
    main()
