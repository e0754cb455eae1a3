"""A model folder as `slmops deploy` leaves it (its deploy report and a plot), for the page's tests.

The report is made from the deploy's and the validation's own dataclasses, so it has the
shape the page reads; its figures are made up (a real deploy evaluates for minutes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from slmops.deploy.pipeline import DeployResult
from slmops.evaluate.validate import Check

CHECKS = [
    Check(1, "domain answers", "PASS", "5/5 suite cases pass (min 90%)", {"pass_rate": 1.0, "min_pass": 0.9}),
    Check(2, "answer format", "PASS", "2 structural cases, none failed", {"structural_cases": 2, "failed": []}),
    Check(3, "memory", "WARN", "RSS grew 3.1% over 40 answers", {"rss_growth_pct": 3.1}),
    Check(4, "performance across input lengths", "PASS", "decode within 12% from 32 to 256 tokens", {}),
    Check(5, "edge cases and invalid input", "FAIL", "1 of 6 edge cases hung <b>past</b> 60 s", {"cases": []}),
]
FIGURES = {"ppl": 14.2, "ref_ppl": 13.9, "delta_ppl_pct": 2.16, "kld_mean": 0.0312, "same_top_pct": 93.4}


def deploy_report(name: str) -> dict:
    result = DeployResult(name, "int4", {}, variant="int4-k_quant_mixed-b16")
    result.steps = [
        {"step": "convert to INT4", "status": "done", "seconds": 41.0},
        {"step": "eval against FP32", "status": "done", "seconds": 30.2, "summary": "ΔPPL +2.2%"},
        {"step": "validate (soak 40)", "status": "done", "seconds": 55.0, "summary": "1 PASS, 2 PASS, 3 WARN"},
    ]
    result.quality = {"model": name, "figures": FIGURES}
    result.validation = {"model": name, "checks": [check.__dict__ for check in CHECKS], "passed": False}
    return result.to_json()


def write_plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 2.5))
    axis.plot([32, 64, 128, 256], [52, 50, 47, 41], marker="o")
    axis.set_title("decode tokens/s vs prompt length (fixture)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def deployed_folder(model: Path, where: Path, name: str) -> Path:
    """``model``'s files (linked) plus a deploy report and a bench plot, in a new folder ``where``."""
    where.mkdir(parents=True)
    for child in model.iterdir():
        if child.name not in ("deploy-report.json", "bench.png"):
            os.symlink(child, where / child.name)
    (where / "deploy-report.json").write_text(json.dumps(deploy_report(name)), encoding="utf-8")
    write_plot(where / "bench.png")
    return where
