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

The answer of the last row to finish is warmed where it is: its row holds its prompt's KV
already, so it is neither copied into the cache nor copied back out (an 830-token prompt
took 7 ms to keep and 25 ms to copy into a released row, SmolLM2-135M). Its row then stays
as it is, warmed, until the next request: one that begins with its tokens (the chat's next
turn, sent as soon as the answer ends or after its user read it) takes the row over and
prefills only the rest. What the row holds is kept in the cache as soon as the engine is idle
again, so any other request takes the row at once, rather than after that copy. Queued
answers (of rows that finished beside others) are warmed meanwhile in the row above it, and
kept in the cache as each is done, newest first, as the likeliest to continue, and only while
the cache still holds their prompt: warming a forgotten chat from its first token would evict
fresher prompts.
"""

from __future__ import annotations

import collections
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slmops.runtime.model import Model, common_prefix
from slmops.runtime.prefix import MIN_REUSE, PrefixCache, reusable
from slmops.runtime.rows import RowMemory

# Tokens prefilled per piece: what a request arriving meanwhile may wait for (about 0.1 s of
# SmolLM2-135M INT4 prefill on 2 threads, idle).
WARM_CHUNK = 64
# Answers waiting to be warmed, newest first; older ones go first out (their chats are the least likely to continue).
QUEUE = 16
# Seconds the last answer's warming waits before its first piece: a next turn sent the moment the
# answer ended (an agent, a tool loop) arrives a few milliseconds later, and then prefills the
# answer and its own words in one forward (63 tokens after 812: 110 ms) instead of waiting for
# the warming piece and running its own (94 + 25 ms; SmolLM2-135M INT4, 2 threads).
GRACE = 0.01
_OPENINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # next_turn_opening, per loaded model


class Engine(Protocol):
    """What warming uses of the batched decoder (:class:`slmops.runtime.batched.BatchedDecoder`)."""

    prefix: PrefixCache
    cache: list[np.ndarray]
    memory: RowMemory
    running: list
    pending: collections.deque
    max_length: int
    rows: int

    @property
    def busy(self) -> int: ...

    def _run_prompt(
        self, ids: np.ndarray, mask: np.ndarray, first: int, guided: list, lasts: list[int], every: bool
    ) -> np.ndarray: ...


@dataclass
class Warm:
    """One answer being warmed: ``tokens`` (its ``prompt`` first, then the answer) are in ``row`` up to
    ``filled``, and in the cache too up to ``restored`` (copied from it, or kept there)."""

    tokens: list[int]
    row: int
    filled: int
    restored: int
    prompt: int

    @property
    def done(self) -> bool:
        return self.filled >= len(self.tokens)

    @property
    def kept(self) -> bool:
        """Whether the cache holds all it has filled."""
        return self.restored >= self.filled


class Warming:
    """The answers a :class:`~slmops.runtime.batched.BatchedDecoder` prefills again when idle.

    Attributes:
        queue: (tokens, prompt length) of answers still to warm, newest last.
        current: the one whose chunks are running, if any.
        waiting: the last one warmed whole, waiting in its row for its next turn, if any.
        warmed: answers warmed whole, for tests and metrics.
    """

    def __init__(self, decoder: Engine) -> None:
        self.decoder = decoder
        self.queue: collections.deque[tuple[list[int], int]] = collections.deque(maxlen=QUEUE)
        self.current: Warm | None = None
        self.waiting: Warm | None = None
        self.warmed = 0
        self.not_before = 0.0  # when the answer taken last may begin warming

    @property
    def left(self) -> bool:
        """Whether there is warming to do (the one waiting not yet kept in the cache included)."""
        waiting = self.waiting
        return bool(self.queue) or self.current is not None or (waiting is not None and not waiting.kept)

    def note(self, tokens: list[int], prompt: int) -> None:
        """Warm ``tokens`` (a finished answer behind its ``prompt`` first tokens) when the engine is idle."""
        tokens = tokens[: self.decoder.max_length]  # the next turn's opening may not fit the row
        if self.decoder.prefix.budget and all(tokens != queued for queued, _ in self.queue):
            self.queue.append((tokens, prompt))

    def take(self, tokens: list[int], row: int, prompt: int) -> bool:
        """Warm ``tokens`` in ``row``, which holds their first ``prompt`` tokens' KV, as the last row
        frees; False (nothing taken) when there is nothing worth warming or no cache to keep it in."""
        tokens = tokens[: self.decoder.max_length]
        if not self.decoder.prefix.budget or self.current or self.waiting or len(tokens) - prompt < 2:
            return False
        self.current = Warm(tokens, row, prompt, 0, prompt)
        self.not_before = time.perf_counter() + GRACE
        return True

    def pause(self) -> float:
        """Seconds before the next piece may run (see :data:`GRACE`); 0: now."""
        return max(0.0, self.not_before - time.perf_counter())

    def piece(self) -> bool:
        """Prefill the next chunk, if the decoder is idle; whether warming is left afterwards."""
        if self.decoder.busy or self.pause():
            return self.left
        if self.current is None and self.waiting is not None and not self.waiting.kept:
            # Kept while idle, so that a request that does not continue its chat takes the row
            # without waiting for that copy (an 880-token chat's KV, 40 MB, took 36-92 ms to keep
            # on that path, SmolLM2-135M).
            self._keep(self.waiting)
            return self.left
        if self.current is None:
            self.current = self._start()
        warm = self.current
        if warm is not None:
            end = _chunk_end(warm.filled, len(warm.tokens))
            ids = np.array([warm.tokens[warm.filled : end]], np.int64)
            self.decoder._run_prompt(ids, np.ones((1, end), np.int64), warm.row, [], [ids.shape[1] - 1], False)
            warm.filled = end
            if warm.done:
                self.warmed += 1
                self.current = None
                if self.waiting is None:
                    self.waiting = warm  # it waits in its row for its next turn
                else:
                    self._settle(warm)
        return self.left

    def stop(self) -> None:
        """Hand the row of the answer warmed last to the first waiting request that begins with its
        tokens, else give it back, and the row of the one being warmed; what they hold goes to the
        cache unless that request continues it whole."""
        for warm in (self.current, self.waiting):
            if warm is not None:
                self._settle(warm)
        self.current = self.waiting = None

    def _settle(self, warm: Warm) -> None:
        """Hand ``warm``'s row over, or keep what it holds and give it back (the rest queued).

        A request that continues the chat (its prompt, then some of the answer) takes the row
        as it is: the answer's tokens it does not share are not worth the copy into the cache
        (up to 0.1 s for 900 tokens, while the request waits), as the request's own prompt is
        kept once its row is given up.
        """
        size = self._takes_over(warm)
        if size < warm.filled and size < warm.prompt:
            if not warm.kept:
                self._keep(warm)
            if not warm.done:
                self.queue.append((warm.tokens, warm.filled))
        if not size:
            # Rows are taken from the top: a waiting request fills this one next, and pages given
            # back now would fault in again under its copy or its prefill (a cached 885-token
            # history restored into such a row: 28-38 ms instead of 5-7, SmolLM2-135M).
            if not (self.decoder.pending and warm.row == len(self.decoder.running)):
                self.decoder.memory.release(warm.row)
            return
        head = self.decoder.pending[0]
        head.row, head.filled, head.cached = warm.row, size, size
        self.decoder.prefix.count_hit(size)

    def _keep(self, warm: Warm) -> None:
        """Keep what ``warm``'s row holds in the cache."""
        self.decoder.prefix.keep(warm.tokens[: warm.filled], self.decoder.cache, warm.row)
        warm.restored = warm.filled  # everything it holds is in the cache too

    def _takes_over(self, warm: Warm) -> int:
        """How many of ``warm``'s tokens the first waiting request starts from in its row: the
        longest beginning of its prompt, if none in the cache is longer (0: it does not)."""
        if not self.decoder.pending or warm.row != len(self.decoder.running):
            return 0
        head = self.decoder.pending[0]
        if head.filled or head.prompt_logprobs is not None:
            return 0
        size = reusable(common_prefix(head.prompt, warm.tokens[: warm.filled]), head.prompt)
        return size if size >= max(MIN_REUSE, self.decoder.prefix.longest(head.prompt)[1]) else 0

    def drop(self) -> None:
        """Forget every answer waiting to be warmed, and the one being warmed (its row given back)."""
        self.queue.clear()
        for warm in (self.current, self.waiting):
            if warm is not None:
                self.decoder.memory.release(warm.row)
        self.current = self.waiting = None

    def _start(self) -> Warm | None:
        """The newest queued answer whose prompt the cache still holds, that KV copied into a free
        row (None: nothing to do)."""
        prefix = self.decoder.prefix
        row = len(self.decoder.running) + (self.waiting is not None)  # above the one waiting for its next turn
        if row >= self.decoder.rows:
            return None
        while self.queue:
            tokens, prompt = self.queue.pop()
            entry, shared = prefix.holds(tokens)
            if shared == len(tokens) or shared < prompt:
                continue  # held already (the next turn came first), or its prompt was evicted
            size = reusable(shared, tokens)
            warm = Warm(tokens, row, 0, 0, prompt)
            if entry is not None and size >= MIN_REUSE:
                prefix.restore(entry, size, self.decoder.cache, warm.row, count=False)
                warm.filled = warm.restored = size
            return warm
        return None


def _chunk_end(filled: int, size: int) -> int:
    """Where the chunk from ``filled`` ends: at most :data:`WARM_CHUNK` tokens, never leaving one alone."""
    end = min(size, filled + WARM_CHUNK)
    return end - 1 if size - end == 1 else end


def as_sent_again(model: Model, answer: list[int]) -> list[int]:
    """``answer``'s tokens as the chat's next turn will bring them: its text, encoded again.

    A model may write a word in pieces its tokenizer would not choose (SmolLM2 wrote " el",
    "bow" where the tokenizer has " elbow"), and a client sends the answer back as text: warming
    the generated pieces would leave the next turn to prefill the answer again from that word on.
    """
    return model.encode(model.decode(answer)) if answer else []


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
