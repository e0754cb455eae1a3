"""The 8-bit MatMuls of a calibrated INT4 export, chosen by measured sensitivity."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np

from slmops.convert.calibrated import SENSITIVITY_FILE, CalibratedOptions, quantize_calibrated
from slmops.convert.sensitivity import choose_int8, int8_gains, log_softmax
from tests.test_convert import agreement, torch_logits


def test_each_candidate_is_scored_at_four_bits_beside_the_fp32_weights():
    fp32 = {"a": np.zeros(2), "b": np.zeros(2), "head": np.zeros(2)}
    four = {"a": np.ones(2), "b": np.full(2, 3.0)}
    seen = []

    def divergence(weights):  # how far the weights are from FP32
        seen.append(sorted(weights))
        return sum(float(np.abs(w - fp32[name]).sum()) for name, w in weights.items())

    assert int8_gains(divergence, fp32, four) == {"a": 2.0, "b": 6.0}
    assert seen == [["a", "b", "head"]] * 2  # every weight fed each time, one of them at 4 bits


def test_choice_spends_the_share_on_the_largest_gains_per_weight():
    gains = {"small-loud": 1.0, "big-loud": 3.0, "big-quiet": 0.5, "harmful": -0.1}
    sizes = {"small-loud": 100, "big-loud": 400, "big-quiet": 400, "harmful": 100}
    # per weight: small-loud 0.01, big-loud 0.0075, big-quiet 0.00125; a budget of half the 1,000 weights
    assert choose_int8(gains, sizes, 0.5) == ["small-loud", "big-loud"]
    assert choose_int8(gains, sizes, 0.2) == ["small-loud"]  # big-loud no longer fits
    assert choose_int8(gains, sizes, 1.0) == ["small-loud", "big-loud", "big-quiet"]  # never a loss


def test_log_softmax_normalises():
    logp = log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0)


def test_measured_share_keeps_the_chosen_matmuls_at_8_bits(tiny_onnx, tiny_llama, tmp_path):
    import onnx

    folder = tmp_path / "share"
    shutil.copytree(tiny_onnx, folder)
    options = CalibratedOptions(
        block_size=32, int8_share=0.3, calibration_windows=4, calibration_tokens=64, sensitivity_windows=1
    )
    quantize_calibrated(folder, options)
    record = json.loads((folder / SENSITIVITY_FILE).read_text())
    # every layer MatMul scored; the LM head (screened) and the head's view of the rotated state (8-bit) are not candidates
    assert len(record["kld_gain_of_int8"]) == 2 * 5
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert Counter(bits.values())[8] == len(record["int8"]) + 1  # the chosen ones and the rotation
    assert all(bits[f"{name}_Q8"] == 8 for name in record["int8"]) and record["int8"]
    same, correlation = agreement(folder, torch_logits(tiny_llama))
    assert correlation > 0.8, (same, correlation)
