"""A GGUF imported with its own blocks against requantizing it, and against llama.cpp on the same file.

    .venv/bin/python benchmarks/gguf_exact_import.py --out /tmp/gguf-exact \\
        --llama-bench /path/to/llama-bench [--q4_0 smollm2-q4_0.gguf] [--q8_0 smollm2-q8_0.gguf]

The main source is the embedded SmolLM2 GGUF (Q4_1, its embedding Q8_0). Q4_0 and Q8_0 files of
the same model come from llama-quantize (e.g. Q4_1 -> F16 with --allow-requantize, then F16 ->
Q4_0 / Q8_0). Candidates:

- ``exact <type>``: `slmops convert` with its default, the GGUF's blocks taken as they are;
- ``exact Q4_1, fp32 activations``: the same at accuracy level 1 (the int8 activations of the
  default level 4 are the only rounding left in ``exact``; this row shows it);
- ``exact Q4_1, minimum stripped``: the same graph without the block-minimum MatMul + Add
  (wrong values, for timing only: the correction's own cost);
- ``builder INT4 b32`` / ``... LM head int8`` / ``INT8``: the GGUF dequantized and requantized
  by the builder (``--gguf-blocks requantize``);
- ``llama.cpp <type>``: llama-bench on the GGUF itself, faster of flash attention on/off.

Quality: `eval --reference` against the FP32 export of the candidate's own GGUF, on the first
--windows windows of the shipped text. Speed: --rounds interleaved rounds, every slmops model in
a fresh process (64 greedy tokens, best of 2) and llama-bench with 64 tokens at 2 threads;
medians, and ratios to the builder's INT4 taken per round. Writes results.json and results.md
in --out with the CPU and the host's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from int4_frontier import folder_name, size_mb  # this folder's other script

# name -> (source key, precision, QuantizationOptions fields)
CANDIDATES: dict[str, tuple[str, str, dict]] = {
    "exact Q4_1": ("q4_1", "int4", {}),
    "exact Q4_1, fp32 activations": ("q4_1", "int4", {"accuracy_level": 1}),
    "builder INT4 b32": ("q4_1", "int4", {"gguf_blocks": "requantize"}),
    "builder INT4 b32, LM head int8": (
        "q4_1",
        "int4",
        {"gguf_blocks": "requantize", "matmul_mixed_precision": "last_matmul:int8"},
    ),
    "INT8": ("q4_1", "int8", {"gguf_blocks": "requantize"}),
    "exact Q4_0": ("q4_0", "int4", {}),
    "exact Q8_0": ("q8_0", "int8", {}),
}
STRIPPED, BASELINE = "exact Q4_1, minimum stripped (timing only)", "builder INT4 b32"


def build(sources: dict[str, Path], out: Path, names: list[str], windows: int, results: dict) -> None:
    from slmops.convert import QuantizationOptions, convert

    for name in names:
        key, precision, fields = CANDIDATES[name]
        folder = out / "models" / folder_name(name)
        if not folder.exists():
            started = time.perf_counter()
            report = convert(
                sources[key], folder, precision=precision, quantization=QuantizationOptions(**fields), log_level=0
            )
            results[name] = {"build_s": round(time.perf_counter() - started, 1), "gguf_weights": report.gguf_weights}
        results.setdefault(name, {})["source"] = key
        score(sources[key], key, folder, out, windows, results[name])
        save(out, results)
        print(name, results[name], flush=True)
    if "exact Q4_1" in names:
        strip_minimum(out / "models" / folder_name("exact Q4_1"), out / "models" / folder_name(STRIPPED))
        results[STRIPPED] = {"source": "q4_1", "size_mb": size_mb(out / "models" / folder_name(STRIPPED))}


def score(source: Path, key: str, folder: Path, out: Path, windows: int, row: dict) -> None:
    from slmops.convert import convert
    from slmops.evaluate.quality import evaluate_quality

    fp32, reference = out / "models" / f"fp32-{key}", out / f"reference-logits-{key}"
    if not fp32.exists():
        convert(source, fp32, precision="fp32", log_level=0)
    if not reference.exists():
        evaluate_quality(fp32, windows=windows, save_logits=reference, show_progress=False)
    figures = evaluate_quality(folder, reference=reference, windows=windows, show_progress=False).figures
    row.update(
        size_mb=size_mb(folder),
        delta_ppl_pct=round(figures.delta_ppl_pct, 2),
        same_top_pct=round(figures.same_top_pct, 2),
        kld_mean=round(figures.kld_mean, 5),
    )


def strip_minimum(exact: Path, stripped: Path) -> None:
    """A copy of the exact Q4_1 model whose MatMulNBits outputs skip the block-minimum correction."""
    import onnx

    if stripped.exists():
        return
    shutil.copytree(exact, stripped)
    model = onnx.load(str(stripped / "model.onnx"), load_external_data=False)
    renamed = {}
    kept = []
    for node in model.graph.node:
        if node.name.endswith(("/gguf_MatMul", "/gguf_Add")):
            if node.op_type == "Add":
                renamed[node.input[0]] = node.output[0]
            continue
        kept.append(node)
    for node in kept:
        node.output[:] = [renamed.get(name, name) for name in node.output]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(stripped / "model.onnx"))


def llama_bench(binary: str, gguf: Path, threads: int = 2, tokens: int = 64) -> float:
    """llama.cpp's decode tokens/s, the faster of flash attention on and off."""
    from runtime_vs_generator import llama_bench_decode

    return max(llama_bench_decode(binary, gguf, threads, 32, tokens, flash) for flash in ("on", "off"))


def measure_speed(sources: dict, out: Path, names: list[str], results: dict, rounds: int, binary: str | None):
    from slmops.evaluate.speed import measure

    runners = {
        name: (lambda name=name: measure(out / "models" / folder_name(name), 64, 2).decode_tokens_per_s)
        for name in names
    }
    if binary:
        for key, path in sources.items():
            runners[f"llama.cpp {key.upper()}"] = lambda path=path: llama_bench(binary, path)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for index in range(rounds):
        for name in order[index % len(order) :] + order[: index % len(order)]:
            samples[name].append(runners[name]())
        print(f"speed round {index + 1}/{rounds}, load average {os.getloadavg()}", flush=True)
    for name, values in samples.items():
        row = results.setdefault(name, {})
        row.update(
            decode_samples=[round(v, 1) for v in values], decode_tokens_per_s=round(statistics.median(values), 1)
        )
        if BASELINE in samples:
            ratios = [a / b for a, b in zip(values, samples[BASELINE], strict=True)]
            row["vs_builder_int4"] = round(statistics.median(ratios), 3)


def save(out: Path, results: dict) -> None:
    from slmops.machine import describe_cpu

    document = {"cpu": describe_cpu().summary(), "load_average": os.getloadavg(), "results": results}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def markdown(results: dict) -> str:
    lines = [
        "| candidate | source | size MB | ΔPPL | top-1 | KLD | decode tok/s | × builder INT4 b32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        ppl = f"{row['delta_ppl_pct']:+.2f}%" if "delta_ppl_pct" in row else "-"
        top = f"{row['same_top_pct']:.1f}%" if "same_top_pct" in row else "-"
        lines.append(
            f"| {name} | {row.get('source', name.split()[-1].lower())} | {row.get('size_mb', '-')} | {ppl} | {top} "
            f"| {row.get('kld_mean', '-')} | {row.get('decode_tokens_per_s', '-')} | {row.get('vs_builder_int4', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from slmops.convert import embedded_model
    from slmops.machine import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--q4_0", type=Path, help="A Q4_0 GGUF of the same model (llama-quantize).")
    parser.add_argument("--q8_0", type=Path, help="A Q8_0 GGUF of the same model (llama-quantize).")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench binary.")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sources = {"q4_1": embedded_model(), **{k: getattr(args, k) for k in ("q4_0", "q8_0") if getattr(args, k)}}
    names = [name for name, (key, _, _) in CANDIDATES.items() if key in sources]
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text())["results"] if saved.exists() else {}
    print(f"CPU: {describe_cpu().summary()}", flush=True)
    build(sources, args.out, names, args.windows, results)
    if args.rounds:
        measure_speed(sources, args.out, [*names, STRIPPED], results, args.rounds, args.llama_bench)
    save(args.out, results)
    table = markdown(results)
    (args.out / "results.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
