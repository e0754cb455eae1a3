"""Prefix reuse in the batched decoder: a prompt that begins as an earlier one did starts from its KV cache.

On the tiny fp32 model greedy answers with reuse are token for token those without it;
every other figure is a count (cached tokens, hits, evictions), never a time.
"""

import time

import numpy as np
import pytest

import slmops
from slmops.runtime import batched
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.prefix import MIN_REUSE, PAGE, PrefixCache
from tests import in_process

BUDGET = 64 << 20


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


class Endless:
    """The model, but no token ends an answer: only max_tokens does."""

    stop_token_ids = frozenset()

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)


def decoder(model, rows=4, budget=BUDGET) -> BatchedDecoder:
    made = BatchedDecoder(model, rows, 512, budget)
    made.model = Endless(made.model)
    return made


def sequence(model, ids, max_new=8) -> Sequence:
    return Sequence(list(ids), model.options(temperature=0, max_tokens=max_new), max_new, time.perf_counter())


def prompt(length: int, seed: int = 0) -> list[int]:
    return [int(token) for token in np.random.default_rng(seed).integers(10, 500, length)]


def run(made: BatchedDecoder, *sequences: Sequence) -> list[list[int]]:
    made.add(list(sequences))
    while made.busy:
        made.advance()
    return [item.tokens for item in sequences]


def test_a_second_turn_reuses_the_first_and_answers_as_without_reuse(tiny):
    first_ids = prompt(120, 1)
    cold, warm = decoder(tiny, budget=0), decoder(tiny)
    (first,) = run(warm, sequence(tiny, first_ids, 10))
    assert run(cold, sequence(tiny, first_ids, 10)) == [first]
    second_ids = first_ids + first + prompt(40, 2)  # the history, the answer, a new question
    second = sequence(tiny, second_ids, 12)
    assert run(warm, second) == run(cold, sequence(tiny, second_ids, 12))
    # The history came from the cache; the answer, decoded one position at a time, is read again.
    assert second.cached == 120
    assert warm.prefix.hits == 1 and warm.prefix.reused_tokens == second.cached
    assert cold.prefix.hits == 0 and not cold.prefix.entries


def test_a_shared_system_prompt_is_reused_by_requests_arriving_together(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 64)  # the shared beginning takes three chunks
    system = prompt(150, 3)
    asks = [system + prompt(20 + 5 * index, 10 + index) for index in range(4)]
    expected = run(decoder(tiny, budget=0), *(sequence(tiny, ids, 6) for ids in asks))
    warm = decoder(tiny)
    together = [sequence(tiny, ids, 6) for ids in asks]
    assert run(warm, *together) == expected
    # The first prompt is prefilled whole; the others copy the shared 150 tokens once it is in.
    assert [item.cached for item in together] == [0, 150, 150, 150]
    assert warm.prefix.hits == 3


def test_a_later_chunked_prompt_still_answers_as_one_cold_prefill(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 32)
    base = prompt(60, 4)
    warm = decoder(tiny)
    run(warm, sequence(tiny, base, 4))
    longer = base + prompt(90, 5)
    reused = sequence(tiny, longer, 8)
    assert run(warm, reused) == run(decoder(tiny, budget=0), sequence(tiny, longer, 8))
    assert reused.cached == 60


def test_short_shared_beginnings_are_prefilled_with_the_others(tiny):
    warm = decoder(tiny)
    run(warm, sequence(tiny, prompt(100, 6), 2))
    short = sequence(tiny, prompt(100, 6)[: MIN_REUSE - 1] + prompt(5, 7), 3)
    run(warm, short)
    assert short.cached == 0 and warm.prefix.hits == 0


def test_least_recently_used_entries_leave_a_full_cache(tiny):
    token_bytes = BatchedDecoder.token_bytes(tiny)
    made = decoder(tiny, budget=130 * token_bytes)  # one answer of ~100 tokens fits, two do not
    first_ids, second_ids = prompt(100, 8), prompt(100, 9)
    run(made, sequence(tiny, first_ids, 4))
    run(made, sequence(tiny, second_ids, 4))
    made.warming.stop()  # the last answer's row, kept for warming, goes to the cache too
    assert made.prefix.evictions == 1 and len(made.prefix.entries) == 1
    assert made.prefix.used <= made.prefix.budget
    again = sequence(tiny, first_ids + prompt(5, 10), 2)
    run(made, again)
    assert again.cached == 0  # the first conversation's cache was the one evicted


def test_an_entry_builds_on_the_one_it_begins_with():
    # Rows hold different values, so where each restored position came from shows.
    buffers = [np.arange(2 * 1 * 64 * 2, dtype=np.float32).reshape(2, 1, 64, 2) + 1 for _ in range(4)]
    cache = PrefixCache(1 << 20)
    tokens = list(range(100, 150))
    cache.keep(tokens[:40], buffers, 0)
    cache.keep(tokens, buffers, 1)
    cache.keep(tokens[:45], buffers, 0)  # inside the longer entry: nothing new is kept
    longer, first = cache.entries  # what an entry builds on is used whenever it is: it leaves last
    assert len(first.tokens) == 40 and longer.parent is first and longer.start == 40
    assert [len(entry.pages) for entry in cache.entries] == [1, 2]  # the longer one: its own 10 tokens only
    entry, size = cache.longest(tokens[:42] + [7, 8])
    assert entry is longer and size == 42
    target = [np.zeros_like(buffer) for buffer in buffers]
    cache.restore(entry, size, target, 0)
    assert np.array_equal(target[2][0, :, :40], buffers[2][0, :, :40])  # from the first entry
    assert np.array_equal(target[2][0, :, 40:42], buffers[2][1, :, 40:42])  # from its own part
    assert not target[2][0, :, 42:].any()
    assert cache.longest(tokens)[1] == len(tokens) - 2  # the last two prompt tokens are always run


def test_an_entry_leaves_before_what_it_builds_on():
    buffers = [np.ones((1, 1, 256, 2), np.float32) for _ in range(2)]
    page = PAGE * 2 * 2 * 4  # bytes of a page: PAGE tokens' KV in both buffers
    cache = PrefixCache(6 * page + page // 2)  # six pages
    system = list(range(1000, 1100))
    cache.keep(system, buffers, 0)  # four pages
    cache.keep(system + [1, 2, 3, 4, 5], buffers, 0)  # the KV of 5 tokens of its own: one page
    assert len(cache.entries) == 2 and cache.used == 5 * page
    cache.keep(list(range(2000, 2090)), buffers, 0)  # three pages: the child goes, then the system prompt
    assert cache.evictions == 2 and [len(entry.tokens) for entry in cache.entries] == [90]
    cache.keep(list(range(3000, 3050)), buffers, 0)
    cache.keep(list(range(2000, 2090)), buffers, 0)  # held already: now the most recently used
    cache.keep(list(range(4000, 4070)), buffers, 0)  # the 50-token entry is the least recently used
    assert cache.evictions == 3 and [len(entry.tokens) for entry in cache.entries] == [90, 70]
    assert cache.used == 6 * page
    cache.keep(list(range(5000, 5300)), buffers, 0)  # more than the budget: nothing evicted for it
    assert cache.evictions == 3 and len(cache.entries) == 2


def test_serve_reports_cached_tokens_and_counts_hits(tiny_onnx):
    from fastapi.testclient import TestClient

    from slmops.server import ServerConfig, create_app

    config = ServerConfig(load_wait=60, parallel=2, threads=1, prefix_cache=BUDGET)
    text = " ".join(f"word{index}" for index in range(80))
    with TestClient(create_app(config, [str(tiny_onnx)])) as client:
        in_process.wait_healthy(client)
        body = {"model": "model", "max_tokens": 4, "temperature": 0}
        cold = client.post("/v1/completions", json={**body, "prompt": text}).json()["usage"]
        warm = client.post("/v1/completions", json={**body, "prompt": text + " and more"}).json()["usage"]
        # another conversation: the row that waited for the first one's next turn is kept in the cache
        other = client.post("/v1/completions", json={**body, "prompt": "a different request"}).json()["usage"]
        metrics = dict(
            line.split() for line in client.get("/metrics").text.splitlines() if line.startswith("slmops_prefix")
        )
    assert cold["prompt_tokens_details"] == other["prompt_tokens_details"] == {"cached_tokens": 0}
    assert MIN_REUSE <= warm["prompt_tokens_details"]["cached_tokens"] < warm["prompt_tokens"]
    assert int(metrics["slmops_prefix_cache_hits_total"]) == 1
    assert int(metrics["slmops_prefix_cache_reused_tokens_total"]) == warm["prompt_tokens_details"]["cached_tokens"]
    assert int(metrics["slmops_prefix_cache_evictions_total"]) == 0
    assert int(metrics["slmops_prefix_cache_bytes"]) > 0


def test_cached_tokens_count_a_prompt_once_with_n_streamed_and_in_responses(tiny_onnx):
    """Every way of asking reports the prefix hits of its prompt, read once, however many choices it has.

    With n choices the later ones copy the first one's prefill; that is not a hit of the
    request's prompt, so a cold prompt asked with n=2 reports 0.
    """
    import openai
    from fastapi.testclient import TestClient

    from slmops.server import ServerConfig, create_app

    config = ServerConfig(load_wait=60, parallel=4, threads=1, prefix_cache=BUDGET)
    text = " ".join(f"word{index}" for index in range(40))
    with TestClient(create_app(config, [str(tiny_onnx)])) as client:
        in_process.wait_healthy(client)
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)

        def chat(suffix: str, n: int, stream: bool):
            ask = {"model": "model", "messages": [{"role": "user", "content": text + suffix}], "max_tokens": 2}
            if not stream:
                return oai.chat.completions.create(**ask, n=n).usage
            chunks = list(oai.chat.completions.create(**ask, n=n, stream=True, stream_options={"include_usage": True}))
            assert len({choice.index for chunk in chunks for choice in chunk.choices}) == n
            return chunks[-1].usage

        # The suffixes start with different letters: each shares exactly the text with what came before.
        cold = chat(" zero", 2, True)
        assert cold.prompt_tokens_details.cached_tokens == 0
        hit = chat(" one", 1, False).prompt_tokens_details.cached_tokens
        assert MIN_REUSE <= hit < cold.prompt_tokens
        assert chat(" two", 2, True).prompt_tokens_details.cached_tokens == hit
        assert chat(" six", 3, False).prompt_tokens_details.cached_tokens == hit
        response = oai.responses.create(model="model", input=text + " four", max_output_tokens=2)
        assert response.usage.input_tokens_details.cached_tokens == hit
        assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_prefix_cache_size_flag(tmp_path):
    from slmops.errors import UsageError
    from slmops.server.commands import parse_size

    assert parse_size("512MB", "--prefix-cache") == 512 << 20
    assert parse_size("0", "--prefix-cache") == 0
    with pytest.raises(UsageError, match="--prefix-cache 'lots' is not a size"):
        parse_size("lots", "--prefix-cache")


TURNS = [
    ("You are a careful assistant for a bicycle shop. " * 12, "Which tools do I need to change a flat tyre?"),
    ("You are a careful assistant for a bicycle shop. " * 12, "How often should I oil the chain?"),
    ("You answer questions about cooking, briefly. " * 10, "How long do I boil an egg?"),
    ("You help with travel plans in Europe. " * 10, "What should I see in Rome in two days?"),
]


def agreement(first: list[list[int]], second: list[list[int]]) -> float:
    """The share of positions where two sets of answers have the same token."""
    same = sum(one == two for left, right in zip(first, second) for one, two in zip(left, right))
    return same / sum(max(len(left), len(right)) for left, right in zip(first, second))


@pytest.mark.slow
def test_int4_answers_with_reuse_agree_with_cold_prefill(smollm2_int4):
    model = slmops.load(smollm2_int4, threads=2)
    warm, cold = BatchedDecoder(model, 4, 2048, BUDGET), BatchedDecoder(model, 4, 2048, 0)
    reused, fresh = [], []
    for system, question in TURNS:
        chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        first = sequence(model, model.prompt_ids(chat), 32)
        run(warm, first)
        chat += [
            {"role": "assistant", "content": model.decode(first.tokens).strip()},
            {"role": "user", "content": "Say that again in one short sentence."},
        ]
        ids = model.prompt_ids(chat)
        second = sequence(model, ids, 32)
        reused += run(warm, second)
        fresh += run(cold, sequence(model, ids, 32))
        assert second.cached >= len(model.prompt_ids(chat[:2])) - 1
        again = sequence(model, ids, 32)  # the same prompt again: all of it and its last logits are cached
        reused += run(warm, again)
        fresh += run(cold, sequence(model, ids, 32))
        assert again.cached == len(ids)
    assert agreement(reused, fresh) >= 0.98


def test_a_released_row_reads_as_zeros_and_leaves_the_others_alone():
    from slmops.runtime.rows import RowMemory

    memory = RowMemory(2, (3, 2, 1024, 4), np.float32)
    for buffer in memory.buffers:
        buffer[...] = 1.0
    memory.release(1)
    for buffer in memory.buffers:
        assert not buffer[1].any() and buffer[0].all() and buffer[2].all()
        buffer[1] = 2.0  # the row is written again as it fills
        assert (buffer[1] == 2.0).all()


def test_a_finished_answer_gives_its_row_back(tiny):
    made = decoder(tiny, rows=2, budget=0)
    short, long = sequence(tiny, prompt(40, 11), 2), sequence(tiny, prompt(40, 12), 30)
    made.add([short, long])
    while short in made.running or short in made.pending:
        made.advance()
    # long moved into row 0; row 1 went back to the system and reads as zeros
    assert long.row == 0 and not made.cache[0][1].any() and made.cache[0][0, :, :40].any()
    while made.busy:
        made.advance()


def test_a_guided_row_with_a_cached_beginning_answers_as_without_it(tiny):
    from slmops.server import tools

    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}}}
    system = prompt(90, 13)
    answers = []
    for budget in (0, BUDGET):
        made = decoder(tiny, budget=budget)
        run(made, sequence(tiny, system + prompt(10, 14), 3))
        guided = sequence(tiny, system + prompt(12, 15), 40)
        guided.matcher = made.grammars.matcher(tools.grammar(schema))
        answers.append((run(made, guided)[0], guided.cached))
    (cold, none), (warm, cached) = answers
    assert warm == cold and none == 0 and cached == 90
    assert tiny.decode(warm).startswith("{")


def test_a_cancelled_half_filled_prompt_gives_its_row_back(tiny, monkeypatch):
    monkeypatch.setattr(batched, "PREFILL_CHUNK", 64)
    made = decoder(tiny, rows=2, budget=0)
    waiting = sequence(tiny, prompt(200, 16), 2)
    made.add([waiting])
    made.advance()  # one chunk of 64 tokens in
    assert waiting.filled == 64 and made.cache[0][waiting.row, :, :64].any()
    made.cancel(waiting)
    assert not made.cache[0][waiting.row].any() and made.free == 2
