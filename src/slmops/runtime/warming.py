"""Warming: a finished answer prefilled again behind its prompt, in time nothing else wants.

The prefix cache keeps only KV written by prefill (:mod:`slmops.runtime.prefix`): an
answer's own KV was written one position at a time, and reusing it changes greedy tokens
on INT4 models. So the next turn of a chat, which resends the answer, would prefill it
again while its user waits. Instead, once an answer ends, the batched decoder prefills
prompt and answer in an otherwise idle row, from the prompt's cached KV, and keeps the
result: a next turn arriving after its user read the answer prefills only its new message,
and answers as if everything were prefilled cold.

Warming is the lowest priority work of the engine: :meth:`Warming.piece` runs only when no
sequence waits or decodes, one chunk of :data:`WARM_CHUNK` tokens at a time, so a request
arriving meanwhile waits at most for that chunk; its arrival stops the warming, keeping the
part already prefilled.
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slmops.runtime.model import Model
from slmops.runtime.prefix import MIN_REUSE, PrefixCache
from slmops.runtime.rows import RowMemory

# Tokens prefilled per piece: what a request arriving meanwhile may wait for (about 0.1 s of
# SmolLM2-135M INT4 prefill on 2 threads, idle).
WARM_CHUNK = 64
# Answers waiting to be warmed; older ones go first out (their chats are the least likely to continue).
QUEUE = 16
_OPENINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # next_turn_opening, per loaded model


class Engine(Protocol):
    """What warming uses of the batched decoder (:class:`slmops.runtime.batched.BatchedDecoder`)."""

    prefix: PrefixCache
    cache: list[np.ndarray]
    memory: RowMemory
    running: list
    max_length: int

    @property
    def busy(self) -> int: ...

    def _run_prompt(
        self, ids: np.ndarray, mask: np.ndarray, first: int, guided: list, lasts: list[int], every: bool
    ) -> np.ndarray: ...


@dataclass
class Warm:
    """One answer being warmed: ``tokens`` (prompt and answer) are in ``row`` up to ``filled``."""

    tokens: list[int]
    row: int
    filled: int
    restored: int


class Warming:
    """The answers a :class:`~slmops.runtime.batched.BatchedDecoder` prefills again when idle.

    Attributes:
        queue: token lists (prompt and answer) still to warm, oldest first.
        current: the one whose chunks are running, if any.
        warmed: answers kept whole, for tests and metrics.
    """

    def __init__(self, decoder: Engine) -> None:
        self.decoder = decoder
        self.queue: collections.deque[list[int]] = collections.deque(maxlen=QUEUE)
        self.current: Warm | None = None
        self.warmed = 0

    @property
    def left(self) -> bool:
        """Whether there is warming to do."""
        return self.current is not None or bool(self.queue)

    def note(self, tokens: list[int]) -> None:
        """Warm ``tokens`` (a finished answer behind its prompt) when the engine is idle."""
        tokens = tokens[: self.decoder.max_length]  # the next turn's opening may not fit the row
        if self.decoder.prefix.budget and tokens not in self.queue:
            self.queue.append(tokens)

    def piece(self) -> bool:
        """Prefill the next chunk, if the decoder is idle; whether warming is left afterwards."""
        if self.decoder.busy:
            return self.left
        if self.current is None:
            self.current = self._start()
        warm = self.current
        if warm is not None:
            end = _chunk_end(warm.filled, len(warm.tokens))
            ids = np.array([warm.tokens[warm.filled : end]], np.int64)
            self.decoder._run_prompt(ids, np.ones((1, end), np.int64), warm.row, [], [ids.shape[1] - 1], False)
            warm.filled = end
            if end == len(warm.tokens):
                self.warmed += 1
                self.stop()
        return self.left

    def stop(self) -> None:
        """Keep what the current answer has prefilled so far and give its row back; the rest waits its turn."""
        warm, self.current = self.current, None
        if warm is None:
            return
        if warm.filled > warm.restored:
            self.decoder.prefix.keep(warm.tokens[: warm.filled], self.decoder.cache, warm.row)
        self.decoder.memory.release(warm.row)
        if warm.filled < len(warm.tokens):
            self.queue.appendleft(warm.tokens)

    def drop(self) -> None:
        """Forget every answer waiting to be warmed, and the one being warmed (its row given back)."""
        self.queue.clear()
        warm, self.current = self.current, None
        if warm is not None:
            self.decoder.memory.release(warm.row)

    def _start(self) -> Warm | None:
        """The next queued answer, its prompt's cached KV copied into a free row (None: nothing to do)."""
        prefix = self.decoder.prefix
        while self.queue:
            tokens = self.queue.popleft()
            entry, shared = prefix.holds(tokens)
            if shared == len(tokens):
                continue  # held already (another row gave the same answer, or the next turn came first)
            size = min(shared, len(tokens) - 2)  # a rest of one token runs on another kernel: two at least
            warm = Warm(tokens, len(self.decoder.running), 0, 0)
            if entry is not None and size >= MIN_REUSE:
                prefix.restore(entry, size, self.decoder.cache, warm.row, count=False)
                warm.filled = warm.restored = size
            return warm
        return None


def _chunk_end(filled: int, size: int) -> int:
    """Where the chunk from ``filled`` ends: at most :data:`WARM_CHUNK` tokens, never leaving one alone."""
    end = min(size, filled + WARM_CHUNK)
    return end - 1 if size - end == 1 else end


def next_turn_opening(model: Model) -> list[int]:
    """Tokens a chat template puts between an assistant's answer and the user's next words.

    Warmed after an answer, they spare the next turn a few more prompt tokens (on ChatML,
    ``<|im_end|>``, a newline, ``<|im_start|>user`` and a newline). [] when the template
    cannot say; a guess that differs from the real next prompt only shortens its reuse.
    """
    if model not in _OPENINGS:  # a template renders in milliseconds: once per model
        _OPENINGS[model] = _opening(model)
    return _OPENINGS[model]


def _opening(model: Model) -> list[int]:
    marks = ("\x01", "\x02", "\x03")
    chat = [{"role": role, "content": mark} for role, mark in zip(("user", "assistant", "user"), marks)]
    try:
        text = model.render(chat)
    except Exception:  # no chat template, or one that wants other turns: nothing to guess
        return []
    start, end = text.find(marks[1]), text.find(marks[2])
    if start < 0 or end <= start:
        return []
    return model.encode(text[start + 1 : end])
