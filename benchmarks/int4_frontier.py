"""INT4 methods at the fast layouts against INT8 and the builder's INT4: size, quality and speed in one run.

    .venv/bin/python benchmarks/int4_frontier.py --out /tmp/frontier-smollm2
    .venv/bin/python benchmarks/int4_frontier.py /tmp/smollm2-off-grid --out /tmp/frontier-off-grid

Builds every candidate (models are kept in --out and reused by a second run), scores each against
the FP32 export on the first --windows windows of the shipped text (GPTQ calibrates on its last
tokens, so the two never overlap), then measures decode speed in --rounds interleaved rounds, each
model in a fresh process; speed figures are medians, given as ratios to INT8 and to the builder's
INT4 of the same rounds. Writes frontier.json and frontier.md in --out, with the CPU and host load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# name -> (precision, QuantizationOptions fields); the tied embedding reads the LM head in all of them
CANDIDATES: dict[str, tuple[str, dict]] = {
    "int8": ("int8", {}),
    "int4 builder default (RTN sym b32)": ("int4", {}),
    "int4 RTN sym b128": ("int4", {"block_size": 128}),
    "int4 RTN asym b128": ("int4", {"block_size": 128, "is_symmetric": False}),
    "int4 RTN sym b128, LM head int8": (
        "int4",
        {"block_size": 128, "algo": "rtn", "matmul_mixed_precision": "last_matmul:int8"},
    ),
    "int4 k_quant_mixed b128": ("int4", {"block_size": 128, "algo": "k_quant_mixed"}),
    "int4 k_quant_mixed b64": ("int4", {"block_size": 64, "algo": "k_quant_mixed"}),
    "int4 k_quant_mixed b32": ("int4", {"block_size": 32, "algo": "k_quant_mixed"}),
    "int4 k_quant_mixed b16 (old deploy default)": ("int4", {"block_size": 16, "algo": "k_quant_mixed"}),
    "int4 GPTQ asym b128, LM head fp32": (
        "int4",
        {"algo": "gptq", "block_size": 128, "is_symmetric": False, "nodes_to_exclude": ["/lm_head/MatMul"]},
    ),
}
INT8, BUILDER = "int8", "int4 builder default (RTN sym b32)"


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def build_all(source, out: Path, names: list[str], results: dict) -> None:
    from slmops.convert import QuantizationOptions, convert
    from slmops.convert.weight_only import quantize_export

    fp32 = out / "models" / "fp32"
    if not fp32.exists():
        convert(source, fp32, precision="fp32", log_level=0)
    for name in names:
        precision, fields = CANDIDATES[name]
        folder = out / "models" / folder_name(name)
        if name in results and folder.exists():
            continue
        started = time.perf_counter()
        options = QuantizationOptions(**fields)
        try:
            if options.post_build(precision):
                quantize_export(fp32, folder, options)
            else:
                convert(source, folder, precision=precision, quantization=options, force=True, log_level=0)
        except Exception as exc:  # a failed candidate is a row of the table, not the end of the run
            results[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue
        results[name] = {"build_s": round(time.perf_counter() - started, 1), "load_average": os.getloadavg()}
        score(folder, out, results[name])
        save(out, results)
        print(name, results[name], flush=True)


def size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def score(folder: Path, out: Path, row: dict) -> None:
    from slmops.evaluate.quality import evaluate_quality

    reference = out / "reference-logits"
    if not reference.exists():
        evaluate_quality(out / "models" / "fp32", windows=WINDOWS, save_logits=reference, show_progress=False)
    figures = evaluate_quality(folder, reference=reference, windows=WINDOWS, show_progress=False).figures
    row.update(
        size_mb=size_mb(folder),
        delta_ppl_pct=round(figures.delta_ppl_pct, 2),
        same_top_pct=round(figures.same_top_pct, 2),
        kld_mean=round(figures.kld_mean, 4),
    )


def measure_speed(out: Path, names: list[str], results: dict, rounds: int) -> None:
    from slmops.evaluate.speed import measure

    names = [name for name in names if "error" not in results.get(name, {"error": 1})]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            samples[name].append(
                measure(out / "models" / folder_name(name), new_tokens=64, repeats=2).decode_tokens_per_s
            )
        print(f"speed round {index + 1}/{rounds} done, load {os.getloadavg()}", flush=True)
    for name in names:
        results[name]["decode_samples"] = [round(s, 1) for s in samples[name]]
        results[name]["decode_tokens_per_s"] = round(statistics.median(samples[name]), 1)
    for name in names:
        for base, key in ((INT8, "vs_int8"), (BUILDER, "vs_builder_int4")):
            if base in samples:
                ratios = [a / b for a, b in zip(samples[name], samples[base], strict=True)]
                results[name][key] = round(statistics.median(ratios), 2)


def save(out: Path, results: dict) -> None:
    from slmops.machine import describe_cpu

    document = {"cpu": describe_cpu().summary(), "windows": WINDOWS, "candidates": results}
    (out / "frontier.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def markdown(results: dict) -> str:
    lines = [
        "| method | size MB | ΔPPL | top-1 | KLD | decode tok/s | × INT8 | × builder INT4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} |||||||")
            continue
        lines.append(
            f"| {name} | {row.get('size_mb', '-')} | {row.get('delta_ppl_pct', 0):+.1f}% | {row.get('same_top_pct', 0):.1f}% "
            f"| {row.get('kld_mean', '-')} | {row.get('decode_tokens_per_s', '-')} | {row.get('vs_int8', '-')} "
            f"| {row.get('vs_builder_int4', '-')} |"
        )
    return "\n".join(lines) + "\n"


WINDOWS = 8


def main() -> None:
    global WINDOWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, help="HF folder or GGUF (default: the embedded SmolLM2).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=WINDOWS)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved speed rounds (0: no speed).")
    parser.add_argument("--only", help="Comma-separated candidate names (default: all).")
    args = parser.parse_args()
    WINDOWS = args.windows
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CANDIDATES)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "frontier.json"
    results = json.loads(saved.read_text())["candidates"] if saved.exists() else {}
    build_all(args.source, args.out, names, results)
    if args.rounds:
        measure_speed(args.out, names, results, args.rounds)
        results["_speed"] = {"load_average_after": os.getloadavg(), "rounds": args.rounds}
    save(args.out, results)
    print(markdown({k: v for k, v in results.items() if not k.startswith("_")}))
    (args.out / "frontier.md").write_text(markdown({k: v for k, v in results.items() if not k.startswith("_")}))


if __name__ == "__main__":
    main()
