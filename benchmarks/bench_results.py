#!/usr/bin/env python3
"""Regenerate benchmarks/RESULTS.md with slmops bench (nothing in it is typed by hand).

    .venv/bin/python benchmarks/bench_results.py            # 3 to 15 minutes on 2 cores
    .venv/bin/python benchmarks/bench_results.py --quick    # a smoke run, ~2 minutes

1. The embedded SmolLM2-135M-Instruct GGUF is converted to INT4 ONNX by slmops.
2. In one interleaved run: slmops in-process, the bare onnxruntime-genai Generator
   (2 threads, and onnxruntime's default), and llama.cpp (llama-cpp-python, if
   installed) on the GGUF itself, across prompt lengths.
3. `slmops serve` on the same model, measured through its OpenAI API at 1..16
   concurrent requests.
4. With llama.cpp's own `llama-bench` (on PATH or --llama-bench): slmops against it at
   the same prompt lengths (its depth), flash attention on and off, in shuffled rounds.
   llama-cpp-python adds Python to every token, so this is the stricter comparison.

RESULTS.md keeps one section per CPU (see HEADER): a run replaces the section of the CPU it
runs on and writes its JSON and charts as results-CPU.json/.png, so runs on other CPUs stay.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime_vs_generator import llama_bench_decode, run_slmops  # this folder's other scripts
from slmops.bench import Sweep, TargetSpec, benchmark, report, write_outputs
from slmops.convert import embedded_model
from slmops.machine import describe_cpu
from slmops.server.process import ServerProcess

HERE = Path(__file__).resolve().parent
THREADS = 2


def convert_model(gguf: Path, work: Path) -> Path:
    """Convert in a child process, so the benchmark's own memory carries no conversion stack."""
    output = work / "smollm2-135m-instruct-int4"
    code = "import sys; from slmops.convert import convert; convert(sys.argv[1], sys.argv[2], precision='int4')"
    subprocess.run([sys.executable, "-c", code, str(gguf), str(output)], check=True)
    return output


def side_by_side(model: Path, gguf: Path, quick: bool) -> dict:
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    spec = TargetSpec(
        model=str(model),
        raw=True,
        raw_threads=(THREADS, 0),
        threads=THREADS,
        llama_cpp=str(gguf) if have_llama else None,
    )
    sweep = Sweep(
        prompt_lengths=(32, 128) if quick else (32, 128, 512, 1024, 2048),
        output_lengths=(32,) if quick else (64,),
        reps=2 if quick else None,
        warmup=1,
    )
    return benchmark(spec, sweep, refresh_bandwidth=True, on_case=_progress).to_dict()


def through_serve(model: Path, quick: bool) -> dict:
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "slmops",
            "serve",
            str(model),
            "--threads",
            str(THREADS),
            "--parallel",
            "16",
            "--log-level",
            "warning",
        ],
        label="slmops serve",
    ).wait_ready(120)
    try:
        spec = TargetSpec(url=server.url, endpoint="completions", pid=server.process.pid)
        sweep = Sweep(
            prompt_lengths=(128,),
            output_lengths=(32,),
            concurrency=(1, 2, 4) if quick else (1, 2, 4, 8, 16),
            reps=1 if quick else 3,
            warmup=1,
        )
        document = benchmark(spec, sweep, on_case=_progress).to_dict()
    finally:
        server.stop()
    return document


def against_llama_bench(model: Path, gguf: Path, binary: str, lengths, output: int, rounds: int) -> list[dict]:
    """Decode tok/s per prompt length: slmops in-process and llama-bench at that depth, interleaved."""
    import slmops
    from slmops.bench.prompts import PromptSource, shipped_paragraphs

    ours = slmops.load(str(model), threads=THREADS)
    source = PromptSource(shipped_paragraphs(), ours.encode, ours.decode)
    rows = []
    for length in lengths:
        prompt = source.prompt(length)
        ids = ours.encode(prompt.text)[: prompt.tokens]
        runners = {"slmops": lambda ids=ids: run_slmops(ours, ids, output)[1]}
        for setting in ("on", "off"):
            # warmup=False: the prefill of `depth` tokens before the measured generation warms it up.
            runners[f"fa-{setting}"] = lambda setting=setting, depth=len(ids): llama_bench_decode(  # noqa: B008
                binary, gguf, THREADS, depth, output, setting, warmup=False
            )
        samples = {name: [] for name in runners}
        for round_index in range(rounds):
            for name in random.Random(round_index).sample(list(runners), len(runners)):
                samples[name].append(runners[name]())
        row = {"prompt_tokens": len(ids), **{name: statistics.median(values) for name, values in samples.items()}}
        print(
            f"llama-bench p={row['prompt_tokens']}: slmops {row['slmops']:.1f}, flash attention on "
            f"{row['fa-on']:.1f}, off {row['fa-off']:.1f} tok/s",
            flush=True,
        )
        rows.append(row)
    return rows


def llama_bench_table(rows: list[dict], rounds: int) -> list[str]:
    lines = [
        "### slmops vs llama.cpp's own benchmark (`llama-bench`, same weights)",
        "",
        f"Decode tokens/s generating 64 tokens after a prompt (llama-bench: `-p 0 -n 64 -d PROMPT`), "
        f"{THREADS} threads, medians of {rounds} interleaved rounds. llama.cpp runs with flash attention on and "
        "off; the faster is its figure. llama-cpp-python, above, runs Python on every token, so this is the "
        "stricter comparison.",
        "",
    ]
    table = []
    for row in rows:
        best = max(row["fa-on"], row["fa-off"])
        table.append(
            [
                str(row["prompt_tokens"]),
                _f(row["slmops"]),
                _f(row["fa-on"]),
                _f(row["fa-off"]),
                _ratio(row["slmops"], best),
            ]
        )
    return lines + report.md_table(
        [
            "prompt",
            "slmops decode tok/s",
            "llama.cpp flash attention on",
            "llama.cpp flash attention off",
            "decode × best llama.cpp",
        ],
        table,
    )


def _progress(case, index: int, total: int) -> None:
    decode = case.stats.decode_tps.median if case.stats.decode_tps else 0
    print(
        f"[{index + 1}/{total}] {case.target} p={case.prompt_tokens} c={case.concurrency}: decode {decode:.1f} tok/s",
        flush=True,
    )


def summary(local: dict) -> list[str]:
    """Per prompt length: slmops against the bare Generator (same threads, and best) and llama.cpp."""
    by = {(c["target"], c["prompt_tokens"]): c for c in local["cases"]}
    ours = local["targets"][0]
    raws = [t for t in local["targets"] if t["kind"] == "raw"]
    same = next((t["label"] for t in raws if t["threads"] == ours["threads"]), None)
    llama = next((t["label"] for t in local["targets"] if t["kind"] == "llama.cpp"), None)
    rows = []
    for prompt in local["settings"]["prompt_lengths"]:
        mine = by.get((ours["label"], prompt))
        if not mine:
            continue
        best = max((by[(t["label"], prompt)] for t in raws if (t["label"], prompt) in by), key=_decode, default=None)
        twin, other = by.get((same, prompt)), by.get((llama, prompt))
        rows.append(
            [
                str(prompt),
                _f(_decode(mine)),
                _f(_ttft(mine)),
                _ratio(_decode(mine), _decode(twin)),
                _ratio(_ttft(twin), _ttft(mine)),
                _f(_decode(best)) + (f" ({best['target']})" if best else ""),
                _ratio(_decode(mine), _decode(best)),
                _f(_decode(other)),
                _ratio(_decode(mine), _decode(other)),
                _ratio(_ttft(other), _ttft(mine)),
                _f(mine["roofline_pct"]),
            ]
        )
    headers = [
        "prompt",
        "slmops decode tok/s",
        "slmops TTFT ms",
        "decode × bare (same threads)",
        "TTFT × bare (same threads)",
        "best bare decode tok/s",
        "decode × best bare",
        "llama.cpp decode tok/s",
        "decode × llama.cpp",
        "TTFT × llama.cpp",
        "slmops roofline %",
    ]
    return report.md_table(headers, rows)


def _decode(case):
    return case["stats"]["decode_tps"]["median"] if case and case["stats"]["decode_tps"] else None


def _ttft(case):
    return case["stats"]["ttft_ms"]["median"] if case and case["stats"]["ttft_ms"] else None


def _f(value) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


HEADER = [
    "# slmops benchmark results",
    "",
    "Generated by `benchmarks/bench_results.py` with `slmops bench`; do not edit by hand.",
    "One section per CPU: onnxruntime picks its int4 kernels by instruction set (AVX2, AVX-512,",
    "VNNI, AMX), and llama.cpp its own, so the figures and the ratios between them hold for the",
    "CPU they were measured on. A run replaces the section of its CPU (by its label: class and",
    "instruction set) and keeps the others. The machines are shared, so absolute figures swing",
    "from run to run: read the ratios, which come from targets interleaved in the same run.",
    "",
]
SECTION = re.compile(r"<!-- cpu: (?P<label>.*?) -->\n(?P<body>.*?)<!-- end cpu -->\n", re.DOTALL)


def cpu_slug(label: str) -> str:
    """A file-name part for a CPU label: "AMD EPYC (Zen 4 class), AVX-512 VNNI" -> "amd-epyc-zen-4-class-avx-512-vnni"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def cpu_section(local: dict, served: dict, strict: list[str], slug: str) -> list[str]:
    """The section of RESULTS.md for the CPU these results were measured on."""
    system = local["system"]
    return [
        f"## {report.cpu_label(system)}",
        "",
        f"CPU: {report.cpu_text(system)}; {system['physical_cores']} cores, {system['usable_cpus']} usable CPUs.",
        "",
        "### slmops vs the bare onnxruntime-genai Generator vs llama.cpp (same SmolLM2-135M-Instruct weights)",
        "",
        "Goal: ≥ 0.95× the best bare Generator and ≥ 1.5× llama.cpp in decode tokens/s.",
        "Above 1, slmops is faster. The in-process targets share one process, so their RSS is the",
        "sum of every model loaded; the `slmops serve` figures are the server process alone.",
        "",
        *summary(local),
        "",
        *(strict + [""] if strict else []),
        demote(report.markdown(local, "Side by side, in-process")),
        "",
        demote(report.markdown(served, "Through `slmops serve` (OpenAI API), by concurrency")),
        f"![side by side](results-{slug}.png)",
        "",
        f"![through slmops serve](results-serve-{slug}.png)",
        "",
    ]


def demote(markdown: str) -> str:
    """A bench report's headings two levels down, to sit under a CPU's section."""
    return markdown.replace("# ", "#### ", 1).replace("\n## ", "\n##### ")


def merge_section(existing: str, label: str, section: list[str]) -> str:
    """RESULTS.md with the section of ``label`` replaced, or added after the other CPUs' sections;
    everything else in the file (other CPUs, sections other scripts wrote) is kept as it is."""
    block = f"<!-- cpu: {label} -->\n" + "\n".join(section).rstrip("\n") + "\n<!-- end cpu -->\n"
    blocks = list(SECTION.finditer(existing))
    same = next((match for match in blocks if match["label"] == label), None)
    if same:
        return existing[: same.start()] + block + existing[same.end() :]
    if blocks:
        return existing[: blocks[-1].end()] + "\n" + block + existing[blocks[-1].end() :]
    if existing.strip():
        return existing.rstrip("\n") + "\n\n" + block
    return "\n".join(HEADER) + "\n" + block


def write_results(local: dict, served: dict, path: Path, strict: list[str], slug: str) -> None:
    label = report.cpu_label(local["system"])
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(merge_section(existing, label, cpu_section(local, served, strict, slug)), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--model", type=Path, help="an INT4 model folder converted from the GGUF (default: convert now)"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and its files go")
    parser.add_argument(
        "--llama-bench",
        default=shutil.which("llama-bench"),
        help="llama.cpp's llama-bench binary (default: the one on PATH, if any)",
    )
    args = parser.parse_args()
    print(f"CPU: {describe_cpu().summary()}", flush=True)
    gguf = embedded_model()
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("SLMOPS_HOME", str(Path(work) / "home"))
        model = args.model or convert_model(gguf, Path(work))
        local = side_by_side(model, gguf, args.quick)
        served = through_serve(model, args.quick)
        strict = []
        if args.llama_bench:
            rounds = 1 if args.quick else 3
            lengths = local["settings"]["prompt_lengths"]
            strict = llama_bench_table(against_llama_bench(model, gguf, args.llama_bench, lengths, 64, rounds), rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = cpu_slug(report.cpu_label(local["system"]))
    write_outputs(local, args.out / f"results-{slug}.json", plot_path=args.out / f"results-{slug}.png")
    write_outputs(served, args.out / f"results-serve-{slug}.json", plot_path=args.out / f"results-serve-{slug}.png")
    write_results(local, served, args.out / "RESULTS.md", strict, slug)
    print(f"Wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
