"""A copy of a decoder graph that computes logits only at the positions asked for.

The model builder's graphs run the LM head at every input position: a 256-token chunk
of prefill makes 256 x vocab floats (48 MB for SmolLM2's 49,152 tokens) and spends about
a fifth of its work on them, though only a prompt's last position is read unless the
prompt is scored or a draft verified. The batched decoder runs a copy of the graph,
held in memory, with a GatherND before the LM head's MatMul and one more input,
:data:`POSITIONS`: int64 of shape ``(batch, positions, 1)``, the input positions of each
row whose logits to compute. The model folder's files are not touched: the
onnxruntime-genai generator keeps running them.

The graph is edited on protobuf's wire format: onnxruntime ships protobuf but not the
onnx package, which only the converter installs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POSITIONS = "slmops_logits_positions"
GATHERED = "slmops_logits_positions/hidden"
MATMULS = {"MatMul", "MatMulNBits"}
# Ops between the LM head and the logits output that treat each position on its own
# (a cast to fp32, Gemma's soft-capping): the positions can be picked before them.
POSITIONWISE = {"Cast", "Mul", "Div", "Add", "Sub", "Tanh"}

# Field numbers of onnx.proto3.
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INPUT = 1, 11
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
ATTRIBUTE_NAME, ATTRIBUTE_INT, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT = 1, 3, 20, 2
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM = 1, 2, 1, 1, 2, 1
DIM_VALUE, DIM_PARAM, INT64 = 1, 2, 7
LENGTH_DELIMITED = 2


@dataclass
class Field:
    """One field of a protobuf message: its number, wire type, whole encoding and, when
    length-delimited, its content."""

    number: int
    kind: int
    raw: bytes
    payload: bytes = b""


def with_positions(model: bytes, logits: str) -> bytes | None:
    """``model`` (a serialized ModelProto) with :data:`POSITIONS` picking where ``logits`` are
    computed, or None when no MatMul is found before ``logits`` (the graph is then run whole)."""
    fields = parse(model)
    graph_at = next((index for index, item in enumerate(fields) if item.number == MODEL_GRAPH), None)
    if graph_at is None:
        return None
    graph = parse(fields[graph_at].payload)
    head = lm_head(graph, logits)
    if head is None:
        return None
    node = graph[head]
    hidden = strings(node.payload, NODE_INPUT)[0]
    graph[head] = Field(GRAPH_NODE, LENGTH_DELIMITED, b"", renamed_input(node.payload, GATHERED))
    graph.insert(head, Field(GRAPH_NODE, LENGTH_DELIMITED, b"", gather_node(hidden)))
    last_input = max(index for index, item in enumerate(graph) if item.number == GRAPH_INPUT)
    graph.insert(last_input + 1, Field(GRAPH_INPUT, LENGTH_DELIMITED, b"", positions_input()))
    fields[graph_at] = Field(MODEL_GRAPH, LENGTH_DELIMITED, b"", join(graph))
    return join(fields)


def load(path: Path, logits: str) -> bytes | None:
    """The graph of the ONNX file ``path`` with :data:`POSITIONS` (see :func:`with_positions`)."""
    return with_positions(path.read_bytes(), logits)


def lm_head(graph: list[Field], logits: str) -> int | None:
    """The index, among ``graph``'s fields, of the MatMul node that makes ``logits``."""
    producers = {
        output: index
        for index, item in enumerate(graph)
        if item.number == GRAPH_NODE
        for output in strings(item.payload, NODE_OUTPUT)
    }
    name = logits
    while name in producers:
        index = producers[name]
        op_type = strings(graph[index].payload, NODE_OP_TYPE)[0]
        if op_type in MATMULS:
            return index
        if op_type not in POSITIONWISE:
            return None
        name = strings(graph[index].payload, NODE_INPUT)[0]
    return None


def renamed_input(node: bytes, name: str) -> bytes:
    """``node`` (a NodeProto) with its first input renamed ``name``."""
    fields = parse(node)
    first = next(index for index, item in enumerate(fields) if item.number == NODE_INPUT)
    fields[first] = Field(NODE_INPUT, LENGTH_DELIMITED, b"", name.encode())
    return join(fields)


def gather_node(hidden: str) -> bytes:
    """GatherND(hidden, POSITIONS, batch_dims=1): each row's hidden states at its positions."""
    batch_dims = (
        message(ATTRIBUTE_NAME, b"batch_dims")
        + varint_field(ATTRIBUTE_INT, 1)
        + varint_field(ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT)
    )
    return b"".join(
        [
            message(NODE_INPUT, hidden.encode()),
            message(NODE_INPUT, POSITIONS.encode()),
            message(NODE_OUTPUT, GATHERED.encode()),
            message(NODE_NAME, b"/slmops/logits_positions/GatherND"),
            message(NODE_OP_TYPE, b"GatherND"),
            message(NODE_ATTRIBUTE, batch_dims),
        ]
    )


def positions_input() -> bytes:
    """The ValueInfoProto of :data:`POSITIONS`: int64 ``(batch_size, logits_positions, 1)``."""
    dims = [message(DIM_PARAM, b"batch_size"), message(DIM_PARAM, b"logits_positions"), varint_field(DIM_VALUE, 1)]
    shape = b"".join(message(SHAPE_DIM, dim) for dim in dims)
    tensor = varint_field(TENSOR_ELEM_TYPE, INT64) + message(TENSOR_SHAPE, shape)
    return message(VALUE_NAME, POSITIONS.encode()) + message(VALUE_TYPE, message(TYPE_TENSOR, tensor))


# ---- protobuf's wire format ---------------------------------------------------


def parse(data: bytes) -> list[Field]:
    """The fields of a message, in order."""
    fields, position = [], 0
    while position < len(data):
        start = position
        tag, position = read_varint(data, position)
        number, kind = tag >> 3, tag & 7
        payload = b""
        if kind == 0:
            _, position = read_varint(data, position)
        elif kind == 1:
            position += 8
        elif kind == 5:
            position += 4
        elif kind == LENGTH_DELIMITED:
            size, position = read_varint(data, position)
            payload = data[position : position + size]
            position += size
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        if position > len(data):
            raise ValueError("truncated protobuf message")
        fields.append(Field(number, kind, data[start:position], payload))
    return fields


def join(fields: list[Field]) -> bytes:
    """The message made of ``fields`` (a field without ``raw`` is encoded from its payload)."""
    return b"".join(item.raw or message(item.number, item.payload) for item in fields)


def strings(data: bytes, number: int) -> list[str]:
    """Every string field ``number`` of a message."""
    return [item.payload.decode() for item in parse(data) if item.number == number and item.kind == LENGTH_DELIMITED]


def message(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
