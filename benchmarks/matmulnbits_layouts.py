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
import time
from pathlib import Path

import numpy as np

DEFAULT_LAYOUTS = ("4-32-asym", "4-64-asym", "4-128-asym", "4-32-sym", "4-64-sym", "8-64-asym")
LAYERS = 30
# (name, K, N) of one SmolLM2-135M layer; qkv_proj is the builder's packed q/k/v
SHAPES = (("qkv", 576, 960), ("o", 576, 576), ("gate", 576, 1536), ("up", 576, 1536), ("down", 1536, 576))
STEPS = 30  # passes a round


def build(layout: str):
    """The layer stack in ``layout`` (slmops' own probe graph, the one `deploy` times) and its weights' megabytes."""
    from slmops.convert.layouts import stack_graph

    bits_text, block_text, kind = layout.split("-")
    model = stack_graph(
        [(k, n) for _, k, n in SHAPES] * LAYERS, int(bits_text), int(block_text), zero_points=kind == "asym"
    )
    return model, sum(len(tensor.raw_data) for tensor in model.graph.initializer) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layouts", nargs="*", default=list(DEFAULT_LAYOUTS))
    parser.add_argument("--threads", default="1,2", help="Comma-separated intra-op thread counts.")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from slmops.machine import describe_cpu

    feeds = {"x576": np.ones((1, 576), dtype=np.float32), "x1536": np.ones((1, 1536), dtype=np.float32)}
    threads = [int(item) for item in args.threads.split(",")]
    sessions, sizes = {}, {}
    for layout in args.layouts:
        model, sizes[layout] = build(layout)
        serialised = model.SerializeToString()
        for count in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = count
            sessions[layout, count] = ort.InferenceSession(serialised, options, providers=["CPUExecutionProvider"])
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
