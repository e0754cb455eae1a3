"""Calibrated INT4 (importance search, GPTQ, AWQ scales) at the fast MatMulNBits layouts."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from slmops.convert.calibrated import (
    CalibratedOptions,
    Quantized,
    Weights,
    _apply_awq,
    _replace_initializers,
    _replace_matmul,
    _value_fold,
    _weight_matmuls,
    gptq_rows,
    inverse_factor,
    quantize_calibrated,
    quantize_rows,
    screened_rows,
    second_moments,
)
from slmops.runtime import logits_graph
from tests.test_convert import agreement, torch_logits


def correlated_inputs(k: int, tokens: int = 1024, seed: int = 0) -> np.ndarray:
    """Activations with a few loud channels, as in trained transformers."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((tokens, k)) * np.exp(rng.standard_normal(k))).astype(np.float32)


def output_error(w: np.ndarray, item: Quantized, x: np.ndarray) -> float:
    delta = w - item.dequantize(w.shape[1])
    return float(np.mean((x @ delta.T) ** 2))


def test_codes_stay_on_the_integer_grid_and_near_the_weights():
    w = np.random.default_rng(1).standard_normal((8, 320)).astype(np.float32)
    item = quantize_rows(w, None, 128, 4, search=False)
    assert item.q.shape == (8, 3, 128) and item.scale.shape == item.zero_point.shape == (8, 3)
    assert item.q.max() <= 15 and item.zero_point.max() <= 15
    step = np.repeat(item.scale, 128, axis=1)[:, :320]
    assert np.all(np.abs(item.dequantize(320) - w) <= step / 2 + 1e-6)


def test_importance_search_and_gptq_cut_the_output_error_of_round_to_nearest():
    rng = np.random.default_rng(2)
    x = correlated_inputs(256)
    w = rng.standard_normal((64, 256)).astype(np.float32) * 0.05
    hessian = x.T.astype(np.float64) @ x
    plain = output_error(w, quantize_rows(w, None, 64, 4, search=False), x)
    weighted = output_error(w, quantize_rows(w, np.diag(hessian).astype(np.float32), 64, 4, search=True), x)
    gptq = output_error(w, gptq_rows(w, hessian, 64, 4), x)
    assert weighted < plain * 0.9
    assert gptq < weighted


def test_gptq_feeds_errors_through_the_upper_cholesky_factor_of_the_inverse():
    x = correlated_inputs(96, tokens=400)
    h = x.T.astype(np.float64) @ x + np.eye(96)
    upper = inverse_factor(h)
    assert np.allclose(np.tril(upper, -1), 0) and np.all(np.diag(upper) > 0)
    assert np.allclose(upper.T @ upper, np.linalg.inv(h), rtol=1e-8, atol=1e-12)
    assert np.allclose(upper, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=1e-7, atol=1e-12)


def test_a_tall_matrix_is_quantized_a_slice_of_rows_a_thread_to_the_same_bytes(monkeypatch):
    import slmops.convert.calibrated as calibrated
    import slmops.runtime.threads

    x = correlated_inputs(128, tokens=500)
    w = np.random.default_rng(6).standard_normal((90, 128)).astype(np.float32) * 0.05
    hessian = x.T.astype(np.float64) @ x
    whole = gptq_rows(w, hessian, 64, 4)
    rows: set[int] = set()
    feedback = calibrated._feedback

    def seen(w, *args):
        rows.add(len(w))
        return feedback(w, *args)

    monkeypatch.setattr(calibrated, "ROWS_PER_THREAD", 16)
    monkeypatch.setattr(slmops.runtime.threads, "default_threads", lambda: 3)
    monkeypatch.setattr(calibrated, "_feedback", seen)
    sliced = gptq_rows(w, hessian, 64, 4)
    assert rows == {30}  # three cores, three slices of the 90 rows
    for part in ("q", "scale", "zero_point"):
        assert np.array_equal(getattr(whole, part), getattr(sliced, part))


def test_gptq_damping_trades_fit_to_the_calibration_inputs_for_distance_from_the_weights():
    rng = np.random.default_rng(4)
    x = correlated_inputs(256, tokens=300)  # few tokens for the width, as calibration is
    w = rng.standard_normal((64, 256)).astype(np.float32) * 0.05
    hessian = x.T.astype(np.float64) @ x
    tight, loose = gptq_rows(w, hessian, 64, 4, damping=0.001), gptq_rows(w, hessian, 64, 4, damping=10.0)
    assert output_error(w, tight, x) < output_error(w, loose, x)
    weight_error = lambda item: float(np.mean((w - item.dequantize(256)) ** 2))  # noqa: E731
    assert weight_error(loose) < weight_error(tight)
    options = CalibratedOptions()
    assert "gptq (damping 0.1)" in options.describe()
    assert "damping 0.01" in CalibratedOptions(damping=0.01).describe()


@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_reads_the_layout_written(bits, tmp_path):
    """An odd number of blocks per row (K=320, blocks of 128) and zero points, run by onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = 320, 24
    w = np.random.default_rng(3).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/mm/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    item = quantize_rows(w.T, None, 128, bits, search=False)
    added, _ = _replace_matmul(model.graph, model.graph.node[0], item, (k, n))
    _replace_initializers(model.graph, added)
    assert [i.name for i in model.graph.initializer if i.name == "w"] == []
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(4).standard_normal((1, k)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ item.dequantize(k).T
    # accuracy_level 4 quantizes the activations to int8 blockwise: ~1% of the output's scale
    assert np.abs(got - expected).max() < 0.03 * np.abs(expected).max()


@pytest.mark.parametrize("k", [320, 100])  # rows of whole blocks of 64, and rows padded to whole blocks
def test_a_screened_head_rescores_its_top_candidates_with_the_residual(k, tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from slmops.convert.screened_head import TOP_K

    n, positions = 300, 3
    rng = np.random.default_rng(5)
    w = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["hidden", "w"], ["logits"], name="/lm_head/MatMul")],
        "g",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, positions, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, positions, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    item = screened_rows(w.T, None, CalibratedOptions(block_size=32))
    assert item.residual is not None and item.q.shape[-1] == item.residual.q.shape[-1] == 64  # the 8-bit blocks
    added, residual = _replace_matmul(model.graph, model.graph.node[0], item, (k, n))
    assert residual is not None and residual.bits == item.bits == 4
    _replace_initializers(model.graph, added)
    x = rng.standard_normal((1, positions, k)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"hidden": x})[
        0
    ]
    coarse = x[0] @ replace(item, residual=None).dequantize(k).T
    full = x[0] @ item.dequantize(k).T
    top = np.argsort(-coarse, axis=-1)[:, :TOP_K]
    rest = np.ones_like(coarse, dtype=bool)
    np.put_along_axis(rest, top, False, axis=-1)
    scale = np.abs(full).max()
    # int8 activations (accuracy_level 4) cost ~1% of the output's scale; the residual's share is larger
    assert np.abs(np.take_along_axis(coarse - full, top, -1)).max() > 0.03 * scale
    np.testing.assert_allclose(
        np.take_along_axis(got[0], top, -1), np.take_along_axis(full, top, -1), atol=0.02 * scale
    )
    np.testing.assert_allclose(got[0][rest], coarse[rest], atol=0.02 * scale)
    assert (got[0].argmax(-1) == full.argmax(-1)).all()
    # the batched decoder's copy computes the same logits at the positions it picks
    picked = logits_graph.with_positions(model.SerializeToString(), "logits")
    assert picked is not None
    at = np.array([[[2], [0]]], dtype=np.int64)
    session = ort.InferenceSession(picked, providers=["CPUExecutionProvider"])
    some = session.run(None, {"hidden": x, logits_graph.POSITIONS: at})[0]
    np.testing.assert_allclose(some[0], got[0][[2, 0]], rtol=1e-5, atol=1e-5)


def graph_outputs(folder: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], feeds)[0]


def test_awq_scales_fold_without_changing_what_the_fp32_graph_computes(tiny_onnx, tmp_path):
    import onnx

    from slmops.convert.calibration_text import CalibrationWindows

    folder = tmp_path / "awq"
    shutil.copytree(tiny_onnx, folder)
    feeds = CalibrationWindows(folder, 1, 16).items[0]
    before = graph_outputs(folder, feeds)
    moments = second_moments(folder, 2, 16)
    model = onnx.load(str(folder / "model.onnx"))
    weights = Weights(folder, model.graph)
    untouched = {name: onnx.numpy_helper.to_array(item).copy() for name, item in weights.items()}
    options = CalibratedOptions(block_size=32, int8=(), int8_share=0, awq_o_proj=True)
    _apply_awq(model.graph, _weight_matmuls(model.graph), weights, moments, options)
    changed = [
        name for name, item in weights.items() if not np.allclose(onnx.numpy_helper.to_array(item), untouched[name])
    ]
    assert any("layernorm" in name for name in changed) and any("down_proj" in name for name in changed)
    assert any("o_proj" in name for name in changed)  # o_proj's scales, folded into qkv_proj's value columns
    for stale in folder.glob("model.onnx*"):
        stale.unlink()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    np.testing.assert_allclose(graph_outputs(folder, feeds), before, rtol=1e-3, atol=1e-3)


def test_calibrated_export_loads_shares_its_head_and_tracks_torch(tiny_onnx, tiny_llama, tmp_path):
    import onnx

    folder = tmp_path / "calibrated"
    shutil.copytree(tiny_onnx, folder)
    options = CalibratedOptions(block_size=32, int8_share=0, calibration_windows=4, calibration_tokens=64)
    quantize_calibrated(folder, options)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    # 5 MatMuls a layer, the LM head, and the head's view of the rotated hidden state; the screened head
    # multiplies its top candidates' residual rows (one MatMul), each down projection's input is rotated (one each)
    assert ops["MatMul"] == 1 + 2 and ops["MatMulNBits"] == 2 * 5 + 2
    # the embedding reads the head's codes and residual, and the head its top candidates' residual rows
    assert ops["GatherBlockQuantized"] == 3 and ops["Transpose"] == 0 and ops["TopK"] == 1
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits["/lm_head/MatMul_Q4"] == 4 and bits["/model/layers.0/mlp/down_proj/MatMul_Q8"] == 8
    # the batched engine still computes the screened logits only where they are read
    assert logits_graph.load(folder / "model.onnx", "logits") is not None
    assert bits["/model/rotation/MatMul_Q8"] == 8
    assert bits["/model/layers.0/attn/qkv_proj/MatMul_Q4"] == 4
    blocks = {
        n.name: {a.name: a.i for a in n.attribute}["block_size"] for n in graph.node if n.op_type == "MatMulNBits"
    }
    # 8-bit matrices keep blocks of 64 (finer ones add bytes for nothing), which the embedding's gather follows
    assert blocks["/lm_head/MatMul_Q4"] == blocks["/model/layers.0/mlp/down_proj/MatMul_Q8"] == 64
    assert blocks["/model/layers.0/attn/qkv_proj/MatMul_Q4"] == 32
    assert "8-bit matrices in blocks of 64" in options.describe()  # what conversion.json says
    assert "top 32 rescored" in options.describe()
    assert "8-bit matrices" not in CalibratedOptions(block_size=64).describe()
    # A broken layout gives uncorrelated logits; on a tiny random model the top token itself is a
    # coin toss at 4 bits (GPTQ fits 256 calibration tokens of text the model never learnt).
    same, correlation = agreement(folder, torch_logits(tiny_llama))
    assert correlation > 0.8 and same > 4 / 512, (same, correlation)


def test_a_calibrated_export_with_an_8bit_head_loads_and_tracks_torch(tiny_onnx, tiny_llama, tmp_path):
    import onnx

    folder = tmp_path / "int8-head"
    shutil.copytree(tiny_onnx, folder)
    options = CalibratedOptions(block_size=32, head="int8", calibration_windows=4, calibration_tokens=64)
    quantize_calibrated(folder, options)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    # no rescoring: the embedding reads the 8-bit head's rows, nothing else gathers; the down projections'
    # inputs rotated in blocks are the only float MatMuls
    assert ops["MatMul"] == 2 and ops["MatMulNBits"] == 2 * 5 + 2 and ops["TopK"] == 0
    assert ops["GatherBlockQuantized"] == 1 and ops["Transpose"] == 0
    layout = {n.name: {a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"}
    assert (layout["/lm_head/MatMul_Q8"]["bits"], layout["/lm_head/MatMul_Q8"]["block_size"]) == (8, 64)
    assert "rescored" not in options.describe()
    assert logits_graph.load(folder / "model.onnx", "logits") is not None
    same, correlation = agreement(folder, torch_logits(tiny_llama))
    assert correlation > 0.8 and same > 4 / 512, (same, correlation)


def test_convert_algo_calibrated_records_how(tiny_llama, tmp_path):
    import json

    from slmops.convert import QuantizationOptions, convert

    output = tmp_path / "cal"
    convert(tiny_llama, output, precision="int4", quantization=QuantizationOptions(algo="calibrated"), log_level=0)
    report = json.loads((output / "conversion.json").read_text())
    assert report["quantization"]["algo"] == "calibrated"
    assert any("GPTQ" in note or "gptq" in note for note in report["notes"]), report["notes"]
    same, correlation = agreement(output, torch_logits(tiny_llama))
    assert correlation > 0.8, (same, correlation)


def test_the_8bit_share_is_a_setting_of_the_calibrated_quantizer_only():
    from pydantic import ValidationError

    from slmops.convert import QuantizationOptions
    from slmops.convert.weight_only import calibrated_options, note

    half = QuantizationOptions(algo="calibrated", block_size=64, int8_share=0.5)
    assert calibrated_options(half).int8_share == 0.5 and "50% of the layer weights int8" in note(half)
    assert calibrated_options(QuantizationOptions(algo="calibrated")).int8_share == 0.32
    with pytest.raises(ValidationError, match="int8_share is a setting of algo=calibrated, not of algo=k_quant"):
        QuantizationOptions(algo="k_quant", int8_share=0.5)


def test_lm_head_precision_picks_the_calibrated_head_and_nothing_else_mixes():
    from slmops.convert import QuantizationOptions
    from slmops.convert.convert import _check_quantization
    from slmops.convert.weight_only import calibrated_options, note
    from slmops.errors import UsageError

    assert calibrated_options(QuantizationOptions(algo="calibrated")).head == "screened"
    for bits in ("int8", "int4"):  # `--lm-head-precision int8` / `int4`
        options = QuantizationOptions(algo="calibrated", matmul_mixed_precision=f"last_matmul:{bits}")
        _check_quantization(options, "int4")
        assert calibrated_options(options).head == bits and f"LM head {bits}" in note(options)
    with pytest.raises(UsageError, match="has no mixed precision"):
        _check_quantization(QuantizationOptions(algo="calibrated", matmul_mixed_precision="mixed_layers:int8"), "int4")


def test_convert_calibrated_with_an_8bit_lm_head(tiny_llama, tmp_path):
    import onnx

    from slmops.convert import QuantizationOptions, convert

    output = tmp_path / "cal-int8-head"
    options = QuantizationOptions(algo="calibrated", matmul_mixed_precision="last_matmul:int8", int8_share=0)
    convert(tiny_llama, output, precision="int4", quantization=options, log_level=0)
    graph = onnx.load(str(output / "model.onnx"), load_external_data=False).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits["/lm_head/MatMul_Q8"] == 8 and not any(n.op_type == "TopK" for n in graph.node)


def test_a_model_over_the_calibration_budget_calibrates_on_the_small_setting(tiny_onnx, tmp_path, monkeypatch):
    import onnx

    from slmops.convert import calibrated

    graph = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False).graph
    weights = calibrated.Weights(tiny_onnx, graph)
    options = CalibratedOptions(block_size=32, int8_share=0, calibration_windows=8, calibration_tokens=32)
    assert calibrated.calibration_within_budget(graph, weights, options)  # a tiny model reads them all
    monkeypatch.setattr(calibrated, "CALIBRATION_BUDGET", 1.0)
    monkeypatch.setattr(calibrated, "SMALL_CALIBRATION", (3, 16))
    assert not calibrated.calibration_within_budget(graph, weights, options)
    folder = tmp_path / "budget"
    shutil.copytree(tiny_onnx, folder)
    lines: list[str] = []
    notes = quantize_calibrated(folder, options, echo=lines.append)
    assert "calibrating on 3 x 16 tokens" in lines, lines  # on FP32 inputs: a fit in order wants more text
    assert not any("in graph order" in line for line in lines)
    assert "calibrated on 3 x 16 tokens, on the FP32 graph's inputs: 8 x 32 would pass the calibration budget" in notes


def test_o_proj_scales_are_shared_by_the_query_heads_that_read_one_value_head():
    from onnx import helper

    attention = helper.make_node(
        "GroupQueryAttention", ["qkv", "", ""], ["out"], domain="com.microsoft", num_heads=4, kv_num_heads=2
    )
    qkv = helper.make_node("MatMul", ["x", "qkv_w"], ["qkv"])
    fold = _value_fold(attention, qkv, width=8)  # 4 heads of 2: q 8 columns, k 4, v 4 from column 12
    assert fold is not None and fold.first_column == 12
    assert fold.tie.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]  # heads 0, 1 read value head 0; heads 2, 3 value head 1
    weight = np.ones((3, 16), dtype=np.float32)
    scale = np.array([2, 4, 2, 4, 8, 16, 8, 16], dtype=np.float32)
    folded = fold.apply(weight, scale)
    np.testing.assert_allclose(folded[0], [1] * 12 + [0.5, 0.25, 0.125, 0.0625])


@pytest.mark.parametrize("block", [16, 128, 256])
def test_calibrated_export_at_any_block_size_the_cli_offers_predicts(tiny_onnx, tiny_llama, tmp_path, block):
    # 16: 8-bit matrices (and the head) at 64 beside 4-bit ones at 16; 128 and 256: one block per row of a hidden
    # size of 64, padded, at both widths.
    import onnx

    folder = tmp_path / f"b{block}"
    shutil.copytree(tiny_onnx, folder)
    options = CalibratedOptions(block_size=block, calibration_windows=2, calibration_tokens=64)
    quantize_calibrated(folder, options)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    layouts = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
    eight = max(block, 64)  # the screened head's 4-bit codes keep the 8-bit matrices' blocks
    assert {(layout["bits"], layout["block_size"]) for layout in layouts} == {(4, block), (4, eight), (8, eight)}
    same, correlation = agreement(folder, torch_logits(tiny_llama))
    assert correlation > 0.8, (same, correlation)


def test_an_untied_embedding_gathers_its_own_8_bit_table(tiny_model_factory, tmp_path):
    # A checkpoint that stores the embedding apart from the LM head (a GGUF with both token_embd and
    # output) kept it as an fp32 table: on a 0.5B model with a 152k vocabulary, 545 of 960 MB.
    import onnx

    from slmops.convert import QuantizationOptions, convert

    untied = tiny_model_factory("llama", tie=False)
    output = tmp_path / "untied"
    convert(untied, output, precision="int4", quantization=QuantizationOptions(algo="calibrated"), log_level=0)
    graph = onnx.load(str(output / "model.onnx"), load_external_data=False).graph
    lookups = [node for node in graph.node if "input_ids" in node.input]
    assert [node.op_type for node in lookups] == ["GatherBlockQuantized"]
    gather = lookups[0]
    head = next(node for node in graph.node if node.name.startswith("/lm_head/"))
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    assert not set(gather.input) & set(head.input)  # its own table, not the head's
    shape = [{a.name: a.i for a in head.attribute}[dim] for dim in ("N", "K")]  # [vocab, hidden]
    fp32_tables = [
        item.name for item in graph.initializer if item.data_type == onnx.TensorProto.FLOAT and list(item.dims) == shape
    ]
    assert fp32_tables == []
    same, correlation = agreement(output, torch_logits(untied))
    assert correlation > 0.8, (same, correlation)


def test_calibration_passes_cut_where_the_second_moments_outgrow_the_budget():
    from onnx import helper

    from slmops.convert.calibrated import _runs_within

    def matmul(name, source):
        return helper.make_node("MatMul", [source, f"{name}.weight"], [f"{name}.out"], name=name)

    nodes = [matmul("qkv", "a"), matmul("o", "b"), matmul("gate", "c"), matmul("up", "c"), matmul("down", "d")]
    widths = {"a": 4, "b": 4, "c": 4, "d": 8}  # XᵀX of 128, 128, 128 and 512 bytes; "up" reads c again
    assert [[n.name for n in run] for run in _runs_within(nodes, widths, 10_000)] == [
        ["qkv", "o", "gate", "up", "down"]
    ]
    assert [[n.name for n in run] for run in _runs_within(nodes, widths, 384)] == [
        ["qkv", "o", "gate", "up"],
        ["down"],
    ]
    # an input alone over the budget still gets its pass; a node without moments (8-bit) rides along
    assert [[n.name for n in run] for run in _runs_within(nodes, {"a": 4, "d": 8}, 100)] == [
        ["qkv", "o", "gate", "up"],
        ["down"],
    ]


def test_an_export_calibrated_in_several_passes_is_the_one_pass_export(tiny_onnx, tmp_path, monkeypatch):
    # Passes trade time for memory: the same windows give each MatMul the same XᵀX (of the FP32 graph).
    import slmops.convert.calibrated as calibrated

    options = CalibratedOptions(
        block_size=32, int8_share=0, calibration_windows=2, calibration_tokens=32, in_order=False
    )
    exports = {}
    for share in (0.25, 1e-12):  # the default; and so little that every MatMul input gets its own pass
        folder = tmp_path / f"share-{share}"
        shutil.copytree(tiny_onnx, folder)
        monkeypatch.setattr(calibrated, "MOMENTS_MEMORY_SHARE", share)
        said: list[str] = []
        quantize_calibrated(folder, options, said.append)
        exports[share] = (folder / "model.onnx.data").read_bytes()
        passes = [line for line in said if line.startswith("calibration pass")]
        assert (len(passes) > 3) == (share < 0.01), said
    assert exports[0.25] == exports[1e-12]


@pytest.mark.parametrize("in_order", [True, False])
def test_a_step_with_more_8bit_weights_from_the_one_before_is_that_export_made_alone(tiny_onnx, tmp_path, in_order):
    # deploy's steps differ only in int8_share: the measured 8-bit gains carry over (and on FP32 inputs, the 4-bit matrices)
    options = CalibratedOptions(
        block_size=32, calibration_windows=2, calibration_tokens=32, sensitivity_tokens=16, in_order=in_order
    )
    steps = tmp_path / "steps"

    def export(name: str, share: float, shared: bool, block: int = 32) -> tuple[bytes, list[str]]:
        folder = tmp_path / name
        shutil.copytree(tiny_onnx, folder)
        said: list[str] = []
        chosen = replace(options, int8_share=share, block_size=block)
        quantize_calibrated(folder, chosen, said.append, steps=steps if shared else None)
        return (folder / "model.onnx.data").read_bytes(), said

    first, said = export("quarter", 0.25, shared=True)
    assert not any("from the export before" in line for line in said)
    half, said = export("half", 0.5, shared=True)
    assert any("from the export before" in line for line in said) and not any("scoring" in line for line in said)
    assert any("calibrating" in line for line in said) == in_order  # in order, each share is fitted anew
    alone, _ = export("half-alone", 0.5, shared=False)
    assert half == alone and half != first
    _, said = export("other-blocks", 0.5, shared=True, block=64)  # other settings: nothing carries over
    assert not any("from the export before" in line for line in said)
