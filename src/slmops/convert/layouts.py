"""Which calibrated layout this CPU's kernels run as fast: 4-bit blocks of 64 or the finer blocks of 32.

The calibrated export fills the same bytes two ways: 4-bit blocks of 64 with 32% of the layer
weights at 8 bits, or 4-bit blocks of 32 (a scale every 32 weights) with 22% at 8 bits. The
finer scales are 4.5-11% closer to FP32 by KLD on every model, seed and CPU measured (on an AVX2
Zen 3 class CPU, SmolLM2 0.0361 and 0.0360 against 0.0382 and 0.0377 over two rotation seeds,
off the 4-bit grid 0.0377 against 0.0398, Qwen2.5-Coder-0.5B 0.0355 against 0.0397; SmolLM2 on
a Zen 5 class CPU 0.0349 against 0.0378), and decode as fast where MatMulNBits' kernels do not
care about the block size (those two CPUs). On the Zen 4 class CPU blocks of 32 were the slow
layout. So `deploy` times both layer mixes here, on the model's own layer shapes, before it
builds, and takes blocks of 32 only when they are within the 5% its rule counts as a tie
(docs/quality.md, "Choosing the layout by this CPU's kernels").
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layout:
    """A calibrated export's layout: its 4-bit block size and its share of 8-bit layer weights."""

    block_size: int
    int8_share: float

    def describe(self) -> str:
        return f"4-bit blocks of {self.block_size} with {self.int8_share:.0%} of the layer weights 8-bit"


COARSE = Layout(64, 0.32)
# COARSE's bytes: a 4-bit weight costs 0.56 bits more at blocks of 32 (a float scale and a 4-bit zero point a
# block), and ten points fewer of the weights are 8-bit (8.6 bits a weight)
FINE = Layout(32, 0.22)
TIE = 0.05  # as deploy's rule: speeds within 5% are a tie, here won by the closer layout
INT8_BLOCK = 64  # the calibrated export's 8-bit matrices, at either layout
# Enough of the model's layers that no cache holds them, so each pass streams the weights as a decode step
# does (SmolLM2-135M's 30 layers are 106 M weights), and few enough that a larger model's probe takes seconds.
PROBE_WEIGHTS = 110_000_000
# Interleaved rounds of passes through each stack. Each round compares the layouts at one moment: on a shared
# 2-core AVX2 host the median of the rounds' ratios spread over 0.97-1.01 in four probes of SmolLM2's layers
# and 0.99-1.00 of Qwen2.5-0.5B's, the ratio of the stacks' median times over 0.95-1.02 and 0.97-1.04.
ROUNDS, STEPS = 15, 10


def layer_shapes(fp32_folder: Path) -> list[tuple[int, int]]:
    """(K, N) of every weight MatMul of an FP32 export but the LM head, in graph order."""
    import onnx

    graph = onnx.load(str(Path(fp32_folder) / "model.onnx"), load_external_data=False).graph
    dims = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    return [
        (int(dims[node.input[1]][0]), int(dims[node.input[1]][1]))
        for node in graph.node
        if node.op_type == "MatMul" and len(dims.get(node.input[1], ())) == 2 and "lm_head" not in node.name
    ]


def probe_stack(shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The first of ``shapes`` up to PROBE_WEIGHTS weights (at least one)."""
    stack: list[tuple[int, int]] = []
    total = 0
    for k, n in shapes:
        if stack and total + k * n > PROBE_WEIGHTS:
            break
        stack.append((k, n))
        total += k * n
    return stack


def time_kernels(shapes: list[tuple[int, int]], threads: int) -> dict[str, list[float]]:
    """Milliseconds a pass (one token, M = 1) through ``shapes`` as MatMulNBits, random weights, by layout
    (``4-32``, ``4-64`` and ``8-64``: bits-block, integer zero points), one figure a round."""
    import onnxruntime as ort

    stack = probe_stack(shapes)
    layouts = {f"4-{FINE.block_size}": (4, FINE.block_size), f"4-{COARSE.block_size}": (4, COARSE.block_size)}
    layouts[f"8-{INT8_BLOCK}"] = (8, INT8_BLOCK)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(
            stack_graph(stack, bits, block).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        for name, (bits, block) in layouts.items()
    }
    feeds = {f"x{k}": np.ones((1, k), dtype=np.float32) for k, _ in stack}
    for session in sessions.values():
        session.run(None, feeds)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(ROUNDS):
        for name, session in sessions.items():
            started = time.perf_counter()
            for _ in range(STEPS):
                session.run(None, feeds)
            samples[name].append(round((time.perf_counter() - started) / STEPS * 1000, 3))
    return samples


def mix_ms(times: dict[str, float], layout: Layout) -> float:
    """A token's layer time at ``layout``: its 4-bit and 8-bit shares of the weights at their kernels' speeds."""
    share = layout.int8_share
    return (1 - share) * times[f"4-{layout.block_size}"] + share * times[f"8-{INT8_BLOCK}"]


def slowdown(samples: dict[str, list[float]]) -> float:
    """FINE's layer time over COARSE's: the median of the rounds' ratios."""
    rounds = [dict(zip(samples, figures)) for figures in zip(*samples.values())]
    return statistics.median(mix_ms(times, FINE) / mix_ms(times, COARSE) for times in rounds)


def faster_layout(samples: dict[str, list[float]]) -> Layout:
    """FINE where its layer mix runs within the tie of COARSE's on this CPU, else COARSE."""
    return FINE if slowdown(samples) <= 1 + TIE else COARSE


def verdict(samples: dict[str, list[float]]) -> str:
    """The choice and its figures, as deploy reports them."""
    chosen = faster_layout(samples)
    why = "within 5%, so the closer layout" if chosen == FINE else "more than 5% slower, so the coarser layout"
    return (
        f"{chosen.describe()}: this CPU's kernels run the layers at blocks of {FINE.block_size} in "
        f"{slowdown(samples):.2f}x the time of blocks of {COARSE.block_size} (the median of "
        f"{len(next(iter(samples.values())))} interleaved rounds), {why}"
    )


def stack_graph(stack: list[tuple[int, int]], bits: int, block: int, zero_points: bool = True):
    """An ONNX model of ``stack``'s (K, N) MatMuls as MatMulNBits at ``bits`` and ``block``, random weights, one
    input ``x{K}`` a width and every product an output; without ``zero_points``, the kernels' symmetric layout."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, outputs = [], [], []
    for index, (k, n) in enumerate(stack):
        blocks, name = -(-k // block), f"m{index}"
        codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
        scales = rng.random(n * blocks, dtype=np.float32) * 0.01
        weights += [numpy_helper.from_array(codes, f"{name}.codes"), numpy_helper.from_array(scales, f"{name}.scales")]
        reads = [f"x{k}", f"{name}.codes", f"{name}.scales"]
        if zero_points:
            points = rng.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8)
            weights.append(numpy_helper.from_array(points, f"{name}.zero_points"))
            reads.append(f"{name}.zero_points")
        attributes: dict[str, Any] = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": 4}
        nodes.append(helper.make_node("MatMulNBits", reads, [name], domain="com.microsoft", **attributes))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n]))
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in sorted({k for k, _ in stack})]
    graph = helper.make_graph(nodes, "layers", inputs, outputs, weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)
