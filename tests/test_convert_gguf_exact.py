"""A GGUF's Q4_0, Q4_1 and Q8_0 blocks taken into the ONNX graph as they are, not requantized."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.convert import QuantizationOptions, convert
from tests.test_convert import genai_logits
from tests.test_convert_inputs import write_gguf

# Every exact route in one tiny tied model: q/k/v packed into one MatMul, gate and up sharing
# their block sums, and a Q4_1 embedding read from the LM head with its minima.
MIXED = {
    "token_embd.weight": "Q4_1",
    **{f"blk.0.attn_{part}.weight": "Q4_0" for part in ("q", "k", "v")},
    "blk.0.attn_output.weight": "Q8_0",
    "blk.0.ffn_gate.weight": "Q4_1",
    "blk.0.ffn_up.weight": "Q4_1",
    "blk.0.ffn_down.weight": "Q4_0",
    **{f"blk.1.attn_{part}.weight": "Q4_1" for part in ("q", "k", "v", "output")},
    **{f"blk.1.ffn_{part}.weight": "Q8_0" for part in ("gate", "up", "down")},
}


@pytest.fixture(scope="module")
def mixed_gguf(tiny_model_factory, tmp_path_factory):
    source = tiny_model_factory("llama", tie=True)
    return write_gguf(source, tmp_path_factory.mktemp("exact") / "mixed.gguf", kind=MIXED)


@pytest.fixture(scope="module")
def fp32_logits(mixed_gguf, tmp_path_factory):
    """The reference: the GGUF dequantized to fp32, exported at fp32."""
    folder = tmp_path_factory.mktemp("fp32") / "model"
    convert(mixed_gguf, folder, precision="fp32", log_level=0)
    return genai_logits(folder)


def test_exact_blocks_give_the_dequantized_models_logits(mixed_gguf, fp32_logits, tmp_path):
    # accuracy level 1: fp32 activations, so only the summation order differs from the fp32 export
    options = QuantizationOptions(accuracy_level=1)
    report = convert(mixed_gguf, tmp_path / "exact", precision="int4", quantization=options, log_level=0)
    logits = genai_logits(tmp_path / "exact")
    assert np.abs(logits - fp32_logits).max() <= 1e-4 * np.abs(fp32_logits).max()
    routes = report.gguf_weights
    assert set(routes) == {"Q4_0", "Q4_1", "Q8_0"}
    assert all(row["route"].startswith("exact") and row["relative_rms_error"] == 0 for row in routes.values())
    # counted per Hugging Face matrix (q, k and v apart), the tied LM head as the embedding's type
    assert (routes["Q4_0"]["tensors"], routes["Q4_1"]["tensors"], routes["Q8_0"]["tensors"]) == (4, 7, 4)
    assert "int4 blocks of 32, zero point 0 plus the block minimum" in routes["Q4_1"]["route"]
    assert routes["Q4_1"]["extra_bytes"] > 0 and routes["Q4_0"]["extra_bytes"] == 0
    assert any("embedding gathers the LM head's GGUF blocks" in note for note in report.notes)


def test_requantized_blocks_differ_and_the_report_says_so(mixed_gguf, fp32_logits, tmp_path):
    options = QuantizationOptions(accuracy_level=1, gguf_blocks="requantize")
    report = convert(mixed_gguf, tmp_path / "requantized", precision="int4", quantization=options, log_level=0)
    assert report.gguf_weights == {}
    logits = genai_logits(tmp_path / "requantized")
    assert np.abs(logits - fp32_logits).max() > 1e-3 * np.abs(fp32_logits).max()
