"""A GGUF file's header, read by slmops, and its tensors dequantized by the `gguf` library.

The header (metadata and tensor table) is parsed here, so a truncated or damaged file
stops with a one-line error before any work starts; the tensors stay on disk,
memory-mapped, until one is dequantized.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConversionError

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # in numpy (row-major) order, the reverse of GGUF's
    ggml_type: int
    offset: int
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_start: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """An `<architecture>.<key>` metadata value, e.g. arch_value("block_count")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


class _Cursor:
    def __init__(self, blob: np.ndarray, path: Path):
        self.blob, self.pos, self.path = blob, 0, path

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.blob):
            raise ConversionError(f"{self.path} is truncated or not a GGUF file; download it again.")
        chunk = self.blob[self.pos : self.pos + size].tobytes()
        self.pos += size
        return chunk

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item_kind) for _ in range(count)]
        raise ConversionError(f"{self.path}: unknown GGUF value type {kind}; the file is damaged.")


def read_gguf(path: Path) -> GGUFFile:
    """Read a GGUF file's metadata and tensor table (the tensors stay on disk, memory-mapped)."""
    path = Path(path)
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(blob, path)
    if cursor.take(4) != MAGIC:
        raise ConversionError(f"{path} is not a GGUF file (bad magic); pass a .gguf model file.")
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ConversionError(f"{path} is GGUF version {version}; slmops reads versions 2 and 3.")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    result = GGUFFile(path)
    for _ in range(kv_count):
        key = cursor.string()
        result.metadata[key] = cursor.value(cursor.scalar("<I"))
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        ggml_type, offset = cursor.scalar("<I"), cursor.scalar("<Q")
        result.tensors.append(GGUFTensor(name, tuple(reversed(dims)), ggml_type, offset, _nbytes(ggml_type, dims)))
    alignment = int(result.metadata.get("general.alignment", 32))
    result.data_start = -(-cursor.pos // alignment) * alignment
    end = max((t.offset + t.nbytes for t in result.tensors), default=0)
    if result.data_start + end > len(blob):
        raise ConversionError(
            f"{path} is truncated ({len(blob)} bytes, needs {result.data_start + end}); download it again."
        )
    return result


def _nbytes(ggml_type: int, dims: list[int]) -> int:
    import gguf

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise ConversionError(f"GGUF tensor type {ggml_type} is unknown to the gguf library; upgrade gguf.") from exc
    return int(np.prod(dims, dtype=np.int64)) // block * size


def dequantize(gguf_file: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    """One tensor as float32, shaped the Hugging Face way ([out, in] for weights).

    Every type goes through `gguf.quants.dequantize`, so the values are exactly the
    ones the gguf library (and llama.cpp's own Python tools) compute.
    """
    import gguf

    blob = np.memmap(gguf_file.path, dtype=np.uint8, mode="r")
    start = gguf_file.data_start + tensor.offset
    raw = np.asarray(blob[start : start + tensor.nbytes])
    kind = gguf.GGMLQuantizationType(tensor.ggml_type)
    rows = int(np.prod(tensor.shape[:-1], dtype=np.int64))
    try:
        values = gguf.quants.dequantize(raw.reshape(rows, -1), kind)
    except NotImplementedError as exc:
        raise ConversionError(
            f"{gguf_file.path.name}: tensor {tensor.name} is {kind.name}, which the gguf library cannot dequantize; "
            "requantize the file (e.g. to Q8_0) or upgrade gguf."
        ) from exc
    return values.reshape(tensor.shape).astype(np.float32, copy=False)
