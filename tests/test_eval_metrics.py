"""The quality maths on hand-made logits, and the window plan."""

import math

import numpy as np
import pytest

from slmops.errors import UsageError
from slmops.evaluate.logits import LogitsWriter, SavedLogits, WindowPlan
from slmops.evaluate.metrics import TokenStats, log_softmax, summarize


def test_log_softmax_rows_are_normalised_and_shift_invariant():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]])
    lp = log_softmax(logits)
    assert np.allclose(np.exp(lp).sum(axis=-1), 1.0)
    assert np.allclose(lp[1], np.log(1 / 3))
    assert np.allclose(log_softmax(logits + 7.0), lp)


def test_identical_models_give_zero_divergence_and_full_agreement():
    rng = np.random.default_rng(0)
    lp = log_softmax(rng.normal(size=(50, 20)) * 3)
    targets = rng.integers(0, 20, size=50)
    figures = summarize(TokenStats.compare(lp, targets, lp))
    assert figures.kld_mean == pytest.approx(0.0, abs=1e-7)
    assert figures.same_top_pct == 100.0
    assert figures.delta_ppl_pct == pytest.approx(0.0, abs=1e-9)
    assert figures.dp_rms_pct == pytest.approx(0.0, abs=1e-9)
    assert figures.ppl == pytest.approx(figures.ref_ppl)


def test_kld_ppl_and_delta_p_match_hand_computed_values():
    ref = np.log(np.array([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]))
    test = np.log(np.array([[0.25, 0.5, 0.25], [0.6, 0.2, 0.2]]))
    targets = np.array([0, 0])
    figures = summarize(TokenStats.compare(test, targets, ref))
    kld_0 = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)
    kld_1 = 0.9 * math.log(0.9 / 0.6) + 2 * 0.05 * math.log(0.05 / 0.2)
    assert figures.kld_mean == pytest.approx((kld_0 + kld_1) / 2, rel=1e-5)
    assert figures.ppl == pytest.approx(math.exp(-(math.log(0.25) + math.log(0.6)) / 2), rel=1e-5)
    assert figures.ref_ppl == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.9)) / 2), rel=1e-5)
    # First token: the test model ranks token 1 first, the reference token 0; second: both token 0.
    assert figures.same_top_pct == pytest.approx(50.0)
    dps = np.array([0.25 - 0.5, 0.6 - 0.9])
    assert figures.dp_mean_pct == pytest.approx(dps.mean() * 100, rel=1e-5)
    assert figures.dp_rms_pct == pytest.approx(math.sqrt((dps**2).mean()) * 100, rel=1e-5)
    assert figures.delta_ppl_pct > 0


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    figures = summarize(TokenStats.compare(log_softmax(np.zeros((10, 64))), np.arange(10)))
    assert figures.ppl == pytest.approx(64.0)
    assert figures.kld_mean is None


def scored_targets(plan: WindowPlan) -> list[int]:
    """The text positions whose tokens ``plan`` scores, in order."""
    targets = []
    for index, start in enumerate(plan.starts):
        targets += [start + position + 1 for position in range(plan.first_scored(index), plan.size - 1)]
    return targets


def test_window_plan_scores_every_target_exactly_once():
    plan = WindowPlan.make(n_tokens=100, size=20, stride=5)
    scored = scored_targets(plan)
    assert scored == list(range(1, plan.starts[-1] + plan.size))
    assert plan.scored_count() == len(scored)
    assert len(WindowPlan.make(100, 20, 5, limit=3).starts) == 3


def test_window_plan_without_overlap_scores_all_but_each_later_window_start():
    plan = WindowPlan.make(n_tokens=100, size=20, stride=20)
    scored = scored_targets(plan)
    assert scored == [token for token in range(1, 100) if token % 20]
    assert plan.scored_count() == len(scored) == 95


def test_window_plan_rejects_a_text_shorter_than_a_window():
    with pytest.raises(UsageError, match="fewer than one window"):
        WindowPlan.make(n_tokens=10, size=32)


def test_saved_logits_round_trip_and_refuse_other_tokens(tmp_path):
    tokens = np.arange(40)
    plan = WindowPlan.make(len(tokens), 16, 8)
    rng = np.random.default_rng(1)
    writer = LogitsWriter(tmp_path / "ref", plan, tokens, vocab_size=12, model="m")
    written = []
    for index, _window, first in plan.windows(tokens):
        lp = log_softmax(rng.normal(size=(plan.size - 1 - first, 12)))
        writer.write(index, lp)
        written.append(lp)
    writer.close()
    saved = SavedLogits(tmp_path / "ref")
    saved.check(plan, tokens)
    for index, window, first in plan.windows(tokens):
        assert np.allclose(saved.scored(index, window, first), written[index], atol=2e-3)
    with pytest.raises(UsageError, match="other tokens or windows"):
        saved.check(plan, tokens + 1)
