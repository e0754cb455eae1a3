"""Many requests, one loaded model: the continuous-batching scheduler.

One thread per loaded model owns every inference call. Requests become rows of a
:class:`~slmops.runtime.batched.BatchedDecoder`, where one step advances them all;
each round prefills the next piece of waiting prompts (first come, first served;
requests arriving during a piece join the round's prefill, and when the batch was
idle, those arriving in quick succession join before the step) and then runs one
decode step, so a new request's first token waits for the prompts ahead of it,
never for the running answers to finish. When nothing waits or runs, finished
answers are prefilled again for the prefix cache (:mod:`slmops.runtime.warming`). Requests with a
grammar (JSON, tools) are rows too, with their tokens masked by llguidance.
Only what the batch cannot hold (a prompt plus max_tokens beyond a row, or a
model the batch cannot run) goes to the runtime's own token stream (an
onnxruntime-genai generator, with its guidance), stepped once per round beside
the batch.

Why not ``og.Engine``: on CPU models (no paged attention) onnxruntime-genai 0.18
only offers its static Engine, which makes a new request wait until the running
batch ends and refuses per-request seeds and stop strings (measured; see
docs/server.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.generate import Response

log = logging.getLogger("slmops.server")
DONE = object()  # put on a job's queue after its last response
# A burst's requests reach the scheduler a few milliseconds apart (each is parsed, templated and
# tokenized in turn). When the batch was idle and the first one's prefill took less, the rest
# would wait for a whole decode step (the first one's second token); so before that step the
# scheduler takes in requests arriving less than BURST_GAP s apart, for BURST_WAIT s at most.
BURST_GAP = 0.005
BURST_WAIT = 0.025


class QueueFull(Exception):
    """Every slot is busy and the waiting line is full."""


class Closed(Exception):
    """The scheduler is shutting down."""


@dataclass(eq=False)
class Job:
    """One request: the scheduler fills ``queue`` with responses, then :data:`DONE`.

    Exactly one of ``stream`` (a runtime token stream) and ``sequence`` (a row for
    the batched decoder) is set.
    """

    stream: Iterator[Response] | None
    loop: asyncio.AbstractEventLoop
    sequence: Sequence | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    error: BaseException | None = None
    last_elapsed: float | None = None  # when the previous token came, for the per-token metric

    def cancel(self) -> None:
        """Stop generating (the client went away); the slot frees on the next round."""
        self.cancelled = True

    def put(self, response: Response) -> None:
        """Hand ``response`` to the request, from the scheduler's thread."""
        self._post(response)

    def end(self) -> None:
        """Tell the request that no response follows (:data:`DONE` on its queue)."""
        self._post(DONE)

    def _post(self, item: Response | object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


Observer = Callable[[Job, Response], None]


class Scheduler:
    """Runs jobs on one model, at most ``parallel`` at a time, ``max_queue`` more waiting."""

    def __init__(
        self,
        name: str,
        parallel: int = 8,
        max_queue: int = 64,
        observer: Observer | None = None,
        decoder: BatchedDecoder | None = None,
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.parallel = parallel
        self.max_queue = max_queue
        self.observer = observer  # called as observer(job, response) for metrics
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []  # jobs on a token stream of their own
        self.rows: dict[Sequence, Job] = {}  # jobs whose sequence the decoder holds, waiting or decoding
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"slmops-scheduler-{name}", daemon=True)
        self.thread.start()

    @property
    def active(self) -> int:
        return len(self.running) + (self.decoder.busy if self.decoder else 0)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    def submit(self, job: Job) -> Job:
        """Queue a job.

        Raises:
            QueueFull: ``parallel`` jobs run and ``max_queue`` wait already.
            Closed: the scheduler is stopping.
        """
        with self.wake:
            if self.closed:
                raise Closed(self.name)
            if self.active + len(self.waiting) >= self.parallel + self.max_queue:
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
            for job in [*self.running, *self.rows.values(), *self.waiting] if cancel else []:
                job.cancel()
            self.wake.notify()
        self.thread.join(timeout)
        if self.decoder is not None:
            self.decoder.close()

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.active and not self.waiting and not self.closed and not self._warming():
                    self.wake.wait()
                if self.closed and not self.active and not self.waiting:
                    return
                joining = self._admit()
                streams = list(self.running)
                idle = not joining and not self.active
            if idle:  # nothing waits or runs: prefill a finished answer again, a chunk at a time
                self._warm()
                continue
            self._run_batch(joining)
            for job in streams:
                if not self._step(job):
                    with self.wake:
                        self.running.remove(job)

    def _warming(self) -> bool:
        return self.decoder is not None and self.decoder.warming.left

    def _warm(self) -> None:
        """One piece of the decoder's warming (see :mod:`slmops.runtime.warming`)."""
        if self.decoder is None:
            return
        pause = self.decoder.warming.pause()
        if pause:  # a next turn sent the moment the answer ended may be on its way: let it come first
            with self.wake:
                if not self.waiting and not self.closed:
                    self.wake.wait(pause)
            return
        try:
            self.decoder.warming.piece()
        except Exception:  # warming only saves time later: drop it, keep serving
            log.exception("%s: warming the prefix cache failed", self.name)
            self.decoder.warming.drop()

    def _admit(self) -> list[Job]:
        """Move waiting jobs in while there is room; returns the new rows to prefill."""
        joining: list[Job] = []
        while self.waiting and self.active + len(joining) < self.parallel:
            job = self.waiting[0]
            if job.sequence is not None:
                if self.decoder is None or self.decoder.free - len(joining) <= 0:  # only a decoder makes rows
                    break
                joining.append(job)
            else:
                self.running.append(job)
            self.waiting.popleft()
        return joining

    def _run_batch(self, joining: list[Job]) -> None:
        """Queue the new rows, then one round: the next piece of prefill and one decode step."""
        if self.decoder is None:
            return
        try:
            for sequence, job in [row for row in self.rows.items() if row[1].cancelled]:
                self.decoder.cancel(sequence)
                del self.rows[sequence]
                job.end()
            fresh, steps = not self.decoder.busy, self.decoder.steps
            self.decoder.add(self._join(joining))
            for piece in self.decoder.round():  # first tokens go out as each prefill group ends
                for sequence, response in piece:
                    job = self.rows.pop(sequence) if response.finish_reason else self.rows[sequence]
                    self._deliver(job, response)
                with self.wake:  # requests that came during the piece are prefilled in this round too
                    late = self._admit()
                self.decoder.add(self._join(late))
                if fresh and not self.decoder.pending and self.decoder.steps == steps:
                    fresh = False  # the next piece is the round's decode step
                    self._await_burst()
        except Exception as exc:  # the batch is broken: fail its requests, keep serving the others
            failed = list(self.rows.values())
            self.rows.clear()
            self.decoder.running.clear()
            self.decoder.pending.clear()
            for job in failed:
                job.error = exc
                job.end()

    def _await_burst(self) -> None:
        """Take in the rest of a burst before the first decode step (see :data:`BURST_GAP`)."""
        if self.decoder is None:
            return
        end = time.perf_counter() + BURST_WAIT
        with self.wake:
            while not self.closed and (left := end - time.perf_counter()) > 0:
                if not self.wake.wait(min(BURST_GAP, left)):
                    return  # nobody came for BURST_GAP
                self.decoder.add(self._join(self._admit()))

    def _join(self, joining: list[Job]) -> list[Sequence]:
        """The sequences of the ``joining`` jobs that still want an answer; the others end now."""
        sequences = []
        for job in joining:
            if job.cancelled or job.sequence is None:
                job.end()
            else:
                self.rows[job.sequence] = job
                sequences.append(job.sequence)
        return sequences

    def _deliver(self, job: Job, response: Response) -> None:
        if job.sequence is not None and job.sequence.error:
            job.error = RuntimeError(job.sequence.error)
        if self.observer is not None:
            self.observer(job, response)
        job.put(response)
        if response.finish_reason:
            job.end()

    def _step(self, job: Job) -> bool:
        """Advance ``job`` by one token; False when it is over."""
        if job.cancelled or job.stream is None:
            _close(job.stream)
            job.end()
            return False
        try:
            response = next(job.stream)
        except StopIteration:
            job.end()
            return False
        except Exception as exc:  # a failed sequence must not take the others down
            job.error = exc
            job.end()
            return False
        self._deliver(job, response)
        return not response.finish_reason


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()  # drops the og.Generator and its KV cache now, not at garbage collection
