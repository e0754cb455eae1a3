"""Prompts sent again: whole in the prefix cache with their last logits kept, they run nothing.

On the tiny fp32 model greedy answers are token for token those of a cold prefill; every
other figure is a count (rows, cached tokens, prompt positions run, pieces), never a time.
"""

import numpy as np
import pytest

import slmops
from slmops.runtime.last_logits import LastLogits
from tests.test_server_prefix import decoder, prompt, run, sequence


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def sent_before(tiny, made, asks, max_new=6):
    """Run ``asks`` once each, then make them again: the burst's sequences."""
    for ids in asks:
        run(made, sequence(tiny, ids, 2))
    return [sequence(tiny, ids, max_new) for ids in asks]


def cold(tiny, asks, max_new=6):
    return run(decoder(tiny, budget=0), *(sequence(tiny, ids, max_new) for ids in asks))


def test_prompts_sent_again_together_start_at_once_and_answer_as_cold(tiny):
    asks = [prompt(20 + index, 100 + index) for index in range(4)]
    made = decoder(tiny)
    burst = sent_before(tiny, made, asks)
    before, hits = made.prompt_tokens_run, made.prefix.hits
    made.add(burst)
    first = made.prefill()
    assert [item for item, _ in first] == burst  # every first token from one piece
    assert made.prompt_tokens_run == before  # no forward
    assert [item.cached for item in burst] == [len(ids) for ids in asks]
    assert [item.row for item in burst] == [0, 1, 2, 3] and not made.pending
    assert made.prefix.hits == hits + 4
    while made.busy:
        made.advance()
    assert [item.tokens for item in burst] == cold(tiny, asks)


def test_sent_again_beside_new_prompts_they_go_first_and_the_others_as_before(tiny):
    asks = [prompt(22, 110), prompt(18, 111)]
    made = decoder(tiny)
    again = sent_before(tiny, made, asks)
    new = sequence(tiny, prompt(15, 112), 6)
    before = made.prompt_tokens_run
    made.add([new, again[0], again[1]])
    assert [item for item, _ in made.prefill()] == again
    assert made.prefill() and made.prompt_tokens_run - before == 15  # the new prompt, cold
    while made.busy:
        made.advance()
    assert [new.tokens, *(item.tokens for item in again)] == cold(tiny, [new.prompt, *asks])
    assert made.free == 4


def test_identical_prompts_sent_again_each_copy_the_cache(tiny):
    ids = prompt(24, 120)
    made = decoder(tiny, rows=4)
    sent_before(tiny, made, [ids])
    burst = [sequence(tiny, ids, 6) for _ in range(3)]
    before = made.prompt_tokens_run
    answers = run(made, *burst)
    assert made.prompt_tokens_run == before and answers == cold(tiny, [ids]) * 3
    assert made.free == 4


def test_without_kept_logits_or_kv_the_last_two_tokens_run(tiny):
    ids = prompt(25, 130)
    made = decoder(tiny)
    (again,) = sent_before(tiny, made, [ids])
    made.last_logits.entries.clear()
    before = made.prompt_tokens_run
    run(made, again)
    assert made.prompt_tokens_run - before == 2 and again.cached == 23  # and its logits are kept now
    assert made.last_logits.get(ids) is not None
    made.prefix.entries.clear()  # logits without the KV cache (kept, or in the row warmed last) are no use
    made.warming.drop()
    third = sequence(tiny, ids, 3)
    before = made.prompt_tokens_run
    run(made, third)
    assert made.prompt_tokens_run - before == 25 and third.cached == 0


def test_scored_and_guided_prompts_sent_again_run_their_last_tokens(tiny):
    from slmops.server import tools

    ids = prompt(30, 140)
    made = decoder(tiny)
    sent_before(tiny, made, [ids])
    scored = sequence(tiny, ids, 3)
    scored.prompt_logprobs = 1
    before = made.prompt_tokens_run
    run(made, scored)
    assert made.prompt_tokens_run - before == 30 and scored.prompt_scores  # scoring needs every position
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}}}
    guided = sequence(tiny, ids, 40)
    guided.matcher = made.grammars.matcher(tools.grammar(schema))
    before = made.prompt_tokens_run
    answer = run(made, guided)[0]
    assert made.prompt_tokens_run - before == 2 and tiny.decode(answer).startswith("{")


def test_no_prefix_cache_keeps_no_logits(tiny):
    made = decoder(tiny, budget=0)
    run(made, sequence(tiny, prompt(20, 150), 2))
    assert not made.last_logits.entries


def test_last_logits_keep_the_most_recently_used_within_their_budget():
    kept = LastLogits(3 * 400)
    logits = [np.full(100, index, np.float32) for index in range(4)]  # 400 bytes each
    for index in range(3):
        kept.keep([index, 1], logits[index])
    assert kept.get([0, 1]) is not None  # 0 is now the most recently used
    kept.keep([3, 1], logits[3])
    assert kept.get([1, 1]) is None and kept.used == 3 * 400
    assert [float(kept.get([index, 1])[0]) for index in (0, 2, 3)] == [0, 2, 3]
    logits[3][:] = 9  # a copy is kept
    assert float(kept.get([3, 1])[0]) == 3
    assert LastLogits(0).get([0, 1]) is None
    nothing = LastLogits(100)
    nothing.keep([0], logits[0])  # larger than the whole budget
    assert not nothing.entries
