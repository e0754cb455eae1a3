"""Streamed answers sent in fewer, larger pieces: at most one every ``interval`` seconds per stream.

Under Ray Serve every piece of a streamed body crosses from the replica to the HTTP proxy
as a message of its own, and each costs Python time on the cores the model decodes on
(about 1.3 ms of CPU per token for 8 streams on 2 cores). A piece that arrives less than
``interval`` after the last one sent waits, with whatever follows it, until the interval
is up; a piece after a quiet interval, such as an answer's first token, goes at once.
SSE events stay whole: pieces are only joined, never split.
"""

from __future__ import annotations

import asyncio
import time


class CoalescedStreams:
    """ASGI middleware: ``text/event-stream`` bodies sent at most every ``interval`` seconds."""

    def __init__(self, app, interval: float) -> None:
        self.app, self.interval = app, interval

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.interval <= 0:
            return await self.app(scope, receive, send)
        stream = _Stream(send, self.interval)
        try:
            await self.app(scope, receive, stream.send)
        finally:
            stream.cancel()


class _Stream:
    """One response: passes everything through until it learns the body is an event stream."""

    def __init__(self, send, interval: float) -> None:
        self.downstream, self.interval = send, interval
        self.events = False
        self.held: list[bytes] = []
        self.last = 0.0
        self.flush: asyncio.TimerHandle | None = None
        self.lock = asyncio.Lock()

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.events = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", [])
            )
            return await self.downstream(message)
        if not self.events or message["type"] != "http.response.body":
            return await self.downstream(message)
        async with self.lock:
            self.held.append(message.get("body", b""))
            more = message.get("more_body", False)
            if not more:
                self.cancel()
                return await self._send_held(more=False)
            wait = self.last + self.interval - time.monotonic()
            if wait <= 0:
                return await self._send_held(more=True)
            if self.flush is None:
                self.flush = asyncio.get_running_loop().call_later(wait, self._later)

    def _later(self) -> None:
        self.flush = None
        asyncio.ensure_future(self._send_late())

    async def _send_late(self) -> None:
        try:
            async with self.lock:
                if self.held:
                    await self._send_held(more=True)
        except OSError:  # the client left; the app learns it at its next send
            pass

    async def _send_held(self, more: bool) -> None:
        body, self.held = b"".join(self.held), []
        self.last = time.monotonic()
        await self.downstream({"type": "http.response.body", "body": body, "more_body": more})

    def cancel(self) -> None:
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
