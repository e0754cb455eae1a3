"""`slmops sweep`: the precision table of MODEL.md, measured for the user's own model.

Each precision (and INT4 variant) is converted, then measured: perplexity, KL divergence
and top-1 agreement against the FP32 export on the same windows, and the suite's pass
rate. The FP32 reference's log-probs are computed once and reused for every row.

Speed (load time, decode tokens/s, TTFT, peak RSS) is measured last, once every model
is built, in rounds: each round measures every model once, each in a fresh process, in
a rotating order. Load from other processes on the host then hits all precisions alike,
and each figure is the median of its rounds. ``speed_only`` re-measures the speed of an
earlier sweep's models without converting anything.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmops.convert.variants import DEFAULT_INT4_SET, INT4_VARIANTS, Variant, build, parse_variants  # noqa: F401 (re-exported)
from slmops.errors import UsageError
from slmops.evaluate import report as reports
from slmops.machine import cpu_summary, describe_cpu

FLOAT_PRECISIONS = ("int8", "fp16", "bf16", "fp32")
SPEED_ROUNDS = 3


@dataclass
class Row:
    """One converted model and its measured figures."""

    name: str
    precision: str
    settings: str
    size_mb: float
    size_ratio: float = 0.0
    load_s: float | None = None
    decode_tokens_per_s: float | None = None
    ttft_s: float | None = None
    peak_rss_mb: float | None = None
    ppl: float | None = None
    delta_ppl_pct: float | None = None
    kld_mean: float | None = None
    same_top_pct: float | None = None
    pass_rate: float | None = None
    error: str | None = None
    speed_samples: list = field(default_factory=list)  # one dict of figures per round


@dataclass
class SweepResult:
    source: str
    rows: list[Row]
    windows: int
    pick: str | None = None
    pick_reason: str = ""
    best_int4: str | None = None
    json_path: Path | None = None
    markdown_path: Path | None = None
    plot_path: Path | None = None
    seconds: float = 0.0
    limits: dict = field(default_factory=dict)
    speed_rounds: int = 0
    speed_seconds: float = 0.0
    load_average: list = field(default_factory=list)  # of the host while speed was measured (1, 5, 15 min)
    cpu_info: dict = field(default_factory=lambda: describe_cpu().to_json())  # where speed was measured

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("json_path", "markdown_path", "plot_path"):
            data[key] = str(data[key]) if data[key] else None
        return data


def sweep(
    source: Path | None,
    output: Path,
    *,
    precisions: Sequence[str] = ("int4", "int8", "fp16", "fp32"),
    int4_variants: tuple[str, ...] = ("int4",),
    windows: int = 12,
    suite: str | Path | None = None,
    max_ppl_increase: float = 5.0,
    min_pass: float = 0.9,
    keep_models: bool = True,
    speed_rounds: int = SPEED_ROUNDS,
    echo=lambda line: None,
) -> SweepResult:
    """Convert ``source`` at each precision and measure it against the FP32 export.

    Args:
        source: what `slmops convert` accepts; None for the embedded SmolLM2.
        output: folder for the models (``models/``), the reference logits and the reports.
        precisions: any of int4, int8, fp16, bf16, fp32 (fp32 is always built: it is the reference).
        int4_variants: names from :data:`INT4_VARIANTS` tried when int4 is asked for.
        windows: 512-token windows of the shipped text scored per model.
        suite: the domain suite for the pass rate (default: the shipped example).
        max_ppl_increase, min_pass: the quality limits of the pick.
        keep_models: keep every converted model; otherwise only the picked one stays.
        speed_rounds: rounds of speed measurements (0: no speed columns).
        echo: called with a line as each model starts and ends.

    Returns:
        A :class:`SweepResult`; its reports are written into ``output``.
    """
    started = time.perf_counter()
    variants = _variants(precisions, int4_variants)
    output = Path(output).expanduser().absolute()
    models = output / "models"
    models.mkdir(parents=True, exist_ok=True)
    echo("converting fp32 (the reference)")
    fp32 = build(Variant("fp32", "fp32"), source, models / "fp32")
    reference = output / "reference-logits"
    shutil.rmtree(reference, ignore_errors=True)
    fp32_size = _size_mb(fp32)
    rows = []
    # fp32 first: its own eval writes the reference log-probs every other row reuses.
    for variant in sorted(variants, key=lambda item: item.precision != "fp32"):
        echo(f"{variant.name}: {variant.describe()}")
        rows.append(_measure_variant(variant, source, models, fp32, fp32_size, reference, windows, suite))
        row = rows[-1]
        echo(
            f"    {row.error}"
            if row.error
            else f"    {row.size_mb:.0f} MB, ΔPPL {row.delta_ppl_pct:+.1f}%, KLD {row.kld_mean:.3f}, "
            f"suite {row.pass_rate:.0%}"
        )
    result = SweepResult(
        str(source or "embedded SmolLM2-135M-Instruct"),
        rows,
        windows,
        limits={"max_ppl_increase_pct": max_ppl_increase, "min_pass": min_pass},
    )
    measure_speed(result, models, speed_rounds, echo)
    result.pick, result.pick_reason = pick(rows, max_ppl_increase, min_pass)
    result.best_int4 = best_int4(rows)
    if not keep_models:
        for row in rows:
            if row.name != result.pick:
                shutil.rmtree(models / row.name, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    _write_reports(result, output)
    return result


def _variants(precisions, int4_variants) -> list[Variant]:
    variants = []
    for precision in precisions:
        if precision == "int4":
            variants += [INT4_VARIANTS[name] for name in int4_variants]
        elif precision in FLOAT_PRECISIONS:
            variants.append(Variant(precision, precision))
        else:
            raise UsageError(f"Unknown precision {precision!r}; choose from int4, int8, fp16, bf16, fp32.")
    if not any(variant.precision == "fp32" for variant in variants):
        variants.append(Variant("fp32", "fp32"))
    return variants


def _measure_variant(variant, source, models, fp32, fp32_size, reference, windows, suite) -> Row:
    from slmops.evaluate.quality import evaluate_quality
    from slmops.evaluate.suite import load_suite, run_suite
    from slmops.evaluate.validate import default_suite

    folder = fp32 if variant.name == "fp32" else models / variant.name
    row = Row(variant.name, variant.precision, variant.describe(), 0.0)
    try:
        if variant.name != "fp32":
            build(variant, source, folder, fp32)
        row.size_mb = _size_mb(folder)
        row.size_ratio = row.size_mb / fp32_size
        first = not (reference / "meta.json").exists()
        quality = evaluate_quality(
            folder, reference=None if first else reference, windows=windows, save_logits=reference if first else None
        )
        figures = quality.figures
        row.ppl = figures.ppl
        row.delta_ppl_pct, row.kld_mean, row.same_top_pct = (
            (0.0, 0.0, 100.0) if first else (figures.delta_ppl_pct, figures.kld_mean, figures.same_top_pct)
        )
        from slmops.runtime import load

        row.pass_rate = run_suite(load(folder), load_suite(suite or default_suite()), show_progress=False).pass_rate
    except Exception as exc:  # one failed variant must not lose the others' figures
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return row


def measure_speed(result: SweepResult, models: Path, rounds: int, echo=lambda line: None) -> None:
    """Speed columns of every built row: ``rounds`` rounds, each model once per round, in rotating order."""
    import os

    from slmops.evaluate.speed import measure

    rows = [row for row in result.rows if row.error is None and (models / row.name).is_dir()]
    started = time.perf_counter()
    loads = []
    for row in rows:
        row.speed_samples = []
    for index in range(rounds):
        echo(f"speed round {index + 1}/{rounds} over {len(rows)} models")
        shift = index % max(1, len(rows))
        for row in rows[shift:] + rows[:shift]:
            loads.append(os.getloadavg())
            try:
                row.speed_samples.append(measure(models / row.name, repeats=2).to_json())
            except Exception as exc:  # noqa: BLE001 (one model failing must not lose the others' figures)
                row.speed_samples.append({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
    for row in rows:
        _median_speed(row)
    result.speed_rounds, result.speed_seconds = rounds, time.perf_counter() - started
    result.load_average = [round(statistics.mean(values), 2) for values in zip(*loads)] if loads else []


def _median_speed(row: Row) -> None:
    good = [sample for sample in row.speed_samples if "error" not in sample]
    if not good:
        row.load_s = row.ttft_s = row.decode_tokens_per_s = row.peak_rss_mb = None
        return
    median = lambda key: statistics.median(sample[key] for sample in good)  # noqa: E731
    row.load_s, row.ttft_s = median("load_s"), median("ttft_s")
    row.decode_tokens_per_s, row.peak_rss_mb = median("decode_tokens_per_s"), median("peak_rss_mb")


def speed_only(output: Path, rounds: int = SPEED_ROUNDS, echo=lambda line: None) -> SweepResult:
    """Re-measure the speed columns of the sweep saved in ``output``, converting nothing."""
    output = Path(output).expanduser().absolute()
    path = output / "sweep.json"
    if not path.exists():
        raise UsageError(f"{path} does not exist; run `slmops sweep -o {output}` first (it keeps the models).")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        Row(**{key: value for key, value in row.items() if key in Row.__dataclass_fields__}) for row in data["rows"]
    ]
    missing = [row.name for row in rows if row.error is None and not (output / "models" / row.name).is_dir()]
    if missing:
        raise UsageError(
            f"The models of {', '.join(missing)} are gone from {output / 'models'}; run the sweep again "
            "(without --pick, which keeps only the picked model)."
        )
    result = SweepResult(data["source"], rows, data["windows"], limits=data.get("limits", {}))
    measure_speed(result, output / "models", rounds, echo)
    limits = result.limits
    result.pick, result.pick_reason = pick(rows, limits.get("max_ppl_increase_pct", 5.0), limits.get("min_pass", 0.9))
    result.best_int4 = best_int4(rows)
    result.seconds = data.get("seconds", 0.0)
    _write_reports(result, output)
    return result


def pick(rows: list[Row], max_ppl_increase: float, min_pass: float) -> tuple[str | None, str]:
    """The smallest (then fastest) row within the quality limits that decodes no slower than FP32, and why.

    A quantized model slower than the FP32 one (e.g. INT4 with float zero points, which
    onnxruntime's CPU kernels run on a slow path) saves memory at the cost of the very speed
    quantizing is for; it is refused, and named, rather than picked for its size.
    """
    floor = next((row.decode_tokens_per_s for row in rows if row.precision == "fp32" and row.error is None), None)
    ok = [row for row in rows if _why_not(row, max_ppl_increase, min_pass, floor) is None]
    if not ok:
        return None, f"No precision keeps ΔPPL within {max_ppl_increase:g}% and a pass rate of {min_pass:.0%}."
    chosen = min(ok, key=lambda row: (row.size_mb, -(row.decode_tokens_per_s or 0)))
    rejected = [
        f"{row.name} ({_why_not(row, max_ppl_increase, min_pass, floor)})"
        for row in rows
        if row not in ok and row.size_mb < chosen.size_mb
    ]
    reason = (
        f"Picked {chosen.name}: the smallest ({chosen.size_mb:.0f} MB, {chosen.decode_tokens_per_s or 0:.0f} tokens/s) "
        f"with ΔPPL {chosen.delta_ppl_pct:+.1f}% ≤ {max_ppl_increase:g}% and pass rate {chosen.pass_rate:.0%} ≥ {min_pass:.0%}."
    )
    if rejected:
        reason += " Smaller but rejected: " + ", ".join(rejected) + "."
    return chosen.name, reason


def best_int4(rows: list[Row]) -> str | None:
    """The INT4 row closest to the reference (lowest mean KLD)."""
    scored = [
        (row.kld_mean, row.name)
        for row in rows
        if row.precision == "int4" and row.error is None and row.kld_mean is not None
    ]
    return min(scored, key=lambda pair: pair[0])[1] if scored else None


def _why_not(row: Row, max_ppl_increase: float, min_pass: float, floor: float | None = None) -> str | None:
    """Why ``row`` cannot be picked, or None when it can."""
    if row.error:
        return row.error
    if row.delta_ppl_pct is None:
        return "no perplexity"
    if row.delta_ppl_pct > max_ppl_increase:
        return f"ΔPPL {row.delta_ppl_pct:+.1f}%"
    if (row.pass_rate or 0) < min_pass:
        return f"pass rate {(row.pass_rate or 0):.0%}"
    if floor and row.decode_tokens_per_s is not None and row.decode_tokens_per_s < floor:
        return f"{row.decode_tokens_per_s:.0f} tokens/s, slower than fp32's {floor:.0f}"
    return None


def _size_mb(folder: Path) -> float:
    return sum(item.stat().st_size for item in Path(folder).rglob("*") if item.is_file()) / 1e6


COLUMNS = (
    "name",
    "size MB",
    "× FP32",
    "load s",
    "decode tok/s",
    "TTFT ms",
    "peak RSS MB",
    "PPL",
    "ΔPPL %",
    "KLD",
    "same top %",
    "suite",
)


def table_rows(result: SweepResult) -> list[list[str]]:
    f = reports.fmt
    return [
        [
            row.name + (" (error)" if row.error else ""),
            f(row.size_mb, ".0f"),
            f(row.size_ratio, ".3f"),
            f(row.load_s, ".2f"),
            f(row.decode_tokens_per_s, ".0f"),
            f(row.ttft_s and row.ttft_s * 1000, ".0f"),
            f(row.peak_rss_mb, ".0f"),
            f(row.ppl, ".2f"),
            f(row.delta_ppl_pct, "+.1f"),
            f(row.kld_mean, ".3f"),
            f(row.same_top_pct, ".1f"),
            f(row.pass_rate and row.pass_rate * 100, ".0f", "%"),
        ]
        for row in result.rows
    ]


def print_sweep(result: SweepResult) -> None:
    reports.print_table(
        f"Precision table of {result.source} ({result.windows} windows x 512 tokens vs FP32)",
        list(COLUMNS),
        table_rows(result),
    )
    if result.best_int4:
        print(f"Best INT4: {result.best_int4}")


def markdown(result: SweepResult) -> str:
    load = "/".join(f"{value:.1f}" for value in result.load_average) or "n/a"
    lines = [
        f"# Precision sweep of {result.source}",
        "",
        f"Quality against the FP32 export on {result.windows} windows of 512 tokens. Speed: a greedy 64-token answer "
        f"in a fresh process per model, median of {result.speed_rounds} interleaved rounds (host load average "
        f"during them {load}).",
        "",
        f"CPU: {cpu_summary(result.cpu_info)}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    lines += ["", "| name | settings |", "|---|---|"] + [f"| {row.name} | {row.settings} |" for row in result.rows]
    errors = [f"- {row.name}: {row.error}" for row in result.rows if row.error]
    lines += (["", "Errors:"] + errors if errors else []) + [
        "",
        f"Best INT4: {result.best_int4}",
        "",
        result.pick_reason,
    ]
    return "\n".join(lines) + "\n"


def plot(result: SweepResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result.rows if row.error is None and row.kld_mean is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for axis, x_of, label in (
        (left, lambda r: r.size_mb, "size (MB)"),
        (right, lambda r: r.decode_tokens_per_s or 0, "decode tokens/s"),
    ):
        for row in rows:
            axis.scatter(x_of(row), row.delta_ppl_pct, color="tab:blue" if row.precision == "int4" else "tab:orange")
            axis.annotate(
                row.name, (x_of(row), row.delta_ppl_pct), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        axis.set_xlabel(label)
        axis.set_ylabel("ΔPPL vs FP32 (%)")
        axis.axhline(result.limits.get("max_ppl_increase_pct", 5.0), color="grey", linestyle="--", linewidth=0.8)
        axis.grid(alpha=0.3)
    figure.suptitle(f"Quality vs size and speed: {result.source}\non {result.cpu_info['label']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _write_reports(result: SweepResult, output: Path) -> None:
    result.json_path, result.markdown_path, result.plot_path = (
        output / "sweep.json",
        output / "sweep.md",
        output / "sweep.png",
    )
    plot(result, result.plot_path)
    reports.write_text(markdown(result), result.markdown_path)
    reports.write_json(result.to_json(), result.json_path)
