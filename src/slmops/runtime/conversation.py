"""A chat that keeps its KV cache between turns, so each turn only reads its new tokens.

A fresh generator per answer re-reads the whole history and, on models with a long
context, allocates a KV cache for it every time. A conversation keeps one generator:
the next turn's prompt shares its beginning with what the generator already holds
(the history and the last answer), so the generator is rewound to where the two part
and only the rest is appended.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import onnxruntime_genai as og

from slmops.runtime.generate import Answer, Response, decode_loop
from slmops.runtime.model import Model


class Conversation:
    """Successive answers of one chat, with options fixed for the whole chat.

    Args:
        model: a loaded :class:`slmops.runtime.Model`.
        **options: :class:`GenerationOptions` fields for every answer. With a seed, the
            whole conversation is reproducible (not each answer on its own).
    """

    def __init__(self, model: Model, **options) -> None:
        self.model = model
        self.options = model.options(**options)
        self.generator: og.Generator | None = None

    def stream(self, messages: Iterable[Any], truncate: bool = False) -> Iterator[Response]:
        """The answer to the chat so far, one :class:`Response` per token."""
        start = time.perf_counter()
        ids = self.model.prompt_ids(messages, truncate)
        return self._answer(ids, start)

    def _answer(self, ids: list[int], start: float) -> Iterator[Response]:
        budget = self.model.context_length - len(ids)
        limit = min(self.options.max_tokens or budget, budget)
        stream = self.model.tokenizer.create_stream()
        answer = Answer(stream, len(ids), start, self.model.stop_token_ids, self.options.stop, limit)
        yield from decode_loop(self._prepare(ids), answer)

    def _prepare(self, ids: list[int]) -> og.Generator:
        """The generator, rewound to the longest prefix it shares with ``ids``, the rest appended."""
        if self.generator is not None:
            held = list(self.generator.get_sequence(0))
            # The last token held was generated but not yet read by the model: read it again.
            keep = min(_common_prefix(held, ids), len(held) - 1, len(ids) - 1)
            if keep > 0:
                try:
                    self.generator.rewind_to(keep)
                    self.generator.append_tokens(ids[keep:])
                    return self.generator
                except RuntimeError:
                    pass  # a model that cannot rewind: start over below
        params = og.GeneratorParams(self.model.og_model)
        search = self.options.search_options(len(ids), self.model.context_length)
        search["max_length"] = self.model.context_length  # room for the turns to come
        params.set_search_options(**search)
        self.generator = og.Generator(self.model.og_model, params)
        self.generator.append_tokens(ids)
        return self.generator


def _common_prefix(first: list[int], second: list[int]) -> int:
    size = 0
    for left, right in zip(first, second):
        if left != right:
            break
        size += 1
    return size
