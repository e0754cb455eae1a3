"""Streamed bodies joined into fewer pieces (the middleware Ray replicas run)."""

from __future__ import annotations

import asyncio
import time

from slmops.server.coalesce import CoalescedStreams


def app_sending(pieces: list[tuple[float, bytes]], content_type: bytes):
    """An ASGI app that sends each body piece after its delay, then ends the body."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for delay, body in pieces:
            await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def received(app, interval: float) -> list[tuple[float, bytes, bool]]:
    sent: list[tuple[float, bytes, bool]] = []

    async def run():
        start = time.monotonic()

        async def send(message):
            if message["type"] == "http.response.body":
                sent.append((time.monotonic() - start, message["body"], message["more_body"]))

        await CoalescedStreams(app, interval)({"type": "http"}, None, send)

    asyncio.run(run())
    return sent


def test_the_first_piece_goes_at_once_and_the_ones_after_it_wait_for_the_interval():
    pieces = [(0.0, b"data: 1\n\n"), *[(0.02, f"data: {n}\n\n".encode()) for n in range(2, 8)]]
    sent = received(app_sending(pieces, b"text/event-stream; charset=utf-8"), 0.1)
    assert sent[0][1] == b"data: 1\n\n" and sent[0][0] < 0.05
    assert b"".join(body for _, body, _ in sent) == b"".join(body for _, body in pieces)
    assert len(sent) < len(pieces)  # joined
    assert sent[-1][2] is False and all(more for _, _, more in sent[:-1])
    times = [at for at, body, more in sent if more]
    assert all(later - earlier >= 0.09 for earlier, later in zip(times, times[1:]))


def test_a_piece_after_a_quiet_interval_is_not_held():
    pieces = [(0.0, b"data: a\n\n"), (0.15, b"data: b\n\n")]
    sent = received(app_sending(pieces, b"text/event-stream"), 0.1)
    assert [body for _, body, _ in sent[:2]] == [b"data: a\n\n", b"data: b\n\n"]
    assert sent[1][0] < 0.15 + 0.05


def test_bodies_that_are_not_event_streams_pass_unchanged():
    pieces = [(0.0, b"{"), (0.0, b'"a": 1'), (0.0, b"}")]
    sent = received(app_sending(pieces, b"application/json"), 0.1)
    assert [body for _, body, _ in sent] == [b"{", b'"a": 1', b"}", b""]
