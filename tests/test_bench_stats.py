"""The benchmark's statistics, computed from timestamps on a fake clock."""

import statistics

import pytest

from slmops.bench.stats import Distribution, Goodput, RequestRecord, median_is_stable, percentile, summarize
from slmops.bench.targets import Prompt, read_sse_line


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def record(ttft: float, gaps: list[float], prompt_tokens: int = 100, start: float = 0.0) -> RequestRecord:
    """A request that got its first token after ``ttft`` s and the next ones ``gaps`` apart."""
    clock = FakeClock(start)
    r = RequestRecord(start=clock(), prompt_tokens=prompt_tokens)
    r.add_chunk(clock.advance(ttft))
    for gap in gaps:
        r.add_chunk(clock.advance(gap))
    r.finish(clock.advance(0.001))
    return r


def test_percentile_matches_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_request_figures_from_stream_timestamps():
    r = record(ttft=0.050, gaps=[0.010, 0.012, 0.008], prompt_tokens=200)
    assert r.output_tokens == 4
    assert r.ttft == pytest.approx(0.050)
    assert r.e2el == pytest.approx(0.081)
    # TPOT = (E2EL - TTFT) / (out - 1), as vLLM defines it
    assert r.tpot == pytest.approx((0.081 - 0.050) / 3)
    assert r.itls == pytest.approx([0.010, 0.012, 0.008])
    assert r.prefill_tps == pytest.approx(200 / 0.050)
    assert r.decode_tps == pytest.approx(1 / r.tpot)


def test_one_token_answer_has_no_tpot():
    r = record(ttft=0.02, gaps=[])
    assert r.output_tokens == 1 and r.tpot is None and r.decode_tps is None and r.itls == []


def test_server_usage_overrides_the_chunk_count():
    # A server may pack several tokens into one SSE chunk: its usage block is the truth.
    r = RequestRecord(start=0.0, prompt_tokens=10)
    r.add_chunk(0.1)
    r.add_chunk(0.2)
    r.finish(0.3, output_tokens=5)
    assert r.output_tokens == 5
    assert r.tpot == pytest.approx((0.3 - 0.1) / 4)


def test_sse_lines_are_timestamped_and_usage_read():
    clock = FakeClock(0.0)
    r = RequestRecord(start=0.0, prompt_tokens=3)
    lines = [
        'data: {"choices":[{"delta":{"role":"assistant"}}]}',
        "",
        'data: {"choices":[{"delta":{"content":"Hel"}}]}',
        ": keep-alive comment",
        'data: {"choices":[{"delta":{"content":"lo"}}]}',
        'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}',
        "data: [DONE]",
    ]
    usage = None
    for line in lines:
        clock.advance(0.01)
        usage = read_sse_line(line, r, clock) or usage
    assert r.chunk_times == pytest.approx([0.03, 0.05])  # the role-only chunk carries no token
    assert usage == {"prompt_tokens": 9, "completion_tokens": 2}


def test_summarize_counts_failures_and_throughput():
    good = [record(0.1, [0.01] * 9, start=i) for i in range(4)]
    failed = RequestRecord(start=0.0, prompt_tokens=100, error="boom")
    stats = summarize(good + [failed], duration_s=2.0, goodput=Goodput(ttft_ms=150, tpot_ms=20))
    assert stats.requests == 5 and stats.failed == 1
    assert stats.output_tokens_mean == 10
    assert stats.request_throughput == pytest.approx(2.0)
    assert stats.output_throughput == pytest.approx(20.0)
    assert stats.total_token_throughput == pytest.approx((40 + 400) / 2)
    assert stats.goodput == pytest.approx(2.0)
    assert stats.ttft_ms.median == pytest.approx(100)
    assert stats.tpot_ms.median == pytest.approx((0.1 + 0.09 + 0.001 - 0.1) / 9 * 1000)
    assert stats.itl_ms.count == 36
    assert not stats.noisy


def test_goodput_excludes_requests_over_an_objective():
    fast, slow = record(0.1, [0.01] * 4), record(0.4, [0.01] * 4)
    stats = summarize([fast, slow], duration_s=1.0, goodput=Goodput.parse(["ttft:200", "tpot:50"]))
    assert stats.goodput == pytest.approx(1.0)
    assert Goodput.parse([]) is None
    assert Goodput.parse(["ttft:10,e2el:90"]) == Goodput(ttft_ms=10, e2el_ms=90)
    with pytest.raises(ValueError):
        Goodput.parse(["latency:5"])


def test_spread_marks_a_case_noisy():
    steady = [record(0.1, [0.010] * 9) for _ in range(5)]
    jumpy = [record(0.1, [gap] * 9) for gap in (0.005, 0.010, 0.030, 0.008, 0.020)]
    assert not summarize(steady, 1.0).noisy
    assert summarize(jumpy, 1.0).noisy


def test_distribution_and_stable_median():
    d = Distribution.of([1.0, 2.0, 3.0, 4.0], scale=1000)
    assert (d.median, d.min, d.max, d.count) == (2500.0, 1000.0, 4000.0, 4)
    assert d.cv == pytest.approx(statistics.pstdev([1, 2, 3, 4]) / 2.5)
    assert Distribution.of([]) is None
    assert not median_is_stable([1.0, 1.0, 1.0])  # too few to judge
    assert median_is_stable([1.0, 1.01, 0.99, 1.0, 1.0])
    assert not median_is_stable([1.0, 2.0, 3.0, 4.0])


def test_prompt_holds_text_and_exact_cut():
    p = Prompt(text="a b c d", tokens=2, cut="a b")
    assert p.tokens == 2 and p.cut == "a b"


def test_llama_cpp_target_loop_on_a_stand_in_module(tmp_path, monkeypatch):
    """The llama.cpp loop (reset, exact prompt, stop at max_tokens) without llama-cpp-python itself."""
    import sys
    import types

    from slmops.bench.targets import LlamaCppTarget

    calls = []

    class Llama:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs["n_threads"], kwargs["n_ctx"]))

        def tokenize(self, data, add_bos, special):
            return list(range(len(data.split())))

        def reset(self):
            calls.append(("reset",))

        def generate(self, ids, **kwargs):
            calls.append(("generate", len(ids), kwargs["top_k"]))
            while True:  # like llama.cpp: never stops by itself
                yield 7

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama, __version__="0.0-test"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 1000)
    target = LlamaCppTarget(gguf, threads=2)
    target.load()
    clock = FakeClock(0.0)
    ticking = lambda: clock.advance(0.01)  # noqa: E731
    r = target.request(Prompt(text="a b c d e f", tokens=4, cut=""), 5, ticking)
    assert calls == [("init", 2, 4096), ("reset",), ("generate", 4, 1)]
    assert r.prompt_tokens == 4 and r.output_tokens == 5 and r.ok
    assert target.weight_bytes == 1004 and target.describe()["library"] == "llama-cpp-python 0.0-test"
