"""How a scenario result is shown: a table of ratios beside their targets, and a PNG chart.

Both read the result document (or its ratios as dicts), so a saved result renders again.
"""

from __future__ import annotations

from pathlib import Path

from slmops.bench.report import cpu_label

HEADERS = ("scenario", "subject", "figure", "value", "compared with", "value", "ratio", "target", "")


def _seconds_or_rate(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if name.endswith(" s") else f"{value:,.1f}"


def ratio_row(ratio: dict) -> list[str]:
    """One ratio as table cells: its two figures, the ratio, the target and whether it is met."""
    sign = "≤" if ratio["better"] == "lower" else "≥"
    value = ratio["value"]
    verdict = {True: "met", False: "missed", None: "not measured"}[ratio["met"]]
    return [
        ratio["scenario"],
        ratio["subject"],
        ratio["numerator"],
        _seconds_or_rate(ratio["numerator"], ratio["numerator_value"]),
        ratio["denominator"],
        _seconds_or_rate(ratio["denominator"], ratio["denominator_value"]),
        "–" if value is None else f"{value:.2f}×",
        f"{sign} {ratio['target']:g}×",
        verdict,
    ]


def rich_table(title: str):
    from rich.table import Table

    table = Table(title=title, caption="medians over interleaved rounds; ratio = figure / compared with")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("value", "ratio", "target") else "left")
    return table


def add_row(table, ratio: dict) -> None:
    cells = ratio_row(ratio)
    colour = {"met": "green", "missed": "red"}.get(cells[-1])
    table.add_row(*cells[:-1], f"[{colour}]{cells[-1]}[/]" if colour else cells[-1])


def markdown_rows(document: dict) -> list[str]:
    """The ratios as Markdown table lines (for RESULTS.md and docs)."""
    lines = ["| " + " | ".join(HEADERS[:-1]) + " | |", "|" + "---|" * len(HEADERS)]
    return lines + ["| " + " | ".join(ratio_row(ratio)) + " |" for ratio in document["ratios"]]


def plot(document: dict, path: str | Path) -> Path:
    """Every measured ratio as a bar with its target marked (green where met, red where missed) and,
    for the serving scenarios, each server's times to first token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [ratio for ratio in document["ratios"] if ratio["value"] is not None]
    times = _served_times(document)
    rows = max(len(measured), len(times), 1)
    fig, axes = plt.subplots(1, 2 if times else 1, figsize=(16 if times else 10, 0.45 * rows + 1.8), squeeze=False)
    _plot_ratios(axes[0][0], measured)
    if times:
        _plot_times(axes[0][1], times)
    load = document["load_average"]
    fig.suptitle(
        f"slmops bench --scenario, {document['model']} — {cpu_label(document['system'])}, "
        f"load {load['before']:.1f}→{load['after']:.1f}, {document['created']}",
        fontsize="small",
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_ratios(axis, measured: list[dict]) -> None:
    labels = [f"{r['scenario']}: {r['subject']}\n{r['numerator']} / {r['denominator']}" for r in measured]
    positions = list(range(len(measured)))
    colours = ["tab:green" if ratio["met"] else "tab:red" for ratio in measured]
    axis.barh(positions, [ratio["value"] for ratio in measured], color=colours, alpha=0.8)
    axis.scatter([ratio["target"] for ratio in measured], positions, marker="|", s=400, color="black", label="target")
    axis.set_yticks(positions, labels, fontsize="x-small")
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("ratio (log scale); the black mark is the target")
    axis.grid(alpha=0.3, axis="x")
    if measured:
        axis.legend(fontsize="small")


def _served_times(document: dict) -> list[tuple[str, float]]:
    """(label, seconds) of every time figure of the serving scenarios, per server."""
    times = []
    for scenario, result in document["scenarios"].items():
        for server, figures in result["figures"].items():
            if server not in ("slmops serve", "llama-server"):
                continue
            times += [
                (f"{scenario}: {server}\n{name}", value) for name, value in figures.items() if name.endswith(" s")
            ]
    return times


def _plot_times(axis, times: list[tuple[str, float]]) -> None:
    positions = list(range(len(times)))
    colours = ["tab:blue" if "slmops serve" in label else "tab:orange" for label, _ in times]
    axis.barh(positions, [value for _, value in times], color=colours, alpha=0.8)
    axis.set_yticks(positions, [label for label, _ in times], fontsize="x-small")
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("time to first token, s (log scale)")
    axis.grid(alpha=0.3, axis="x")


def markdown(document: dict) -> str:
    """The result as a short Markdown report: the machine, the load, the settings and the ratios."""
    from slmops.bench.report import cpu_text

    settings, load = document["settings"], document["load_average"]
    lines = [
        f"# slmops bench --scenario: {document['model']}",
        "",
        f"- CPU: {cpu_text(document['system'])}",
        f"- 1-minute load average: {load['before']:.2f} at the start, {load['after']:.2f} at the end",
        f"- {settings['threads']} threads, {settings['rounds']} interleaved rounds, {document['created']}"
        + (f"; llama-server -t {settings['llama_threads']} on {settings['gguf']}" if settings["llama_server"] else ""),
        "",
        *markdown_rows(document),
    ]
    return "\n".join(lines) + "\n"


def run_live(spec) -> dict:
    """Run ``spec`` (a ScenarioSpec) under a progress bar, the ratios table growing as phases finish."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slmops.bench.scenario_run import Callbacks, run_scenarios, steps
    from slmops.console import make_console, print_table
    from slmops.machine import describe_cpu

    console = make_console(stderr=True)
    table = rich_table(f"slmops bench --scenario {spec.model} on {describe_cpu().label}")
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = progress.add_task("starting", total=steps(spec))
    done = [0]

    def step(text: str) -> None:
        progress.update(task, description=text, completed=done[0])
        done[0] += 1
        if not console.is_terminal:  # a log file gets a line per step instead of a redrawn bar
            console.print(f"[{done[0]}/{progress.tasks[0].total:.0f}] {text}")

    def show(ratios: list) -> None:
        for ratio in ratios:
            add_row(table, ratio.to_dict())

    callbacks = Callbacks(step, lambda text: progress.update(task, description=text), show)
    # transient: a failed run leaves its error, not a half-drawn table, on the screen
    with Live(Group(progress, table), console=console, refresh_per_second=4, transient=True):
        document = run_scenarios(spec, callbacks)
    print_table(table, console)
    load = document["load_average"]
    console.print(f"1-minute load average {load['before']:.2f} at the start, {load['after']:.2f} at the end.")
    return document


def write(document: dict, json_path=None, markdown_path=None, plot_path=None) -> list[Path]:
    """Write the JSON, Markdown and PNG files asked for; return their paths."""
    import json

    written = []
    if json_path:
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        written.append(Path(json_path))
    if markdown_path:
        Path(markdown_path).write_text(markdown(document), encoding="utf-8")
        written.append(Path(markdown_path))
    if plot_path:
        written.append(plot(document, plot_path))
    return written
