"""The sweep: every case on every target, interleaved, repeated until the medians settle.

Targets take turns inside each repetition (and the order rotates), so a burst of
load on a shared machine hits them all alike and their ratios stay meaningful.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import product

from slmops.bench import schema
from slmops.bench.prompts import PromptSource
from slmops.bench.stats import CaseStats, Goodput, RequestRecord, median_is_stable, summarize
from slmops.bench.system import Monitor, Usage
from slmops.bench.targets import Clock, Target
from slmops.errors import UsageError

DEFAULT_PROMPT_LENGTHS = (32, 128, 512, 1024, 2048)
MIN_REPS, MAX_REPS = 3, 10


@dataclass
class Sweep:
    """What to measure.

    Attributes:
        prompt_lengths: prompt sizes in tokens (clipped to the smallest context).
        output_lengths: tokens to generate per request.
        concurrency: simultaneous requests per batch.
        reps: batches per case; None repeats until the median is stable (3 to 10).
        warmup: unmeasured requests per target before the first case.
        goodput: objectives for the goodput figure, or None.
    """

    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    output_lengths: tuple[int, ...] = (128,)
    concurrency: tuple[int, ...] = (1,)
    reps: int | None = None
    warmup: int = 1
    goodput: Goodput | None = None

    def cases(self) -> list[tuple[int, int, int]]:
        return list(product(self.concurrency, self.output_lengths, self.prompt_lengths))


@dataclass
class CaseResult:
    target: str
    prompt_tokens: int
    output_tokens: int
    concurrency: int
    stats: CaseStats
    queue_delay_ms: float | None = None
    roofline_pct: float | None = None
    rss_peak_mb: float | None = None
    rss_steady_mb: float | None = None
    cpu_percent: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class BenchResult:
    """Everything one run measured; ``to_dict()`` is the documented JSON document."""

    system: dict
    memory_bandwidth_gb_s: float | None
    settings: dict
    targets: list[dict]
    cases: list[CaseResult] = field(default_factory=list)
    ratios: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        document = {"schema": "slmops-bench", "schema_version": schema.SCHEMA_VERSION, **dataclasses.asdict(self)}
        schema.validate(document)
        return document


def run_benchmark(
    targets: list[Target],
    sweep: Sweep,
    source: PromptSource,
    system: dict,
    bandwidth_gb_s: float | None = None,
    on_case: Callable[[CaseResult, int, int], None] | None = None,
    clock: Clock = time.perf_counter,
) -> BenchResult:
    """Load every target, then run every case of ``sweep`` on all of them, interleaved.

    Args:
        targets: what to measure; the first is the one the ratios are about.
        sweep: the cases and how often to repeat them.
        source: the prompts.
        system: the machine description (``system.system_info()``).
        bandwidth_gb_s: the machine's memory bandwidth, for the roofline.
        on_case: called with each finished case, its index and the number of cases.
        clock: the timestamp source (a fake one in tests).
    """
    descriptions = [_load(target) for target in targets]
    sweep = _clip(sweep, targets)
    result = BenchResult(system=system, memory_bandwidth_gb_s=None, settings=_settings(sweep), targets=descriptions)
    set_bandwidth(result, bandwidth_gb_s)
    for target in targets:
        for i in range(sweep.warmup):
            target.request(source.prompt(32, 1000 + i), 8, clock)
    cases = sweep.cases()
    for index, (concurrency, output, prompt) in enumerate(cases):
        for case in _run_case(targets, sweep, source, prompt, output, concurrency, clock):
            _set_roofline_pct(case, result)
            _finish(case, result)
            result.cases.append(case)
            if on_case:
                on_case(case, index, len(cases))
    result.ratios = ratios(result.cases, [d["label"] for d in descriptions])
    return result


def set_bandwidth(result: BenchResult, gb_s: float | None) -> None:
    """Set the memory bandwidth and the roofline figures that follow from it."""
    result.memory_bandwidth_gb_s = gb_s
    for target in result.targets:
        target["roofline_tps"] = gb_s * 1e9 / target["weight_bytes"] if gb_s and target["weight_bytes"] else None
    for case in result.cases:
        _set_roofline_pct(case, result)


def _set_roofline_pct(case: CaseResult, result: BenchResult) -> None:
    roofline = next(target["roofline_tps"] for target in result.targets if target["label"] == case.target)
    decode = case.stats.decode_tps
    case.roofline_pct = 100 * decode.median / roofline if roofline and decode else None


def above_roofline(result: BenchResult) -> list[CaseResult]:
    """Cases that decoded faster than the measured bandwidth seems to allow."""
    return [case for case in result.cases if case.roofline_pct and case.roofline_pct > 100]


def _load(target: Target) -> dict:
    load_s = target.load()
    description = target.describe()
    return {
        **description,
        "model": description.get("model"),
        "library": description.get("library", ""),
        "load_s": load_s,
        "weight_bytes": target.weight_bytes,
        "roofline_tps": None,
        "pid": target.pid,
    }


def _clip(sweep: Sweep, targets: list[Target]) -> Sweep:
    """Clip prompt lengths to what the smallest context holds beside the longest output.

    A length beyond it is measured at the longest prompt that fits, so the longest
    case a model can serve is always part of the sweep.
    """
    contexts = [t.context_length for t in targets if t.context_length]
    if not contexts:
        return sweep
    room = min(contexts) - max(sweep.output_lengths)
    if room < 1:
        raise UsageError(
            f"An output of {max(sweep.output_lengths)} tokens leaves no room for a prompt in a context of "
            f"{min(contexts)} tokens; use shorter --output-lengths."
        )
    kept = tuple(dict.fromkeys(min(n, room) for n in sweep.prompt_lengths))
    return dataclasses.replace(sweep, prompt_lengths=kept)


def _settings(sweep: Sweep) -> dict:
    return {
        "prompt_lengths": list(sweep.prompt_lengths),
        "output_lengths": list(sweep.output_lengths),
        "concurrency": list(sweep.concurrency),
        "reps": sweep.reps,
        "warmup": sweep.warmup,
        "goodput": dataclasses.asdict(sweep.goodput) if sweep.goodput else None,
    }


def _run_case(targets, sweep, source, prompt_len, output_len, concurrency, clock) -> list[CaseResult]:
    active = [t for t in targets if concurrency <= t.max_concurrency]
    records: dict[int, list[RequestRecord]] = {id(t): [] for t in active}
    durations: dict[int, float] = {id(t): 0.0 for t in active}
    usages: dict[int, list[Usage]] = {id(t): [] for t in active}
    for rep in range(sweep.reps or MAX_REPS):
        order = active[rep % len(active) :] + active[: rep % len(active)] if active else []
        for target in order:
            prompts = [source.prompt(prompt_len, rep * concurrency + i) for i in range(concurrency)]
            with Monitor(target.pid) as monitor:
                batch, seconds = run_batch(target, prompts, output_len, clock)
            records[id(target)] += batch
            durations[id(target)] += seconds
            if monitor.usage:
                usages[id(target)].append(monitor.usage)
        if sweep.reps is None and rep + 1 >= MIN_REPS and all(_stable(records[id(t)]) for t in active):
            break
    return [
        _case(t, prompt_len, output_len, concurrency, records[id(t)], durations[id(t)], usages[id(t)], sweep.goodput)
        for t in active
    ]


def _stable(records: list[RequestRecord]) -> bool:
    return median_is_stable([r.e2el for r in records if r.ok])


def run_batch(target: Target, prompts, max_tokens: int, clock: Clock) -> tuple[list[RequestRecord], float]:
    """Send all prompts at once (one thread each); return the records and the batch's wall time."""
    if len(prompts) == 1:
        start = clock()
        record = target.request(prompts[0], max_tokens, clock)
        return [record], clock() - start
    results: list[RequestRecord | None] = [None] * len(prompts)

    def send(i: int) -> None:
        results[i] = target.request(prompts[i], max_tokens, clock)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    start = clock()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None], clock() - start


def _case(target, prompt_len, output_len, concurrency, records, duration, usages, goodput) -> CaseResult:
    return CaseResult(
        target=target.label,
        prompt_tokens=prompt_len,
        output_tokens=output_len,
        concurrency=concurrency,
        stats=summarize(records, duration, goodput),
        rss_peak_mb=max((u.rss_peak_mb for u in usages), default=None),
        rss_steady_mb=statistics.median([u.rss_steady_mb for u in usages]) if usages else None,
        cpu_percent=statistics.fmean([u.cpu_percent for u in usages]) if usages else None,
        errors=sorted({r.error for r in records if r.error})[:5],
    )


def _finish(case: CaseResult, result: BenchResult) -> None:
    """Fill the figures that need other cases: queueing delay, warnings."""
    single = next(
        (
            c
            for c in result.cases
            if (c.target, c.prompt_tokens, c.output_tokens, c.concurrency)
            == (case.target, case.prompt_tokens, case.output_tokens, 1)
        ),
        None,
    )
    if case.concurrency > 1 and single and single.stats.ttft_ms and case.stats.ttft_ms:
        # Extra wait for the first token compared with an idle server: time spent queued.
        case.queue_delay_ms = max(0.0, case.stats.ttft_ms.median - single.stats.ttft_ms.median)
    where = f"{case.target} prompt={case.prompt_tokens} out={case.output_tokens} c={case.concurrency}"
    if case.stats.noisy:
        result.warnings.append(f"{where}: spread above 15% of the mean; the machine was busy, treat as noisy")
    if case.stats.failed:
        result.warnings.append(f"{where}: {case.stats.failed} of {case.stats.requests} requests failed")


def ratios(cases: list[CaseResult], labels: list[str]) -> list[dict]:
    """How much faster the first target is than each other one, case by case (>1: the first is faster)."""
    if len(labels) < 2:
        return []
    by_key = {(c.target, c.prompt_tokens, c.output_tokens, c.concurrency): c for c in cases}
    rows = []
    for (label, p, o, c), case in by_key.items():
        if label != labels[0]:
            continue
        for other in labels[1:]:
            peer = by_key.get((other, p, o, c))
            if peer is None:
                continue
            rows.append(
                {
                    "prompt_tokens": p,
                    "output_tokens": o,
                    "concurrency": c,
                    "target": label,
                    "reference": other,
                    "decode_speedup": _ratio(case.stats.decode_tps, peer.stats.decode_tps),
                    "ttft_speedup": _ratio(peer.stats.ttft_ms, case.stats.ttft_ms),
                }
            )
    return rows


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None or not denominator.median:
        return None
    return numerator.median / denominator.median
