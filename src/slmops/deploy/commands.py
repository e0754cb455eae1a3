"""The `slmops deploy` command: parses its flags and runs :func:`slmops.deploy.pipeline.deploy`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from slmops.deploy.pipeline import (
    DEFAULT_MAX_PPL_INCREASE,
    DEPLOY_SOAK,
    DEPLOY_WINDOWS,
    deploy,
    settings_text,
)
from slmops.errors import UsageError
from slmops.evaluate.commands import min_pass_option, soak_option, suite_option
from slmops.evaluate.completion import COMPLETION
from slmops.server.config import DEFAULT_PORT


def usage_lines(name: str, base_model: bool = False) -> list[str]:
    """How to run and call the deployed model; a base model completes text, so it is shown raw text, not a chat."""
    if base_model:
        body = json.dumps({"model": name, "prompt": "The capital of France is", "max_tokens": 16})
        return [
            f'Complete: slmops model run {name} --prompt "The capital of France is"',
            f"Serve:    slmops serve {name}",
            f"Call:     curl http://127.0.0.1:{DEFAULT_PORT}/v1/completions -H 'Content-Type: application/json' -d '{body}'",
        ]
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})
    return [
        f"Chat:   slmops model run {name}",
        f'Once:   slmops model run {name} --prompt "Hello!"',
        f"Serve:  slmops serve {name}",
        f"Call:   curl http://127.0.0.1:{DEFAULT_PORT}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
    ]


@click.command("deploy")
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="The model's name in the cache.")
@click.option(
    "--precision",
    type=click.Choice(["int4", "int8", "fp16", "bf16", "fp32", "auto"]),
    default="int4",
    show_default=True,
    help="int4 picks among INT4 candidates, auto among INT4 and INT8: the fastest measured on this CPU within "
    "--max-ppl-increase (measured once per machine and model).",
)
@click.option(
    "--quantization",
    "quantization_spec",
    default="best",
    show_default=True,
    help="INT4/INT8 settings: 'best' (chosen on this CPU), 'builder' (the builder's defaults), an INT4 variant "
    "of `slmops sweep --list-variants`, or KEY=VALUE,... QuantizationOptions fields, e.g. 'algo=rtn,block_size=16'.",
)
@click.option(
    "--windows", type=click.IntRange(1), default=DEPLOY_WINDOWS, show_default=True, help="Eval windows of 512 tokens."
)
@click.option(
    "--max-ppl-increase",
    type=float,
    default=DEFAULT_MAX_PPL_INCREASE,
    show_default=True,
    help="Fail above this ΔPPL vs FP32 (percent).",
)
@suite_option("Domain suite for validation (default: the shipped example).")
@min_pass_option("Suite pass rate needed.")
@soak_option(DEPLOY_SOAK)
@click.option("--skip-eval", is_flag=True, help="Do not compare with the FP32 export (saves one conversion).")
@click.option("--force", is_flag=True, help="Replace a cached model of the same name.")
def deploy_command(source, name, precision, quantization_spec, **settings):
    """Convert SOURCE (default: the embedded SmolLM2), evaluate, validate and register it as NAME."""
    started = time.perf_counter()
    quantization = parse_quantization(quantization_spec, precision)
    # windows, max_ppl_increase, suite, min_pass, soak, skip_eval, force: deploy()'s parameters by name
    result = deploy(source, name=name, precision=precision, quantization=quantization, **settings)
    click.echo(
        f"Deployed {name} ({result.variant}{settings_text(result.quantization)}) in {time.perf_counter() - started:.0f} s "
        f"to {result.cached_path}."
    )
    base_model = (result.validation or {}).get("mode") == COMPLETION
    for line in usage_lines(name, base_model):
        click.echo(line)


def parse_quantization(spec: str, precision: str) -> dict | str | None:
    if spec == "best":
        return None  # int4: chosen on this CPU (slmops.deploy.choice)
    if spec == "builder":
        return {}
    if "=" not in spec and spec.startswith("int4"):
        return spec
    settings_ = {}
    for pair in spec.split(","):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(
                f"--quantization {spec!r}: write KEY=VALUE pairs separated by commas, or 'best' / 'builder'."
            )
        settings_[key.strip()] = _value(value.strip())
    return settings_


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.isdigit() else text
