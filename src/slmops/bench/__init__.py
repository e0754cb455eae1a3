"""Benchmarks: `slmops bench` as a library.

    from slmops.bench import Sweep, TargetSpec, benchmark
    result = benchmark(TargetSpec(model="smollm2-135m-instruct", raw=True), Sweep(prompt_lengths=(128,)))
    result.to_dict()   # the versioned JSON document (slmops.bench.schema)

Figures are named as in vLLM's ``bench serve``: TTFT, TPOT, ITL, E2EL, request
throughput, goodput; see ``docs/bench.md``.
"""

from slmops.bench.benchmark import TargetSpec, benchmark, write_outputs
from slmops.bench.compare import compare, load_result
from slmops.bench.runner import BenchResult, CaseResult, Sweep
from slmops.bench.scenario_run import ScenarioSpec, run_scenarios
from slmops.bench.stats import Goodput, RequestRecord, summarize

__all__ = [
    "BenchResult",
    "CaseResult",
    "Goodput",
    "RequestRecord",
    "ScenarioSpec",
    "Sweep",
    "TargetSpec",
    "benchmark",
    "compare",
    "load_result",
    "run_scenarios",
    "summarize",
    "write_outputs",
]
