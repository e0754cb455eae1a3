"""The Responses API (/v1/responses) through the official openai client, on a real `slmops serve`.

The model is the tiny random llama: its words are noise, so the tests check shapes,
counts, the event order and what grammars guarantee (a JSON schema, a tool call),
never the text itself.
"""

import json
from typing import Literal

import httpx
import openai
import pydantic
import pytest

from tests.server_process import cached_server

MODEL = "tiny-responses"
CITY = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "parameters": CITY}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_onnx):
    process = cached_server(tmp_path_factory.mktemp("responses-home"), tiny_onnx, MODEL, "--parallel", "2")
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_plain_input_gets_a_message_and_usage(oai):
    response = oai.responses.create(model=MODEL, input="Hello there", max_output_tokens=8, temperature=0)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and response.output_text == message.content[0].text
    usage = response.usage
    assert usage.output_tokens == 8 and usage.input_tokens > 2
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_instructions_and_message_lists_are_prompt_tokens(oai):
    def input_tokens(**request) -> int:
        return oai.responses.create(model=MODEL, max_output_tokens=1, **request).usage.input_tokens

    plain = input_tokens(input="Hello there")
    instructed = input_tokens(input="Hello there", instructions="Answer in French.")
    parts = [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}]
    assert input_tokens(input=parts) == plain
    assert instructed > plain


def test_json_schema_answer_completes_and_validates(oai):
    response = oai.responses.create(
        model=MODEL,
        input="Where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": CITY, "strict": True}},
        max_output_tokens=64,
    )
    assert response.status == "completed" and response.incomplete_details is None
    assert json.loads(response.output_text)["city"] in ("Paris", "Rome", "Oslo")
    assert response.text.format.type == "json_schema"


def test_parse_fills_output_parsed_from_a_pydantic_format(oai):
    class Place(pydantic.BaseModel):
        city: Literal["Paris", "Rome", "Oslo"]

    response = oai.responses.parse(model=MODEL, input="Where?", text_format=Place, max_output_tokens=64)
    assert isinstance(response.output_parsed, Place)
    # The output of one response is the input of the next, as the SDK's objects.
    again = oai.responses.create(
        model=MODEL, input=[*response.output, {"role": "user", "content": "Sure?"}], max_output_tokens=2
    )
    assert again.usage.input_tokens > response.usage.input_tokens


def test_a_function_call_and_its_output_round_trip(oai):
    call_response = oai.responses.create(
        model=MODEL, input="Weather in Rome?", tools=[WEATHER], tool_choice="required", max_output_tokens=64
    )
    [call] = call_response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome", "Oslo")
    follow_up = [
        {"role": "user", "content": "Weather in Rome?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 24}'},
    ]
    answer = oai.responses.create(
        model=MODEL, input=follow_up, tools=[WEATHER], tool_choice="none", max_output_tokens=4
    )
    assert answer.output[0].type == "message"
    # The call and its result are part of the prompt: the follow-up is longer than the question alone.
    alone = oai.responses.create(model=MODEL, input="Weather in Rome?", max_output_tokens=1)
    assert answer.usage.input_tokens > alone.usage.input_tokens + 10
    # The same follow-up after previous_response_id: the stored turn holds the question and the call.
    chained = oai.responses.create(
        model=MODEL,
        previous_response_id=call_response.id,
        input=[follow_up[-1]],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=4,
    )
    assert chained.usage.input_tokens == answer.usage.input_tokens


def test_previous_response_id_continues_the_conversation_and_retrieve_returns_it(oai):
    first = oai.responses.create(model=MODEL, input="Hello there", max_output_tokens=4, temperature=0)
    second = oai.responses.create(
        model=MODEL, input="And again", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    alone = oai.responses.create(model=MODEL, input="And again", max_output_tokens=4, temperature=0)
    # The earlier input and the 4 tokens answered to it come before the new input.
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.input_tokens
    assert second.previous_response_id == first.id
    fetched = oai.responses.retrieve(second.id)
    assert fetched.model_dump() == second.model_dump()


def test_unknown_ids_are_404_in_openai_shape(oai, server):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.retrieve("resp_missing")
    assert caught.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.create(model=MODEL, input="Hi", previous_response_id="resp_missing", max_output_tokens=2)
    assert caught.value.body["param"] == "previous_response_id"
    answer = httpx.get(server.url + "/v1/responses/resp_missing")
    assert answer.status_code == 404 and set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_store_false_keeps_nothing(oai):
    unstored = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include.0"),
        ({"max_tool_calls": 0}, "max_tool_calls"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"frequency_penalty": 1}, "frequency_penalty"),  # not a Responses parameter at all
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.message.content.0.type",
        ),
    ],
)
def test_what_would_change_the_answer_and_is_not_implemented_is_a_400_naming_it(oai, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2, extra_body=extra)
    assert caught.value.body["param"] == param


def test_harmless_parameters_are_accepted(oai):
    response = oai.responses.create(
        model=MODEL,
        input="Hi",
        max_output_tokens=2,
        user="someone",
        metadata={"ticket": "42"},
        store=True,
        parallel_tool_calls=False,
        truncation="disabled",
        service_tier="auto",
        include=["reasoning.encrypted_content"],
        reasoning={"effort": None},
        top_logprobs=0,
    )
    assert response.metadata == {"ticket": "42"} and response.parallel_tool_calls is False


def test_stream_helper_gives_the_deltas_and_the_final_response(oai):
    schema = {"format": {"type": "json_schema", "name": "place", "schema": CITY}}
    with oai.responses.stream(model=MODEL, input="Where?", text=schema, max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.status == "completed" and final.output_text == deltas
    assert json.loads(deltas)["city"] in ("Paris", "Rome", "Oslo")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert oai.responses.retrieve(final.id).output_text == deltas


def test_a_streamed_call_gives_its_arguments_as_deltas(oai):
    with oai.responses.stream(
        model=MODEL, input="Weather?", tools=[WEATHER], tool_choice="required", max_output_tokens=64
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    [call] = final.output
    pieces = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    assert call.type == "function_call" and call.arguments == pieces
    assert json.loads(pieces)["city"] in ("Paris", "Rome", "Oslo")
    done = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == pieces


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(oai):
    stream = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=3, stream=True)
    events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 3
    assert events[-1].response.output[0].status == "incomplete"


def test_input_items_are_listed_a_page_at_a_time(oai):
    given = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Rome?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "24"},
    ]
    response = oai.responses.create(model=MODEL, input=given, max_output_tokens=1)
    newest_first = list(oai.responses.input_items.list(response.id, limit=3))  # two pages, followed by the SDK
    assert [item.type for item in newest_first] == ["function_call_output", "function_call", "message", "message"]
    assert len({item.id for item in newest_first}) == 4
    in_order = oai.responses.input_items.list(response.id, order="asc")
    assert [item.id for item in in_order.data] == [item.id for item in reversed(newest_first)]
    assert in_order.data[1].content[0].text == "Weather in Rome?" and in_order.data[3].output == "24"
    assert not in_order.has_more


def test_a_call_cut_by_max_tokens_reports_length_on_chat_and_incomplete_here(oai):
    """Two tokens cannot hold a whole call: it is reported cut, with what was generated, never as a call to run."""
    valid = [json.dumps({"city": city}) for city in CITY["properties"]["city"]["enum"]]
    chat_tool = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}], "tools": [chat_tool]}
    choice = oai.chat.completions.create(**ask, tool_choice="required", max_tokens=2).choices[0]
    [call] = choice.message.tool_calls
    assert choice.finish_reason == "length" and call.function.name == "get_weather"
    assert any(text.startswith(call.function.arguments) and text != call.function.arguments for text in valid)
    chunks = [
        c.choices[0] for c in oai.chat.completions.create(**ask, tool_choice="required", max_tokens=2, stream=True)
    ]
    arguments = "".join(d.function.arguments or "" for c in chunks for d in c.delta.tool_calls or [])
    assert chunks[-1].finish_reason == "length" and any(text.startswith(arguments) for text in valid)
    whole = oai.responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER], tool_choice="required", max_output_tokens=2
    )
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output[0].type == "function_call" and whole.output[0].status == "incomplete"
    events = list(
        oai.responses.create(
            model=MODEL, input="Weather?", tools=[WEATHER], tool_choice="required", max_output_tokens=2, stream=True
        )
    )
    assert events[-1].type == "response.incomplete" and events[-1].response.output[0].status == "incomplete"


def test_delete_forgets_a_response_and_the_path_lists_both_methods(oai, server):
    first = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    second = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert oai.responses.delete(first.id) is None  # the SDK returns nothing; the body is OpenAI's
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.delete(first.id)
    assert caught.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=MODEL, input="Hi", previous_response_id=first.id, max_output_tokens=2)
    answer = httpx.delete(f"{server.url}/v1/responses/{second.id}")
    assert answer.status_code == 200 and answer.json() == {"id": second.id, "object": "response", "deleted": True}
    refused = httpx.put(f"{server.url}/v1/responses/{second.id}")
    assert refused.status_code == 405 and refused.json()["error"]["type"]
    assert {method.strip() for method in refused.headers["allow"].split(",")} == {"DELETE", "GET"}
