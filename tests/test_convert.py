"""Conversion of tiny random models: every precision loads in onnxruntime-genai and
greedy-decodes like torch; the tied asymmetric trap; LoRA; output folder contents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.convert import QuantizationOptions, convert
from slmops.modelfolder.inference_model import InferenceModel

PROMPT_IDS = [5, 17, 42, 99, 7, 250, 3, 64, 120, 33, 301, 77, 8, 200, 150, 11]
STEPS = 6
# Teacher-forced next-token agreement with torch over the prompt. Tiny random models are far
# more sensitive to rounding than trained ones, so int4 only has to stay clearly correlated;
# a broken export (wrong weight layout, garbage logits) agrees on ~1/512 positions.
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.9, "bf16": 0.75, "int8": 0.75, "int4": 0.3}


def torch_greedy(folder: Path, steps: int = STEPS) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT_IDS) :].tolist()


def torch_logits(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([PROMPT_IDS])).logits[0].numpy()


def genai_logits(folder: Path):
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64)
    generator = og.Generator(model, params)
    generator.append_tokens(PROMPT_IDS)
    return np.array(generator.get_output("logits"))[0]


def agreement(folder: Path, reference) -> tuple[float, float]:
    """(share of positions with the same argmax, correlation of the logits)."""
    import numpy as np

    logits = genai_logits(folder)
    same = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    return same, float(np.corrcoef(logits.ravel(), reference.ravel())[0, 1])


def genai_greedy(folder: Path, steps: int = STEPS) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(PROMPT_IDS) + steps, min_length=len(PROMPT_IDS) + steps)
    generator = og.Generator(model, params)
    generator.append_tokens(PROMPT_IDS)
    tokens = []
    while not generator.is_done() and len(tokens) < steps:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


@pytest.fixture(scope="module")
def llama_reference(tiny_llama):
    return torch_logits(tiny_llama)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_tiny_llama_every_precision_loads_and_predicts_like_torch(tiny_llama, llama_reference, tmp_path, precision):
    output = tmp_path / f"tiny-{precision}"
    report = convert(tiny_llama, output, precision=precision, log_level=0)

    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "inference_model.json", "conversion.json"):
        assert (output / name).exists(), name
    same, correlation = agreement(output, llama_reference)
    assert same >= MIN_AGREEMENT[precision] and correlation > 0.8, (precision, same, correlation)
    if precision == "fp32":
        assert genai_greedy(output) == torch_greedy(tiny_llama)
    assert report.precision == precision and report.output_bytes > 0
    assert "intra_op_num_threads" not in (output / "genai_config.json").read_text()


def test_float16_storage_halves_the_fp32_size(tiny_model_factory, tmp_path):
    source = tiny_model_factory("llama", tie=False)
    sizes = {p: convert(source, tmp_path / p, precision=p, log_level=0).output_bytes for p in ("fp32", "fp16")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "phi3", "gemma2"])
def test_other_architectures_convert_and_match_torch_in_fp32(tiny_model_factory, tmp_path, arch):
    source = tiny_model_factory(arch, tie=arch in ("qwen2", "gemma2"))
    output = tmp_path / arch
    convert(source, output, precision="fp32", log_level=0)
    assert genai_greedy(output) == torch_greedy(source)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_qwen2_quantized_predicts_mostly_like_torch(tiny_model_factory, tmp_path, precision):
    source = tiny_model_factory("qwen2", tie=True)
    convert(source, tmp_path / "q", precision=precision, log_level=0)
    same, correlation = agreement(tmp_path / "q", torch_logits(source))
    assert same >= MIN_AGREEMENT[precision] and correlation > 0.8, (same, correlation)


def test_tied_asymmetric_int4_config_from_the_docs_loads_and_answers(tiny_llama, llama_reference, tmp_path):
    # block_size 128 / is_symmetric false is the MISSION.md config that the bare builder breaks.
    quantization = QuantizationOptions(block_size=128, is_symmetric=False)
    report = convert(tiny_llama, tmp_path / "asym", precision="int4", quantization=quantization, log_level=0)

    assert report.builder_options["shared_embeddings"] == "false"
    assert any("tied embeddings" in note for note in report.notes)
    same, correlation = agreement(tmp_path / "asym", llama_reference)
    assert same >= MIN_AGREEMENT["int4"] and correlation > 0.8, (same, correlation)


def test_untied_asymmetric_keeps_builder_defaults(tiny_model_factory, tmp_path):
    source = tiny_model_factory("llama", tie=False)
    report = convert(
        source, tmp_path / "u", precision="int4", quantization=QuantizationOptions(is_symmetric=False), log_level=0
    )
    assert "shared_embeddings" not in report.builder_options
    assert len(genai_greedy(tmp_path / "u")) == STEPS


def test_quantization_flags_reach_the_builder(tiny_llama, tmp_path):
    quantization = QuantizationOptions(
        block_size=16, accuracy_level=1, algo="k_quant", matmul_mixed_precision="last_matmul:int8"
    )
    report = convert(tiny_llama, tmp_path / "k", precision="int4", quantization=quantization, log_level=0)
    assert report.builder_options == {
        "shared_embeddings": "false",
        "block_size": "16",
        "is_symmetric": "true",
        "accuracy_level": "1",
        "algo_config": "k_quant",
        "matmul_mixed_precision": "last_matmul:int8",
    }
    assert len(genai_greedy(tmp_path / "k")) == STEPS


def test_output_metadata_is_complete(tiny_llama, tmp_path):
    output = tmp_path / "my-model-int4"
    convert(tiny_llama, output, precision="int4", log_level=0)

    model = InferenceModel.read(output)
    assert model.Name == "my-model-int4"
    template = model.PromptTemplate
    assert template.prompt == "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n"
    assert template.system == "<|im_start|>system\n{Content}<|im_end|>"
    assert model.ModelConfig.temperature == 0.7 and model.ModelConfig.max_length == 512  # the model's context
    report = json.loads((output / "conversion.json").read_text())
    for key in (
        "source",
        "source_sha256",
        "precision",
        "quantization",
        "source_bytes",
        "output_bytes",
        "wall_seconds",
        "peak_rss_mb",
        "versions",
    ):
        assert report[key] not in (None, ""), key
    assert report["versions"]["onnxruntime-genai"].startswith("0.18")
    assert len(report["source_sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["my-model-int4"]  # no staging left behind


def test_generation_config_sampling_values_become_model_config(tiny_model_factory, tmp_path):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_model_factory("llama", tie=True), source)
    (source / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.3, "top_p": 0.8, "top_k": 20})
    )
    convert(source, tmp_path / "out", precision="int4", name="custom", log_level=0)
    config = InferenceModel.read(tmp_path / "out").ModelConfig
    assert (config.temperature, config.top_p, config.top_k) == (0.3, 0.8, 20)
    assert InferenceModel.read(tmp_path / "out").Name == "custom"


def test_lora_adapter_is_merged_before_export(tiny_llama, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged = tmp_path / "merged-reference"
    peft_model.merge_and_unload().save_pretrained(merged)

    report = convert(adapter, tmp_path / "lora-fp32", precision="fp32", base=tiny_llama, log_level=0)
    assert report.source_kind == "adapter"
    expected = torch_greedy(merged)
    assert expected != torch_greedy(tiny_llama)  # the adapter really changes the model
    assert genai_greedy(tmp_path / "lora-fp32") == expected


def test_existing_output_is_kept_without_force_and_replaced_with_it(tiny_llama, tmp_path):
    from slmops.errors import UsageError

    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--force"):
        convert(tiny_llama, output, precision="fp32", log_level=0)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    convert(tiny_llama, output, precision="fp32", force=True, log_level=0)
    assert not (output / "keep.txt").exists() and (output / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
