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

The entries live in pages of :data:`PAGE` positions, all in one mapping the size of the
budget, resident once touched and reused as entries come and go: copying a chat's KV into
memory just allocated made the kernel hand out and zero fresh pages first (an 880-token chat,
40 MB of SmolLM2-135M KV: 8-107 ms, median ~60, with the huge pages numpy asks for; 27-33 ms
without them), into pages used before it takes 5-7 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from slmops.runtime.rows import RowMemory

# Below this many shared tokens a prompt is prefilled from scratch, with the other short
# prompts of its round. A copy takes 0.1 ms for 28 tokens; a forward of its own costs about
# one prompt token's time more than prefilling its tokens in a group (SmolLM2-135M INT4,
# 2 threads: 1 token alone 27 ms, 2 tokens 32 ms, 8 tokens 96 ms, measured at a load
# average of 11; onnxruntime's prompt kernels cost the same per token in a group as
# alone): reuse pays from two shared tokens on, four leaves a margin.
MIN_REUSE = 4
# Positions per page of the cache's memory. An entry wastes the rest of its last page (32
# positions of SmolLM2-135M: 1.5 MB); smaller pages cost more copies (880 tokens kept in pages
# of 16, 32, 64 positions: 8.6, 6.9, 5.8 ms; in one block: 4.3 ms).
PAGE = 32


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
        pages: the :class:`Pages` holding its own part, :data:`PAGE` positions each, in order.
        parent: the entry holding positions ``0..start-1``, or None when ``start`` is 0.
    """

    tokens: np.ndarray
    pages: list[int] = field(default_factory=list)
    parent: Entry | None = None
    start: int = 0

    def chain(self) -> list[Entry]:
        """This entry and the ones it builds on, itself first."""
        entries: list[Entry] = [self]
        while entries[-1].parent is not None:
            entries.append(entries[-1].parent)
        return entries


class Pages:
    """Memory for ``budget`` bytes of KV in pages of :data:`PAGE` positions of every cache buffer.

    Args:
        budget: bytes the pages may take.
        buffers: the cache buffers whose KV the pages hold, ``(rows, kv_heads, positions, head_size)`` each.
    """

    def __init__(self, budget: int, buffers: list[np.ndarray]) -> None:
        _, heads, _, head_size = buffers[0].shape
        self.page_bytes = len(buffers) * heads * PAGE * head_size * buffers[0].itemsize
        count = budget // self.page_bytes
        self.memory = RowMemory(1, (count, len(buffers), heads, PAGE, head_size), buffers[0].dtype)
        self.store = self.memory.buffers[0]  # page, buffer, head, position, value
        self.free = list(range(count))[::-1]  # taken from the end: the lowest pages first

    @property
    def used(self) -> int:
        """Bytes of the pages taken."""
        return (len(self.store) - len(self.free)) * self.page_bytes

    def write(self, pages: list[int], buffers: list[np.ndarray], row: int, start: int, end: int) -> None:
        """Copy positions ``start..end-1`` of ``row`` into ``pages``, the first page from ``start``."""
        for page, first, last in _spans(pages, start, end):
            for part, buffer in zip(self.store[page], buffers):
                part[:, : last - first] = buffer[row, :, first:last]

    def read(self, pages: list[int], buffers: list[np.ndarray], row: int, start: int, end: int) -> None:
        """Copy positions ``start..end-1`` (the first page holding ``start`` on) into ``row``."""
        for page, first, last in _spans(pages, start, end):
            for part, buffer in zip(self.store[page], buffers):
                buffer[row, :, first:last] = part[:, : last - first]


def _spans(pages: list[int], start: int, end: int) -> list[tuple[int, int, int]]:
    """Each of ``pages`` (the first holding ``start`` on) with the positions ``first..last-1`` of
    ``start..end-1`` it holds; pages past ``end`` left out."""
    firsts = range(start, end, PAGE)
    return [(page, first, min(end, first + PAGE)) for page, first in zip(pages, firsts)]


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
        self.pages: Pages | None = None  # made at the first keep, when the KV's shape is known
        self.hits = 0
        self.reused_tokens = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        """Bytes the entries' pages take now."""
        return self.pages.used if self.pages else 0

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
            if size > part.start and self.pages is not None:
                self.pages.read(part.pages, buffers, row, part.start, size)
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
        if self.pages is None:
            self.pages = Pages(self.budget, buffers)
        needed = -(-(size - start) // PAGE)
        entry = Entry(ids, [], parent, start)
        if size < MIN_REUSE or needed > len(self.pages.store) or not self._make_room(entry, needed):
            return
        entry.pages = [self.pages.free.pop() for _ in range(needed)]
        self.pages.write(entry.pages, buffers, row, start, size)
        self.entries.append(entry)
        self._touch(entry)

    def clear(self) -> None:
        for entry in self.entries:
            self._free(entry)
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

    def _make_room(self, entry: Entry, pages: int) -> bool:
        """Evict the least recently used entries (and what builds on them) until ``pages`` pages
        are free for ``entry``; False when they cannot be (what it builds on fills the budget)."""
        assert self.pages is not None
        free, chain = self.pages.free, set(entry.chain()[1:])
        for old in list(self.entries):
            if len(free) >= pages:
                break
            if old in chain or old not in self.entries:
                continue
            for gone in [item for item in self.entries if old in item.chain()]:
                self.entries.remove(gone)
                self._free(gone)
                self.evictions += 1
        return len(free) >= pages

    def _free(self, entry: Entry) -> None:
        if self.pages is not None:
            self.pages.free.extend(entry.pages)
        entry.pages = []


def _shared(first: np.ndarray, second: np.ndarray) -> int:
    """How many tokens ``first`` and ``second`` share from their start."""
    size = min(len(first), len(second))
    differ = np.flatnonzero(first[:size] != second[:size])
    return int(differ[0]) if differ.size else size
