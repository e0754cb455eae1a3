"""`slmops deploy`: the whole last mile in one command.

convert (INT4 chosen by its decode speed measured on this CPU within the quality budget,
see slmops.deploy.choice, or another precision) -> eval against the FP32 export -> measure what a
drafted token costs on this CPU (speculation's policy reads it) -> validate -> register in the cache ->
how to chat and serve. Everything is built in a private work folder; the cache changes only in the
last step, atomically, so a failed, interrupted or killed deploy leaves it as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from slmops import settings
from slmops.deploy.reuse import REPORT, REPORT_MARKDOWN
from slmops.errors import SlmopsError, UsageError
from slmops.files import write_json
from slmops.machine import cpu_summary, describe_cpu
from slmops.modelfolder.folder import ModelFolder, read_model_folder

REFERENCE = "reference-fp32"
DEPLOY_WINDOWS = 8  # 2,303 tokens: on 4, a 0.5B model's pick flipped on a 1.5-point ΔPPL difference
DEPLOY_SOAK = 40
DEPLOY_LENGTHS = (32, 256)
DRAFT_COST_CONTEXT = 256  # tokens before the verifies that measure what a drafted token costs
# The quality budget a plain deploy chooses within, and fails above. 10%, not more: the fastest
# INT4 export on an AVX-512 CPU (k_quant_mixed block 128) measured +17% on SmolLM2 against
# +5.8% for block 16, and a plain deploy should give the faithful one.
DEFAULT_MAX_PPL_INCREASE = 10.0


class DeployFailed(SlmopsError):
    """A step of the deploy failed; the cache was left unchanged."""


@dataclass
class DeployResult:
    name: str
    precision: str
    quantization: dict
    variant: str | None = None
    steps: list[dict] = field(default_factory=list)
    quality: dict | None = None
    validation: dict | None = None
    choice: dict | None = None  # the candidates measured on this CPU and the rule's pick
    build: dict | None = None  # what made the export's bytes: a later deploy with the same copies it (deploy/reuse.py)
    cached_path: str | None = None
    report_path: str | None = None
    # the eval and validation figures hold for this CPU: onnxruntime picks its kernels by instruction set
    cpu_info: dict = field(default_factory=lambda: describe_cpu().to_json())

    def to_json(self) -> dict:
        return asdict(self)


def deploy(
    source: Path | None = None,
    *,
    name: str,
    precision: str = "int4",
    quantization: dict | str | None = None,
    windows: int = DEPLOY_WINDOWS,
    max_ppl_increase: float | None = DEFAULT_MAX_PPL_INCREASE,
    suite: str | Path | None = None,
    min_pass: float = 0.9,
    soak: int = DEPLOY_SOAK,
    skip_eval: bool = False,
    force: bool = False,
    echo=click.echo,
) -> DeployResult:
    """Convert, evaluate, validate and register ``source`` as ``name``.

    Args:
        source: a Hugging Face folder, a .gguf file or a LoRA adapter folder; None for the
            embedded SmolLM2-135M-Instruct.
        name: the model's name in the cache.
        precision: int4, int8, fp16, bf16, fp32, or ``auto`` (INT8 is a candidate of the choice too).
        quantization: an INT4 variant name (None: chosen on this CPU), or int4/int8 settings
            as a dict of QuantizationOptions fields (empty: the builder's defaults).
        windows: 512-token windows of the shipped text for the eval against FP32.
        max_ppl_increase: the eval fails above this ΔPPL in percent (None: report only).
        suite, min_pass, soak: passed to `slmops validate`; without a suite, the shipped
            example suite is run and reported, but only warns (it is not the user's domain).
        skip_eval: skip the comparison with the FP32 export (no FP32 conversion).
        force: replace a cached model of the same name.

    Raises:
        DeployFailed: a step failed; its report is saved and the cache is unchanged.
    """
    from slmops.cache import store
    from slmops.convert.sources import inspect_source, source_hash
    from slmops.deploy import reuse

    store.check_name(name)
    _refuse_existing(name, force)
    work = _work_folder()
    try:
        result = DeployResult(name, precision, {})
        model_dir = work / name
        source_sha = source_hash(inspect_source(source))
        if precision == "auto" or (precision == "int4" and quantization is None):
            with _step(result, "choose on this CPU", echo) as step:
                picked, step["summary"] = _choose(result, work, source, source_sha, windows, max_ppl_increase, echo)
            precision, quantization = result.precision, (picked if result.precision == "int4" else None)
        variant = _variant(precision, quantization)
        result.precision, result.quantization, result.variant = precision, dict(variant.quantization), variant.name
        result.build = reuse.build_key(source_sha, variant)
        scored = None  # the pick's quality report and where it comes from, when it was scored already
        with _step(result, f"convert to {variant.describe()}", echo) as step:
            built = work / "candidates" / variant.name
            if built.exists():  # measured while choosing
                scored = _scored_as(_read_scored(built), "scored while choosing")
                built.rename(model_dir)
            elif earlier := reuse.find_earlier(result.build):
                reuse.copy_export(earlier.path, model_dir)
                scored = _scored_as(reuse.scores_on(earlier, windows), f"scored when {earlier.name} was deployed")
                step["summary"] = (
                    f"the export of {earlier.name} in the cache, built from the same source with the same settings "
                    "and libraries on this CPU, copied (`slmops cache remove` it to build afresh)"
                )
            else:
                fp32 = _reference(source, work) if variant.post_build else None
                build(variant, source, model_dir, fp32, lambda line: echo(f"    {line}"))
            shutil.rmtree(work / "candidates", ignore_errors=True)
        if not skip_eval and precision != "fp32":
            with _step(result, f"eval against FP32 ({windows} windows of 512 tokens)", echo) as step:
                step["summary"] = _evaluate(result, work, source, model_dir, windows, max_ppl_increase, scored)
        if not (folder := read_model_folder(model_dir)).is_embedding:
            with _step(result, "measure what a drafted token costs on this CPU", echo) as step:
                step["summary"] = _measure_draft_cost(folder)
        with _step(result, f"validate (soak {soak})", echo) as step:
            step["summary"] = _validate(result, model_dir, suite, min_pass, soak)
        _write_report(result, model_dir)
        with _step(result, "register in the cache", echo):
            entry = store.add(model_dir, name=name, force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.cached_path = str(entry.path)
    result.report_path = str(Path(entry.path) / REPORT)
    return result


def _variant(precision: str, quantization: dict | str | None):
    """What to build: a named sweep variant, or a precision with QuantizationOptions fields."""
    from slmops.convert.options import quantization_options
    from slmops.convert.variants import INT4_VARIANTS, Variant

    if precision == "int4" and isinstance(quantization, str):
        name = quantization
        if name not in INT4_VARIANTS:
            raise UsageError(f"Unknown INT4 variant {name!r}; `slmops sweep --list-variants` lists them.")
        return INT4_VARIANTS[name]
    if isinstance(quantization, str):
        raise UsageError(f"--quantization {quantization} names an INT4 variant, but the precision is {precision}.")
    settings_ = quantization if precision in ("int4", "int8") and quantization else {}
    if settings_:
        quantization_options(**settings_)  # a bad setting stops the deploy now, in one line
    return Variant(precision if not settings_ else f"{precision}-custom", precision, dict(settings_))


def build(variant, source, folder: Path, fp32_folder: Path | None, echo=lambda line: None) -> None:
    from slmops.convert.variants import build as build_variant

    build_variant(variant, source, folder, fp32_folder, name=folder.name, echo=echo)


def _reference(source, work: Path) -> Path:
    from slmops.deploy.choice import reference_export

    return reference_export(source, work / REFERENCE)


def _read_scored(candidate: Path) -> dict | None:
    from slmops.deploy.choice import scored_report

    report = scored_report(candidate)
    return json.loads(report.read_text(encoding="utf-8")) if report.exists() else None


def _scored_as(quality: dict | None, how: str) -> tuple[dict, str] | None:
    """An eval report of the pick made before this step, and how the eval step names it."""
    return (quality, how) if quality is not None else None


def _evaluate(
    result: DeployResult,
    work: Path,
    source,
    model_dir: Path,
    windows: int,
    max_ppl_increase,
    scored: tuple[dict, str] | None,
) -> str:
    from slmops.deploy.choice import REFERENCE_LOGPROBS, saved_reference
    from slmops.evaluate.quality import evaluate_quality

    reference = work / REFERENCE
    if scored is not None:  # the same bytes on the same windows against the same FP32 log-probs
        quality = {**scored[0], "model": str(model_dir)}
    else:
        logprobs = saved_reference(_reference(source, work), windows)  # saved while choosing, when deploy chose
        quality = evaluate_quality(model_dir, reference=logprobs).to_json()
    shutil.rmtree(reference, ignore_errors=True)
    shutil.rmtree(work / REFERENCE_LOGPROBS, ignore_errors=True)
    result.quality = quality
    figures = quality["figures"]
    summary = (
        f"PPL {figures['ppl']:.2f} vs {figures['ref_ppl']:.2f} (ΔPPL {figures['delta_ppl_pct']:+.1f}%), "
        f"KLD {figures['kld_mean']:.3f}, same top token {figures['same_top_pct']:.1f}%"
    )
    if max_ppl_increase is not None and figures["delta_ppl_pct"] > max_ppl_increase:
        raise DeployFailed(
            f"{summary}: ΔPPL is above the {max_ppl_increase:g}% limit; try --precision int8 or --max-ppl-increase."
        )
    return summary + (f", {scored[1]}" if scored is not None else "")


def _validate(result: DeployResult, model_dir: Path, suite, min_pass: float, soak: int) -> str:
    from slmops.evaluate.completion import COMPLETION
    from slmops.evaluate.validate import validate

    report = validate(
        model_dir, suite=suite, min_pass=min_pass, soak=soak, lengths=DEPLOY_LENGTHS, advisory_suite=suite is None
    )
    result.validation = report.to_json()
    summary = ", ".join(f"{check.item} {check.status}" for check in report.checks)
    if report.mode == COMPLETION:
        summary += " (a base model: checked on raw completions)"
    if not report.passed:
        failed = "; ".join(f"item {c.item} {c.name}: {c.summary}" for c in report.checks if c.status == "FAIL")
        raise DeployFailed(f"validation failed: {failed}")
    return summary


def _measure_draft_cost(folder: ModelFolder) -> str:
    """Keep in the folder what a verify's drafted position costs here (modelfolder/draft_cost.py)."""
    from slmops.bench.prompts import shipped_paragraphs
    from slmops.modelfolder import draft_cost
    from slmops.runtime.model import Model
    from slmops.runtime.speculative import measured_draft_cost

    model = Model.from_folder(folder)
    cost = measured_draft_cost(model.og_model, model.encode("\n\n".join(shipped_paragraphs()))[:DRAFT_COST_CONTEXT])
    draft_cost.write(folder.path, cost)
    return f"{cost.position_cost:.2f} decode steps a drafted token"


def _choose(
    result: DeployResult, work: Path, source, source_sha: str, windows: int, max_ppl_increase, echo
) -> tuple[str, str]:
    """Pick the export by its measured speed here; returns the candidate's name and the step's summary."""
    from slmops.deploy.choice import choose

    any_precision = result.precision == "auto"
    choice, _ = choose(
        source,
        work,
        work / REFERENCE,
        name=result.name,
        any_precision=any_precision,
        max_ppl_increase=max_ppl_increase,
        windows=windows,
        source_sha=source_sha,
        echo=echo,
    )
    result.choice = choice.to_json()
    for row in choice.rows:
        echo(f"    {row.figures()}")
    if choice.int8_verdict:
        echo(f"    {choice.int8_verdict}")
    if choice.pick is None:
        raise DeployFailed(f"{choice.reason}; raise --max-ppl-increase or pass --precision int8.")
    result.precision = choice.precision
    return choice.pick, choice.reason + (" (figures measured by an earlier deploy)" if choice.reused else "")


class _step:
    """Times and reports one step; on failure, saves the report and stops the deploy."""

    def __init__(self, result: DeployResult, title: str, echo):
        self.result, self.title, self.echo = result, title, echo
        self.record: dict[str, Any] = {"step": title, "status": "running"}

    def __enter__(self) -> dict:
        self.started = time.perf_counter()
        self.echo(f"[{len(self.result.steps) + 1}] {self.title} ...")
        self.result.steps.append(self.record)
        return self.record

    def __exit__(self, kind, error, tb) -> None:
        self.record["seconds"] = round(time.perf_counter() - self.started, 1)
        if error is None:
            self.record["status"] = "done"
            self.echo(
                f"    done in {self.record['seconds']:.0f} s"
                + (f": {self.record['summary']}" if "summary" in self.record else "")
            )
            return
        self.record.update(status="failed", error=str(error))
        if isinstance(error, (KeyboardInterrupt, SystemExit)) or not isinstance(error, Exception):
            return
        path = _save_failure(self.result)
        message = (
            f"Deploy of {self.result.name} stopped at '{self.title}': {error} Report: {path}. The cache is unchanged."
        )
        raise DeployFailed(message) from error


def settings_text(quantization: dict | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in quantization.items())})" if quantization else ""


def _write_report(result: DeployResult, folder: Path) -> None:
    """The report travels inside the model folder, so the cache entry carries its evidence."""
    write_json(folder / REPORT, result.to_json(), default=str)
    (folder / REPORT_MARKDOWN).write_text(report_markdown(result), encoding="utf-8")


def report_markdown(result: DeployResult) -> str:
    from slmops.evaluate.completion import COMPLETION
    from slmops.evaluate.report import completion_note

    lines = [
        f"# Deploy of {result.name}",
        "",
        f"{result.variant}{settings_text(result.quantization)}",
        "",
        f"CPU: {cpu_summary(result.cpu_info)}.",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} | {s.get('summary', s.get('error', ''))} |"
        for s in result.steps
    ]
    if result.validation:
        if result.validation.get("mode") == COMPLETION:
            lines += ["", completion_note(result.name)]
        lines += ["", "| # | check | result | evidence |", "|---|---|---|---|"]
        lines += [
            f"| {c['item']} | {c['name']} | {c['status']} | {c['summary']} |" for c in result.validation["checks"]
        ]
    return "\n".join(lines) + "\n"


def _save_failure(result: DeployResult) -> Path:
    path = settings.home() / "reports" / f"deploy-{result.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return write_json(path, result.to_json(), default=str)


def _refuse_existing(name: str, force: bool) -> None:
    from slmops.cache import store
    from slmops.errors import ModelNotFound

    try:
        existing = store.find(name, include_invalid=True)
    except ModelNotFound:
        return
    if not force:
        raise UsageError(
            f"A model named {existing.name!r} is already in the cache ({existing.path}); "
            "pass --force to replace it, or pick another --name."
        )


def _work_folder() -> Path:
    """A private folder under SLMOPS_HOME/tmp; folders of deploys that died are removed first."""
    import psutil

    root = settings.home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("deploy-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"deploy-{os.getpid()}-", dir=root))
