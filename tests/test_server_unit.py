"""The service's parts without a model: scheduler, request parsing, errors, tools, sizes, the port."""

import asyncio
import socket
import threading
import time

import pytest
from pydantic import ValidationError

from slmops import client
from slmops.errors import ServiceError, UsageError
from slmops.runtime.generate import Response
from slmops.server import tools
from slmops.server.commands import parse_size
from slmops.server.errors import validation_error
from slmops.server.generation import options_for
from slmops.server.metrics import Metrics
from slmops.server.protocol import ChatRequest, CompletionRequest
from slmops.server.run import bind
from slmops.server.scheduler import DONE, Job, QueueFull, Scheduler


def fake_stream(tokens: int, delay: float = 0.0, log: list | None = None, tag: str = ""):
    """A token stream like the runtime's, one step per next(); ``log`` records (tag, step)."""
    for index in range(tokens):
        time.sleep(delay)
        if log is not None:
            log.append((tag, index))
        yield Response(f"{tag}{index} ", index, 3, index + 1, 0.0, 0.0, 0.0, "length" if index == tokens - 1 else None)


async def drain(job: Job) -> list:
    items = []
    while (item := await job.queue.get()) is not DONE:
        items.append(item)
    return items


def test_new_sequence_starts_while_others_decode():
    async def main():
        log: list = []
        scheduler = Scheduler("m", parallel=4, max_queue=4)
        loop = asyncio.get_running_loop()
        long = scheduler.submit(Job(fake_stream(200, 0.002, log, "a"), loop))
        await asyncio.sleep(0.05)
        short = scheduler.submit(Job(fake_stream(3, 0.002, log, "b"), loop))
        first_short = await drain(short)
        long_items = await drain(long)
        scheduler.close()
        return log, first_short, long_items

    log, short, long = asyncio.run(main())
    assert [item.text for item in short] == ["b0 ", "b1 ", "b2 "]
    assert len(long) == 200
    first_b = log.index(("b", 0))
    last_a = max(index for index, (tag, _) in enumerate(log) if tag == "a")
    assert first_b < last_a  # b ran while a was still decoding, not after it
    # Interleaved: b's 3 steps took at most a few of a's steps.
    assert log.index(("b", 2)) - first_b <= 6


def test_queue_full_and_cancel_frees_the_slot():
    async def main():
        loop = asyncio.get_running_loop()
        gate = threading.Event()

        def blocked():
            gate.wait(5)
            yield from fake_stream(1000, 0.001)

        scheduler = Scheduler("m", parallel=1, max_queue=1)
        running = scheduler.submit(Job(blocked(), loop))
        waiting = scheduler.submit(Job(fake_stream(2), loop))
        with pytest.raises(QueueFull):
            scheduler.submit(Job(fake_stream(2), loop))
        gate.set()
        await running.queue.get()
        running.cancel()
        start = time.perf_counter()
        assert len(await drain(waiting)) == 2
        freed = time.perf_counter() - start
        scheduler.close()
        return freed, scheduler.active

    freed, active = asyncio.run(main())
    assert freed < 1.0
    assert active == 0


def test_a_failing_sequence_does_not_stop_the_others():
    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=2, max_queue=0)
        bad = scheduler.submit(Job(broken_after_one(), loop))
        good = scheduler.submit(Job(fake_stream(5), loop))
        results = await drain(bad), await drain(good)
        scheduler.close()
        return bad, results

    def broken_after_one():
        yield Response("x", 1, 1, 1, 0, 0, 0, None)
        raise RuntimeError("kernel failed")

    bad, (bad_items, good_items) = asyncio.run(main())
    assert isinstance(bad.error, RuntimeError)
    assert len(bad_items) == 1 and len(good_items) == 5


def test_chat_request_validation():
    ok = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], stop="x", unknown_field=1)
    assert ok.stop == "x"
    for bad in (
        {"messages": []},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"temperature": 3},
        {"n": 17},
        {"top_logprobs": 21},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"max_tokens": 0},
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **bad}
        with pytest.raises(ValidationError):
            ChatRequest(**body)
    for prompt in ([], [[]], [-1], ["a", 1], [[1], "a"]):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt=prompt)
    assert CompletionRequest(model="m", prompt=[[1, 2], [3]], max_tokens=0).max_tokens == 0


def test_validation_errors_name_the_field_and_bad_json_is_422():
    try:
        ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], temperature=9)
    except ValidationError as exc:
        error = validation_error([{**exc.errors()[0], "loc": ("body", *exc.errors()[0]["loc"])}])
    assert error.status == 400 and error.param == "temperature"
    assert validation_error([{"type": "json_invalid", "loc": ("body", 0), "msg": "bad"}]).status == 422


def test_options_map_openai_names_onto_the_runtime():
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], random_seed=7, stop="END")
    options = options_for(request, 9)
    assert options["seed"] == 7 and options["max_tokens"] == 9
    assert options["repetition_penalty"] is None
    assert options["stop"] == ("END",)
    explicit = ChatRequest(
        model="m", messages=[{"role": "user", "content": "x"}], seed=1, random_seed=2, repetition_penalty=1.1
    )
    assert options_for(explicit)["seed"] == 1 and options_for(explicit)["repetition_penalty"] == 1.1


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}


def test_tool_modes_and_their_grammars():
    def mode(**fields):
        return tools.mode_for(ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], **fields))

    assert mode(tools=[WEATHER], tool_choice="none") is None
    auto = mode(tools=[WEATHER]).guidance()  # auto: free text or a call, as a Lark grammar
    assert auto[0] == "lark_grammar" and "%json" in auto[1] and '"city"' in auto[1]
    forced = mode(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "weather"}})
    assert forced.forced == "weather" and '"city"' in forced.guidance()[1]
    assert forced.calls('{"city": "Oslo"}')[0].function.arguments == '{"city": "Oslo"}'
    either = mode(tools=[WEATHER, TIME], tool_choice="required")
    assert either.forced is None and "anyOf" in either.guidance()[1]
    call = either.calls('{"name": "time", "arguments": {}}')[0]
    assert call.function.name == "time" and call.id.startswith("call_")
    assert either.calls("just text") is None
    with pytest.raises(Exception, match="not in tools"):
        mode(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(Exception, match="needs tools"):
        mode(tool_choice="required")


def chat_answer(monkeypatch, text: str, finish: str, stream: bool, **fields) -> dict:
    """The chat choice (or, streamed, its joined deltas and finish reason) when the model answers ``text``."""
    from slmops.server import choices, generation, openai_api

    answer = [
        Response(text[start : start + 4], 0, 5, 1, 0.0, 0.0, 0.0, finish if start + 4 >= len(text) else None)
        for start in range(0, len(text), 4)
    ]

    async def fake_responses(job, strip_leading=False):
        for response in answer:
            yield response

    monkeypatch.setattr(generation, "responses", fake_responses)
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER, TIME], **fields)
    plan = generation.Plan([1], {}, None, tools.mode_for(request))
    if not stream:
        collected = choices.Collected(text, answer[-1])
        return openai_api._chat_choice(0, collected, plan, None).model_dump()

    async def chunks():
        return [chunk async for chunk in openai_api._chat_chunks(None, plan, {}, False)]

    choice_chunks = [chunk["choices"][0] for chunk in asyncio.run(chunks())]
    calls = [call for chunk in choice_chunks for call in chunk["delta"].get("tool_calls", [])]
    return {
        "content": "".join(chunk["delta"].get("content") or "" for chunk in choice_chunks),
        "names": [call["function"]["name"] for call in calls if "id" in call],
        "arguments": "".join(call["function"].get("arguments", "") for call in calls),
        "finish_reason": choice_chunks[-1]["finish_reason"],
    }


CUT = '{"name": "weather", "arguments": {"city": "Os'
WHOLE = '{"name": "weather", "arguments": {"city": "Oslo"}}'


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_call_cut_by_max_tokens_finishes_with_length(monkeypatch, choice):
    found = chat_answer(monkeypatch, CUT, "length", False, tool_choice=choice)
    assert found["finish_reason"] == "length" and found["message"]["content"] is None
    [call] = found["message"]["tool_calls"]
    assert (call["function"]["name"], call["function"]["arguments"]) == ("weather", '{"city": "Os')
    streamed = chat_answer(monkeypatch, CUT, "length", True, tool_choice=choice)
    assert streamed == {"content": "", "names": ["weather"], "arguments": '{"city": "Os', "finish_reason": "length"}
    # A whole call is one to run, even when it used the last token it was allowed.
    assert chat_answer(monkeypatch, WHOLE, "length", False, tool_choice=choice)["finish_reason"] == "tool_calls"
    assert chat_answer(monkeypatch, WHOLE, "length", True, tool_choice=choice)["finish_reason"] == "tool_calls"
    # Cut before the name is whole, the answer is what was generated, as text.
    head = chat_answer(monkeypatch, '{"name": "wea', "length", False, tool_choice=choice)
    assert (head["message"]["content"], head["finish_reason"]) == ('{"name": "wea', "length")


def test_a_forced_call_cut_by_max_tokens_finishes_with_length(monkeypatch):
    named = {"tool_choice": {"type": "function", "function": {"name": "weather"}}}
    found = chat_answer(monkeypatch, '{"city": "Os', "length", False, **named)
    assert found["finish_reason"] == "length" and found["message"]["tool_calls"][0]["function"]["arguments"] == (
        '{"city": "Os'
    )
    streamed = chat_answer(monkeypatch, '{"city": "Os', "length", True, **named)
    assert (streamed["arguments"], streamed["finish_reason"]) == ('{"city": "Os', "length")
    assert chat_answer(monkeypatch, '{"city": "Oslo"}', "stop", True, **named)["finish_reason"] == "tool_calls"
    assert chat_answer(monkeypatch, '{"city": "Oslo"}', "stop", False, **named)["finish_reason"] == "tool_calls"


def test_the_tool_prompt_joins_a_system_message_given_as_text_parts():
    mode = tools.mode_for(ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]))
    parts = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Use metric units."}]
    system = tools.with_tool_prompt([{"role": "system", "content": parts}, {"role": "user", "content": "x"}], mode)[0]
    assert system["content"].startswith("Be brief. Use metric units.\n\n") and '"weather"' in system["content"]
    with pytest.raises(UsageError, match="image_url"):
        tools.with_tool_prompt([{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}], mode)


def test_sizes():
    assert parse_size("4GB") == 4 << 30 and parse_size("512m") == 512 << 20 and parse_size("100") == 100
    assert parse_size(None) is None
    with pytest.raises(UsageError, match="--max-memory"):
        parse_size("lots")


def test_busy_port_is_a_one_line_error_naming_the_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ServiceError, match=rf"Port {port} .* busy; pick another with --port"):
            bind("127.0.0.1", port)
    finally:
        holder.close()


def test_no_service_means_none(slmops_home):
    assert client.loaded_models() is None
    client.state_path().parent.mkdir(parents=True)
    client.state_path().write_text('{"pid": 999999999, "port": 1}')  # a dead pid
    assert client.read_state() is None and client.loaded_models() is None
    with pytest.raises(ServiceError, match="service start"):
        client.load_model("x")


def test_metrics_text():
    metrics = Metrics()
    metrics.request("/v1/chat/completions", 200)
    metrics.token(Response("a", 1, 10, 1, 0.3, 0, 0.3), None)
    metrics.token(Response("b", 2, 10, 2, 0.3, 0, 0.35), 0.3)
    text = metrics.render(queued=2, active=1, loaded=1)
    assert 'slmops_requests_total{path="/v1/chat/completions",status="200"} 1' in text
    assert "slmops_prompt_tokens_total 10" in text and "slmops_completion_tokens_total 2" in text
    assert 'slmops_time_to_first_token_seconds_bucket{le="0.5"} 1' in text
    assert "slmops_queue_depth 2" in text and "slmops_active_sequences 1" in text


def _registry_with(*entries, budget=None):
    from slmops.server.registry import Loaded, Registry, ServerConfig

    registry = Registry(ServerConfig(max_memory=budget))
    for name, size, ttl, age in entries:
        entry = Loaded(name, object(), Scheduler(name), size, ttl)
        entry.last_used -= age
        registry.loaded[name.casefold()] = entry
    return registry


def test_idle_models_unload_after_their_ttl_and_busy_ones_stay():
    registry = _registry_with(("old", 10, 5.0, 60.0), ("fresh", 10, 600.0, 60.0), ("busy", 10, 5.0, 60.0))
    registry.loaded["busy"].scheduler.waiting.append(object())  # a request waits for it
    assert registry.reap() == ["old"]
    assert sorted(registry.loaded) == ["busy", "fresh"]
    with pytest.raises(Exception, match="force=true"):
        registry.unload("busy")
    registry.loaded["busy"].scheduler.waiting.clear()
    assert registry.unload("busy", force=True) and registry.unload("fresh")
    assert not registry.unload("never-loaded")


def test_memory_budget_unloads_the_least_recently_used_first():
    registry = _registry_with(("a", 40, 600, 30.0), ("b", 40, 600, 10.0), budget=100)
    registry._make_room(50, "c")
    assert list(registry.loaded) == ["b"]
    with pytest.raises(Exception, match="more than --max-memory"):
        registry._make_room(101, "huge")
    registry.loaded["b"].scheduler.waiting.append(object())
    with pytest.raises(Exception, match="busy"):
        registry._make_room(70, "d")
    registry.loaded["b"].scheduler.waiting.clear()
    registry.unload_all()
