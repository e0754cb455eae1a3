"""The FP32 or quantized graph of a model folder, rewritten in place: ``model.onnx`` and its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_graph(model, model_dir: Path) -> None:
    """Write ``model`` as ``model_dir``'s graph, its weights in ``model.onnx.data``, in place of the old files."""
    import onnx

    for stale in Path(model_dir).glob("model.onnx*"):
        stale.unlink()
    onnx.save(
        model,
        str(Path(model_dir) / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )


def calibration_options():
    """onnxruntime session options for the graphs a calibration runs: numpy works on each run's outputs
    before the next, and onnxruntime's threads spinning for more work took its cores (SmolLM2's
    in-order build 205 -> 173-179 s, the same bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def set_weight(initializer, array: np.ndarray) -> None:
    """Replace an initializer's values by ``array``, as float32, under the same name."""
    from onnx import numpy_helper

    initializer.CopyFrom(numpy_helper.from_array(array.astype(np.float32), initializer.name))


def token_lookups(graph, ops: tuple[str, ...] = ("Gather",)) -> list:
    """The nodes that look the input ids up in an embedding table (one in a builder's graph)."""
    return [node for node in graph.node if node.op_type in ops and len(node.input) > 1 and node.input[1] == "input_ids"]


def transposed_table(graph) -> str | None:
    """The weight the embedding gathers through a Transpose (the LM head's, when the two are tied), if any."""
    gathers = token_lookups(graph)
    producers = {output: node for node in graph.node for output in node.output}
    table = producers.get(gathers[0].input[0]) if len(gathers) == 1 else None
    return table.input[0] if table is not None and table.op_type == "Transpose" else None


def quantized_lm_heads(graph) -> list:
    """The builder's LM head when it is a MatMulNBits (one node, or none)."""
    return [node for node in graph.node if node.op_type == "MatMulNBits" and node.name.startswith("/lm_head/")]
