"""Which export `deploy` ships, chosen on the CPU that will serve it.

onnxruntime picks its int4 and int8 kernels by instruction set: on an AVX-512 VNNI CPU
blocks of 128 decode almost twice as fast as blocks of 32, on an AVX2 one they do not,
and INT8 can beat every INT4 layout. So `deploy` builds a few candidates, scores each
against the FP32 export, measures their decode speed here (interleaved rounds, each
model in a fresh process) and picks by one rule: **within the quality budget
(--max-ppl-increase), the fastest; speeds within 5% count as a tie, won by the smallest.**

What was measured is kept in ``$SLMOPS_HOME/deploy-measurements.json``, keyed by the CPU
(model and flags), the model (its source's sha256) and the candidate, so a second deploy of
the same model on the same machine builds only the one it picks, and not even that while the
cache holds it (slmops.deploy.reuse).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmops import settings
from slmops.convert.layouts import COARSE, FINE
from slmops.files import write_json
from slmops.machine import key as machine_key

# INT4 at the layouts onnxruntime's CPU kernels run fast (integer zero points): slmops' calibrated quantizer
# (rotated, GPTQ in graph order on the quantized model's inputs, the LM head read at 4 bits with its top tokens
# rescored, and the share of the layer weights whose 8 bits measurably help most). Its layout is chosen by
# timing this CPU's kernels on the model's layer shapes (slmops.convert.layouts): 4-bit blocks of 64 with 32%
# 8-bit (SmolLM2 +0.6% ΔPPL, top-1 90.0%, KLD 0.038 on 32 windows of 512 tokens, in 116.5 MB), or, where its
# kernels run them as fast, blocks of 32 with 22% 8-bit in the same bytes (KLD 0.036; Qwen2.5-Coder-0.5B
# 0.040 -> 0.036, top-1 90.8% -> 91.5%). docs/quality.md has the measured frontier. The builder's
# k_quant_mixed at blocks of 128 was a candidate too, and on every model and CPU measured it was over the
# default budget (SmolLM2 +20%, off the grid +24%, Qwen2.5-Coder-0.5B +18%) at about the calibrated export's
# speed, while building, scoring and timing it took a tenth of a first deploy of SmolLM2 and a fifth of the
# 0.5B model's (on a 2-core AVX2 CPU, ~65 s and ~5 min):
# `--quantization int4-k_quant_mixed-b128` still builds it, and `slmops sweep` measures it beside the others.
# While the calibrated export is over the budget, the next step keeps more of the layer weights 8-bit
# (50%, 75%) at the same 4-bit blocks: slower, closer, still faster than INT8. Qwen2.5-Coder-0.5B (Zen 5,
# AVX-512), before its down projections' inputs were rotated: 25% ΔPPL +12.4%, 50% +9.0%, 75% +6.2%,
# decoding about 1.3x, 1.25x, 1.2x INT8 (medians of per-round ratios); since, its 25% export measured +8.6%,
# within budget (docs/quality.md).
CALIBRATED_STEPS = {
    block: (f"int4-calibrated-b{block}", f"int4-calibrated-b{block}-int8-50", f"int4-calibrated-b{block}-int8-75")
    for block in (COARSE.block_size, FINE.block_size)
}
KERNELS = "kernel times"  # beside a model's candidates in the book: its layer mixes timed on this CPU (ms)
# A quantized GGUF's own blocks (exact, blocks of 32): no rounding beyond the source's. Qwen2.5-Coder-0.5B
# Q4_K_M: ΔPPL +0.15% where every requantized INT4 was over +12% (docs/quality.md).
GGUF_EXACT = "int4-gguf-exact"
INT8 = "int8"
TIE = 0.05  # decode speeds within 5% of the fastest are a tie
SPEED_ROUNDS = 2
SPEED_TOKENS = 64
# Earlier figures were timed with prompt lookup on, which a looping answer speeds up: kept figures
# without this mark are timed again.
TIMING = f"{SPEED_TOKENS} greedy tokens, one a step"
BOOK = "deploy-measurements.json"
REFERENCE_LOGPROBS = "reference-logprobs"  # beside the FP32 export in deploy's work folder


@dataclass
class Measured:
    """One candidate's figures on this machine."""

    candidate: str
    precision: str
    size_mb: float
    delta_ppl_pct: float
    same_top_pct: float
    decode_tokens_per_s: float
    speed_samples: list[float] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)  # of the host while its speed was measured
    how: str = ""  # how the export was made: a figure measured on another quantizer is measured again
    timing: str = ""  # how its speed was timed: a figure timed otherwise is timed again
    windows: int = 0  # the eval windows its quality was scored on: other windows, scored again

    def figures(self) -> str:
        return (
            f"{self.candidate}: {self.decode_tokens_per_s:.0f} tokens/s, ΔPPL {self.delta_ppl_pct:+.1f}%, "
            f"top-1 {self.same_top_pct:.0f}%, {self.size_mb:.0f} MB"
        )


@dataclass
class Choice:
    """What `deploy` picked, why, and every candidate's figures."""

    pick: str | None
    reason: str
    rows: list[Measured]
    machine: str
    reused: bool  # every figure came from an earlier deploy on this machine
    int8_verdict: str | None = None  # set when INT8 beats every INT4 candidate here
    layout: str = ""  # the calibrated layout this CPU's kernels chose, with their times

    @property
    def precision(self) -> str:
        return INT8 if self.pick == INT8 else "int4"

    def to_json(self) -> dict:
        return asdict(self)


def pick(rows: list[Measured], max_ppl_increase: float | None) -> tuple[Measured | None, str]:
    """The rule: within the budget, the fastest; ties (within 5%) to the smallest."""
    within = [row for row in rows if max_ppl_increase is None or row.delta_ppl_pct <= max_ppl_increase]
    budget = "any ΔPPL" if max_ppl_increase is None else f"ΔPPL ≤ {max_ppl_increase:g}%"
    if not within:
        closest = min(rows, key=lambda row: row.delta_ppl_pct)
        return None, f"no candidate is within {budget}; the closest is {closest.figures()}"
    fastest = max(row.decode_tokens_per_s for row in within)
    tied = [row for row in within if row.decode_tokens_per_s >= fastest * (1 - TIE)]
    best = min(tied, key=lambda row: (row.size_mb, -row.decode_tokens_per_s))
    why = "the fastest" if len(tied) == 1 else f"the smallest of {len(tied)} within 5% of the fastest"
    return best, f"{best.figures()}: {why} within {budget} on this CPU"


def int8_verdict(rows: list[Measured]) -> str | None:
    """A sentence when INT8 is faster and closer to FP32 than every INT4 candidate of ``rows``."""
    int8 = next((row for row in rows if row.candidate == INT8), None)
    int4 = [row for row in rows if row.candidate != INT8]
    if int8 is None or not int4:
        return None
    if all(
        int8.decode_tokens_per_s > row.decode_tokens_per_s and int8.delta_ppl_pct < row.delta_ppl_pct for row in int4
    ):
        others = "; ".join(row.figures() for row in int4)
        return (
            f"INT8 dominates every INT4 candidate within the quality budget on this CPU: {int8.figures()}, against {others}. "
            "`--precision auto` picks INT8."
        )
    return None


class MeasurementBook:
    """The figures of earlier deploys: machine -> model -> candidate -> Measured."""

    def __init__(self, path: Path | None = None):
        self.path = path or settings.home() / BOOK
        self.data: dict = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}

    def get(self, machine: str, model: str, candidate: str, how: str, windows: int) -> Measured | None:
        row = self.data.get(machine, {}).get(model, {}).get(candidate)
        if not row or row.get("how") != how or row.get("timing") != TIMING or row.get("windows") != windows:
            return None
        return Measured(**row)

    def put(self, machine: str, model: str, row: Measured) -> None:
        self.data.setdefault(machine, {}).setdefault(model, {})[row.candidate] = asdict(row)

    def kernel_times(self, machine: str, model: str) -> dict[str, list[float]] | None:
        return self.data.get(machine, {}).get(model, {}).get(KERNELS)

    def put_kernel_times(self, machine: str, model: str, times: dict[str, list[float]]) -> None:
        self.data.setdefault(machine, {}).setdefault(model, {})[KERNELS] = times

    def save(self) -> None:
        write_json(self.path, self.data)


def measure_speeds(folders: dict[str, Path], rounds: int = SPEED_ROUNDS) -> dict[str, list[float]]:
    """Decode tokens/s of each folder, ``rounds`` interleaved rounds (the order rotates), a fresh process each."""
    from slmops.evaluate.speed import measure

    names = list(folders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(
                round(measure(folders[name], new_tokens=SPEED_TOKENS, repeats=2).decode_tokens_per_s, 1)
            )
    return samples


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def choose(
    source: Path | None,
    work: Path,
    reference: Path,
    *,
    name: str,
    any_precision: bool,
    max_ppl_increase: float | None,
    windows: int,
    source_sha: str | None = None,
    echo=lambda line: None,
) -> tuple[Choice, dict[str, Path]]:
    """Measure the candidates not yet measured on this machine, then pick; returns the folders built.

    The calibrated export's layout is the one this CPU's kernels run as fast (calibrated_steps).
    INT8 is always measured, so `deploy` can say when it beats every INT4 candidate; it is
    picked only with ``any_precision`` (`--precision auto`). While the calibrated export is over
    the budget, it is made again with more 8-bit weights (CALIBRATED_STEPS). ``source_sha``: the
    source's sha256, when the caller has it already.
    """
    from slmops.convert.sources import inspect_source, source_hash

    info = inspect_source(source)
    book = MeasurementBook()
    model = source_sha or source_hash(info)
    machine = machine_key()
    steps, layout = calibrated_steps(book, machine, model, source, reference, echo)
    measure = _Measurer(book, machine, model, (source, work, reference, name, windows), echo)
    rows = measure(default_candidates(info, steps))
    for previous, candidate in zip(steps, steps[1:]):
        last = next((row for row in rows if row.candidate == previous), None)
        if max_ppl_increase is None or last is None or last.delta_ppl_pct <= max_ppl_increase:
            break
        echo(f"    {previous} is over ΔPPL ≤ {max_ppl_increase:g}%: {candidate} keeps more weights 8-bit")
        rows += measure((candidate,))
    eligible = rows if any_precision else [row for row in rows if row.precision == "int4"]
    best, reason = pick(eligible, max_ppl_increase)
    choice = Choice(best.candidate if best else None, reason, rows, machine, reused=not measure.folders, layout=layout)
    # INT4 exports over the budget are out of the race: INT8 is weighed against the others.
    within = [row for row in rows if max_ppl_increase is None or row.delta_ppl_pct <= max_ppl_increase]
    choice.int8_verdict = int8_verdict([row for row in rows if row.candidate == INT8 or row in within])
    return choice, measure.folders


def calibrated_steps(
    book: MeasurementBook, machine: str, model: str, source: Path | None, reference: Path, echo
) -> tuple[tuple[str, ...], str]:
    """The calibrated candidates at the layout this CPU's kernels run as fast (slmops.convert.layouts), and
    why; the layer mixes are timed on the FP32 export's shapes once per machine and model, then kept."""
    from slmops.convert import layouts
    from slmops.runtime.threads import default_threads

    times = book.kernel_times(machine, model)
    if times is None:
        shapes = layouts.layer_shapes(reference_export(source, reference))
        echo("    timing this CPU's 4-bit kernels at blocks of 32 and 64 on the model's layer shapes")
        times = layouts.time_kernels(shapes, default_threads())
        book.put_kernel_times(machine, model, times)
        book.save()
    why = layouts.verdict(times)
    echo(f"    {why}")
    return CALIBRATED_STEPS[layouts.faster_layout(times).block_size], why


@dataclass
class _Measurer:
    """Figures of candidates: from the book when this machine measured them, else built and measured now."""

    book: MeasurementBook
    machine: str
    model: str
    job: tuple  # source, work folder, reference folder, model name, eval windows
    echo: Callable[[str], object]
    folders: dict[str, Path] = field(default_factory=dict)  # the candidates built
    rows: dict[str, Measured] = field(default_factory=dict)  # and their figures
    kept: dict[str, Measured] = field(default_factory=dict)  # figures read from the book, not built

    def __call__(self, candidates: tuple[str, ...]) -> list[Measured]:
        source, work, reference, name, windows = self.job
        known = {
            candidate: self.book.get(self.machine, self.model, candidate, how(candidate), windows)
            for candidate in candidates
        }
        self.kept.update({candidate: row for candidate, row in known.items() if row is not None})
        missing = [candidate for candidate, row in known.items() if row is None]
        if missing:
            self.echo(f"    measuring {', '.join(missing)} on this CPU (kept in {self.book.path} for the next deploy)")
            reference_export(source, reference)
            built = {
                candidate: _build(candidate, source, work, reference, name, self.model, self.echo)
                for candidate in missing
            }
            self.echo(f"    scoring {len(built)} against the FP32 export ({windows} windows of 512 tokens)")
            for candidate, row in _scored(built, reference, windows).items():
                known[candidate] = self.rows[candidate] = row
            self.folders.update(built)
            self._again()
            self._time_all()
        return [row for row in known.values() if row is not None]

    def _again(self) -> None:
        """The candidates read from the book that are cheap to have again (a builder's conversion, or the
        cache's copy of a calibrated one), built to be timed beside the new ones: a host's speed moves by half
        between days (SmolLM2's decode 93 -> 138 tokens/s on one 2-core AVX2 CPU), so speeds kept from another
        run do not compare. Their quality figures are kept: they do not depend on the host."""
        from slmops.deploy import reuse

        source, work, reference, name, _ = self.job
        cheap = {
            candidate: row
            for candidate, row in self.kept.items()
            if candidate not in self.folders
            and (
                not _variant(candidate).post_build
                or reuse.find_earlier(reuse.build_key(self.model, _variant(candidate)))
            )
        }
        if cheap:
            self.echo(f"    {', '.join(cheap)}: measured before; built again to be timed beside the new")
        for candidate, row in cheap.items():
            self.folders[candidate] = _build(candidate, source, work, reference, name, self.model, self.echo)
            self.rows[candidate] = row

    def _time_all(self) -> None:
        """Decode speeds of every export built so far, in one interleaved run: a shared host's speed
        drifts by tens of percent within minutes, so speeds measured apart do not compare."""
        self.echo(f"    timing the decode speeds of {len(self.folders)} ({SPEED_ROUNDS} interleaved rounds)")
        speeds = measure_speeds(self.folders)
        load = [round(value, 2) for value in os.getloadavg()]
        for candidate, samples in speeds.items():
            row = self.rows[candidate]
            row.decode_tokens_per_s, row.speed_samples, row.load_average = median(samples), samples, load
            row.timing = TIMING
            self.book.put(self.machine, self.model, row)
        self.book.save()


def default_candidates(info, steps: tuple[str, ...]) -> tuple[str, ...]:
    """The calibrated export's first step, the GGUF's exact blocks when the source has any, and INT8."""
    from slmops.convert.gguf_blocks import has_exact_blocks

    exact = (GGUF_EXACT,) if info.gguf is not None and has_exact_blocks(info.gguf) else ()
    return (steps[0], *exact, INT8)


def _variant(candidate: str):
    from slmops.convert.variants import INT4_VARIANTS, Variant

    return INT4_VARIANTS[candidate] if candidate in INT4_VARIANTS else Variant(candidate, candidate)


def how(candidate: str) -> str:
    """The candidate's conversion as its report says it, the quantizer's settings included."""
    from slmops.deploy.reuse import build_note

    return build_note(_variant(candidate))


def reference_export(source: Path | None, reference: Path) -> Path:
    """The FP32 export the candidates are scored against and the post-build quantizers start from,
    converted the first time a deploy needs it."""
    if not reference.exists():
        from slmops.convert import convert

        convert(source, reference, precision="fp32", name=reference.name, log_level=0)
    return reference


def _build(
    candidate: str, source: Path | None, work: Path, reference: Path, name: str, model: str, echo=lambda line: None
) -> Path:
    """The candidate's export: copied from the cache when a deploy built it the same way here, else built."""
    from slmops.convert.variants import build
    from slmops.deploy import reuse

    folder = work / "candidates" / candidate
    if earlier := reuse.find_earlier(reuse.build_key(model, _variant(candidate))):
        reuse.copy_export(earlier.path, folder)
        echo(f"    {candidate}: copied from {earlier.name} in the cache, built the same way")
        return folder
    echo(f"    {candidate}: building")
    started = time.perf_counter()
    # the calibrated steps differ only in their share of 8-bit weights: each starts from the one before
    steps = work / "calibrated-steps"
    build(
        _variant(candidate), source, folder, reference, name=name, steps=steps, echo=lambda line: echo(f"      {line}")
    )
    echo(f"    {candidate}: built in {time.perf_counter() - started:.0f} s")
    return folder


def saved_reference(reference: Path, windows: int) -> Path:
    """The FP32 export's log-probs on the first ``windows`` eval windows, saved beside it once: every
    candidate is scored against them, so the FP32 graph runs once a deploy, not once a candidate."""
    from slmops.evaluate.quality import evaluate_quality

    saved = reference.with_name(REFERENCE_LOGPROBS)
    if not (saved / "meta.json").exists():
        evaluate_quality(reference, windows=windows, save_logits=saved, show_progress=False)
    return saved


def scored_report(folder: Path) -> Path:
    """Where a candidate's quality report is kept, beside its folder: deploy's eval of the pick reads it
    rather than scoring the same windows against the same reference again."""
    return folder.with_name(f"{folder.name}.quality.json")


def _scored(folders: dict[str, Path], reference: Path, windows: int) -> dict[str, Measured]:
    """Size and quality against the reference; the speed is timed afterwards (``_Measurer._time_all``)."""
    from slmops.evaluate.quality import evaluate_quality

    logprobs = saved_reference(reference, windows)
    quality = {}
    for candidate, folder in folders.items():
        report = evaluate_quality(folder, reference=logprobs, show_progress=False)
        write_json(scored_report(folder), report.to_json())
        quality[candidate] = report.figures
    return {
        candidate: Measured(
            candidate=candidate,
            precision=_variant(candidate).precision,
            size_mb=round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1),
            delta_ppl_pct=round(quality[candidate].delta_ppl_pct or 0.0, 2),
            same_top_pct=round(quality[candidate].same_top_pct or 0.0, 2),
            decode_tokens_per_s=0.0,
            how=how(candidate),
            windows=windows,
        )
        for candidate, folder in folders.items()
    }
