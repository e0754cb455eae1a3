"""GPTQ against HQQ on one FP32 export, measured in one run against the same reference.

    .venv/bin/python benchmarks/int4_gptq_vs_hqq.py /tmp/smollm2-fp32 --windows 8 --calibration-windows 4

Both quantize the FP32 slmops export given (blocks of 32, asymmetric, LM head left on the
FP32 weights, as `slmops deploy` builds HQQ); GPTQ is calibrated on the last windows of the
shipped eval text, the eval scores its first windows, so the two never overlap. Prints and
saves (benchmarks/int4_gptq_vs_hqq.json) the build times, sizes, ΔPPL, KLD and top-1
agreement, with the host's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="An FP32 model folder written by slmops convert --precision fp32.")
    parser.add_argument("--windows", type=int, default=8, help="Eval windows of 512 tokens.")
    parser.add_argument(
        "--calibration-windows", type=int, default=None, help="GPTQ windows of 128 tokens (default: slmops')."
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("int4_gptq_vs_hqq.json"))
    args = parser.parse_args()

    from slmops.convert import QuantizationOptions, weight_only
    from slmops.evaluate.quality import evaluate_quality
    from slmops.machine import describe_cpu

    print(f"CPU: {describe_cpu().summary()}", flush=True)

    if args.calibration_windows:
        weight_only.CALIBRATION_WINDOWS = args.calibration_windows
    work = Path(tempfile.mkdtemp(prefix="gptq-vs-hqq-"))
    rows, reference = {}, work / "reference"
    try:
        evaluate_quality(args.fp32, windows=args.windows, save_logits=reference, show_progress=False)
        for algo in ("hqq", "gptq"):
            options = QuantizationOptions(
                algo=algo, block_size=32, is_symmetric=False, nodes_to_exclude=["/lm_head/MatMul"]
            )
            load, started = os.getloadavg(), time.perf_counter()
            folder = weight_only.quantize_export(args.fp32, work / algo, options, name=algo)
            seconds = time.perf_counter() - started
            figures = evaluate_quality(folder, reference=reference, show_progress=False).figures
            rows[algo] = {
                "build_s": round(seconds, 1),
                "load_average_at_start": load,
                "size_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1),
                "delta_ppl_pct": round(figures.delta_ppl_pct, 2),
                "kld_mean": round(figures.kld_mean, 4),
                "same_top_pct": round(figures.same_top_pct, 1),
                "ppl": round(figures.ppl, 3),
            }
            print(algo, rows[algo], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "cpu_info": describe_cpu().to_json(),
        "fp32": str(args.fp32),
        "windows": args.windows,
        "calibration": f"last {weight_only.CALIBRATION_WINDOWS} x "
        f"{weight_only.CALIBRATION_TOKENS} tokens of the shipped text",
        "rows": rows,
        "load_average_end": os.getloadavg(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
