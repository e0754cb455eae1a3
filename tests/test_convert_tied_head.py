"""A tied embedding read from the quantized LM head (GatherBlockQuantized) instead of an fp32 copy."""

from __future__ import annotations

import pytest

from slmops.convert import QuantizationOptions, convert
from tests.test_convert import MIN_AGREEMENT, agreement, torch_logits


def embedding_lookup(folder):
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    lookup = next(node for node in graph.node if node.input[1:2] == ["input_ids"])
    bits = next((a.i for a in lookup.attribute if a.name == "bits"), None)
    tables = [item.name for item in graph.initializer if "embed_tokens" in item.name and len(item.dims) == 2]
    return lookup.op_type, bits, tables


@pytest.mark.parametrize(
    ("precision", "settings", "bits"),
    [
        ("int8", {}, 8),
        ("int4", {"algo": "k_quant_mixed"}, 8),  # the LM head is int8 in the mixed settings
        ("int4", {"block_size": 128, "is_symmetric": False}, 4),  # rows padded to a whole block
    ],
)
def test_tied_embedding_reads_the_quantized_lm_head(tiny_llama, tmp_path, precision, settings, bits):
    shared = convert(
        tiny_llama, tmp_path / "shared", precision=precision, quantization=QuantizationOptions(**settings), log_level=0
    )
    copy = convert(
        tiny_llama,
        tmp_path / "copy",
        precision=precision,
        quantization=QuantizationOptions(**settings, tied_embedding="fp32"),
        log_level=0,
    )

    assert embedding_lookup(tmp_path / "shared") == ("GatherBlockQuantized", bits, [])
    assert embedding_lookup(tmp_path / "copy")[0] == "Gather"
    assert any(f"{bits}-bit GatherBlockQuantized" in note for note in shared.notes)
    # the fp32 table was 512 x 64 x 4 bytes
    assert copy.output_bytes - shared.output_bytes > 100_000
    same, correlation = agreement(tmp_path / "shared", torch_logits(tiny_llama))
    assert same >= MIN_AGREEMENT[precision] and correlation > 0.8, (same, correlation)


@pytest.mark.parametrize(
    ("precision", "settings"), [("int8", {}), ("int4", {"algo": "k_quant_mixed", "block_size": 128})]
)
def test_an_untied_embedding_gathers_its_own_8_bit_table(tiny_model_factory, tmp_path, precision, settings):
    # An untied model's embedding was left in fp32 beside the quantized layers: for Qwen2.5-Coder-0.5B
    # from its GGUF (token_embd and output stored apart), 545 MB of INT8's 1,127.
    source = tiny_model_factory("llama", tie=False)
    report = convert(source, tmp_path / "u", precision=precision, quantization=QuantizationOptions(**settings))
    lookup, bits, tables = embedding_lookup(tmp_path / "u")
    assert (lookup, bits) == ("GatherBlockQuantized", 8)
    assert "model.embed_tokens.weight" not in tables and "model.embed_tokens.weight_scales" in tables  # its own
    assert any(note.startswith("untied embeddings: ") for note in report.notes)
    same, correlation = agreement(tmp_path / "u", torch_logits(source))
    assert same >= MIN_AGREEMENT[precision] and correlation > 0.8, (same, correlation)
