"""`slmops validate`: the five-item deployment checklist, each item measured.

1. domain answers: the suite's pass rate reaches ``min_pass``;
2. answer format: every case with a structural expectation (JSON schema, regex) passes;
3. memory: RSS stays flat over a soak of short generations (fit after warm-up);
4. performance across input lengths: decode time per token stays within a band, and
   time to first token grows no faster than the prompt;
5. edge cases and invalid input: each gives an answer or a clear slmops error, never
   a crash or a hang (they run in a child process, so even a segfault is reported).

A base model (``has_chat_template`` False: no chat template) refuses chats, so every
check then runs on raw completions (``mode`` "completion" in the report): the soak and
the suite complete text, the edge cases are given as raw text (see
:mod:`slmops.evaluate.completion` and :mod:`slmops.evaluate.edge_cases`).

The model is anything with the :class:`slmops.runtime.Model` methods used here
(``chat``, ``generate``, ``stream``, ``encode``, ``context_length``; a base model's
``has_chat_template`` and ``stream_generate``), so tests can hand in a double that is
built to fail. A double without ``has_chat_template`` is a chat model.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from slmops.evaluate import edge_cases
from slmops.evaluate.completion import CHAT, COMPLETION, mode_of
from slmops.evaluate.progress import progress_bar
from slmops.evaluate.suite import SuiteReport, load_suite, run_suite
from slmops.machine import describe_cpu

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DEFAULT_SOAK = 200
# A leak must be both steep and visible: allocators grow RSS in steps of a few MB.
LEAK_SLOPE_BYTES = 16 * 1024
LEAK_MIN_RISE_BYTES = 8 * 1024 * 1024
# Slowest / fastest per-token decode time across prompt lengths. Reading a longer KV
# cache costs a small model real time (SmolLM2 at 512 tokens reads ~25 MB of cache per
# token beside 86 MB of INT4 weights), so the band leaves room for that, not for a cliff.
DECODE_BAND = 2.0
DECODE_WARN_BAND = 3.0
DECODE_NOISE_MS = 2.0  # spreads smaller than this are scheduling noise (tiny models)
TTFT_NOISE_S = 0.25  # added to the linear bound: scheduling delays on a busy machine
TTFT_LINEAR_SLACK = 1.5  # TTFT ratio may exceed the length ratio by this factor
SOAK_PROMPTS = ("Hello!", "What is 2 + 2?", "Name a colour.", "Say one word.", "Count to three.")


@dataclass
class Check:
    """One checklist item: its verdict, a one-line summary and the evidence behind it."""

    item: int
    name: str
    status: str
    summary: str
    evidence: dict = field(default_factory=dict)


@dataclass
class ValidationReport:
    model: str
    checks: list[Check]
    suite: SuiteReport | None
    seconds: float
    mode: str = CHAT  # "completion": a base model, every check ran on raw completions
    cpu_info: dict = field(default_factory=lambda: describe_cpu().to_json())  # item 4 measures speed on it

    @property
    def passed(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def to_json(self) -> dict:
        data = asdict(self)
        data["suite"] = self.suite.to_json() if self.suite else None
        data["passed"] = self.passed
        return data


def default_suite() -> Path:
    from importlib import resources

    return Path(str(resources.files("slmops") / "data" / "example-suite.jsonl"))


def validate(
    model,
    *,
    suite: str | Path | None = None,
    min_pass: float = 0.9,
    soak: int = DEFAULT_SOAK,
    lengths: tuple[int, ...] = (32, 128, 512),
    edge_timeout_s: float = 60.0,
    advisory_suite: bool = False,
    show_progress: bool = True,
) -> ValidationReport:
    """Run the five checks on ``model`` (a cache name, a model folder, or a loaded model).

    Args:
        suite: a suite file (see :mod:`slmops.evaluate.suite`); None for the shipped example.
        min_pass: the pass rate item 1 needs.
        soak: generations for the memory check.
        lengths: prompt lengths in tokens for the performance check (capped by the context).
        edge_timeout_s: how long one edge case may take before it counts as a hang.
        advisory_suite: the suite is not the user's domain (deploy without --suite), so
            items 1 and 2 WARN instead of failing.
    """
    started = time.perf_counter()
    if isinstance(model, (str, Path)):
        from slmops.runtime import load

        model = load(model)
    suite_path = Path(suite) if suite else default_suite()
    report = run_suite(model, load_suite(suite_path), suite=suite_path.name, show_progress=show_progress)
    suite_checks = [check_domain(report, min_pass), check_format(report)]
    if advisory_suite:
        suite_checks = [_advisory(check) for check in suite_checks]
    checks = [
        *suite_checks,
        check_memory(model, soak, show_progress),
        check_lengths(model, lengths),
        check_edge_cases(model, edge_timeout_s),
    ]
    name = getattr(model, "name", str(model))
    return ValidationReport(name, checks, report, time.perf_counter() - started, mode_of(model))


def _advisory(check: Check) -> Check:
    if check.status != FAIL:
        return check
    summary = f"{check.summary}; the shipped example suite is not your domain: give yours with --suite"
    return Check(check.item, check.name, WARN, summary, {**check.evidence, "advisory": True})


def check_domain(report: SuiteReport, min_pass: float) -> Check:
    status = PASS if report.pass_rate >= min_pass else FAIL
    failed = [result.name for result in report.failures()]
    summary = f"{report.passed}/{report.total} cases pass ({report.pass_rate:.0%}; needs {min_pass:.0%})"
    return Check(
        1, "domain answers", status, summary, {"pass_rate": report.pass_rate, "min_pass": min_pass, "failed": failed}
    )


def check_format(report: SuiteReport) -> Check:
    structural = [result for result in report.results if result.structural]
    if not structural:
        return Check(2, "answer format", WARN, "the suite has no JSON-schema or regex case to check", {})
    failed = [result.name for result in structural if not result.passed]
    status = FAIL if failed else PASS
    summary = f"{len(structural) - len(failed)}/{len(structural)} structural cases pass"
    return Check(2, "answer format", status, summary, {"structural_cases": len(structural), "failed": failed})


def check_memory(model, soak: int, show_progress: bool = True) -> Check:
    """RSS after each of ``soak`` short generations; the least-squares slope after warm-up."""
    import psutil

    process = psutil.Process()
    completes = mode_of(model) == COMPLETION
    samples = []
    with progress_bar("soak", soak, show_progress) as advance:
        for index in range(soak):
            prompt = SOAK_PROMPTS[index % len(SOAK_PROMPTS)]
            if completes:
                model.generate(prompt, max_tokens=8, temperature=0.0)
            else:
                model.chat([{"role": "user", "content": prompt}], max_tokens=8, temperature=0.0)
            if index % 10 == 9:
                gc.collect()
            samples.append(process.memory_info().rss)
            advance()
    warmup = max(2, soak // 5)
    tail = np.asarray(samples[warmup:], dtype=np.float64)
    if len(tail) < 3:
        return Check(
            3, "memory", WARN, f"soak of {soak} is too short to fit a slope (use at least 10)", {"rss_bytes": samples}
        )
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0])
    rise = float(tail[-max(1, len(tail) // 5) :].mean() - tail[: max(1, len(tail) // 5)].mean())
    status = (
        FAIL if slope > LEAK_SLOPE_BYTES and rise > LEAK_MIN_RISE_BYTES else WARN if slope > LEAK_SLOPE_BYTES else PASS
    )
    summary = (
        f"RSS slope {slope / 1024:+.1f} KB/generation over {len(tail)} generations after {warmup} warm-up "
        f"(limit {LEAK_SLOPE_BYTES // 1024} KB with a rise over {LEAK_MIN_RISE_BYTES >> 20} MB); rise {rise / 2**20:+.1f} MB"
    )
    evidence = {
        "soak": soak,
        "warmup": warmup,
        "slope_bytes_per_generation": slope,
        "rise_bytes": rise,
        "limit_bytes_per_generation": LEAK_SLOPE_BYTES,
        "min_rise_bytes": LEAK_MIN_RISE_BYTES,
        "rss_first_mb": samples[0] / 2**20,
        "rss_last_mb": samples[-1] / 2**20,
    }
    return Check(3, "memory", status, summary, evidence)


def check_lengths(model, lengths: Sequence[int], new_tokens: int = 32, repeats: int = 2) -> Check:
    """Per-token decode time and TTFT at several prompt lengths (best of ``repeats``).

    The prompts are token ids completed as they are, with no chat template: the same
    measurement for chat and base models.
    """
    from slmops.evaluate.quality import shipped_text

    budget = model.context_length - new_tokens - 1
    lengths = sorted({min(length, budget) for length in lengths if length > 0})
    text_ids = model.encode(shipped_text().read_text(encoding="utf-8")[:20000])
    prompts = {length: (text_ids * (length // max(1, len(text_ids)) + 1))[:length] for length in lengths}
    runs: dict[int, list] = {length: [] for length in lengths}
    # Lengths interleaved: a burst of load from other processes hits all of them alike.
    for _ in range(repeats):
        for length in lengths:
            # Without prompt-lookup drafts: the repeated text would make long prompts decode
            # faster, and this check is about the kernels' time per token as the context grows.
            runs[length].append(
                model.generate(prompts[length], max_tokens=new_tokens, temperature=0.0, speculative=False)
            )
    rows = []
    for length in lengths:
        decoded = [run for run in runs[length] if run.completion_tokens > 2 and run.decode_tokens_per_s > 0]
        rows.append(
            {
                "prompt_tokens": length,
                "ttft_s": min(run.ttft_s for run in runs[length]),
                "decode_ms_per_token": min(1000.0 / run.decode_tokens_per_s for run in decoded) if decoded else None,
            }
        )
    return _judge_lengths(rows)


def _judge_lengths(rows: list[dict]) -> Check:
    decode = [row["decode_ms_per_token"] for row in rows if row["decode_ms_per_token"]]
    if len(rows) < 2 or len(decode) < 2:
        return Check(4, "performance across input lengths", WARN, "too few lengths measured", {"lengths": rows})
    spread = max(decode) / min(decode) if max(decode) - min(decode) > DECODE_NOISE_MS else 1.0
    short, long = rows[0], rows[-1]
    length_ratio = long["prompt_tokens"] / short["prompt_tokens"]
    ttft_ratio = long["ttft_s"] / short["ttft_s"] if short["ttft_s"] > 0 else math.inf
    linear = long["ttft_s"] <= short["ttft_s"] * length_ratio * TTFT_LINEAR_SLACK + TTFT_NOISE_S
    status = PASS if spread <= DECODE_BAND and linear else WARN if spread <= DECODE_WARN_BAND and linear else FAIL
    summary = (
        f"decode {min(decode):.1f}-{max(decode):.1f} ms/token across {short['prompt_tokens']}-{long['prompt_tokens']} "
        f"prompt tokens (x{spread:.2f}, band x{DECODE_BAND}); TTFT x{ttft_ratio:.1f} for x{length_ratio:.0f} tokens "
        f"({'no worse than' if linear else 'worse than'} linear)"
    )
    evidence = {
        "lengths": rows,
        "decode_spread": spread,
        "decode_band": DECODE_BAND,
        "ttft_ratio": ttft_ratio,
        "length_ratio": length_ratio,
        "ttft_slack": TTFT_LINEAR_SLACK,
        "ttft_noise_s": TTFT_NOISE_S,
    }
    return Check(4, "performance across input lengths", status, summary, evidence)


def check_edge_cases(model, timeout_s: float = 60.0) -> Check:
    """Each edge case in a child process, so a segfault or an abort is a FAIL of its case, not the end of the run."""
    outcomes = edge_cases.run_all(model, timeout_s)
    bad = [outcome for outcome in outcomes if not outcome["ok"]]
    status = FAIL if bad else PASS
    summary = f"{len(outcomes) - len(bad)}/{len(outcomes)} handled cleanly"
    if bad:
        summary += ": " + "; ".join(f"{outcome['case']}: {outcome['outcome']}" for outcome in bad)
    return Check(5, "edge cases and invalid input", status, summary, {"cases": outcomes})
