"""Prompt-lookup speculation in the batched decoder: the same greedy tokens, rows drafting or not.

On the tiny fp32 model a greedy row's tokens, guided or not, must be those of the same batch
without speculation, beside rows that copy, rows that do not and a sampled row.
A random model seldom copies, so besides the real lookup an oracle drafts each row's
plain answer with one token in three drafts wrong: every verify then keeps some tokens
and drops the rest, which exercises acceptance and the roll-back of every row's length.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

import slmops
from slmops.runtime import speculative
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.speculative import MAX_DRAFT, DraftPolicy, PromptLookup
from slmops.server import tools

COPY = (
    "Copy this exactly: The quick brown fox jumps over the lazy dog. Hello world, this is a test of a tiny "
    "tokenizer. Convert, cache, run, serve, benchmark and validate small language models on a CPU. "
)
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def row(model, ids, max_new=40, matcher=None, **options) -> Sequence:
    options = {"temperature": 0, **options}
    return Sequence(
        list(ids), model.options(max_tokens=max_new, **options), max_new, time.perf_counter(), matcher=matcher
    )


def random_ids(length: int, seed: int) -> list[int]:
    return [int(token) for token in np.random.default_rng(seed).integers(10, 500, length)]


def run(model, make_rows, rows: int = 6) -> tuple[list[Sequence], dict]:
    """Decode the rows ``make_rows()`` gives together; their sequences and every response by sequence."""
    decoder = BatchedDecoder(model, rows, 512)
    decoder.drafts_beside_others = True  # the path rows take beside others, off by default
    sequences = make_rows()
    decoder.add(sequences)
    responses: dict = {id(sequence): [] for sequence in sequences}
    while decoder.busy:
        for sequence, response in decoder.advance():
            responses[id(sequence)].append(response)
    return sequences, responses


def pieces(responses) -> list[tuple]:
    return [(response.token, response.text, response.finish_reason) for response in responses]


@pytest.fixture
def oracle(tiny, monkeypatch):
    """Drafts each row's plain answer (from a batch without speculation), some drafts with a wrong
    token: each row's first draft, then seven in ten."""

    def use(make_rows, size: int = 6) -> dict:
        plain, _ = run(tiny, lambda: [_plain(sequence) for sequence in make_rows()])
        answers = {tuple(sequence.prompt): sequence.tokens for sequence in plain}
        picker, spoilt = random.Random(0), set()

        def draft(lookup, most, after=None):
            for prompt, tokens in answers.items():
                if tuple(lookup.tokens[: len(prompt)]) == prompt:
                    done = len(lookup.tokens) - len(prompt)
                    found = tokens[done : done + most]
                    if found and (prompt not in spoilt or picker.random() < 0.7):  # else the whole draft is right
                        spoilt.add(prompt)
                        wrong = picker.randrange(len(found))
                        found[wrong] = (found[wrong] + 1) % 500
                    return found
            return []

        monkeypatch.setattr(PromptLookup, "draft", draft)
        monkeypatch.setattr(DraftPolicy, "next_size", lambda self: size)
        return answers

    return use


def _plain(sequence: Sequence) -> Sequence:
    sequence.options = sequence.options.replace(speculative=False)
    return sequence


def mixed(model, grammars, **greedy):
    """Two rows that copy, two that do not, a sampled row and a guided one."""
    ids = model.completion_ids(COPY * 2)
    return lambda: [
        row(model, ids, 60, **greedy),
        row(model, random_ids(30, 1), 50, **greedy),
        row(model, ids[5:], 45, **greedy),
        row(model, random_ids(12, 2), 70, repetition_penalty=1.3, **greedy),
        row(model, random_ids(20, 3), 40, temperature=0.8, seed=7),
        row(model, random_ids(9, 4), 40, grammars.matcher(tools.grammar(CITY))),
    ]


def compare(tiny, make_rows) -> tuple[list[Sequence], dict]:
    plain, plain_responses = run(tiny, lambda: [_plain(sequence) for sequence in make_rows()])
    spec, spec_responses = run(tiny, make_rows)
    for before, after in zip(plain, spec):
        if after.options.temperature == 0:
            assert pieces(spec_responses[id(after)]) == pieces(plain_responses[id(before)]), after.prompt[:5]
        assert len(spec_responses[id(after)]) == len(after.tokens) <= after.max_new
    return spec, spec_responses


def test_lookup_speculation_keeps_every_greedy_rows_tokens(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    spec, responses = compare(tiny, mixed(tiny, grammars))
    sampled, guided = spec[4], spec[5]
    assert sampled.drafts is None and guided.drafts is not None
    assert json.loads(tiny.decode(guided.tokens))["city"] in ("Oslo", "Rome")
    # The schema forces nearly every token of the answer: drafted, and kept.
    assert responses[id(guided)][-1].accepted_tokens >= len(guided.tokens) // 2


@pytest.mark.parametrize("size", [1, 4, MAX_DRAFT])
def test_verified_drafts_keep_each_rows_tokens(tiny, oracle, size):
    make_rows = mixed(tiny, BatchedDecoder(tiny, 1, 64).grammars)
    oracle(make_rows, size)
    spec, responses = compare(tiny, make_rows)
    for sequence in spec[:4]:
        last = responses[id(sequence)][-1]
        assert last.drafted_tokens == sequence.drafts.drafted > last.accepted_tokens == sequence.drafts.accepted > 0
    # A guided row's wrong drafts that its grammar refuses are cut before the verify.
    assert responses[id(spec[5])][-1].drafted_tokens >= responses[id(spec[5])][-1].accepted_tokens > 0
    assert all(response.drafted_tokens == 0 for response in responses[id(spec[4])])


def test_stop_strings_and_limits_end_where_the_plain_batch_does(tiny, oracle):
    ids = tiny.completion_ids(COPY * 2)
    answers = oracle(lambda: [row(tiny, ids, 60)], 8)
    text = tiny.decode(answers[tuple(ids)])
    for stop in [text[10:14], text[30:33], "no such text"]:
        for limit in [1, 7, 60]:

            def make_rows(limit=limit, stop=stop):
                return [row(tiny, ids, limit, stop=(stop,)), row(tiny, random_ids(15, 5), 25)]

            compare(tiny, make_rows)


def test_a_row_near_its_end_keeps_the_batch_inside_its_rows(tiny, oracle):
    ids = tiny.completion_ids(COPY * 10)[:490]  # 22 tokens of room in a 512-token row
    make_rows = lambda: [row(tiny, ids, 22), row(tiny, random_ids(10, 6), 40)]  # noqa: E731
    oracle(make_rows, MAX_DRAFT)
    spec, responses = compare(tiny, make_rows)
    assert responses[id(spec[0])][-1].finish_reason == "length" and len(spec[0].tokens) == 22


def test_a_batch_step_charges_its_drafting_rows_for_every_rows_wait():
    alone, shared = DraftPolicy(), DraftPolicy()
    alone.verified_in_batch(4, 4, rows=1, drafting=1)  # 4 tokens more for a step's worth: a gain
    shared.verified_in_batch(4, 4, rows=4, drafting=1)  # a forward of its own, 4 rows waited for it
    assert alone.next_size() == 8 and shared.next_size() == 0


def test_rows_that_ask_not_to_speculate_or_cannot_do_not(tiny):
    decoder = BatchedDecoder(tiny, 4, 512)
    ids = tiny.completion_ids(COPY)
    rows = [row(tiny, ids), row(tiny, ids, speculative=False), row(tiny, ids, temperature=0.5)]
    scored = row(tiny, ids)
    scored.logprobs = 2
    decoder.add([*rows, scored])
    assert [sequence.drafts is not None for sequence in [*rows, scored]] == [True, False, False, False]
    assert speculative.applies(rows[0].options)


@pytest.mark.parametrize("size", [1, MAX_DRAFT])
def test_a_row_alone_verifies_its_last_token_and_draft_in_one_forward(tiny, oracle, size):
    ids = tiny.completion_ids(COPY * 2)
    make_rows = lambda: [row(tiny, ids, 50, stop=("lazy",))]  # noqa: E731
    oracle(make_rows, size)
    spec, responses = compare(tiny, make_rows)
    assert responses[id(spec[0])][-1].drafted_tokens > 0


def test_a_guided_row_alone_drafts_what_its_grammar_forces(tiny):
    grammars = BatchedDecoder(tiny, 1, 64).grammars
    make_rows = lambda: [row(tiny, random_ids(9, 4), 40, grammars.matcher(tools.grammar(CITY)))]  # noqa: E731
    spec, responses = compare(tiny, make_rows)
    # A random model copies nothing: every kept draft came from the schema ('{"city": "' and the rest).
    last = responses[id(spec[0])][-1]
    assert last.finish_reason == "stop" and last.accepted_tokens > 0
    assert json.loads(tiny.decode(spec[0].tokens))["city"] in ("Oslo", "Rome")
