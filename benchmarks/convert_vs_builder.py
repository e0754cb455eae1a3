#!/usr/bin/env python3
"""Convert the embedded SmolLM2-135M-Instruct to INT4 with slmops and with the bare
onnxruntime-genai builder, in one run, and print wall time, peak RSS and size.

    .venv/bin/python benchmarks/convert_vs_builder.py [--rounds 1] [--workdir DIR]

Two comparisons, each run as separate processes (peak RSS is per process, from wait4):

- HF folder -> INT4: `slmops convert` against `python -m onnxruntime_genai.models.builder`.
- GGUF (Q4_1) -> INT4: `slmops convert model.gguf` against the path through transformers'
  GGUF loader (dequantize -> HF fp32 folder) followed by the bare builder.

Rounds alternate the order of each pair so that machine load hits both alike. The greedy
answers of the two GGUF outputs are compared token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
TRANSFORMERS_GGUF = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""
QUESTION = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def timed(command: list[str], log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of one child process."""
    started = time.perf_counter()
    with open(log, "a") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)} (see {log})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def bare_builder(hf: Path, out: Path, work: Path) -> tuple[float, float, float]:
    return timed(
        [
            PYTHON,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf),
            "-o",
            str(out),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            str(work / "builder-cache"),
        ],
        work / "log.txt",
    )


def slmops(source: Path, out: Path, work: Path) -> tuple[float, float, float]:
    return timed(
        [
            PYTHON,
            "-m",
            "slmops",
            "convert",
            str(source),
            "-o",
            str(out),
            "--precision",
            "int4",
            "--force",
            "--log-level",
            "0",
        ],
        work / "log.txt",
    )


def transformers_path(gguf: Path, out: Path, work: Path) -> tuple[float, float, float]:
    hf = work / "transformers-hf"
    shutil.rmtree(hf, ignore_errors=True)
    load = timed([PYTHON, "-c", TRANSFORMERS_GGUF, str(gguf), str(hf)], work / "log.txt")
    build = bare_builder(hf, out, work)
    return load[0] + build[0], max(load[1], build[1]), load[2] + build[2]


def greedy(folder: Path) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=128)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(QUESTION))
    tokens = []
    while not generator.is_done() and len(tokens) < 40:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", choices=["all", "hf", "gguf"], default="all", help="Which comparison to run.")
    args = parser.parse_args()
    from slmops.convert import embedded_model
    from slmops.convert.gguf_source import gguf_to_hf
    from slmops.machine import describe_cpu

    print(f"CPU: {describe_cpu().summary()}", flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="slmops-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    gguf = embedded_model()
    hf = work / "smollm2-hf"
    if not (hf / "config.json").exists():
        gguf_to_hf(gguf, hf)
    runs = {
        "builder (HF)": bare_builder,
        "slmops (HF)": slmops,
        "transformers GGUF + builder": transformers_path,
        "slmops (GGUF)": slmops,
    }
    sources = {"builder (HF)": hf, "slmops (HF)": hf, "transformers GGUF + builder": gguf, "slmops (GGUF)": gguf}
    names = list(runs)
    pairs = {"all": [names[0:2], names[2:4]], "hf": [names[0:2]], "gguf": [names[2:4]]}[args.only]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for pair in pairs for name in pair}
    for round_index in range(args.rounds):
        order = [name for pair in pairs for name in (pair if round_index % 2 == 0 else reversed(pair))]
        for name in order:
            out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
            shutil.rmtree(out, ignore_errors=True)
            results[name].append(runs[name](sources[name], out, work))
            wall, rss, cpu = results[name][-1]
            print(f"round {round_index + 1}: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MB", flush=True)
    report(results, work)


def report(results: dict, work: Path) -> None:
    folder = {name: work / name.replace(" ", "_").replace("(", "").replace(")", "") for name in results}
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "wall_s": round(sum(r[0] for r in runs) / len(runs), 1),
            "cpu_s": round(sum(r[2] for r in runs) / len(runs), 1),
            "peak_rss_mb": round(max(r[1] for r in runs)),
            "size_mb": round(size_mb(folder[name]), 1),
            "runs": [[round(value, 1) for value in r] for r in runs],
        }
    print(
        f"\n{'mean of ' + str(len(next(iter(results.values())))) + ' runs':30} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12} {'size MB':>9}"
    )
    for name, row in summary.items():
        print(f"{name:30} {row['wall_s']:8.1f} {row['cpu_s']:7.1f} {row['peak_rss_mb']:12.0f} {row['size_mb']:9.1f}")
    ratios = {}
    for ours, theirs, label in (
        ("slmops (HF)", "builder (HF)", "HF: slmops / bare builder"),
        ("slmops (GGUF)", "transformers GGUF + builder", "GGUF: slmops / transformers path"),
    ):
        if ours in summary and theirs in summary:
            for key in ("wall_s", "cpu_s", "peak_rss_mb"):
                ratios[f"{label} {key}"] = round(summary[ours][key] / summary[theirs][key], 2)
    for name, ratio in ratios.items():
        print(f"{name:45} x{ratio:.2f}")
    same = None
    if "slmops (GGUF)" in summary and "transformers GGUF + builder" in summary:
        same = greedy(folder["slmops (GGUF)"]) == greedy(folder["transformers GGUF + builder"])
        print(f"GGUF outputs give the same greedy tokens: {same}")
    from slmops.machine import describe_cpu

    cpu_info = describe_cpu().to_json()
    (work / "results.json").write_text(
        json.dumps({"cpu_info": cpu_info, "summary": summary, "ratios": ratios, "same_tokens": same}, indent=2)
    )
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
