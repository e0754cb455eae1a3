"""`slmops bench MODEL ...` and `slmops bench compare A.json B.json`.

``bench`` is a group whose first argument is either a subcommand (``compare``,
``run``) or, as in ``slmops bench my-model``, a model: anything that is not a
subcommand is handed to ``run``.
"""

from __future__ import annotations

import click

from slmops.errors import SlmopsError, UsageError


def _ints(value: str, name: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in value.replace(" ", "").split(",") if part)
    except ValueError:
        raise UsageError(f"{name} takes comma-separated integers, e.g. 32,128; got {value!r}.") from None
    if not numbers or min(numbers) < minimum:
        raise UsageError(f"{name} needs integers of at least {minimum}; got {value!r}.")
    return numbers


class BenchGroup(click.Group):
    """Hands anything that is not a subcommand to ``run`` (so MODEL can come first)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmark a model: TTFT, TPOT, ITL, E2EL, tokens/s, RAM, CPU, roofline.

    \b
      slmops bench MODEL... [OPTIONS]        measure cached models or model folders
      slmops bench --url URL [OPTIONS]       measure any OpenAI-compatible server
      slmops bench MODEL --scenario NAME     a scenario of real use (multi-turn, system-prompt,
                                             burst, grounded, chat, all): ratios beside targets
      slmops bench compare A.json B.json     compare two saved results

    See `slmops bench run --help` for the options of a run.
    """


@bench.command("run")
@click.argument("models", nargs=-1)
@click.option("--url", help="An OpenAI-compatible server to measure (slmops serve, llama-server, vLLM, Ollama).")
@click.option("--model-name", help="Model to ask the --url server for (default: the first it lists).")
@click.option(
    "--endpoint",
    type=click.Choice(["chat", "completions"]),
    default="chat",
    show_default=True,
    help="Which OpenAI endpoint --url is measured on.",
)
@click.option(
    "--pid", type=int, help="Process id of the --url server, to measure its RAM and CPU (found by port on loopback)."
)
@click.option("--api-key", envvar="SLMOPS_BENCH_API_KEY", help="Bearer token for --url.")
@click.option("--ignore-eos", is_flag=True, help="Ask the --url server to ignore end-of-text (vLLM, llama-server).")
@click.option("--raw", is_flag=True, help="Also run a bare onnxruntime-genai Generator loop on MODEL's folder.")
@click.option(
    "--raw-threads", default="", help="Thread counts of the --raw targets, e.g. 2,0 (0: onnxruntime's default)."
)
@click.option(
    "--llama-cpp",
    "llama_cpp",
    type=click.Path(exists=True, dir_okay=False),
    help="Also run this GGUF with llama-cpp-python.",
)
@click.option("--threads", type=int, help="Threads for slmops and llama.cpp (default: the CPUs this process may use).")
@click.option("--prompt-lengths", default="32,128,512,1024,2048", show_default=True, help="Prompt sizes in tokens.")
@click.option("--output-lengths", default="128", show_default=True, help="Tokens to generate per request.")
@click.option("--concurrency", default="1", show_default=True, help="Simultaneous requests, e.g. 1,2,4,8,16.")
@click.option("--reps", type=int, help="Batches per case (default: until the median is stable, 3 to 10).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unmeasured requests per target first.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), help="JSONL of texts to cut prompts from.")
@click.option("--goodput", multiple=True, help="Objectives for goodput, e.g. --goodput ttft:500 --goodput tpot:50.")
@click.option("--no-roofline", is_flag=True, help="Skip the memory-bandwidth probe.")
@click.option("--no-speculative", is_flag=True, help="slmops decodes one token per step (no prompt-lookup drafts).")
@click.option(
    "--refresh-bandwidth", is_flag=True, help="Measure the memory bandwidth again instead of using the cached value."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a Markdown report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG chart.")
@click.option("--title", help="Title of the Markdown report.")
@click.option(
    "--scenario",
    "scenario_names",
    multiple=True,
    metavar="NAME",
    help="Run a scenario of real use instead of the sweep (repeatable): multi-turn, system-prompt, burst, "
    "grounded, chat or all. --reps sets its rounds (default 3), --output-lengths its answers' tokens.",
)
@click.option(
    "--llama-server",
    type=click.Path(exists=True, dir_okay=False),
    help="With --scenario: also serve --gguf with this llama-server binary, measured in the same run.",
)
@click.option("--gguf", type=click.Path(exists=True, dir_okay=False), help="The GGUF --llama-server serves.")
@click.option(
    "--llama-threads",
    type=click.IntRange(min=1),
    help="llama-server's -t [default: --threads]; on a loaded CPU fewer may run faster.",
)
def run_command(
    models,
    url,
    model_name,
    endpoint,
    pid,
    api_key,
    ignore_eos,
    raw,
    raw_threads,
    llama_cpp,
    threads,
    prompt_lengths,
    output_lengths,
    concurrency,
    reps,
    warmup,
    prompts,
    goodput,
    no_roofline,
    no_speculative,
    refresh_bandwidth,
    json_path,
    markdown_path,
    plot_path,
    title,
    scenario_names,
    llama_server,
    gguf,
    llama_threads,
) -> None:
    """Measure MODELS (cached names or model folders; several, e.g. precisions, side by side)
    and/or a --url server; or run one MODEL through --scenario NAME."""
    if scenario_names:
        if len(models) != 1 or url or raw or llama_cpp:
            raise UsageError(
                "--scenario runs one MODEL (a cached name or a model folder), without --url, --raw or --llama-cpp."
            )
        spec = _scenario_spec(
            models[0],
            scenario_names,
            reps,
            output_lengths,
            threads=threads,
            speculative=not no_speculative,
            llama_server=llama_server,
            gguf=gguf,
            llama_threads=llama_threads,
        )
        _run_scenarios(spec, json_path, markdown_path, plot_path)
        return
    if llama_server or gguf or llama_threads:
        raise UsageError("--llama-server, --gguf and --llama-threads go with --scenario.")
    from slmops.bench.benchmark import TargetSpec, benchmark, write_outputs
    from slmops.bench.runner import Sweep
    from slmops.bench.stats import Goodput

    if reps is not None and reps < 1:
        raise UsageError("--reps must be 1 or more.")
    try:
        objectives = Goodput.parse(goodput)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    spec = TargetSpec(
        model=models[0] if models else None,
        more_models=tuple(models[1:]),
        url=url,
        url_model=model_name,
        endpoint=endpoint,
        pid=pid,
        api_key=api_key,
        ignore_eos=ignore_eos,
        raw=raw,
        raw_threads=_ints(raw_threads, "--raw-threads", 0) if raw_threads else (),
        llama_cpp=llama_cpp,
        threads=threads,
        speculative=not no_speculative,
    )
    sweep = Sweep(
        prompt_lengths=_ints(prompt_lengths, "--prompt-lengths"),
        output_lengths=_ints(output_lengths, "--output-lengths"),
        concurrency=_ints(concurrency, "--concurrency"),
        reps=reps,
        warmup=max(0, warmup),
        goodput=objectives,
    )
    document = _run_live(
        lambda on_case: benchmark(spec, sweep, prompts, not no_roofline, on_case, refresh_bandwidth), len(sweep.cases())
    )
    for path in write_outputs(document, json_path, markdown_path, plot_path, title):
        click.echo(f"Wrote {path}")


def _scenario_spec(model, names, reps, output_lengths, **options):
    from slmops.bench.scenario_run import DEFAULT_ROUNDS, ScenarioSpec

    rounds = DEFAULT_ROUNDS if reps is None else reps
    max_tokens = _ints(output_lengths, "--output-lengths", 2)[0]
    spec = ScenarioSpec(model, tuple(names), rounds, max_tokens=max_tokens, **options)
    spec.check()
    return spec


def _run_scenarios(spec, json_path, markdown_path, plot_path) -> None:
    from slmops.bench import scenario_report

    document = scenario_report.run_live(spec)
    for path in scenario_report.write(document, json_path, markdown_path, plot_path):
        click.echo(f"Wrote {path}")


def _run_live(run, case_count: int) -> dict:
    """Run with a progress bar and a table that grows as cases finish."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slmops.bench import report
    from slmops.console import make_console, print_table
    from slmops.machine import describe_cpu

    console = make_console(stderr=True)
    table = report.rich_table(f"slmops bench on {describe_cpu().label}")
    progress = Progress(TextColumn("cases"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = progress.add_task("cases", total=case_count)

    def on_case(case, index, total):
        table.add_row(*report.case_row(_case_dict(case), report.TERMINAL))
        progress.update(task, completed=index + (1 if case is not None else 0))

    # transient: a failed run leaves its error, not an empty table, on the screen
    with Live(Group(progress, table), console=console, refresh_per_second=4, transient=True):
        result = run(on_case)
    print_table(table, console)
    document = result.to_dict()
    for warning in document["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    return document


def _case_dict(case) -> dict:
    import dataclasses

    return dataclasses.asdict(case)


@bench.command("compare")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--threshold", type=float, default=10.0, show_default=True, help="Percent worse that counts as a regression."
)
@click.option("--fail-on-regression", is_flag=True, help="Exit with code 1 when any figure regressed.")
def compare_command(a, b, threshold, fail_on_regression) -> None:
    """Compare result B.json with the baseline A.json (ratios B/A)."""
    from rich.table import Table

    from slmops.bench.compare import compare, load_result
    from slmops.console import make_console, print_table

    comparison = compare(load_result(a), load_result(b), threshold / 100)
    table = Table(title=f"{b} vs {a}")
    for header in ("case", "figure", "A", "B", "B/A", ""):
        table.add_column(header, justify="left" if header in ("case", "figure", "") else "right")
    for change in comparison.changes:
        flag = "[red]REGRESSION[/]" if change.regression else ""
        table.add_row(change.case, change.figure, f"{change.a:,.1f}", f"{change.b:,.1f}", f"{change.ratio:.3f}", flag)
    console = make_console()
    print_table(table, console)
    for name in comparison.unmatched:
        console.print(f"[yellow]not in {a}:[/] {name}")
    if comparison.cpus:
        console.print(
            f"[yellow]different CPUs:[/] {a} on {comparison.cpus[0]}, {b} on {comparison.cpus[1]}; "
            "onnxruntime picks its kernels by instruction set, so the ratios measure the CPUs too."
        )
    regressions = comparison.regressions
    console.print(f"{len(regressions)} regression(s) beyond {threshold:g}% in {len(comparison.changes)} figures.")
    if regressions and fail_on_regression:
        raise SlmopsError(f"{len(regressions)} figure(s) of {b} regressed beyond {threshold:g}% against {a}.")
