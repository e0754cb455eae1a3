"""Prefix reuse: the KV cache of earlier sequences, kept for the next request that begins the same way.

Every OpenAI client resends the whole conversation each turn, and many requests open
with the same long system prompt (tools, RAG instructions). The batched decoder keeps
a copy of each prompt's KV cache when its row is given up (the answer finished or was
cancelled), so the next turn of a chat finds its history, under a byte budget, least
recently used out first. A new request copies the longest cached prefix of its prompt into
its row and prefills only the rest. While a row runs, its prompt's KV is in the row alone,
and requests that share its beginning (arriving together over one system prompt) copy it
from there: keeping a copy as soon as a prompt was in held every live prompt twice (8
streams of ~520-token prompts peaked at 1.38x llama-server's memory, against 1.07x
without the cache).

Only prompts are kept, not the answers' tokens: their KV was written one position at
a time, and onnxruntime's INT4 path rounds one position differently from many. On
SmolLM2-135M INT4 a next turn that reused an answer's KV picked another greedy token at
6% of its positions teacher-forced, and its free-running answers (8 chats, 2 follow-ups
each, 48 tokens) agreed with cold prefill on 37% of their tokens, 2 of 16 answers whole.
Decoding beside other rows does not help (a row decoded in a batch of two, M = 2 in every
MatMulNBits, differed from prefill exactly as much as alone), and layer 0's KV is bit for bit
a prefill's: the difference enters in attention's one-position path (every MatMulNBits gives a
row the same result at any number of rows). KV written by prefill
is the same whether a prompt comes whole or in pieces: a reused prompt answers exactly as a
cold one. An answer's tokens are kept only once prefilled
again, in time the engine has nothing else to do (:mod:`slmops.runtime.warming`): the next
turn of a chat, arriving after its user read the answer, then prefills only its new message.

Each entry is a copy, not a page shared with a row: rows are written in place by
onnxruntime, and a copy of a few hundred tokens' KV takes milliseconds where their
prefill takes seconds. An entry that begins as an earlier one does holds only the KV
past that beginning and points to the earlier entry for the rest, so eight
conversations over one system prompt hold it once, and each turn of a chat adds only
its new tokens. Evicting an entry evicts the entries built on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this many shared tokens a prompt is prefilled from scratch, with the other short
# prompts of its round. A copy takes 0.1 ms for 28 tokens; a forward of its own costs about
# one prompt token's time more than prefilling its tokens in a group (SmolLM2-135M INT4,
# 2 threads: 1 token alone 27 ms, 2 tokens 32 ms, 8 tokens 96 ms, measured at a load
# average of 11; onnxruntime's prompt kernels cost the same per token in a group as
# alone): reuse pays from two shared tokens on, four leaves a margin.
MIN_REUSE = 4


def reusable(shared: int, tokens: list[int]) -> int:
    """How many of the ``shared`` first tokens of ``tokens`` a sequence may start from: at most ``len(tokens) - 2``.

    The last tokens are always run, for their logits, and at least two of them, because
    onnxruntime's attention computes one new position with another product than several (its
    MatMulNBits give a row the same result at any number of rows), and on INT4 models the int8
    rounding of the activations after it amplifies the last-bit difference: a one-token rest
    gave first-token logits up to 1.0 away from a cold prefill's on SmolLM2 INT4 (greedy answers
    differed on 2 of 3 prompts), a rest of two or more gave them bit for bit (AVX-512 machine,
    2026-11-29).
    """
    return min(shared, len(tokens) - 2)


@dataclass(eq=False)
class Entry:
    """The KV cache of ``tokens``: its own part, from ``start`` on, and ``parent``'s before it.

    Attributes:
        tokens: every token it covers, from the first.
        kv: one ``(kv_heads, len(tokens) - start, head_size)`` block per cache buffer.
        parent: the entry holding positions ``0..start-1``, or None when ``start`` is 0.
    """

    tokens: np.ndarray
    kv: np.ndarray
    parent: Entry | None = None
    start: int = 0

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + self.tokens.nbytes

    def chain(self) -> list[Entry]:
        """This entry and the ones it builds on, itself first."""
        entries: list[Entry] = [self]
        while entries[-1].parent is not None:
            entries.append(entries[-1].parent)
        return entries


class PrefixCache:
    """Token prefixes and their KV cache, least recently used out first, within ``budget`` bytes.

    Args:
        budget: bytes the entries may take; 0 keeps nothing.

    Attributes:
        hits, reused_tokens, evictions: counters for /metrics.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: list[Entry] = []  # least recently used first; an entry's parents come after it
        self.hits = 0
        self.reused_tokens = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        """Bytes the entries take now."""
        return sum(entry.nbytes for entry in self.entries)

    def longest(self, prompt: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest beginning with ``prompt``, and how many tokens it shares.

        At most ``len(prompt) - 2`` (see :func:`reusable`).
        """
        best, size = self._longest(np.asarray(prompt, np.int64))
        return best, reusable(size, prompt)

    def holds(self, tokens: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest beginning with ``tokens``, and how many, all of them counted."""
        return self._longest(np.asarray(tokens, np.int64))

    def restore(self, entry: Entry, size: int, buffers: list[np.ndarray], row: int, count: bool = True) -> None:
        """Copy the first ``size`` tokens of ``entry`` into ``row`` of every buffer.

        ``count`` False leaves the hit out of the counters (the engine's own warming reads it).
        """
        self._touch(entry)
        if count:
            self.count_hit(size)
        for part in entry.chain():
            if size > part.start:
                for block, buffer in zip(part.kv, buffers):
                    buffer[row, :, part.start : size] = block[:, : size - part.start]
            size = min(size, part.start)

    def count_hit(self, size: int) -> None:
        """Count a request that starts from ``size`` reused tokens (from here, a running row or a warmed one)."""
        self.hits += 1
        self.reused_tokens += size

    def keep(self, tokens: list[int], buffers: list[np.ndarray], row: int) -> None:
        """Keep ``row``'s KV cache for ``tokens`` (its first ``len(tokens)`` positions).

        What an entry already holds is not copied again: the new entry builds on it.
        """
        size, ids = len(tokens), np.asarray(tokens, np.int64)
        parent, start = self._longest(ids)
        if start == size and parent is not None:  # held already, maybe with more after it
            self._touch(parent)
            return
        if start < MIN_REUSE or 2 * start < size:
            # A short shared beginning (a chat template's opening) would tie a whole other
            # conversation to this entry, kept or evicted together: copy it all instead.
            parent, start = None, 0
        if size < MIN_REUSE or (size - start) * _token_bytes(buffers) > self.budget:
            return
        kv = np.empty((len(buffers), *_block_shape(buffers[0], size - start)), buffers[0].dtype)
        for block, buffer in zip(kv, buffers):
            block[...] = buffer[row, :, start:size]
        entry = Entry(ids, kv, parent, start)
        if self._make_room(entry):
            self.entries.append(entry)
            self._touch(entry)

    def clear(self) -> None:
        self.entries.clear()

    def _longest(self, ids: np.ndarray) -> tuple[Entry | None, int]:
        best, size = None, 0
        for entry in self.entries:
            shared = _shared(entry.tokens, ids)
            if shared > size:
                best, size = entry, shared
        return best, size

    def _touch(self, entry: Entry) -> None:
        """Make ``entry`` and what it builds on the most recently used, its parents last."""
        for part in entry.chain():
            if part in self.entries:
                self.entries.remove(part)
                self.entries.append(part)

    def _make_room(self, entry: Entry) -> bool:
        """Evict the least recently used entries (and what builds on them) until ``entry`` fits;
        False when it cannot (what it builds on fills the budget)."""
        needed = set(entry.chain()[1:])
        used = self.used
        for old in list(self.entries):
            if used + entry.nbytes <= self.budget:
                break
            if old in needed or old not in self.entries:
                continue
            for gone in [item for item in self.entries if old in item.chain()]:
                self.entries.remove(gone)
                used -= gone.nbytes
                self.evictions += 1
        return used + entry.nbytes <= self.budget


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
