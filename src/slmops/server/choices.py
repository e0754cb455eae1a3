"""Several choices per request: ``n`` answers and many prompts, each its own job on the scheduler.

Every choice is its own sequence, queued together, so they become rows of the same batch
and are prefilled together. With a seed, choice ``i`` samples with a seed derived from it
(choice 0 with the seed itself, so ``n: 1`` answers as before), so the choices differ
and the request stays reproducible.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from slmops.runtime.generate import Response
from slmops.runtime.logprobs import TokenLogprob
from slmops.server import generation
from slmops.server.errors import APIError
from slmops.server.generation import Plan
from slmops.server.protocol import PromptTokensDetails, Usage
from slmops.server.registry import Loaded
from slmops.server.scheduler import Job

SEED_SPACE = 2**31
# An odd step: seed + i * step (mod 2**31) differs for every i below 2**31.
SEED_STEP = 0x9E3779B1


def derived_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index``: distinct per choice, the seed itself for the first."""
    return None if seed is None else (seed + index * SEED_STEP) % SEED_SPACE


def copies(plan: Plan, n: int) -> list[Plan]:
    """``n`` plans for ``plan``'s prompt, each with its own derived seed."""
    seed = plan.options.get("seed")
    return [dataclasses.replace(plan, options={**plan.options, "seed": derived_seed(seed, i)}) for i in range(n)]


def start_all(loaded: Loaded, plans: list[Plan]) -> list[Job]:
    """Queue every plan; if one is refused (queue full, bad grammar), the others are cancelled."""
    jobs: list[Job] = []
    try:
        for plan in plans:
            jobs.append(generation.start(loaded, plan))
    except APIError:
        for job in jobs:
            job.cancel()
        raise
    return jobs


def cached_tokens(jobs: list[Job], n: int) -> int:
    """Prompt tokens read from the prefix cache; a prompt's ``n`` choices count it once, as its tokens do."""
    return sum(job.sequence.cached for job in jobs[::n] if job.sequence is not None)


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


@dataclass
class Collected:
    """A whole answer: its text, last response, and log-probabilities if asked for."""

    text: str
    last: Response
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt: list[TokenLogprob] | None = None


async def collect(job: Job, strip_leading: bool = False) -> Collected:
    """Wait for ``job``'s whole answer.

    Raises:
        APIError: 503 when the answer was cancelled (the service stops), 500 when it failed.
    """
    pieces: list[str] = []
    tokens: list[TokenLogprob] = []
    prompt, last = None, None
    async for last in generation.responses(job, strip_leading):
        pieces.append(last.text)
        if last.logprobs is not None:
            tokens.append(last.logprobs)
        if last.prompt_logprobs is not None:
            prompt = last.prompt_logprobs
    if last is None:
        raise APIError(503, "The answer was cancelled: the service is shutting down.", code="cancelled")
    return Collected("".join(pieces), last, tokens, prompt)


async def collect_all(jobs: list[Job], strip_leading: bool = False) -> list[Collected]:
    """Every job's answer; if one fails, the others are cancelled."""
    try:
        return list(await asyncio.gather(*(collect(job, strip_leading) for job in jobs)))
    finally:
        for job in jobs:
            job.cancel()  # a no-op for finished jobs


_END = object()


async def merge(streams: list[AsyncIterator[dict]]) -> AsyncIterator[dict]:
    """The items of every stream as they come; an error in one ends all of them."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[dict]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)
        finally:
            await queue.put(_END)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()  # a client that left cancels every choice's sequence
