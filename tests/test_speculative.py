"""Prompt-lookup speculative decoding: the same greedy tokens as the plain loop, fewer steps.

The tiny fp32 model's greedy tokens must match the plain loop's token for token, text
pieces, stop strings, limits and finish reasons included. A random model seldom
copies, so besides the real lookup, an oracle drafts the plain answer's next tokens
with one of them wrong: every verify then accepts some tokens and rejects the rest,
which exercises acceptance and the rewind of the rejected KV on every step.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time

import pytest
from click.testing import CliRunner

import slmops
from slmops import machine
from slmops.modelfolder import draft_cost
from slmops.runtime import speculative
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.options import GenerationOptions
from slmops.runtime.speculative import MAX_DRAFT, DraftPolicy, PromptLookup, RowDrafts

COPY = (
    "Copy this exactly: The quick brown fox jumps over the lazy dog. Hello world, this is a test of a tiny "
    "tokenizer. Convert, cache, run, serve, benchmark and validate small language models on a CPU. "
)
PROMPTS = [COPY * 2, "Hello world", "Příliš žluťoučký kůň úpěl ďábelské ódy. " * 3]


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def stream(model, prompt, **options) -> list[tuple]:
    return [(r.token, r.text, r.finish_reason) for r in model.stream_generate(prompt, temperature=0, **options)]


@pytest.fixture
def oracle(tiny, monkeypatch):
    """Drafts from the plain answer to ``prompt``: its next tokens, one of them wrong."""

    def use(prompt, size: int = 6, **options) -> list[int]:
        plain = tiny.generate(prompt, temperature=0, speculative=False, **options)
        ids = tiny._completion_ids(prompt)
        picker = random.Random(0)

        def draft(lookup, most, after=None):
            done = len(lookup.tokens) - len(ids) + len(after or ())
            tokens = plain.tokens[done : done + most]
            if tokens and picker.random() < 0.7:  # else the whole draft is right
                wrong = picker.randrange(len(tokens))
                tokens[wrong] = (tokens[wrong] + 1) % 500
            return tokens

        monkeypatch.setattr(PromptLookup, "draft", draft)
        monkeypatch.setattr(DraftPolicy, "next_size", lambda self: size)
        return plain.tokens

    return use


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_tokens_are_the_plain_loops(tiny, prompt, penalty):
    plain = stream(tiny, prompt, max_tokens=150, repetition_penalty=penalty, speculative=False)
    assert stream(tiny, prompt, max_tokens=150, repetition_penalty=penalty) == plain


@pytest.mark.parametrize("size", [1, 4, MAX_DRAFT])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_verified_drafts_keep_the_plain_tokens(tiny, oracle, size, penalty):
    oracle(COPY, size, max_tokens=80, repetition_penalty=penalty)
    plain = stream(tiny, COPY, max_tokens=80, repetition_penalty=penalty, speculative=False)
    assert stream(tiny, COPY, max_tokens=80, repetition_penalty=penalty) == plain
    result = tiny.generate(COPY, temperature=0, max_tokens=80, repetition_penalty=penalty)
    assert result.drafted_tokens > result.accepted_tokens > 0
    assert result.completion_tokens == 80


def test_stop_strings_and_limits_end_where_the_plain_loop_does(tiny, oracle):
    tokens = oracle(COPY, 8, max_tokens=60)
    text = tiny.decode(tokens)
    for stop in [text[10:14], text[30:33], "no such text"]:
        for limit in [1, 7, 60]:
            plain = stream(tiny, COPY, max_tokens=limit, stop=[stop], speculative=False)
            assert stream(tiny, COPY, max_tokens=limit, stop=[stop]) == plain, (stop, limit)


def test_a_full_context_ends_where_the_plain_loop_does(tiny, oracle):
    ids = tiny.completion_ids(COPY * 10)
    prompt = ids[: tiny.context_length - 20]  # 20 tokens of room: drafts must stop short of the end
    oracle(prompt, MAX_DRAFT)
    plain = stream(tiny, prompt, speculative=False)
    assert stream(tiny, prompt) == plain
    assert plain[-1][2] == "length" and len(plain) == 20


def test_a_conversation_speculates_and_keeps_its_tokens(tiny):
    turns = [{"role": "user", "content": COPY}]
    answers = []
    for spec in (False, True):
        conversation = tiny.conversation(temperature=0, max_tokens=40, speculative=spec)
        first = [r.token for r in conversation.stream(turns)]
        follow = [*turns, {"role": "assistant", "content": tiny.decode(first)}, {"role": "user", "content": COPY}]
        answers.append((first, [r.token for r in conversation.stream(follow)]))
    assert answers[0] == answers[1]


def test_speculative_false_and_sampling_decode_one_token_per_step(tiny, oracle):
    oracle(COPY, 4, max_tokens=30)
    assert tiny.generate(COPY, temperature=0, max_tokens=30).drafted_tokens > 0
    assert tiny.generate(COPY, temperature=0, max_tokens=30, speculative=False).drafted_tokens == 0
    assert tiny.generate(COPY, temperature=0.8, seed=1, max_tokens=30).drafted_tokens == 0
    assert (
        tiny.chat([{"role": "user", "content": COPY}], temperature=0, max_tokens=30, speculative=False).drafted_tokens
        == 0
    )
    assert "".join(tiny.stream([{"role": "user", "content": COPY}], temperature=0, max_tokens=5, speculative=False))


def test_only_greedy_answers_speculate():
    greedy = GenerationOptions(temperature=0.0, repetition_penalty=1.2)
    assert speculative.applies(greedy)
    assert not speculative.applies(greedy.replace(temperature=0.5))
    assert not speculative.applies(greedy.replace(speculative=False))


CITY = '{"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}}, "required": ["city"]}'


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_a_guided_answer_speculates_with_its_grammar_and_keeps_its_tokens(tiny, penalty):
    # The plain answer follows onnxruntime-genai's guidance; the speculative one slmops' own
    # matcher, which drafts the schema's forced tokens and masks every verified position.
    guidance = ("json_schema", CITY)
    options = {"temperature": 0, "guidance": guidance, "repetition_penalty": penalty, "max_tokens": 40}
    plain = list(tiny.stream_generate(COPY, speculative=False, **options))
    drafted = list(tiny.stream_generate(COPY, **options))
    # onnxruntime-genai's guided answer ends on an end-of-text token after the grammar is complete
    # (shown as nothing); slmops' ends with the grammar, one step sooner.
    if plain[-1].text == "" and plain[-1].finish_reason == "stop":
        plain = plain[:-1]
    assert [(r.token, r.text) for r in drafted] == [(r.token, r.text) for r in plain]
    assert json.loads("".join(r.text for r in drafted))["city"] in ("Oslo", "Rome")
    assert drafted[-1].finish_reason == "stop" and drafted[-1].accepted_tokens > 0


def test_a_guided_answer_drafts_only_what_its_grammar_accepts(tiny, oracle):
    # The oracle's drafts are the plain answer with a wrong token now and then: the grammar cuts
    # each draft before its wrong token, so nothing it refuses is ever verified.
    guidance = ("json_schema", CITY)
    plain = oracle(COPY, 6, guidance=guidance, max_tokens=40)
    drafted = tiny.generate(COPY, temperature=0, guidance=guidance, max_tokens=40)
    assert drafted.tokens == plain[: len(drafted.tokens)] and drafted.finish_reason == "stop"
    assert json.loads(drafted.text)["city"] in ("Oslo", "Rome")
    assert drafted.accepted_tokens == drafted.drafted_tokens > 0


def test_lookup_drafts_from_the_occurrence_that_agrees_furthest_back():
    # (1, 2, 3) came twice: after 5, then 4; after 9, then 6. The answer's tail is 5, 1, 2, 3,
    # so the first occurrence is where it copies from, though the second is later.
    lookup = PromptLookup([5, 1, 2, 3, 4, 9, 1, 2, 3, 6, 8, 5, 1, 2, 3])
    assert lookup.draft(2) == [4, 9]
    lookup.append(7)  # the tail (2, 3, 7) is new, and so is (3, 7): nothing to draft
    assert lookup.draft(2) == []
    # on a tie the latest occurrence wins: both (1, 2, 3) agree with the tail 3 tokens back
    assert PromptLookup([0, 1, 2, 3, 4, 0, 1, 2, 3, 6, 1, 2, 3]).draft(1) == [6]


def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6])
    assert lookup.draft(3) == []  # the tail (8, 6) never came before
    for token in (2, 3):
        lookup.append(token)
    assert lookup.draft(3) == [7, 8, 6]  # (6, 2, 3) is new; (2, 3) last came before 7
    lookup = PromptLookup([1, 2, 3, 4, 5, 2, 3, 6, 1, 2, 3])
    assert lookup.draft(2) == [4, 5]  # the 3-gram (1, 2, 3) wins over the later 2-gram (2, 3)
    # past the last token, the draft goes on from its own tail: (1, 2, 3) again, then 4, 5, ...
    assert lookup.draft(20) == [4, 5, 2, 3, 6, 1, 2, 3] * 2 + [4, 5, 2, 3]
    loop = PromptLookup([7, 8, 9, 1, 2, 7, 8, 9, 1, 2, 7, 8])
    assert loop.draft(9) == [9, 1, 2, 7, 8, 9, 1, 2, 7]  # an answer caught in a loop: whole periods ahead
    assert PromptLookup([5]).draft(4) == []
    # after tokens already drafted (a grammar's forced ones), from the tail they make
    assert PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6]).draft(2, after=[2, 3]) == [7, 8]


def test_a_row_weighs_only_its_looked_up_tokens():
    row, looked_up_only = RowDrafts([1, 2, 3]), RowDrafts([1, 2, 3])
    row.looked_up = [False, False, False, True, True]  # three forced tokens, then two looked up
    row.verified(5, 3)  # the forced ones kept, the looked-up ones not
    looked_up_only.looked_up = [True, True]
    looked_up_only.verified(2, 0)
    assert (row.drafted, row.accepted) == (5, 3)
    assert vars(row.policy) == vars(looked_up_only.policy)
    assert row.policy.pause  # two looked-up tokens lost: a pause
    before = dict(vars(row.policy))
    row.looked_up = [False] * 4  # forced tokens alone leave the policy as it was
    row.verified(4, 4)
    assert vars(row.policy) == before and (row.drafted, row.accepted) == (9, 7)


def test_the_policy_grows_shrinks_and_pauses_while_drafts_cost_steps():
    policy = DraftPolicy()
    first = policy.next_size()
    assert first == speculative.FIRST_DRAFT
    policy.verified(first, first)  # all accepted: 4 tokens more for a quarter step each
    assert policy.next_size() == 2 * first
    policy.verified(2 * first, 2)  # 2 kept for 8 positions' cost: still ahead, shorter drafts
    assert policy.next_size() == 3
    policy.verified(3, 0)  # nothing kept: the gain so far is spent
    assert policy.next_size() == 1
    policy.verified(1, 0)  # a loss: pause
    pauses = [policy.next_size() for _ in range(2)]
    assert pauses[0] == 0 and pauses[1] == 1
    policy.verified(1, 0)
    assert [policy.next_size() for _ in range(3)] == [0, 0, 1]  # paused twice as long
    for _ in range(10):
        policy.verified(1, 0)
        while policy.next_size() == 0:
            pass
    assert policy.backoff <= speculative.LONGEST_PAUSE


def test_a_cheaper_drafted_position_keeps_drafting_where_a_dearer_one_pauses():
    cheap, dear = DraftPolicy(0.1), DraftPolicy(0.25)
    for policy in (cheap, dear):
        policy.verified(4, 1)  # one token gained for four positions read
        policy.verified(2, 0)
    assert cheap.next_size() == 1 and dear.next_size() == 0


def test_the_position_cost_is_the_slope_of_the_verify_times_in_plain_steps():
    assert speculative.position_cost({0: 10.0, 1: 11.0, 2: 12.0, 4: 14.0, 8: 18.0}) == 0.1
    # verifies timed below a plain step (noise) count as cheap, never as free
    assert speculative.position_cost({0: 10.0, 1: 9.0, 2: 9.5}) == 0.01


def test_a_model_drafts_by_the_cost_measured_on_its_cpu(tiny_onnx, tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, folder)
    model = slmops.load(folder, threads=1)
    assert model.position_cost == speculative.EXTRA_POSITION  # nothing measured yet
    measured = speculative.measured_draft_cost(model.og_model, model.encode(COPY))
    assert measured.cpu == machine.key() and measured.position_cost > 0
    assert set(measured.verify_ms) == {"0", *map(str, speculative.MEASURED_DRAFTS)}

    draft_cost.write(folder, dataclasses.replace(measured, position_cost=0.07))
    kept = slmops.load(folder, threads=1)
    costs = []
    original = DraftPolicy.__init__

    def spy(self, position_cost=speculative.EXTRA_POSITION):
        costs.append(position_cost)
        original(self, position_cost)

    monkeypatch.setattr(DraftPolicy, "__init__", spy)
    kept.generate(COPY, temperature=0, max_tokens=4)
    list(kept.conversation(temperature=0, max_tokens=4).stream([{"role": "user", "content": COPY}]))
    decoder = BatchedDecoder(kept, 1, 256)
    decoder.add([Sequence(kept.encode(COPY), kept.options(temperature=0, max_tokens=4), 4, time.perf_counter())])
    while decoder.busy:
        decoder.advance()
    assert costs == [0.07, 0.07, 0.07]  # generate, a conversation, a batch row

    draft_cost.write(folder, dataclasses.replace(measured, cpu="another CPU [avx2]"))
    assert slmops.load(folder, threads=1).position_cost == speculative.EXTRA_POSITION
    (folder / draft_cost.FILENAME).write_text("{not json", encoding="utf-8")
    assert slmops.load(folder, threads=1).position_cost == speculative.EXTRA_POSITION


def test_an_answer_drafts_the_same_way_whatever_the_clock(tiny, monkeypatch):
    # On INT4 models the positions a verify reads go through another kernel than a plain step,
    # so which positions are verified must not follow the clock, or greedy answers would vary.
    plain = tiny.generate(COPY, temperature=0, max_tokens=120, speculative=False).tokens
    start = len(tiny.completion_ids(COPY))

    def draft(lookup, most):  # the plain answer's next tokens, wrong at some positions
        done = len(lookup.tokens) - start
        return [token + (done + index) % 5 // 4 for index, token in enumerate(plain[done : done + most])]

    def drafted() -> tuple[int, int]:
        result = tiny.generate(COPY, temperature=0, max_tokens=120)
        assert result.tokens == plain
        return result.drafted_tokens, result.accepted_tokens

    monkeypatch.setattr(PromptLookup, "draft", draft)
    first = drafted()
    clock = random.Random(3)
    monkeypatch.setattr(time, "perf_counter", lambda: clock.random() * 1000)
    assert drafted() == first and first[0] > 0


def test_no_speculative_reaches_the_model_run_options(tiny_onnx, monkeypatch):
    from slmops.cli import cli

    seen = []
    original = slmops.runtime.model.Model.stream_generate

    def spy(self, prompt, start=None, guidance=None, **options):
        seen.append(options.get("speculative"))
        return original(self, prompt, start, guidance, **options)

    monkeypatch.setattr(slmops.runtime.model.Model, "stream_generate", spy)
    for flags, expected in [(["--no-speculative"], False), ([], None)]:
        done = CliRunner().invoke(cli, ["model", "run", str(tiny_onnx), "-p", "Hi", "--max-tokens", "3", *flags])
        assert done.exit_code == 0, done.output
        assert seen.pop() is expected


# ---- SmolLM2 INT4 ---------------------------------------------------------------

PASSAGE = (
    "The lighthouse at Carrow Point was built in 1868 to guide fishing boats past the reef that lies half a "
    "mile off the northern shore. For almost a century its keepers lived in the small stone cottage beside "
    "the tower, climbing the one hundred and twelve steps every evening to light the lamp."
)
INT4_PROMPTS = [
    f"Repeat the following passage exactly, word for word:\n\n{PASSAGE}",
    f"Rewrite this passage with its spelling mistakes corrected:\n\n{PASSAGE.replace('guide', 'giude')}",
    f"List every number in this passage as a JSON array of strings:\n\n{PASSAGE}",
    "Write a short story about a cat who learns to sail.",
]


def plain_agreement(model, ids: list[int], tokens: list[int]) -> int:
    """How many of ``tokens`` the plain one-token-per-step loop picks itself after the ones before them."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model.og_model)
    params.set_search_options(max_length=len(ids) + len(tokens) + 1, do_sample=False, repetition_penalty=1.0)
    generator = og.Generator(model.og_model, params)
    generator.append_tokens(ids)
    agree = 0
    for token in tokens:
        generator.generate_next_token()
        if int(generator.get_next_tokens()[0]) == token:
            agree += 1
        else:  # put the speculative answer's token in place of the plain one, and read on from it
            generator.rewind_to(len(generator.get_sequence(0)) - 1)
            generator.append_tokens([token])
    return agree


@pytest.mark.slow
def test_int4_answers_agree_with_the_plain_loop(smollm2_int4):
    # Each token of the speculative answer is checked against the plain loop's pick after the same
    # tokens. The many-position forward rounds differently in the last bits, so near ties (logit gaps
    # of 0.01 to 0.2 measured) may flip: 356 of 362 tokens (98.3%) agreed, 97.7% in another run:
    # hence the margin below 98%.
    model = slmops.load(smollm2_int4, threads=2)
    agree = total = accepted = 0
    for prompt in INT4_PROMPTS:
        ids = model.prompt_ids([{"role": "user", "content": prompt}])
        result = model.generate(ids, temperature=0, repetition_penalty=1.0, max_tokens=100)
        agree += plain_agreement(model, ids, result.tokens)
        total, accepted = total + len(result.tokens), accepted + result.accepted_tokens
    assert accepted > 50  # the answers that copy did speculate
    assert agree >= 0.97 * total, (agree, total)


@pytest.mark.parametrize("flag", [True, False])
def test_serve_no_speculative_turns_it_off_for_every_request(tiny_onnx, flag):
    import asyncio

    from slmops.server.commands import make_config
    from slmops.server.registry import Registry

    config = make_config(1, 0, 60, None, 1, 1, batching=False, speculative=flag)
    loaded = asyncio.run(Registry(config)._load("tiny", tiny_onnx))
    try:
        assert loaded.model.options().speculative is flag
        result = loaded.model.generate(COPY, temperature=0, max_tokens=5)
        assert result.completion_tokens == 5
    finally:
        loaded.scheduler.close()


def test_a_generator_that_cannot_rewind_decodes_one_token_per_step(tiny, oracle, monkeypatch):
    import onnxruntime_genai as og

    oracle(COPY, 4, max_tokens=40)

    def refuse(self, length):
        raise RuntimeError("rewind is not supported")

    monkeypatch.setattr(og.Generator, "rewind_to", refuse)
    result = tiny.generate(COPY, temperature=0, max_tokens=40)
    assert result.drafted_tokens == 0
    assert result.tokens == tiny.generate(COPY, temperature=0, max_tokens=40, speculative=False).tokens
