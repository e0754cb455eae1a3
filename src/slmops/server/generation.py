"""From a parsed request to a running sequence: options, prompt, guidance, and the job.

The answer itself comes from the runtime's generation layer: a row of the model's
:class:`~slmops.runtime.batched.BatchedDecoder` when one can hold the request, else
the runtime's own token stream (``Model.stream_generate``, the one `slmops model run`
and the benchmarks use). Both give the same :class:`~slmops.runtime.generate.Response`
objects, with stop handling, finish reasons and metrics made in one place; the server
only schedules them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from slmops.errors import SlmopsError
from slmops.runtime.batched import Sequence
from slmops.runtime.generate import LeadingWhitespace, Response, score_prompt, stream_tokens
from slmops.runtime.guided import GrammarError, Grammars
from slmops.runtime.model import Model
from slmops.runtime.options import GenerationOptions
from slmops.runtime.warming import next_turn_opening
from slmops.server import tools
from slmops.server.errors import APIError, from_slmops
from slmops.server.protocol import DEFAULT_MAX_TOKENS, ChatRequest, Message, SamplingFields
from slmops.server.registry import Loaded
from slmops.server.scheduler import DONE, Closed, Job, QueueFull

if TYPE_CHECKING:
    from llguidance import LLMatcher

log = logging.getLogger("slmops.server")


@dataclass
class Plan:
    """What to generate: prompt token ids, options, and an optional decode-time grammar.

    ``logprobs`` / ``prompt_logprobs``: alternatives to report with each answer / prompt
    token's log-probability (None: no log-probabilities). ``max_new`` 0 generates nothing
    (the prompt is only scored).
    """

    ids: list[int]
    options: dict
    guidance: tuple[str, str] | None = None
    tool_mode: tools.ToolMode | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    max_new: int | None = None
    follow: list[int] = field(default_factory=list)  # what a chat's next turn puts after the answer


def options_for(request: SamplingFields, max_tokens: int | None = None) -> dict:
    """GenerationOptions overrides for a request (None keeps the model's default)."""
    stop = request.stop
    seed = request.seed if request.seed is not None else request.random_seed
    return {
        "max_tokens": max_tokens or request.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "seed": seed,
        "stop": tuple([stop] if isinstance(stop, str) else stop or ()) or None,
        "repetition_penalty": request.repetition_penalty,
    }


def chat_plan(loaded: Loaded, request: ChatRequest) -> Plan:
    """The prompt and options of a chat request, with any JSON or tool constraint."""
    mode = tools.mode_for(request)
    messages = history(request.messages)
    try:
        if mode is not None:
            messages = tools.with_tool_prompt(messages, mode)
        ids = loaded.model.prompt_ids(messages)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    guidance = mode.guidance() if mode is not None else tools.response_guidance(request.response_format)
    options = options_for(request, request.max_completion_tokens)
    return Plan(ids, options, guidance, mode, follow=next_turn_opening(loaded.model))


def history(messages: list[Message]) -> list[dict]:
    """Messages as the runtime renders them; an assistant's tool calls become their JSON text."""
    result = []
    for message in messages:
        content = message.content
        if message.role == "assistant" and message.tool_calls and not content:
            content = "\n".join(
                tools.call_text(call.function.name, call.function.arguments) for call in message.tool_calls
            )
        result.append({"role": message.role, "content": content})
    return result


def start(loaded: Loaded, plan: Plan) -> Job:
    """Queue the sequence on the model's scheduler: a batch row, or a generator when no row can hold it.

    Raises:
        APIError: 400 for invalid options, 429 when the queue is full, 503 while stopping.
    """
    try:
        job = _job(loaded, plan)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    try:
        loaded.scheduler.submit(job)
    except QueueFull:
        wait = loaded.scheduler.retry_after()
        raise APIError(
            429,
            f"{loaded.name} is busy: every slot and the queue are full; retry in {wait} s.",
            code="queue_full",
            headers={"Retry-After": str(wait)},
        ) from None
    except Closed:
        raise APIError(503, "The service is shutting down.", code="shutting_down") from None
    loaded.touch()
    return job


def _job(loaded: Loaded, plan: Plan) -> Job:
    model, decoder = loaded.model, loaded.scheduler.decoder
    loop = asyncio.get_running_loop()
    if len(plan.ids) >= model.context_length:
        raise APIError(
            400,
            f"The prompt is {len(plan.ids)} tokens but {loaded.name} holds {model.context_length}; shorten it.",
            "prompt",
            "context_length_exceeded",
        )
    options = model.options(**plan.options)
    max_new = min(options.max_tokens or DEFAULT_MAX_TOKENS, model.context_length - len(plan.ids))
    max_new = max_new if plan.max_new is None else min(plan.max_new, max_new)
    if decoder is not None and plan.ids and decoder.fits(len(plan.ids), max_new):
        if plan.guidance is None:
            return _row(loop, plan, options, max_new, None)
        grammars = decoder.grammars
        if grammars is not None:
            return _row(loop, plan, options, max_new, _matcher(grammars, plan.guidance, plan.tool_mode))
    # What a row cannot hold runs alone, on the runtime's generator, guided there too.
    if not model.generator_loaded:  # its weights load in the scheduler's thread, not on the event loop
        return Job(_later(lambda: _stream(model, plan, options, max_new)), loop)
    return Job(_stream(model, plan, options, max_new), loop)


def _later(make: Callable[[], Iterator[Response]]) -> Iterator[Response]:
    yield from make()


def _stream(model: Model, plan: Plan, options: GenerationOptions, max_new: int) -> Iterator[Response]:
    start = time.perf_counter()
    if max_new <= 0:
        return score_prompt(model.og_model, plan.ids, plan.prompt_logprobs or 0, start)
    if not plan.ids or (plan.logprobs is None and plan.prompt_logprobs is None):
        return model.stream_generate(plan.ids, guidance=plan.guidance, **plan.options)
    mask = None
    if plan.guidance is not None and plan.logprobs is not None:
        mask = _grammar_mask(model, plan)
    return stream_tokens(
        model.og_model,
        model.tokenizer,
        plan.ids,
        options,
        model.context_length,
        model.stop_token_ids,
        start,
        plan.guidance,
        plan.logprobs,
        plan.prompt_logprobs,
        mask,
    )


class GrammarMask:
    """A grammar's mask for the log-probabilities of a generator's answer (its own guidance picks the tokens)."""

    def __init__(self, grammars: Grammars, matcher: LLMatcher) -> None:
        self.grammars, self.matcher = grammars, matcher
        self.masks = grammars.masks(1)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        self.grammars.fill([(self.matcher, 0)], self.masks)
        return self.grammars.apply(logits, self.masks[0])

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)


def _grammar_mask(model: Model, plan: Plan) -> GrammarMask | None:
    """The mask of ``plan``'s grammar, or None when llguidance cannot read the model's tokenizer."""
    grammars = model.grammars
    if grammars is None or plan.guidance is None:
        return None
    return GrammarMask(grammars, _matcher(grammars, plan.guidance, plan.tool_mode))


def _row(
    loop: asyncio.AbstractEventLoop, plan: Plan, options: GenerationOptions, max_new: int, matcher: LLMatcher | None
) -> Job:
    sequence = Sequence(
        list(plan.ids),
        options,
        max_new,
        time.perf_counter(),
        matcher=matcher,
        logprobs=plan.logprobs,
        prompt_logprobs=plan.prompt_logprobs,
        follow=plan.follow,
    )
    return Job(None, loop, sequence=sequence)


def _matcher(grammars: Grammars, guidance: tuple[str, str], tool_mode: tools.ToolMode | None) -> LLMatcher:
    try:
        return grammars.matcher(guidance)
    except GrammarError as exc:
        field = "tools" if tool_mode is not None else "response_format"
        raise APIError(400, f"{exc} Simplify the schema.", field, "invalid_parameter") from None


async def responses(job: Job, strip_leading: bool = False) -> AsyncIterator[Response]:
    """The job's responses as they come; cancels the sequence if the consumer stops early.

    ``strip_leading`` drops the whitespace an answer opens with, as ``Model.stream_chat`` does.
    """
    leading = LeadingWhitespace() if strip_leading else None
    tokens, done = 0, False
    try:
        while True:
            item = await job.queue.get()
            if item is DONE:
                done = True
                break
            if leading is not None:
                leading.strip(item)
            tokens += 1
            yield item
        if job.error is not None:
            raise APIError(500, f"Generation failed: {job.error}", code="generation_failed")
    finally:
        if not done and not job.cancelled:
            log.info("cancelled an answer after %d tokens: the client stopped reading", tokens)
        job.cancel()  # a no-op after the last token; frees the slot when the client left
