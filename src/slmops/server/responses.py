"""The Responses API: ``POST /v1/responses`` (whole or streamed), ``GET`` and ``DELETE /v1/responses/{id}``, input items.

A response is a chat turn underneath: the request becomes the chat request
``/v1/chat/completions`` answers (:mod:`slmops.server.response_input`), is planned and
scheduled by the same code, and its answer is written back as Responses output
items or events (:mod:`slmops.server.response_output`). Finished responses stay in
memory for a bounded time (:mod:`slmops.server.response_store`) for retrieval and
``previous_response_id``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from slmops.runtime.generate import Response
from slmops.server import choices, generation
from slmops.server.errors import APIError
from slmops.server.openai_api import ERRORS, registry
from slmops.server.protocol import ChatRequest, Message
from slmops.server.registry import Loaded
from slmops.server.response_input import PARAMS, chat_request, input_messages, listed_items, output_messages
from slmops.server.response_output import Turn, stream_events
from slmops.server.response_store import ResponseStore, StoredResponse
from slmops.server.responses_protocol import DeletedResponse, InputItemList, ResponseObject, ResponsesRequest
from slmops.server.scheduler import Job

router = APIRouter(responses=ERRORS)


@router.post("/v1/responses", response_model=ResponseObject, responses={200: {"content": {"text/event-stream": {}}}})
async def create_response(body: ResponsesRequest, request: Request):
    """Answer ``input`` (after the turns of ``previous_response_id``); with ``stream``, as Responses events."""
    store = response_store(request)
    conversation = _earlier(store, body.previous_response_id) + input_messages(body.input)
    chat = chat_request(body, conversation)
    loaded = await registry(request).get(body.model)
    plan, job = _start(loaded, chat)
    turn = Turn(body, loaded.name)

    def keep(response: ResponseObject) -> None:
        if body.store is not False:
            history = conversation + output_messages(response.output)
            store.put(response.model_dump(mode="json"), history, listed_items(body.input))

    if body.stream:
        return _sse(stream_events(job, plan, turn, keep))
    text, last = await _collect(job)
    turn.cached_tokens = choices.cached_tokens([job], 1)
    response = turn.finished(text, last, plan)
    keep(response)
    return response


@router.get("/v1/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request):
    """A stored response, as it was answered."""
    return _stored(request, response_id).body


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str, request: Request):
    """Forget a stored response: it can no longer be retrieved or continued."""
    if not response_store(request).delete(response_id):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = Query(None, description="List the items after this id."),
    limit: int = Query(20, ge=1, le=100, description="Most items on a page."),
    order: Literal["asc", "desc"] = Query("desc", description="asc: in input order; desc: the last first."),
):
    """The input items of a stored response (its own, not those of earlier turns), a page at a time."""
    items = _stored(request, response_id).input_items
    items = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"after names {after!r}, which is not an item of {response_id}.", "after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return InputItemList(data=page, first_id=first, last_id=last, has_more=len(items) > limit)


def response_store(request: Request) -> ResponseStore:
    """The app's store of finished responses, made on first use."""
    state = request.app.state
    if getattr(state, "responses", None) is None:
        state.responses = ResponseStore()
    return state.responses


def _earlier(store: ResponseStore, previous_id: str | None) -> list[Message]:
    if previous_id is None:
        return []
    stored = store.get(previous_id)
    if stored is None:
        raise APIError(
            404,
            f"Previous response with id {previous_id!r} not found: responses are kept for an hour, "
            f"the {store.count} most recent ones, and not at all with store: false.",
            "previous_response_id",
            "previous_response_not_found",
        )
    return list(stored.history)


def _stored(request: Request, response_id: str) -> StoredResponse:
    stored = response_store(request).get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response with id {response_id!r} (kept for an hour).", "response_id", "not_found")


def _start(loaded: Loaded, chat: ChatRequest) -> tuple[generation.Plan, Job]:
    try:
        plan = generation.chat_plan(loaded, chat)
        return plan, generation.start(loaded, plan)
    except APIError as exc:  # name the Responses parameter, not its chat counterpart
        exc.param = PARAMS.get(exc.param or "", exc.param)
        raise


async def _collect(job: Job) -> tuple[str, Response]:
    pieces = []
    last: Response | None = None
    async for last in generation.responses(job, strip_leading=True):
        pieces.append(last.text)
    if last is None:
        raise APIError(503, "The answer was cancelled: the service is shutting down.", code="cancelled")
    return "".join(pieces), last


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        async for event in events:
            yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    return StreamingResponse(
        lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
