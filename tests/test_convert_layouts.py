"""The calibrated layout deploy takes: this CPU's MatMulNBits kernels timed on the model's own layer shapes."""

from __future__ import annotations

import json

import pytest

from slmops.convert import layouts
from slmops.convert.layouts import COARSE, FINE


def bits_a_weight(layout: layouts.Layout, k: int) -> float:
    """What a K-wide row costs in MatMulNBits at ``layout``: codes, an fp32 scale and a zero point a block."""

    def stored(bits: int, block: int) -> float:
        blocks = -(-k // block)
        return (blocks * block * bits + blocks * 32 + blocks * bits) / k

    return (1 - layout.int8_share) * stored(4, layout.block_size) + layout.int8_share * stored(8, layouts.INT8_BLOCK)


def test_both_layouts_fill_the_same_bytes():
    for k in (576, 896, 1536, 4864):
        assert abs(bits_a_weight(FINE, k) / bits_a_weight(COARSE, k) - 1) < 0.01, k


def test_the_layer_shapes_are_the_exports_weight_matmuls_but_the_lm_head(tiny_onnx, tiny_llama):
    config = json.loads((tiny_llama / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head = hidden // config["num_attention_heads"]
    qkv = hidden + 2 * config["num_key_value_heads"] * head  # the builder packs q, k and v into one MatMul
    one_layer = [(hidden, qkv), (hidden, hidden), (hidden, inner), (hidden, inner), (inner, hidden)]
    assert layouts.layer_shapes(tiny_onnx) == one_layer * layers


def test_the_probe_takes_the_first_layers_up_to_its_weight_budget(monkeypatch):
    monkeypatch.setattr(layouts, "PROBE_WEIGHTS", 10_000)
    assert layouts.probe_stack([(64, 64), (64, 64), (64, 64)]) == [(64, 64), (64, 64)]
    assert layouts.probe_stack([(200, 200), (64, 64)]) == [(200, 200)]  # one matrix at least


def test_the_kernels_run_every_layout_on_widths_that_are_not_whole_blocks(monkeypatch):
    monkeypatch.setattr(layouts, "ROUNDS", 3)
    times = layouts.time_kernels([(72, 40), (40, 72), (72, 24)], threads=1)
    assert set(times) == {"4-32", "4-64", "8-64"}
    assert all(len(values) == 3 and min(values) > 0 for values in times.values())


def rounds(*figures: tuple[float, float, float]) -> dict[str, list[float]]:
    """Kernel times by layout from (4-32, 4-64, 8-64) milliseconds a round."""
    return {name: [round_[index] for round_ in figures] for index, name in enumerate(("4-32", "4-64", "8-64"))}


def test_blocks_of_32_are_taken_only_within_the_tie_of_their_layer_mix():
    # an AVX2 Zen 3 class CPU: 4-bit blocks of 32 6% slower than 64, but fewer weights at the slower 8 bits
    zen3 = rounds((6.862, 6.481, 10.563))
    assert layouts.slowdown(zen3) < 1
    assert layouts.faster_layout(zen3) == FINE
    assert layouts.verdict(zen3).startswith("4-bit blocks of 32 with 22% of the layer weights 8-bit: ")
    slow = rounds((8.0, 6.481, 10.563))  # 23% slower at 4 bits: the mix is over the tie
    assert layouts.slowdown(slow) > 1 + layouts.TIE
    assert layouts.faster_layout(slow) == COARSE
    assert "more than 5% slower, so the coarser layout" in layouts.verdict(slow)


def test_a_host_that_slows_between_rounds_does_not_move_the_verdict():
    steady = rounds((6.5, 6.0, 10.0))
    drifting = rounds((6.5, 6.0, 10.0), (13.0, 12.0, 20.0), (19.5, 18.0, 30.0), (9.75, 9.0, 15.0))
    assert layouts.slowdown(drifting) == pytest.approx(layouts.slowdown(steady))
    assert layouts.faster_layout(drifting) == layouts.faster_layout(steady) == FINE
