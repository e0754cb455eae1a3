"""Each MatMul quantized on the inputs the quantized model gives it, in graph order.

Calibrated on the FP32 graph, a MatMul's rounding is fitted to inputs X that it never meets once
the model is quantized: every quantized MatMul before it moves them to X̃, and on a small model
that moved input is most of a late layer's output error (SmolLM2, rotated b64, layers 10-29:
weights fitted to FP32 inputs leave 1.02-1.18x the error of the FP32 weights on X̃, weights fitted
to undo the move 0.54-0.97x; docs/quality.md). Here
the graph runs a segment at a time over the calibration windows, twice: with FP32 weights (X)
and with the weights quantized so far (X̃). The MatMuls that read one input are then quantized,
by the calibrated quantizer, to the weights that minimise ‖X̃Ŵ − XW‖² + λ‖Ŵ − W‖²,

    W' = (X̃ᵀX̃ + λI)⁻¹ (X̃ᵀX W + λW),   λ = damping x mean(diag X̃ᵀX̃),

with X̃ᵀX̃ as their second moment, so each one undoes what the quantized layers before it did to
its input. The next segment then runs on
their quantized output. An LM head that the embedding gathers from keeps its weights: the embedding
must read the table it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Dequantizable(Protocol):
    def dequantize(self, k: int) -> np.ndarray: ...


WINDOWS_PER_RUN = 8  # calibration windows run as one batch of a segment's session


def quantize_in_order(
    model,
    nodes: list,
    weights,
    feeds: list[dict],
    quantize: Callable[[object, np.ndarray, np.ndarray], Dequantizable],
    damping: float,
    keep_weights: set[str],
    echo=lambda line: None,
) -> dict:
    """``nodes`` (MatMuls of ``model``'s graph with a constant weight) quantized in graph order.

    ``weights``: the graph's initializers, read from the model folder when asked (``Weights``);
    ``feeds``: the calibration windows' inputs; ``quantize(node, w [N, K], H [K, K])`` quantizes one
    weight (returns what has ``dequantize(K)``); ``keep_weights``: MatMul names fitted to their
    own weights, not compensated. Returns each node's quantized weight by name.
    """
    graph = model.graph
    position = {node.name: index for index, node in enumerate(graph.node)}
    groups: dict[str, list] = {}
    for node in sorted(nodes, key=lambda node: position[node.name]):
        groups.setdefault(node.input[0], []).append(node)
    ordered = list(groups.values())
    bounds = [0, *(position[group[0].name] for group in ordered)]
    last_use = {name: index for index, node in enumerate(graph.node) for name in node.input if name}
    types = tensor_types(model)
    batches = _batched(feeds)
    exact = [dict(batch) for batch in batches]  # per batch: the tensors later segments read, FP32 weights
    moved = [dict(batch) for batch in batches]  # the same with the weights quantized so far
    fp32: dict[str, np.ndarray] = {}
    quantized: dict[str, np.ndarray] = {}
    items = {}
    for number, group in enumerate(ordered):
        start, end = bounds[number], bounds[number + 1]
        outputs = sorted(
            {name for node in graph.node[start:end] for name in node.output if last_use.get(name, -1) >= end}
        )
        session, inputs = _segment_session(model, weights, start, end, set(fp32), outputs, types)
        width = int(weights[group[0].input[1]].dims[0])
        arrays = {node.name: weights.array(node.input[1]) for node in group}  # [K, N] each
        fitted = [arrays[node.name] for node in group if node.name not in keep_weights]
        joined = _joined_weights(fitted, width)
        moment = np.zeros((width, width))
        cross = np.zeros((width, width if joined is None else joined.shape[1])) if fitted else None
        for batch, (clean, shifted) in enumerate(zip(exact, moved, strict=True)):
            clean.update(zip(outputs, session.run(outputs, {name: fp32.get(name, clean.get(name)) for name in inputs})))
            shifted.update(
                zip(outputs, session.run(outputs, {name: quantized.get(name, shifted.get(name)) for name in inputs}))
            )
            for state in (clean, shifted):
                for name in [name for name in state if name not in batches[batch] and last_use.get(name, -1) < end]:
                    del state[name]
            x = clean[group[0].input[0]].reshape(-1, width)
            x_moved = shifted[group[0].input[0]].reshape(-1, width)
            moment += (x_moved.T @ x_moved).astype(np.float64)  # float32 products, float64 sums
            if cross is not None:
                cross += (x_moved.T @ (x if joined is None else x @ joined)).astype(np.float64)
        del session
        fp32, quantized = {}, {}
        column = 0
        for node in group:
            w = arrays[node.name]
            if node.name in keep_weights:
                target = w
            else:
                assert cross is not None
                if joined is None:
                    seen = cross @ w.astype(np.float64)
                else:
                    seen, column = cross[:, column : column + w.shape[1]], column + w.shape[1]
                target = compensated(w, moment, seen, damping)
            items[node.name] = quantize(node, np.ascontiguousarray(target.T), moment)
            fp32[node.input[1]] = w
            quantized[node.input[1]] = items[node.name].dequantize(width).T.astype(np.float32)
        if (number + 1) % max(1, len(ordered) // 4) == 0:
            echo(f"quantized the MatMuls of {number + 1} of {len(ordered)} inputs")
    return items


def compensated(w: np.ndarray, moment: np.ndarray, seen: np.ndarray, damping: float) -> np.ndarray:
    """The weights [K, N] that map the moved inputs closest to what ``w`` makes of the FP32 ones:
    (X̃ᵀX̃ + λI)⁻¹ (X̃ᵀXw + λw), from ``moment`` X̃ᵀX̃ and ``seen`` X̃ᵀXw [K, N]."""
    ridge = damping * float(np.mean(np.diag(moment)))
    if ridge <= 0:  # an input that is always zero: nothing to fit
        return w
    w64 = w.astype(np.float64)
    lhs = moment + ridge * np.eye(len(moment))
    return np.linalg.solve(lhs, seen + ridge * w64).astype(np.float32)


def _joined_weights(fitted: list[np.ndarray], width: int) -> np.ndarray | None:
    """The group's weights [K, N] side by side [K, ΣN] when X̃ᵀ(XW) costs fewer multiply-adds than X̃ᵀX
    (2·ΣN against K a token: a down projection's outputs are a fraction of its inputs, 896 of
    Qwen2.5-0.5B's 4,864; its build in order 640 -> 532 s), else None: X̃ᵀX is summed and multiplied by
    each weight once at the end."""
    if not fitted or 2 * sum(w.shape[1] for w in fitted) >= width:
        return None
    return np.concatenate(fitted, axis=1)


def _batched(feeds: list[dict]) -> list[dict]:
    """The windows' inputs stacked :data:`WINDOWS_PER_RUN` at a time along the batch axis."""
    return [
        {name: np.concatenate([feed[name] for feed in feeds[i : i + WINDOWS_PER_RUN]]) for name in feeds[0]}
        for i in range(0, len(feeds), WINDOWS_PER_RUN)
    ]


def _segment_session(model, weights, start: int, end: int, fed: set[str], outputs: list[str], types: dict):
    """A session of the graph's nodes ``start``..``end``: the weights in ``fed`` and whatever the segment
    reads from earlier ones are its inputs, ``outputs`` what later segments read. Returns it with its input names."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from slmops.convert.graph_file import calibration_options

    nodes = list(model.graph.node)[start:end]
    made = {name for node in nodes for name in node.output}
    read = list(dict.fromkeys(name for node in nodes for name in node.input if name and name not in made))
    constants = [
        numpy_helper.from_array(numpy_helper.to_array(weights[name], base_dir=weights.base), name)
        for name in read
        if name in weights and name not in fed
    ]
    inputs = [name for name in read if name not in weights or name in fed]
    graph = helper.make_graph(
        nodes,
        f"segment-{start}",
        [helper.make_tensor_value_info(name, types[name], None) for name in inputs],
        [helper.make_tensor_value_info(name, types[name], None) for name in outputs],
        constants,
    )
    segment = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    session = ort.InferenceSession(
        segment.SerializeToString(), calibration_options(), providers=["CPUExecutionProvider"]
    )
    return session, inputs


def tensor_types(model) -> dict[str, int]:
    """The element type of every tensor of the graph, carried from its inputs through its nodes
    (a segment's session must declare the types of what it reads and writes)."""
    from onnx import TensorProto

    graph = model.graph
    types = {item.name: item.type.tensor_type.elem_type for item in graph.input}
    types.update({item.name: item.data_type for item in graph.initializer})
    for node in graph.node:
        attributes = {item.name: item for item in node.attribute}
        if node.op_type == "Cast":
            kind = attributes["to"].i
        elif node.op_type in ("Shape", "Size"):
            kind = TensorProto.INT64
        elif node.op_type in ("Constant", "ConstantOfShape") and "value" in attributes:
            kind = attributes["value"].t.data_type
        elif node.op_type in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or"):
            kind = TensorProto.BOOL
        elif node.op_type == "Where":
            kind = types.get(node.input[1], TensorProto.FLOAT)
        elif node.op_type == "GatherBlockQuantized":  # uint8 codes in, the scales' type out
            kind = types.get(node.input[2], TensorProto.FLOAT)
        else:
            kind = next((types[name] for name in node.input if types.get(name)), TensorProto.FLOAT)
        types.update({name: kind for name in node.output if name})
    return types
