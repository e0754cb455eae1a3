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
from slmops.server import generation, tools
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
    PromptTokensDetails,
    TextChoice,
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
    loaded = await registry(request).get(body.model)
    plan = generation.chat_plan(loaded, body)
    job = generation.start(loaded, plan)
    meta = _meta("chatcmpl", loaded.name)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_chat_chunks(job, plan, meta, usage))
    text, last = await _collect(job, strip_leading=True)
    calls = plan.tool_mode.calls(text) if plan.tool_mode else None
    finish = "tool_calls" if calls else last.finish_reason or "stop"
    message = AnswerMessage(content=None if calls else text, tool_calls=calls)
    choice = ChatChoice(message=message, finish_reason=finish)
    return ChatCompletion(**meta, choices=[choice], usage=_usage(last, job))


@router.post("/v1/completions", response_model=Completion, responses={200: {"content": {"text/event-stream": {}}}})
async def completions(body: CompletionRequest, request: Request):
    """Continue a prompt as plain text (no chat template)."""
    loaded = await registry(request).get(body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    try:
        ids = loaded.model.completion_ids(prompt)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc
    plan = generation.Plan(ids, generation.options_for(body))
    job = generation.start(loaded, plan)
    meta = _meta("cmpl", loaded.name)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_text_chunks(job, meta, usage, prompt if body.echo else ""))
    text, last = await _collect(job)
    choice = TextChoice(text=(prompt if body.echo else "") + text, finish_reason=last.finish_reason or "stop")
    return Completion(**meta, choices=[choice], usage=_usage(last, job))


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


def _usage(last: Response | None, job) -> Usage:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    cached = job.sequence.cached if job.sequence is not None else 0
    details = PromptTokensDetails(cached_tokens=cached)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=details,
    )


async def _collect(job, strip_leading: bool = False) -> tuple[str, Response]:
    pieces: list[str] = []
    last: Response | None = None
    async for last in generation.responses(job, strip_leading):
        pieces.append(last.text)
    if last is None:
        raise APIError(503, "The answer was cancelled: the service is shutting down.", code="cancelled")
    return "".join(pieces), last


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


async def _chat_chunks(job, plan, meta: dict, include_usage: bool) -> AsyncIterator[dict]:
    def chunk(delta: dict, finish: str | None = None) -> dict:
        body = {
            **meta,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return body | ({"usage": None} if include_usage else {})

    yield chunk({"role": "assistant", "content": ""})
    mode = plan.tool_mode
    stream_args = mode is not None and mode.forced is not None
    answer = tools.AnswerStream(mode) if mode is not None and not stream_args else None
    last = None
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
        if not last.text:
            continue
        if stream_args:
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": last.text}}]})
        elif answer is not None:  # words stream as content, a call as tool_calls deltas
            for delta in answer.feed(last.text):
                yield chunk(delta)
        else:
            yield chunk({"content": last.text})
    finish = (last.finish_reason if last else None) or "stop"
    if answer is not None:
        for delta in answer.close():
            yield chunk(delta)
        finish = "tool_calls" if answer.called else finish
    elif stream_args:
        finish = "tool_calls"
    yield chunk({}, finish)
    if include_usage:
        yield {**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(last, job).model_dump()}


async def _text_chunks(job, meta: dict, include_usage: bool, echo: str) -> AsyncIterator[dict]:
    def chunk(text: str, finish: str | None = None) -> dict:
        body = {
            **meta,
            "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }
        return body | ({"usage": None} if include_usage else {})

    if echo:
        yield chunk(echo)
    last = None
    async for last in generation.responses(job):
        if last.text:
            yield chunk(last.text)
    yield chunk("", (last.finish_reason if last else None) or "stop")
    if include_usage:
        yield {**meta, "object": "text_completion", "choices": [], "usage": _usage(last, job).model_dump()}
