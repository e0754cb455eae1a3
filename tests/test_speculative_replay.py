"""benchmarks/speculative_replay.py: the replay of recorded answers through slmops' drafting (no model runs)."""

import pytest

from tests.test_realistic_sizes import BENCHMARKS


@pytest.fixture
def replay(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import speculative_replay

    return speculative_replay


def test_costs_interpolate_between_measured_sizes_and_extend_past_the_largest(replay):
    cost = replay.cost_in_steps({0: 10.0, 1: 12.0, 2: 14.0, 4: 18.0})
    assert cost(0) == 1.0 and cost(3) == pytest.approx(1.6) and cost(8) == pytest.approx(2.6)


def test_an_answer_that_copies_its_prompt_replays_faster_than_the_plain_loop(replay):
    prompt = list(range(100, 200))
    answer = prompt[10:70]
    cheap = replay.cost_in_steps({0: 1.0, 1: 1.25, 16: 5.0})
    result = replay.replay(prompt, answer, cheap)
    assert result["ratio"] > 2 and 0 < result["accepted"] <= result["drafted"]
    assert replay.bound(prompt, answer, cheap) >= result["ratio"]
    # verifies that cost more than they could save: the policy backs off, the bound drafts nothing
    dear = replay.cost_in_steps({0: 1.0, 1: 4.0, 16: 50.0})
    assert replay.replay(prompt, answer, dear)["ratio"] < 1
    assert replay.bound(prompt, answer, dear) == 1.0


def test_an_answer_with_nothing_to_copy_is_the_plain_loop(replay):
    result = replay.replay(list(range(50)), list(range(1000, 1040)), replay.cost_in_steps({0: 1.0, 1: 1.3, 2: 1.6}))
    assert result == {"ratio": 1.0, "drafted": 0, "accepted": 0}
