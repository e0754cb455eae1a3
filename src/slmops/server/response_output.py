"""The response object of ``/v1/responses``, whole or as the stream of Responses events.

A stream follows the order OpenAI sends and its SDK's stream helper checks:
``response.created``, ``response.in_progress``; for a message,
``response.output_item.added``, ``response.content_part.added``, the
``response.output_text.delta`` pieces, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; for a call,
``response.output_item.added``, the ``response.function_call_arguments.delta``
pieces, ``.done`` and ``response.output_item.done``; then ``response.completed``
(``response.incomplete`` when ``max_output_tokens`` cut the answer, ``response.failed``
when generation failed). Every event carries its ``sequence_number``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from slmops.runtime.generate import Response
from slmops.server import choices, generation, tools
from slmops.server.errors import APIError
from slmops.server.responses_protocol import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)

OutputItem = OutputMessage | OutputFunctionCall


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass
class Turn:
    """One response being made: the request and the model that answers it."""

    request: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    cached_tokens: int = 0  # prompt tokens read from the prefix cache, known once the prompt is in

    def response(
        self, status: str, output: list[OutputItem] | None = None, last: Response | None = None
    ) -> ResponseObject:
        """The response object in ``status``, with ``output`` and the usage of ``last``."""
        body = self.request
        text_format = (
            body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else None
        )
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=self.model,
            output=output or [],
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            store=body.store is not False,
            temperature=body.temperature,
            text={"format": text_format or {"type": "text"}},
            tool_choice=_choice(body),
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
            top_p=body.top_p,
            usage=_usage(last, self.cached_tokens) if last is not None else None,
            user=body.user,
            metadata=body.metadata or {},
        )

    def finished(self, text: str, last: Response, plan: generation.Plan) -> ResponseObject:
        """The response to a whole answer: its text as a message, or the call it makes."""
        calls = plan.tool_mode.calls(text, cut=last.finish_reason == "length") if plan.tool_mode else None
        status = _status(last, [call.function.arguments for call in calls or []])
        output: list[OutputItem]
        if calls:
            output = [call_item(call.id, call.function.name, call.function.arguments, status) for call in calls]
        else:
            output = [message_item(new_id("msg"), text, status)]
        return self.response(status, output, last)


def _choice(body: ResponsesRequest) -> str | dict:
    choice = body.tool_choice
    if choice is None:
        return "auto" if body.tools else "none"
    return choice if isinstance(choice, str) else choice.model_dump()


def _status(last: Response | None, arguments: list[str]) -> str:
    """incomplete when max_output_tokens cut the answer; ``arguments``: of its calls, which may be whole."""
    whole_calls = bool(arguments) and all(tools.parses(text) for text in arguments)
    cut = last is not None and last.finish_reason == "length"
    return "incomplete" if cut and not whole_calls else "completed"


def _usage(last: Response, cached: int) -> ResponseUsage:
    total = last.prompt_tokens + last.completion_tokens
    return ResponseUsage(
        input_tokens=last.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=last.completion_tokens,
        total_tokens=total,
    )


def message_item(item_id: str, text: str, status: str) -> OutputMessage:
    return OutputMessage(id=item_id, status=status, content=[OutputText(text=text)])


def call_item(call_id: str, name: str, arguments: str, status: str) -> OutputFunctionCall:
    return OutputFunctionCall(id=new_id("fc"), call_id=call_id, name=name, arguments=arguments, status=status)


class EventStream:
    """The Responses events of one answer, numbered as they are made."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.sequence = 0
        self.output: list[OutputItem] = []  # items so far; the last one may still be open
        self.open = False

    def event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict]:
        body = self.turn.response("in_progress").model_dump(mode="json")
        return [self.event("response.created", response=body), self.event("response.in_progress", response=body)]

    def text(self, piece: str) -> list[dict]:
        events = []
        if not (self.open and isinstance(self.output[-1], OutputMessage)):
            events = self._close("completed") + self._open_message()
        message = self.output[-1]
        assert isinstance(message, OutputMessage)
        message.content[0].text += piece
        return [*events, self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[])]

    def _open_message(self) -> list[dict]:
        message = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
        events = self._add(message)  # added with no part, as OpenAI sends it; the part follows
        message.content.append(OutputText(text=""))
        return [*events, self.event("response.content_part.added", **self._where(), part=_part(""))]

    def call(self, call_id: str, name: str) -> list[dict]:
        return self._close("completed") + self._add(call_item(call_id, name, "", "in_progress"))

    def arguments(self, piece: str) -> list[dict]:
        call = self.output[-1]
        assert self.open and isinstance(call, OutputFunctionCall)
        call.arguments += piece
        where = self._where(content=False)
        return [self.event("response.function_call_arguments.delta", **where, delta=piece)]

    def chat_delta(self, delta: dict) -> list[dict]:
        """The events of a chat delta from :class:`tools.AnswerStream` (words, or a call's pieces)."""
        if "content" in delta:
            return self.text(delta["content"])
        events = []
        for call in delta.get("tool_calls", []):
            if "id" in call:
                events += self.call(call["id"], call["function"]["name"])
            if call["function"].get("arguments"):
                events += self.arguments(call["function"]["arguments"])
        return events

    def finish(self, last: Response | None) -> tuple[ResponseObject, list[dict]]:
        """The finished response, and the events that close the answer, ending with ``response.completed``.

        The last event is ``response.incomplete`` instead when ``max_output_tokens`` cut the answer.
        """
        status = _status(last, [item.arguments for item in self.output if isinstance(item, OutputFunctionCall)])
        events = [] if self.output else self._open_message()  # an empty answer is still one message
        events += self._close(status)
        response = self.turn.response(status, self.output, last)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return response, [*events, self.event(kind, response=response.model_dump(mode="json"))]

    def fail(self, error: APIError) -> list[dict]:
        response = self.turn.response("failed", self.output)
        response.error = ResponseError(code=error.code or "server_error", message=error.message)
        return [self.event("response.failed", response=response.model_dump(mode="json"))]

    def _add(self, item: OutputItem) -> list[dict]:
        self.output.append(item)
        self.open = True
        return [self.event("response.output_item.added", output_index=len(self.output) - 1, item=_dump(item))]

    def _close(self, status: str) -> list[dict]:
        if not self.open:
            return []
        self.open = False
        item = self.output[-1]
        item.status = status  # type: ignore[assignment]
        events = []
        if isinstance(item, OutputMessage):
            text = item.content[0].text
            events.append(self.event("response.output_text.done", **self._where(), text=text, logprobs=[]))
            events.append(self.event("response.content_part.done", **self._where(), part=_part(text)))
        else:
            where = self._where(content=False)
            events.append(self.event("response.function_call_arguments.done", **where, arguments=item.arguments))
        output_index = len(self.output) - 1
        return [*events, self.event("response.output_item.done", output_index=output_index, item=_dump(item))]

    def _where(self, content: bool = True) -> dict:
        where = {"item_id": self.output[-1].id, "output_index": len(self.output) - 1}
        return where | ({"content_index": 0} if content else {})


def _part(text: str) -> dict:
    return OutputText(text=text).model_dump(mode="json")


def _dump(item: OutputItem) -> dict:
    return item.model_dump(mode="json")


async def stream_events(
    job, plan: generation.Plan, turn: Turn, keep: Callable[[ResponseObject], None]
) -> AsyncIterator[dict]:
    """The answer's events as it is generated; ``keep`` gets the finished response."""
    stream = EventStream(turn)
    for event in stream.start():
        yield event
    mode = plan.tool_mode
    forced = mode.forced if mode is not None else None
    answer = tools.AnswerStream(mode) if mode is not None and forced is None else None
    if forced is not None:  # the name is fixed: only the arguments are generated
        for event in stream.call(new_id("call"), forced):
            yield event
    last = None
    try:
        async for last in generation.responses(job, strip_leading=True):
            if not last.text:
                continue
            for event in _piece_events(stream, last.text, forced, answer):
                yield event
        for delta in answer.close() if answer is not None else []:
            for event in stream.chat_delta(delta):
                yield event
    except APIError as exc:  # headers are sent: the failure is an event, as OpenAI sends it
        for event in stream.fail(exc):
            yield event
        return
    turn.cached_tokens = choices.cached_tokens([job], 1)
    response, events = stream.finish(last)
    keep(response)
    for event in events:
        yield event


def _piece_events(stream: EventStream, piece: str, forced: str | None, answer: tools.AnswerStream | None) -> list[dict]:
    if forced is not None:
        return stream.arguments(piece)
    if answer is not None:
        return [event for delta in answer.feed(piece) for event in stream.chat_delta(delta)]
    return stream.text(piece)
