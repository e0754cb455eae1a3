"""The rotation folded into an FP32 export before INT4 quantization computes what the graph computed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.convert.graph_file import save_graph
from slmops.convert.rotation import BLOCK, BLOCK_ROTATION, ROTATION_NODE, orthogonal, rotate_export, rotate_graph


def logits(folder: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], feeds)[0]


def weights(folder: Path) -> dict[str, np.ndarray]:
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return {item.name: onnx.numpy_helper.to_array(item) for item in graph.initializer}


def fp32_export(source: Path, out: Path) -> Path:
    from slmops.convert import convert

    convert(source, out, precision="fp32", log_level=0)
    return out


def assert_rotated_alike(folder: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    from slmops.convert.calibration_text import CalibrationWindows

    rotated = tmp_path / "rotated"
    shutil.copytree(folder, rotated)
    feeds = CalibrationWindows(rotated, 1, 32).items[0]
    before, original = logits(rotated, feeds), weights(rotated)
    assert rotate_export(rotated) is None
    after = weights(rotated)
    np.testing.assert_allclose(logits(rotated, feeds), before, rtol=1e-3, atol=2e-4 * np.abs(before).max())
    norms = [name for name in after if "layernorm" in name]
    assert norms and all(np.allclose(after[name], 1.0) for name in norms)  # folded into the readers
    moved = [name for name in original if not np.allclose(original[name], after[name], atol=1e-6)]
    assert any("o_proj" in name for name in moved) and any("down_proj" in name for name in moved)
    assert any("qkv_proj" in name for name in moved) and any("gate_proj" in name for name in moved)
    return after


def test_a_rotated_tied_model_computes_the_same_logits_through_one_extra_matmul(tiny_onnx, tmp_path):
    after = assert_rotated_alike(tiny_onnx, tmp_path)
    rotation = after["model.rotation.MatMul.weight"]
    assert rotation.shape[0] == rotation.shape[1] == after["lm_head.MatMul.weight"].shape[0]


def test_the_down_projections_read_their_input_rotated_in_blocks_by_a_constant(tiny_onnx, tmp_path):
    """The product a down projection reads is rotated where it runs, by a Constant that no quantizer
    takes for a weight; the logits stay the same (assert_rotated_alike)."""
    import onnx

    from slmops.convert.calibrated import _weight_matmuls

    assert_rotated_alike(tiny_onnx, tmp_path)
    graph = onnx.load(str(tmp_path / "rotated" / "model.onnx")).graph
    downs = [node for node in graph.node if node.name.endswith("down_proj/MatMul")]
    assert downs and all(node.input[0].endswith("/input_rotation/output_0") for node in downs)
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
    r = onnx.numpy_helper.to_array(constants[f"{BLOCK_ROTATION}/R"].attribute[0].t)
    assert r.shape == (BLOCK, BLOCK)
    np.testing.assert_allclose(r @ r.T, np.eye(BLOCK), atol=1e-6)
    readers = {node.name for node in graph.node if f"{BLOCK_ROTATION}/R" in node.input}
    assert len(readers) == len(downs) and not readers & {node.name for node in _weight_matmuls(graph)}


def test_a_rotated_untied_model_needs_no_extra_matmul(tiny_model_factory, tmp_path):
    folder = fp32_export(tiny_model_factory("llama", tie=False), tmp_path / "untied")
    after = assert_rotated_alike(folder, tmp_path)
    assert "model.rotation.MatMul.weight" not in after


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_other_families_rotate_to_the_same_logits(arch, tiny_model_factory, tmp_path):
    """Qwen2's q/k/v biases stay as they are (the rotation reads the state, not the projections' outputs)."""
    assert_rotated_alike(fp32_export(tiny_model_factory(arch), tmp_path / arch), tmp_path)


def test_a_scaled_embedding_is_left_unrotated(tiny_model_factory, tmp_path):
    """Gemma scales the embedding (a Mul before the first layer) and norms what it adds to the residual."""
    folder = fp32_export(tiny_model_factory("gemma2"), tmp_path / "gemma2")
    before = weights(folder)
    assert "the hidden state is written by" in (rotate_export(folder) or "")
    assert all(np.array_equal(array, before[name]) for name, array in weights(folder).items())


@pytest.mark.parametrize("change", ["a norm read by another op", "hidden states as a graph output"])
def test_a_layout_it_does_not_know_is_left_as_it_is(tiny_onnx, change):
    import onnx
    from onnx import helper

    model = onnx.load(str(tiny_onnx / "model.onnx"))
    norm = next(n for n in model.graph.node if n.op_type == "SkipSimplifiedLayerNormalization")
    if change == "a norm read by another op":
        model.graph.node.append(helper.make_node("Identity", [norm.output[0]], ["peek"], name="peek"))
    else:  # what an embedding model exposes
        model.graph.output.append(helper.make_tensor_value_info(norm.output[0], onnx.TensorProto.FLOAT, None))
    before = {item.name: onnx.numpy_helper.to_array(item).copy() for item in model.graph.initializer}
    why = rotate_graph(model.graph)
    assert why is not None and norm.name in why
    assert all(np.array_equal(onnx.numpy_helper.to_array(item), before[item.name]) for item in model.graph.initializer)
    assert not any(n.name == ROTATION_NODE for n in model.graph.node)


@pytest.mark.parametrize("n", [8, 576])
def test_rotations_are_orthogonal_and_differ_by_seed(n):
    first, second = (orthogonal(n, np.random.default_rng(seed)) for seed in (0, 1))
    np.testing.assert_allclose(first @ first.T, np.eye(n), atol=1e-10)
    assert not np.allclose(first, second)


def test_an_export_left_unrotated_says_why(tiny_onnx, tmp_path):
    import onnx
    from onnx import helper

    from slmops.convert.calibrated import CalibratedOptions, quantize_calibrated

    folder = tmp_path / "peek"
    shutil.copytree(tiny_onnx, folder)
    model = onnx.load(str(folder / "model.onnx"))
    norm = next(n for n in model.graph.node if n.op_type == "SimplifiedLayerNormalization")
    model.graph.node.append(helper.make_node("Identity", [norm.output[0]], ["peek"], name="peek"))
    model.graph.output.append(helper.make_tensor_value_info("peek", onnx.TensorProto.FLOAT, None))
    save_graph(model, folder)
    options = CalibratedOptions(block_size=32, int8_share=0, calibration_windows=2, calibration_tokens=32)
    notes = quantize_calibrated(folder, options)
    assert len(notes) == 1 and "not rotated" in notes[0] and norm.name in notes[0]
    assert quantize_calibrated(shutil.copytree(tiny_onnx, tmp_path / "plain"), options) == []


def test_the_rotation_seed_picks_another_rotation(tiny_onnx, tmp_path):
    from dataclasses import replace

    from slmops.convert.calibrated import CalibratedOptions, quantize_calibrated

    options = CalibratedOptions(block_size=32, int8_share=0, calibration_windows=2, calibration_tokens=32)
    built = {}
    for seed in (0, 1):
        folder = shutil.copytree(tiny_onnx, tmp_path / f"seed{seed}")
        assert quantize_calibrated(folder, replace(options, rotation_seed=seed)) == []
        built[seed] = weights(folder)
    scales = [name for name in built[0] if name.endswith("_scales")]
    assert scales and any(not np.array_equal(built[0][name], built[1][name]) for name in scales)
    assert "rotated (seed 1)" in replace(options, rotation_seed=1).describe() and "seed" not in options.describe()
