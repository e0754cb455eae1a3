"""What a prompt's last position predicted, kept for the same prompt sent again.

The prefix cache (:mod:`slmops.runtime.prefix`) keeps a prompt's KV cache but not the logits
of its last position, so a prompt sent again still runs its last two tokens, in a forward of
its own per row: a burst of 8 chat requests that were sent before (a retried request, a
pipeline's or a benchmark's fixed prompts, a regenerated answer) waited for 8 forwards one
after another. Kept here, such a prompt copies its row from the prefix cache and starts
decoding from the logits its prefill computed, running nothing: what a cold prefill would
give, bit for bit (logits of a prompt's last position computed by a one-position step instead
differ in the last bits on INT4 models, and the greedy answers that follow drift apart).

Entries are whole prompts' logits (the vocabulary's floats, 196 kB for SmolLM2), least
recently used out first, within a byte budget.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np


class LastLogits:
    """The logits after each prompt's last token, least recently used out first, within ``budget`` bytes.

    Args:
        budget: bytes the kept logits may take; 0 keeps nothing.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()

    @property
    def used(self) -> int:
        return sum(logits.nbytes for logits in self.entries.values())

    def keep(self, prompt: Sequence[int], logits: np.ndarray) -> None:
        """Keep a copy of ``logits``, computed by prefilling ``prompt``, while the budget allows."""
        key = _key(prompt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        if logits.nbytes > self.budget:
            return
        self.entries[key] = np.array(logits, np.float32)
        while self.used > self.budget:
            self.entries.popitem(last=False)

    def get(self, prompt: Sequence[int]) -> np.ndarray | None:
        """The logits kept for ``prompt``, or None."""
        key = _key(prompt)
        logits = self.entries.get(key)
        if logits is not None:
            self.entries.move_to_end(key)
        return logits


def _key(prompt: Sequence[int]) -> bytes:
    return np.asarray(prompt, np.int64).tobytes()
