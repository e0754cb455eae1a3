"""The generation layer's pieces that need no model: Answer (a token -> its Response), the
Generator loop, leading whitespace, Result, and the batch's sampler, on fake tokenizers and logits."""

import numpy as np
import pytest

from slmops.runtime import generate
from slmops.runtime.generate import Answer, LeadingWhitespace, Response, Result, collect, decode_loop, strip_leading
from slmops.runtime.options import GenerationOptions
from slmops.runtime.sampling import CHUNK, Sampler, draw, nucleus, penalize

EOS = 0
WORDS = {EOS: "<eos>", 1: "Hello", 2: " wor", 3: "ld", 4: " #", 5: "#", 6: "# more", 7: " \n", 8: "\n"}


class Words:
    """A tokenizer stream: each token is a fixed piece of text; records what it decoded."""

    def __init__(self) -> None:
        self.decoded: list[int] = []

    def decode(self, token: int) -> str:
        self.decoded.append(token)
        return WORDS[token]


class Grammar:
    """A matcher that allows the tokens in ``allowed`` and is complete after ``complete_after`` tokens."""

    def __init__(self, allowed: set[int], complete_after: int = 99) -> None:
        self.allowed, self.complete_after, self.consumed = allowed, complete_after, 0

    def consume_token(self, token: int) -> bool:
        self.consumed += 1
        return token in self.allowed

    def is_stopped(self) -> bool:
        return self.consumed >= self.complete_after

    def get_error(self) -> str:
        return "token not allowed"


def answer(**kwargs) -> Answer:
    return Answer(Words(), prompt_tokens=7, start=0.0, stop_ids={EOS}, **kwargs)


def feed(answer: Answer, tokens: list[int], full_at: int | None = None) -> list[Response]:
    """Responses to ``tokens`` until one finishes the answer."""
    responses = []
    for index, token in enumerate(tokens):
        responses.append(answer.add(token, full=index == full_at))
        if responses[-1].finish_reason:
            break
    return responses


def texts(responses: list[Response]) -> list[str]:
    return [response.text for response in responses]


# ---- Answer: stops, limits, finish reasons ------------------------------------


def test_a_stop_token_ends_the_answer_unseen_and_undecoded():
    tokens = answer()
    responses = feed(tokens, [1, 2, EOS, 3])
    assert texts(responses) == ["Hello", " wor", ""]
    assert [r.finish_reason for r in responses] == [None, None, "stop"]
    assert responses[-1].completion_tokens == 3 and responses[-1].token == EOS  # the stop token counts
    assert EOS not in tokens.stream.decoded


def test_a_stop_string_split_over_tokens_cuts_the_text():
    responses = feed(answer(stop=("###",)), [1, 4, 5, 6, 3])
    assert "".join(texts(responses)) == "Hello " and responses[-1].finish_reason == "stop"
    assert len(responses) == 4


def test_the_limit_ends_with_length_and_releases_held_back_text():
    responses = feed(answer(stop=("###",), limit=3), [1, 4, 5, 3])
    assert texts(responses) == ["Hello", " ", "##"]  # "#" and "##" might have begun "###"
    assert responses[-1].finish_reason == "length" and responses[-1].completion_tokens == 3


def test_a_full_context_ends_with_length():
    responses = feed(answer(), [1, 2, 3, 2], full_at=1)
    assert texts(responses) == ["Hello", " wor"] and responses[-1].finish_reason == "length"


def test_a_stop_string_on_the_last_allowed_token_is_a_stop():
    responses = feed(answer(stop=("wor",), limit=2), [1, 2])
    assert texts(responses) == ["Hello", " "] and responses[-1].finish_reason == "stop"


def test_without_a_limit_only_stops_and_the_context_end_an_answer():
    responses = feed(answer(), [1, 2, 3] * 50)
    assert len(responses) == 150 and responses[-1].finish_reason is None


# ---- Answer: grammars ---------------------------------------------------------


def test_a_token_the_grammar_rejects_fails_the_answer():
    tokens = answer(matcher=Grammar({1, 2}))
    responses = feed(tokens, [1, 3, 2])
    assert texts(responses) == ["Hello", ""] and responses[-1].finish_reason == "stop"
    assert tokens.error == "the grammar broke: token not allowed"
    assert tokens.stream.decoded == [1]  # the rejected token is never shown


def test_a_complete_grammar_ends_the_answer_without_error():
    tokens = answer(matcher=Grammar({1, 4, 5}, complete_after=2), stop=("###",))
    responses = feed(tokens, [1, 4, 5])
    assert texts(responses) == ["Hello", " #"] and responses[-1].finish_reason == "stop"
    assert tokens.error is None


def test_a_stop_token_never_reaches_the_grammar():
    grammar = Grammar(set())
    tokens = answer(matcher=grammar)
    assert tokens.add(EOS).finish_reason == "stop" and grammar.consumed == 0 and tokens.error is None


# ---- Answer: metrics ----------------------------------------------------------


def test_metrics_count_from_the_request_and_rate_after_the_first_token(monkeypatch):
    clock = iter([1.0, 1.5, 2.0])
    monkeypatch.setattr(generate.time, "perf_counter", lambda: next(clock))
    first, second, third = feed(answer(limit=3), [1, 2, 3])
    assert (first.ttft_s, first.decode_tokens_per_s, first.elapsed_s) == (1.0, 0.0, 1.0)
    assert (second.ttft_s, second.decode_tokens_per_s, second.elapsed_s) == (1.0, 2.0, 1.5)
    assert (third.ttft_s, third.decode_tokens_per_s, third.elapsed_s) == (1.0, 2.0, 2.0)
    assert [r.prompt_tokens for r in (first, second, third)] == [7, 7, 7]
    assert [r.completion_tokens for r in (first, second, third)] == [1, 2, 3]


# ---- the Generator loop ---------------------------------------------------------


class Generator:
    """An og.Generator that yields ``tokens`` and is done after ``length`` of them."""

    def __init__(self, tokens: list[int], length: int) -> None:
        self.tokens, self.length, self.made = tokens, length, 0

    def generate_next_token(self) -> None:
        self.made += 1

    def get_next_tokens(self) -> list[int]:
        return [self.tokens[self.made - 1]]

    def is_done(self) -> bool:
        return self.made >= self.length or self.tokens[self.made - 1] == EOS


def test_the_generator_loop_ends_at_its_max_length_or_a_stop_token():
    responses = list(decode_loop(Generator([1, 2, 3, 2], length=3), answer()))
    assert texts(responses) == ["Hello", " wor", "ld"] and responses[-1].finish_reason == "length"
    responses = list(decode_loop(Generator([1, EOS, 2], length=3), answer()))
    assert texts(responses) == ["Hello", ""] and responses[-1].finish_reason == "stop"  # not "length"


def test_collect_gives_the_text_tokens_and_usage():
    result = collect(decode_loop(Generator([1, 2, 3, EOS], length=9), answer()))
    assert isinstance(result, Result)
    assert (result.text, result.tokens, result.finish_reason) == ("Hello world", [1, 2, 3, EOS], "stop")
    usage = result.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 4, 11)
    with pytest.raises(ValueError):
        collect([])


# ---- leading whitespace -------------------------------------------------------------


def response(text: str) -> Response:
    return Response(text, 1, 1, 1, 0.0, 0.0, 0.0)


def test_leading_whitespace_is_dropped_over_as_many_responses_as_it_spans():
    stream = strip_leading(response(text) for text in [" ", "", "\n Hi", " there", "\n"])
    assert [item.text for item in stream] == ["", "", "Hi", " there", "\n"]
    leading = LeadingWhitespace()  # the server strips its queued responses with the same rule
    assert [leading.strip(response(text)).text for text in ["\n", " a ", " b"]] == ["", "a ", " b"]


# ---- the batch's sampler -----------------------------------------------------------------


def sampler(**options) -> Sampler:
    return Sampler(GenerationOptions(**options))


def test_temperature_zero_is_the_most_likely_token():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert sampler(temperature=0).sample(logits, [0], []) == 1


def test_the_repetition_penalty_weakens_seen_tokens_either_sign():
    logits = np.array([2.0, 1.9, -1.0, -1.1], np.float32)
    penalized = penalize(logits, np.array([0, 2, 0]), 1.25)
    np.testing.assert_allclose(penalized, [1.6, 1.9, -1.25, -1.1])
    assert logits[0] == 2.0  # the logits given are not changed
    assert sampler(temperature=0, repetition_penalty=1.25).sample(logits, [3, 0], []) == 1
    assert sampler(temperature=0, repetition_penalty=1.25).sample(logits, [3], [0]) == 1  # generated ones too
    assert sampler(temperature=0).sample(logits, [0], [0]) == 0


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    scaled = np.log(np.array([0.2, 0.5, 0.3]))
    keep, probs = nucleus(scaled, 1.0, top_k=0, top_p=1.0)
    assert keep.tolist() == [1, 2, 0] and np.allclose(probs, [0.5, 0.3, 0.2])
    keep, probs = nucleus(scaled, 1.0, top_k=2, top_p=1.0)
    assert keep.tolist() == [1, 2] and np.allclose(probs, [0.625, 0.375])
    keep, probs = nucleus(scaled, 1.0, top_k=0, top_p=0.6)  # 0.5 is short of 0.6: the next token joins
    assert keep.tolist() == [1, 2] and np.allclose(probs, [0.625, 0.375])
    keep, _ = nucleus(scaled, 1.0, top_k=0, top_p=0.5)
    assert keep.tolist() == [1]
    assert sampler(temperature=1.0, top_k=1).sample(scaled, [], []) == 1


def full_sort_nucleus(logits, temperature, top_k, top_p):
    """The kept tokens and probabilities by the definition: every token sorted."""
    scaled = logits.astype(np.float64) / temperature
    keep = np.argsort(scaled, kind="stable")[::-1]
    keep = keep[:top_k] if 0 < top_k < len(keep) else keep
    probs = np.exp(scaled[keep] - scaled[keep[0]])
    probs /= probs.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        keep, probs = keep[:cut], probs[:cut] / probs[:cut].sum()
    return keep, probs


@pytest.mark.parametrize("spread", [0.3, 3.0, 12.0])  # flat (top-p needs thousands of tokens) to peaked
def test_sorting_only_the_head_keeps_what_sorting_everything_keeps(spread):
    logits = (np.random.default_rng(7).standard_normal(20_000) * spread).astype(np.float32)
    logits[::97] = -np.inf  # a grammar's mask
    for temperature, top_k, top_p in [(0.7, 50, 1.0), (1.0, 0, 0.9), (0.7, 0, 0.95), (1.3, 300, 0.8), (1.0, 0, 1.0)]:
        keep, probs = nucleus(logits, temperature, top_k, top_p)
        want_keep, want_probs = full_sort_nucleus(logits, temperature, top_k, top_p)
        assert keep.tolist() == want_keep.tolist(), (temperature, top_k, top_p)
        np.testing.assert_allclose(probs, want_probs, rtol=1e-6)


def test_a_grammar_that_allows_few_tokens_keeps_only_those():
    logits = np.full(20_000, -np.inf, np.float32)
    allowed = np.array([3, 700, 4_001, 19_999])
    logits[allowed] = [1.0, 2.0, 0.5, 1.5]
    keep, probs = nucleus(logits, 0.7, 50, 1.0)  # more tokens asked than allowed: the rest weigh nothing
    assert keep[:4].tolist() == [700, 19_999, 3, 4_001] and probs[4:].sum() == 0
    keep, _ = nucleus(logits, 1.0, 0, 0.99)
    assert sorted(keep.tolist()) == sorted(allowed.tolist())


def test_draws_follow_the_probabilities_and_never_pick_a_masked_token():
    logits = np.log(np.array([0.6, 0.3, 0.1, 1e-3], np.float32))
    logits[3] = -np.inf  # what a grammar's mask does
    draw = sampler(temperature=1.0, top_k=0, top_p=1.0, seed=0)
    counts = np.bincount([draw.sample(logits, [], []) for _ in range(4000)], minlength=4)
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3] / 4000, [0.6, 0.3, 0.1], atol=0.03)


def test_a_draw_over_the_whole_vocabulary_inverts_its_cumulative_distribution():
    logits = (np.random.default_rng(5).standard_normal(3 * CHUNK + 77) * 4).astype(np.float32)  # a partial last chunk
    logits[CHUNK : 2 * CHUNK] = -np.inf  # a chunk masked whole, and tokens scattered in the others
    logits[::13] = -np.inf
    logits[-40:] = -np.inf  # the tail too, so a uniform near 1 must not run past the last allowed token
    weights = np.exp((logits.astype(np.float64) - logits.max()) / 0.8)
    cumulative = np.cumsum(weights) / weights.sum()
    uniforms = (np.arange(20_000) + 0.5) / 20_000
    drawn = np.array([draw(logits, 0.8, u) for u in uniforms])
    wanted = np.minimum(np.searchsorted(cumulative, uniforms, side="right"), len(logits) - 1)
    assert np.mean(drawn == wanted) > 0.999  # apart from float rounding at a boundary, the same token
    assert np.all(np.isfinite(logits[drawn]))
    assert np.isfinite(logits[draw(logits, 0.8, np.nextafter(1.0, 0.0))])


def test_a_seed_reproduces_the_draws():
    logits = np.random.default_rng(1).normal(size=50).astype(np.float32)

    def draws(seed):
        picker = sampler(temperature=1.0, top_k=0, top_p=1.0, seed=seed)
        return [picker.sample(logits, [], []) for _ in range(30)]

    assert draws(3) == draws(3) and draws(3) != draws(4)


def test_a_prompt_appended_in_chunks_answers_as_one_appended_whole(tiny_onnx, monkeypatch):
    # The generator computes the logits of every position it reads: long prompts are read a
    # chunk at a time (generate.PREFILL_CHUNK), which must not change what follows them.
    import onnxruntime_genai as og

    import slmops

    model = slmops.load(tiny_onnx, threads=1)
    ids = [int(token) for token in np.random.default_rng(3).integers(10, 500, 23)]

    def last_logits(chunk: int) -> np.ndarray:
        monkeypatch.setattr(generate, "PREFILL_CHUNK", chunk)
        params = og.GeneratorParams(model.og_model)
        params.set_search_options(max_length=len(ids) + 4)
        generator = og.Generator(model.og_model, params)
        generate.append_prompt(generator, ids)
        assert list(generator.get_sequence(0)) == ids
        return np.array(generator.get_output("logits"))[0, -1].copy()

    whole = last_logits(len(ids))
    for chunk in (1, 5, 8):
        np.testing.assert_allclose(last_logits(chunk), whole, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 5)
    chunked = model.generate(ids, max_tokens=6, temperature=0).tokens
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 1000)
    assert chunked == model.generate(ids, max_tokens=6, temperature=0).tokens
