"""The decode speed sweep and deploy compare: one token a step, whatever the answer's text."""

from __future__ import annotations

from slmops.evaluate.speed import _answer, measure
from slmops.runtime import load


def test_the_timed_answer_is_greedy_and_never_drafts(tiny_onnx):
    model = load(tiny_onnx)
    asked: list[dict] = []
    chat = model.chat

    def recorded(messages, **options):
        asked.append(options)
        return chat(messages, **options)

    model.chat = recorded  # type: ignore[method-assign]
    timed = _answer(model, 32)
    # prompt lookup would make an export whose answer loops look fast
    assert asked == [{"max_tokens": 32, "temperature": 0.0, "speculative": False}]
    assert timed.drafted_tokens == 0 and timed.completion_tokens > 0


def test_measure_reports_a_decode_speed_from_a_child_process(tiny_onnx):
    speed = measure(tiny_onnx, new_tokens=16, repeats=1)
    assert speed.decode_tokens_per_s > 0 and speed.ttft_s > 0 and speed.peak_rss_mb > 0
