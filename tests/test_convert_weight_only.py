"""`slmops convert --algo hqq|gptq`: onnxruntime's INT4 quantizers on the FP32 graph, on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from slmops.convert import QuantizationOptions, convert
from slmops.convert.options import LM_HEAD
from slmops.errors import UsageError
from tests.test_convert import MIN_AGREEMENT, STEPS, agreement, genai_greedy, torch_logits


def graph_ops(folder: Path) -> tuple[Counter, dict[str, str]]:
    """Op counts of model.onnx and the op type of each node by name."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node), {node.name: node.op_type for node in graph.node}


def test_convert_cli_algo_hqq_writes_matmulnbits_that_load_and_answer(tiny_llama, tmp_path):
    output = tmp_path / "hqq"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops",
            "convert",
            str(tiny_llama),
            "-o",
            str(output),
            "--algo",
            "hqq",
            "--lm-head-precision",
            "fp32",
            "--log-level",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    ops, by_name = graph_ops(output)
    assert ops["MatMulNBits"] == 2 * 5  # qkv, o, gate, up, down in each layer
    assert by_name[LM_HEAD] == "MatMul"  # left unquantized, as asked
    report = json.loads((output / "conversion.json").read_text())
    assert report["precision"] == "int4" and report["quantization"]["algo"] == "hqq"
    assert report["quantization"]["nodes_to_exclude"] == [LM_HEAD]
    assert any("HQQ" in note for note in report["notes"])
    same, correlation = agreement(output, torch_logits(tiny_llama))
    assert same >= MIN_AGREEMENT["int4"] and correlation > 0.8, (same, correlation)
    assert len(genai_greedy(output)) == STEPS


def test_hqq_on_an_existing_fp32_export_matches_convert(tiny_llama, tmp_path):
    from slmops.convert.weight_only import quantize_export

    options = QuantizationOptions(algo="hqq", block_size=32)
    convert(tiny_llama, tmp_path / "direct", precision="int4", quantization=options, log_level=0)
    convert(tiny_llama, tmp_path / "fp32", precision="fp32", log_level=0)
    quantize_export(tmp_path / "fp32", tmp_path / "from-fp32", options, name="from-fp32")
    assert graph_ops(tmp_path / "direct")[0]["MatMulNBits"] == 2 * 5 + 1  # the LM head too
    assert (tmp_path / "direct" / "model.onnx.data").read_bytes() == (
        tmp_path / "from-fp32" / "model.onnx.data"
    ).read_bytes()
    report = json.loads((tmp_path / "from-fp32" / "conversion.json").read_text())
    assert report["precision"] == "int4" and report["name"] == "from-fp32" and report["quantization"]["algo"] == "hqq"
    assert genai_greedy(tmp_path / "direct") == genai_greedy(tmp_path / "from-fp32")


def test_gptq_calibrates_on_shipped_text_and_honours_excluded_nodes(tiny_llama, tmp_path):
    options = QuantizationOptions(algo="gptq", block_size=32, is_symmetric=False, nodes_to_exclude=[LM_HEAD])
    report = convert(tiny_llama, tmp_path / "gptq", precision="int4", quantization=options, log_level=0)
    ops, by_name = graph_ops(tmp_path / "gptq")
    assert ops["MatMulNBits"] == 2 * 5 and by_name[LM_HEAD] == "MatMul"
    assert any("GPTQ, calibrated" in note for note in report.notes)
    same, correlation = agreement(tmp_path / "gptq", torch_logits(tiny_llama))
    assert same >= MIN_AGREEMENT["int4"] and correlation > 0.8, (same, correlation)


def test_calibration_windows_come_from_the_end_of_the_eval_text(tiny_llama, tmp_path):
    from slmops.convert.weight_only import calibration_windows
    from slmops.evaluate.quality import shipped_text

    convert(tiny_llama, tmp_path / "fp32", precision="fp32", log_level=0)
    windows = calibration_windows(tmp_path / "fp32", 2, 64)
    import onnxruntime_genai as og

    ids = og.Tokenizer(og.Model(str(tmp_path / "fp32"))).encode(shipped_text().read_text(encoding="utf-8"))
    assert [len(window) for window in windows] == [64, 64]
    assert list(windows[0]) == list(ids[-64:]) and list(windows[1]) == list(ids[-128:-64])
    # asked for more than the text holds, it stops short of the tokens eval scores
    from slmops.convert.calibration_text import SCORED_TOKENS

    many = calibration_windows(tmp_path / "fp32", 1000, 512)
    assert len(many) == (len(ids) - SCORED_TOKENS) // 512 > 0
    assert len(ids) - 512 * len(many) >= SCORED_TOKENS


@pytest.mark.parametrize(
    "precision, settings, message",
    [
        ("int8", {"algo": "hqq"}, "int4 only"),
        ("int4", {"algo": "hqq", "matmul_mixed_precision": "last_matmul:int8"}, "no mixed precision"),
    ],
)
def test_post_build_algorithms_refuse_what_they_cannot_do(tiny_llama, tmp_path, precision, settings, message):
    with pytest.raises(UsageError, match=message):
        convert(
            tiny_llama, tmp_path / "x", precision=precision, quantization=QuantizationOptions(**settings), log_level=0
        )
    assert not (tmp_path / "x").exists()


def test_olive_config_accepts_hqq_as_algo_config(tiny_llama, tmp_path):
    from slmops.convert.olive import run_config

    config = {
        "input_model": {"type": "HfModel", "model_path": str(tiny_llama), "task": "text-generation"},
        "passes": {
            "builder": {
                "type": "ModelBuilder",
                "config": {"precision": "int4", "quantization_config": {"block_size": 32, "algo_config": "hqq"}},
            }
        },
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    report = run_config(path, log_level=0)
    assert report.quantization["algo"] == "hqq"
    assert graph_ops(tmp_path / "out")[0]["MatMulNBits"] == 2 * 5 + 1
