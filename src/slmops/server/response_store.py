"""Responses kept in memory for ``GET /v1/responses/{id}`` and ``previous_response_id``.

Bounded in time and count, so a long-running service does not grow: a response is
forgotten an hour after it was made, and beyond the 256 most recent ones the oldest
goes first. Nothing is written to disk; a restart forgets them all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from slmops.server.protocol import Message

KEEP_S = 3600.0
KEEP_COUNT = 256


@dataclass
class StoredResponse:
    """A finished response and the conversation a follow-up continues from."""

    body: dict  # the response object, as answered
    history: list[Message]  # earlier turns, this input and this output; instructions excluded
    input_items: list[dict]  # this request's input, as GET .../input_items lists it
    expires: float


class ResponseStore:
    """Finished responses by id, the oldest dropped first past ``count`` or after ``keep_s``."""

    def __init__(
        self, keep_s: float = KEEP_S, count: int = KEEP_COUNT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep_s, self.count, self.clock = keep_s, count, clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, body: dict, history: list[Message], input_items: list[dict]) -> None:
        self._expire()
        self._items[body["id"]] = StoredResponse(body, history, input_items, self.clock() + self.keep_s)
        while len(self._items) > self.count:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        """Forget a response; False when there was none by that id."""
        self._expire()
        return self._items.pop(response_id, None) is not None

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _expire(self) -> None:
        now = self.clock()
        # Insertion order is expiry order: every item keeps for the same time.
        while self._items and next(iter(self._items.values())).expires <= now:
            self._items.popitem(last=False)
