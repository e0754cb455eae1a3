"""Logits only where they are read: the batched decoder's copy of the graph, and what it allocates.

On the tiny fp32 model: the logits at a picked position equal the whole graph's there,
prompts that are scored and drafts that are verified still get every position's, and a
prefill without them allocates one position per row. No figure is a time or an RSS.
"""

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import slmops
from slmops.runtime import logits_graph
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.logprobs import prompt_tokens


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return slmops.load(tiny_onnx, threads=1)


def session(model: bytes | str, folder: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def feeds(tiny, ids: np.ndarray) -> dict[str, np.ndarray]:
    decoder = tiny.genai_config["model"]["decoder"]
    rows, length = ids.shape
    shape = (rows, decoder["num_key_value_heads"], 0, decoder["head_size"])
    made = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for layer in range(decoder["num_hidden_layers"]):
        for kind in ("key", "value"):
            made[f"past_key_values.{layer}.{kind}"] = np.zeros(shape, np.float32)
    return made


def prompt(length: int, seed: int = 0) -> list[int]:
    return [int(token) for token in np.random.default_rng(seed).integers(10, 500, length)]


def sequence(model, ids, max_new=4, **fields) -> Sequence:
    options = model.options(temperature=0, max_tokens=max_new or None)
    return Sequence(list(ids), options, max_new, time.perf_counter(), **fields)


def spy_on_prompt_logits(made: BatchedDecoder, shapes: list, monkeypatch) -> None:
    """Record the shape of the logits each prompt run of ``made`` allocates."""
    run_prompt = made._run_prompt

    def spied(*args):
        logits = run_prompt(*args)
        shapes.append(logits.shape)
        return logits

    monkeypatch.setattr(made, "_run_prompt", spied)


def test_the_picked_positions_logits_are_the_whole_graphs(tiny, tiny_onnx):
    path = Path(tiny_onnx) / "model.onnx"
    edited = logits_graph.load(path, "logits")
    assert edited is not None
    whole, picking = session(str(path), path.parent), session(edited, path.parent)
    ids = np.array([prompt(12, 1), prompt(12, 2)], np.int64)
    full = whole.run(["logits"], feeds(tiny, ids))[0]
    lasts = np.array([[[11]], [[5]]], np.int64)  # a row's own position, as for padded prompts
    picked = picking.run(["logits"], {**feeds(tiny, ids), logits_graph.POSITIONS: lasts})[0]
    assert picked.shape == (2, 1, full.shape[-1])
    np.testing.assert_array_equal(picked[0, 0], full[0, 11])
    np.testing.assert_array_equal(picked[1, 0], full[1, 5])
    every = np.broadcast_to(np.arange(12)[None, :, None], (2, 12, 1)).copy()
    np.testing.assert_array_equal(picking.run(["logits"], {**feeds(tiny, ids), logits_graph.POSITIONS: every})[0], full)


def test_the_edit_adds_one_input_and_a_gather_right_before_the_lm_head(tiny_onnx):
    edited = onnx.load_from_string(logits_graph.load(Path(tiny_onnx) / "model.onnx", "logits"))
    assert [item.name for item in edited.graph.input][-1] == logits_graph.POSITIONS
    ops = [node.op_type for node in edited.graph.node]
    gather = ops.index("GatherND")
    head = edited.graph.node[gather + 1]
    assert head.output == ["logits"] and head.input[0] == logits_graph.GATHERED
    assert [attribute.i for attribute in edited.graph.node[gather].attribute if attribute.name == "batch_dims"] == [1]


WEIGHT = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)


def test_a_softcap_after_the_lm_head_is_walked_through_and_an_unknown_op_is_left_whole():
    def graph(*nodes):
        hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "s", 4])
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 6])
        weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 6], WEIGHT.ravel())
        cap = helper.make_tensor("cap", TensorProto.FLOAT, [], [30.0])
        made = helper.make_graph(list(nodes), "g", [hidden], [logits], [weight, cap])
        return helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    capped = graph(
        helper.make_node("MatMul", ["hidden", "w"], ["raw"]),
        helper.make_node("Div", ["raw", "cap"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["logits"]),
    )
    edited = logits_graph.with_positions(capped, "logits")
    assert edited is not None
    run = ort.InferenceSession(edited, providers=["CPUExecutionProvider"])
    hidden = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    out = run.run(None, {"hidden": hidden, logits_graph.POSITIONS: np.array([[[4]], [[0]]])})[0]
    expected = np.tanh(np.stack([hidden[0, 4], hidden[1, 0]]) @ WEIGHT / 30)
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5)
    unknown = graph(
        helper.make_node("MatMul", ["hidden", "w"], ["raw"]), helper.make_node("Softmax", ["raw"], ["logits"])
    )
    assert logits_graph.with_positions(unknown, "logits") is None


def test_block_sums_beside_the_lm_head_are_picked_too():
    # An exactly imported GGUF head: MatMul(hidden) + ReduceSum(blocks of hidden) @ minima.
    hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "s", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 6])
    minima = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    initializers = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 6], WEIGHT.ravel()),
        helper.make_tensor("m", TensorProto.FLOAT, [2, 6], minima.ravel()),
        helper.make_tensor("shape", TensorProto.INT64, [4], [0, 0, -1, 2]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [-1]),
    ]
    nodes = [
        helper.make_node("MatMul", ["hidden", "w"], ["scaled"]),
        helper.make_node("Reshape", ["hidden", "shape"], ["blocks"]),
        helper.make_node("ReduceSum", ["blocks", "axis"], ["sums"], keepdims=0),
        helper.make_node("MatMul", ["sums", "m"], ["minimum"]),
        helper.make_node("Add", ["scaled", "minimum"], ["logits"]),
    ]
    made = helper.make_graph(nodes, "g", [hidden], [logits], initializers)
    model = helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    edited = logits_graph.with_positions(model, "logits")
    assert edited is not None
    states = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    full = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"hidden": states})[0]
    run = ort.InferenceSession(edited, providers=["CPUExecutionProvider"])
    picked = run.run(None, {"hidden": states, logits_graph.POSITIONS: np.array([[[4]], [[1]]])})[0]
    np.testing.assert_allclose(picked[:, 0], np.stack([full[0, 4], full[1, 1]]), rtol=1e-6)


def test_a_truncated_graph_is_a_value_error():
    with pytest.raises(ValueError, match="not an ONNX model"):
        logits_graph.with_positions(b"\x3a\x10abc", "logits")


def test_a_prefill_group_computes_one_position_per_row_and_its_first_tokens_are_the_whole_graphs(
    tiny, tiny_onnx, monkeypatch
):
    made = BatchedDecoder(tiny, 4, 128)
    assert made.picks_positions
    shapes = []
    spy_on_prompt_logits(made, shapes, monkeypatch)
    prompts = [prompt(9, 1), prompt(14, 2), prompt(5, 3)]
    group = [sequence(tiny, ids, max_new=1) for ids in prompts]
    made.add(group)
    made.prefill()
    assert shapes[0] == (3, 1, made.vocab)
    whole = session(str(Path(tiny_onnx) / "model.onnx"), Path(tiny_onnx))
    for ids, item in zip(prompts, group):
        logits = whole.run(["logits"], feeds(tiny, np.array([ids], np.int64)))[0]
        assert item.tokens == [int(np.argmax(logits[0, -1]))]


def test_a_scored_prompt_gets_every_positions_logits(tiny, tiny_onnx, monkeypatch):
    made = BatchedDecoder(tiny, 4, 128)
    shapes = []
    spy_on_prompt_logits(made, shapes, monkeypatch)
    ids, other = prompt(10, 4), prompt(6, 5)
    scored = sequence(tiny, ids, max_new=0, prompt_logprobs=0)
    made.add([scored, sequence(tiny, other, max_new=1)])
    made.prefill()
    assert shapes[0] == (2, 10, made.vocab)  # the group's longest prompt, every position
    whole = session(str(Path(tiny_onnx) / "model.onnx"), Path(tiny_onnx))
    logits = whole.run(["logits"], feeds(tiny, np.array([ids], np.int64)))[0]
    expected = prompt_tokens(logits[0], ids, 0)
    assert [item.logprob for item in scored.prompt_scores] == pytest.approx([item.logprob for item in expected])


def test_a_graph_it_cannot_edit_runs_whole(tiny, monkeypatch):
    monkeypatch.setattr(logits_graph, "load", lambda path, logits: None)
    made = BatchedDecoder(tiny, 2, 128)
    assert not made.picks_positions
    group = [sequence(tiny, prompt(7, 6), max_new=3), sequence(tiny, prompt(4, 7), max_new=3)]
    made.add(group)
    while made.busy:
        made.advance()
    again = [sequence(tiny, prompt(7, 6), max_new=3), sequence(tiny, prompt(4, 7), max_new=3)]
    monkeypatch.undo()
    picking = BatchedDecoder(tiny, 2, 128)
    picking.add(again)
    while picking.busy:
        picking.advance()
    assert [item.tokens for item in group] == [item.tokens for item in again]
