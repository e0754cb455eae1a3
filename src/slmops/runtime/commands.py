"""`slmops model run|list|info`: chat with a model, list models, show one.

The group is open: other packages add subcommands to ``model`` (the service adds
``load`` and ``unload``) with ``@model.command()``.
"""

from __future__ import annotations

import json
import sys

import click

from slmops.runtime.chat import ChatSession, interactive, one_shot


@click.group()
def model() -> None:
    """Run, list and inspect models."""


def generation_options(function):
    """The generation flags shared by every command that generates."""
    flags = [
        click.option(
            "--max-tokens", type=click.IntRange(min=1), help="Most tokens per answer [default: up to the context]."
        ),
        click.option(
            "--temperature",
            type=click.FloatRange(min=0),
            help="Sampling temperature; 0 is greedy [default: the model's].",
        ),
        click.option(
            "--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass [default: the model's]."
        ),
        click.option(
            "--top-k", type=click.IntRange(min=0), help="Sample among the k most likely tokens [default: the model's]."
        ),
        click.option(
            "--repetition-penalty",
            type=click.FloatRange(min=0, min_open=True),
            help="Above 1 discourages repeats [default: the model's].",
        ),
        click.option("--seed", type=click.IntRange(min=0), help="Same seed and options, same answer."),
        click.option("--stop", multiple=True, help="A string that ends the answer (repeatable)."),
        click.option(
            "--no-speculative",
            "speculative",
            flag_value=False,
            default=None,
            help="Decode one token per step (no prompt-lookup drafts; they apply to greedy answers only).",
        ),
    ]
    for flag in reversed(flags):
        function = flag(function)
    return function


@model.command("run")
@click.argument("name")
@click.option(
    "--prompt", "-p", help="Answer this once and exit, printing only the answer (text on stdin does the same)."
)
@click.option("--system", "-s", help="A system message for the conversation.")
@generation_options
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads [default: the CPUs this process may use].")
@click.option("--truncate", is_flag=True, help="Drop the oldest turns when the chat outgrows the context.")
@click.option("--stats", is_flag=True, help="After each answer, print time to first token and tokens/s (to stderr).")
def run_command(name, prompt, system, threads, truncate, stats, **options) -> None:
    """Chat with model NAME (a cached name or a model folder)."""
    run(name, prompt=prompt, system=system, threads=threads, truncate=truncate, stats=stats, **options)


def run(
    name: str,
    prompt: str | None = None,
    system: str | None = None,
    threads: int | None = None,
    truncate: bool = False,
    stats: bool = False,
    **options,
) -> None:
    """Load ``name`` and answer ``prompt`` (or stdin) once, or chat when the terminal is interactive."""
    from slmops.runtime.model import load

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    options["stop"] = tuple(options.get("stop") or ()) or None
    loaded = load(name, threads=threads)
    loaded.options(**options)  # refuse bad options before the first question, not after it
    session = ChatSession(loaded, options, truncate=truncate, system=system, stats=stats)
    if not loaded.has_chat_template:
        session.note(f"{loaded.name} has no chat template (a base model): it completes the text it is given.")
    if prompt is not None:
        one_shot(session, prompt)
    else:
        interactive(session)


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """The cached models, and which ones a running service has loaded."""
    from slmops.runtime.listing import list_models, print_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_models(rows)


@model.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(name: str, as_json: bool) -> None:
    """Template, generation defaults, precision, size, context length and source of model NAME."""
    from slmops.runtime.listing import model_info, print_info

    info = model_info(name)
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print_info(info)


@model.command("load")
@click.argument("name")
@click.option(
    "--ttl",
    type=click.FloatRange(min=0),
    help="Seconds it stays loaded while idle [default: the service's --keep-alive].",
)
def load_command(name: str, ttl: float | None) -> None:
    """Load model NAME in the running service (`slmops service start`)."""
    from slmops.client import load_model

    answer = load_model(name, ttl)
    click.echo(f"Loaded {answer['name']} (unloads after {answer['ttl']:g} s idle).")


@model.command("unload")
@click.argument("name")
@click.option("--force", is_flag=True, help="Unload even while it answers requests (they are cancelled).")
def unload_command(name: str, force: bool) -> None:
    """Unload model NAME from the running service."""
    from slmops.client import unload_model

    answer = unload_model(name, force)
    click.echo(f"Unloaded {answer['name']}." if answer["unloaded"] else f"{answer['name']} was not loaded.")
