"""An orthogonal rotation of the hidden state, folded into the weights before INT4 quantization.

A decoder's hidden state meets its weights only through RMSNorm, which a rotation Q leaves alone
(‖xQ‖ = ‖x‖), and through MatMuls. Writing the state rotated (the embedding, ``o_proj``,
``down_proj`` times Q) and reading it back through Qᵀ (every MatMul after a norm, with the norm's
weight folded in) computes the same function, while every weight column the quantizer sees now
mixes all input channels: no channel carries an outlier for GPTQ to spend its rounding on
(b64, every MatMul 4-bit, KLD from FP32: SmolLM2 0.143 -> 0.098-0.105, a model off the 4-bit
grid 0.145 -> 0.097; docs/quality.md).

Attention is linear in its values, so each value head gets a rotation of its own as well: the
value columns of ``qkv_proj`` times R, the rows of ``o_proj`` that read the head times Rᵀ.

The MLP's down projection reads a product (act(gate) x up) that no weight before it can rotate,
so its input is rotated where it runs: in blocks of :data:`BLOCK` channels, each block times one
64 x 64 matrix R, the same in every layer (a Reshape, a MatMul by a constant, a Reshape: 0-2% of
a decode step on SmolLM2), and each block of the weight's rows times Rᵀ. Within each
quantization block this spreads an outlier channel as a dense rotation would (SmolLM2's down
projections, GPTQ b64: output error -16% to -65%, as with a dense 1,536 x 1,536 rotation).

A tied LM head shares its table with the embedding, which can rotate only one way: the head then
reads the rotated state through one extra H x H MatMul, Qᵀ · diag(final norm weight) · Q
(:data:`ROTATION_NODE`, 0.3 M weights beside SmolLM2's 28 M of head).

Only the graph layout slmops' FP32 exports have is rotated (RMSNorms whose outputs feed weight
MatMuls alone, each with its own weight, a residual stream written by weight MatMuls without bias
and never a graph output, as an embedding model's hidden states are); anything else is left as it
is and :func:`rotate_export` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.convert.graph_file import save_graph, set_weight, token_lookups, transposed_table

ROTATION_NODE = "/model/rotation/MatMul"
BLOCK = 64  # channels of a down projection's input rotated together
BLOCK_ROTATION = "/model/block_rotation"
ATTENTIONS = ("GroupQueryAttention", "MultiHeadAttention", "Attention")
LM_HEAD_NODE = "/lm_head/MatMul"
NORMS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal n x n matrix (QR of a Gaussian one, signs fixed so it is uniformly drawn)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rotate_export(model_dir: Path, seed: int = 0) -> str | None:
    """Rotate ``model_dir``'s FP32 graph in place; None when done, else why it was left as it is."""
    import onnx

    model = onnx.load(str(Path(model_dir) / "model.onnx"))
    why = rotate_graph(model.graph, seed)
    if why is None:
        save_graph(model, model_dir)
    return why


def rotate_graph(graph, seed: int = 0) -> str | None:
    """Rotate ``graph``'s hidden state (and each value head) in place; None when done, else why not."""
    plan = _Plan.of(graph)
    if isinstance(plan, str):
        return plan
    rng = np.random.default_rng(seed)
    q = orthogonal(plan.hidden, rng)
    for norm, gamma in plan.norms:
        folded = plan.get(gamma)
        for reader in plan.readers[norm.output[0]]:
            if reader.name == LM_HEAD_NODE and plan.tied:
                _insert_rotation(graph, norm, reader, q.T @ np.diag(folded) @ q)
            else:
                plan.put(reader.input[1], q.T @ (folded[:, None] * plan.get(reader.input[1])))
        plan.put(gamma, np.ones_like(folded))
    for writer in plan.writers:
        plan.put(writer.input[1], plan.get(writer.input[1]) @ q)
    plan.put(plan.embedding, (q.T @ plan.get(plan.embedding)) if plan.tied else (plan.get(plan.embedding) @ q))
    for attention in plan.attentions:
        _rotate_values(plan, attention, rng)
    # attention's values are rotated above; what else writes the state (the MLP's down projection) reads a product
    products = [
        w for w in plan.writers if w.input[0] in plan.producers and plan.producers[w.input[0]].op_type not in ATTENTIONS
    ]
    _rotate_inputs_in_blocks(graph, plan, products, rng)
    return None


class _Plan:
    """What a rotation touches in one graph: the norms and their readers, the writers, the embedding."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.weights = {item.name: item for item in graph.initializer}
        self.producers = {output: node for node in graph.node for output in node.output}
        self.readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.norms: list[tuple] = []
        self.writers: list = []
        self.attentions: list = []
        self.embedding = ""
        self.tied = False
        self.hidden = 0

    @classmethod
    def of(cls, graph) -> _Plan | str:
        plan = cls(graph)
        gathers = token_lookups(graph)
        if len(gathers) != 1:
            return "no single embedding Gather"
        tied = transposed_table(graph)
        if tied is not None and tied in plan.weights:
            plan.embedding, plan.tied = tied, True  # the head's [H, V] weight, gathered transposed
        elif gathers[0].input[0] in plan.weights:
            plan.embedding = gathers[0].input[0]
        else:
            return "the embedding table is not a weight"
        plan.hidden = int(plan.weights[plan.embedding].dims[0 if plan.tied else 1])
        outputs = {item.name for item in graph.output}
        for node in graph.node:
            if node.op_type not in NORMS:
                continue
            gamma = node.input[1] if node.op_type == NORMS[0] else node.input[2]
            if gamma not in plan.weights or (node.op_type == NORMS[1] and len(node.input) > 3 and node.input[3]):
                return f"{node.name} is not a plain RMSNorm"
            if any(gamma == seen for _, seen in plan.norms):
                return f"{node.name} shares its weight with another norm"
            if outputs & {*node.input, *node.output}:
                return f"the graph outputs the hidden state around {node.name}"
            if not all(plan._weight_matmul(r) for r in plan.readers.get(node.output[0], [])):
                return f"{node.name} feeds something other than weight MatMuls"
            plan.norms.append((node, gamma))
            for residual in node.input[: 1 if node.op_type == NORMS[0] else 2]:
                writer = plan.producers.get(residual)
                if writer is None or writer is gathers[0] or writer.op_type == NORMS[1]:
                    continue
                if not plan._weight_matmul(writer):
                    return f"the hidden state is written by {writer.name} ({writer.op_type})"
                plan.writers.append(writer)
        if not plan.norms or not plan.writers:
            return "no RMSNorm and residual layout found"
        plan.attentions = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        return plan

    def _weight_matmul(self, node) -> bool:
        return node.op_type == "MatMul" and node.input[1] in self.weights

    def get(self, name: str) -> np.ndarray:
        return self._to_array(self.weights[name]).astype(np.float64)

    def put(self, name: str, array: np.ndarray) -> None:
        set_weight(self.weights[name], array)


def _insert_rotation(graph, norm, head, matrix: np.ndarray) -> None:
    from onnx import helper, numpy_helper

    weight = "model.rotation.MatMul.weight"
    graph.initializer.append(numpy_helper.from_array(matrix.astype(np.float32), weight))
    rotated = f"{ROTATION_NODE}/output_0"
    head.input[0] = rotated
    node = helper.make_node("MatMul", [norm.output[0], weight], [rotated], name=ROTATION_NODE)
    graph.node.insert(list(graph.node).index(head), node)


def _rotate_inputs_in_blocks(graph, plan: _Plan, matmuls: list, rng: np.random.Generator) -> None:
    """Each of ``matmuls``' inputs rotated in blocks of :data:`BLOCK` channels by one R, its weight's rows by Rᵀ."""
    from onnx import helper, numpy_helper

    r = orthogonal(BLOCK, rng)
    # Constants, not initializers: no quantizer takes these MatMuls for weights to quantize
    made: dict = {}

    def constant(name: str, value: np.ndarray) -> str:
        made.setdefault(name, helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value)))
        return name

    for matmul in matmuls:
        weight = plan.get(matmul.input[1])  # [K, N]
        k = weight.shape[0]
        if k % BLOCK:
            continue
        plan.put(matmul.input[1], np.einsum("ji,bjn->bin", r, weight.reshape(k // BLOCK, BLOCK, -1)).reshape(k, -1))
        rotation = constant(f"{BLOCK_ROTATION}/R", r.astype(np.float32))
        blocks = constant(f"{BLOCK_ROTATION}/blocks_{k}", np.array([0, 0, k // BLOCK, BLOCK], dtype=np.int64))
        channels = constant(f"{BLOCK_ROTATION}/channels_{k}", np.array([0, 0, k], dtype=np.int64))
        base = f"{matmul.name}/input_rotation"
        nodes = [
            helper.make_node("Reshape", [matmul.input[0], blocks], [f"{base}/blocks"], name=f"{base}/Split"),
            helper.make_node("MatMul", [f"{base}/blocks", rotation], [f"{base}/rotated"], name=f"{base}/MatMul"),
            helper.make_node("Reshape", [f"{base}/rotated", channels], [f"{base}/output_0"], name=f"{base}/Join"),
        ]
        matmul.input[0] = f"{base}/output_0"
        at = list(graph.node).index(matmul)
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
    for offset, node in enumerate(made.values()):
        graph.node.insert(offset, node)


def value_heads(attention, width: int) -> tuple[int, int, int] | None:
    """(query heads, value heads, head size) of a GroupQueryAttention reading one packed q/k/v input and
    writing ``width`` values a position; None for any other layout."""
    if attention.input[1] or attention.input[2]:  # separate q/k/v inputs
        return None
    heads = {a.name: a.i for a in attention.attribute}
    num_heads, kv_heads = heads.get("num_heads", 0), heads.get("kv_num_heads", 0)
    if not num_heads or not kv_heads or width % num_heads or num_heads % kv_heads:
        return None
    return num_heads, kv_heads, width // num_heads


def _rotate_values(plan: _Plan, attention, rng: np.random.Generator) -> None:
    """Rotate each value head of a packed-QKV GroupQueryAttention by its own R; undo it in o_proj's rows."""
    qkv = plan.producers.get(attention.input[0])
    readers = plan.readers.get(attention.output[0], [])
    if qkv is None or not plan._weight_matmul(qkv) or len(readers) != 1 or not plan._weight_matmul(readers[0]):
        return
    packed, o_proj = plan.get(qkv.input[1]), plan.get(readers[0].input[1])
    heads = value_heads(attention, o_proj.shape[0])
    if heads is None:
        return
    num_heads, kv_heads, size = heads
    first_value = (num_heads + kv_heads) * size
    if packed.shape[1] != first_value + kv_heads * size:
        return
    group = num_heads // kv_heads
    for head in range(kv_heads):
        r = orthogonal(size, rng)
        columns = slice(first_value + head * size, first_value + (head + 1) * size)
        packed[:, columns] = packed[:, columns] @ r
        for query in range(head * group, (head + 1) * group):
            o_proj[query * size : (query + 1) * size] = r.T @ o_proj[query * size : (query + 1) * size]
    plan.put(qkv.input[1], packed)
    plan.put(readers[0].input[1], o_proj)
