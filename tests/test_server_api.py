"""The official openai client (and raw HTTP) against a real `slmops serve` on SmolLM2 INT4.

One server process for the module; the model is in its cache and loads on the
first request.
"""

import asyncio
import json
import time

import httpx
import jsonschema
import openai
import pytest

from tests.server_process import cached_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-test"
HI = [{"role": "user", "content": "What is the capital of France?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_int4):
    # The first request loads the model; a busy machine may take longer than the default --load-wait.
    # --prefix-cache 0: answers of repeated requests are compared token for token, and a request that
    # reuses a cached prefix runs fewer positions through INT4 kernels whose rounding may differ by CPU
    # (tests/test_server_prefix.py covers reuse).
    process = cached_server(
        tmp_path_factory.mktemp("server-home"),
        smollm2_int4,
        MODEL,
        "--parallel",
        "8",
        "--max-queue",
        "16",
        "--load-wait",
        "120",
        "--prefix-cache",
        "0",
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_loads_the_cached_model_and_counts_usage(oai, server):
    answer = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=16, temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 16
    count = httpx.post(
        server.url + "/v1/chat/completions/tokenizer/encode/count", json={"model": MODEL, "messages": HI}
    ).json()
    assert answer.usage.prompt_tokens == count["tokenCount"] > 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    short = oai.chat.completions.create(model=MODEL, messages=HI, max_completion_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_stream_matches_the_whole_answer(oai):
    whole = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=24, temperature=0)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_ends_with_done(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True},
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in answer.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_batched_answer_equals_the_in_process_runtime(oai, smollm2_int4):
    from slmops.runtime import load

    local = load(smollm2_int4).generate("The three primary colors are", max_tokens=24, temperature=0)
    served = oai.completions.create(model=MODEL, prompt="The three primary colors are", max_tokens=24, temperature=0)
    assert served.choices[0].text == local.text
    assert served.usage.completion_tokens == local.completion_tokens


def test_completions_and_stop_strings(oai):
    free = oai.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert "5" in free.choices[0].text
    stopped = oai.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=["6"])
    assert "6" not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    assert free.choices[0].text.startswith(stopped.choices[0].text)
    streamed = oai.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == free.choices[0].text


def test_seed_reproduces_a_sampled_answer(oai, server):
    def sample(**seed):
        return (
            oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=20, temperature=1.0, **seed)
            .choices[0]
            .message.content
        )

    first, again = sample(seed=42), sample(seed=42)
    assert first == again
    foundry = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": HI, "max_tokens": 20, "temperature": 1.0, "random_seed": 42},
    ).json()
    assert foundry["choices"][0]["message"]["content"] == first
    assert len({sample(seed=s) for s in (1, 2, 3)}) > 1


def test_json_schema_answer_validates(oai):
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    ask = [{"role": "user", "content": "Reply with a JSON object holding the key ok set to true."}]
    loose = oai.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=100, temperature=0, response_format={"type": "json_object"}
    )
    assert loose.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_tool_call_streamed_and_not(oai):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = oai.chat.completions.create(
        model=MODEL, messages=ask, tools=[WEATHER], tool_choice="required", max_tokens=40
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=ask,
            tools=[WEATHER],
            max_tokens=40,
            stream=True,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert len(deltas) > 2  # the arguments arrive as they are generated
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    history = [
        *ask,
        {"role": "assistant", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'},
    ]
    final = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=20)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_models_and_names_that_leave_the_cache(oai, server):
    assert MODEL in [m.id for m in oai.models.list().data]
    assert oai.models.retrieve(MODEL).id == MODEL
    for name in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%252F..%252Fetc", "../secret", "%2e%2e%2fx", "nope"):
        answer = httpx.get(f"{server.url}/v1/models/{name}")
        assert answer.status_code == 404, name
        assert answer.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="/etc/passwd", messages=HI)
    assert httpx.get(f"{server.url}/openai/load/..%2F..%2Fetc").status_code == 404


def test_client_errors_have_openai_shape_and_status(server):
    post = lambda body, **kw: httpx.post(server.url + "/v1/chat/completions", timeout=30, **kw)  # noqa: E731
    bad = post(None, json={"model": MODEL, "messages": HI, "temperature": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    assert post(None, content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert post(None, content=b"x" * (5 << 20), headers={"content-type": "application/json"}).status_code == 413
    assert post(None, json={"model": MODEL, "messages": HI, "stop": ["a"] * 5}).status_code == 400
    assert post(None, json={"model": MODEL, "messages": HI, "tool_choice": "required"}).status_code == 400
    too_long = post(None, json={"model": MODEL, "messages": [{"role": "user", "content": "word " * 9000}]})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/chat/completions"]


def test_management_endpoints(server):
    get = lambda path: httpx.get(server.url + path, timeout=60)  # noqa: E731
    assert MODEL in get("/openai/models").json()
    assert get(f"/openai/load/{MODEL}?ttl=120").json()["ttl"] == 120
    assert get("/openai/loadedmodels").json() == [MODEL]
    status = get("/openai/status").json()
    assert status["endpoints"] == [server.url + "/v1"] and status["modelDirPath"].startswith(str(server.home))
    assert get(f"/openai/unload/{MODEL}").json()["unloaded"] is True
    assert get("/openai/loadedmodels").json() == []
    assert get(f"/openai/load/{MODEL}").status_code == 200
    assert get("/openai/unloadall").json()["unloaded"] == [MODEL]
    assert get(f"/openai/load/{MODEL}?ttl=1").status_code == 200
    deadline = time.monotonic() + 8
    while get("/openai/loadedmodels").json():  # idle past its ttl: unloaded by the reaper
        assert time.monotonic() < deadline, "the model outlived its ttl"
        time.sleep(0.3)
    assert get("/health").json()["status"] == "ok"
    assert server.metric("slmops_loaded_models") == 0


def test_disconnect_frees_the_slot_within_a_second(server):
    # Counting never reaches an end-of-text token: only the disconnect can end this early.
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as answer:
        lines = answer.iter_lines()
        got = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert len(got) >= 3
        assert server.metric("slmops_active_sequences") == 1
    closed = time.monotonic()
    while server.metric("slmops_active_sequences") != 0:
        assert time.monotonic() - closed < 1.0, "the sequence still runs after its client left"
        time.sleep(0.05)


def test_32_concurrent_streams_complete_or_get_429_without_mixing(server):
    # Continuations the model is sure of: batching changes float sums in the last bits
    # (onnxruntime computes 1 row and several rows along different paths, in its own
    # static batches too), which may flip an uncertain word, never these.
    groups = [
        ("1, 2, 3, 4, 5,", " 6, 7, 8"),
        ("A, B, C, D, E,", " F, G, H"),
        ("one, two, three, four,", " five"),
        ("10, 20, 30, 40,", " 50"),
    ]
    lengths = [8, 16, 24, 32]

    async def one(http, index):
        body = {
            "model": MODEL,
            "prompt": groups[index % 4][0],
            "max_tokens": lengths[index // 8],
            "temperature": 0,
            "stream": True,
        }
        async with http.stream("POST", "/v1/completions", json=body) as answer:
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                return index, None
            assert answer.status_code == 200
            lines = [line async for line in answer.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        events = [json.loads(line[6:]) for line in lines[:-1]]
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return index, "".join(e["choices"][0]["text"] for e in events)

    async def run():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.wait_for(asyncio.gather(*(one(http, i) for i in range(32))), 240)

    rss_before = server.metric("slmops_process_resident_memory_bytes")
    results = asyncio.run(run())
    answered = [(index, text) for index, text in results if text is not None]
    assert len(answered) >= 24  # 8 running + 16 queued always fit; the rest may be 429
    for index, text in answered:
        expected = groups[index % 4][1]
        assert text.startswith(expected), (index, text)
        foreign = [other for _, other in groups if other != expected and other.strip() in text]
        assert not foreign, (index, text)
    assert server.metric("slmops_active_sequences") == 0 and server.metric("slmops_queue_depth") == 0
    rss_after = server.metric("slmops_process_resident_memory_bytes")
    assert rss_after < rss_before + 200 * 2**20, (rss_before, rss_after)


def test_logprobs_echo_scoring_and_n_choices(oai):
    def score(continuation: str) -> float:
        context = "The capital of France is"
        answer = oai.completions.create(model=MODEL, prompt=context + continuation, echo=True, logprobs=1, max_tokens=0)
        found = answer.choices[0].logprobs
        assert found.token_logprobs[0] is None and answer.choices[0].text == context + continuation
        return sum(value for value, offset in zip(found.token_logprobs, found.text_offset) if offset >= len(context))

    assert score(" Paris") > score(" banana") + 2
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        n=2,
        extra_body={"repetition_penalty": 1.0},  # the model's default penalty would move greedy off the top token
    )
    assert len(answer.choices) == 2 and answer.choices[0].message.content == answer.choices[1].message.content
    for entry in answer.choices[0].logprobs.content:  # greedy picks the likeliest token of the logits it reports
        assert entry.top_logprobs[0].token == entry.token and entry.logprob == entry.top_logprobs[0].logprob
    assert answer.usage.completion_tokens == 2 * len(answer.choices[0].logprobs.content) + sum(
        choice.finish_reason == "stop" for choice in answer.choices
    )
