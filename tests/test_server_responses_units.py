"""The parts of /v1/responses that need no model: events, input translation and the store.

Streams are checked by the official client's stream helper itself: the events are
served by a mock transport and read back through ``client.responses.stream``.
"""

import asyncio
import json
from types import SimpleNamespace

import httpx
import openai
import pytest
from pydantic import ValidationError

from slmops.runtime.generate import Response
from slmops.server import generation, response_output
from slmops.server.errors import APIError
from slmops.server.protocol import ChatRequest
from slmops.server.response_input import chat_request, input_messages, output_messages
from slmops.server.response_output import Turn, stream_events
from slmops.server.response_store import ResponseStore
from slmops.server.responses_protocol import ResponsesRequest

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "parameters": CITY}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'


def pieces(text: str, finish: str = "stop", size: int = 3) -> list[Response]:
    chunks = [text[start : start + size] for start in range(0, len(text), size)] or [""]
    return [
        Response(chunk, 0, 7, index + 1, 0.0, 0.0, 0.0, finish if index == len(chunks) - 1 else None)
        for index, chunk in enumerate(chunks)
    ]


def served_events(
    monkeypatch, request: dict, answer: list[Response], error: APIError | None = None, cached: int = 0
) -> list[dict]:
    """The events /v1/responses streams for ``request`` when the model answers ``answer`` (``cached``: prefix hits)."""

    async def fake_responses(job, strip_leading=False):
        for response in answer:
            yield response
        if error is not None:
            raise error

    monkeypatch.setattr(generation, "responses", fake_responses)
    body = ResponsesRequest.model_validate({"model": "m", "stream": True} | request)
    chat = chat_request(body, input_messages(body.input))
    plan = generation.Plan([1, 2], {}, None, generation.tools.mode_for(chat))
    kept = []

    async def collect():
        job = SimpleNamespace(sequence=SimpleNamespace(cached=cached))
        return [event async for event in stream_events(job, plan, Turn(body, "m"), kept.append)]

    events = asyncio.run(collect())
    assert len(kept) == (0 if error else 1)
    return events


def through_the_sdk(events: list[dict], **request):
    """The events read by the official client's stream helper: its events and final response."""
    sse = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())
    )
    client = openai.OpenAI(base_url="http://test/v1", api_key="x", http_client=httpx.Client(transport=transport))
    with client.responses.stream(model="m", input="x", **request) as stream:
        seen = list(stream)
        return seen, stream.get_final_response()


def kinds(events: list[dict]) -> list[str]:
    """The event types in order, a run of deltas counted as one."""
    result: list[str] = []
    for event in events:
        if not (result and result[-1] == event["type"] and event["type"].endswith(".delta")):
            result.append(event["type"])
    return result


START = ["response.created", "response.in_progress", "response.output_item.added"]
MESSAGE = [
    *START,
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
CALL = [
    *START,
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


def test_an_auto_answer_that_calls_streams_one_function_call_item(monkeypatch):
    request = {"input": "Weather?", "tools": [WEATHER]}
    events = served_events(monkeypatch, request, pieces(CALL_TEXT))
    assert kinds(events) == CALL
    seen, final = through_the_sdk(events, tools=[WEATHER])
    [call] = final.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    )
    deltas = [event.delta for event in seen if event.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and "".join(deltas) == call.arguments  # streamed as generated, not whole at the end
    assert not [event for event in seen if event.type.startswith("response.output_text")]


def test_an_auto_answer_in_words_streams_one_message(monkeypatch):
    events = served_events(monkeypatch, {"input": "Hi", "tools": [WEATHER]}, pieces("It is sunny {in} Oslo."))
    assert kinds(events) == MESSAGE
    assert events[2]["item"]["content"] == [] and events[3]["part"]["text"] == ""
    seen, final = through_the_sdk(events, tools=[WEATHER])
    assert final.output_text == "It is sunny {in} Oslo." and final.status == "completed"
    snapshots = [event.snapshot for event in seen if event.type == "response.output_text.delta"]
    assert snapshots[-1] == final.output_text and len(snapshots) > 2


def test_an_empty_answer_is_still_one_closed_message(monkeypatch):
    events = served_events(monkeypatch, {"input": "Hi"}, pieces(""))
    assert kinds(events) == [kind for kind in MESSAGE if kind != "response.output_text.delta"]
    _, final = through_the_sdk(events)
    assert [item.type for item in final.output] == ["message"] and final.output_text == ""
    assert final.usage.output_tokens == 1


def test_a_cut_answer_ends_incomplete_and_a_failure_ends_failed(monkeypatch):
    events = served_events(monkeypatch, {"input": "Hi"}, pieces("abcdef", finish="length"))
    assert kinds(events) == [*MESSAGE[:-1], "response.incomplete"]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"
    failure = APIError(500, "Generation failed: boom", code="generation_failed")
    events = served_events(monkeypatch, {"input": "Hi"}, pieces("abc")[:1], error=failure)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "generation_failed", "message": "Generation failed: boom"}
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


def test_input_items_become_chat_turns():
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "Weather in Rome and Oslo?"},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "c1",
            "name": "get_weather",
            "arguments": '{"city": "Rome"}',
        },
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "24"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "8"}]},
    ]
    messages = input_messages(ResponsesRequest(model="m", input=items).input)
    assert [message.role for message in messages] == ["developer", "user", "assistant", "tool", "tool"]
    assert [call.id for call in messages[2].tool_calls] == ["c1", "c2"]  # one turn's calls stay one message
    assert (messages[0].content, messages[4].content, messages[4].tool_call_id) == ("Be brief.", "8", "c2")


def test_the_request_maps_onto_the_chat_request():
    body = ResponsesRequest(
        model="m",
        input="Hi",
        instructions="Be brief.",
        max_output_tokens=9,
        text={"format": {"type": "json_schema", "name": "p", "schema": CITY}},
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    chat = chat_request(body, input_messages(body.input))
    assert isinstance(chat, ChatRequest) and [m.role for m in chat.messages] == ["system", "user"]
    assert chat.max_completion_tokens == 9 and chat.response_format.json_schema.schema_ == CITY
    assert chat.tools[0].function.parameters == CITY and chat.tool_choice.function.name == "get_weather"


def test_output_becomes_the_next_turns_history():
    call = response_output.call_item("c1", "get_weather", '{"city": "Rome"}', "completed")
    message = response_output.message_item("msg_1", "Sunny.", "completed")
    turns = output_messages([call, message])
    assert turns[0].tool_calls[0].id == "c1" and turns[0].content is None
    assert (turns[1].role, turns[1].content) == ("assistant", "Sunny.")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_store_forgets_after_its_time_and_beyond_its_count():
    clock = Clock()
    store = ResponseStore(keep_s=60, count=2, clock=clock)
    for name in ("a", "b", "c"):
        store.put({"id": name}, [], [])
        clock.now += 10
    assert store.get("a") is None and store.get("b").body == {"id": "b"} and len(store) == 2
    clock.now = 10 + 60  # "b" was stored at 10
    assert store.get("b") is None and store.get("c") is not None


@pytest.mark.parametrize(
    ("input_", "where"),
    [
        ([{"type": "item_reference", "id": "x"}], (0,)),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], (0, "message", "content", 0, "type")),
        ([{"type": "function_call", "name": "f"}], (0, "function_call", "call_id")),
        ([{"type": "message", "content": "no role"}], (0, "message", "role")),
    ],
)
def test_input_that_cannot_be_read_is_refused_where_it_is(input_, where):
    with pytest.raises(ValidationError) as caught:
        ResponsesRequest(model="m", input=input_)
    assert caught.value.errors()[0]["loc"] == ("input", *where)


def test_a_forced_call_streams_its_arguments_from_the_first_token(monkeypatch):
    request = {"input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
    events = served_events(monkeypatch, request, pieces('{"city": "Rome"}'))
    assert kinds(events) == CALL
    assert events[2]["item"]["name"] == "get_weather" and events[2]["item"]["call_id"].startswith("call_")
    _, final = through_the_sdk(events, tools=[WEATHER])
    assert final.output[0].arguments == '{"city": "Rome"}'


CUT_CALL = '{"name": "get_weather", "arguments": {"city": "Os'


def test_a_call_cut_by_max_output_tokens_is_an_incomplete_call_streamed_and_not(monkeypatch):
    events = served_events(monkeypatch, {"input": "Weather?", "tools": [WEATHER]}, pieces(CUT_CALL, "length"))
    assert kinds(events) == [*CALL[:-1], "response.incomplete"]
    # The SDK's stream helper reads the events (its get_final_response wants response.completed).
    sse = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())
    )
    client = openai.OpenAI(base_url="http://test/v1", api_key="x", http_client=httpx.Client(transport=transport))
    with client.responses.stream(model="m", input="x", tools=[WEATHER]) as stream:
        final = list(stream)[-1].response
    [call] = final.output
    assert (final.status, final.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (call.type, call.status, call.arguments) == ("function_call", "incomplete", '{"city": "Os')
    body = ResponsesRequest(model="m", input="Weather?", tools=[WEATHER])
    plan = generation.Plan([1], {}, None, generation.tools.mode_for(chat_request(body, input_messages(body.input))))
    whole = Turn(body, "m").finished(CUT_CALL, pieces(CUT_CALL, "length")[-1], plan)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert [(item.type, item.status, item.arguments) for item in whole.output] == [
        ("function_call", "incomplete", '{"city": "Os')
    ]
    # A whole call that used the last token it was allowed is complete.
    done = Turn(body, "m").finished(CALL_TEXT, pieces(CALL_TEXT, "length")[-1], plan)
    assert done.status == "completed" and json.loads(done.output[0].arguments) == {"city": "Oslo"}


def test_usage_has_openais_details_with_the_prefix_cache_hits(monkeypatch):
    events = served_events(monkeypatch, {"input": "Hi"}, pieces("abcdef"), cached=5)
    _, final = through_the_sdk(events)
    assert final.usage.input_tokens_details.cached_tokens == 5
    assert final.usage.output_tokens_details.reasoning_tokens == 0
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 9,
    }
