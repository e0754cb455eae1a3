"""/v1/responses on SmolLM2 INT4: a conversation answers as on /v1/chat/completions, text or call."""

import json

import openai
import pytest

from tests.server_process import cached_server
from tests.test_server_tools import CITY, EARLIER

pytestmark = pytest.mark.slow

MODEL = "smollm2-responses"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def oai(tmp_path_factory, smollm2_int4):
    # --prefix-cache 0: a response and a chat completion of one conversation are compared token for
    # token, and a request that reuses a cached prefix runs fewer positions through INT4 kernels
    # whose rounding may differ by CPU.
    home = tmp_path_factory.mktemp("responses-smollm2")
    process = cached_server(home, smollm2_int4, MODEL, "--load-wait", "120", "--prefix-cache", "0")
    yield openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert process.stop() == 0


def test_a_response_is_the_chat_answer_whole_streamed_and_continued(oai):
    system = "You are a helpful assistant."
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
        max_tokens=24,
        temperature=0,
    )
    response = oai.responses.create(
        model=MODEL, instructions=system, input=QUESTION, max_output_tokens=24, temperature=0
    )
    assert response.output_text == chat.choices[0].message.content
    assert "Paris" in response.output_text or "France" in response.output_text  # whichever kernel runs
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    with oai.responses.stream(
        model=MODEL, instructions=system, input=QUESTION, max_output_tokens=24, temperature=0
    ) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
    assert deltas == response.output_text
    follow_up = oai.responses.create(
        model=MODEL, previous_response_id=response.id, input="And of Italy?", max_output_tokens=16, temperature=0
    )
    assert follow_up.usage.input_tokens > response.usage.input_tokens + response.usage.output_tokens


def test_a_tool_call_is_the_chat_answer_whole_and_streamed(oai):
    # "required" with two tools: the model writes the whole call in the grammar's layout, as with "auto".
    choice = "required"
    weather = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "parameters": CITY}
    time = {"type": "function", "name": "get_time", "description": "The time in a city.", "parameters": CITY}
    question = {"role": "user", "content": "What is the weather in Paris right now?"}
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[*EARLIER, question],
        tools=[
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}} for tool in (weather, time)
        ],
        tool_choice=choice,
        max_tokens=40,
        temperature=0,
    ).choices[0]
    request = {
        "model": MODEL,
        "input": [*responses_items(EARLIER), question],
        "tools": [weather, time],
        "tool_choice": choice,
        "max_output_tokens": 40,
        "temperature": 0,
    }
    response = oai.responses.create(**request)
    with oai.responses.stream(**request) as stream:
        events = list(stream)
    streamed = events[-1].response  # response.completed, or .incomplete
    call = chat.message.tool_calls[0].function
    for answer in (response, streamed):
        [item] = answer.output
        assert (item.type, item.name, item.arguments) == ("function_call", call.name, call.arguments)
    deltas = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    assert deltas == call.arguments and json.loads(deltas)["city"]


def responses_items(messages: list[dict]) -> list[dict]:
    """Chat messages with tool calls as Responses input items."""
    items = []
    for message in messages:
        if message.get("tool_calls"):
            for call in message["tool_calls"]:
                items.append({"type": "function_call", "call_id": call["id"], **call["function"]})
        elif message["role"] == "tool":
            items.append(
                {"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]}
            )
        else:
            items.append(message)
    return items
