"""`slmops bench MODEL --scenario NAME`: the scenarios of real use, each a ratio against its target.

The serving scenarios (multi-turn, system-prompt, burst) run over HTTP against a loopback
`slmops serve` (and llama-server on a GGUF when asked), the decoding ones (grounded, chat)
in this process on the runtime; servers stop before the model loads here, so the two
phases never share the CPU. The result is one JSON document (see ``docs/bench.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from slmops.bench import scenario_decode, scenario_serve, scenarios
from slmops.bench.system import system_info
from slmops.cache.resolver import resolve
from slmops.errors import UsageError

SCHEMA = "slmops-bench-scenarios"
SCHEMA_VERSION = 1
DEFAULT_ROUNDS = 3
DEFAULT_DECODE_TOKENS = 128
LLAMA = "llama-server"
SLMOPS = "slmops serve"

# (numerator, denominator, target, better): a figure of a scenario over another of the same subject.
WITHIN = {
    "multi-turn": [("next turn TTFT s", "first turn TTFT s", 0.15, "lower")],
    "system-prompt": [("users 2-8 median TTFT s", "user 1 TTFT s", 0.3, "lower")],
    "burst": [],
}
# (figure, target, better): slmops serve's figure over llama-server's, in the same run.
AGAINST_LLAMA = {
    "multi-turn": [("next turn TTFT s", 1.0, "lower")],
    "system-prompt": [],
    "burst": [("median TTFT s", 1.0, "lower"), ("p95 TTFT s", 1.0, "lower"), ("aggregate tok/s", 1.0, "higher")],
}


@dataclass
class ScenarioSpec:
    """What to run.

    Attributes:
        model: a cached model name or a model folder.
        scenarios: scenario names (see :data:`slmops.bench.scenarios.SCENARIOS`), or ``all``.
        rounds: interleaved rounds of each scenario; figures are medians over them.
        threads: CPU threads of the model, in this process and in each server (None: the usable CPUs).
        max_tokens: tokens of each answer of the decoding scenarios.
        speculative: whether `slmops serve` drafts by prompt lookup in the serving scenarios.
        llama_server: a llama-server binary measured beside `slmops serve`, or None.
        gguf: the GGUF llama-server serves (the model's source).
        llama_threads: llama-server's threads (None: ``threads``); llama.cpp's threads wait for
            each other at every graph node, so on a loaded CPU fewer may run faster.
    """

    model: str
    scenarios: tuple[str, ...] = (scenarios.ALL,)
    rounds: int = DEFAULT_ROUNDS
    threads: int | None = None
    max_tokens: int = DEFAULT_DECODE_TOKENS
    speculative: bool = True
    llama_server: str | None = None
    gguf: str | None = None
    llama_threads: int | None = None

    def names(self) -> list[str]:
        try:
            return scenarios.chosen(self.scenarios)
        except ValueError as exc:
            raise UsageError(f"--scenario: {exc}.") from None

    def check(self) -> None:
        """Raises UsageError for settings that cannot run, before anything starts."""
        self.names()
        if self.rounds < 1 or self.max_tokens < 2:
            raise UsageError("--reps (rounds) must be 1 or more, and the answers at least 2 tokens.")
        if self.llama_server and not self.gguf:
            raise UsageError("--llama-server needs --gguf FILE: the GGUF the model was converted from.")
        if self.gguf and not Path(self.gguf).is_file():
            raise UsageError(f"--gguf {self.gguf}: no such file.")
        if self.llama_server and not os.access(self.llama_server, os.X_OK):
            raise UsageError(f"--llama-server {self.llama_server} is not an executable file.")


@dataclass
class Ratio:
    """A figure over the one it is compared with, and the target set for it.

    ``denominator_value`` is None when the comparison was not measured (e.g. no llama-server).
    """

    scenario: str
    subject: str
    numerator: str
    numerator_value: float
    denominator: str
    denominator_value: float | None
    target: float
    better: str

    @property
    def value(self) -> float | None:
        if not self.denominator_value:
            return None
        return self.numerator_value / self.denominator_value

    @property
    def met(self) -> bool | None:
        value = self.value
        if value is None:
            return None
        return value <= self.target if self.better == "lower" else value >= self.target

    def to_dict(self) -> dict:
        return {**asdict(self), "value": self.value, "met": self.met}


@dataclass
class Outcome:
    """Figures per scenario and subject (a server or a task), their ratios, and the raw rounds."""

    figures: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    rounds: dict[str, dict[str, dict]] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)


@dataclass
class Callbacks:
    """What a run tells its display: ``step`` before each measured step, ``status`` between phases,
    ``ratios`` as a phase's ratios are known."""

    step: Callable[[str], None] = lambda text: None
    status: Callable[[str], None] = lambda text: None
    ratios: Callable[[list[Ratio]], None] = lambda ratios: None


def steps(spec: ScenarioSpec) -> int:
    """How many times a run calls ``Callbacks.step``."""
    names = spec.names()
    servers = 2 if spec.llama_server else 1
    serving = sum(scenarios.SCENARIOS[name].kind == "serve" for name in names) * servers
    tasks = sum(len(scenarios.tasks_of(_kind(name))) for name in names if scenarios.SCENARIOS[name].kind == "runtime")
    return spec.rounds * (serving + 2 * tasks)


def run_scenarios(spec: ScenarioSpec, callbacks: Callbacks | None = None) -> dict:
    """Run the scenarios ``spec`` names and return the result document.

    Raises:
        UsageError: unknown scenarios or settings that cannot run.
        ModelNotFound: no such model.
        ServiceError: a server did not start.
    """
    spec.check()
    callbacks = callbacks or Callbacks()
    folder = resolve(spec.model)
    threads = spec.threads or len(os.sched_getaffinity(0))
    names, outcome = spec.names(), Outcome()
    load = [os.getloadavg()[0]]
    serving = [name for name in names if scenarios.SCENARIOS[name].kind == "serve"]
    if serving:
        callbacks.status("starting the servers")
        settings = scenario_serve.ServeSettings(
            folder.path,
            threads,
            spec.speculative,
            spec.llama_server,
            _path(spec.gguf),
            folder.context_length,
            spec.llama_threads,
        )
        contenders = scenario_serve.run_serving(settings, serving, spec.rounds, callbacks.step)
        _add_serving(outcome, contenders, serving)
        callbacks.ratios([ratio for ratio in outcome.ratios if ratio.scenario in serving])
    decoding = [name for name in names if scenarios.SCENARIOS[name].kind == "runtime"]
    if decoding:
        callbacks.status("loading the model in this process")
        _run_decoding(outcome, folder.path, threads, decoding, spec, callbacks)
    load.append(os.getloadavg()[0])
    return _document(spec, folder.name, threads, names, outcome, load)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _kind(scenario: str) -> str:
    return "grounded" if scenario == "grounded" else "open"


def _add_serving(outcome: Outcome, contenders: list[scenario_serve.Contender], names: list[str]) -> None:
    for name in names:
        figures = {contender.label: scenario_serve.summary(contender, name) for contender in contenders}
        outcome.figures[name] = figures
        outcome.rounds[name] = {contender.label: contender.rows[name] for contender in contenders}
        for subject, mine in figures.items():
            for numerator, denominator, target, better in WITHIN[name]:
                outcome.ratios.append(
                    Ratio(name, subject, numerator, mine[numerator], denominator, mine[denominator], target, better)
                )
        theirs = figures.get(LLAMA, {})
        for figure, target, better in AGAINST_LLAMA[name]:
            ours = figures[SLMOPS][figure]
            ratio = Ratio(name, SLMOPS, figure, ours, f"{LLAMA}: {figure}", theirs.get(figure), target, better)
            outcome.ratios.append(ratio)


def _run_decoding(
    outcome: Outcome, folder: Path, threads: int, names: list[str], spec: ScenarioSpec, callbacks: Callbacks
) -> None:
    from slmops.runtime import load

    model = load(folder, threads=threads)
    for name in names:
        kind = _kind(name)
        runs = scenario_decode.run_decoding(
            model, scenarios.tasks_of(kind), spec.rounds, spec.max_tokens, callbacks.step
        )
        outcome.figures[name] = {task: scenario_decode.summary(run) for task, run in runs.items()}
        outcome.rounds[name] = {task: run.speeds for task, run in runs.items()}
        ratios = [
            Ratio(
                name,
                task,
                "speculative decode tok/s",
                figures["speculative decode tok/s"],
                "plain decode tok/s",
                figures["plain decode tok/s"],
                scenarios.TARGETS[kind],
                "higher",
            )
            for task, figures in outcome.figures[name].items()
        ]
        outcome.ratios += ratios
        callbacks.ratios(ratios)


def _document(spec: ScenarioSpec, model: str, threads: int, names: list[str], outcome: Outcome, load: list) -> dict:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "system": system_info(),
        "load_average": {"before": load[0], "after": load[-1]},
        "settings": {
            "scenarios": names,
            "rounds": spec.rounds,
            "threads": threads,
            "max_tokens": spec.max_tokens,
            "speculative": spec.speculative,
            "llama_server": spec.llama_server,
            "gguf": Path(spec.gguf).name if spec.gguf else None,
            "llama_threads": (spec.llama_threads or threads) if spec.llama_server else None,
        },
        "scenarios": {
            name: {
                "what": scenarios.SCENARIOS[name].what,
                "figures": outcome.figures[name],
                "rounds": outcome.rounds[name],
            }
            for name in names
        },
        "ratios": [ratio.to_dict() for ratio in outcome.ratios],
    }
