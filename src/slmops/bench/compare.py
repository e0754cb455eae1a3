"""`slmops bench compare A.json B.json`: B against A, case by case, as ratios.

A case of B is matched with the case of A that has the same target label, prompt
length, output length and concurrency; when the two runs share no target label
(e.g. two different models), targets are matched by their position instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from slmops.bench import report, schema
from slmops.errors import UsageError

# figure -> (how to read it from a case, True if higher is better)
FIGURES = {
    "decode tok/s": (lambda c: _median(c["stats"]["decode_tps"]), True),
    "TTFT ms": (lambda c: _median(c["stats"]["ttft_ms"]), False),
    "E2EL ms": (lambda c: _median(c["stats"]["e2el_ms"]), False),
    "agg tok/s": (lambda c: c["stats"]["output_throughput"] or None, True),
    "RSS peak MiB": (lambda c: c["rss_peak_mb"], False),
}


def _median(dist: dict | None) -> float | None:
    return dist["median"] if dist else None


@dataclass
class Change:
    """One figure of one case: its value in A and B, B/A, and whether it got worse beyond the threshold."""

    case: str
    figure: str
    a: float
    b: float
    ratio: float
    regression: bool


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    cpus: tuple[str, str] | None = None  # (A's, B's) when the two were measured on different CPUs

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]


def load_result(path: str | Path) -> dict:
    """Read and validate a `slmops bench --json` file."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc.strerror}.") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON ({exc}); give a file written by `slmops bench --json`.") from exc
    schema.validate(document, str(path))
    return document


def compare(a: dict, b: dict, threshold: float = 0.10) -> Comparison:
    """Compare result ``b`` with the baseline ``a``.

    Args:
        a, b: two documents written by ``slmops bench --json``.
        threshold: a figure that got worse by more than this fraction is a regression.
    """
    keys_a, keys_b = _keyed(a, b), _keyed(b, a)
    result = Comparison()
    if not _same_cpu(a, b):
        result.cpus = report.cpu_text(a["system"]), report.cpu_text(b["system"])
    for key, case_b in keys_b.items():
        case_a = keys_a.get(key)
        name = f"{case_b['target']} p={key[1]} o={key[2]} c={key[3]}"
        if case_a is None:
            result.unmatched.append(name)
            continue
        for figure, (read, higher_is_better) in FIGURES.items():
            value_a, value_b = read(case_a), read(case_b)
            if not value_a or not value_b:
                continue
            ratio = value_b / value_a
            worse = (1 - ratio) if higher_is_better else (ratio - 1)
            result.changes.append(Change(name, figure, value_a, value_b, ratio, worse > threshold))
    return result


def _same_cpu(a: dict, b: dict) -> bool:
    """Same model and flags; results written before the flags were recorded compare by model name."""
    info_a, info_b = a["system"].get("cpu_info"), b["system"].get("cpu_info")
    if info_a and info_b:
        return (info_a["model"], info_a["flags"]) == (info_b["model"], info_b["flags"])
    return a["system"]["cpu"] == b["system"]["cpu"]


def _keyed(document: dict, other: dict) -> dict:
    labels = [t["label"] for t in document["targets"]]
    shared = set(labels) & {t["label"] for t in other["targets"]}
    keyed = {}
    for case in document["cases"]:
        who = case["target"] if shared else labels.index(case["target"])
        keyed[(who, case["prompt_tokens"], case["output_tokens"], case["concurrency"])] = case
    return keyed
