"""What the block-minimum correction of an exact Q4_1/K-quant import costs one MatMul, at decode.

    .venv/bin/python benchmarks/gguf_block_minimum_cost.py [--rounds 7]

One-node graphs at SmolLM2's shapes (M = 1): MatMulNBits 4-bit without zero points (the
builder's INT4), with uint8 zero points, with zero points plus the correction slmops adds
(Reshape + ReduceSum + MatMul + Add), 8-bit (INT8, Q8_0), and 4-bit with float zero points
(the only other exact form of Q4_1, which runs on onnxruntime's slow path). All at accuracy
level 4, as the builder writes them. Time is the CPU time of one intra-op thread per run
(process_time), so that other jobs on a shared machine change it less than wall time;
medians of --rounds interleaved rounds of 200 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

SHAPES = {"q/k/v 576→960": (576, 960), "gate 576→1536": (576, 1536), "down 1536→576": (1536, 576)}
SHAPES["LM head 576→49152"] = (576, 49152)


def session(k: int, n: int, bits: int, zero_points: str | None, minimum: bool):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng, k_blocks = np.random.default_rng(0), k // 32
    weights = {
        "B": rng.integers(0, 256, (n, k_blocks, 32 * bits // 8), dtype=np.uint8),
        "S": rng.random((n, k_blocks), dtype=np.float32),
    }
    if zero_points == "uint8":
        weights["Z"] = np.full((n, (k_blocks + 1) // 2) if bits == 4 else (n, k_blocks), 0x88, np.uint8)
    elif zero_points == "float":
        weights["Z"] = rng.random((n, k_blocks), dtype=np.float32)
    output = "y0" if minimum else "y"
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["x", *weights],
            [output],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=bits,
            block_size=32,
            accuracy_level=4,
        )
    ]
    if minimum:
        weights.update(
            shape=np.array([0, 0, -1, 32], np.int64),
            axis=np.array([-1], np.int64),
            M=rng.random((k_blocks, n), dtype=np.float32),
        )
        nodes += [
            helper.make_node("Reshape", ["x", "shape"], ["blocks"]),
            helper.make_node("ReduceSum", ["blocks", "axis"], ["sums"], keepdims=0),
            helper.make_node("MatMul", ["sums", "M"], ["correction"]),
            helper.make_node("Add", ["y0", "correction"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options)


VARIANTS = {
    "int4 (builder)": (4, None, False),
    "int4 + zero points": (4, "uint8", False),
    "int4 + zero points + minimum (exact Q4_1)": (4, "uint8", True),
    "int8 (INT8, exact Q8_0)": (8, None, False),
    "int4 + float zero points": (4, "float", False),
}


def main() -> None:
    from slmops.machine import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU: {describe_cpu().summary()}; load average {os.getloadavg()}")
    print("| shape | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for label, (k, n) in SHAPES.items():
        sessions = {name: session(k, n, *spec) for name, spec in VARIANTS.items()}
        feed = {"x": np.random.default_rng(1).random((1, 1, k), dtype=np.float32)}
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, runner in sessions.items():
                runs = 20 if "float" in name else 200
                started = time.process_time()
                for _ in range(runs):
                    runner.run(None, feed)
                samples[name].append((time.process_time() - started) / runs * 1e6)
        base = statistics.median(samples["int4 (builder)"])
        cells = [f"{statistics.median(v):.0f} µs ({statistics.median(v) / base:.2f}×)" for v in samples.values()]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
