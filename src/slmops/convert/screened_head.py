"""An LM head read at 4 bits for every token, its top candidates rescored at about 8.

Decoding reads the whole LM head once a token, and on a small model the head is a large
part of what a step reads: SmolLM2's tied 49,152 x 576 head held 28 of the 107 MB at 8 bits,
Qwen2.5-0.5B's 151,936 x 896 one 136 of its 494 M weights. Read at 4 bits it costs half, and
on its own a 4-bit head costs quality (SmolLM2: KLD 0.082 -> 0.095, top-1 85.9% -> 84.2% on
16,352 held-out tokens, with GPTQ's codes). Split instead into 4-bit codes and a 4-bit
residual (what the codes miss, quantized again, ~1% of the weights' norm), the head's
MatMulNBits reads only the codes; a TopK takes the :data:`TOP_K` largest of those logits,
one GatherBlockQuantized reads the residual rows of just those tokens, and their logits get
the residual's share: ``h . (codes + residual) = coarse logit + h . residual row``. The
tokens that sampling and greedy decoding pick are scored as by an 8-bit head; the rest keep
their 4-bit logits. The tied embedding gathers codes and residual both.

Measured on the embedded SmolLM2 (docs/quality.md, "A screened LM head"; 16,352 held-out tokens):
KLD 0.084 against the 8-bit head's 0.082, the same top-1, decoding 9-13% faster for 1.8 MB more.
A graph run over a whole prompt screens every position, and ScatterElements writes a second
logits-sized tensor: the batched engine picks the positions it reads and pays nothing; the
single-stream generator's prefill, 128 tokens at a time, pays a little (Qwen 0.5B, 1,911 tokens:
TTFT 3.8 -> 4.2 s, peak RSS 888 -> 979 MB) for decoding ~10% faster.
"""

from __future__ import annotations

import numpy as np

from slmops.convert.tied_head import RowBlocks, gather_node, unpadded_rows

# Candidates rescored a position: SmolLM2's KLD 0.086 at 8, 0.084 at 32, 0.084 at 64. The TopK and
# the rescoring cost ~1% of a step at 32 on SmolLM2's 49,152 tokens, ~5% on Qwen's 151,936, and at
# 512 as much as the 4-bit read saves.
TOP_K = 32


def screened_head_nodes(name: str, hidden: str, coarse: str, logits: str, residual: RowBlocks) -> tuple[list, list]:
    """The nodes that write ``logits``: the 4-bit ``coarse`` logits of ``hidden`` (the head's MatMulNBits
    output), the top candidates' rescored with ``residual`` (rows of bytes, GatherBlockQuantized's layout).

    ``name``: the MatMul being replaced; the new nodes are named under its scope. Returns the nodes
    and the initializers they add (the TopK's k, an axis, the bounds of padded rows).
    """
    from onnx import helper, numpy_helper

    base = name.rsplit("/", 1)[0]
    top_values, top_ids = f"{base}/top/values", f"{base}/top/ids"
    k = numpy_helper.from_array(np.array([min(TOP_K, residual.rows)], dtype=np.int64), f"{base}/top/k")
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{base}/last_axis")
    padded_rows, rows = f"{base}/residual/rows", f"{base}/residual/rows/cut"
    cut, bounds = unpadded_rows(residual, padded_rows, rows, f"{base}/residual")
    rows = rows if cut else padded_rows
    nodes = [
        helper.make_node("TopK", [coarse, k.name], [top_values, top_ids], name=f"{base}/top/TopK", axis=-1, sorted=0),
        gather_node(residual, top_ids, padded_rows, f"{base}/residual"),
        *cut,
        helper.make_node("Unsqueeze", [hidden, last.name], [f"{base}/hidden/column"], name=f"{base}/Unsqueeze"),
        helper.make_node("MatMul", [rows, f"{base}/hidden/column"], [f"{base}/residual/dot"], name=f"{base}/MatMul"),
        helper.make_node(
            "Squeeze", [f"{base}/residual/dot", last.name], [f"{base}/residual/share"], name=f"{base}/Squeeze"
        ),
        helper.make_node("Add", [top_values, f"{base}/residual/share"], [f"{base}/top/rescored"], name=f"{base}/Add"),
        helper.make_node(
            "ScatterElements", [coarse, top_ids, f"{base}/top/rescored"], [logits], name=f"{base}/Scatter", axis=-1
        ),
    ]
    return nodes, [k, last, *bounds]
