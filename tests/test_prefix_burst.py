"""Prefix reuse under a burst and across a chat's turns: short beginnings, shared ones, identical prompts, warming.

On the tiny fp32 model greedy answers with reuse are token for token those without it;
every other figure is a count (cached tokens, rows, prompt positions run), never a time.
"""

import pytest

import slmops
from slmops.runtime import warming
from slmops.runtime.batched import BatchedDecoder
from slmops.runtime.prefix import MIN_REUSE
from tests.test_server_prefix import Endless, decoder, prompt, run, sequence


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    """Warming pieces run when a test calls them (the grace before the first is tested on its own)."""
    monkeypatch.setattr(warming, "GRACE", 0.0)


def test_a_short_prompt_asked_again_runs_only_its_last_two_tokens(tiny):
    ids = prompt(30, 20)
    warm = decoder(tiny)
    (first,) = run(warm, sequence(tiny, ids, 6))
    warm.last_logits.entries.clear()  # kept, its logits would let it run nothing (tests/test_batched_repeats.py)
    before = warm.prompt_tokens_run
    again = sequence(tiny, ids, 6)
    assert run(warm, again) == [first] == run(decoder(tiny, budget=0), sequence(tiny, ids, 6))
    assert again.cached == 28 and warm.prompt_tokens_run - before == 2


def test_short_prompts_sharing_a_beginning_copy_it_instead_of_going_in_together(tiny):
    system = prompt(12, 21)  # a short system prompt: short prompts would otherwise share one group
    asks = [system + prompt(6, 22 + index) for index in range(4)]
    cold = decoder(tiny, budget=0)
    expected = run(cold, *(sequence(tiny, ids, 5) for ids in asks))
    warm = decoder(tiny)
    together = [sequence(tiny, ids, 5) for ids in asks]
    assert run(warm, *together) == expected
    assert [item.cached for item in together] == [0, 12, 12, 12]
    assert warm.prompt_tokens_run == 18 + 3 * 6  # the system prompt ran once
    assert cold.prompt_tokens_run == 4 * 18


def test_identical_prompts_arriving_together_are_prefilled_once(tiny):
    ids = prompt(20, 30)
    other = prompt(20, 31)
    warm = decoder(tiny, rows=6)
    burst = [sequence(tiny, ids, 6) for _ in range(4)] + [sequence(tiny, other, 6)]
    answers = run(warm, *burst)
    assert answers == run(decoder(tiny, rows=6, budget=0), *(sequence(tiny, item.prompt, 6) for item in burst))
    assert warm.prompt_tokens_run == 2 * 20  # each prompt once, the copies none
    assert [item.cached for item in burst] == [0, 20, 20, 20, 0]
    # Every copy had its first token in the same round as the prompt it copies.
    assert len({item.tokens[0] for item in burst[:4]}) == 1


def test_a_copy_that_ends_at_once_leaves_the_others_rows_intact(tiny):
    ids = prompt(24, 32)
    made = decoder(tiny, rows=4)
    burst = [sequence(tiny, ids, 1), sequence(tiny, ids, 8), sequence(tiny, ids, 1), sequence(tiny, ids, 8)]
    answers = run(made, *burst)
    assert answers[1] == answers[3] == run(decoder(tiny, budget=0), sequence(tiny, ids, 8))[0]
    assert made.free == 4


def test_a_warmed_answer_lets_the_next_turn_prefill_only_its_new_message(tiny, monkeypatch):
    monkeypatch.setattr(warming, "WARM_CHUNK", 16)  # the answer goes in several pieces
    first_ids = prompt(60, 40)
    made = decoder(tiny)
    (answer,) = run(made, sequence(tiny, first_ids, 30))
    assert made.warming.left and not made.busy
    pieces = 0
    while made.warming.piece():
        pieces += 1
    assert pieces >= 1 and made.warming.warmed == 1
    hits = made.prefix.hits  # warming's own reads are not hits
    second_ids = first_ids + answer + prompt(10, 41)
    second = sequence(tiny, second_ids, 12)
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 12))
    assert second.cached == 60 + 30 and made.prefix.hits == hits + 1


def test_warming_never_runs_beside_a_waiting_or_decoding_row(tiny, monkeypatch):
    monkeypatch.setattr(warming, "WARM_CHUNK", 8)
    made = decoder(tiny)
    (answer,) = run(made, sequence(tiny, prompt(40, 50), 20))
    made.warming.piece()  # one chunk in: the answer is half warmed
    assert made.warming.current is not None
    newcomer = sequence(tiny, prompt(30, 51), 6)
    made.add([newcomer])  # a request arrives: warming stops, keeping what it prefilled
    assert made.warming.current is None
    run_before = made.prompt_tokens_run
    assert not made.warming.piece() or made.busy  # nothing runs while a row waits
    assert made.prompt_tokens_run == run_before
    first = made.advance()
    assert first and {item for item, _ in first} == {newcomer} and newcomer.row == 0  # its first token in round one
    while made.busy:
        assert made.warming.piece() and made.prompt_tokens_run == run_before + 30  # nor while it decodes
        made.advance()
    assert newcomer.tokens == run(decoder(tiny, budget=0), sequence(tiny, prompt(30, 51), 6))[0]
    # Once idle, the rest of the first answer and the newcomer's are warmed.
    while made.warming.piece():
        pass
    made.warming.stop()  # the last one warmed waits in its row: kept now
    assert made.prefix.holds(prompt(40, 50) + answer)[1] == 60


def test_no_prefix_cache_no_warming(tiny):
    made = decoder(tiny, budget=0)
    run(made, sequence(tiny, prompt(30, 60), 4))
    assert not made.warming.left


def test_reuse_threshold_is_small_but_keeps_two_tokens_to_run(tiny):
    made = BatchedDecoder(tiny, 2, 256, 1 << 20)
    made.prefix.keep(prompt(10, 70), made.cache, 0)
    assert made.prefix.longest(prompt(10, 70))[1] == 8
    assert made.prefix.longest(prompt(10, 70)[: MIN_REUSE + 1])[1] == MIN_REUSE - 1


class CountedWarming:
    """A decoder's warming that counts its pieces and the rows waiting or decoding when each ran.

    (A request arriving while a piece runs waits for that piece: the bound is one piece, not zero.)
    """

    def __init__(self, rows, pieces: int) -> None:
        self.rows, self.todo, self.ran, self.beside = rows, pieces, 0, 0
        self.scheduler = None

    @property
    def left(self) -> bool:
        return self.scheduler is not None and self.ran < self.todo

    def pause(self) -> float:
        return 0.0

    def piece(self) -> bool:
        self.beside += self.rows.busy
        self.ran += 1
        return self.left


def test_the_scheduler_warms_only_while_no_row_waits_or_decodes():
    import asyncio

    from slmops.server.scheduler import Scheduler
    from tests.test_server_scheduler_rows import Rows, drain, row

    rows = Rows()
    rows.warming = CountedWarming(rows, 50)

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler("m", parallel=4, decoder=rows)
        rows.warming.scheduler = scheduler
        for _ in range(3):
            jobs = [scheduler.submit(row(loop, 5)) for _ in range(3)]
            for job in jobs:
                await drain(job)
        while rows.warming.left:
            await asyncio.sleep(0.01)
        scheduler.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert rows.warming.ran == 50 and rows.warming.beside == 0


def test_the_next_turns_opening_is_warmed_behind_the_answer(tiny):
    first_ids, opening = prompt(50, 80), prompt(4, 81)
    made = decoder(tiny)
    first = sequence(tiny, first_ids, 20)
    first.follow = opening
    (answer,) = run(made, first)
    while made.warming.piece():
        pass
    # the chat's next turn brings the answer back as text: its tokens are the text's, encoded again
    sent_again = tiny.encode(tiny.decode(answer))
    second_ids = first_ids + sent_again + opening + prompt(6, 82)
    second = sequence(tiny, second_ids, 10)
    assert run(made, second) == run(decoder(tiny, budget=0), sequence(tiny, second_ids, 10))
    assert second.cached == 50 + len(sent_again) + 4


def test_an_answer_is_warmed_as_its_text_encodes():
    from slmops.runtime.warming import as_sent_again

    class Pieces:
        """A tokenizer of four pieces that encodes the longest first, as BPE merges do."""

        vocab = {1: " el", 2: "bow", 3: " elbow", 4: " and"}

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

        def encode(self, text):
            ids = []
            while text:
                piece = max((p for p in self.vocab.items() if text.startswith(p[1])), key=lambda p: len(p[1]))
                ids.append(piece[0])
                text = text[len(piece[1]) :]
            return ids

    assert as_sent_again(Pieces(), [1, 2, 4]) == [3, 4]  # written in pieces, sent back whole
    assert as_sent_again(Pieces(), [3, 4]) == [3, 4]
    assert as_sent_again(Pieces(), []) == []


class Template:
    """A model's render and encode, for a ChatML-like template: one character, one token."""

    def render(self, messages) -> str:
        return "".join(f"<{m['role']}>{m['content']}</>\n" for m in messages) + "<assistant>"

    def encode(self, text: str) -> list[int]:
        return [ord(character) for character in text]


def test_the_next_turns_opening_comes_from_the_chat_template():
    from slmops.runtime.warming import next_turn_opening

    assert next_turn_opening(Template()) == [ord(c) for c in "</>\n<user>"]

    class NoTemplate(Template):
        def render(self, messages) -> str:
            raise ValueError("no chat template")

    assert next_turn_opening(NoTemplate()) == []


def test_an_answer_that_fills_its_row_is_warmed_within_it(tiny):
    made = BatchedDecoder(tiny, 2, 64, 1 << 20)
    made.model = Endless(made.model)
    first = sequence(tiny, prompt(40, 90), 64)
    first.follow = prompt(30, 91)
    run(made, first)
    assert len(first.prompt) + len(first.tokens) == 64  # the row is full
    sent_again = tiny.encode(tiny.decode(first.tokens))  # the tiny tokenizer's text may encode shorter
    assert len(first.prompt) + len(sent_again) + len(first.follow) > 64  # the opening does not fit
    while made.warming.piece():
        pass
    made.warming.stop()
    assert made.warming.warmed == 1 and made.prefix.holds(first.prompt + sent_again + first.follow)[1] == 64
