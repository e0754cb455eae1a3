"""A prompt's KV lives in its row or in the prefix cache, never in both: kept when the row is given up.

Prompts sharing a beginning with a running row copy it from that row. On the tiny fp32 model
greedy answers with reuse are token for token those without it; every other figure is a
count (cached tokens, prompt positions run, bytes kept), never a time.
"""

import pytest

import slmops
from slmops.runtime import batched, warming
from slmops.runtime.batched import BatchedDecoder
from tests.test_server_prefix import Endless, decoder, prompt, run, sequence


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    """Warming pieces run when a test calls them (the grace before the first is tested on its own)."""
    monkeypatch.setattr(warming, "GRACE", 0.0)


def until_running(made, *sequences) -> None:
    """Advance ``made`` until every one of ``sequences`` has its prompt in and decodes."""
    while not all(item in made.running for item in sequences):
        made.advance()


def answered_and_warmed(tiny, first_ids):
    """A decoder that answered ``first_ids`` (20 tokens) and warmed the answer whole, and the answer."""
    made = decoder(tiny)
    (answer,) = run(made, sequence(tiny, first_ids, 20))
    while made.warming.piece():
        pass
    return made, answer


def test_the_cache_holds_a_prompt_only_once_its_row_is_given_up(tiny):
    ids = prompt(60, 100)
    made = decoder(tiny)
    live = sequence(tiny, ids, 20)
    made.add([live])
    until_running(made, live)
    assert made.prefix.holds(ids)[1] == 0 and made.prefix.used == 0
    while made.busy:
        made.advance()
    # The last row to finish is warmed in place; given back, its prompt goes to the cache, not its
    # decoded answer.
    assert made.warming.current.row == live.row and made.prefix.used == 0
    made.warming.stop()
    assert made.prefix.holds(ids)[1] == 60 and len(made.prefix.entries) == 1
    assert made.prefix.holds(ids + live.tokens)[1] == 60


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
    made.warming.stop()  # the last row to finish waits for warming in place
    # Once all are done the cache holds the system prompt once and each question on top of it.
    assert [made.prefix.holds(ids)[1] for ids in asks] == [len(ids) for ids in asks]
    kept = sum(len(entry.tokens) - entry.start for entry in made.prefix.entries)
    assert kept == 100 + sum(len(ids) - 100 for ids in asks)


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


@pytest.mark.parametrize("pieces", [0, 1, 9])
def test_the_next_turn_takes_the_last_answers_row_over_warmed_or_not(tiny, monkeypatch, pieces):
    monkeypatch.setattr(warming, "WARM_CHUNK", 16)
    first_ids = prompt(50, 130)
    made = decoder(tiny)
    (answer,) = run(made, sequence(tiny, first_ids, 30))
    for _ in range(pieces):  # none: sent the instant the answer ended; 9: after the warming is done
        made.warming.piece()
    warm = made.warming.current or made.warming.waiting
    assert warm.filled == min(50 + 16 * pieces, 80)
    # Nothing is copied into the cache while the warming runs; warmed whole, the row is kept there too.
    assert made.prefix.holds(warm.tokens)[1] == (80 if pieces == 9 else 0)
    warmed = warm.filled
    second_ids = first_ids + answer + prompt(8, 131)
    second = sequence(tiny, second_ids, 10)
    before = made.prompt_tokens_run
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 10))
    # It started in the warmed row, nothing copied: prefilled what the warming had not, and its own words.
    assert second.row == 0 and second.cached == warmed and made.prefix.hits == 1
    assert made.prompt_tokens_run - before == len(second_ids) - warmed


def test_a_turn_that_leaves_the_answer_midway_takes_the_row_without_a_copy(tiny):
    # e.g. the answer came back as other tokens than the ones generated (a word in other pieces)
    first_ids = prompt(50, 134)
    made, answer = answered_and_warmed(tiny, first_ids)
    second_ids = first_ids + answer[:12] + prompt(8, 135)
    second = sequence(tiny, second_ids, 6)
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 6))
    # It continues the chat: the row is its own from the shared tokens on (the cache, which kept the
    # whole answer while the row waited, has no longer beginning); the row now warms the new turn.
    assert second.row == 0 and second.cached == 62 and made.prefix.hits == 1
    assert (made.warming.current or made.warming.waiting).tokens[:70] == second_ids


def test_another_chat_takes_the_waiting_row_without_copying_it_on_its_way(tiny):
    first_ids = prompt(50, 138)
    made, answer = answered_and_warmed(tiny, first_ids)
    waiting = made.warming.waiting
    assert made.prefix.holds(waiting.tokens)[1] == len(waiting.tokens)  # kept while the engine was idle
    kept = []
    made.prefix.keep = lambda *args: kept.append(args)  # type: ignore[method-assign]
    other_ids = prompt(30, 139)
    other = sequence(tiny, other_ids, 6)
    made.add([other])
    made.advance()  # its prompt in and its first token out
    assert other.tokens and other.row == 0 and not kept and made.warming.waiting is None
    # Nor were the row's pages given back, to be faulted in again under its prefill: past its
    # own 31 positions the row still holds the first chat's KV.
    assert made.cache[0][0, :, 40:70].any()
    while made.busy:
        made.advance()
    assert other.tokens == run(decoder(tiny, budget=0), sequence(tiny, other_ids, 6))[0]
    # The next turn of the first chat still finds all of it, from the cache now.
    del made.prefix.keep
    second_ids = waiting.tokens + prompt(8, 140)
    second = sequence(tiny, second_ids, 6)
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 6))
    assert second.cached == len(waiting.tokens)


def test_a_next_turn_sent_the_moment_the_answer_ends_prefills_it_with_its_own_words(tiny, monkeypatch):
    monkeypatch.setattr(warming, "GRACE", 60.0)  # the next turn comes before the warming may begin
    first_ids = prompt(50, 136)
    made = decoder(tiny)
    (answer,) = run(made, sequence(tiny, first_ids, 20))
    assert made.warming.pause() > 0 and made.warming.piece() and made.warming.current.filled == 50  # nothing ran
    second_ids = first_ids + answer + prompt(8, 137)
    second = sequence(tiny, second_ids, 6)
    before = made.prompt_tokens_run
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 6))
    # It took the row at its prompt and prefilled the answer with its own words, nothing twice.
    assert second.row == 0 and second.cached == 50 and made.prompt_tokens_run - before == 28


def test_another_request_finds_the_waiting_row_kept_in_the_cache(tiny):
    first_ids = prompt(50, 132)
    made, answer = answered_and_warmed(tiny, first_ids)
    other = sequence(tiny, prompt(40, 133), 6)
    run(made, other)
    assert other.cached == 0 and made.prefix.holds(first_ids + answer)[1] == 70
    assert other.tokens == run(decoder(tiny, budget=0), sequence(tiny, prompt(40, 133), 6))[0]


def test_queued_answers_warm_newest_first_and_only_while_their_prompt_is_held(tiny):
    made = decoder(tiny)
    old, new, gone = prompt(20, 134), prompt(20, 135), prompt(20, 136)
    for ids in (old, new):
        made.prefix.keep(ids, made.cache, 0)
    made.warming.note(old + prompt(6, 137), len(old))
    made.warming.note(new + prompt(6, 138), len(new))
    made.warming.note(gone + prompt(6, 139), len(gone))  # its prompt is not in the cache
    made.warming.piece()
    assert made.warming.waiting.tokens[:20] == new and not any(item[0][:20] == gone for item in made.warming.queue)
    while made.warming.piece():
        pass
    made.warming.stop()
    assert made.warming.warmed == 2 and made.prefix.holds(gone + prompt(6, 139))[1] == 0


def test_a_request_sharing_only_an_opening_with_the_waiting_row_leaves_its_tokens_cached(tiny):
    opening = prompt(6, 140)
    first_ids = opening + prompt(40, 141)
    made, answer = answered_and_warmed(tiny, first_ids)
    other_ids = opening + prompt(30, 142)
    other = sequence(tiny, other_ids, 6)
    assert run(made, other) == run(decoder(tiny, budget=0), sequence(tiny, other_ids, 6))
    assert other.cached == 6 and made.prefix.holds(first_ids + answer)[1] == 66


def test_chats_sharing_a_template_opening_keep_finding_their_history_in_a_full_cache(tiny):
    """Every chat opens with the same few tokens; an entry tied to another chat by them was
    evicted with it, and the next turn of a fresh chat found nothing."""
    made = BatchedDecoder(tiny, 4, 500, 1500 * BatchedDecoder.token_bytes(tiny))
    made.model = Endless(made.model)
    opening, history = prompt(4, 150), prompt(330, 151)
    for chat in range(5):
        for think in (False, True):
            ids = opening + prompt(4, 152 + 2 * chat + think) + history
            (answer,) = run(made, sequence(tiny, ids, 40))
            while think and made.warming.piece():
                pass
            second = sequence(tiny, ids + answer + prompt(10, 170), 8)
            run(made, second)
            assert second.cached >= len(ids)
    assert made.prefix.evictions and made.prefix.used <= made.prefix.budget


def test_queued_answers_warm_above_the_row_waiting_for_its_next_turn(tiny):
    made = decoder(tiny)
    first_ids, other = prompt(40, 180), prompt(30, 181)
    (answer,) = run(made, sequence(tiny, first_ids, 12))
    made.prefix.keep(other, made.cache, 1)  # an earlier chat's prompt, its answer queued
    made.warming.note(other + prompt(8, 182), len(other))
    while made.warming.piece():
        pass
    assert made.warming.waiting.row == 0 and made.warming.warmed == 2
    assert made.prefix.holds(other + prompt(8, 182))[1] == 38  # warmed in row 1, kept, given back
    second_ids = first_ids + answer + prompt(6, 183)
    second = sequence(tiny, second_ids, 6)
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 6))
    assert second.row == 0 and second.cached == 52


def test_adding_no_request_leaves_the_warming_where_it_is(tiny):
    # The scheduler adds what arrived during each piece of a round, often nothing.
    made = decoder(tiny)
    run(made, sequence(tiny, prompt(40, 134), 12))
    made.add([])
    assert made.warming.current is not None and made.warming.current.filled == 40
    made.warming.piece()
    assert made.warming.waiting is not None and made.warming.waiting.filled == 52
