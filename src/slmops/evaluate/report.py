"""Reports of eval, validate and sweep: JSON for machines, Markdown for people, rich for the terminal."""

from __future__ import annotations

from pathlib import Path

from slmops import files
from slmops.evaluate.completion import COMPLETION
from slmops.evaluate.metrics import QualityFigures
from slmops.evaluate.quality import QualityReport
from slmops.evaluate.suite import SuiteReport
from slmops.machine import cpu_summary


def write_json(data: dict, path: str | Path) -> Path:
    """A report as JSON, written whole (values JSON has no type for, such as paths, as text)."""
    return files.write_json(path, data, default=str)


def write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def figure_rows(figures: QualityFigures) -> list[tuple[str, str]]:
    """(label, value) rows of the quality figures, in llama.cpp's order."""
    rows = [("tokens scored", str(figures.tokens)), ("PPL", f"{figures.ppl:.4f} ± {figures.ppl_stderr:.4f}")]
    if figures.ref_ppl is None:
        return rows
    dp = figures.dp_percentiles_pct
    rows += [
        ("reference PPL", f"{figures.ref_ppl:.4f}"),
        ("ΔPPL", fmt(figures.delta_ppl_pct, "+.2f", " %")),
        ("mean KLD", fmt(figures.kld_mean, ".5f")),
        ("median KLD", fmt(figures.kld_median, ".5f")),
        ("99th percentile KLD", fmt(figures.kld_p99, ".5f")),
        ("maximum KLD", fmt(figures.kld_max, ".5f")),
        ("same top token", fmt(figures.same_top_pct, ".2f", " %")),
        ("mean Δp", fmt(figures.dp_mean_pct, "+.3f", " %")),
        ("RMS Δp", fmt(figures.dp_rms_pct, ".3f", " %")),
    ]
    rows += [(f"Δp {key}", f"{value:+.3f} %") for key, value in dp.items()]
    return rows


def quality_markdown(report: QualityReport) -> str:
    lines = [
        f"# Quality of {report.model}",
        "",
        f"Text: {report.text}, {report.windows} windows of {report.window} tokens, stride {report.stride}; "
        f"reference: {report.reference or 'none'}; {report.seconds:.1f} s.",
        "",
        f"CPU: {cpu_summary(report.cpu_info)}.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in figure_rows(report.figures)]
    return "\n".join(lines) + "\n"


def suite_markdown(report: SuiteReport) -> str:
    lines = [f"## Suite {report.suite}: {report.passed}/{report.total} pass ({report.pass_rate:.0%})", ""]
    for result in report.failures():
        answer = result.answer.strip().replace("\n", " ")
        lines.append(f"- **{result.name}** {'; '.join(result.failures)}. Answer: `{answer[:300]}`")
    return "\n".join(lines) + "\n"


def completion_note(model: str) -> str:
    """The one line a report of a base model carries: how it was asked."""
    return (
        f"{model} is a base model (no chat template): every check ran on raw completions "
        "(each suite case's conversation given as plain text, the edge cases as raw prompts)."
    )


def validation_markdown(report) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Validation of {report.model}: {verdict}",
        "",
        f"{report.seconds:.0f} s. CPU: {cpu_summary(report.cpu_info)}.",
        "",
        *([completion_note(report.model), ""] if report.mode == COMPLETION else []),
        "| # | check | result | evidence |",
        "|---|---|---|---|",
    ]
    lines += [f"| {check.item} | {check.name} | {check.status} | {check.summary} |" for check in report.checks]
    if report.suite:
        lines += ["", suite_markdown(report.suite)]
    return "\n".join(lines) + "\n"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    from slmops import console

    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print_table(table)
