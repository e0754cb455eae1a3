"""`slmops eval`, `slmops validate` and `slmops sweep`: flags in, library call, report out."""

from __future__ import annotations

from pathlib import Path

import click

from slmops.evaluate.completion import COMPLETION
from slmops.evaluate.quality import DEFAULT_WINDOWS
from slmops.evaluate.validate import DEFAULT_SOAK

JSON_HELP = "Also write the report as JSON to this file ('-' for standard output)."
MD_HELP = "Also write the report as Markdown to this file ('-' for standard output)."
MIN_PASS = 0.9


# ---- flags the evaluation commands share (deploy's validation step takes them too) ----


def suite_option(help: str):
    return click.option("--suite", type=click.Path(exists=True, dir_okay=False), help=help)


def min_pass_option(help: str):
    return click.option("--min-pass", type=click.FloatRange(0, 1), default=MIN_PASS, show_default=True, help=help)


def soak_option(default: int):
    return click.option(
        "--soak",
        type=click.IntRange(10),
        default=default,
        show_default=True,
        help="Generations for the memory-leak check.",
    )


def report_options(command):
    """--json and --markdown: where the report goes besides the table."""
    command = click.option("--markdown", "markdown_path", help=MD_HELP)(command)
    return click.option("--json", "json_path", help=JSON_HELP)(command)


@click.command("eval")
@click.argument("model")
@click.option(
    "--reference",
    help="Unquantized model to compare with: ONNX folder or cache name, Hugging Face folder (torch), or saved logits.",
)
@click.option(
    "--text",
    type=click.Path(exists=True, dir_okay=False),
    help="UTF-8 text for perplexity (default: the shipped licence texts).",
)
@click.option("--window", type=int, help="Tokens per window (default 512, at most the model's context).")
@click.option("--stride", type=int, help="Tokens between windows (default half a window).")
@click.option(
    "--windows", type=int, default=DEFAULT_WINDOWS, show_default=True, help="Windows to score; 0 scores the whole text."
)
@click.option(
    "--save-logits",
    type=click.Path(file_okay=False),
    help="Save the reference's log-probs (the model's own without --reference) to this folder, for --reference later.",
)
@suite_option("A domain suite (JSON lines) to answer and check.")
@click.option("--no-perplexity", is_flag=True, help="Run only the suite.")
@report_options
def eval_command(model, suite, no_perplexity, json_path, markdown_path, **quality_options):
    """Measure MODEL's quality: perplexity, divergence from a reference, a domain suite."""
    from slmops.evaluate import report as reports
    from slmops.machine import describe_cpu

    data, markdown = {}, []
    if not no_perplexity:
        from slmops.evaluate.quality import evaluate_quality

        # reference, text, window, stride, windows, save_logits: evaluate_quality's parameters by name
        quality = evaluate_quality(model, **quality_options)
        reports.print_table(
            f"{model} on {quality.text} ({quality.windows} x {quality.window} tokens)",
            ["figure", "value"],
            [list(row) for row in reports.figure_rows(quality.figures)],
        )
        data["quality"] = quality.to_json()
        markdown.append(reports.quality_markdown(quality))
        if save_logits := quality_options["save_logits"]:
            click.echo(f"Saved logits to {save_logits}; reuse them with --reference {save_logits}.")
    if suite:
        result = _run_suite(model, suite)
        data["suite"] = result.to_json()
        markdown.append(reports.suite_markdown(result))
    if not data:
        raise click.UsageError("Nothing to do: --no-perplexity needs --suite.")
    cpu = describe_cpu()
    data["cpu_info"] = cpu.to_json()
    if "quality" not in data:  # the quality section names the CPU; a suite alone does not
        markdown.insert(0, f"CPU: {cpu.summary()}.\n")
    _emit(data, "\n".join(markdown), json_path, markdown_path)


@click.command("validate")
@click.argument("model")
@suite_option("Domain suite (default: the shipped example suite).")
@min_pass_option("Suite pass rate needed by item 1.")
@soak_option(DEFAULT_SOAK)
@report_options
@click.pass_context
def validate(ctx, model, suite, min_pass, soak, json_path, markdown_path):
    """Run the deployment checklist on MODEL; exit code 1 when an item FAILs."""
    from slmops.evaluate import report as reports
    from slmops.evaluate.validate import validate as run_validation

    result = run_validation(model, suite=suite, min_pass=min_pass, soak=soak)
    print_validation(result)
    _emit(result.to_json(), reports.validation_markdown(result), json_path, markdown_path)
    if not result.passed:
        ctx.exit(1)


@click.command("sweep")
@click.argument("source", required=False)
@click.option(
    "--precisions",
    default="int4,int8,fp16,fp32",
    show_default=True,
    help="Comma-separated precisions to convert and measure.",
)
@click.option(
    "--int4-variants",
    default="default",
    show_default=True,
    help="INT4 settings to try: 'default' (a set of algorithms and block sizes), 'builder' (only the builder's default), or names from `--list-variants`.",
)
@click.option("--list-variants", is_flag=True, help="List the INT4 variants and exit.")
@click.option(
    "--windows", type=int, default=DEFAULT_WINDOWS, show_default=True, help="Eval windows of 512 tokens per model."
)
@suite_option("Domain suite for the pass rate (default: the shipped example).")
@click.option("--pick", is_flag=True, help="Choose the smallest, fastest precision within the quality limits.")
@click.option(
    "--max-ppl-increase", type=float, default=5.0, show_default=True, help="Largest ΔPPL (percent) --pick accepts."
)
@min_pass_option("Suite pass rate --pick needs.")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False),
    default="sweep",
    show_default=True,
    help="Folder for the converted models and the reports.",
)
@click.option(
    "--keep-models", is_flag=True, help="With --pick, keep every converted model (default: only the picked one)."
)
@click.option(
    "--speed-rounds",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Rounds of speed measurements, every model once per round in a fresh process; figures are medians.",
)
@click.option(
    "--speed-only",
    is_flag=True,
    help="Only re-measure the speed columns of the sweep saved in --output (no conversion).",
)
def sweep(
    source,
    precisions,
    int4_variants,
    list_variants,
    windows,
    suite,
    pick,
    max_ppl_increase,
    min_pass,
    output,
    keep_models,
    speed_rounds,
    speed_only,
):
    """Convert SOURCE at each precision and measure the precision table for this model."""
    from slmops.evaluate import sweep as sweeps

    if list_variants:
        for variant in sweeps.INT4_VARIANTS.values():
            default = "" if variant.name in sweeps.DEFAULT_INT4_SET else " [only when named]"
            click.echo(f"{variant.name:28} {variant.describe()}{default}")
        return
    if speed_only:
        result = sweeps.speed_only(Path(output), rounds=speed_rounds or 3, echo=click.echo)
    else:
        result = sweeps.sweep(
            Path(source) if source else None,
            Path(output),
            precisions=[item.strip() for item in precisions.split(",") if item.strip()],
            int4_variants=sweeps.parse_variants(int4_variants),
            windows=windows,
            suite=suite,
            max_ppl_increase=max_ppl_increase,
            min_pass=min_pass,
            keep_models=keep_models or not pick,
            speed_rounds=speed_rounds,
            echo=click.echo,
        )
    sweeps.print_sweep(result)
    click.echo(f"Reports: {result.json_path}, {result.markdown_path}, {result.plot_path}")
    if pick:
        click.echo(result.pick_reason)


def print_validation(result) -> None:
    from slmops.evaluate import report as reports

    colours = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    rows = [
        [str(check.item), check.name, f"[{colours[check.status]}]{check.status}[/]", check.summary]
        for check in result.checks
    ]
    reports.print_table(
        f"Validation of {result.model}: {'PASSED' if result.passed else 'FAILED'}",
        ["#", "check", "result", "evidence"],
        rows,
    )
    if result.mode == COMPLETION:
        click.echo(reports.completion_note(result.model))


def _run_suite(model, suite):
    from slmops.evaluate import report as reports
    from slmops.evaluate.suite import load_suite, run_suite
    from slmops.runtime import load

    cases = load_suite(suite)
    result = run_suite(load(model), cases, suite=Path(suite).name)
    rows = [
        [r.name, "pass" if r.passed else "FAIL", "; ".join(r.failures), r.answer.strip()[:80]] for r in result.results
    ]
    reports.print_table(
        f"Suite {result.suite}: {result.passed}/{result.total} pass", ["case", "result", "why", "answer"], rows
    )
    return result


def _emit(data: dict, markdown: str, json_path: str | None, markdown_path: str | None) -> None:
    import json

    from slmops.evaluate import report as reports

    if json_path == "-":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif json_path:
        reports.write_json(data, json_path)
    if markdown_path == "-":
        click.echo(markdown)
    elif markdown_path:
        reports.write_text(markdown, markdown_path)
