"""``/v1/completions``: raw prompts in every form OpenAI accepts, echo, legacy logprobs, ``n`` choices.

A prompt is a string, a list of strings, a list of token ids, or a list of token-id lists;
each prompt gets ``n`` choices, numbered prompt by prompt (``index = prompt * n + i``).
Token ids go to the model as they are (no BOS added), checked against its vocabulary.
``echo`` returns each prompt before its answer, and with ``logprobs`` the prompt's own
token log-probabilities (none for its first token); ``max_tokens: 0`` generates nothing,
which is how evaluation harnesses score a text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from slmops.errors import SlmopsError
from slmops.runtime.generate import Response
from slmops.server import choices, generation
from slmops.server import logprobs as shapes
from slmops.server.choices import Collected
from slmops.server.errors import APIError, from_slmops
from slmops.server.protocol import Completion, CompletionRequest, TextChoice
from slmops.server.registry import Loaded
from slmops.server.scheduler import Job


@dataclass
class Prompt:
    """One prompt: its token ids, the text ``echo`` returns, and how many of its first tokens
    (the BOS a tokenizer adds) are not in that text."""

    ids: list[int]
    text: str
    hidden: int = 0


def prompts_of(loaded: Loaded, prompt: str | list) -> list[Prompt]:
    """The request's prompts, tokenized (text) or checked against the vocabulary (token ids).

    Raises:
        APIError: 400 for a token id outside the vocabulary.
    """
    items = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    try:
        return [_text(loaded, item) if isinstance(item, str) else _tokens(loaded, item) for item in items]
    except SlmopsError as exc:
        raise from_slmops(exc) from exc


def _text(loaded: Loaded, text: str) -> Prompt:
    model = loaded.model
    ids = model.completion_ids(text)
    hidden = len(ids) - len(model.encode(text)) if model.text_prefix_ids else 0
    return Prompt(ids, text, hidden)


def _tokens(loaded: Loaded, ids: list[int]) -> Prompt:
    vocab = int(loaded.model.genai_config["model"]["vocab_size"])
    for token in ids:
        if not 0 <= token < vocab:
            raise APIError(
                400,
                f"prompt: token id {token} is outside the vocabulary of {loaded.name} (0 to {vocab - 1}).",
                "prompt",
                "invalid_parameter",
            )
    return Prompt(list(ids), loaded.model.decode(ids))


def plans_for(body: CompletionRequest, prompts: list[Prompt]) -> list[generation.Plan]:
    """``n`` plans per prompt, prompt by prompt."""
    top = body.logprobs
    plans = []
    for prompt in prompts:
        plan = generation.Plan(
            prompt.ids,
            generation.options_for(body),
            logprobs=top,
            prompt_logprobs=top if body.echo else None,
            max_new=0 if body.max_tokens == 0 else None,
        )
        plans += choices.copies(plan, body.n)
    return plans


async def complete(loaded: Loaded, body: CompletionRequest, meta: dict):
    """The answer to a completion request: a :class:`Completion`, or server-sent chunks."""
    prompts = prompts_of(loaded, body.prompt)
    texts = await asyncio.to_thread(shapes.texts_for, loaded.model) if body.logprobs is not None else None
    jobs = choices.start_all(loaded, plans_for(body, prompts))
    echoes = [prompt for prompt in prompts for _ in range(body.n)]
    prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        lasts: dict[int, Response] = {}
        streams = [
            _chunks(job, meta, index, echoes[index] if body.echo else None, texts, include_usage, lasts)
            for index, job in enumerate(jobs)
        ]
        return _with_usage(choices.merge(streams), meta, include_usage, prompt_tokens, lasts, jobs, body.n)
    answers = await choices.collect_all(jobs)
    made = [_choice(index, answer, echoes[index] if body.echo else None, texts) for index, answer in enumerate(answers)]
    completion = sum(answer.last.completion_tokens for answer in answers)
    cached = choices.cached_tokens(jobs, body.n)  # known once the prompts are in
    return Completion(**meta, choices=made, usage=choices.usage(prompt_tokens, completion, cached))


def _choice(index: int, answer: Collected, echo: Prompt | None, texts: shapes.TokenTexts | None) -> TextChoice:
    text = (echo.text if echo else "") + answer.text
    logprobs = None
    if texts is not None:
        legacy = shapes.LegacyLogprobs(texts)
        parts = [legacy.add(shapes.prompt_entries(echo.ids, answer.prompt), echo.ids, echo.hidden)] if echo else []
        logprobs = shapes.join([*parts, legacy.add(list(answer.tokens))])
    return TextChoice.model_validate(
        {"index": index, "text": text, "finish_reason": answer.last.finish_reason or "stop", "logprobs": logprobs}
    )


async def _chunks(
    job,
    meta: dict,
    index: int,
    echo: Prompt | None,
    texts: shapes.TokenTexts | None,
    include_usage: bool,
    lasts: dict[int, Response],
) -> AsyncIterator[dict]:
    def chunk(text: str, finish: str | None = None, logprobs: dict | None = None) -> dict:
        choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return {**meta, "object": "text_completion", "choices": [choice]} | ({"usage": None} if include_usage else {})

    legacy = shapes.LegacyLogprobs(texts) if texts is not None else None
    last = None
    async for last in generation.responses(job):
        lasts[index] = last
        if echo is not None:  # the prompt's log-probabilities come with the first response
            entries = shapes.prompt_entries(echo.ids, last.prompt_logprobs)
            yield chunk(echo.text, None, legacy.add(entries, echo.ids, echo.hidden) if legacy else None)
            echo = None
        if last.text or (legacy is not None and last.logprobs is not None):
            yield chunk(last.text, None, legacy.add([last.logprobs]) if legacy and last.logprobs else None)
    if last is None:
        raise APIError(503, "The answer was cancelled: the service is shutting down.", code="cancelled")
    yield chunk("", last.finish_reason or "stop")


async def _with_usage(
    chunks: AsyncIterator[dict],
    meta: dict,
    include_usage: bool,
    prompt_tokens: int,
    lasts: dict[int, Response],
    jobs: list[Job],
    n: int,
) -> AsyncIterator[dict]:
    async for item in chunks:
        yield item
    if include_usage:
        completion = sum(last.completion_tokens for last in lasts.values())
        usage = choices.usage(prompt_tokens, completion, choices.cached_tokens(jobs, n))
        yield {**meta, "object": "text_completion", "choices": [], "usage": usage.model_dump()}
