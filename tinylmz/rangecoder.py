"""The range coder: symbols with integer frequencies in, bytes out, and back.

A carry-propagating range coder in the style of LZMA's, widened to a 64-bit
range so that frequency totals up to 2^28 lose nothing measurable (the range
never falls below 2^56, so ``range // total`` keeps at least 28 bits).  Python
integers make the arithmetic exact; ``FORMAT.md`` specifies it bit for bit.

Invariants (asserted):
  * ``2^56 <= range < 2^64`` between symbols;
  * ``0 <= low < 2^64`` after each shift (a carry out of ``low`` is pushed into
    the bytes already written through the pending ``cache`` / 0xFF run);
  * every symbol has ``freq >= 1`` and ``cum + freq <= total <= 2^28``.

Stream layout: the encoder's first byte is always 0 (the interval never
leaves [0, 1)), so it is not stored; the flush writes the shortest value
inside the final interval and trailing zero bytes are dropped, because the
decoder reads missing bytes as zeros.  A stream of no symbols is empty.
"""

from __future__ import annotations

import numpy as np

RANGE_BITS = 64
TOP = 1 << RANGE_BITS
MASK = TOP - 1
SHIFT = RANGE_BITS - 8  # bit position of the top byte of ``low``
BOTTOM = 1 << SHIFT  # renormalise when range < 2^56
MAX_TOTAL = 1 << 28


class Encoder:
    """Encode symbols given as (cum, freq, total); call ``finish()`` for the bytes."""

    def __init__(self) -> None:
        self.low = 0
        self.range = MASK
        self._cache = 0
        self._cache_size = 1
        self._out = bytearray()

    def encode(self, cum: int, freq: int, total: int) -> None:
        assert 0 < total <= MAX_TOTAL and freq >= 1 and 0 <= cum and cum + freq <= total
        r = self.range // total
        self.low += r * cum
        self.range = r * freq
        while self.range < BOTTOM:
            self.range <<= 8
            self._shift_low()

    def encode_many(self, cums, freqs, total: int) -> None:
        """Encode a sequence of symbols that share one total (ints or numpy ints)."""
        for c, f in zip(np.asarray(cums).tolist(), np.asarray(freqs).tolist()):
            self.encode(c, f, total)

    def _shift_low(self) -> None:
        low = self.low
        if low < (0xFF << SHIFT) or low >= TOP:
            carry = low >> RANGE_BITS
            byte = self._cache
            while True:
                self._out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self._cache_size -= 1
                if self._cache_size == 0:
                    break
            self._cache = (low >> SHIFT) & 0xFF
        self._cache_size += 1
        self.low = (low & (BOTTOM - 1)) << 8
        assert 0 <= self.low < TOP

    def finish(self) -> bytes:
        """Flush the shortest value inside the final interval and return the stream."""
        low, high = self.low, self.low + self.range
        for bits in range(RANGE_BITS, -1, -1):
            v = -((-low) >> bits) << bits  # low rounded up to a multiple of 2^bits
            if v < high:
                self.low = v
                break
        for _ in range(RANGE_BITS // 8 + 1):
            self._shift_low()
        out = bytes(self._out[1:])  # the first byte is always 0
        assert self._out[0] == 0
        return out.rstrip(b"\0")


class Decoder:
    """Decode symbols from ``data``; bytes past the end read as zeros."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = RANGE_BITS // 8
        self.range = MASK
        self.code = int.from_bytes(data[: self._pos].ljust(self._pos, b"\0"), "big")

    def target(self, total: int) -> int:
        """The value in [0, total) that selects the next symbol."""
        self._r = self.range // total
        v = self.code // self._r
        if v >= total:
            raise ValueError("range coder stream is corrupt")
        return v

    def consume(self, cum: int, freq: int) -> None:
        """Remove the symbol (cum, freq) found for the last ``target``."""
        r = self._r
        self.code -= r * cum
        self.range = r * freq
        while self.range < BOTTOM:
            b = self._data[self._pos] if self._pos < len(self._data) else 0
            self._pos += 1
            self.code = (self.code << 8) | b
            self.range <<= 8
        if not 0 <= self.code < self.range:
            raise ValueError("range coder stream is corrupt")

    def decode(self, cumfreq: np.ndarray) -> int:
        """Decode one symbol from a cumulative table ``[0, c1, ..., total]`` (length n+1)."""
        total = int(cumfreq[-1])
        v = self.target(total)
        s = int(np.searchsorted(cumfreq, v, side="right")) - 1
        self.consume(int(cumfreq[s]), int(cumfreq[s + 1] - cumfreq[s]))
        return s

    @property
    def overrun(self) -> int:
        """How many bytes past the end of the data were read (as zeros)."""
        return max(0, self._pos - len(self._data))
