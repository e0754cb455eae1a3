"""Prefix reuse: the KV cache of earlier sequences, kept for the next request that begins the same way.

Every OpenAI client resends the whole conversation each turn, and many requests open
with the same long system prompt (tools, RAG instructions). The batched decoder keeps
a copy of each prompt's KV cache once the prompt is in (so requests arriving together
share a system prompt, and the next turn of a chat finds its history), under a byte
budget, least recently used out first. A new request copies the longest cached prefix
of its prompt into its row and prefills only the rest.

Only prompts are kept, not the answers' tokens: their KV was written one position at
a time, and onnxruntime's INT4 kernels round one position differently from many. On
SmolLM2-135M INT4 a next turn that reused an answer's KV picked another greedy token at
6% of its positions (as many as decoding and prefilling the same text disagree), while
KV written by prefill is the same whether a prompt comes whole or in pieces: a reused
prompt answers exactly as a cold one. The next turn prefills the last answer again.

Each entry is a plain copy, not a page shared with a row: rows are written in place
by onnxruntime, and a copy of a few hundred tokens' KV takes milliseconds where their
prefill takes seconds. An entry whose tokens begin another one is dropped, since the
longer entry answers every lookup the shorter one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this many shared tokens a prompt is prefilled from scratch: prefilled with the
# other short prompts of its round, it costs less than a copy and a step of its own.
MIN_REUSE = 32


@dataclass(eq=False)
class Entry:
    """The KV cache of ``tokens``: one ``(kv_heads, len(tokens), head_size)`` block per cache buffer."""

    tokens: np.ndarray
    kv: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + self.tokens.nbytes


class PrefixCache:
    """Token prefixes and their KV cache, least recently used out first, within ``budget`` bytes.

    Args:
        budget: bytes the entries may take; 0 keeps nothing.

    Attributes:
        hits, reused_tokens, evictions: counters for /metrics.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: list[Entry] = []  # least recently used first
        self.hits = 0
        self.reused_tokens = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        """Bytes the entries take now."""
        return sum(entry.nbytes for entry in self.entries)

    def longest(self, prompt: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest beginning with ``prompt``, and how many tokens it shares.

        At most ``len(prompt) - 1``: the last prompt token is always run, for its logits.
        """
        ids = np.asarray(prompt, np.int64)
        best, size = None, 0
        for entry in self.entries:
            shared = _shared(entry.tokens, ids)
            if shared > size:
                best, size = entry, shared
        return best, min(size, len(prompt) - 1)

    def restore(self, entry: Entry, size: int, buffers: list[np.ndarray], row: int) -> None:
        """Copy the first ``size`` tokens of ``entry`` into ``row`` of every buffer."""
        for block, buffer in zip(entry.kv, buffers):
            buffer[row, :, :size] = block[:, :size]
        self.entries.remove(entry)
        self.entries.append(entry)
        self.hits += 1
        self.reused_tokens += size

    def keep(self, tokens: list[int], buffers: list[np.ndarray], row: int) -> None:
        """Keep a copy of ``row``'s KV cache for ``tokens`` (its first ``len(tokens)`` positions)."""
        size = len(tokens)
        if size < MIN_REUSE or size * _token_bytes(buffers) > self.budget:
            return
        ids = np.asarray(tokens, np.int64)
        for entry in list(self.entries):
            shared = _shared(entry.tokens, ids)
            if shared == size:  # already held, maybe with more after it
                self.entries.remove(entry)
                self.entries.append(entry)
                return
            if shared == len(entry.tokens):  # a beginning of these tokens: this copy supersedes it
                self.entries.remove(entry)
        kv = np.empty((len(buffers), *_block_shape(buffers[0], size)), buffers[0].dtype)
        for block, buffer in zip(kv, buffers):
            block[...] = buffer[row, :, :size]
        entry = Entry(ids, kv)
        self._make_room(entry.nbytes)
        self.entries.append(entry)

    def clear(self) -> None:
        self.entries.clear()

    def _make_room(self, size: int) -> None:
        used = self.used
        while self.entries and used + size > self.budget:
            used -= self.entries.pop(0).nbytes
            self.evictions += 1


def _shared(first: np.ndarray, second: np.ndarray) -> int:
    """How many tokens ``first`` and ``second`` share from their start."""
    size = min(len(first), len(second))
    differ = np.flatnonzero(first[:size] != second[:size])
    return int(differ[0]) if differ.size else size


def _token_bytes(buffers: list[np.ndarray]) -> int:
    _, heads, _, head_size = buffers[0].shape
    return len(buffers) * heads * head_size * buffers[0].itemsize


def _block_shape(buffer: np.ndarray, size: int) -> tuple[int, int, int]:
    _, heads, _, head_size = buffer.shape
    return heads, size, head_size
