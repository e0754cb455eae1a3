"""A tied embedding read from the quantized LM head instead of an fp32 copy.

When the builder cannot share a tied embedding (INT8 precision, an int8 LM head in the
mixed settings, asymmetric INT4), it keeps the embedding as an fp32 table beside the
quantized LM head: on SmolLM2 that is 113 MB of a 230 MB export. The LM head's
MatMulNBits already holds the same matrix, quantized per row in blocks along the hidden
size, which is exactly the layout ``GatherBlockQuantized`` gathers rows from (4 or 8
bits, with its scales and zero points). slmops points the embedding lookup at it after
the build and drops the fp32 table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slmops.convert.graph_file import quantized_lm_heads, save_graph, token_lookups

NOTE = (
    "tied embeddings: the input embedding reads the quantized LM head ({bits}-bit GatherBlockQuantized), no fp32 copy"
)


def share_quantized_lm_head(model_dir: Path) -> int | None:
    """Rewrite ``model_dir``'s graph so the embedding gathers from the LM head; returns its bits, None if not applicable."""
    import onnx

    path = Path(model_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    found = _embedding_and_head(model.graph)
    if found is None:
        return None
    model = onnx.load(str(path))
    gather, head = _embedding_and_head(model.graph) or found
    bits = replace_gather(model.graph, gather, RowBlocks.of(head))
    save_graph(model, model_dir)
    return bits


def _embedding_and_head(graph):
    """The fp32 embedding Gather and the MatMulNBits LM head when they hold the same [vocab, hidden] matrix."""
    initializers = {item.name: item for item in graph.initializer}
    gathers = [node for node in token_lookups(graph) if node.input[0] in initializers]
    heads = quantized_lm_heads(graph)
    if len(gathers) != 1 or len(heads) != 1:
        return None
    table, head = initializers[gathers[0].input[0]], heads[0]
    attrs = {a.name: a.i for a in head.attribute}
    if list(table.dims) != [attrs.get("N"), attrs.get("K")] or len(head.input) < 3 or head.input[2] not in initializers:
        return None
    return gathers[0], head


@dataclass(frozen=True)
class RowBlocks:
    """A [rows, hidden] matrix stored as MatMulNBits stores its B: the initializers' names and the layout."""

    codes: str
    scales: str
    zero_points: str | None
    rows: int
    hidden: int
    bits: int
    block: int

    @classmethod
    def of(cls, matmul) -> RowBlocks:
        """The matrix a MatMulNBits node reads, one output row per row."""
        attrs = {a.name: a.i for a in matmul.attribute}
        zero_points = matmul.input[3] if len(matmul.input) > 3 and matmul.input[3] else None
        return cls(
            matmul.input[1], matmul.input[2], zero_points, attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        )


def replace_gather(graph, gather, table: RowBlocks, residual: RowBlocks | None = None) -> int:
    """Swap the fp32 embedding ``gather`` (and its table) for a lookup into ``table``; returns its bits.

    ``residual``: a second table of the same rows (rows of bytes, :func:`gather_node`'s layout)
    added to the first, as a screened LM head stores its weights (:mod:`slmops.convert.screened_head`)."""
    from onnx import helper

    base = gather.name.rsplit("/", 1)[0]
    rows = f"{base}/GatherBlockQuantized/output_0"
    nodes, shape = gather_rows(table, gather.input[1], rows, base)
    initializers = [shape]
    if residual is not None:
        nodes.append(gather_node(residual, gather.input[1], f"{base}/residual/output_0", f"{base}/residual"))
        nodes.append(helper.make_node("Add", [rows, f"{base}/residual/output_0"], [f"{rows}/sum"], name=f"{base}/Add"))
        rows = f"{rows}/sum"
    cut, constants = unpadded_rows(table, rows, gather.output[0], base)
    if not cut:
        nodes[-1].output[0] = gather.output[0]
    _swap(graph, gather, nodes + cut, initializers + constants)
    return table.bits


def unpadded_rows(table: RowBlocks, rows: str, output: str, base: str) -> tuple[list, list]:
    """A Slice of gathered ``rows`` to ``table``'s hidden size into ``output``, and its bounds (none of either
    when its rows are whole blocks): GatherBlockQuantized writes rows padded to whole blocks."""
    from onnx import helper, numpy_helper

    if table.hidden % table.block == 0:
        return [], []
    bounds = [np.array([value], dtype=np.int64) for value in (0, table.hidden, -1)]
    names = [f"{base}/slice_{which}" for which in ("start", "end", "axis")]
    constants = [numpy_helper.from_array(value, name) for value, name in zip(bounds, names, strict=True)]
    return [helper.make_node("Slice", [rows, *names], [output], name=f"{base}/Slice")], constants


def gather_rows(table: RowBlocks, ids: str, output: str, base: str) -> tuple[list, Any]:
    """Nodes that gather the rows ``ids`` of ``table`` into ``output``.

    A Reshape views the packed codes as one row of bytes per matrix row, and a
    GatherBlockQuantized reads it with the table's own scales and zero points; the rows it
    writes are padded to whole blocks, as MatMulNBits stores them. Returns the nodes (named
    under ``base``) and the Reshape's shape, an initializer the caller adds to the graph.
    """
    from onnx import helper, numpy_helper

    row_bytes = -(-table.hidden // table.block) * table.block * table.bits // 8
    shape = numpy_helper.from_array(np.array([table.rows, row_bytes], dtype=np.int64), f"{base}/Reshape/shape")
    reshape = helper.make_node(
        "Reshape", [table.codes, shape.name], [f"{base}/Reshape/output_0"], name=f"{base}/Reshape"
    )
    return [reshape, gather_node(replace(table, codes=reshape.output[0]), ids, output, base)], shape


def gather_node(table: RowBlocks, ids: str, output: str, base: str):
    """A GatherBlockQuantized of the rows ``ids`` of ``table``, whose codes are one row of bytes per matrix row."""
    from onnx import helper

    inputs = [table.codes, ids, table.scales, *([table.zero_points] if table.zero_points else [])]
    return helper.make_node(
        "GatherBlockQuantized",
        inputs,
        [output],
        name=f"{base}/GatherBlockQuantized",
        domain="com.microsoft",
        bits=table.bits,
        block_size=table.block,
        gather_axis=0,
        quantize_axis=1,
    )


def _swap(graph, old, nodes, initializers) -> None:
    position = list(graph.node).index(old)
    table = old.input[0]
    graph.node.remove(old)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    kept = [item for item in graph.initializer if item.name != table]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *initializers])
