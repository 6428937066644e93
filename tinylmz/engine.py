"""What every engine provides: next-token logits for streams of token ids.

The codec turns logits into integer frequency tables (`tinylmz.freqs`), so an
engine only has to make its logits *reproducible*: the decoder must get, for
each position, exactly the logits the encoder got.

Two ways to ask:

* ``score(prefix, ids)`` — the encoder's way: logits predicting ``ids[i]`` from
  the prefix and ``ids[:i]``, for every ``i``.  Allowed only when the engine is
  ``batch_invariant`` (its results do not depend on how positions are grouped
  into calls).
* ``stepper(prefix, n)`` — the decoder's way: ``n`` streams advanced in
  lockstep, one token of each per model call.  An engine that is not batch
  invariant (llama.cpp) is driven this way by the encoder as well, feeding the
  known ids, so that both sides make identical calls.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np


class Prefix(Protocol):
    """Model state after the stream start token and any shared context."""

    n_tokens: int


class Stepper(Protocol):
    """``n`` streams advanced in lockstep from one shared prefix."""

    def logits(self) -> np.ndarray:
        """Logits (float, shape ``(n_active, n_vocab)``) for each active stream's next token."""

    def feed(self, ids: Sequence[int]) -> None:
        """Append one token to each of the first ``len(ids)`` streams.

        Streams beyond ``len(ids)`` are finished and dropped for good, so the
        active set only ever shrinks from the end (the codec orders streams by
        length, longest first).
        """


class Engine(Protocol):
    name: str  # "portable" | "llama": recorded in the header
    version: int  # bumped whenever logits could change for some input
    batch_invariant: bool
    n_vocab: int

    def params(self) -> dict:
        """Everything, besides the model file, that the logits depend on (recorded in the header)."""

    def check_params(self, params: dict, *, force: bool = False) -> None:
        """Raise ``EngineMismatch`` if a file made with ``params`` cannot be decoded bit-exactly here."""

    def prefill(self, ids: Sequence[int]) -> Prefix:
        """Evaluate the shared prefix (start token + context) once."""

    def score(self, prefix: Prefix, ids: Sequence[int]) -> Iterator[np.ndarray]:
        """Yield logits for positions ``0..len(ids)-1`` in chunks of rows, in order."""

    def segment_workers(self) -> int:
        """Batch-invariant engines: how many ``score`` calls may run side by side in threads."""

    def side_by_side(self):
        """Batch-invariant engines: a context manager under which this thread's calls share the
        cores with the other threads inside one (segments scored side by side)."""

    def stepper(self, prefix: Prefix, n: int) -> Stepper:
        """Start ``n`` streams from ``prefix``."""
