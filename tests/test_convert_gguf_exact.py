"""A GGUF's Q4_0, Q4_1 and Q8_0 blocks taken into the ONNX graph as they are, not requantized."""

from __future__ import annotations

import json

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
    assert routes["Q4_1"]["route"] == "exact: int4 blocks of 32, plus the block minimum"
    assert routes["Q4_1"]["extra_bytes"] > 0 and routes["Q4_0"]["extra_bytes"] == 0
    assert any("embedding gathers the LM head's GGUF blocks" in note for note in report.notes)


def test_requantized_blocks_differ_and_the_report_says_so(mixed_gguf, fp32_logits, tmp_path):
    options = QuantizationOptions(accuracy_level=1, gguf_blocks="requantize")
    report = convert(mixed_gguf, tmp_path / "requantized", precision="int4", quantization=options, log_level=0)
    assert report.gguf_weights == {}
    logits = genai_logits(tmp_path / "requantized")
    assert np.abs(logits - fp32_logits).max() > 1e-3 * np.abs(fp32_logits).max()


def test_a_type_without_exact_form_is_requantized_with_its_error_reported(tiny_model_factory, tmp_path):
    kinds = {**MIXED, "blk.1.ffn_down.weight": "F16", "blk.0.attn_output.weight": "Q5_0"}
    gguf_path = write_gguf(tiny_model_factory("llama", tie=True), tmp_path / "with-f16.gguf", kind=kinds)
    report = convert(gguf_path, tmp_path / "int8", precision="int8", log_level=0)
    routes = report.gguf_weights
    assert routes["F16"]["route"] == "requantized to int8 blocks of 32" and routes["F16"]["tensors"] == 1
    assert 0 < routes["F16"]["relative_rms_error"] < 0.05  # int8 of random weights: well under 5%
    assert routes["Q5_0"]["route"] == "exact: int8 blocks of 32" and routes["Q5_0"]["relative_rms_error"] == 0
    # an int8 export takes the 8-bit forms only: 4-bit blocks are requantized to int8, nearly losslessly
    assert routes["Q4_1"]["route"] == "requantized to int8 blocks of 32"
    assert 0 < routes["Q4_1"]["relative_rms_error"] < 0.01
    assert any(note.startswith("GGUF F16 (1 matrix): requantized") for note in report.notes)


def _random_blocks(kind, rows: int, columns: int, seed: int = 0, scale: float = 0.01) -> np.ndarray:
    """Valid blocks of any type: random bytes with every fp16 scale set to a small finite value."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    scale_at = {"Q6_K": (208,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q5_1": (0, 2), "Q4_1": (0, 2)}.get(kind.name, (0,))
    for start in scale_at:
        raw[..., start : start + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


@pytest.fixture(scope="module")
def k_quant_model(tiny_tokenizer, tmp_path_factory):
    """A 1-layer llama with hidden size 256 (K-quant rows are multiples of 256), tied."""
    import shutil

    import torch
    import transformers

    from tests import tiny

    folder = tmp_path_factory.mktemp("kquant") / "model"
    config = transformers.LlamaConfig(
        vocab_size=len(tiny.SPECIAL_TOKENS) + 509,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    for item in tiny_tokenizer.iterdir():
        shutil.copy(item, folder / item.name)
    return folder


def test_k_quants_and_a_block_16_tied_embedding_are_exact(k_quant_model, tmp_path):
    import gguf

    from tests.test_convert import PROMPT_IDS

    vocab = json.loads((k_quant_model / "config.json").read_text())["vocab_size"]
    shapes = {  # GGUF name -> (type, rows, columns): q/k/v of three types in one packed MatMul
        "token_embd.weight": ("Q6_K", vocab, 256),  # the tied LM head and embedding: int8 blocks of 16
        "blk.0.attn_q.weight": ("Q4_K", 256, 256),
        "blk.0.attn_k.weight": ("Q5_K", 128, 256),
        "blk.0.attn_v.weight": ("Q6_K", 128, 256),
        "blk.0.attn_output.weight": ("Q5_K", 256, 256),
        "blk.0.ffn_gate.weight": ("Q4_K", 512, 256),
        "blk.0.ffn_up.weight": ("Q6_K", 512, 256),
        "blk.0.ffn_down.weight": ("Q4_K", 256, 512),
    }
    raw = {
        name: (kind, _random_blocks(gguf.GGMLQuantizationType[kind], rows, columns, seed, scale=0.0005))
        for seed, (name, (kind, rows, columns)) in enumerate(shapes.items())
    }
    gguf_path = write_gguf(k_quant_model, tmp_path / "k.gguf", raw=raw)
    convert(gguf_path, tmp_path / "fp32", precision="fp32", log_level=0)
    options = QuantizationOptions(accuracy_level=1)
    report = convert(gguf_path, tmp_path / "exact", precision="int4", quantization=options, log_level=0)
    assert set(report.gguf_weights) == {"Q4_K", "Q5_K", "Q6_K"}
    assert all(row["relative_rms_error"] == 0 for row in report.gguf_weights.values())
    assert "int8 blocks of 16" in report.gguf_weights["Q6_K"]["route"]
    assert any("embedding gathers the LM head's GGUF blocks" in note for note in report.notes)
    expected, logits = genai_logits(tmp_path / "fp32"), genai_logits(tmp_path / "exact")
    assert len(PROMPT_IDS) == logits.shape[0]
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_every_exact_type_gives_back_ggufs_own_values(name, tmp_path):
    import gguf

    from slmops.convert.gguf_blocks import tensor_blocks
    from slmops.convert.gguf_file import dequantize, read_gguf

    kind = gguf.GGMLQuantizationType[name]
    raw = _random_blocks(kind, 6, 512)
    writer = gguf.GGUFWriter(str(tmp_path / "one.gguf"), "llama")
    writer.add_tensor("probe.weight", raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf_file = read_gguf(tmp_path / "one.gguf")
    tensor = gguf_file.tensor("probe.weight")
    blocks = tensor_blocks(gguf_file, tensor)
    assert blocks is not None and blocks.ggml_type == name
    expected = dequantize(gguf_file, tensor)
    # the minimum's integer part moved into the zero point rounds once more, at float32 precision
    assert np.allclose(blocks.weight(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert blocks.bits == (4 if name in ("Q4_0", "Q4_1", "Q4_K") else 8)
    assert blocks.block == (16 if name == "Q6_K" else 32)
    assert (blocks.minimum is not None) == (name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"))
