"""A prompt's KV lives in its row or in the prefix cache, never in both: kept when the row is given up.

Prompts sharing a beginning with a running row copy it from that row. On the tiny fp32 model
greedy answers with reuse are token for token those without it; every other figure is a
count (cached tokens, prompt positions run, bytes kept), never a time.
"""

import pytest

import slmops
from slmops.runtime import batched
from slmops.runtime.batched import BatchedDecoder
from tests.test_server_prefix import decoder, prompt, run, sequence


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def until_running(made, *sequences) -> None:
    """Advance ``made`` until every one of ``sequences`` has its prompt in and decodes."""
    while not all(item in made.running for item in sequences):
        made.advance()


def test_the_cache_holds_a_prompt_only_once_its_row_is_given_up(tiny):
    ids = prompt(60, 100)
    made = decoder(tiny)
    live = sequence(tiny, ids, 20)
    made.add([live])
    until_running(made, live)
    assert made.prefix.holds(ids)[1] == 0 and made.prefix.used == 0
    while made.busy:
        made.advance()
    assert made.prefix.holds(ids)[1] == 60 and len(made.prefix.entries) == 1
    assert made.prefix.holds(ids + live.tokens)[1] == 60  # the decoded answer is not kept


def test_eight_prompts_over_one_system_prompt_prefill_it_once_from_the_first_row(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 64)  # the system prompt takes two chunks
    system = prompt(100, 101)
    asks = [system + prompt(8 + index, 102 + index) for index in range(8)]
    cold = decoder(tiny, rows=8, budget=0)
    expected = run(cold, *(sequence(tiny, ids, 12) for ids in asks))
    made = decoder(tiny, rows=8)
    burst = [sequence(tiny, ids, 12) for ids in asks]
    made.add(burst)
    until_running(made, *burst)
    assert made.prefix.used == 0  # every beginning came from the first row, none from the cache
    while made.busy:
        made.advance()
    assert [item.tokens for item in burst] == expected
    assert [item.cached for item in burst] == [0] + [100] * 7
    assert made.prompt_tokens_run == len(asks[0]) + sum(len(ids) - 100 for ids in asks[1:])
    assert made.prefix.hits == 7 and made.prefix.reused_tokens == 700
    # Once all are done the cache holds the system prompt once and each question on top of it.
    assert [made.prefix.holds(ids)[1] for ids in asks] == [len(ids) for ids in asks]
    kept = sum(entry.kv.nbytes for entry in made.prefix.entries)
    assert kept == (100 + sum(len(ids) - 100 for ids in asks)) * BatchedDecoder.token_bytes(tiny)


def test_a_running_row_that_moved_is_copied_from_where_it_is_now(tiny):
    system = prompt(50, 110)
    short, long = sequence(tiny, prompt(40, 111), 2), sequence(tiny, system + prompt(6, 112), 30)
    made = decoder(tiny, rows=3)
    made.add([short, long])
    while short in made.running or short in made.pending:
        made.advance()
    assert long.row == 0 and long in made.running  # it moved into the row the short answer gave up
    later_ids = system + prompt(9, 113)
    later = sequence(tiny, later_ids, 10)
    assert made.prefix.holds(later_ids)[1] == 0  # nothing of it is cached: it copies the row
    run(made, later)
    assert later.cached == 50
    assert later.tokens == run(decoder(tiny, budget=0), sequence(tiny, later_ids, 10))[0]
    assert long.tokens == run(decoder(tiny, budget=0), sequence(tiny, long.prompt, 30))[0]


def test_a_cancelled_row_keeps_its_prompt_for_the_next_request(tiny):
    ids = prompt(70, 120)
    made = decoder(tiny, rows=2)
    gone = sequence(tiny, ids, 40)
    made.add([gone])
    until_running(made, gone)
    made.advance()
    made.cancel(gone)
    assert made.free == 2 and made.prefix.holds(ids)[1] == 70
    assert made.prefix.holds(ids + gone.tokens)[1] == 70
    again_ids = ids + prompt(5, 121)
    again = sequence(tiny, again_ids, 8)
    assert run(made, again) == run(decoder(tiny, budget=0), sequence(tiny, again_ids, 8))
    assert again.cached == 70


def test_a_cancelled_half_filled_prompt_keeps_what_is_in(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 64)
    ids = prompt(200, 122)
    made = decoder(tiny, rows=2)
    waiting = sequence(tiny, ids, 4)
    made.add([waiting])
    made.advance()
    assert waiting.filled == 64
    made.cancel(waiting)
    assert made.free == 2 and not made.cache[0][waiting.row].any()
    assert made.prefix.holds(ids)[1] == 64
    retry = sequence(tiny, ids, 6)
    assert run(made, retry) == run(decoder(tiny, budget=0), sequence(tiny, ids, 6))
    assert retry.cached == 64
