#!/usr/bin/env python3
"""How fast onnxruntime's MatMulNBits kernels run each weight layout on this CPU, at one token a step.

    python benchmarks/matmulnbits_layouts.py [LAYOUT ...] [--threads 1,2] [--rounds 9] [--json out.json]

A LAYOUT is BITS-BLOCK-{sym,asym}, e.g. 4-64-asym (the calibrated default's 4-bit layers) or 8-64-asym
(its 8-bit ones). Each builds a graph of SmolLM2-135M's 30 layers of MatMuls (qkv 576->960, o 576->576,
gate and up 576->1536, down 1536->576: 106M random weights, more than any L3 holds, so every step
streams them as a model's decode does) and times one M=1 pass through all of them, in interleaved
rounds, at each thread count. The graphs have no attention, norms or LM head: this is the kernels
alone, the part of a decode step that the layout decides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_LAYOUTS = ("4-32-asym", "4-64-asym", "4-128-asym", "4-32-sym", "4-64-sym", "8-64-asym")
LAYERS = 30
# (name, K, N) of one SmolLM2-135M layer; qkv_proj is the builder's packed q/k/v
SHAPES = (("qkv", 576, 960), ("o", 576, 576), ("gate", 576, 1536), ("up", 576, 1536), ("down", 1536, 576))
STEPS = 30  # passes a round


def build(layout: str, path: Path) -> float:
    """Write the layer stack in ``layout`` to ``path``; returns its weights' megabytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bits_text, block_text, kind = layout.split("-")
    bits, block = int(bits_text), int(block_text)
    rng = np.random.default_rng(0)
    nodes, weights, outputs = [], [], []
    for layer in range(LAYERS):
        for name, k, n in SHAPES:
            blocks = -(-k // block)
            prefix = f"layer{layer}.{name}"
            codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
            weights += [numpy_helper.from_array(codes, f"{prefix}.codes")]
            weights += [numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01, f"{prefix}.scales")]
            inputs = ["h" if name == "down" else "x", f"{prefix}.codes", f"{prefix}.scales"]
            if kind == "asym":
                zero_points = n * (-(-blocks * bits // 8))
                weights += [
                    numpy_helper.from_array(rng.integers(0, 256, zero_points, dtype=np.uint8), f"{prefix}.zeros")
                ]
                inputs.append(f"{prefix}.zeros")
            attributes = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": 4}
            nodes.append(helper.make_node("MatMulNBits", inputs, [prefix], domain="com.microsoft", **attributes))
            outputs.append(helper.make_tensor_value_info(prefix, TensorProto.FLOAT, [1, n]))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 576]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1536]),
    ]
    graph = helper.make_graph(nodes, "layers", inputs, outputs, weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path), save_as_external_data=True)
    return sum(len(item.raw_data) for item in weights) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layouts", nargs="*", default=list(DEFAULT_LAYOUTS))
    parser.add_argument("--threads", default="1,2", help="Comma-separated intra-op thread counts.")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from slmops.machine import describe_cpu

    feeds = {"x": np.ones((1, 576), dtype=np.float32), "h": np.ones((1, 1536), dtype=np.float32)}
    threads = [int(item) for item in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        sessions, sizes = {}, {}
        for layout in args.layouts:
            path = Path(scratch) / f"{layout}.onnx"
            sizes[layout] = build(layout, path)
            for count in threads:
                options = ort.SessionOptions()
                options.intra_op_num_threads = count
                sessions[layout, count] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for session in sessions.values():
            session.run(None, feeds)
        times: dict[tuple[str, int], list[float]] = {key: [] for key in sessions}
        for _ in range(args.rounds):
            for key, session in sessions.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    session.run(None, feeds)
                times[key].append((time.perf_counter() - start) / STEPS * 1000)
    cpu = describe_cpu().summary()
    print(cpu)
    rows = []
    for (layout, count), values in times.items():
        ms = statistics.median(values)
        rows.append({"layout": layout, "threads": count, "mb": round(sizes[layout], 1), "ms": round(ms, 3)})
        print(f"{layout:12s} {count} thread(s)  {sizes[layout]:6.1f} MB  {ms:6.2f} ms  {sizes[layout] / ms:5.1f} GB/s")
    if args.json:
        report = {"cpu": cpu, "rounds": args.rounds, "steps_a_round": STEPS, "results": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
