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
        self.steps = 0  # rounds run: each is a prefill and a decode step in one
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
        self.steps += 1
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


class Pieces(Rows):
    """Rows whose round is a prefill piece (each waiting row's first token), then a decode step;
    ``first_at`` records how many decode steps had run when each row got its first token."""

    def __init__(self, rows: int = 4) -> None:
        super().__init__(rows)
        self.first_at: dict[int, int] = {}

    def round(self) -> Iterator[list[tuple[Sequence, Response]]]:
        while self.pending:
            new = list(self.pending)
            self.pending.clear()
            self.running.extend(new)
            for sequence in new:
                self.first_at[id(sequence)] = self.steps
                sequence.tokens.append(0)
            yield [(sequence, Response("0 ", 0, 1, 1, 0.0, 0.0, 0.0, None)) for sequence in new]
        yield self.advance()


def test_a_burst_arriving_spread_out_joins_before_the_first_decode_step(monkeypatch):
    from slmops.server import scheduler as scheduling

    monkeypatch.setattr(scheduling, "BURST_GAP", 0.5)  # generous: the test does not race the clock
    monkeypatch.setattr(scheduling, "BURST_WAIT", 0.5)
    waits = []
    original = Scheduler._await_burst
    monkeypatch.setattr(Scheduler, "_await_burst", lambda self: waits.append(1) or original(self))
    rows = Pieces()

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, decoder=rows)
        first = scheduler.submit(row(loop, 3))
        await first.queue.get()  # its first token is out; the decode step has not run
        second = scheduler.submit(row(loop, 3))
        answers = await drain(first), await drain(second)
        while scheduler.active:  # ended jobs leave their rows a moment later
            await asyncio.sleep(0.01)
        third = scheduler.submit(row(loop, 50))
        await third.queue.get()
        await third.queue.get()  # a decode step ran: third is decoding
        fourth = scheduler.submit(row(loop, 2))
        await drain(fourth)
        third.cancel()
        await drain(third)
        scheduler.close()
        return first, second, third, fourth, answers

    first, second, third, fourth, answers = asyncio.run(asyncio.wait_for(main(), 30))
    assert [rows.first_at[id(job.sequence)] for job in (first, second)] == [0, 0]
    assert [len(items) for items in answers] == [2, 3]
    # The batch was idle before the first and before the third, never when the fourth came.
    assert len(waits) == 2 and rows.first_at[id(fourth.sequence)] > rows.first_at[id(third.sequence)]
