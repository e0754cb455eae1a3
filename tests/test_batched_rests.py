"""A burst of prompts whose beginnings are cached: their rests go in together, a position per forward.

On the tiny fp32 model greedy answers are token for token those of a cold prefill; every
other figure is a count (rows, cached tokens, prompt positions run, pieces), never a time.
"""

import pytest

import slmops
from slmops.runtime import batched
from tests.test_server_prefix import BUDGET, decoder, prompt, run, sequence


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def asked_again(tiny, made, asks, max_new=6):
    """Run ``asks`` once each, then all together again: the burst's sequences."""
    for ids in asks:
        run(made, sequence(tiny, ids, 2))
    return [sequence(tiny, ids, max_new) for ids in asks]


def test_prompts_asked_again_together_start_after_one_forward(tiny):
    asks = [prompt(20 + index, 100 + index) for index in range(4)]
    made = decoder(tiny)
    burst = asked_again(tiny, made, asks)
    before = made.prompt_tokens_run
    made.add(burst)
    first = made.prefill()
    assert [item for item, _ in first] == burst  # every first token from one piece
    assert made.prompt_tokens_run - before == 4  # one forward, one position per row
    assert [item.cached for item in burst] == [len(ids) - 1 for ids in asks]
    assert [item.row for item in burst] == [0, 1, 2, 3] and not made.pending
    while made.busy:
        made.advance()
    cold = run(decoder(tiny, budget=0), *(sequence(tiny, ids, 6) for ids in asks))
    assert [item.tokens for item in burst] == cold


def test_rests_of_different_lengths_run_as_many_positions_as_the_longest(tiny):
    system = prompt(30, 110)
    made = decoder(tiny)
    run(made, sequence(tiny, system, 2))
    asks = [system + prompt(extra, 111 + extra) for extra in (1, 3, 2)]  # rests of 1, 3 and 2 tokens
    burst = [sequence(tiny, ids, 5) for ids in asks]
    before = made.prompt_tokens_run
    assert run(made, *burst) == run(decoder(tiny, budget=0), *(sequence(tiny, ids, 5) for ids in asks))
    assert [item.cached for item in burst] == [len(ids) - 3 for ids in asks]  # each copies all but the longest rest
    assert made.prompt_tokens_run - before == 3 * 3


def test_rests_longer_than_the_rows_or_the_limit_go_as_before(tiny, monkeypatch):
    system = prompt(30, 120)
    asks = [system + prompt(5, 121 + index) for index in range(3)]  # rests of 5: more steps than rows
    made = decoder(tiny)
    run(made, sequence(tiny, system, 2))
    burst = [sequence(tiny, ids, 4) for ids in asks]
    before = made.prompt_tokens_run
    run(made, *burst)
    assert made.prompt_tokens_run - before == 3 * 5  # a forward of its own per row, its whole rest
    monkeypatch.setattr(batched, "REST_STEPS", 0)  # 0 turns the policy off
    again = [sequence(tiny, ids, 4) for ids in asks[:2]]
    before = made.prompt_tokens_run
    run(made, *again)
    assert made.prompt_tokens_run - before == 2 * 2  # each row alone, its last two tokens


def test_a_lone_prompt_asked_again_and_a_scored_one_go_as_before(tiny):
    ids = prompt(25, 130)
    made = decoder(tiny)
    (alone,) = asked_again(tiny, made, [ids])
    before = made.prompt_tokens_run
    run(made, alone)
    assert made.prompt_tokens_run - before == 2 and alone.cached == 23  # one row: a prefill of its last two
    scored = sequence(tiny, ids, 3)
    scored.prompt_logprobs = 1
    other = sequence(tiny, prompt(25, 131), 3)
    run(made, sequence(tiny, other.prompt, 2))
    before = made.prompt_tokens_run
    run(made, scored, other)
    assert scored.cached == 0 and scored.prompt_scores  # scoring needs every position: cold
    assert made.prompt_tokens_run - before == 25 + 2


def test_identical_prompts_in_a_burst_asked_again_copy_the_first_row(tiny):
    asks = [prompt(22, 140), prompt(24, 141)]
    made = decoder(tiny, rows=5)
    asked_again(tiny, made, asks)
    burst = [sequence(tiny, ids, 6) for ids in (asks[0], asks[1], asks[0], asks[1], asks[0])]
    before = made.prompt_tokens_run
    answers = run(made, *burst)
    assert made.prompt_tokens_run - before == 2  # the two prompts, one position each; the copies none
    assert answers[0] == answers[2] == answers[4] and answers[1] == answers[3]
    assert answers[:2] == run(decoder(tiny, budget=0), *(sequence(tiny, ids, 6) for ids in asks))
    assert made.free == 5


def test_a_guided_row_among_the_rests_follows_its_grammar(tiny):
    from slmops.server import tools

    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}}}
    asks = [prompt(30, 150), prompt(28, 151)]
    answers = []
    for budget in (0, BUDGET):
        made = decoder(tiny, budget=budget)
        burst = asked_again(tiny, made, asks, 40)
        burst[1].matcher = made.grammars.matcher(tools.grammar(schema))
        answers.append(run(made, *burst))
    assert answers[0] == answers[1]
    assert tiny.decode(answers[1][1]).startswith("{")

