"""Many requests, one loaded model: the continuous-batching scheduler.

One thread per loaded model owns every onnxruntime-genai call. Each running
sequence is the runtime's own token stream (one ``og.Generator``); the thread
advances every running sequence by one token per round and admits waiting
requests between rounds, so a new request is prefilled after at most one round
of decode steps, never after the running answers finish.

Why not ``og.Engine``: on CPU models (no paged attention) onnxruntime-genai 0.18
only offers its static Engine, which makes a new request wait until the running
batch ends and refuses per-request seeds and stop strings (measured; see
docs/server.md).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from slmops.runtime.generate import Response

DONE = object()  # put on a job's queue after its last response


class QueueFull(Exception):
    """Every slot is busy and the waiting line is full."""


class Closed(Exception):
    """The scheduler is shutting down."""


@dataclass(eq=False)
class Job:
    """One request's sequence: the scheduler fills ``queue`` with responses, then :data:`DONE`."""

    stream: Iterator[Response]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    error: BaseException | None = None
    last_elapsed: float | None = None  # when the previous token came, for the per-token metric

    def cancel(self) -> None:
        """Stop generating (the client went away); the slot frees on the next round."""
        self.cancelled = True

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """Runs jobs on one model, at most ``parallel`` at a time, ``max_queue`` more waiting."""

    def __init__(self, name: str, parallel: int = 8, max_queue: int = 64, observer=None) -> None:
        self.name = name
        self.parallel = parallel
        self.max_queue = max_queue
        self.observer = observer  # called as observer(job, response) for metrics
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"slmops-scheduler-{name}", daemon=True)
        self.thread.start()

    @property
    def active(self) -> int:
        return len(self.running)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def submit(self, job: Job) -> Job:
        """Queue a job.

        Raises:
            QueueFull: ``parallel`` jobs run and ``max_queue`` wait already.
            Closed: the scheduler is stopping.
        """
        with self.wake:
            if self.closed:
                raise Closed(self.name)
            if len(self.running) + len(self.waiting) >= self.parallel + self.max_queue:
                raise QueueFull(self.name)
            self.waiting.append(job)
            self.wake.notify()
        return job

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: a rough time for the line to move."""
        return max(1, min(30, len(self.waiting) // max(1, self.parallel) + 1))

    def close(self, cancel: bool = True, timeout: float = 10.0) -> None:
        """Stop taking jobs; cancel (or finish) those in flight, then end the thread."""
        with self.wake:
            self.closed = True
            for job in [*self.running, *self.waiting] if cancel else []:
                job.cancel()
            self.wake.notify()
        self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.running and not self.waiting and not self.closed:
                    self.wake.wait()
                if self.closed and not self.running and not self.waiting:
                    return
                while self.waiting and len(self.running) < self.parallel:
                    self.running.append(self.waiting.popleft())
                batch = list(self.running)
            for job in batch:
                if not self._step(job):
                    with self.wake:
                        self.running.remove(job)

    def _step(self, job: Job) -> bool:
        """Advance ``job`` by one token; False when it is over."""
        if job.cancelled:
            _close(job.stream)
            job._put(DONE)
            return False
        try:
            response = next(job.stream)
        except StopIteration:
            job._put(DONE)
            return False
        except Exception as exc:  # a failed sequence must not take the others down
            job.error = exc
            job._put(DONE)
            return False
        if self.observer is not None:
            self.observer(job, response)
        job._put(response)
        if response.finish_reason:
            job._put(DONE)
            return False
        return True


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()  # drops the og.Generator and its KV cache now, not at garbage collection
