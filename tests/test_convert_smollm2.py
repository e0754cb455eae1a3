"""End to end on the real embedded SmolLM2-135M-Instruct, with MISSION.md's exact inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.convert.gguf_source import gguf_to_hf
from tests.test_convert_olive import mission_command, write_config

pytestmark = pytest.mark.slow

QUESTION = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def answer(folder: Path, max_new_tokens: int = 40) -> str:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=256)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(QUESTION))
    tokens = []
    while not generator.is_done() and len(tokens) < max_new_tokens:
        generator.generate_next_token()
        tokens.append(generator.get_next_tokens()[0])
    return tokenizer.decode(tokens)


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory, smollm2_gguf) -> Path:
    """The embedded GGUF as a Hugging Face folder: what a user's fine-tuned checkpoint looks like."""
    folder = tmp_path_factory.mktemp("smollm2-hf") / "your-finetuned-model"
    gguf_to_hf(smollm2_gguf, folder)
    return folder


def test_embedded_gguf_int4_answers_the_question(smollm2_int4):
    # onnxruntime picks its int4 kernels by instruction set (AVX2, AVX-512 VNNI), so the greedy
    # words after the answer differ between CPUs; the answer itself must not.
    assert "Paris" in answer(smollm2_int4)
    report = json.loads((smollm2_int4 / "conversion.json").read_text())
    # the GGUF's own Q4_1 blocks with their minima and its Q8_0 LM head: 119 MB (convert.md)
    assert report["source_kind"] == "gguf" and report["output_bytes"] < 130e6
    assert set(report["gguf_weights"]) == {"Q4_1", "Q8_0"}


def test_mission_command_line(smollm2_hf, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "slmops", *mission_command(smollm2_hf)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    output = tmp_path / "models/your-model-name/onnx"
    assert "Paris" in answer(output)
    assert json.loads((output / "inference_model.json").read_text())["Name"] == "your-model-name"


def test_mission_config_file(smollm2_hf, tmp_path):
    write_config(tmp_path, smollm2_hf)
    command = [sys.executable, "-m", "slmops", "run", "--config", "finetuned_conversion_config.json"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    output = tmp_path / "models/output/your-finetuned-model-onnx"
    # block_size 128 + is_symmetric false on a tied model: the config the bare builder breaks.
    assert "Paris" in answer(output)
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "Reusing the conversion cached in" in second.stdout, second.stderr
