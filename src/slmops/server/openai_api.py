"""The OpenAI routes: chat and text completions (streamed or not) and the model list."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from slmops.errors import SlmopsError
from slmops.runtime.generate import Response
from slmops.server import choices, completion, generation, logprobs, policy, tools
from slmops.server.errors import APIError, from_slmops
from slmops.server.protocol import (
    AnswerMessage,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from slmops.server.registry import Registry

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 503)
}
router = APIRouter(responses=ERRORS)


def registry(request: Request) -> Registry:
    return request.app.state.registry


@router.post(
    "/v1/chat/completions", response_model=ChatCompletion, responses={200: {"content": {"text/event-stream": {}}}}
)
async def chat_completions(body: ChatRequest, request: Request):
    """Answer a chat; with ``stream`` the answer comes as server-sent events."""
    policy.check(body)
    loaded = await registry(request).get(body.model)
    plan = generation.chat_plan(loaded, body)
    plan.logprobs = (body.top_logprobs or 0) if body.logprobs else None
    texts = await asyncio.to_thread(logprobs.texts_for, loaded.model) if body.logprobs else None
    jobs = choices.start_all(loaded, choices.copies(plan, body.n))
    meta = _meta("chatcmpl", loaded.name)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        lasts: dict[int, Response] = {}
        streams = [_chat_chunks(job, plan, meta, usage, index, texts, lasts) for index, job in enumerate(jobs)]
        return _sse(_chat_usage(choices.merge(streams), meta, usage, lasts, jobs))
    answers = await choices.collect_all(jobs, strip_leading=True)
    made = [_chat_choice(index, answer, plan, texts) for index, answer in enumerate(answers)]
    return ChatCompletion(
        **meta,
        choices=made,
        usage=_usage_of([answer.last for answer in answers], choices.cached_tokens(jobs, len(jobs))),
    )


def _chat_choice(index: int, answer: choices.Collected, plan, texts) -> ChatChoice:
    reason = answer.last.finish_reason
    calls = plan.tool_mode.calls(answer.text, cut=reason == "length") if plan.tool_mode else None
    finish = tools.finish_reason(calls, reason)
    message = AnswerMessage(content=None if calls else answer.text, tool_calls=calls)
    found = logprobs.chat_logprobs(answer.tokens, texts) if texts is not None else None
    return ChatChoice.model_validate({"index": index, "message": message, "finish_reason": finish, "logprobs": found})


@router.post("/v1/completions", response_model=Completion, responses={200: {"content": {"text/event-stream": {}}}})
async def completions(body: CompletionRequest, request: Request):
    """Continue a prompt as plain text (no chat template)."""
    policy.check(body)
    loaded = await registry(request).get(body.model)
    answer = await completion.complete(loaded, body, _meta("cmpl", loaded.name))
    return answer if isinstance(answer, Completion) else _sse(answer)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request):
    """The models this service can answer with: loaded or not, they load on first use."""
    found = await asyncio.to_thread(registry(request).catalog)
    return ModelList(data=[_card(name, folder) for name, folder in found])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request):
    """One model, by name (a name that tries to leave the cache is a 404)."""
    try:
        name, folder = await asyncio.to_thread(registry(request).locate, model_id)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    return _card(name, folder)


def _card(name: str, folder) -> ModelCard:
    try:
        created = int(folder.stat().st_mtime)
    except OSError:
        created = 0
    return ModelCard(id=name, created=created)


def _meta(prefix: str, model: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}


def _usage_of(lasts: list[Response], cached: int = 0) -> Usage:
    """Usage of ``n`` answers to one prompt: the prompt counts once, every answer's tokens count."""
    prompt = lasts[0].prompt_tokens if lasts else 0
    completion_tokens = sum(last.completion_tokens for last in lasts)
    return choices.usage(prompt, completion_tokens, cached)


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except APIError as exc:  # headers are sent: report in-band, as OpenAI does
            yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _chat_usage(
    chunks: AsyncIterator[dict], meta: dict, include_usage: bool, lasts: dict[int, Response], jobs: list
) -> AsyncIterator[dict]:
    async for item in chunks:
        yield item
    if include_usage:
        usage = _usage_of(list(lasts.values()), choices.cached_tokens(jobs, len(jobs))).model_dump()
        yield {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage}


async def _chat_chunks(
    job,
    plan,
    meta: dict,
    include_usage: bool,
    index: int = 0,
    texts: logprobs.TokenTexts | None = None,
    lasts: dict[int, Response] | None = None,
) -> AsyncIterator[dict]:
    pending: list = []  # the log-probabilities of the tokens not yet sent

    def chunk(delta: dict, finish: str | None = None) -> dict:
        found = logprobs.chat_logprobs(pending, texts) if texts is not None and pending else None
        pending.clear()
        body = {
            **meta,
            "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": found}],
        }
        return body | ({"usage": None} if include_usage else {})

    yield chunk({"role": "assistant", "content": ""})
    mode = plan.tool_mode
    stream_args = mode is not None and mode.forced is not None
    answer = tools.AnswerStream(mode) if mode is not None and not stream_args else None
    last, arguments = None, ""
    if stream_args:
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        yield chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": mode.forced, "arguments": ""}}
                ]
            }
        )
    async for last in generation.responses(job, strip_leading=True):
        if lasts is not None:
            lasts[index] = last
        if last.logprobs is not None:
            pending.append(last.logprobs)
        if not last.text:
            if pending and not stream_args and answer is None:
                yield chunk({"content": ""})
            continue
        if stream_args:
            arguments += last.text
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": last.text}}]})
        elif answer is not None:  # words stream as content, a call as tool_calls deltas
            for delta in answer.feed(last.text):
                yield chunk(delta)
        else:
            yield chunk({"content": last.text})
    reason = last.finish_reason if last else None
    finish = reason or "stop"
    if answer is not None:
        for delta in answer.close():
            yield chunk(delta)
        finish = answer.finish_reason(reason)
    elif stream_args:
        finish = "tool_calls" if tools.parses(arguments) else finish  # a cut call is not one to run
    yield chunk({}, finish)
