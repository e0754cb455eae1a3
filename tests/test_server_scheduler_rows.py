"""The scheduler's batch rows on a fake decoder: each row's responses reach its own job, a
cancelled row leaves, and a broken batch fails every job it held (and only those)."""

import asyncio
import collections
import time
from collections.abc import Iterator
from types import SimpleNamespace

from slmops.runtime.batched import Sequence
from slmops.runtime.generate import Response
from slmops.runtime.options import GenerationOptions
from slmops.server.scheduler import DONE, Job, Scheduler


class Rows:
    """A BatchedDecoder's surface: every round gives each row one token; ``max_new`` tokens end it."""

    def __init__(self, rows: int = 4) -> None:
        self.rows = rows
        self.running: list[Sequence] = []
        self.pending: collections.deque[Sequence] = collections.deque()
        self.broken = False
        self.warming = SimpleNamespace(left=False)  # nothing to prefill again when idle

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.pending)

    @property
    def free(self) -> int:
        return self.rows - self.busy

    def add(self, sequences: list[Sequence]) -> None:
        for sequence in sequences:
            sequence.answer = SimpleNamespace(error=None)
        self.pending.extend(sequences)

    def cancel(self, sequence: Sequence) -> None:
        (self.pending if sequence in self.pending else self.running).remove(sequence)

    def advance(self) -> list[tuple[Sequence, Response]]:
        time.sleep(0.002)
        if self.broken:
            self.running.clear()  # a row that ended earlier in the failing round has left the batch already
            raise RuntimeError("the session failed")
        self.running.extend(self.pending)
        self.pending.clear()
        responses = []
        for sequence in list(self.running):
            sequence.tokens.append(len(sequence.tokens))
            count = len(sequence.tokens)
            finish = "length" if count >= sequence.max_new else None
            if finish:
                self.running.remove(sequence)
            responses.append((sequence, Response(f"{count} ", count, 1, count, 0.0, 0.0, 0.0, finish)))
        return responses

    def round(self) -> Iterator[list[tuple[Sequence, Response]]]:
        yield self.advance()

    def close(self) -> None:
        pass


def row(loop, max_new: int) -> Job:
    return Job(None, loop, sequence=Sequence([1, 2], GenerationOptions(), max_new, time.perf_counter()))


async def drain(job: Job) -> list:
    items = []
    while (item := await job.queue.get()) is not DONE:
        items.append(item)
    return items


def test_each_row_answers_its_own_job_and_a_cancelled_row_leaves():
    rows = Rows()
    seen = []

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, observer=lambda job, response: seen.append(job), decoder=rows)
        short, long, dropped = row(loop, 3), row(loop, 6), row(loop, 10_000)
        for job in (short, long, dropped):
            scheduler.submit(job)
        answers = await drain(short), await drain(long)
        await dropped.queue.get()
        dropped.cancel()
        rest = await drain(dropped)
        while scheduler.active:
            await asyncio.sleep(0.01)
        scheduler.close()
        return answers, rest, scheduler, dropped

    (short, long), rest, scheduler, dropped = asyncio.run(asyncio.wait_for(main(), 30))
    assert "".join(item.text for item in short) == "1 2 3 " and short[-1].finish_reason == "length"
    assert "".join(item.text for item in long) == "1 2 3 4 5 6 " and long[-1].finish_reason == "length"
    assert len(rest) < 10_000 and not rows.busy and not scheduler.rows
    assert dropped.error is None and len(seen) >= 9


def test_a_broken_batch_fails_every_job_it_held_and_serves_the_next():
    rows = Rows()

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, decoder=rows)
        held = [scheduler.submit(row(loop, 10_000)) for _ in range(2)]
        for job in held:
            await job.queue.get()
        rows.broken = True
        for job in held:
            await drain(job)
        rows.broken = False
        later = await drain(scheduler.submit(row(loop, 2)))
        scheduler.close()
        return held, later, scheduler

    held, later, scheduler = asyncio.run(asyncio.wait_for(main(), 30))
    assert all(isinstance(job.error, RuntimeError) for job in held)
    assert [item.text for item in later] == ["1 ", "2 "] and not scheduler.rows
