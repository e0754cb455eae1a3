"""A copy of a decoder graph that computes logits only at the positions asked for.

The model builder's graphs run the LM head at every input position: a 256-token chunk
of prefill makes 256 x vocab floats (48 MB for SmolLM2's 49,152 tokens) and spends about
a fifth of its work on them, though only a prompt's last position is read unless the
prompt is scored or a draft verified. The batched decoder runs a copy of the graph,
held in memory, with a GatherND before the LM head's MatMul and one more input,
:data:`POSITIONS`: int64 of shape ``(batch, positions, 1)``, the input positions of each
row whose logits to compute. The model folder's files are not touched: the
onnxruntime-genai generator keeps running them.

Only the graph is read and edited: the weights stay in the folder's external data file
(onnxruntime finds them there), or inside the proto when the export keeps them there.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

POSITIONS = "slmops_logits_positions"
GATHERED = "slmops_logits_positions/hidden"
MATMULS = {"MatMul", "MatMulNBits"}
# Ops between the LM head and the logits output that treat each position on its own
# (a cast to fp32, Gemma's soft-capping): the positions can be picked before them.
# A screened head's ScatterElements writes the rescored top candidates into its first input.
POSITIONWISE = {"Cast", "Mul", "Div", "Add", "Sub", "Tanh", "ScatterElements"}
# What may be computed from the LM head's input on its way to the logits: also the block
# sums of an exactly imported GGUF (a Reshape that keeps batch and sequence, a ReduceSum),
# and a screened head's rescoring of each position's top candidates.
SCREENING = {"TopK", "GatherBlockQuantized", "Slice", "Unsqueeze", "Squeeze"}
HEAD_OPS = MATMULS | POSITIONWISE | SCREENING | {"Reshape", "ReduceSum"}


def with_positions(model: bytes, logits: str) -> bytes | None:
    """``model`` (a serialized ModelProto) with :data:`POSITIONS` picking where ``logits`` are
    computed, or None when no MatMul is found before ``logits`` (the graph is then run whole)."""
    try:
        proto = onnx.load_from_string(model)
    except DecodeError as exc:
        raise ValueError(f"not an ONNX model: {exc}") from exc
    return _edited(proto, logits)


def load(path: Path, logits: str) -> bytes | None:
    """The graph of the ONNX file ``path`` with :data:`POSITIONS` (see :func:`with_positions`)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ValueError(f"{path}: not an ONNX model: {exc}") from exc
    return _edited(proto, logits)


def _edited(proto: onnx.ModelProto, logits: str) -> bytes | None:
    graph = proto.graph
    head = lm_head(graph, logits)
    if head is None:
        return None
    hidden = graph.node[head].input[0]
    readers = _head_readers(graph, hidden, logits)
    if readers is None:
        return None
    gather = helper.make_node(
        "GatherND", [hidden, POSITIONS], [GATHERED], name="/slmops/logits_positions/GatherND", batch_dims=1
    )
    for index in readers:
        node = graph.node[index]
        for slot, name in enumerate(node.input):
            if name == hidden:
                node.input[slot] = GATHERED
    graph.node.insert(min(readers), gather)
    graph.input.append(
        helper.make_tensor_value_info(POSITIONS, TensorProto.INT64, ["batch_size", "logits_positions", 1])
    )
    return proto.SerializeToString()


def _head_readers(graph: onnx.GraphProto, hidden: str, logits: str) -> list[int] | None:
    """The nodes reading ``hidden``, when everything computed from it is position by position
    and ends in ``logits`` alone (a GGUF import adds block sums of ``hidden`` to the LM head's
    MatMul: they must be picked too); else None."""
    derived, readers = {hidden}, []
    outputs = {item.name for item in graph.output}
    for index, node in enumerate(graph.node):  # nodes are in topological order
        if not derived.intersection(node.input):
            continue
        if node.op_type not in HEAD_OPS or outputs.intersection(node.output) - {logits}:
            return None
        if hidden in node.input:
            readers.append(index)
        derived.update(node.output)
    return readers


def lm_head(graph: onnx.GraphProto, logits: str) -> int | None:
    """The index, among ``graph``'s nodes, of the MatMul that makes ``logits``."""
    producers = {output: index for index, node in enumerate(graph.node) for output in node.output}
    name = logits
    while name in producers:
        node = graph.node[producers[name]]
        if node.op_type in MATMULS:
            return producers[name]
        if node.op_type not in POSITIONWISE:
            return None
        name = node.input[0]
    return None
