"""GGUF sources written with the gguf library, bad inputs, and interrupted conversions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slmops.convert import QuantizationOptions, convert
from slmops.convert.gguf_source import gguf_to_hf, read_gguf
from slmops.errors import ConversionError, UnsupportedArchitecture, UsageError
from tests import tiny
from tests.test_convert import agreement, genai_greedy, torch_greedy, torch_logits


def write_gguf(
    hf_dir: Path, path: Path, kind: str | dict[str, str] = "F32", raw: dict[str, tuple[str, np.ndarray]] | None = None
) -> Path:
    """A llama GGUF of a tiny HF model, laid out the way llama.cpp's converter writes one.

    kind: the ggml type of every matrix, or a GGUF tensor name -> type map (others F32).
    raw: GGUF tensor name -> (type, block bytes) written instead of the model's weight (for
        the types the gguf library cannot quantize).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, tokenizer, config)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, weight in load_file(str(hf_dir / "model.safetensors")).items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            gguf_name = f"blk.{layer}.{layer_names[module]}.weight"
            if module in ("self_attn.q_proj", "self_attn.k_proj"):
                weight = _permute(weight, heads if module == "self_attn.q_proj" else kv_heads)
        else:
            gguf_name = names[name]
        weight = weight.astype(np.float32)
        tensor_kind = kind.get(gguf_name, "F32") if isinstance(kind, dict) else kind
        if raw and gguf_name in raw:
            raw_kind, blocks = raw[gguf_name]
            qtype = gguf.GGMLQuantizationType[raw_kind]
            writer.add_tensor(gguf_name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
        elif tensor_kind != "F32" and weight.ndim == 2:
            qtype = gguf.GGMLQuantizationType[tensor_kind]
            quantized = gguf.quants.quantize(weight, qtype)
            writer.add_tensor(gguf_name, quantized, raw_shape=quantized.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer: dict, config: dict) -> None:
    vocab = tokenizer["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {added["content"] for added in tokenizer.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_chat_template(tiny.CHATML_TEMPLATE)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's Q/K row order: the two rotary halves of each head interleaved
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    source = tiny_model_factory("llama", tie=False)
    return source, write_gguf(source, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def test_gguf_weights_and_tokenizer_come_back_exactly(tiny_gguf, tmp_path):
    source, gguf_path = tiny_gguf
    from safetensors.numpy import load_file

    config = gguf_to_hf(gguf_path, tmp_path / "hf")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    original, restored = (
        load_file(str(source / "model.safetensors")),
        load_file(str(tmp_path / "hf" / "model.safetensors")),
    )
    assert set(original) == set(restored)
    for name in original:
        assert np.array_equal(original[name], restored[name]), name
    from tokenizers import Tokenizer

    text = "Hello world, <|im_start|>user\nPříliš 😀<|im_end|>"
    expected = Tokenizer.from_file(str(source / "tokenizer.json")).encode(text).ids
    assert Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode(text).ids == expected


def test_gguf_converts_to_fp32_that_decodes_like_torch(tiny_gguf, tmp_path):
    source, gguf_path = tiny_gguf
    report = convert(gguf_path, tmp_path / "from-gguf", precision="fp32", log_level=0)
    assert report.source_kind == "gguf"
    assert genai_greedy(tmp_path / "from-gguf") == torch_greedy(source)
    assert "{Content}" in (tmp_path / "from-gguf" / "inference_model.json").read_text()


def test_quantized_gguf_is_dequantized_and_requantized(tiny_model_factory, tmp_path):
    source = tiny_model_factory("llama", tie=False)
    gguf_path = write_gguf(source, tmp_path / "tiny-q8.gguf", kind="Q8_0")
    assert {t.ggml_type for t in read_gguf(gguf_path).tensors} >= {8}  # Q8_0 really is in the file
    requantize = QuantizationOptions(gguf_blocks="requantize")  # the exact import: test_convert_gguf_exact.py
    report = convert(gguf_path, tmp_path / "q8-int4", precision="int4", quantization=requantize, log_level=0)
    assert report.gguf_weights == {}
    same, correlation = agreement(tmp_path / "q8-int4", torch_logits(source))
    assert same >= 0.3 and correlation > 0.8


# ---- bad inputs: one line, exit code != 0, nothing written ----------------------------------


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmops", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def bad_sources(tmp_path: Path, tiny_gguf) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    unknown = tmp_path / "unknown-arch"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"architectures": ["FancyNewForCausalLM"], "model_type": "fancy"}))
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    truncated = tmp_path / "truncated.gguf"
    data = tiny_gguf[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {
        "missing": (tmp_path / "no-such-model", "does not exist"),
        "empty": (empty, "is empty"),
        "unknown": (unknown, "FancyNewForCausalLM"),
        "malformed": (malformed, "not valid JSON"),
        "truncated": (truncated, "truncated"),
    }


def test_bad_sources_fail_in_one_line_and_write_nothing(tmp_path, tiny_gguf):
    for case, (source, fragment) in bad_sources(tmp_path, tiny_gguf).items():
        output = tmp_path / "out" / case
        assert_one_line_error(run_cli("convert", str(source), "-o", str(output)), fragment)
        assert not (tmp_path / "out").exists(), case


def test_unknown_architecture_lists_the_supported_ones(tmp_path, tiny_gguf):
    source, _ = bad_sources(tmp_path, tiny_gguf)["unknown"]
    with pytest.raises(UnsupportedArchitecture, match="LlamaForCausalLM.*Qwen2ForCausalLM"):
        convert(source, tmp_path / "o", log_level=0)


def test_output_that_is_a_file_is_refused(tiny_llama, tmp_path):
    output = tmp_path / "model.txt"
    output.write_text("not a folder")
    assert_one_line_error(run_cli("convert", str(tiny_llama), "-o", str(output)), "is a file")
    assert output.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["model.txt"]


def test_bad_flags_are_usage_errors(tiny_llama, tmp_path):
    result = run_cli("convert", str(tiny_llama), "-o", str(tmp_path / "o"), "--precision", "int3")
    assert result.returncode == 2 and "int3" in result.stderr
    with pytest.raises(UsageError, match="precision 'int3'"):
        convert(tiny_llama, tmp_path / "o", precision="int3")
    assert not (tmp_path / "o").exists()


def test_adapter_without_base_says_to_pass_base(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/some-hub-model"}))
    with pytest.raises(ConversionError, match="--base"):
        convert(adapter, tmp_path / "o", log_level=0)


# ---- interruption ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_conversion_leaves_nothing(tiny_llama, tmp_path, sig):
    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "slmops", "convert", str(tiny_llama), "-o", str(output), "--log-level", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the conversion ended before it could be interrupted"
    os.kill(process.pid, sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert list(tmp_path.iterdir()) == [], stderr


def test_staging_left_by_a_killed_conversion_is_cleaned_up(tiny_llama, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    stale.mkdir()
    (stale / "model.onnx.data").write_bytes(b"half written")
    convert(tiny_llama, tmp_path / "out", precision="fp32", log_level=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
