"""What `cache ls` needs from an ONNX file, read without onnx or torch.

An ONNX file is a protobuf ``ModelProto``. Walking its wire format by hand costs
a few milliseconds for a graph whose weights live in external data files, needs
no optional dependency, and skips embedded weights by their length without
reading them.
"""

from __future__ import annotations

import mmap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# TensorProto.DataType values -> the precision they stand for
FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 3: "int8", 2: "uint8"}
INT8_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "DynamicQuantizeLinear"}


@dataclass
class OnnxInfo:
    """Facts about one ONNX graph: quantization bits, weight types, external files."""

    nbits: set[int] = field(default_factory=set)
    ops: set[str] = field(default_factory=set)
    elements: Counter = field(default_factory=Counter)
    external_files: set[str] = field(default_factory=set)

    @property
    def precision(self) -> str | None:
        if self.nbits:
            return f"int{max(self.nbits)}"
        if self.ops & INT8_OPS:
            return "int8"
        if not self.elements:
            return None
        dominant = self.elements.most_common(1)[0][0]
        return {"uint8": "int8"}.get(FLOAT_TYPES[dominant], FLOAT_TYPES[dominant])


def read_onnx_info(path: Path) -> OnnxInfo:
    """Parse ``path``; raises ValueError when it is not a readable ONNX protobuf."""
    info = OnnxInfo()
    with open(path, "rb") as handle:
        if Path(path).stat().st_size == 0:
            raise ValueError("the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number == 7 and wire == 2:  # ModelProto.graph
                    _read_graph(buf, value, info)
    return info


def _read_graph(buf, span: tuple[int, int], info: OnnxInfo) -> None:
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 2:  # GraphProto.node
            _read_node(buf, value, info)
        elif number == 5 and wire == 2:  # GraphProto.initializer
            _read_tensor(buf, value, info)


def _read_node(buf, span: tuple[int, int], info: OnnxInfo) -> None:
    op_type, bits = "", None
    for number, wire, value in _fields(buf, *span):
        if number == 4 and wire == 2:  # NodeProto.op_type
            op_type = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == 5 and wire == 2:  # NodeProto.attribute
            name, integer = _read_attribute(buf, value)
            if name == "bits":
                bits = integer
    info.ops.add(op_type)
    if op_type == "MatMulNBits":
        info.nbits.add(bits or 4)  # the operator's default is 4 bits


def _read_attribute(buf, span: tuple[int, int]) -> tuple[str, int | None]:
    name, integer = "", None
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 2:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == 3 and wire == 0:
            integer = value
    return name, integer


def _read_tensor(buf, span: tuple[int, int], info: OnnxInfo) -> None:
    dims, data_type = [], None
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:  # packed dims
            dims.extend(_packed_varints(buf, value))
        elif number == 2 and wire == 0:
            data_type = value
        elif number == 13 and wire == 2:  # external_data: key/value string pairs
            entry = {k: v for k, v in _string_pairs(buf, value)}
            if entry.get("location"):
                info.external_files.add(entry["location"])
    if data_type in FLOAT_TYPES:
        count = 1
        for dim in dims:
            count *= dim
        info.elements[data_type] += count


def _string_pairs(buf, span: tuple[int, int]):
    key = value = ""
    for number, wire, item in _fields(buf, *span):
        if wire == 2 and number in (1, 2):
            text = bytes(buf[item[0] : item[1]]).decode("utf-8", "replace")
            key, value = (text, value) if number == 1 else (key, text)
    yield key, value


def _packed_varints(buf, span: tuple[int, int]) -> list[int]:
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of one message; length-delimited values as spans."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("truncated protobuf field")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"not an ONNX protobuf (wire type {wire})")
    if pos != end:
        raise ValueError("truncated protobuf message")


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
