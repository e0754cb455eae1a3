"""Each row's count of new positions, told to the attention: rows that all draft verify in one step.

onnxruntime's CPU GroupQueryAttention reads several new positions per row behind a KV cache
only in a batch of one, unless it is given each row's count of new positions, its optional
``query_seqlens`` input (onnxruntime 1.32 and later). The batched decoder's graph computes
that count for every forward as the count the attention assumes without it, the smaller of
the forward's length and the row's mask (greedy tokens and the KV written are bit for bit those
of the graph without it, SmolLM2-135M INT4: one row's prompt, chunk, step and verify; three
rows prefilled together, then stepped), so nothing changes for the forwards the decoder ran
before, and a step in which every row reads its last token and a draft of one length is
allowed. Rows of different lengths would be right-padded, and a padded position costs what a
real one does in every MatMulNBits (docs/server.md, "Speculative decoding in serve"), so the
decoder shares a step only when no position is padding.
"""

from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper

GQA = "GroupQueryAttention"
INPUT = 16  # where query_seqlens stands among GroupQueryAttention's inputs
PREFIX = "/slmops/query_lengths"


@functools.cache
def supported() -> bool:
    """Whether the installed onnxruntime's GroupQueryAttention takes ``query_seqlens``."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        schemas = state.get_all_operator_schema()
    except Exception:  # an onnxruntime that does not list its operators: assume it lacks the input
        return False
    for schema in schemas:
        if schema.name == GQA:
            inputs = [item.name for item in schema.inputs]
            return len(inputs) > INPUT and inputs[INPUT] == "query_seqlens"
    return False


def added(model: bytes, input_ids: str, mask: str) -> tuple[bytes, bool]:
    """``model`` (a serialized decoder) with every GroupQueryAttention told its rows' new
    positions, and True; ``model`` as it is and False when onnxruntime or the graph cannot."""
    if not supported():
        return model, False
    proto = onnx.load_from_string(model)
    graph = proto.graph
    attention = [node for node in graph.node if node.op_type == GQA and len(node.input) <= INPUT]
    if not attention:
        return model, False
    lengths = f"{PREFIX}/lengths"
    nodes = [
        helper.make_node(
            "Constant", [], [f"{PREFIX}/axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [1])
        ),
        helper.make_node("ReduceSum", [mask, f"{PREFIX}/axes"], [f"{PREFIX}/held"], keepdims=0),
        helper.make_node("Shape", [input_ids], [f"{PREFIX}/new"], start=1, end=2),
        helper.make_node("Min", [f"{PREFIX}/held", f"{PREFIX}/new"], [f"{PREFIX}/count"]),
        helper.make_node("Cast", [f"{PREFIX}/count"], [lengths], to=TensorProto.INT32),
    ]
    for node in attention:
        node.input.extend([""] * (INPUT - len(node.input)) + [lengths])
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    return proto.SerializeToString(), True
