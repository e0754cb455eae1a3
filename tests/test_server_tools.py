"""Grammars in the batch through the real service on SmolLM2 INT4: tool_choice auto, JSON beside free rows."""

import concurrent.futures
import json

import httpx
import jsonschema
import openai
import pytest

from tests.server_process import cached_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-tools"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": CITY},
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Two earlier turns in the call format: a 135M model needs them to reach for the tool at all.
EARLIER = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 24}'},
    {"role": "assistant", "content": "It is 24 °C in Rome."},
    {"role": "user", "content": "And the weather in Oslo?"},
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temperature_c": 8}'},
    {"role": "assistant", "content": "It is 8 °C in Oslo."},
]


@pytest.fixture(scope="module")
def oai(tmp_path_factory, smollm2_int4):
    # --prefix-cache 0: answers to one prompt are compared token for token, and a request that reuses
    # a cached prefix runs fewer positions through INT4 kernels whose rounding may differ by CPU.
    home = tmp_path_factory.mktemp("tools-home")
    process = cached_server(home, smollm2_int4, MODEL, "--parallel", "8", "--prefix-cache", "0")
    httpx.get(f"{process.url}/openai/load/{MODEL}", timeout=300).raise_for_status()  # loaded before any request
    yield openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    assert process.stop() == 0


def test_auto_answers_in_words_when_no_tool_is_needed(oai):
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=24,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content.strip() and not choice.message.content.lstrip().startswith("{")
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello"}],
            tools=[WEATHER],
            tool_choice="auto",
            max_tokens=24,
            temperature=0,
            stream=True,
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == choice.message.content and len(pieces) > 3  # streamed as it came, not held
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason


def test_auto_calls_are_valid_and_texts_are_never_broken_calls(oai):
    ask = [*EARLIER, {"role": "user", "content": "What is the weather in Paris right now?"}]

    def answer(seed):
        return oai.chat.completions.create(
            model=MODEL, messages=ask, tools=[WEATHER], tool_choice="auto", max_tokens=40, temperature=1.0, seed=seed
        ).choices[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # eight guided rows in one batch
        choices = list(pool.map(answer, range(8)))
    calls = [choice for choice in choices if choice.message.tool_calls]
    assert calls, [choice.message.content for choice in choices]
    for choice in calls:
        call = choice.message.tool_calls[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), CITY)
    for choice in choices:
        if not choice.message.tool_calls:
            assert not choice.message.content.lstrip().startswith("{")

    seed = choices.index(calls[0])
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=ask,
            tools=[WEATHER],
            tool_choice="auto",
            max_tokens=40,
            temperature=1.0,
            seed=seed,
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(
        calls[0].message.tool_calls[0].function.arguments
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_json_rows_and_free_rows_answer_together(oai):
    def ask(index):
        if index % 2:
            return (
                oai.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
            )
        return (
            oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Invent person number {index} as JSON."}],
                max_tokens=60,
                temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
            )
            .choices[0]
            .message.content
        )

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    for index, text in enumerate(answers):
        if index % 2:
            assert text == answers[1]  # the same greedy answer whatever shares its step
        else:
            jsonschema.validate(json.loads(text), PERSON)
