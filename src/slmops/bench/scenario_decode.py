"""The decoding scenarios of `slmops bench --scenario`: prompt-lookup speculation against the plain loop.

One model loaded in this process answers every task twice per round, speculative (the
default) and with ``speculative=False``, in an order shuffled each round so that load
from other processes hits both alike. Both are greedy; the input-grounded tasks run
without a repetition penalty (it would push a copy away from its source), open chat
with the model's own. The figure is decode tokens/s, after the first token, as
``decode_tokens_per_s`` reports it.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from slmops.bench import scenarios
from slmops.runtime import collect
from slmops.runtime.model import Model, common_prefix

MODES = ("speculative", "plain")


@dataclass
class TaskRuns:
    """What one task measured: decode tok/s per mode and round, and the last answers' tokens."""

    speeds: dict[str, list[float]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    tokens: dict[str, list[int]] = field(default_factory=dict)
    drafted: int = 0
    accepted: int = 0


def answer(model: Model, task: str, max_tokens: int, speculative: bool):
    """One greedy answer to ``task``, collected (timings, drafted and accepted tokens)."""
    chosen = scenarios.TASKS[task]
    return collect(
        model.stream_chat(
            [{"role": "user", "content": chosen.prompt}],
            temperature=0.0,
            repetition_penalty=1.0 if chosen.kind == "grounded" else None,
            max_tokens=max_tokens,
            speculative=speculative,
            guidance=chosen.guidance,
        )
    )


def run_decoding(
    model: Model, tasks: list[str], rounds: int, max_tokens: int, on_step: Callable[[str], None]
) -> dict[str, TaskRuns]:
    """Every task in both modes for ``rounds`` shuffled rounds, after one unmeasured answer."""
    runs = {task: TaskRuns() for task in tasks}
    answer(model, tasks[0], 8, True)  # warm-up: the first run pays one-time costs
    for number, task, mode in shuffled_rounds(tasks, MODES, rounds):
        on_step(f"{task}, round {number}, {mode}")
        result = answer(model, task, max_tokens, mode == "speculative")
        runs[task].speeds[mode].append(result.decode_tokens_per_s)
        runs[task].tokens[mode] = list(result.tokens)
        if mode == "speculative":
            runs[task].drafted, runs[task].accepted = result.drafted_tokens, result.accepted_tokens
    return runs


def shuffled_rounds(tasks: Sequence[str], modes: Sequence[str], rounds: int) -> Iterator[tuple[int, str, str]]:
    """(round, from 1; task; mode): every task in every mode once a round, in an order shuffled per round.

    One seeded generator draws the orders, so every run measures in the same order.
    """
    picker = random.Random(0)
    for number in range(1, rounds + 1):
        order = [(task, mode) for task in tasks for mode in modes]
        picker.shuffle(order)
        yield from ((number, task, mode) for task, mode in order)


def summary(runs: TaskRuns) -> dict[str, float]:
    """Median decode tok/s of each mode, tokens answered, drafted and accepted, leading tokens in common."""
    speculative, plain = (statistics.median(runs.speeds[mode]) for mode in MODES)
    return {
        "speculative decode tok/s": speculative,
        "plain decode tok/s": plain,
        "completion tokens": len(runs.tokens["speculative"]),
        "drafted tokens": runs.drafted,
        "accepted tokens": runs.accepted,
        "same leading tokens": common_prefix(runs.tokens["speculative"], runs.tokens["plain"]),
    }
