"""The builder's requantized MatMulNBits weights replaced by the GGUF's own blocks (see gguf_blocks).

Runs on the graph the builder wrote at block size 32. Per MatMulNBits, the Hugging Face
weights it holds are found by its name (the builder packs q, k and v into one qkv_proj,
rows stacked); when they all have an exact form and the shapes agree, B, scales and zero
points are swapped and the node's bit width follows the GGUF (a Q8_0 tensor stays 8-bit in
an int4 export). A Q4_1 node gets the block-sum correction after it. Every other node keeps
the builder's weights, and its weight error against the GGUF's values is measured for the
report. A tied embedding is then rebuilt as a GatherBlockQuantized over the new LM head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmops.convert.gguf_blocks import GRAPH_BLOCK, Blocks, LazyBlocks, hf_blocks, stack
from slmops.convert.gguf_families import Family
from slmops.convert.gguf_file import GGUFFile
from slmops.convert.graph_file import quantized_lm_heads, save_graph, token_lookups
from slmops.convert.matmul_nbits import stored_zero_points

_LAYER_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul")
_EMBED, _HEAD = "model.embed_tokens.weight", "lm_head.weight"


@dataclass
class TypeRoute:
    """What happened to the MatMul weights of one ggml type: a row of the conversion report."""

    routes: list[str] = field(default_factory=list)
    tensors: int = 0
    weights: int = 0
    extra_bytes: int = 0  # Q4_1's block minima
    error_sq: float = 0.0  # summed squares of (graph weight - GGUF value) and of the GGUF values
    reference_sq: float = 0.0

    @property
    def relative_rms_error(self) -> float:
        return float(np.sqrt(self.error_sq / self.reference_sq)) if self.reference_sq else 0.0

    @property
    def exact(self) -> bool:
        return all(route.startswith("exact") for route in self.routes)

    def add(self, route: str, weights: int, error_sq: float = 0.0, reference_sq: float = 0.0, extra: int = 0) -> None:
        if route not in self.routes:
            self.routes.append(route)
        self.tensors += 1
        self.weights += weights
        self.extra_bytes += extra
        self.error_sq += error_sq
        self.reference_sq += reference_sq

    def to_json(self) -> dict:
        return {
            "route": "; ".join(self.routes),
            "tensors": self.tensors,
            "weights": self.weights,
            "relative_rms_error": round(self.relative_rms_error, 5),
            "extra_bytes": self.extra_bytes,
        }


@dataclass
class ImportResult:
    types: dict[str, TypeRoute] = field(default_factory=dict)
    embedding_from_head: bool = False
    unmapped: list[str] = field(default_factory=list)  # MatMuls whose GGUF tensors slmops could not name

    def record(self, ggml_type: str) -> TypeRoute:
        return self.types.setdefault(ggml_type, TypeRoute())

    def to_json(self) -> dict:
        return {name: row.to_json() for name, row in sorted(self.types.items())}

    def notes(self) -> list[str]:
        notes = []
        for name, row in sorted(self.types.items()):
            cost = "" if row.exact else f" (weight RMS error {100 * row.relative_rms_error:.1f}%)"
            count = f"{row.tensors} {'matrices' if row.tensors > 1 else 'matrix'}"
            notes.append(f"GGUF {name} ({count}): {'; '.join(row.routes)}{cost}")
        if self.embedding_from_head:
            notes.append("tied embeddings: the input embedding gathers the LM head's GGUF blocks")
        if self.unmapped:
            notes.append(f"requantized, their GGUF tensors not found: {', '.join(self.unmapped)}")
        return notes


def import_blocks(
    gguf_file: GGUFFile,
    family: Family,
    config: dict,
    hf_dir: Path,
    model_dir: Path,
    share_embedding: bool = True,
    least_bits: int = 4,
) -> ImportResult:
    """Put the GGUF's exact blocks into `model_dir`'s MatMulNBits nodes; returns what each type got.

    Args:
        gguf_file: the source GGUF's header.
        family: its architecture's mapping (gguf_families.FAMILIES).
        config: the config.json written for it.
        hf_dir: the dequantized Hugging Face folder (the reference values of requantized weights).
        model_dir: the builder's output (model.onnx + model.onnx.data), rewritten in place.
        share_embedding: a tied embedding the builder kept as an fp32 table also reads the LM
            head's blocks (a lookup the builder already shares always does).
        least_bits: blocks of fewer bits keep the builder's weights (8 for an int8 export: there,
            int8 weights decode faster than int4 ones with a block minimum, and are as close).
    """
    import onnx

    model = onnx.load(str(Path(model_dir) / "model.onnx"))
    table: dict[str, LazyBlocks] = dict(hf_blocks(gguf_file, family, config))
    tied = _HEAD not in table and _EMBED in table
    if tied:
        table[_HEAD] = table[_EMBED]
    graph = _Graph(model.graph)
    result = ImportResult()
    reference = _Reference(hf_dir, tied)
    head: Blocks | None = None
    for node in [n for n in model.graph.node if n.op_type == "MatMulNBits"]:
        names = weights_of(node.name, table)
        blocks = _stacked(names, table)
        if blocks is not None and blocks.bits >= least_bits and _fits(node, blocks):
            graph.swap(node, blocks)
            for name in names:
                part = table[name]
                result.record(part.ggml_type).add(_form(blocks), *_sizes(part.load()))
            head = blocks if node.name.startswith("/lm_head/") else head
        elif names:
            _record_requantized(result, node, names, table, graph, reference)
        else:
            result.unmapped.append(node.name)
    if tied and head is not None:
        result.embedding_from_head = graph.tie_embedding(head, share_embedding)
    graph.finish()
    save_graph(model, model_dir)
    return result


def weights_of(node_name: str, table: dict) -> list[str]:
    """The Hugging Face weights a builder MatMul holds, rows stacked in this order ([] if unknown)."""
    if node_name.startswith("/lm_head/"):
        return [_HEAD]
    match = _LAYER_NODE.match(node_name)
    if match is None:
        return []
    layer, block, projection = match.groups()
    prefix = f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}"
    if projection == "qkv_proj" and f"{prefix}.qkv_proj.weight" not in table:
        return [f"{prefix}.{part}.weight" for part in ("q_proj", "k_proj", "v_proj")]
    name = f"{prefix}.{projection}.weight"
    return [name] if name in table else []


def _stacked(names: list[str], table: dict[str, LazyBlocks]) -> Blocks | None:
    if not names:
        return None
    parts = [table[name].load() for name in names]
    if any(part is None for part in parts):
        return None
    return stack([part for part in parts if part is not None])


def _form(blocks: Blocks) -> str:
    form = f"exact: int{blocks.bits} blocks of {blocks.block}"
    return form + ", plus the block minimum" if blocks.minimum is not None else form


def _sizes(blocks: Blocks | None) -> tuple[int, float, float, int]:
    """(weights, error², reference², extra bytes) of one exactly taken weight."""
    assert blocks is not None
    return blocks.values.size, 0.0, 0.0, 0 if blocks.minimum is None else blocks.minimum.size * 4


def _attributes(node) -> dict:
    return {a.name: a.i for a in node.attribute}


def _fits(node, blocks: Blocks) -> bool:
    attrs = _attributes(node)
    rows, k_blocks = blocks.scales.shape
    same_shape = attrs.get("N") == rows and attrs.get("K") == k_blocks * blocks.block
    return attrs.get("block_size") == GRAPH_BLOCK and same_shape


def _record_requantized(result: ImportResult, node, names: list[str], table: dict, graph, reference) -> None:
    attrs = _attributes(node)
    route = f"requantized to int{attrs.get('bits')} blocks of {attrs.get('block_size')}"
    if len({table[name].ggml_type for name in names}) > 1:
        route += " (in one MatMul with a type that has no exact form)"
    expected, actual = reference.weight(names), graph.dequantized(node)
    start = 0
    for name in names:
        rows = reference.rows(name)
        error = actual[start : start + rows] - expected[start : start + rows]
        part = expected[start : start + rows]
        result.record(table[name].ggml_type).add(route, part.size, float(np.sum(error**2)), float(np.sum(part**2)))
        start += rows


class _Reference:
    """The dequantized weights (hf_dir/model.safetensors), read one tensor at a time."""

    def __init__(self, hf_dir: Path, tied: bool):
        self.path, self.tied = Path(hf_dir) / "model.safetensors", tied

    def weight(self, names: list[str]) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as weights:
            keys = set(weights.keys())
            parts = [weights.get_tensor(_EMBED if name not in keys and self.tied else name) for name in names]
        self.row_counts = {name: part.shape[0] for name, part in zip(names, parts)}
        return np.concatenate(parts).astype(np.float32)

    def rows(self, name: str) -> int:
        return self.row_counts[name]


class _Graph:
    """Edits to one graph: initializers by name, nodes inserted after a given node."""

    def __init__(self, graph):
        self.graph = graph
        self.initializers = {item.name: item for item in graph.initializer}
        self.after: dict[str, list] = {}  # node name -> nodes to insert after it
        self.before: dict[str, list] = {}
        self.sums: dict[str, str] = {}  # "input|block size" -> the input's block sums

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name])

    def swap(self, node, blocks: Blocks) -> None:
        from onnx import helper

        base = node.input[1]
        inputs = [
            node.input[0],
            self.add_initializer(blocks.packed(), f"{base}.gguf"),
            self.add_initializer(blocks.scales, f"{base}.gguf_scales"),
        ]
        if not blocks.neutral:
            inputs.append(
                self.add_initializer(stored_zero_points(blocks.zero_points, blocks.bits), f"{base}.gguf_zero_points")
            )
        del node.input[:]
        node.input.extend(inputs)
        kept = [a for a in node.attribute if a.name not in ("bits", "block_size")]
        del node.attribute[:]
        node.attribute.extend(
            [*kept, helper.make_attribute("bits", blocks.bits), helper.make_attribute("block_size", blocks.block)]
        )
        if blocks.minimum is not None:
            self._add_minimum(node, blocks)

    def _add_minimum(self, node, blocks: Blocks) -> None:
        """y = MatMulNBits(x) + S(x)·M, S(x) the sums of x over each block, shared per input."""
        from onnx import helper

        assert blocks.minimum is not None
        x, y = node.input[0], node.output[0]
        key, base = f"{x}|{blocks.block}", f"{x}/gguf_b{blocks.block}"
        if key not in self.sums:
            self.sums[key] = f"{base}/sums"
            reshape = helper.make_node(
                "Reshape", [x, self._blocks_shape(blocks.block)], [f"{base}/blocks"], name=f"{base}/Reshape"
            )
            reduce = helper.make_node(
                "ReduceSum",
                [f"{base}/blocks", self._last_axis()],
                [self.sums[key]],
                name=f"{base}/ReduceSum",
                keepdims=0,
            )
            self.before[node.name] = [reshape, reduce]
        minimum = self.add_initializer(np.ascontiguousarray(blocks.minimum.T), f"{node.input[1]}_minimum")
        node.output[0] = f"{y}/gguf_scaled"
        self.after[node.name] = [
            helper.make_node(
                "MatMul", [self.sums[key], minimum], [f"{y}/gguf_minimum"], name=f"{node.name}/gguf_MatMul"
            ),
            helper.make_node("Add", [node.output[0], f"{y}/gguf_minimum"], [y], name=f"{node.name}/gguf_Add"),
        ]

    def _blocks_shape(self, block: int) -> str:
        name = f"/model/constants/gguf_blocks_of_{block}"
        if name not in self.initializers:
            self.add_initializer(np.array([0, 0, -1, block], dtype=np.int64), name)
        return name

    def _last_axis(self) -> str:
        name = "/model/constants/gguf_last_axis"
        if name not in self.initializers:
            self.add_initializer(np.array([-1], dtype=np.int64), name)
        return name

    def dequantized(self, node) -> np.ndarray:
        """A MatMulNBits node's weight as float32 [N, K]."""
        attrs = _attributes(node)
        bits, rows, columns = attrs["bits"], attrs["N"], attrs["K"]
        packed = self.array(node.input[1]).reshape(rows, -1, attrs["block_size"] * bits // 8)
        k_blocks = packed.shape[1]
        values = _unpack(packed, bits)
        scales = self.array(node.input[2]).reshape(rows, k_blocks).astype(np.float32)
        zero = np.full((rows, k_blocks), 1 << (bits - 1), dtype=np.float32)
        if len(node.input) > 3 and node.input[3]:
            stored = self.array(node.input[3]).reshape(rows, -1)
            zero = _unpack(stored, bits)[:, :k_blocks]
        weight = (values - zero[..., None]) * scales[..., None]
        return weight.reshape(rows, -1)[:, :columns]

    def tie_embedding(self, head: Blocks, replace_fp32_table: bool) -> bool:
        """The embedding lookup (fp32 Gather or GatherBlockQuantized) rebuilt over the LM head's blocks."""
        lookups = token_lookups(self.graph, ("Gather", "GatherBlockQuantized"))
        heads = quantized_lm_heads(self.graph)
        if len(lookups) != 1 or len(heads) != 1:
            return False
        lookup, head_node = lookups[0], heads[0]
        table = self.initializers.get(lookup.input[0])
        rows, k_blocks = head.scales.shape
        same_matrix = table is not None and list(table.dims) == [rows, k_blocks * head.block]
        if lookup.op_type == "Gather" and not (replace_fp32_table and same_matrix):
            return False
        nodes = self._embedding_nodes(lookup, head_node, head)
        position = list(self.graph.node).index(lookup)
        producer = self._reshape_feeding(lookup)
        self.graph.node.remove(lookup)
        if producer is not None:
            self.graph.node.remove(producer)
            position -= 1
        for offset, made in enumerate(nodes):
            self.graph.node.insert(position + offset, made)
        return True

    def _reshape_feeding(self, lookup):
        if lookup.op_type != "GatherBlockQuantized":
            return None
        return next((n for n in self.graph.node if n.op_type == "Reshape" and lookup.input[0] in n.output), None)

    def _embedding_nodes(self, lookup, head_node, head: Blocks) -> list:
        from slmops.convert.tied_head import RowBlocks, gather_rows

        base, output = "/model/embed_tokens/gguf", lookup.output[0]
        gathered = output if head.minimum is None else f"{base}/scaled"
        nodes, shape = gather_rows(RowBlocks.of(head_node), "input_ids", gathered, base)
        self.initializers[shape.name] = shape
        if head.minimum is not None:
            nodes += self._embedding_minimum(base, gathered, output, head)
        return nodes

    def _embedding_minimum(self, base: str, gathered: str, output: str, head: Blocks) -> list:
        from onnx import helper

        assert head.minimum is not None
        table = self.add_initializer(head.minimum, f"{base}/minimum")
        columns = head.scales.shape[1] * head.block
        flat = self.add_initializer(np.array([0, 0, columns], np.int64), f"{base}/flat_shape")
        return [
            helper.make_node("Gather", [table, "input_ids"], [f"{base}/minimum_rows"], name=f"{base}/Gather"),
            helper.make_node(
                "Unsqueeze",
                [f"{base}/minimum_rows", self._last_axis()],
                [f"{base}/minimum_1"],
                name=f"{base}/Unsqueeze",
            ),
            helper.make_node(
                "Reshape", [gathered, self._blocks_shape(head.block)], [f"{base}/blocks"], name=f"{base}/Blocks"
            ),
            helper.make_node("Add", [f"{base}/blocks", f"{base}/minimum_1"], [f"{base}/sum"], name=f"{base}/Add"),
            helper.make_node("Reshape", [f"{base}/sum", flat], [output], name=f"{base}/Flat"),
        ]

    def finish(self) -> None:
        """Insert the new nodes in order and keep only the initializers some node reads."""
        ordered = []
        for node in self.graph.node:
            ordered += [*self.before.get(node.name, []), node, *self.after.get(node.name, [])]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {name for node in self.graph.node for name in node.input}
        del self.graph.initializer[:]
        self.graph.initializer.extend(item for name, item in self.initializers.items() if name in used)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits bytes [.., n] -> values [.., n * 8 / bits] as float32."""
    if bits == 8:
        return packed.astype(np.float32)
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1)
    return values.reshape(*packed.shape[:-1], -1).astype(np.float32)
