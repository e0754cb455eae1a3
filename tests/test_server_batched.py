"""The batched decoder on a tiny random model: chunked prefill, joins, grammars in the batch.

Deterministic: every figure is a count of rounds or decode steps, never a time.
"""

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest

import slmops
from slmops.runtime import batched
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.guided import GrammarError, grammars_for
from slmops.server import tools
from slmops.server.scheduler import DONE, Job, Scheduler
from tests.test_server_prefix import Endless, prompt

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Oslo", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    """The tiny ONNX model (context 512), loaded on one thread."""
    return slmops.load(tiny_onnx, threads=1)


def sequence(model, ids, max_new=8, matcher=None, **options) -> Sequence:
    return Sequence(
        list(ids),
        model.options(temperature=0, max_tokens=max_new, **options),
        max_new,
        time.perf_counter(),
        matcher=matcher,
    )


def endless(decoder: BatchedDecoder) -> BatchedDecoder:
    decoder.model = Endless(decoder.model)
    return decoder


def finish(decoder: BatchedDecoder) -> int:
    rounds = 0
    while decoder.busy:
        decoder.advance()
        rounds += 1
    return rounds


def alone(model, ids, max_new=8, **options) -> list[int]:
    decoder = endless(BatchedDecoder(model, 1, 512))
    solo = sequence(model, ids, max_new, **options)
    decoder.add([solo])
    finish(decoder)
    return solo.tokens


def test_a_long_prompt_prefilled_in_chunks_answers_as_in_one_piece(tiny, monkeypatch):
    ids = prompt(300)
    whole = alone(tiny, ids, 12)
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 64)
    assert alone(tiny, ids, 12) == whole
    assert whole == generator_tokens(tiny, ids, 12)


def generator_tokens(model, ids, count) -> list[int]:
    """Greedy tokens of a bare onnxruntime-genai generator, EOS or not."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model.og_model)
    params.set_search_options(max_length=512, do_sample=False)
    generator = og.Generator(model.og_model, params)
    generator.append_tokens(ids)
    tokens = []
    for _ in range(count):
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_a_joiner_waits_for_the_prefill_ahead_of_it_not_for_running_answers(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 100)
    decoder = endless(BatchedDecoder(tiny, 4, 512))
    runners = [sequence(tiny, prompt(20, seed), max_new=200) for seed in (1, 2)]
    decoder.add(runners)
    decoder.advance()
    steps = decoder.steps
    joiner = sequence(tiny, prompt(250, 3), max_new=5)
    decoder.add([joiner])
    rounds = 0
    while not joiner.tokens:
        decoder.advance()
        rounds += 1
    assert rounds == 3  # 250 prompt tokens in chunks of 100: three rounds of prefill work
    assert decoder.steps - steps == 3  # one decode step per round: the runners kept streaming...
    assert all(len(runner.tokens) == 2 + 3 for runner in runners)  # ...and are far from done
    assert joiner.row == 2 and [item.row for item in decoder.running] == [0, 1, 2]


def test_rows_stay_packed_when_a_runner_ends_during_a_chunked_prefill(tiny, monkeypatch):
    joiner_ids, short_ids, long_ids = prompt(250, 3), prompt(20, 1), prompt(20, 2)
    expected = [alone(tiny, joiner_ids, 6), alone(tiny, long_ids, 30)]
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 100)
    decoder = endless(BatchedDecoder(tiny, 3, 512))
    short = sequence(tiny, short_ids, max_new=3)
    long = sequence(tiny, long_ids, max_new=30)
    decoder.add([short, long])
    decoder.advance()
    joiner = sequence(tiny, joiner_ids, max_new=6)
    decoder.add([joiner])
    decoder.advance()  # short ends here: long moves into row 0 while the joiner fills row 2
    assert short.tokens and short not in decoder.running and long.row == 0 and joiner.row == 2
    finish(decoder)
    assert [joiner.tokens, long.tokens] == expected


def test_a_cancelled_joiner_leaves_the_queue(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 100)
    decoder = endless(BatchedDecoder(tiny, 2, 512))
    first, second = sequence(tiny, prompt(250, 1)), sequence(tiny, prompt(30, 2), max_new=3)
    decoder.add([first, second])
    decoder.advance()
    decoder.cancel(first)  # half prefilled
    assert decoder.free == 1
    finish(decoder)
    assert not first.tokens and second.tokens == alone(tiny, second.prompt, 3)


def test_scheduler_gives_a_joiner_its_first_token_within_its_prefill_rounds(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 100)
    decoder = endless(BatchedDecoder(tiny, 4, 512))
    seen = {}

    def observe(job, response):
        seen.setdefault(id(job), decoder.steps)

    async def scenario():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, max_queue=4, observer=observe, decoder=decoder)

        def job(ids, max_new):
            return scheduler.submit(Job(None, loop, sequence=sequence(tiny, ids, max_new)))

        runners = [job(prompt(20, seed), 150) for seed in (1, 2)]
        # Both runners decoding first: on a busy machine this thread may submit the second one
        # late, and a joiner queued behind its prefill would wait a round more.
        while decoder.steps < 5 or len(decoder.running) < 2:
            await asyncio.sleep(0.005)
        # Read and submit under the scheduler's lock: a busy machine may pause this thread between
        # the two for several of the tiny model's sub-millisecond rounds.
        with scheduler.wake:
            submitted = decoder.steps
            joiner = job(prompt(250, 3), 4)
        answer = [item async for item in _drain(joiner)]
        running = sum(1 for runner in runners if len(runner.sequence.tokens) < 150)
        scheduler.close()
        return submitted, seen[id(joiner)], answer, running

    submitted, first, answer, running = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert len(answer) == 4 and running == 2
    assert first - submitted <= 3 + 1  # three rounds of prefill, plus the round under way at submission


def test_a_burst_gets_its_first_tokens_group_by_group_before_the_first_decode_step(tiny):
    burst_ids = [prompt(30, seed) for seed in range(4)]
    expected = [alone(tiny, ids, 5) for ids in burst_ids]
    decoder = endless(BatchedDecoder(tiny, 4, 512))
    burst = [sequence(tiny, ids, max_new=5) for ids in burst_ids]
    decoder.add(burst)
    pieces = decoder.round()
    first = next(pieces)  # 2 x 30 tokens fill a group of 64; the other two still wait for theirs
    assert [item[0] for item in first] == burst[:2] and not burst[2].tokens and decoder.pending
    assert [item[0] for item in next(pieces)] == burst[2:] and decoder.steps == 0
    assert len(next(pieces)) == 4 and decoder.steps == 1  # then one decode step for all of them
    assert next(pieces, None) is None
    finish(decoder)
    assert [item.tokens for item in burst] == expected


def test_a_round_prefills_at_most_its_budget_before_the_decode_step(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 100)
    decoder = endless(BatchedDecoder(tiny, 6, 512))
    decoder.add([sequence(tiny, prompt(30, seed), max_new=5) for seed in range(6)])
    decoder.advance()  # groups of 60 and 60 tokens reach the budget of 100: the last two wait
    assert len(decoder.running) == 4 and len(decoder.pending) == 2 and decoder.steps == 1


def test_scheduler_hands_out_a_groups_first_tokens_before_the_next_group_runs(tiny):
    decoder = endless(BatchedDecoder(tiny, 4, 512))
    prefilled_at_first_token = {}

    def observe(job, response):
        prefilled_at_first_token.setdefault(id(job), decoder.prompt_tokens_run)

    async def scenario():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, max_queue=4, observer=observe, decoder=decoder)
        with scheduler.wake:  # all four arrive together, before the scheduler's first round
            jobs = [
                scheduler.submit(Job(None, loop, sequence=sequence(tiny, prompt(30, seed), 3))) for seed in range(4)
            ]
        for job in jobs:
            _ = [item async for item in _drain(job)]
        scheduler.close()
        return [prefilled_at_first_token[id(job)] for job in jobs]

    assert asyncio.run(asyncio.wait_for(scenario(), 120)) == [60, 60, 120, 120]


async def _drain(job):
    while (item := await job.queue.get()) is not DONE:
        yield item


# ---- grammars in the batch -----------------------------------------------------


def test_guided_and_free_rows_share_a_step(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    assert grammars is not None
    free_ids, guided_ids = prompt(12, 5), prompt(15, 6)
    expected = alone(tiny, free_ids, 20)
    decoder = endless(BatchedDecoder(tiny, 3, 512))
    guided = [
        sequence(tiny, guided_ids, 60, grammars.matcher(tools.grammar(CITY))),
        sequence(tiny, prompt(9, 7), 60, grammars.matcher(tools.grammar({"type": "object"}))),
    ]
    free = sequence(tiny, free_ids, 20)
    decoder.add([guided[0], free, guided[1]])
    finish(decoder)
    assert free.tokens == expected  # a neighbour's grammar never reaches another row
    answer = tiny.decode(guided[0].tokens)
    jsonschema.validate(json.loads(answer), CITY)
    assert ": " in answer and "\n" not in answer  # the compact layout of tools.grammar
    assert guided[0].tokens[-1] not in tiny.stop_token_ids  # complete grammar: ended without EOS


def test_an_invalid_grammar_is_a_usage_error(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    with pytest.raises(GrammarError):
        grammars.matcher(("json_schema", '{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}'))
    with pytest.raises(GrammarError, match="Unknown grammar"):
        grammars.matcher(("yaml", "x"))


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
SAY = {
    "type": "function",
    "function": {
        "name": "say",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 12}},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
}


def auto_mode():
    from slmops.server.protocol import ChatRequest

    request = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER, SAY])
    return tools.mode_for(request)


def fake_decode(grammars, matcher, first_text: str, steps: int = 80, seed: int = 0) -> str:
    """Greedy decoding of random logits under ``matcher``, pushed to open with ``first_text``."""
    rng = np.random.default_rng(seed)
    masks, tokens = grammars.masks(1), []
    wanted = grammars.tokenizer.tokenize_str(first_text)[0]
    for _ in range(steps):
        grammars.fill([(matcher, 0)], masks)
        logits = rng.normal(size=grammars.vocab).astype(np.float32)
        if not tokens:
            logits[wanted] += 100.0
        token = int(np.argmax(grammars.apply(logits, masks[0])))
        if token in grammars.tokenizer.eos_tokens:
            break
        assert matcher.consume_token(token), matcher.get_error()
        tokens.append(token)
        if matcher.is_stopped():
            break
    return grammars.tokenizer.decode_str(tokens)


def test_auto_tool_choice_forces_a_valid_call_once_the_model_opens_one(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    mode = auto_mode()
    for seed in range(3):
        text = fake_decode(grammars, grammars.matcher(mode.guidance()), "{", seed=seed)
        calls = mode.calls(text)
        assert calls and calls[0].function.name in ("get_weather", "say"), text
        schema = {"get_weather": CITY, "say": SAY["function"]["parameters"]}[calls[0].function.name]
        jsonschema.validate(json.loads(calls[0].function.arguments), schema)


def test_auto_tool_choice_text_can_never_open_a_call(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    mode = auto_mode()
    text = fake_decode(grammars, grammars.matcher(mode.guidance()), "Hello", steps=15)
    assert text.startswith("H") and mode.calls(text) is None and "{" not in text[:1]
    matcher = grammars.matcher(mode.guidance())
    masks = grammars.masks(1)
    for token in grammars.tokenizer.tokenize_str(" \n"):
        assert matcher.consume_token(token)
    grammars.fill([(matcher, 0)], masks)
    allowed = np.unpackbits(masks[0].view(np.uint8), bitorder="little")[: grammars.vocab].astype(bool)
    brace = grammars.tokenizer.tokenize_str("{")[0]
    assert allowed[brace]  # after blanks, '{' still opens a call (whose JSON the grammar then holds)
    assert not allowed[list(tiny.stop_token_ids)].any()  # an empty answer is neither text nor call


def test_grammars_need_the_tokenizer_file(tmp_path):
    model = SimpleNamespace(genai_config={"model": {"vocab_size": 8}}, path=Path(tmp_path), stop_token_ids={2})
    assert grammars_for(model) is None  # such a model's guided requests use the generator instead


@pytest.mark.parametrize("step", [1, 4, 100])
def test_an_auto_answer_streams_as_words_or_as_one_call(step):
    mode = auto_mode()

    def stream(text):
        answer, deltas = tools.AnswerStream(mode), []
        for start in range(0, len(text), step):
            deltas += answer.feed(text[start : start + step])
        return answer, deltas + answer.close()

    answer, deltas = stream('{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}')
    calls = [delta["tool_calls"][0] for delta in deltas]
    assert answer.called and calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Oslo", "days": 3}
    assert step > 50 or len(calls) > 2  # the arguments arrive as they are generated
    answer, deltas = stream(" It is sunny {in} Oslo.")
    assert not answer.called and "".join(delta["content"] for delta in deltas) == " It is sunny {in} Oslo."
    assert step > 50 or len(deltas) > 2  # words are not held back
    answer, deltas = stream('{"name": "get_weather", "arguments": {"city": "Os')  # cut by max_tokens
    assert answer.called and "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas) == '{"city": "Os'
